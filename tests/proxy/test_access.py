"""Access (issue 16, point 1): client keys on /v1/*, the admin token on /report, paths confined
to the data dir, owner-only files. Real `understudy serve` processes against a fake upstream."""

from __future__ import annotations

import json
import re
import stat
import time

import httpx
import pytest

from tests.conftest import query_store, run_cli, start_proxy

CHAT = "/v1/chat/completions"


def _body(text: str = "Tell me a joke.") -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def _rejected(metrics: str, reason: str) -> float:
    match = re.search(rf'understudy_rejected_requests_total{{reason="{reason}"}} ([0-9.]+)', metrics)
    return float(match.group(1)) if match else 0.0


def _add_key(data_dir, name: str) -> str:
    return run_cli("keys", "add", name, "--data-dir", str(data_dir)).stdout.strip()


def test_keys_are_stored_hashed_and_listed_by_name(isolated_data_dir):
    key = _add_key(isolated_data_dir, "alice")
    other = _add_key(isolated_data_dir, "bob")
    assert key.startswith("us-") and key != other
    path = isolated_data_dir / "client-keys.json"
    text = path.read_text()
    assert key not in text and other not in text and "sha256:" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(isolated_data_dir.stat().st_mode) == 0o700
    listed = json.loads(run_cli("keys", "list", "--json", "--data-dir", str(isolated_data_dir)).stdout)
    assert [entry["name"] for entry in listed] == ["alice", "bob"]
    again = run_cli("keys", "add", "alice", "--data-dir", str(isolated_data_dir), check=False)
    assert again.returncode == 1 and again.stderr.startswith("error: a key named 'alice' already exists")
    run_cli("keys", "revoke", "bob", "--data-dir", str(isolated_data_dir))
    listed = json.loads(run_cli("keys", "list", "--json", "--data-dir", str(isolated_data_dir)).stdout)
    assert [entry["name"] for entry in listed] == ["alice"]


