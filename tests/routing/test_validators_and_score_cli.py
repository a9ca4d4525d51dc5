"""Validators that read the request, registered by a user, in the three places they act (the
training filter, the serving gate, shadow scoring); `understudy score`; the confidence cascade.

A user's validator here is `tests.routing.test_validators_and_score_cli:color_named_in_request`:
the answer's color must be one the question names. The fake upstream answers right for some
requests and wrong for others, so the filter has something to drop and the check can fail.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.conftest import REPO_ROOT, run_cli, start_proxy
from tests.support.showcase import level_repr, map_request
from understudy.inference.local_model import LocalAnswer
from understudy.routing.cascade import calibrate
from understudy.routing.router import Router
from understudy.settings import load_settings
from understudy.store import SiteRecord

STORE_BACKENDS = ("duckdb", "postgresql")  # validators, policies and exports on both stores

SCHEMA = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
PAINT_FORMAT = {"type": "json_schema", "json_schema": {"name": "Paint", "schema": SCHEMA}}
VALIDATOR = "tests.routing.test_validators_and_score_cli:color_named_in_request"
SYSTEM = "This is a task you must complete by returning only the output."


def color_named_in_request(answer: str, arguments) -> tuple[bool, dict]:
    """The user's validator: reads the call's `choices` argument (a list) from the request."""
    color = json.loads(answer).get("color")
    ok = color in arguments.get("choices", [])
    return ok, {"checks": [{"name": "named", "passed": ok, "detail": f"{color!r} in {arguments.get('choices')}"}]}


def paint_request(choices: list[str]) -> dict:
    return {
        "model": "gpt-4o-mini",
        "response_format": PAINT_FORMAT,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Pick one.\n\nchoices = ({choices!r}, '')"},
        ],
    }


def paint_reply(body: dict) -> str:
    """Right (the first choice) unless the choices start with 'x', then a color not offered."""
    choices = eval(re.search(r"choices = \((\[.*?\])", body["messages"][-1]["content"]).group(1))  # noqa: S307 - test data
    return json.dumps({"color": "mauve" if choices[0].startswith("x") else choices[0]})


@pytest.fixture
def user_env(monkeypatch):
    """The proxy's environment with the user's package importable (here: this repository's tests)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    import os

    return os.environ.copy()


def test_a_users_validator_by_response_type_filters_training_data(
    fake_upstream, isolated_data_dir, tmp_path, monkeypatch, user_env
):
    fake_upstream.reply = paint_reply
    proxy = start_proxy(
        isolated_data_dir,
        fake_upstream.url,
        env={**user_env, "UNDERSTUDY_VALIDATORS": json.dumps({"Paint": VALIDATOR})},
    )
    try:
        site = None
        for choices in (["red", "blue"], ["green"], ["xanadu", "teal"], ["gold", "xenon"], ["xerox"]):
            response = httpx.post(proxy.url + "/v1/chat/completions", json=paint_request(choices), timeout=30)
            site = response.headers["x-understudy-site"]
        exported = json.loads(proxy.cli("export", site, "--jsonl", str(tmp_path / "paint.jsonl")).stdout)
    finally:
        proxy.stop()
    # The two answers whose color the request did not offer are not learned from.
    assert exported["considered"] == 5 and exported["kept"] == 3 and exported["dropped_validator"] == 2
    kept = [json.loads(line)["messages"][-1]["content"] for line in (tmp_path / "paint.jsonl").read_text().splitlines()]
    assert sorted(json.loads(k)["color"] for k in kept) == ["gold", "green", "red"]


def test_a_site_policy_names_its_validator_and_a_bad_one_is_refused(
    fake_upstream, isolated_data_dir, tmp_path, user_env
):
    fake_upstream.reply = paint_reply
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=user_env)
    try:
        site = httpx.post(proxy.url + "/v1/chat/completions", json=paint_request(["xray", "red"]), timeout=30).headers[
            "x-understudy-site"
        ]
        httpx.post(proxy.url + "/v1/chat/completions", json=paint_request(["red"]), timeout=30)
        before = json.loads(proxy.cli("export", site, "--jsonl", str(tmp_path / "a.jsonl")).stdout)
        refused = proxy.cli("policy", site, '{"validator": "no.such.module:check"}', check=False)
        assert refused.returncode == 1 and "cannot load validator" in refused.stderr
        proxy.cli("policy", site, json.dumps({"validator": VALIDATOR}))
        after = json.loads(proxy.cli("export", site, "--jsonl", str(tmp_path / "b.jsonl")).stdout)
    finally:
        proxy.stop()
    assert before["kept"] == 2 and after["kept"] == 1 and after["dropped_validator"] == 1


