"""The running proxy's admin API, found through the data directory's proxy.json.

`AdminClient.call(op, args)` sends one operation of the table (`understudy.operations`) to the
proxy and returns its result, or raises its `OperationError` (the proxy's message, status and
code). Kept apart from the CLI's StoreAccess (understudy/cli/store_access.py, which falls back to
the store file and loads subsystems for some commands) so the training worker can talk to the
proxy without importing anything of the proxy or routing: it imports only
`understudy.operations.base` and `understudy.operations.training`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import httpx

from understudy.operations.base import Operation, OperationError, Text
from understudy.operations.training import CANDIDATES, REGISTER
from understudy.settings import Settings


def running_proxy(settings: Settings) -> dict[str, Any] | None:
    """The live proxy that owns the data directory: `url` (its OpenAI base URL, ends in /v1),
    `root` (the server: /admin, /healthz), `pid`, `admin_token`; None when none runs. A proxy on
    another host is named instead by UNDERSTUDY_PROXY_URL (its root) and UNDERSTUDY_ADMIN_TOKEN."""
    if settings.proxy_url:
        root = settings.proxy_url.rstrip("/").removesuffix("/v1")
        return {"url": root + "/v1", "root": root, "pid": None, "admin_token": settings.admin_token or ""}
    try:
        info = json.loads(settings.discovery_path.read_text())
        os.kill(int(info["pid"]), 0)
        info.setdefault("root", str(info["url"]).removesuffix("/v1"))  # proxy.json of a proxy before `root`
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return info


class AdminClient:
    """The running proxy's admin API (`proxy` is None when none runs for the data directory)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.proxy = running_proxy(settings)

    def call(self, op: Operation, args: Mapping[str, Any]) -> Any:
        """Run `op` in the running proxy: its result (`Text` for a text result), or its refusal."""
        assert self.proxy is not None
        path, query, body = op.request(args)
        try:
            response = httpx.request(
                op.method,
                self.proxy["root"] + "/admin" + path,
                params=query or None,
                json=body,
                headers={"authorization": f"Bearer {self.proxy['admin_token']}"},
                timeout=op.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise OperationError(
                502, f"the proxy at {self.proxy['root']} did not answer: {exc}", code="proxy_unreachable"
            ) from None
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            raise OperationError.from_response(response.status_code, payload, response.text)
        if op.text:
            return Text(response.text, response.headers.get("content-type", "text/plain").split(";")[0])
        return response.json()

    def training_jobs_for_candidates(self, rules: dict[str, Any]) -> list[dict[str, Any]]:
        return self.call(CANDIDATES, {"rules": rules})

    def register_with_proxy(self, result: dict[str, Any]) -> dict[str, Any]:
        return self.call(REGISTER, {"result": result})
