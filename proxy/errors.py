"""Failures mapped to OpenAI-style error bodies, so every client's error handling just works.

{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from understudy.operations.base import OperationError
from understudy.store import SiteNotFound

_encoder = msgspec.json.Encoder()


# An error the proxy answers itself (the request is never forwarded): the operations' one error
# type (status, message, type, code, param), so a chat request's refusal and an admin operation's
# are answered by the one handler below.
ProxyError = OperationError


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return _encoder.encode({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    return Response(
        error_body(message, type=type, code=code, param=param),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def is_openai_error(payload: Any) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("error"), dict) and "message" in payload["error"]


def handle_operation_error(_: Request, exc: OperationError) -> Response[bytes]:
    return error_response(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[bytes]:
    """Litestar's own 4xx (413 body too large, 404, 405 ...) in OpenAI's shape."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
        exc.status_code
    )
    proxy = getattr(request.app.state, "proxy", None)
    if exc.status_code == 413 and proxy is not None:  # refused before forwarding, like any other rejection
        proxy.metrics.rejected.labels(code).inc()
    return error_response(exc.status_code, str(exc.detail), type=kind, code=code)


def handle_site_not_found(_: Request, exc: SiteNotFound) -> Response[bytes]:
    return error_response(404, str(exc), type="invalid_request_error", code="site_not_found")


def internal_error(exc: Exception) -> OperationError:
    """An unexpected failure of the proxy's own, as the client sees it (its type, never its text)."""
    return OperationError(
        500, f"internal proxy error: {type(exc).__name__}", type="server_error", code="internal_error"
    )


def handle_unexpected(request: Request, exc: Exception) -> Response[bytes]:
    return handle_operation_error(request, internal_error(exc))


EXCEPTION_HANDLERS = {
    OperationError: handle_operation_error,
    SiteNotFound: handle_site_not_found,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
