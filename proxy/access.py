"""Who may call the proxy: client keys on /v1/*, the admin token on /report.

With client keys configured (`understudy.client_keys`), every /v1/* request must carry
`Authorization: Bearer <client key>`; a missing or unknown key is a 401 in OpenAI's shape
(`invalid_api_key`), counted in /metrics' rejected requests, and nothing is forwarded. The
key's name is kept in the request's state (`CLIENT_STATE`) so the call records which
client made it. The key itself never goes further: `proxy.upstream` drops the client's
Authorization whenever client keys are on.
"""

from __future__ import annotations

import hmac
from contextvars import ContextVar

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from understudy.proxy.errors import ProxyError

CLIENT_STATE = "understudy_client"  # key in the request's scope state: the client key's name
# The same name for code the request runs (and the background work it spawns, which copies
# the context): `chat._pending` stamps it on every call it records.
current_client: ContextVar[str | None] = ContextVar("understudy_client", default=None)


def bearer_token(connection: ASGIConnection) -> str:
    return _bearer(connection.headers.get("authorization", ""))


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def client_name(proxy, authorization: str) -> str | None:
    """The name of the client key in an `Authorization` header; None when keys are off (loopback
    without a keys file: whoever reaches 127.0.0.1 is this machine's user). A missing or unknown
    key is a 401 `ProxyError`, counted among /metrics' rejected requests."""
    keys = proxy.client_keys
    if keys is None:
        return None
    token = _bearer(authorization)
    name = keys.name_of(token)
    if name is None:
        reason = "wrong_client_key" if token else "missing_client_key"
        proxy.metrics.rejected.labels(reason).inc()
        message = (
            "incorrect client key provided"
            if token
            else "no client key: send `Authorization: Bearer <client key>` (`understudy keys add NAME` makes one)"
        )
        raise ProxyError(401, message, type="invalid_request_error", code="invalid_api_key")
    return name


async def require_client_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    # async: Litestar runs a sync guard in a worker thread, a thread hop on every request
    name = client_name(connection.app.state.proxy, connection.headers.get("authorization", ""))
    if name is not None:
        connection.scope.setdefault("state", {})[CLIENT_STATE] = name
        current_client.set(name)


def client_of(connection: ASGIConnection) -> str | None:
    """The name of the client key the request came with (None when keys are off)."""
    return connection.scope.get("state", {}).get(CLIENT_STATE)


def has_admin_token(connection: ASGIConnection, admin_token: str) -> bool:
    """The admin token as a bearer header or, for a browser, `?token=`; compared as bytes (any
    characters a client sends are a wrong token, never an error)."""
    given = bearer_token(connection) or connection.query_params.get("token", "")
    return bool(given) and same_token(given, admin_token)


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of bytes: compare_digest refuses non-ASCII text, which would turn
    a stray header into a 500 instead of a 401."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))
