"""Closed-loop load on a running proxy: N connections, each sending one chat completion after
another (a share of them streamed), every request carrying a unique marker so the store can be
checked call by call afterwards. Used by `load.py` and `durability.py`.

A streamed answer counts as acknowledged only when its `[DONE]` arrived; a plain one when its
200 body was read. Anything else is an error (kept by kind), except after `stop` is set (the
durability run kills the proxy on purpose: what fails then is in flight, not an error).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field

import httpx

MARKER = re.compile(r"load-\d+-\d+-\d+")


@dataclass
class LoadResult:
    acked: dict[str, float] = field(default_factory=dict)  # marker -> monotonic time its answer completed
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    seconds: float = 0.0

    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request_body(marker: str, stream: bool) -> dict:
    return {
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You answer load-test pings."},
            {"role": "user", "content": f"ping {marker}"},
        ],
    }


async def run_load(
    url: str,
    *,
    connections: int,
    seconds: float,
    stream_share: float = 0.5,
    run_id: int = 0,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Load `url` (the proxy's OpenAI base URL) for `seconds`, or until `stop` is set."""
    result, stop = LoadResult(), stop or asyncio.Event()
    deadline = time.monotonic() + seconds
    counter = itertools.count()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(60.0, connect=10.0)

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        streaming = index < round(connections * stream_share)
        while not stop.is_set() and time.monotonic() < deadline:
            marker = f"load-{run_id}-{index}-{next(counter)}"
            body = request_body(marker, streaming)
            started = time.monotonic()
            result.sent += 1
            try:
                if streaming:
                    async with client.stream("POST", url + "/chat/completions", json=body) as response:
                        text = (await response.aread()).decode("utf-8", "replace")
                    ok = response.status_code == 200 and text.rstrip().endswith("data: [DONE]")
                    kind = f"stream {response.status_code}" + ("" if "[DONE]" in text else " without [DONE]")
                else:
                    response = await client.post(url + "/chat/completions", json=body)
                    ok = response.status_code == 200 and bool(response.json().get("choices"))
                    kind = f"HTTP {response.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                ok, kind = False, type(exc).__name__
            if ok:
                done = time.monotonic()
                result.acked[marker] = done
                result.latencies_ms.append((done - started) * 1000)
            elif not stop.is_set():
                result.errors[kind] = result.errors.get(kind, 0) + 1
                await asyncio.sleep(0.05)

    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(worker(i, client) for i in range(connections)))
    result.seconds = time.monotonic() - started
    return result


def stored_markers(db_path: str) -> set[str]:
    """The markers of every call in the store (opened read-only: run it once the proxy is gone)."""
    import duckdb

    con = duckdb.connect(db_path, read_only=True)
    try:
        rows = con.execute("SELECT regexp_extract(request, 'load-[0-9]+-[0-9]+-[0-9]+') FROM calls").fetchall()
    finally:
        con.close()
    return {row[0] for row in rows if row[0]}


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def print_json(payload: dict) -> None:
    print(json.dumps(payload, default=str))
