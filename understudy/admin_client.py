"""The running proxy's admin API, found through the data directory's proxy.json.

Kept apart from the CLI's StoreAccess (understudy/proxy_client.py, which falls back to the
store file and loads subsystems for some commands) so the training worker can talk to the
proxy without importing anything of the proxy or routing.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from understudy.settings import Settings


class CommandError(Exception):
    """A failure the CLI reports as one line and a non-zero exit."""


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

    def _admin(self, method: str, path: str, **kwargs) -> Any:
        assert self.proxy is not None
        try:
            kwargs.setdefault("timeout", 30.0)
            response = httpx.request(
                method,
                self.proxy["root"] + "/admin" + path,
                headers={"authorization": f"Bearer {self.proxy['admin_token']}"},
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise CommandError(f"the proxy at {self.proxy['root']} did not answer: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise CommandError(message)
        return response.json()

    def training_jobs_for_candidates(self, rules: dict[str, Any]) -> list[dict[str, Any]]:
        return self._admin("POST", "/training/candidates", json=rules)

    def register_with_proxy(self, result: dict[str, Any]) -> dict[str, Any]:
        return self._admin("POST", "/versions", json=result)
