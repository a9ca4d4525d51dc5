"""The chat lane (proxy/chat_lane.py): POST /v1/chat/completions served in front of Litestar.

The running proxy answers chat calls in the lane; the Litestar route of the same operation stays
for the OpenAPI document and answers the same way when the Litestar application is served alone.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import uvicorn

from tests.conftest import start_proxy

CHAT = "/v1/chat/completions"
REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name one colour."}]}


def _rejected(metrics: str, reason: str) -> float:
    match = re.search(rf'understudy_rejected_requests_total{{reason="{reason}"}} (\S+)', metrics)
    return float(match.group(1)) if match else 0.0


class _LitestarAlone:
    """The proxy's Litestar application under uvicorn in this process, without the lane."""

    def __init__(self, data_dir, upstream_url: str):
        from understudy.proxy.app import create_app
        from understudy.settings import Settings

        self.app = create_app(Settings(data_dir=data_dir, upstream_url=upstream_url, local_models=False))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_the_litestar_route_answers_as_the_lane_does(fake_upstream, isolated_data_dir, tmp_path):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        with _LitestarAlone(tmp_path / "alone", fake_upstream.url + "/v1") as alone:
            answers = {}
            for name, root in (("lane", proxy.url), ("litestar", alone)):
                good = httpx.post(root + CHAT, json=REQUEST, timeout=30)
                bad = httpx.post(root + CHAT, content=b"{not json", headers={"content-type": "application/json"})
                answers[name] = (good, bad)
            (lane, lane_bad), (litestar, litestar_bad) = answers["lane"], answers["litestar"]
            assert lane.status_code == litestar.status_code == 200
            assert lane.json()["choices"] == litestar.json()["choices"]
            for header in ("x-understudy-site", "x-understudy-served-by", "content-type"):
                assert lane.headers[header] == litestar.headers[header], header
            assert lane_bad.status_code == litestar_bad.status_code == 400
            assert lane_bad.json() == litestar_bad.json()
            assert lane_bad.json()["error"]["code"] == "invalid_json"
    finally:
        proxy.stop()


def test_a_chunked_body_past_the_limit_is_refused_though_no_length_was_announced(fake_upstream, isolated_data_dir):
    """A body sent chunked (no content-length to check first) is counted as it arrives."""
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--max-body-bytes", "2000")

    def chunked(body: bytes):
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    def post_chunked(payload: dict) -> httpx.Response:
        body = httpx.Request("POST", proxy.url + CHAT, json=payload).read()
        return httpx.post(
            proxy.url + CHAT, content=chunked(body), headers={"content-type": "application/json"}, timeout=30
        )

    try:
        # The control: a chunked body under the limit is forwarded and answered.
        under = post_chunked(REQUEST)
        assert under.status_code == 200 and len(fake_upstream.received) == 1
        big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
        over = post_chunked(big)
        assert over.status_code == 413 and over.json()["error"]["code"] == "request_too_large"
        assert len(fake_upstream.received) == 1  # never forwarded
        assert _rejected(httpx.get(proxy.url + "/metrics").text, "request_too_large") == 1
    finally:
        proxy.stop()
