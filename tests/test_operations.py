"""The operations table (`understudy.operations`): every admin route comes from it, each operation
is declared once, and an operation gives the same result, and a refusal the same message, run on
the store file by the CLI or through a real running proxy's admin API."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import open_test_store, run_cli, start_proxy
from tests.support.review_data import MAP_SITE, TEXT_SITE, populate
from understudy.cli.store_access import StoreAccess
from understudy.operations import OPERATIONS, Operation, OperationError, Param, reads, reviews, sites, training
from understudy.settings import load_settings

DECLARED = [*sites.OPERATIONS, *training.OPERATIONS, *reviews.OPERATIONS, *reads.OPERATIONS]


def test_each_operation_is_declared_once():
    names = [op.name for op in DECLARED]
    routes = [(op.method, op.path) for op in DECLARED]
    assert len(set(names)) == len(names) and len(set(routes)) == len(routes)
    assert list(OPERATIONS) == names
    for op in DECLARED:
        assert op.run.__doc__, f"{op.name}: its function says what it does (the route's description)"
        assert set(op.path_params) <= {p.name for p in op.params}, op.name
        assert op.body is None or (op.method == "POST" and op.body in {p.name for p in op.params}), op.name


def test_every_admin_route_comes_from_the_table(tmp_path):
    from understudy.proxy.app import create_app
    from understudy.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "data", local_models=False))
    try:
        served = {
            (method, route.path)
            for route in app.routes
            if route.path.startswith("/admin")
            for method in getattr(route, "methods", ())
            if method not in ("OPTIONS", "HEAD")
        }
    finally:
        app.state.proxy.store.close()
    declared = {(op.method, "/admin" + op.path.replace("}", ":str}")) for op in DECLARED}
    assert served == declared


def test_arguments_go_over_http_and_back_unchanged():
    calls = OPERATIONS["calls"]
    path, query, body = calls.request({"site": "Level:a/b", "limit": 3})
    assert path == "/sites/Level%3Aa%2Fb/calls" and query == {"limit": "3"} and body is None
    assert calls.args_from_http({"site": "Level:a/b"}, query, None) == {"site": "Level:a/b", "limit": 3}
    inputs = OPERATIONS["eval_inputs"]
    _, query, _ = inputs.request({"site": "s", "versions": [1, 2]})
    assert inputs.bind(inputs.args_from_http({}, query, None)) == {"site": "s", "versions": [1, 2], "limit": 0}
    register = OPERATIONS["register_version"]
    assert register.request({"result": {"site_id": "s"}}) == ("/versions", {}, {"site_id": "s"})
    with pytest.raises(OperationError) as blank:  # refused before any request, as the store refuses it
        calls.request({"site": " "})
    assert blank.value.status == 404 and blank.value.message.startswith("give a site id")
    with pytest.raises(OperationError) as bad:
        inputs.args_from_http({}, {"site": "s", "versions": "one"}, None)
    assert bad.value.code == "invalid_versions" and bad.value.param == "versions"


def test_a_refusal_keeps_its_message_status_and_code():
    op = Operation("needs_two", "POST", "/x/{site}", lambda ctx, args: None, (Param("site"), Param("n", "int")))
    with pytest.raises(OperationError) as missing:
        op.bind({"site": "s"})
    assert (missing.value.status, missing.value.code, missing.value.param) == (400, "missing_parameter", "n")
    error = OperationError(409, "no", code="action_refused")
    again = OperationError.from_response(409, {"error": error.error()}, "")
    assert (again.status, again.message, again.code, again.type) == (409, "no", "action_refused", error.type)


# ---- the same operation on the store file and through a running proxy ----------------------


READS = [
    ("sites", {}),
    ("calls", {"site": MAP_SITE, "limit": 5}),
    ("calls", {"site": "create_next_map", "limit": 2}),  # by its name
    ("versions", {"site": MAP_SITE}),
    ("policy", {"site": TEXT_SITE}),
    ("review_rubric", {"site": MAP_SITE}),
    ("review_results", {"site": MAP_SITE}),
    ("training_schedule", {"rules": {"jobs": 5}}),
]
REFUSALS = [
    ("calls", {"site": "nope", "limit": 5}, 404, "site_not_found"),
    ("calls", {"site": MAP_SITE, "limit": 0}, 400, "invalid_limit"),
    ("action", {"site": MAP_SITE, "action": "unpin"}, 409, "action_refused"),
    ("action", {"site": MAP_SITE, "action": "pin", "target": "elsewhere"}, 409, "action_refused"),
    ("rename", {"site": MAP_SITE, "name": " "}, 400, "invalid_name"),
    ("review_plan", {"site": MAP_SITE, "pairs": 0}, 400, "review_refused"),
    ("report", {"site": MAP_SITE, "format": "pdf"}, 400, "invalid_format"),
    ("eval_inputs", {"site": MAP_SITE, "versions": [7]}, 409, "eval_refused"),
]


def _stable(result):
    """A result without the moment it was computed at (the schedule's `now`)."""
    return {k: v for k, v in result.items() if k != "now"} if isinstance(result, dict) else result


def _refusal(access: StoreAccess, name: str, args: dict) -> tuple[int, str, str | None]:
    with pytest.raises(OperationError) as refused:
        access.run(name, **args)
    return refused.value.status, refused.value.message, refused.value.code


def test_an_operation_gives_the_same_result_on_the_store_and_through_the_proxy(fake_upstream, isolated_data_dir):
    store = open_test_store(isolated_data_dir / "understudy.duckdb")
    populate(store, pairs_per_version={1: 3, 2: 4}, text_pairs=2)
    store.close()
    settings = load_settings(data_dir=isolated_data_dir)

    here = StoreAccess(settings)
    assert here.proxy is None
    before = here.run("sites")
    renamed_here = here.run("rename", site=TEXT_SITE, name="greetings")
    pinned_here = here.run("action", site=TEXT_SITE, action="pin", target="upstream")
    here.run("action", site=TEXT_SITE, action="unpin")  # back as it was, for the proxy to do it again
    here.run("rename", site=TEXT_SITE, name=next(s["name"] for s in before if s["id"] == TEXT_SITE))
    read_here = [_stable(here.run(name, **args)) for name, args in READS]
    refused_here = [_refusal(here, name, args) for name, args, _, _ in REFUSALS]
    report_here = here.run("report", site=MAP_SITE, format="text", width=100).body
    cli_here = run_cli("unpin", MAP_SITE, "--data-dir", str(isolated_data_dir), check=False)

    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        there = StoreAccess(settings)
        assert there.proxy is not None and there.proxy["root"] == proxy.url
        for (name, args), result in zip(READS, read_here):
            assert _stable(there.run(name, **args)) == json.loads(json.dumps(result, default=str)), name
        assert [_refusal(there, name, args) for name, args, _, _ in REFUSALS] == refused_here
        assert [(status, code) for status, _, code in refused_here] == [(s, c) for *_, s, c in REFUSALS]
        assert there.run("report", site=MAP_SITE, format="text", width=100).body == report_here
        assert there.run("rename", site=TEXT_SITE, name="greetings") == renamed_here
        assert there.run("action", site=TEXT_SITE, action="pin", target="upstream") == pinned_here
        cli_there = proxy.cli("unpin", MAP_SITE, check=False)

        # the admin API answers a refusal with the same message, in OpenAI's error shape
        for (name, args, status, code), (_, message, _) in zip(REFUSALS, refused_here):
            op = OPERATIONS[name]
            path, query, body = op.request(args)
            answer = httpx.request(
                op.method,
                proxy.url + "/admin" + path,
                params=query,
                json=body,
                headers={"authorization": f"Bearer {proxy.admin_token}"},
                timeout=30,
            )
            assert answer.status_code == status, (name, answer.text)
            assert answer.json() == {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": answer.json()["error"]["param"],
                    "code": code,
                }
            }
    finally:
        proxy.stop()
    # and the CLI prints it as one line, exit 1, both ways
    assert cli_here.returncode == cli_there.returncode == 1
    assert cli_here.stderr == cli_there.stderr == f"error: {refused_here[2][1]}\n"
