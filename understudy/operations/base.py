"""What an operation is, what it runs with, and its one error type.

An `Operation` names its admin route (method and path under /admin), its parameters, whether
it only reads, and one `run(ctx, args)`. The same declaration serves three callers: the proxy
mounts it as a route (`proxy.admin`), the CLI runs it on the store file when no proxy runs
(`understudy.cli.store_access`), and a client sends it to the running proxy (`understudy.operations.client`).

This module imports no subsystem (the training worker imports it through the admin client).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

from understudy.settings import Settings
from understudy.store import SiteNotFound, SiteRecord, Store

T = TypeVar("T")
REQUIRED: Any = object()
_PATH_PARAM = re.compile(r"{(\w+)}")


class OperationError(Exception):
    """A refused operation, in OpenAI's error shape: the admin API answers `status` with
    `{"error": {"message", "type", "param", "code"}}`, the CLI prints `error: MESSAGE` and exits 1.
    The proxy's own refusals of a chat request (`proxy.errors.ProxyError`) are this type too."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def error(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    @classmethod
    def from_response(cls, status: int, payload: Any, text: str) -> OperationError:
        """The error an admin API answer carries (a non-OpenAI body: its first 200 characters)."""
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            return cls(status, text[:200], type="server_error" if status >= 500 else "invalid_request_error")
        return cls(
            status,
            error["message"],
            type=error.get("type") or "invalid_request_error",
            code=error.get("code"),
            param=error.get("param"),
        )


@contextmanager
def refused(
    errors: type[Exception] | tuple[type[Exception], ...], status: int, code: str, param: str | None = None
) -> Iterator[None]:
    """Within it, a domain refusal (`errors`) becomes an OperationError with the same message
    (`param`: the argument at fault, else the exception's own `field` when it names one)."""
    try:
        yield
    except errors as exc:
        raise OperationError(status, str(exc), code=code, param=param or getattr(exc, "field", None)) from None


@dataclass(frozen=True)
class Text:
    """A result that is text, not JSON (the report): served with its media type."""

    body: str
    media_type: str


Kind = Literal["str", "int", "bool", "json", "versions"]


@dataclass(frozen=True)
class Param:
    """One argument: a path segment (named in the path), a query parameter (GET) or a body field (POST)."""

    name: str
    kind: Kind = "str"
    default: Any = REQUIRED

    def to_query(self, value: Any) -> str:
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "versions":
            return ",".join(str(v) for v in value or [])
        return "" if value is None else str(value)

    def from_query(self, text: str) -> Any:
        if self.kind == "int":
            try:
                return int(text)
            except ValueError:
                raise _invalid(self.name, f"{self.name} must be an integer, not {text!r}") from None
        if self.kind == "bool":
            if text.lower() not in ("1", "0", "true", "false", ""):
                raise _invalid(self.name, f"{self.name} must be true or false, not {text!r}")
            return text.lower() in ("1", "true")
        if self.kind == "versions":
            return parse_versions(text, self.name)
        return text


def parse_versions(text: str, name: str = "versions") -> list[int] | None:
    """'1,2' or 'v1,v2' (None for none)."""
    try:
        return [int(v.strip().lower().removeprefix("v")) for v in text.split(",") if v.strip()] or None
    except ValueError:
        raise OperationError(
            400, f"versions must be like 1,2 or v1,v2 (got {text!r})", code="invalid_versions", param=name
        ) from None


def _invalid(param: str, message: str) -> OperationError:
    return OperationError(400, message, code="invalid_parameter", param=param)


class Live(Protocol):
    """What a running proxy adds to an operation (`proxy.admin` builds it from its state)."""

    base_url: str  # the proxy's root URL as the caller reached it
    router: Any  # routing.router.Router: its validators, what it scores with (the kernel imports no routing)
    upstream_table: Any  # proxy.upstreams.UpstreamTable: the routes it forwards by

    def flush(self) -> None: ...  # the recorder's queue, written: a read sees every call before it

    def write(self, job: Callable[[Store], T]) -> T: ...  # the store's one writer (Recorder.run)

    def refresh_site(self, site_id: str) -> None: ...  # registry changed: reload the site and its routing

    def replace_site(self, record: SiteRecord) -> None: ...  # renamed: the in-memory site registry

    def review_changed(self, site_id: str) -> None: ...  # human reviews changed: creative sites re-decide


