"""The upstream client: one pooled aiohttp session for the life of the proxy, every route.

Which upstream a request goes to is decided by the route table (`proxy.upstreams`); this module
builds and sends the request. The client's body bytes are forwarded as they came unless the
route needs them changed (model alias, provider adjustments). The credential is the route's key
when it has one, else the client's own `Authorization` header (so a client holding a key works
with nothing set). With client keys on (`strip_client_auth`), the client's `Authorization` is its
Understudy client key and is never forwarded: a keyless route then sends no key at all (a server
of one's own).

aiohttp is used directly: at concurrency 1 the upstream leg is half of the proxy's CPU per
request, and httpx's client, requests, responses and streams on top of aiohttp's pool were
half of that again (docs/benchmarks.md). Its failures are turned into the few kinds the proxy
acts on (`UpstreamError` and its subclasses), so retries (`proxy.retries`) and the chat handler
read one vocabulary whatever the client library says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from understudy.proxy.upstreams import Resolution, UpstreamTable
from understudy.settings import Settings

# Headers from the client that describe the client's own connection or body encoding;
# aiohttp sets its own for the upstream leg.
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
POOL_WAIT_S = 30.0  # waiting for a free pooled connection under load, on top of the connect timeout
MAX_CONNECTIONS = 512


# ---- what can go wrong, in the proxy's words ----


class UpstreamError(Exception):
    """The upstream gave no usable HTTP answer. `transient`: asking again may well succeed."""

    transient = True


class ConnectFailed(UpstreamError):
    """Refused, unresolvable or reset before a connection stood: the upstream is unreachable."""


class ConnectTimedOut(UpstreamError):
    """No connection within the connect timeout (or no free pooled one in time)."""


class ReadTimedOut(UpstreamError):
    """Connected, but no byte of the answer within the read (for streams: stall) timeout."""


class ConnectionBroke(UpstreamError):
    """The connection closed or broke the protocol in the middle of an answer."""


class NotAnUpstream(UpstreamError):
    """The route's URL cannot be asked at all (not http(s), malformed): asking again cannot help."""

    transient = False


def upstream_error(exc: BaseException) -> UpstreamError:
    """aiohttp's (or the OS's) failure as the proxy's kind of it, the original kept as the cause."""
    text = str(exc).strip()
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind: type[UpstreamError] = ConnectTimedOut
    elif isinstance(exc, (aiohttp.SocketTimeoutError, asyncio.TimeoutError)):
        kind = ReadTimedOut
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = ConnectFailed
    elif isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        kind = NotAnUpstream
    else:
        kind = ConnectionBroke
    error = kind(text or type(exc).__name__)
    error.__cause__ = exc
    return error


# Everything the session can raise for a failed exchange (a timeout is an asyncio.TimeoutError).
_CLIENT_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


# ---- requests and answers ----


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    read_timeout_s: float  # the longest wait for any one read of the answer


class UpstreamResponse:
    """An upstream's HTTP answer: status and headers at once, the body read whole (`aread`, then
    `content`) or chunk by chunk as it arrives (`aiter_bytes`). `aclose` hands the connection back
    (or drops it when the body was not read to its end)."""

    __slots__ = ("_raw", "content", "headers", "read_timeout_s", "status_code")

    def __init__(self, raw: aiohttp.ClientResponse, read_timeout_s: float):
        self._raw = raw
        self.status_code: int = raw.status
        self.headers: Mapping[str, str] = raw.headers  # case-insensitive
        self.read_timeout_s = read_timeout_s
        self.content = b""

    async def aread(self) -> bytes:
        try:
            self.content = await self._raw.read()
        except _CLIENT_FAILURES as exc:
            raise upstream_error(exc) from exc
        finally:
            self._raw.release()
        return self.content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        chunks = self._raw.content.iter_any()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except _CLIENT_FAILURES as exc:
                raise upstream_error(exc) from exc
            yield chunk

    async def aclose(self) -> None:
        self._raw.release()


class Upstream:
    def __init__(self, settings: Settings, table: UpstreamTable, *, strip_client_auth: bool = False):
        self.table = table
        self.settings = settings
        self.strip_client_auth = strip_client_auth
        self._session: aiohttp.ClientSession | None = None  # made on the event loop, at first use
        # Per route, computed once: the chat URL and its read timeout; per read timeout, aiohttp's.
        self._targets: dict[str, tuple[str, float]] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0),
                # An upstream's Set-Cookie is neither kept nor sent on: the session is shared by
                # every client, and one client's cookie must not reach another's request.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    def _target(self, resolution: Resolution) -> tuple[str, float]:
        route = resolution.route
        target = self._targets.get(route.name)
        if target is None:
            read = route.timeout_s if route.timeout_s is not None else self.settings.upstream_read_timeout_s
            target = (route.base_url.rstrip("/") + "/chat/completions", read)
            self._targets[route.name] = target
        return target

    def build_chat_request(
        self, body: bytes, client_headers: dict[str, str], resolution: Resolution, route_headers: dict[str, str]
    ) -> UpstreamRequest:
        url, read_timeout_s = self._target(resolution)
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
        return UpstreamRequest(url, headers, body, read_timeout_s)

    def _timeout(self, read_timeout_s: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(read_timeout_s)
        if timeout is None:
            connect = self.settings.upstream_connect_timeout_s
            timeout = aiohttp.ClientTimeout(
                total=None, connect=connect + POOL_WAIT_S, sock_connect=connect, sock_read=read_timeout_s
            )
            self._timeouts[read_timeout_s] = timeout
        return timeout

    async def send(self, request: UpstreamRequest, *, stream: bool) -> UpstreamResponse:
        """The upstream's answer; its body already read unless `stream`. Raises `UpstreamError`."""
        try:
            raw = await self.session.request(
                "POST",
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=self._timeout(request.read_timeout_s),
                allow_redirects=False,
            )
        except _CLIENT_FAILURES as exc:
            raise upstream_error(exc) from exc
        response = UpstreamResponse(raw, request.read_timeout_s)
        if not stream:
            await response.aread()
        return response

    async def get_models(self, client_headers: dict[str, str]) -> UpstreamResponse:
        """The default route's model list (read whole). Raises `UpstreamError`."""
        route = self.table.route_named("default")
        headers = {
            k: v
            for k, v in client_headers.items()
            if k.lower() not in _HOP_BY_HOP and not (self.strip_client_auth and k.lower() == "authorization")
        }
        key = route.key()  # the default route is keyless-ok: None forwards the client's header
        if key:
            headers["authorization"] = f"Bearer {key}"
        try:
            raw = await self.session.get(
                route.base_url.rstrip("/") + "/models", headers=headers, timeout=self._timeout(10.0)
            )
        except _CLIENT_FAILURES as exc:
            raise upstream_error(exc) from exc
        response = UpstreamResponse(raw, 10.0)
        await response.aread()
        return response

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def pass_back_headers(response: UpstreamResponse) -> dict[str, str]:
    return {name: response.headers[name] for name in PASS_BACK_HEADERS if name in response.headers}
