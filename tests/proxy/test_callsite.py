"""Call-site identification on every shared capture (both byLLM versions, all transports)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.proxy.captures import TWINS, capture_files, load_capture
from understudy.proxy.callsite import identify

ALL_CAPTURES = [line for path in capture_files() for line in load_capture(path)]


def test_fixtures_are_present():
    assert len(capture_files()) >= 20 and len(ALL_CAPTURES) > 100


@pytest.mark.parametrize("path", capture_files(), ids=lambda p: p.stem)
def test_one_site_per_call_site_and_distinct_sites_per_scenario(path):
    lines = load_capture(path)
    ids_of_site: dict[str, set[str]] = defaultdict(set)
    sites_of_id: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        site_id = identify(line["request"]["body"]).site_id
        ids_of_site[line["call_site"]].add(site_id)
        sites_of_id[site_id].add(line["call_site"])
    for call_site, ids in ids_of_site.items():
        assert len(ids) == 1, f"{call_site} split over {ids}"
    for site_id, call_sites in sites_of_id.items():
        assert len(call_sites) == 1 or frozenset(call_sites) in TWINS, f"{site_id} merges {call_sites}"


def test_same_function_gets_the_same_site_across_transports_and_versions():
    ids_of_site: dict[str, set[str]] = defaultdict(set)
    for line in ALL_CAPTURES:
        if "level_gen" in line["scenario"]:
            ids_of_site[line["call_site"]].add(identify(line["request"]["body"]).site_id)
    assert set(ids_of_site) == {
        "create_next_level",
        "create_next_map",
        "describe_level",
        "Level.tagline",
        "rate_difficulty",
    }
    assert all(len(ids) == 1 for ids in ids_of_site.values()), ids_of_site


def test_retries_and_tool_steps_are_classified_and_share_the_first_turns_conversation():
    conversations: dict[str, str] = {}
    seen_turns = set()
    for line in ALL_CAPTURES:
        ident = identify(line["request"]["body"])
        if line["is_typed_output_retry"]:
            assert ident.turn == "retry"
        elif line["tool_results_in_history"]:
            assert ident.turn == "tool_step"
        else:
            assert ident.turn == "first"
            conversations[ident.conversation] = line["call_site"]
        seen_turns.add(ident.turn)
        if ident.turn != "first":
            assert conversations.get(ident.conversation) == line["call_site"], "retry/tool step without its first turn"
    assert seen_turns == {"first", "retry", "tool_step"}


def test_readable_names():
    names = {}
    for line in ALL_CAPTURES:
        ident = identify(line["request"]["body"])
        names[(line["scenario"], line["call_site"])] = ident.signature.default_name(ident.caller_name)
    assert names[("b0619_http_client_level_gen", "create_next_map")] == ("create_next_map", "caller")
    assert names[("b0619_litellm_env_level_gen", "describe_level")] == ("describe_level", "function")
    assert names[("b0619_litellm_env_level_gen", "create_next_map")] == (
        "Map:lay-out-the-map-for-the-given-level",
        "docstring",
    )


def test_explicit_tag_overrides_the_signature():
    body = ALL_CAPTURES[0]["request"]["body"]
    by_header = identify(body, explicit_tag="my-site")
    by_metadata = identify({**body, "metadata": {"understudy_site": "my-site"}})
    assert by_header.site_id == by_metadata.site_id != identify(body).site_id
    assert by_header.signature.default_name(None) == ("my-site", "explicit")


def test_generic_clients_are_keyed_by_system_prompt_schema_and_tools():
    def body(system, user, tools=None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return {"model": "m", "messages": messages, **({"tools": tools} if tools else {})}

    assert (
        identify(body("You translate.", "hello")).site_id
        == identify(body("You translate.", "a different text")).site_id
    )
    assert identify(body("You translate.", "hello")).site_id != identify(body("You summarise.", "hello")).site_id
    tool = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    assert identify(body("You translate.", "hi", tool)).site_id != identify(body("You translate.", "hi")).site_id
    assert identify(body(None, "hello")).signature.kind == "generic"
