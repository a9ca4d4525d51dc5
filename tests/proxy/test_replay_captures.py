"""Every shared byLLM capture replayed through the running proxy; the store's grouping checked."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx

from tests.proxy.captures import TWINS, capture_files, load_capture
from tests.proxy.test_proxy_server import stored_calls

# Headers a client sends about its own connection; httpx sets its own.
_SKIP_HEADERS = {"host", "content-length", "connection", "accept-encoding"}


def test_replayed_captures_land_on_their_sites(proxy):
    lines = [line for path in capture_files() for line in load_capture(path)]
    site_of_response: dict[str, str] = {}
    ids_of_site: dict[tuple[str, str], set[str]] = defaultdict(set)
    with httpx.Client(timeout=30) as client:
        for index, line in enumerate(lines):
            request = line["request"]
            headers = {k: v for k, v in request["headers"].items() if k.lower() not in _SKIP_HEADERS}
            response = client.post(proxy.url + request["path"], content=json.dumps(request["body"]), headers=headers)
            assert response.status_code == 200, (line["scenario"], response.text)
            site = response.headers["x-understudy-site"]
            ids_of_site[(line["scenario"], line["call_site"])].add(site)
            site_of_response[str(index)] = site
    proxy.stop()

    for key, ids in ids_of_site.items():
        assert len(ids) == 1, f"{key} split over {ids}"
    by_scenario: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for (scenario, call_site), ids in ids_of_site.items():
        by_scenario[scenario][next(iter(ids))].add(call_site)
    for scenario, sites in by_scenario.items():
        for call_sites in sites.values():
            assert len(call_sites) == 1 or frozenset(call_sites) in TWINS, (scenario, call_sites)

    calls = stored_calls(proxy.data_dir)
    assert len(calls) == len(lines)
    turns = defaultdict(int)
    for call in calls:
        turns[call["turn"]] += 1
    assert turns["retry"] == sum(1 for line in lines if line["is_typed_output_retry"])
    assert turns["tool_step"] == sum(1 for line in lines if line["tool_results_in_history"])
    # A retry points at the call whose output it corrects.
    by_id = {call["id"]: call for call in calls}
    for call in calls:
        if call["turn"] == "retry":
            assert by_id[call["retry_of"]]["conversation"] == call["conversation"]
    # Streamed captures are stored reassembled.
    streamed = [call for call in calls if call["stream"]]
    assert streamed and all(json.loads(call["response"])["object"] == "chat.completion" for call in streamed)
