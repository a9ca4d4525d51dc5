"""Fixtures for the training tests: the tiny Llama (built once per session) and examples."""

from __future__ import annotations

import pytest

from tests.training.examples import COLOR_SCHEMA, make_example


@pytest.fixture
def color_examples():
    return [
        make_example("color of sky?", '{"color": "blue"}', COLOR_SCHEMA),
        make_example("color of grass?", '{"color": "green"}', COLOR_SCHEMA),
    ]
