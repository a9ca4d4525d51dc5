"""The upstream client: one pooled `httpx.AsyncClient` for the life of the proxy, every route.

The client is httpx's API on aiohttp's transport (`httpx-aiohttp`, the transport the
OpenAI SDK offers for the same reason). Which upstream a request goes to is decided by
the route table (`proxy.upstreams`); this module builds and sends the request. The client's
body bytes are forwarded as they came unless the route needs them changed (model alias,
provider adjustments). The credential is the route's key when it has one, else the
client's own `Authorization` header (so a client holding a key works with nothing set). With
client keys on (`strip_client_auth`), the client's `Authorization` is its Understudy client key
and is never forwarded: a keyless route then sends no key at all (a server of one's own).
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from understudy.proxy.upstreams import Resolution, UpstreamTable
from understudy.settings import Settings

# Headers from the client that describe the client's own connection or body encoding;
# httpx sets its own for the upstream leg.
_HOP_BY_HOP = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding", "keep-alive"}
# Headers from the upstream worth passing back to the client.
PASS_BACK_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-model",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "retry-after",
)


class _IgnoredCookies(httpx.Cookies):
    """A cookie jar that keeps nothing an upstream sets."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class Upstream:
    def __init__(self, settings: Settings, table: UpstreamTable, *, strip_client_auth: bool = False):
        self.table = table
        self.settings = settings
        self.strip_client_auth = strip_client_auth
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.upstream_connect_timeout_s,
                read=settings.upstream_read_timeout_s,
                write=60.0,  # a large prompt on a slow link
                pool=30.0,  # waiting for a free pooled connection under load
            ),
            # httpx's API over aiohttp's connection pool: httpcore's pool re-checks every idle
            # connection per request, which cost ~40 % of the proxy's CPU under load.
            transport=AiohttpTransport(limits=httpx.Limits(max_connections=512, max_keepalive_connections=128)),
        )
        # Requests are built without the client's cookie jar (`build_chat_request`), so an
        # upstream's Set-Cookie must not be stored either: httpx parses every response's cookies
        # through urllib's cookie code, ~6 % of the proxy's CPU, into a jar nothing reads (and
        # one shared by every client). httpx has no switch for it; its jar is `_cookies`.
        self.client._cookies = _IgnoredCookies()
        # Per route, computed once: the chat URL and the timeout extension httpx expects.
        self._targets: dict[str, tuple[httpx.URL, dict]] = {}

    def _target(self, resolution: Resolution) -> tuple[httpx.URL, dict]:
        route = resolution.route
        target = self._targets.get(route.name)
        if target is None:
            timeout = self.client.timeout
            if route.timeout_s is not None:
                timeout = httpx.Timeout(timeout, read=route.timeout_s)
            target = (httpx.URL(route.base_url.rstrip("/") + "/chat/completions"), {"timeout": timeout.as_dict()})
            self._targets[route.name] = target
        return target

    def build_chat_request(
        self, body: bytes, client_headers: dict[str, str], resolution: Resolution, route_headers: dict[str, str]
    ) -> httpx.Request:
        # Built directly rather than by client.build_request: that merges URLs, cookies and
        # default headers per call, ~10 % of the proxy's CPU, for a result that never changes.
        url, extensions = self._target(resolution)
        headers = {
            k: v
            for k, v in client_headers.items()
            if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("x-understudy")
        }
        if "authorization" in route_headers or self.strip_client_auth:
            for name in [k for k in headers if k.lower() == "authorization"]:
                del headers[name]
        headers.update(route_headers)
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"  # SSE must arrive chunk by chunk, uncompressed
        return httpx.Request("POST", url, content=body, headers=headers, extensions=extensions)

    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        return await self.client.send(request, stream=stream)

    async def get_models(self, client_headers: dict[str, str]) -> httpx.Response:
        """The default route's model list."""
        route = self.table.route_named("default")
        headers = {
            k: v
            for k, v in client_headers.items()
            if k.lower() not in _HOP_BY_HOP and not (self.strip_client_auth and k.lower() == "authorization")
        }
        key = route.key()  # the default route is keyless-ok: None forwards the client's header
        if key:
            headers["authorization"] = f"Bearer {key}"
        return await self.client.get(route.base_url.rstrip("/") + "/models", headers=headers, timeout=10.0)

    async def aclose(self) -> None:
        await self.client.aclose()


def pass_back_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in PASS_BACK_HEADERS if name in response.headers}
