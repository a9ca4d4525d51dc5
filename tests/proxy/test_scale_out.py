"""Past one machine: proxies sharing one PostgreSQL store, `serve --workers`, a Redis training queue.

Each "host" here is a proxy with a data dir of its own, sharing only the PostgreSQL database
(and, for training, the Redis queue and a shared directory), as two machines behind a load
balancer would. Servers are real: PostgreSQL and Redis from Debian's packages, started by the
session fixtures in tests/conftest.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import VENV_BIN, query_store, run_cli, start_proxy, wait_for
from tests.test_store_backends import call_row as stored_call_row
from understudy.store import Store

COLOR = {
    "type": "json_schema",
    "json_schema": {
        "name": "Color",
        "schema": {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]},
    },
}


def color_request(thing: str, marker: str = "") -> dict:
    return {
        "model": "m",
        "response_format": COLOR,
        "messages": [{"role": "user", "content": f"Pick a color.{marker}\n\nthing = ({thing!r}, '')"}],
    }


def admin(proxy, method: str, path: str, **kwargs):
    response = httpx.request(
        method,
        proxy.url + "/admin" + path,
        timeout=30,
        headers={"authorization": f"Bearer {proxy.admin_token}"},
        **kwargs,
    )
    response.raise_for_status()
    return response.json()


def sites_of(proxy) -> dict[str, tuple]:
    return {
        row["id"]: (row["name"], row["state"], row["pinned"], row["active_version"])
        for row in admin(proxy, "GET", "/sites")
    }


@pytest.fixture
def shared_store(postgres_server, monkeypatch):
    url = postgres_server.new_database()
    monkeypatch.setenv("UNDERSTUDY_STORE", url)
    return url


@pytest.fixture
def two_hosts(shared_store, fake_upstream, tmp_path):
    """Two proxies, each with its own data dir (as on two machines), on one PostgreSQL store."""
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    proxies = [start_proxy(tmp_path / f"host{n}" / "understudy-data", fake_upstream.url) for n in (1, 2)]
    yield proxies
    for proxy in proxies:
        proxy.stop()


def test_two_proxies_writing_at_once_lose_nothing_and_agree_on_site_state(two_hosts):
    a, b = two_hosts
    per_proxy, threads_per_proxy = 60, 6
    errors: list[str] = []

    def client(proxy, worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            for n in range(per_proxy // threads_per_proxy):
                marker = f" [{proxy.url[-5:]}-{worker}-{n}]"
                # Two sites, hit from both proxies at once: each process creates the same site rows.
                thing = "sky" if n % 2 else "sea"
                body = color_request(thing) | {
                    "messages": [{"role": "user", "content": f"Pick a color.\n\nthing = ({thing!r}, {marker!r})"}]
                }
                if n % 3 == 0:
                    body["messages"].insert(0, {"role": "system", "content": "You name colours."})
                response = http.post(proxy.url + "/v1/chat/completions", json=body)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(proxy, w)) for proxy in (a, b) for w in range(threads_per_proxy)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for proxy in (a, b):  # each process's in-memory registry holds both sites (the sync adds those the other made)
        wait_for(
            lambda proxy=proxy: httpx.get(proxy.url + "/healthz").json()["sites"] == 2,
            timeout=10,
            what="both sites in memory",
        )
    for proxy in (a, b):  # a clean stop drains each one's writer (uvicorn re-raises SIGTERM after it)
        assert proxy.stop() in (0, -signal.SIGTERM)
    rows = query_store(a.data_dir, "SELECT count(*), count(DISTINCT CAST(request AS VARCHAR)) FROM calls")[0]
    assert rows == (2 * per_proxy, 2 * per_proxy)  # every answer stored once, none lost, none doubled
    sites = query_store(a.data_dir, "SELECT id FROM sites")
    assert len(sites) == 2  # the same two sites whichever process saw a signature first


def served_by(proxy, thing: str = "sky") -> str:
    return httpx.post(proxy.url + "/v1/chat/completions", json=color_request(thing), timeout=60).headers[
        "x-understudy-served-by"
    ]


def trained_site_on_two_hosts(fake_upstream, tmp_path, env) -> tuple:
    """Two proxies on one store, a site trained (the tiny model) through the first: (a, b, site)."""
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    a = start_proxy(tmp_path / "host1" / "understudy-data", fake_upstream.url, env=env)
    b = start_proxy(tmp_path / "host2" / "understudy-data", fake_upstream.url, env=env)
    for thing in ["sky", "sea", "sun", "moon"]:
        site = httpx.post(a.url + "/v1/chat/completions", json=color_request(thing), timeout=30).headers[
            "x-understudy-site"
        ]
    run_cli("train", site, "--now", "--data-dir", str(a.data_dir), env=env)
    return a, b, site


def test_a_pin_made_through_one_proxy_holds_on_the_other(shared_store, fake_upstream, tiny_model_env, tmp_path):
    a, b, site = trained_site_on_two_hosts(fake_upstream, tmp_path, tiny_model_env)
    try:
        assert served_by(a) == served_by(b) == "upstream"  # v1 is in shadow: the upstream answers
        pinned = time.monotonic()
        a.cli("pin", site, "local")
        assert served_by(a) == f"local:{site}@v1"  # at once on the proxy that took the pin
        # On the other, within the sync interval (2 s) plus a query: it loads v1 and serves it.
        wait_for(lambda: served_by(b) == f"local:{site}@v1", timeout=10, what="the pin on the second proxy")
        assert time.monotonic() - pinned < 2.0 + 3.0
        # Undone through the second proxy, it holds on the first the same way.
        b.cli("unpin", site)
        wait_for(lambda: served_by(a) == "upstream", timeout=10, what="the unpin on the first proxy")
    finally:
        a.stop()
        b.stop()


def test_without_the_sync_the_other_proxy_keeps_its_old_view(shared_store, fake_upstream, tiny_model_env, tmp_path):
    """Control: with the sync interval longer than the test, the second proxy never learns of the
    version or the pin, and keeps answering from the upstream: it is the sync that carries them."""
    env = {**tiny_model_env, "UNDERSTUDY_SYNC_INTERVAL_S": "3600"}
    a, b, site = trained_site_on_two_hosts(fake_upstream, tmp_path, env)
    try:
        a.cli("pin", site, "local")
        assert served_by(a) == f"local:{site}@v1"
        time.sleep(5)
        assert served_by(b) == "upstream"
    finally:
        a.stop()
        b.stop()


def test_serve_workers_runs_several_processes_on_one_port(shared_store, fake_upstream, tmp_path):
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    proxy = start_proxy(tmp_path / "understudy-data", fake_upstream.url, "--workers", "2")
    try:
        pids = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:  # new connections spread over the children
            pids.add(httpx.get(proxy.url + "/healthz", timeout=5).json()["pid"])
        assert len(pids) == 2 and proxy.process.pid not in pids
        for n in range(20):
            with httpx.Client(timeout=30) as http:  # a new connection each: both children answer some
                assert http.post(proxy.url + "/v1/chat/completions", json=color_request(f"thing{n}")).status_code == 200
        out = proxy.cli("sites", "--json")  # the CLI reaches them through the parent's proxy.json
        assert sum(row["calls"] for row in json.loads(out.stdout)) == 20
    finally:
        assert proxy.stop() in (0, -signal.SIGTERM)
    assert query_store(tmp_path, "SELECT count(*) FROM calls")[0][0] == 20
    assert not (tmp_path / "understudy-data" / "proxy.json").exists()


def test_serve_workers_on_the_duckdb_file_is_refused_in_one_line(tmp_path, fake_upstream):
    out = run_cli(
        "serve",
        "--workers",
        "2",
        "--port",
        "0",
        "--upstream-url",
        fake_upstream.url,
        "--data-dir",
        str(tmp_path / "d"),
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --workers 2 needs a shared store (--store postgresql://...): the DuckDB file admits one writing process"
    )


def test_a_store_url_that_is_not_postgresql_or_not_reachable_is_one_line(tmp_path, postgres_server):
    out = run_cli("serve", "--store", "mysql://x/y", "--data-dir", str(tmp_path / "d"), check=False)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: store: --store takes a postgresql:// URL")
    dead = postgres_server.url("nosuchdb")
    out = run_cli("serve", "--store", dead, "--port", "0", "--data-dir", str(tmp_path / "d"), check=False)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach the store postgresql://understudy@127.0.0.1:") and "nosuchdb" in last


def test_a_worker_on_the_redis_queue_trains_and_the_version_appears_on_both_proxies(
    shared_store, redis_server, fake_upstream, tiny_model_env, tmp_path
):
    """The GPU-host layout: two proxies and a worker on three "hosts", sharing PostgreSQL, a Redis
    queue and one directory for snapshots and adapters; the worker reports through the admin API."""
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    queue = redis_server.new_url()
    shared = tmp_path / "shared"
    env = {**tiny_model_env, "UNDERSTUDY_QUEUE": queue, "UNDERSTUDY_SHARED_DIR": str(shared)}
    a = start_proxy(tmp_path / "host1" / "understudy-data", fake_upstream.url, env=env)
    b = start_proxy(tmp_path / "host2" / "understudy-data", fake_upstream.url, env=env)
    worker = None
    try:
        for thing in ["sky", "sea", "sun", "moon", "leaf"]:
            site = httpx.post(a.url + "/v1/chat/completions", json=color_request(thing), timeout=30).headers[
                "x-understudy-site"
            ]
        out = run_cli("train", site, "--data-dir", str(a.data_dir), env=env)  # enqueued on Redis, not in a file
        assert "Redis redis://127.0.0.1:" in out.stdout and not (a.data_dir / "huey.db").exists()
        job_dirs = list((shared / "snapshots").glob(f"{site}-*.parquet"))
        assert job_dirs  # the snapshot is in the shared directory, where the worker reads it

        # The worker's own host: no data dir of the proxies', only the queue, the shared dir and b's admin API.
        worker_env = {
            **env,
            "UNDERSTUDY_DATA_DIR": str(tmp_path / "gpu-host"),
            "UNDERSTUDY_PROXY_URL": b.url,
            "UNDERSTUDY_ADMIN_TOKEN": b.admin_token,
        }
        worker_env.pop("UNDERSTUDY_STORE")
        log = open(tmp_path / "worker.log", "w")
        worker = subprocess.Popen([str(VENV_BIN / "understudy"), "worker"], env=worker_env, stdout=log, stderr=log)

        def version_on(proxy):
            rows = admin(proxy, "GET", f"/sites/{site}/versions")
            return rows if rows and rows[0]["status"] == "active" else None

        try:
            versions = wait_for(
                lambda: version_on(b), timeout=240, what="the version on the proxy the worker reports to"
            )
        except AssertionError:
            raise AssertionError((tmp_path / "worker.log").read_text()[-3000:]) from None
        assert Path(versions[0]["adapter_path"]).is_relative_to(shared)
        # a never heard from the worker: it sees the version through the shared store.
        assert sites_of(a)[site][1:] == ("shadow", None, 1)
        # a never heard from the worker: it has the version through the shared store, and serves it once pinned.
        b.cli("pin", site, "local")
        wait_for(lambda: served_by(a) == f"local:{site}@v1", timeout=10, what="the version served by the other proxy")
        assert served_by(b) == f"local:{site}@v1"
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        a.stop()
        b.stop()


def test_a_store_outlives_its_servers_restart(postgres_server):
    """The statement running when PostgreSQL drops the connection fails (the recorder keeps its
    rows); the next one reconnects."""
    store = Store(postgres_server.new_database())
    try:
        store.write_batch(calls=[stored_call_row("c1", "s1")])
        postgres_server.restart()
        with pytest.raises(psycopg.OperationalError):
            store.write_batch(calls=[stored_call_row("c2", "s1")])
        store.write_batch(calls=[stored_call_row("c3", "s1")])
        assert sorted(row[0] for row in store.cursor().execute("SELECT id FROM calls").fetchall()) == ["c1", "c3"]
    finally:
        store.close()