def test_with_keys_a_missing_or_wrong_key_is_a_401_and_never_forwarded(fake_upstream, isolated_data_dir):
    key = _add_key(isolated_data_dir, "alice")
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        for headers, _why in (
            ({}, "missing_client_key"),
            ({"authorization": f"Bearer {key}x"}, "wrong_client_key"),
            ({"authorization": f"Bearer {proxy.admin_token}"}, "wrong_client_key"),
            ({"authorization": f"Basic {key}"}, "missing_client_key"),
        ):
            refused = httpx.post(proxy.url + CHAT, json=_body(), headers=headers, timeout=30)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        assert httpx.get(proxy.url + "/v1/models", timeout=30).status_code == 401
        assert fake_upstream.received == []  # nothing reached the upstream
        metrics = httpx.get(proxy.url + "/metrics", timeout=10).text
        assert _rejected(metrics, "missing_client_key") == 3 and _rejected(metrics, "wrong_client_key") == 2

        # control: the right key passes, and the upstream never sees it (a keyless route sends no key)
        ok = httpx.post(proxy.url + CHAT, json=_body(), headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert ok.status_code == 200
        assert "authorization" not in fake_upstream.received[-1]["headers"]
        models = httpx.get(proxy.url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert models.status_code == 200

        # a key added while the proxy runs counts within seconds; a revoked one stops counting
        late = _add_key(isolated_data_dir, "carol")
        deadline = time.monotonic() + 10
        while (
            httpx.post(
                proxy.url + CHAT, json=_body("late"), headers={"authorization": f"Bearer {late}"}, timeout=30
            ).status_code
            != 200
        ):
            assert time.monotonic() < deadline, "a key added while running was never accepted"
            time.sleep(0.3)
        run_cli("keys", "revoke", "carol", "--data-dir", str(isolated_data_dir))
        deadline = time.monotonic() + 10
        while (
            httpx.post(
                proxy.url + CHAT, json=_body("late"), headers={"authorization": f"Bearer {late}"}, timeout=30
            ).status_code
            != 401
        ):
            assert time.monotonic() < deadline, "a revoked key was still accepted"
            time.sleep(0.3)
    finally:
        proxy.stop()
    clients = dict(query_store(isolated_data_dir, "SELECT client, count(*) FROM calls GROUP BY ALL"))
    assert set(clients) == {"alice", "carol"} and clients["alice"] == 1  # refused calls are not recorded


def test_the_client_key_is_replaced_by_the_upstream_key(fake_upstream, isolated_data_dir):
    key = _add_key(isolated_data_dir, "alice")
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--upstream-key", "sk-upstream-own")
    try:
        assert (
            httpx.post(
                proxy.url + CHAT, json=_body(), headers={"authorization": f"Bearer {key}"}, timeout=30
            ).status_code
            == 200
        )
        assert fake_upstream.received[-1]["headers"]["authorization"] == "Bearer sk-upstream-own"
        assert key not in json.dumps(fake_upstream.received)
    finally:
        proxy.stop()


def test_without_keys_loopback_is_open_and_forwards_the_clients_own_key(proxy, fake_upstream):
    """The control for the two above: no keys file, a loopback bind, the client's own key passes through."""
    response = httpx.post(proxy.url + CHAT, json=_body(), headers={"authorization": "Bearer sk-users-own"}, timeout=30)
    assert response.status_code == 200
    assert fake_upstream.received[-1]["headers"]["authorization"] == "Bearer sk-users-own"


@pytest.mark.parametrize("command", ["serve", "up"])
def test_a_non_loopback_bind_without_keys_refuses_to_start(isolated_data_dir, command):
    result = run_cli(command, "--host", "0.0.0.0", "--port", "0", "--data-dir", str(isolated_data_dir), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to listen on 0.0.0.0 without client keys")
    assert not (isolated_data_dir / "proxy.json").exists()


def test_a_non_loopback_bind_with_keys_starts(fake_upstream, isolated_data_dir):
    """Control: the same bind with a keys file serves (and still wants the key)."""
    key = _add_key(isolated_data_dir, "alice")
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--host", "0.0.0.0")
    try:
        assert httpx.post(proxy.url + CHAT, json=_body(), timeout=30).status_code == 401
        assert (
            httpx.post(
                proxy.url + CHAT, json=_body(), headers={"authorization": f"Bearer {key}"}, timeout=30
            ).status_code
            == 200
        )
    finally:
        proxy.stop()


def test_an_empty_or_missing_keys_file_is_refused_off_loopback(isolated_data_dir, tmp_path):
    missing = run_cli(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--client-keys-file",
        str(tmp_path / "nope.json"),
        "--data-dir",
        str(isolated_data_dir),
        check=False,
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": []}')
    refused = run_cli(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--client-keys-file",
        str(empty),
        "--data-dir",
        str(isolated_data_dir),
        check=False,
    )
    assert refused.returncode == 1 and "holds no keys" in refused.stderr


def test_report_needs_the_admin_token_unless_public(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        httpx.post(proxy.url + CHAT, json=_body(), timeout=30)
        refused = httpx.get(proxy.url + "/report", timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "admin_token_required"
        assert (
            httpx.get(proxy.url + "/report", headers={"authorization": "Bearer wrong"}, timeout=30).status_code == 401
        )
        assert httpx.get(proxy.url + "/report", params={"token": "wröng"}, timeout=30).status_code == 401
        by_header = httpx.get(
            proxy.url + "/report", headers={"authorization": f"Bearer {proxy.admin_token}"}, timeout=60
        )
        assert by_header.status_code == 200 and by_header.text.startswith("<!")
        assert httpx.get(proxy.url + "/report", params={"token": proxy.admin_token}, timeout=60).status_code == 200
        proxy.cli("report")  # the CLI sends the token itself
    finally:
        proxy.stop()
    public = start_proxy(isolated_data_dir, fake_upstream.url, "--public-report")
    try:
        assert httpx.get(public.url + "/report", timeout=60).status_code == 200
    finally:
        public.stop()


def test_exports_and_adapter_paths_are_confined_to_the_data_dir(fake_upstream, isolated_data_dir, tmp_path):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    token = {"authorization": f"Bearer {proxy.admin_token}"}
    outside = tmp_path / "elsewhere"
    try:
        site = httpx.post(proxy.url + CHAT, json=_body(), timeout=30).headers["x-understudy-site"]
        assert httpx.post(proxy.url + CHAT, json=_body("Another one."), timeout=30).headers["x-understudy-site"] == site
        for kind in ("jsonl", "parquet"):
            refused = httpx.post(
                proxy.url + f"/admin/sites/{site}/export",
                headers=token,
                timeout=30,
                json={"filtered": False, kind: str(outside / f"x.{kind}")},
            )
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "path_outside_data_dir"
        sneaky = str(isolated_data_dir / ".." / "escaped.jsonl")  # inside by its text, outside once resolved
        assert (
            httpx.post(
                proxy.url + f"/admin/sites/{site}/export", headers=token, timeout=30, json={"jsonl": sneaky}
            ).status_code
            == 400
        )
        assert not outside.exists() and not (isolated_data_dir.parent / "escaped.jsonl").exists()
        inside = httpx.post(
            proxy.url + f"/admin/sites/{site}/export",
            headers=token,
            timeout=30,
            json={"filtered": False, "jsonl": str(isolated_data_dir / "exports" / "x.jsonl")},
        )
        assert inside.status_code == 200 and (isolated_data_dir / "exports" / "x.jsonl").exists()

        # the CLI still writes wherever the user asks: the proxy stages the file, the CLI moves it
        target = outside / "dataset.jsonl"
        result = json.loads(proxy.cli("export", site, "--unfiltered", "--jsonl", str(target)).stdout)
        assert result["files"]["jsonl"]["path"] == str(target) and len(target.read_text().splitlines()) == 2
        assert not list((isolated_data_dir / "exports").glob(".staging-*"))

        # registered adapters: a path outside the data dir is refused and nothing is registered
        for field in ("adapter_path", "dataset_snapshot"):
            result = {
                "site_id": site,
                "verified": True,
                "error": None,
                "config": {},
                "metrics": {},
                "adapter_path": str(isolated_data_dir / "adapters" / "a.gguf"),
                field: "/etc/passwd",
            }
            refused = httpx.post(proxy.url + "/admin/versions", headers=token, json=result, timeout=30)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == field
        assert httpx.get(proxy.url + f"/admin/sites/{site}/versions", headers=token, timeout=30).json() == []
        # control: an adapter inside the data dir registers
        result = {
            "site_id": site,
            "verified": True,
            "error": None,
            "config": {},
            "metrics": {},
            "adapter_path": str(isolated_data_dir / "adapters" / site / "job-1" / "adapter.gguf"),
        }
        assert httpx.post(proxy.url + "/admin/versions", headers=token, json=result, timeout=30).status_code == 200
    finally:
        proxy.stop()


def test_the_data_dir_and_store_are_owner_only(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)  # start_proxy made the dir 0755 beforehand
    try:
        httpx.post(proxy.url + CHAT, json=_body(), timeout=30)
        httpx.get(proxy.url + "/admin/sites", headers={"authorization": f"Bearer {proxy.admin_token}"}, timeout=30)
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in isolated_data_dir.iterdir() if path.is_file()}
        assert stat.S_IMODE(isolated_data_dir.stat().st_mode) == 0o700
        assert modes["understudy.duckdb"] == 0o600 and modes["understudy.duckdb.wal"] == 0o600
        assert modes["proxy.json"] == 0o600
        assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    finally:
        proxy.stop()


def test_a_fresh_data_dir_and_store_are_created_owner_only(tmp_path):
    from understudy.settings import Settings
    from understudy.store import Store

    fresh = tmp_path / "fresh" / "data"
    Settings(data_dir=fresh).ensure_data_dir()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    store = Store(tmp_path / "other" / "u.duckdb")  # the store's own mkdir
    store.close()
    assert stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "other" / "u.duckdb").stat().st_mode) == 0o600
