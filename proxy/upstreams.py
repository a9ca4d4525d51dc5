"""The upstream route table: which provider, URL and key serve a requested model.

One table, first match wins (see DESIGN.md, "Upstream routing"):

1. routes from the configuration file (`<data-dir>/upstreams.toml`, or `--config PATH`);
2. built-in provider routes: `claude-*` → Anthropic's OpenAI-compatible API (key in
   `ANTHROPIC_API_KEY`), `gemini-*` → Google's (key in `GEMINI_API_KEY`, else `GOOGLE_API_KEY`);
3. the default upstream (`--upstream-url`, OpenAI unless set) for everything else, `gpt-*`
   and `o*` included. Its key is the configured upstream key, else `OPENAI_API_KEY`, else
   none: then the client's own `Authorization` header is forwarded (`keyless_ok`).

A provider route whose key is not set raises `MissingKey` naming the provider, the model
and the variable; it never falls through to another route. Aliases (`[aliases]`) map a
logical name a client asks for to a concrete model, and optionally to a named route; the
`Resolution` keeps both names. The file only ever names environment variables, never keys:

    [[routes]]
    name = "local"                        # optional; defaults to the pattern
    pattern = "qwen*"                     # fnmatch glob on the requested (or aliased) model
    provider = "openai-compatible"        # openai | anthropic | gemini | openai-compatible
    base_url = "http://127.0.0.1:8001/v1"
    key_env = "LOCAL_LLM_KEY"             # optional for openai-compatible; provider default otherwise
    headers = { "x-team" = "games" }      # extra headers sent upstream
    timeout_s = 120                       # read timeout for this route
    price_input = 0.0                     # $ per million prompt tokens
    price_output = 0.0                    # $ per million completion tokens
    model = "Qwen/Qwen2.5-7B-Instruct"    # optional: the model name sent upstream
    check_model = "qwen2.5"               # optional: model `upstreams --check` asks for

    [aliases]
    level-designer = "claude-3-5-haiku-latest"
    narrator = { model = "gpt-4o-mini", route = "default" }

    [local_server]                        # optional: local answers from llama-server (inference.model_server)
    url = "http://gpu-host:8080"
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from understudy.inference.model_server import LocalServerConfig
from understudy.proxy.providers import adjust_request

PROVIDERS = ("openai", "anthropic", "gemini", "openai-compatible")
OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com/v1"
GEMINI_URL = "https://generativelanguage.googleapis.com/v1beta/openai"
CONFIG_FILE_NAME = "upstreams.toml"

# Where each provider lives and which variables hold its key, when a route does not say.
PROVIDER_BASE_URL = {"openai": OPENAI_URL, "anthropic": ANTHROPIC_URL, "gemini": GEMINI_URL}
PROVIDER_KEY_ENVS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
BUILT_IN_ROUTE_NAMES = ("anthropic", "gemini", "default")

_ROUTE_FIELDS = {
    "name",
    "pattern",
    "provider",
    "base_url",
    "key_env",
    "headers",
    "extra_headers",
    "timeout_s",
    "price_input",
    "price_output",
    "model",
    "check_model",
    "keyless_ok",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Header names that would carry a credential: keys belong in the environment, not the file.
_CREDENTIAL_HEADERS = {"authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization"}
_GLOB_CHARS = set("*?[")


class UpstreamConfigError(ValueError):
    """The upstreams configuration is invalid; the message is one line naming file and entry."""


class MissingKey(Exception):
    """The route that serves a model needs a key that is not set (never falls through)."""

    status = 401
    code = "upstream_key_missing"

    def __init__(self, provider: str, model: str, env_name: str, route: str | None = None):
        self.provider = provider
        self.model = model
        self.env_name = env_name
        self.route = route
        super().__init__(
            f"no API key for provider {provider!r} (model {model!r}): set {env_name} in the proxy's environment"
        )


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    pattern: str
    provider: str
    base_url: str
    key_env: str | None = None  # the variable's NAME; never the key
    extra_headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    price_input: float | None = None  # $ per million prompt tokens
    price_output: float | None = None  # $ per million completion tokens
    model: str | None = None  # rewrite: the model name sent upstream
    check_model: str | None = None
    keyless_ok: bool = False  # no key → forward the client's own Authorization header
    key_env_fallbacks: tuple[str, ...] = ()  # further variables tried in order (GOOGLE_API_KEY)
    source: str = "built-in"  # "config" or "built-in"
    # The explicitly configured key of the default route (settings' upstream key); never printed.
    explicit_key: str | None = field(default=None, repr=False, compare=False)

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.pattern)

    @property
    def key_envs(self) -> tuple[str, ...]:
        return ((self.key_env,) if self.key_env else ()) + self.key_env_fallbacks

    def key_env_label(self) -> str | None:
        return " or ".join(self.key_envs) or None

    def key(self) -> str | None:
        """The key, read now (explicit key first, then each variable in order)."""
        if self.explicit_key:
            return self.explicit_key
        for name in self.key_envs:
            value = os.environ.get(name)
            if value:
                return value
        return None

    @property
    def price(self) -> tuple[float, float] | None:
        if self.price_input is None and self.price_output is None:
            return None
        return (self.price_input or 0.0, self.price_output or 0.0)


@dataclass(frozen=True, slots=True)
class Alias:
    name: str
    model: str
    route: str | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    route: Route
    upstream_model: str  # what the upstream is asked for
    requested_model: str  # what the client asked for
    alias: str | None = None  # the alias name when the client used one

    @property
    def provider(self) -> str:
        return self.route.provider

    @property
    def rewrites_model(self) -> bool:
        return self.upstream_model != self.requested_model

    def key(self) -> str | None:
        """The route's key now; None on a keyless route (forward the client's Authorization).

        Raises MissingKey when the route needs a key that is not set.
        """
        key = self.route.key()
        if key is None and not self.route.keyless_ok:
            raise MissingKey(
                self.route.provider, self.upstream_model, self.route.key_env_label() or "a key", self.route.name
            )
        return key

    def headers(self) -> dict[str, str]:
        """Headers to set on the upstream request: the route's extra headers and, when a key
        is set, `authorization: Bearer <key>` (replacing the client's). Raises MissingKey."""
        key = self.key()
        headers = dict(self.route.extra_headers)
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def prepare_body(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The body to send when it must differ from the client's (model rewritten or provider
        adjustments); None when the client's bytes can be forwarded as they are.

        Raises providers.UnsupportedRequest when the provider cannot serve the request."""
        body = payload
        if self.rewrites_model and payload.get("model") != self.upstream_model:
            body = {**payload, "model": self.upstream_model}
        adjusted = adjust_request(self.route.provider, body)
        return None if adjusted is payload else adjusted


class UpstreamTable:
    def __init__(self, routes: list[Route], aliases: dict[str, Alias], config_path: Path | None = None):
        self.routes = routes
        self.aliases = aliases
        self.config_path = config_path
        self._by_name = {route.name: route for route in routes}
        self._cache: dict[str, Resolution] = {}

    @classmethod
    def load(
        cls, config_path: Path | None, default_url: str, default_key: str | None = None, default_free: bool = False
    ) -> UpstreamTable:
        """Routes from `config_path` (skipped when None or, for the default path, absent),
        then the built-in routes. `default_key` is the explicitly configured upstream key."""
        routes: list[Route] = []
        aliases: dict[str, Alias] = {}
        if config_path is not None and Path(config_path).exists():
            routes, aliases = _parse_file(Path(config_path))
        routes = routes + built_in_routes(default_url, default_key, default_free)
        names = {route.name for route in routes}
        for alias in aliases.values():
            if alias.route is not None and alias.route not in names:
                raise UpstreamConfigError(
                    f"{config_path}: alias {alias.name!r} names route {alias.route!r}, "
                    f"which does not exist (routes: {', '.join(sorted(names))})"
                )
        return cls(routes, aliases, Path(config_path) if config_path is not None else None)

    @classmethod
    def from_config(
        cls,
        explicit: Path | None,
        data_dir: Path,
        default_url: str,
        default_key: str | None = None,
        default_free: bool = False,
    ) -> UpstreamTable:
        """`--config PATH` (must exist), else `<data-dir>/upstreams.toml` (optional)."""
        if explicit is not None and not Path(explicit).exists():
            raise UpstreamConfigError(f"{explicit}: upstreams configuration file not found")
        return cls.load(
            explicit if explicit is not None else Path(data_dir) / CONFIG_FILE_NAME,
            default_url,
            default_key,
            default_free,
        )

    def route_named(self, name: str) -> Route | None:
        return self._by_name.get(name)

    def resolve(self, model: str) -> Resolution:
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        resolution = self._resolve(model)
        if len(self._cache) > 4096:  # model names come from clients: keep the cache bounded
            self._cache.clear()
        self._cache[model] = resolution
        return resolution

    def _resolve(self, model: str) -> Resolution:
        alias = self.aliases.get(model)
        target = alias.model if alias else model
        if alias is not None and alias.route is not None:
            route = self._by_name[alias.route]
        else:
            route = next(r for r in self.routes if r.matches(target))  # the default route matches "*"
        return Resolution(
            route=route,
            upstream_model=route.model or target,
            requested_model=model,
            alias=alias.name if alias else None,
        )

    def describe(self) -> list[dict[str, Any]]:
        """One row per route for `understudy upstreams`; key values are never included."""
        rows = []
        for route in self.routes:
            key_set = route.key() is not None
            rows.append(
                {
                    "name": route.name,
                    "pattern": route.pattern,
                    "provider": route.provider,
                    "base_url": route.base_url,
                    "key_env": route.key_env_label(),  # variable names only
                    "key_set": key_set,
                    "auth": _auth_label(route, key_set),
                    "timeout_s": route.timeout_s,
                    "price_input": route.price_input,
                    "price_output": route.price_output,
                    "model": route.model,
                    "source": route.source,
                }
            )
        return rows

    def describe_aliases(self) -> list[dict[str, Any]]:
        return [
            {"alias": a.name, "model": a.model, "route": a.route or self.resolve(a.name).route.name}
            for a in self.aliases.values()
        ]


def _auth_label(route: Route, key_set: bool) -> str:
    if route.explicit_key:
        return "configured upstream key"
    if key_set:
        return "key from " + next(name for name in route.key_envs if os.environ.get(name))
    return (
        "client's Authorization forwarded" if route.keyless_ok else "MISSING: set " + (route.key_env_label() or "a key")
    )


def built_in_routes(default_url: str, default_key: str | None = None, default_free: bool = False) -> list[Route]:
    """Anthropic, Gemini, then the default route; `default_free`: the default upstream charges
    nothing (the offline teacher, a model server of one's own), so its calls cost 0."""
    default_url = default_url.rstrip("/")
    default_provider = "openai" if default_url == OPENAI_URL else "openai-compatible"
    free_price = 0.0 if default_free else None
    return [
        Route(
            name="anthropic",
            pattern="claude-*",
            provider="anthropic",
            base_url=ANTHROPIC_URL,
            key_env="ANTHROPIC_API_KEY",
            check_model="claude-3-5-haiku-latest",
        ),
        Route(
            name="gemini",
            pattern="gemini-*",
            provider="gemini",
            base_url=GEMINI_URL,
            key_env="GEMINI_API_KEY",
            key_env_fallbacks=("GOOGLE_API_KEY",),
            check_model="gemini-2.0-flash",
        ),
        Route(
            name="default",
            pattern="*",
            provider=default_provider,
            base_url=default_url,
            key_env="OPENAI_API_KEY",
            keyless_ok=True,
            explicit_key=default_key or None,
            # OpenAI's own is checked with gpt-4o-mini; a server of one's own with a model it lists
            check_model="gpt-4o-mini" if default_provider == "openai" else None,
            price_input=free_price,
            price_output=free_price,
        ),
    ]


def is_glob(pattern: str) -> bool:
    return any(char in _GLOB_CHARS for char in pattern)


# --- parsing -------------------------------------------------------------------------------


def local_server_config(explicit: Path | None, data_dir: Path) -> LocalServerConfig | None:
    """The configuration's `[local_server]` (inference.model_server), or None: local answers in-process."""
    path = explicit if explicit is not None else Path(data_dir) / CONFIG_FILE_NAME
    if not Path(path).exists():
        return None
    data = _read_toml(Path(path))
    if "local_server" not in data:
        return None
    try:
        return LocalServerConfig.from_table(str(path), data["local_server"])
    except ValueError as exc:
        raise UpstreamConfigError(str(exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UpstreamConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UpstreamConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _parse_file(path: Path) -> tuple[list[Route], dict[str, Alias]]:
    data = _read_toml(path)
    unknown = set(data) - {"routes", "aliases", "local_server"}
    if unknown:
        raise UpstreamConfigError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} "
            "(expected [[routes]], [aliases] and [local_server])"
        )
    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list) or not all(isinstance(entry, dict) for entry in raw_routes):
        raise UpstreamConfigError(f"{path}: 'routes' must be an array of tables ([[routes]])")
    routes: list[Route] = []
    for index, entry in enumerate(raw_routes, start=1):
        route = _parse_route(path, index, entry)
        if route.name in BUILT_IN_ROUTE_NAMES:
            raise UpstreamConfigError(
                f"{path}: route #{index} ({route.name!r}): the name {route.name!r} is "
                f"reserved for a built-in route; choose another name"
            )
        if any(existing.name == route.name for existing in routes):
            raise UpstreamConfigError(f"{path}: route #{index}: duplicate route name {route.name!r}")
        routes.append(route)
    raw_aliases = data.get("aliases", {})
    if not isinstance(raw_aliases, dict):
        raise UpstreamConfigError(f"{path}: 'aliases' must be a table ([aliases])")
    aliases = {name: _parse_alias(path, name, value) for name, value in raw_aliases.items()}
    return routes, aliases


def _parse_route(path: Path, index: int, entry: dict[str, Any]) -> Route:
    where = f"{path}: route #{index}" + (f" ({entry['name']!r})" if isinstance(entry.get("name"), str) else "")

    def fail(message: str) -> UpstreamConfigError:
        return UpstreamConfigError(f"{where}: {message}")

    for secret in ("key", "api_key", "apikey", "token"):
        if secret in entry:
            raise fail(
                f"'{secret}' is not allowed: keys are never read from the file; "
                "put the key in an environment variable and name it with key_env"
            )
    unknown = set(entry) - _ROUTE_FIELDS
    if unknown:
        raise fail(f"unknown field(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_ROUTE_FIELDS))})")
    pattern = entry.get("pattern")
    if not isinstance(pattern, str) or not pattern.strip():
        raise fail("'pattern' is required: a model name or glob such as \"claude-*\"")
    provider = entry.get("provider")
    if provider not in PROVIDERS:
        raise fail(f"'provider' must be one of {', '.join(PROVIDERS)} (got {provider!r})")
    name = entry.get("name", pattern)
    if not isinstance(name, str) or not name.strip():
        raise fail("'name' must be a non-empty string")

    base_url = entry.get("base_url", PROVIDER_BASE_URL.get(provider))
    if base_url is None:
        raise fail("'base_url' is required for provider openai-compatible (e.g. \"http://127.0.0.1:8001/v1\")")
    if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url):
        raise fail(f"'base_url' must be an http(s) URL (got {base_url!r})")

    key_env = entry.get("key_env")
    fallbacks: tuple[str, ...] = ()
    if key_env is None:
        defaults = PROVIDER_KEY_ENVS.get(provider, ())
        key_env, fallbacks = (defaults[0], defaults[1:]) if defaults else (None, ())
    else:
        names = [key_env] if isinstance(key_env, str) else key_env
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise fail("'key_env' must be an environment variable name (or a list of names)")
        for env_name in names:
            if not _ENV_NAME.match(env_name):
                raise fail(
                    f"'key_env' must name an environment variable (letters, digits, _), not hold a key "
                    f"(got a value of {len(env_name)} characters)"
                )
        key_env, fallbacks = names[0], tuple(names[1:])

    headers = entry.get("headers", entry.get("extra_headers", {}))
    if "headers" in entry and "extra_headers" in entry:
        raise fail("give 'headers' or 'extra_headers', not both")
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise fail("'headers' must be a table of string values")
    secret_headers = sorted(k for k in headers if k.lower() in _CREDENTIAL_HEADERS)
    if secret_headers:
        raise fail(f"header {secret_headers[0]!r} would put a credential in the file; use key_env instead")

    timeout = entry.get("timeout_s")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        raise fail(f"'timeout_s' must be a positive number of seconds (got {timeout!r})")
    prices: dict[str, float | None] = {}
    for price_field in ("price_input", "price_output"):
        value = entry.get(price_field)
        if value is not None and (not _is_number(value) or value < 0):
            raise fail(f"'{price_field}' must be a non-negative number of $ per million tokens (got {value!r})")
        prices[price_field] = float(value) if value is not None else None
    for text_field in ("model", "check_model"):
        value = entry.get(text_field)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise fail(f"'{text_field}' must be a non-empty string")
    keyless_ok = entry.get("keyless_ok", key_env is None)
    if not isinstance(keyless_ok, bool):
        raise fail("'keyless_ok' must be true or false")

    return Route(
        name=name,
        pattern=pattern,
        provider=provider,
        base_url=base_url.rstrip("/"),
        key_env=key_env,
        key_env_fallbacks=fallbacks,
        extra_headers=dict(headers),
        timeout_s=float(timeout) if timeout is not None else None,
        model=entry.get("model"),
        check_model=entry.get("check_model"),
        keyless_ok=keyless_ok,
        source="config",
        price_input=prices["price_input"],
        price_output=prices["price_output"],
    )


def _parse_alias(path: Path, name: str, value: Any) -> Alias:
    where = f"{path}: alias {name!r}"
    model: object  # checked below
    route: object
    if isinstance(value, str):
        model, route = value, None
    elif isinstance(value, dict):
        unknown = set(value) - {"model", "route"}
        if unknown:
            raise UpstreamConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (allowed: model, route)")
        model, route = value.get("model"), value.get("route")
        if route is not None and (not isinstance(route, str) or not route):
            raise UpstreamConfigError(f"{where}: 'route' must be a route name")
    else:
        raise UpstreamConfigError(f'{where}: must be a model name or a table {{ model = "...", route = "..." }}')
    if not isinstance(model, str) or not model.strip():
        raise UpstreamConfigError(f"{where}: 'model' must be a non-empty model name")
    if is_glob(model):
        raise UpstreamConfigError(f"{where}: the target {model!r} must be a concrete model, not a glob")
    return Alias(name=name, model=model, route=route)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
