"""`understudy upstreams --check`: one one-token request to each route, latency or the error.

Each route gets a tiny chat completion (`max_tokens: 1`) for a representative model that the
route would really serve (one matching its pattern): the `model_for_route` override, else the
route's `check_model`, else its pattern when that is a plain name, else, on a server of one's
own (`openai-compatible`), the first model its `GET /models` lists that matches the pattern,
else the provider's default below when it matches. It goes to the route's own URL with its own
headers and provider adjustments, exactly as a proxied request would.

Nobody is contacted for a route without its key: a vendor route (OpenAI, Anthropic, Gemini)
needs one, and a keyless route that forwards the clients' own keys has none to send. The one
exception is a keyless server of one's own (`openai-compatible`: the offline teacher, a local
model server), which may need no key at all, so it is checked without one. Routes are
checked concurrently.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from understudy.proxy.providers import UnsupportedRequest, adjust_request
from understudy.proxy.upstreams import MissingKey, Resolution, Route, UpstreamTable, is_glob

DEFAULT_CHECK_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
    "gemini": "gemini-2.0-flash",
    "openai-compatible": "gpt-4o-mini",
}
CHECK_TIMEOUT_S = 30.0
CHECK_MESSAGES = [{"role": "user", "content": "Reply with the single word: ok"}]


@dataclass(slots=True)
class CheckResult:
    route: str
    provider: str
    base_url: str
    model: str | None
    ok: bool
    contacted: bool  # False when the check stopped before any request (missing key, no model)
    latency_ms: float | None = None
    status: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


OWN_SERVER = "openai-compatible"


def check_model_for(
    route: Route, model_for_route: dict[str, str] | None = None, listed: list[str] | None = None
) -> str | None:
    """The model to check `route` with; `listed`: the ids the route's own `GET /models` gave."""
    if model_for_route and route.name in model_for_route:
        return model_for_route[route.name]
    if route.check_model:
        return route.check_model
    if not is_glob(route.pattern):
        return route.pattern
    for model in listed or ():
        if route.matches(model):
            return model
    default = DEFAULT_CHECK_MODELS.get(route.provider)
    return default if default is not None and route.matches(default) else None


async def check_routes(
    table: UpstreamTable,
    client: httpx.AsyncClient,
    model_for_route: dict[str, str] | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> list[CheckResult]:
    """Check every route in table order (concurrently); never raises for a failing route."""

    async def check(route: Route) -> CheckResult:
        model = check_model_for(route, model_for_route)
        # a server of one's own, with no model named for it: ask it what it serves (unless it is skipped)
        if (
            route.provider == OWN_SERVER
            and model in (None, DEFAULT_CHECK_MODELS[OWN_SERVER])
            and _skipped(route) is None
        ):
            model = check_model_for(route, model_for_route, await _listed_models(route, client, timeout_s))
        return await check_route(route, client, model, timeout_s)

    return list(await asyncio.gather(*(check(route) for route in table.routes)))


def _skipped(route: Route) -> str | None:
    """Why `route` is reported without being contacted, or None when it is checked."""
    if route.key() is not None:
        return None
    if not route.keyless_ok:
        return f"key not set: {route.key_env_label() or 'a key'}"
    if route.provider != OWN_SERVER:
        return f"not contacted: no key set ({route.key_env_label() or 'a key'}); the clients' own keys are forwarded"
    return None


async def _listed_models(route: Route, client: httpx.AsyncClient, timeout_s: float) -> list[str]:
    """The model ids a server of one's own lists (GET /models); [] when it lists none or fails
    (the chat check that follows reports the failure)."""
    try:
        response = await client.get(
            route.base_url + "/models",
            headers=dict(route.extra_headers),
            timeout=min(route.timeout_s or timeout_s, timeout_s),
        )
        data = response.json().get("data") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
    return [str(item["id"]) for item in data or () if isinstance(item, dict) and item.get("id")]


async def check_route(
    route: Route, client: httpx.AsyncClient, model: str | None, timeout_s: float = CHECK_TIMEOUT_S
) -> CheckResult:
    result = CheckResult(
        route=route.name, provider=route.provider, base_url=route.base_url, model=model, ok=False, contacted=False
    )
    skipped = _skipped(route)
    if skipped is not None:
        result.error = skipped
        return result
    if model is None:
        result.error = f"no model matching {route.pattern!r} to check with: set check_model for this route"
        return result
    resolution = Resolution(route=route, upstream_model=route.model or model, requested_model=model)
    try:
        headers = resolution.headers()
        body = adjust_request(
            route.provider,
            {"model": resolution.upstream_model, "messages": CHECK_MESSAGES, "max_tokens": 1, "stream": False},
        )
    except MissingKey as exc:
        result.error = f"key not set: {exc.env_name}"
        return result
    except UnsupportedRequest as exc:  # pragma: no cover - the check body is always servable
        result.error = str(exc)
        return result
    headers["content-type"] = "application/json"
    headers["accept-encoding"] = "identity"
    timeout = min(route.timeout_s or timeout_s, timeout_s)
    started = time.perf_counter()
    try:
        response = await client.post(route.base_url + "/chat/completions", json=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException as exc:
        result.contacted = True
        result.error = f"timed out after {timeout:g} s ({type(exc).__name__})"
        return result
    except httpx.HTTPError as exc:
        result.contacted = True
        result.error = f"unreachable: {type(exc).__name__}: {exc}"
        return result
    result.contacted = True
    result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    result.status = response.status_code
    if response.status_code >= 400:
        result.error = f"HTTP {response.status_code}: {_error_text(response)}"
        return result
    try:
        payload = response.json()
    except ValueError:
        result.error = "answered 200 but the body is not JSON"
        return result
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        result.error = "answered 200 but not with a chat completion"
        return result
    result.ok = True
    return result


def _error_text(response: httpx.Response, limit: int = 200) -> str:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    # OpenAI's shape, and Gemini's list-wrapped variant ([{"error": {...}}]).
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict) and payload["error"].get("message"):
        text = str(payload["error"]["message"])
    else:
        text = response.text.strip() or response.reason_phrase
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def describe_upstreams(table: UpstreamTable, check: bool) -> dict[str, Any]:
    """What `understudy upstreams [--check]` prints: routes, aliases and (with `check`) the checks."""
    results: list[CheckResult] = []
    if check:
        async with httpx.AsyncClient() as client:
            results = await check_routes(table, client)
    return {"routes": table.describe(), "aliases": table.describe_aliases(), "checks": [r.as_dict() for r in results]}