# --- understudy score ---------------------------------------------------------------------

LEVEL = {
    "name": "Level 2: The Hollow Keep",
    "difficulty": 2,
    "width": 18,
    "height": 11,
    "num_wall": 3,
    "num_enemies": 2,
    "time_countdown": 260,
    "n_retries_allowed": 4,
}


def a_map(width: int) -> str:
    return json.dumps(
        {
            "level": {**LEVEL, "width": width},
            "walls": [{"start_pos": {"x": 1, "y": 1}, "end_pos": {"x": 1, "y": 3}}] * 3,
            "small_obstacles": [],
            "enemies": [{"x": 9, "y": 9}, {"x": 12, "y": 5}],
            "player_pos": {"x": 0, "y": 0},
        }
    )


@pytest.fixture
def map_files(tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(map_request(LEVEL)))
    (tmp_path / "good.txt").write_text(a_map(18))
    (tmp_path / "wide.txt").write_text(a_map(24))  # not the requested level's size
    return tmp_path


def test_score_shows_why_a_wrong_size_map_scores_zero(map_files, isolated_data_dir):
    args = [
        "score",
        "--request",
        str(map_files / "request.json"),
        "--upstream",
        str(map_files / "good.txt"),
        "--data-dir",
        str(isolated_data_dir),
    ]
    good = json.loads(run_cli(*args, "--local", str(map_files / "good.txt"), "--json").stdout)
    assert good == {"score": 1.0, "local_valid": True, "components": good["components"]}
    assert good["components"]["validator"] is True and good["components"]["compared_fields"] == 0
    wide = json.loads(run_cli(*args, "--local", str(map_files / "wide.txt"), "--json").stdout)
    assert wide["score"] == 0.0 and wide["local_valid"] is False
    failed = [c["name"] for c in json.loads(wide["components"]["validator_detail"])["checks"] if not c["passed"]]
    assert failed == ["level_echo", "dimensions"]
    text = run_cli(*args, "--local", "-", input=a_map(24)).stdout
    assert text.startswith("score 0.000  local answer INVALID") and "validator: False" in text


