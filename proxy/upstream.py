"""The upstream client: one pooled `httpx.AsyncClient` for the life of the proxy.

The proxy forwards the client's body bytes as they came (no re-encoding on the hot
path) and picks the credential: the configured upstream key when there is one, else
the client's own `Authorization` header (so a client that already holds a key keeps
working through the proxy with nothing configured).
"""

from __future__ import annotations

import httpx

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
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            headers={"accept-encoding": "identity"},  # SSE must arrive chunk by chunk, uncompressed
        )

    def headers_for(self, client_headers: dict[str, str]) -> dict[str, str]:
        headers = {k: v for k, v in client_headers.items() if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("x-understudy")}
        headers["content-type"] = "application/json"
        if self.key:
            for name in [k for k in headers if k.lower() == "authorization"]:
                del headers[name]
            headers["authorization"] = f"Bearer {self.key}"
        return headers

    def build_chat_request(self, body: bytes, client_headers: dict[str, str]) -> httpx.Request:
        return self.client.build_request("POST", "chat/completions", content=body, headers=self.headers_for(client_headers))

    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        return await self.client.send(request, stream=stream)

    async def get_models(self, client_headers: dict[str, str]) -> httpx.Response:
        return await self.client.get("models", headers=self.headers_for(client_headers), timeout=10.0)

    async def aclose(self) -> None:
        await self.client.aclose()


def pass_back_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in PASS_BACK_HEADERS if name in response.headers}
