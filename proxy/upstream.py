"""The upstream client: one pooled `httpx.AsyncClient` for the life of the proxy.

The client is httpx's API on aiohttp's transport (`httpx-aiohttp`, the transport the
OpenAI SDK offers for the same reason). The proxy forwards the client's body bytes as they came (no re-encoding on the hot
path) and picks the credential: the configured upstream key when there is one, else
the client's own `Authorization` header (so a client that already holds a key keeps
working through the proxy with nothing configured).
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from understudy.settings import Settings

# Headers from the client that describe the client's own connection or body encoding;
# httpx sets its own for the upstream leg.
_HOP_BY_HOP = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding", "keep-alive"}
# Headers from the upstream worth passing back to the client.
PASS_BACK_HEADERS = ("x-request-id", "openai-processing-ms", "openai-model", "x-ratelimit-remaining-requests",
                     "x-ratelimit-remaining-tokens", "retry-after")


class Upstream:
    def __init__(self, settings: Settings):
        self.base_url = settings.upstream_url
        self.key = settings.resolved_upstream_key()
        self.client = httpx.AsyncClient(
            base_url=self.base_url + "/",
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
        self._chat_url = httpx.URL(self.base_url + "/chat/completions")
        self._extensions = {"timeout": self.client.timeout.as_dict()}

    def headers_for(self, client_headers: dict[str, str]) -> dict[str, str]:
        headers = {k: v for k, v in client_headers.items() if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("x-understudy")}
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"  # SSE must arrive chunk by chunk, uncompressed
        if self.key:
            for name in [k for k in headers if k.lower() == "authorization"]:
                del headers[name]
            headers["authorization"] = f"Bearer {self.key}"
        return headers

    def build_chat_request(self, body: bytes, client_headers: dict[str, str]) -> httpx.Request:
        # Built directly rather than by client.build_request: that merges URLs, cookies and
        # default headers per call, ~10 % of the proxy's CPU, for a result that never changes.
        return httpx.Request("POST", self._chat_url, content=body, headers=self.headers_for(client_headers),
                             extensions=self._extensions)

    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        return await self.client.send(request, stream=stream)

    async def get_models(self, client_headers: dict[str, str]) -> httpx.Response:
        return await self.client.get("models", headers=self.headers_for(client_headers), timeout=10.0)

    async def aclose(self) -> None:
        await self.client.aclose()


def pass_back_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in PASS_BACK_HEADERS if name in response.headers}