def test_score_reads_only_what_it_can_and_says_so_in_one_line(map_files, isolated_data_dir):
    base = [
        "score",
        "--upstream",
        str(map_files / "good.txt"),
        "--local",
        str(map_files / "good.txt"),
        "--data-dir",
        str(isolated_data_dir),
    ]
    missing = run_cli(*base, "--request", str(map_files / "nope.json"), check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "cannot read it" in missing.stderr
    (map_files / "bad.json").write_text("{not json")
    bad = run_cli(*base, "--request", str(map_files / "bad.json"), check=False)
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    (map_files / "shape.json").write_text(json.dumps({"messages": "hi"}))
    shape = run_cli(*base, "--request", str(map_files / "shape.json"), check=False)
    assert shape.returncode == 2 and "not a chat-completions request" in shape.stderr
    two_stdins = run_cli("score", "--request", "-", "--upstream", "-", "--local", "x", check=False)
    assert two_stdins.returncode == 2 and "only one of" in two_stdins.stderr


def test_score_through_a_running_proxy_uses_the_sites_decoys(fake_upstream, isolated_data_dir, tmp_path):
    """With the site in the store, `score` applies its chance correction, as shadow mode does."""
    fake_upstream.reply = lambda body: json.dumps({"color": "red", "n": len(body["messages"][-1]["content"])})
    request = paint_request(["red"])
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        for choices in (["red"], ["red", "b"], ["red", "gree"], ["red", "crimson"]):
            httpx.post(proxy.url + "/v1/chat/completions", json=paint_request(choices), timeout=30)
        (tmp_path / "r.json").write_text(json.dumps(request))
        (tmp_path / "u.txt").write_text('{"color": "red", "n": 3}')
        (tmp_path / "l.txt").write_text('{"color": "red", "n": 5}')
        result = json.loads(
            proxy.cli(
                "score",
                "--request",
                str(tmp_path / "r.json"),
                "--upstream",
                str(tmp_path / "u.txt"),
                "--local",
                str(tmp_path / "l.txt"),
                "--json",
            ).stdout
        )
    finally:
        proxy.stop()
    # Half the fields agree (color), but every answer of this site has that color: no credit.
    assert result["components"]["structural"] == 0.5 and result["components"]["decoys"] >= 3
    assert result["components"]["chance"] >= 0.5 and result["score"] < 0.25


# --- the confidence cascade ---------------------------------------------------------------


def test_calibration_finds_the_confidence_below_which_answers_miss_the_bar():
    # Confident answers agree, unsure ones do not: the threshold sits between them.
    samples = [(0.95, 1.0)] * 30 + [(0.9, 0.9)] * 10 + [(0.4, 0.2)] * 10 + [(0.3, 0.0)] * 10
    c = calibrate(samples, bar=0.8, min_samples=20)
    assert c.threshold == 0.9 and c.local_share == pytest.approx(40 / 60)
    assert c.agreement_with == pytest.approx((30 + 9) / 40) and c.agreement_without < c.agreement_with
    # Controls: all answers good (nothing to cut), all bad (no confident region), too few samples.
    assert calibrate([(0.5, 1.0)] * 30 + [(0.9, 1.0)] * 30, bar=0.8, min_samples=20).threshold is None
    assert calibrate([(0.9, 0.1)] * 40, bar=0.8, min_samples=20).threshold is None
    assert calibrate(samples[:10], bar=0.8, min_samples=20).threshold is None


def test_the_cascade_sends_unsure_local_answers_upstream_only_when_local(tmp_path):
    router = Router(
        None,
        None,
        validators=__import__("understudy.validators", fromlist=["x"]).ValidatorRegistry(),
        current_site=lambda _: None,
        on_site_change=lambda _: None,
        record_shadow=lambda _: None,
        record_self_agreement=lambda _: None,
    )
    router.add_site("s1", "Paint")
    router.config("s1").calibration = calibrate([(0.95, 1.0)] * 30 + [(0.3, 0.0)] * 30, bar=0.8, min_samples=20)
    request = paint_request(["red"])
    local = SiteRecord("s1", "paint", "function", "local", None, 1)
    sure, unsure = LocalAnswer('{"color": "red"}', 1.0, 1, 1, 0.97), LocalAnswer('{"color": "red"}', 1.0, 1, 1, 0.5)
    assert router.usable(local, request, sure) == (True, "ok")
    ok, why = router.usable(local, request, unsure)
    assert not ok and "below the site's confidence threshold" in why
    # In shadow nothing is served locally, and a policy can switch the cascade off.
    assert router.usable(SiteRecord("s1", "paint", "function", "shadow", None, 1), request, unsure)[0]
    router.config("s1").promotion = router.config("s1").promotion.__class__(cascade=False)
    assert router.usable(local, request, unsure) == (True, "ok")


def test_settings_take_validators_from_the_environment(monkeypatch):
    monkeypatch.setenv("UNDERSTUDY_VALIDATORS", json.dumps({"Paint": VALIDATOR}))
    assert load_settings().validators == {"Paint": VALIDATOR}
    assert "Level(" in level_repr(LEVEL)


def test_validator_references_recorded_before_the_rename_still_load():
    from understudy.jac_examples.rpg.request_checks import check_map
    from understudy.validators import ValidatorError, load_validator

    assert load_validator("jac_examples.rpg.request_checks:check_map") is check_map
    assert load_validator("understudy.jac_examples.rpg.request_checks:check_map") is check_map
    with pytest.raises(ValidatorError):  # only the four old component names are mapped
        load_validator("rpg.request_checks:check_map")
