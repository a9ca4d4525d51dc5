"""The Huey path with a real consumer: the scheduler enqueues (only inside the quiet window),
`understudy worker` trains, and the result reaches the store through the running proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx

from tests.conftest import VENV_BIN, run_cli, start_proxy

SCHEDULE = "from understudy.training.tasks import schedule_training; import json; print(json.dumps(schedule_training.call_local()))"


def schedule(env: dict) -> list[str]:
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", SCHEDULE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_scheduler_and_worker_train_a_version(fake_upstream, isolated_data_dir, tiny_model_env, tmp_path):
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    env = {**tiny_model_env, "UNDERSTUDY_TRAIN_MIN_EXAMPLES": "4"}
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=env)
    worker = None
    try:
        body = {
            "model": "m",
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "Color",
                    "schema": {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]},
                },
            },
            "messages": [{"role": "user", "content": "Pick a color.\n\nthing = ('x', '')"}],
        }
        site = None
        for thing in ["sky", "sea", "sun", "moon", "leaf"]:
            body["messages"][0]["content"] = f"Pick a color.\n\nthing = ({thing!r}, '')"
            site = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30).headers["x-understudy-site"]

        # Outside the quiet window nothing is scheduled; inside it the site is.
        hour = time.localtime().tm_hour
        closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
        assert schedule({**env, "UNDERSTUDY_QUIET_HOURS": closed}) == []
        jobs = json.loads(run_cli("jobs", "--json", "--data-dir", str(isolated_data_dir), env=env).stdout)
        assert jobs["quiet"] and jobs["jobs"] == []
        assert [(s["id"], s["due"], s["reason"]) for s in jobs["sites"]] == [
            (site, True, "first version: 5 usable examples")
        ]
        assert schedule(env) == [site]
        jobs = json.loads(run_cli("jobs", "--json", "--data-dir", str(isolated_data_dir), env=env).stdout)
        assert [(j["site"], j["reason"], j["outcome"]) for j in jobs["jobs"]] == [
            (site, "first version: 5 usable examples", "queued or running")
        ]
        # While that job waits for the worker, the next scheduling round starts no second one.
        assert schedule(env) == []
        assert jobs["sites"][0]["reason"].startswith("waiting: a job started ") and not jobs["sites"][0]["due"]
        [report] = json.loads(proxy.cli("report", site, "--json").stdout)
        scheduled = [e for e in report["audit"] if e["action"] == "training"]
        assert [e["reason"] for e in scheduled] == ["training scheduled: first version: 5 usable examples"]
        assert report["why"] != scheduled[0]["reason"]  # bookkeeping, not why the site routes as it does

        log = open(tmp_path / "worker.log", "w")
        worker = subprocess.Popen([str(VENV_BIN / "understudy"), "worker"], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 180
        versions = []
        while time.monotonic() < deadline and not versions:
            versions = proxy.operation("versions", site=site)  # no CLI process a second beside the training
            time.sleep(1)
        assert versions, (tmp_path / "worker.log").read_text()[-3000:]
        assert versions[0]["status"] == "active" and os.path.exists(versions[0]["adapter_path"])
        row = next(r for r in json.loads(proxy.cli("sites", "--json").stdout) if r["id"] == site)
        assert row["state"] == "shadow" and row["active_version"] == 1
        # Nothing new since v1: the next scheduling round has nothing to do, and `jobs` says why.
        assert schedule(env) == []
        shown = run_cli("jobs", "--data-dir", str(isolated_data_dir), env={**env, "COLUMNS": "200"}).stdout
        assert "quiet window open" in shown and "v1 active" in shown, shown
        assert "waiting: v1 is shadowing until it is decided; trained on 5 usable examples, 5 now" in shown, shown
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        proxy.stop()


def test_train_without_now_enqueues_in_the_data_dir_it_was_given(fake_upstream, isolated_data_dir, tmp_path):
    from huey import SqliteHuey

    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        for thing in ("sky", "sea"):  # a job needs two usable examples
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": f"Pick a color.\n\nthing = ({thing!r}, '')"}],
            }
            site = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30).headers["x-understudy-site"]
        elsewhere = tmp_path / "elsewhere"  # the default data dir a stray queue would land in
        elsewhere.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "UNDERSTUDY_DATA_DIR"}
        out = subprocess.run(
            [str(VENV_BIN / "understudy"), "train", site, "--data-dir", str(isolated_data_dir)],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert str(isolated_data_dir) in out.stdout
        assert SqliteHuey("understudy", filename=str(isolated_data_dir / "huey.db")).pending_count() == 1
        assert not (elsewhere / "understudy-data").exists()
    finally:
        proxy.stop()