@dataclass
class Context:
    """What an operation runs with: the settings, the store (None where it is optional and absent),
    and the running proxy when it runs inside one (`live`), else None (the CLI on the store file)."""

    settings: Settings
    store: Store | None
    live: Live | None = None

    @property
    def db(self) -> Store:
        assert self.store is not None, "this operation needs the store"
        return self.store

    def write(self, job: Callable[[Store], T]) -> T:
        """`job(store)` as a change: on the proxy's writer thread, or right here on the file."""
        return self.live.write(job) if self.live is not None else job(self.db)

    def refresh_site(self, site_id: str) -> None:
        if self.live is not None:
            self.live.refresh_site(site_id)

    def validators(self) -> Any:
        """The task validators: the proxy's own (loaded once), else those the settings name."""
        if self.live is not None:
            return self.live.router.validators
        from understudy.validators import ValidatorRegistry

        return ValidatorRegistry(self.settings.validators)


@dataclass(frozen=True)
class Operation:
    """One operation, declared once. `path` lies under /admin; `{name}` segments are parameters
    (URL-quoted: site names hold ':' and may hold '/'). A POST sends the other parameters as a
    JSON object, or, with `body`, that one parameter as the whole body; a GET sends them as query
    parameters. `store`: the store is needed, opened only when present ('optional'), or unused."""

    name: str
    method: Literal["GET", "POST"]
    path: str
    run: Callable[[Context, dict[str, Any]], Any]
    params: tuple[Param, ...] = ()
    read_only: bool = True
    store: Literal["required", "optional", "none"] = "required"
    body: str | None = None
    text: bool = False  # the result is `Text`
    timeout_s: float = 30.0  # how long a client waits for the proxy's answer

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM.findall(self.path))

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run)

    def bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments with defaults filled in (None counts as not given); a missing one, an
        unknown one or a blank path segment is refused (a blank site as the store refuses it)."""
        known = {p.name for p in self.params}
        unknown = sorted(set(args) - known)
        if unknown:
            raise _invalid(unknown[0], f"{self.name} takes no parameter {unknown[0]!r}")
        bound = {}
        for param in self.params:
            value = args.get(param.name)
            if value is None:  # not given (a GET leaves it out of the query): its default
                value = param.default
            if value is REQUIRED:
                raise OperationError(400, f"{self.name} needs {param.name}", code="missing_parameter", param=param.name)
            if param.name in self.path_params and not str(value).strip():  # a path segment names a site
                raise OperationError(
                    404, "give a site id, name or id prefix (`understudy sites` lists them)", code="site_not_found"
                )
            bound[param.name] = value
        return bound

    # ---- over HTTP ----

    def request(self, args: Mapping[str, Any]) -> tuple[str, dict[str, str], Any]:
        """(path, query, JSON body) of the admin request that runs this operation with `args`."""
        bound = self.bind(args)
        path = _PATH_PARAM.sub(lambda m: quote(str(bound[m.group(1)]), safe=""), self.path)
        rest = [p for p in self.params if p.name not in self.path_params]
        if self.method == "GET":
            return path, {p.name: p.to_query(bound[p.name]) for p in rest if bound[p.name] is not None}, None
        if self.body is not None:
            return path, {}, bound[self.body]
        return path, {}, {p.name: bound[p.name] for p in rest}

    def args_from_http(self, path: Mapping[str, Any], query: Mapping[str, str], body: Any) -> dict[str, Any]:
        """The arguments of an admin request (the inverse of `request`)."""
        args = {name: path[name] for name in self.path_params}
        rest = [p for p in self.params if p.name not in self.path_params]
        if self.method == "GET":
            args.update({p.name: p.from_query(query[p.name]) for p in rest if p.name in query})
        elif self.body is not None:
            if not isinstance(body, dict):
                raise OperationError(400, "the body must be a JSON object", code="invalid_body")
            args[self.body] = body
        elif rest:
            if not isinstance(body, dict):
                raise OperationError(400, "the body must be a JSON object", code="invalid_body")
            args.update({p.name: body[p.name] for p in rest if p.name in body})
        return args

    # ---- running it ----

    def call(self, ctx: Context, args: Mapping[str, Any]) -> Any:
        """Run it here (the CLI on the store, or a proxy's worker thread)."""
        with _site_refusals():
            bound = self.bind(args)
            if self.store != "none" and ctx.live is not None:
                ctx.live.flush()
            result = self.run(ctx, bound)
            return asyncio.run(result) if inspect.iscoroutine(result) else result

    async def call_async(self, ctx: Context, args: Mapping[str, Any]) -> Any:
        """Run it from an event loop: an async operation here, a blocking one in a worker thread."""
        if not self.is_async:
            import anyio.to_thread

            return await anyio.to_thread.run_sync(lambda: self.call(ctx, args))
        with _site_refusals():
            return await self.run(ctx, self.bind(args))


@contextmanager
def _site_refusals() -> Iterator[None]:
    """Every operation: an unknown site is a 404 with the store's message (it names the likely candidates)."""
    try:
        yield
    except SiteNotFound as exc:
        raise OperationError(404, str(exc), code="site_not_found") from None
