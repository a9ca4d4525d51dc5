"""Fixtures for the training tests: the tiny Llama (built once per session) and examples."""

from __future__ import annotations

import pytest

from tests.training.examples import COLOR_SCHEMA, make_example


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(hf_dir, gguf_path) of the tiny random Llama, built once for the session."""
    from training.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def color_examples():
    return [
        make_example("color of sky?", '{"color": "blue"}', COLOR_SCHEMA),
        make_example("color of grass?", '{"color": "green"}', COLOR_SCHEMA),
    ]
