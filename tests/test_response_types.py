"""A package other than Understudy registers what comes with its response types (scoring
defaults, a review rubric, a renderer) by entry point, and the product picks it up: here a
third-party distribution made in a temp directory (a real dist-info on sys.path), read by the
router's scoring and the review's rubric. Control: a type nobody registered gets the defaults."""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import open_test_store
from tests.support.rows import site_row
from understudy import response_types
from understudy.reporting.reviews import DEFAULT_RUBRIC, rubric_for
from understudy.routing.router import site_scoring

ACME = """
SCORING = {"creative_paths": ["room_names"]}
RUBRIC = {"criteria": [{"name": "dread", "label": "Dread", "description": "Is it scary?"}]}


def render(value, png_path):
    raise NotImplementedError
"""


@pytest.fixture
def acme_installed(tmp_path, monkeypatch):
    site_packages = tmp_path / "site-packages"
    (site_packages / "acme_dungeons").mkdir(parents=True)
    (site_packages / "acme_dungeons" / "__init__.py").write_text(ACME)
    dist_info = site_packages / "acme_dungeons-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-dungeons\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [understudy.scoring_defaults]
            Dungeon = acme_dungeons:SCORING

            [understudy.review_rubrics]
            Dungeon = acme_dungeons:RUBRIC

            [understudy.review_renderers]
            Dungeon = acme_dungeons:render
            """
        )
    )
    monkeypatch.syspath_prepend(str(site_packages))
    response_types.registered.cache_clear()  # read once per process: read again with acme on the path
    yield
    monkeypatch.undo()
    response_types.registered.cache_clear()


def test_a_third_party_packages_registrations_reach_scoring_and_review(acme_installed, tmp_path):
    assert site_scoring("Dungeon", {}).creative_paths == ("room_names",)
    assert response_types.registered(response_types.REVIEW_RENDERERS)["Dungeon"] == "acme_dungeons:render"
    store = open_test_store(tmp_path / "understudy.duckdb")
    try:
        store.write_batch([site_row("d1", "make_dungeon", schema_name="Dungeon"), site_row("o1", schema_name="Other")])
        assert rubric_for(store.cursor(), "d1")["criteria"][0]["name"] == "dread"
        # Control: a type no package registered keeps the product's defaults.
        assert rubric_for(store.cursor(), "o1") == DEFAULT_RUBRIC
        assert site_scoring("Other", {}).creative_paths == site_scoring(None, {}).creative_paths
        assert site_scoring("Other", {}).creative_paths != ("room_names",)
    finally:
        store.close()
