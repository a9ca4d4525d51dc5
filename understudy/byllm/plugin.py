"""Jac plugin: send every `by llm()` request to Understudy, tagged with its exact call site.

Inert unless the environment variable `UNDERSTUDY_URL` is set (the proxy's OpenAI base URL,
e.g. `http://127.0.0.1:8000/v1`). Unset, the plugin's two hooks return None at once and
nothing is patched: a Jac program behaves exactly as without it.

Supported: byLLM 0.6.x (tested with byLLM 0.6.19, jaclang 0.16.7, litellm 1.82). Any other
byLLM version, a model class the plugin does not know, or an exception inside the plugin
leaves the call untouched and prints ONE warning on stderr per process.

How it attaches
---------------
jaclang loads the `jac` entry-point group when it is imported (`jaclang/__init__.py`,
`load_plugins_with_disabling`) and registers the object an entry point names (here the class
`UnderstudyPlugin`) with its own plugin manager (`jaclang/jac0core/plugin.jac`), which is
not pluggy: every hook is first-result, implementations are asked in reverse registration
order, and entry points come in directory-listing order, so byLLM's plugin may be registered
after ours and answer `call_llm` first. Two things make this deterministic:

- the plugin never competes: its `call_llm` / `acall_llm` implementations attach to the
  model and then return None, so the next implementation (byLLM's) always answers;
- it is always consulted: while active, the plugin wraps the manager's `register` so that
  after any later registration it moves itself (public `unregister` + `register`) back to the
  top of the `call_llm` / `acall_llm` implementations.

Attaching installs, once per process, wrappers on byLLM's `Model` class (guarded by the
version check and a check that every method exists). byLLM 0.6 has no public way to add
request fields or headers; every request it sends (first turn, typed-output retries, tool
loop steps, streams, compaction) is built by `Model.make_model_params(mt_run)` and sent by
one of `Model.model_call_{no_stream,with_stream}[_async]`. The wrappers:

- `make_model_params`: adds `metadata.understudy_site` = `<module>.<qualname>` of
  `mt_run.mtir.caller` (byLLM's own rule from `byllm/plugin.jac` `fetch_mtir`: a caller in
  `__main__` is named by its file's stem, less `.impl`/`.cl`/`.sv`), and sets `api_base` to
  the proxy (`UNDERSTUDY_URL`, or `UNDERSTUDY_URL/chat/completions` for `http_client`
  models), whatever base URL the program configured;
- `model_call_*`: per transport, exactly as byLLM 0.6 picks it (`http_client` is used only
  for non-streaming and async streaming calls; synchronous streaming always goes to litellm):
  - litellm (the default): `api_base` = the proxy, `custom_llm_provider="openai"` with the
    model's provider prefix taken off (`anthropic/claude-x` is sent as `claude-x`; the proxy
    routes by name), `extra_body={"metadata": {"understudy_site": ...}}` (litellm keeps its
    own `metadata` kwarg out of the body) and `extra_headers={"X-Understudy-Site": ...}`;
  - `http_client`: the body is the params as they are, so it carries `metadata` with
    `understudy_site` beside byLLM's `jac_*` fields; byLLM builds that transport's headers
    inside `model_call_http` with no way to add one, so no header there;
  - `proxy` (OpenAI SDK): `metadata.understudy_site` in the body (the SDK sends `metadata`)
    and the `X-Understudy-Site` header.

Models that are not `byllm.llm.Model` (`ModelPool`, other `BaseLLM` subclasses), and `Model`
subclasses that override any wrapped method, are left untouched with the one warning.
`Model("mockllm")` and `Model("local:...")` delegate to in-process backends that send nothing
over HTTP; they are left alone silently.

What is covered, and what is not
--------------------------------
- Jac `by llm()` functions and methods, sync and async, streaming, typed-output retries and
  tool-loop steps: redirected and tagged.
- Conversation compaction (the summarising request byLLM makes inside a long tool loop) and
  visit routing (`visit [-->] by llm()`, `by_operator`): redirected to the proxy, but byLLM
  builds them with `mtir=None`, so they carry no call site; the proxy identifies them by
  their signature.
- The Python-side decorator `byllm.lib.by` calls `model.invoke` directly, not through
  jaclang's hooks: its requests are redirected and tagged once the wrappers are installed
  (after the first Jac `by llm()` call in the process, or by calling `attach()` from this
  module); a pure-Python program that never calls `attach()` is not redirected.
- `ModelPool` (litellm Router) is not redirected.
- Async streaming on `http_client` is redirected and tagged, but byLLM 0.6.19 itself cannot
  read its SSE reply there (`response.json()`), with or without the plugin; not tested.
- The `proxy: True` transport (OpenAI SDK) is handled as described but not tested: byLLM
  0.6.19 crashes after its first reply on that transport anyway.
- On litellm, a model with no `api_key` and no `OPENAI_API_KEY` in the environment (e.g.
  `anthropic/...` with only `ANTHROPIC_API_KEY`) is sent with a placeholder bearer key
  (`sk-understudy-placeholder`): the proxy must hold that provider's upstream key.

A small public hook in byLLM would make all of this patch-free: e.g. a `Model` config entry
(or jaclang hook) for extra request headers and body fields per request, given `mt_run`
(`request_metadata(mt_run) -> {"headers": ..., "body": ...}`), applied by all transports, and
`mt_run.mtir.caller`'s qualified site name in the `metadata` byLLM already sends.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
from pathlib import Path
from typing import Any

from jaclang.jac0core.runtime import hookimpl, plugin_manager

from understudy.byllm.prompt import PLUGIN_TAG_SOURCE

__all__ = ["UnderstudyPlugin", "attach", "site_name", "SUPPORTED_BYLLM"]

SUPPORTED_BYLLM = "0.6."  # version prefix; tested with 0.6.19
SITE_HEADER = "X-Understudy-Site"

PLACEHOLDER_KEY = "sk-understudy-placeholder"  # litellm only, when the program has no OpenAI key
_WRAPPED = (
    "make_model_params",
    "model_call_no_stream",
    "model_call_with_stream",
    "model_call_no_stream_async",
    "model_call_with_stream_async",
)

_lock = threading.Lock()
_warned = False
_installed: type | None = None  # the byllm Model class once wrapped
_install_failed = False
_known_classes: dict[type, bool] = {}
_originals: dict[str, Any] = {}


def _url() -> str | None:
    url = os.environ.get("UNDERSTUDY_URL", "").strip()
    return url.rstrip("/") or None


def _warn(message: str) -> None:
    """One warning per process, whatever the cause."""
    global _warned
    if _warned:
        return
    _warned = True
    try:
        sys.stderr.write(f"understudy: {message}; byLLM calls go ahead untouched (not sent to UNDERSTUDY_URL)\n")
        sys.stderr.flush()
    except Exception:
        pass


# ---------------------------------------------------------------- call-site name


def _module_name(module_name: str | None) -> str:
    """byLLM's rule (byllm/plugin.jac `fetch_mtir`): `__main__` becomes the file's stem."""
    if module_name and module_name == "__main__":
        main_mod = sys.modules.get("__main__")
        main_file = getattr(main_mod, "__file__", None) if main_mod else None
        if main_file:
            stem = Path(main_file).stem
            if stem.endswith(".impl"):
                stem = stem[:-5]
            elif stem.endswith(".cl") or stem.endswith(".sv"):
                stem = stem[:-3]
            return stem
        return Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "__main__"
    return module_name or "__main__"


def site_name(caller: Any) -> str | None:
    """`<module>.<qualname>` of a `by llm()` caller (function or bound method), or None."""
    if caller is None:
        return None
    qualname = getattr(caller, "__qualname__", None)
    if not qualname:
        return None
    return f"{_module_name(getattr(caller, '__module__', None))}.{qualname}"


def _site_of(mt_run: Any) -> str | None:
    mtir = getattr(mt_run, "mtir", None)
    return site_name(getattr(mtir, "caller", None)) if mtir is not None else None


# ---------------------------------------------------------------- request rewriting


def _provider_prefixes() -> set[str]:
    try:
        import litellm

        return {getattr(p, "value", p) for p in litellm.provider_list}
    except Exception:
        return set()


_prefix_cache: set[str] | None = None


def _openai_model_name(model: str) -> str:
    global _prefix_cache
    prefix, sep, rest = model.partition("/")
    if not sep or not rest:
        return model
    if _prefix_cache is None:
        _prefix_cache = _provider_prefixes()
    return rest if prefix in _prefix_cache else model


def _site_in(params: dict) -> str | None:
    metadata = params.get("metadata")
    return metadata.get("understudy_site") if isinstance(metadata, dict) else None


def _for_transport(params: dict, transport: str, url: str) -> dict:
    """A new params dict for one send, per byLLM transport (litellm | proxy | http)."""
    site = _site_in(params)
    new = dict(params)
    if transport == "http":
        return new  # the params are the body: metadata is already there
    if site:
        headers = dict(new.get("extra_headers") or {})
        headers[SITE_HEADER] = site
        new["extra_headers"] = headers
    if transport == "litellm":
        new["api_base"] = url
        new["custom_llm_provider"] = "openai"
        new["model"] = _openai_model_name(str(new.get("model", "")))
        if site:
            extra_body = dict(new.get("extra_body") or {})
            metadata = dict(extra_body.get("metadata") or {})
            metadata["understudy_site"] = site
            metadata["understudy_site_source"] = PLUGIN_TAG_SOURCE
            extra_body["metadata"] = metadata
            new["extra_body"] = extra_body
    return new


def _transport(model: Any, streaming: bool, is_async: bool) -> str:
    """Which transport byLLM 0.6 uses (byllm/llm.impl/model.impl.jac)."""
    if getattr(model, "http_client", False) and (not streaming or is_async):
        return "http"
    if getattr(model, "proxy", False):
        return "proxy"
    return "litellm"


def _applies(model: Any) -> bool:
    """Active, and the model's class is one the wrappers know."""
    if _url() is None:
        return False
    cls = type(model)
    known = _known_classes.get(cls)
    if known is None:
        known = (
            _installed is not None
            and isinstance(model, _installed)
            and all(getattr(cls, name, None) is getattr(_installed, name, None) for name in _WRAPPED)
        )
        _known_classes[cls] = known
    return known


def _wrap_make_model_params(original):
    def make_model_params(self, mt_run):
        params = original(self, mt_run)
        try:
            if not _applies(self):
                return params
            url = _url()
            new = dict(params)
            metadata = dict(new.get("metadata") or {})
            site = _site_of(mt_run)
            if site:
                metadata["understudy_site"] = site
                metadata["understudy_site_source"] = PLUGIN_TAG_SOURCE  # an exact tag: may claim history
            new["metadata"] = metadata
            new["api_base"] = f"{url}/chat/completions" if getattr(self, "http_client", False) else url
            return new
        except Exception as exc:  # never break the program
            _warn(f"could not tag a request ({type(exc).__name__}: {exc})")
            return params

    make_model_params.__wrapped__ = original
    make_model_params.__name__ = "make_model_params"
    return make_model_params


def _wrap_call(original, streaming: bool, is_async: bool):
    def prepare(self, params):
        """(model, params) to send with: the originals when the plugin does not apply."""
        try:
            if _applies(self):
                transport = _transport(self, streaming, is_async)
                new = _for_transport(params, transport, _url())
                target = self
                if transport == "litellm" and not (self.api_key or os.environ.get("OPENAI_API_KEY")):
                    # litellm's OpenAI client refuses to start without a key (a program
                    # on e.g. `anthropic/...` has none); the proxy holds the upstream keys.
                    target = copy.copy(self)
                    target.api_key = PLACEHOLDER_KEY
                return target, new
        except Exception as exc:
            _warn(f"could not redirect a request ({type(exc).__name__}: {exc})")
        return self, params

    call: Any
    if is_async:

        async def call_async(self, params):
            return await original(*prepare(self, params))

        call = call_async
    else:

        def call_sync(self, params):
            return original(*prepare(self, params))

        call = call_sync
    call.__wrapped__ = original
    call.__name__ = original.__name__
    return call


def _install(model_cls: Any) -> bool:
    """Wrap byLLM's Model once per process; False (and one warning) when it cannot."""
    global _installed, _install_failed
    if _installed is not None:
        return True
    if _install_failed:
        return False
    with _lock:
        if _installed is not None:
            return True
        try:
            from importlib.metadata import version

            byllm_version = version("byllm")
            if not byllm_version.startswith(SUPPORTED_BYLLM):
                raise RuntimeError(f"byLLM {byllm_version} is not supported (byLLM {SUPPORTED_BYLLM}x is)")
            missing = [name for name in _WRAPPED if not callable(getattr(model_cls, name, None))]
            if missing:
                raise RuntimeError(f"byLLM's Model has no {', '.join(missing)}")
            wrappers = {
                "make_model_params": _wrap_make_model_params(model_cls.make_model_params),
                "model_call_no_stream": _wrap_call(model_cls.model_call_no_stream, False, False),
                "model_call_with_stream": _wrap_call(model_cls.model_call_with_stream, True, False),
                "model_call_no_stream_async": _wrap_call(model_cls.model_call_no_stream_async, False, True),
                "model_call_with_stream_async": _wrap_call(model_cls.model_call_with_stream_async, True, True),
            }
            for name in _WRAPPED:
                _originals[name] = model_cls.__dict__.get(name)
            for name, wrapper in wrappers.items():
                setattr(model_cls, name, wrapper)
            _known_classes.clear()
            _installed = model_cls
            return True
        except Exception as exc:
            _install_failed = True
            _warn(f"cannot attach to byLLM ({type(exc).__name__}: {exc})")
            return False


def _byllm_model_class() -> type | None:
    module = sys.modules.get("byllm.llm")
    return getattr(module, "Model", None) if module is not None else None


def attach(model: Any = None) -> bool:
    """Install the wrappers now (the Python `byllm.lib.by` path calls no Jac hook)."""
    if _url() is None:
        return False
    try:
        model_cls = _byllm_model_class()
        if model_cls is None:
            import byllm.llm  # noqa: F401  (explicit attach only)

            model_cls = _byllm_model_class()
        if model_cls is None or not _install(model_cls):
            return False
        if model is None:
            return True
        if _applies(model):
            return True
        if getattr(model, "_mock_delegate", None) or getattr(model, "_local_delegate", None):
            return False  # in-process backends: nothing goes over HTTP
        if type(model).__name__ in ("MockLLM", "LocalLLM"):
            return False
        _warn(f"unknown model class {type(model).__module__}.{type(model).__qualname__}")
        return False
    except Exception as exc:
        _warn(f"cannot attach to byLLM ({type(exc).__name__}: {exc})")
        return False


# ---------------------------------------------------------------- the jaclang plugin


class UnderstudyPlugin:
    """The `jac` entry point. Both hooks attach and return None: byLLM still answers."""

    @staticmethod
    @hookimpl
    def call_llm(model: Any, mt_run: Any) -> None:
        if _url() is not None:
            attach(model)
        return None

    @staticmethod
    @hookimpl
    def acall_llm(model: Any, mt_run: Any) -> None:
        # A plain function on purpose: returning a coroutine would answer the hook.
        if _url() is not None:
            attach(model)
        return None


_PINNED_HOOKS = ("call_llm", "acall_llm")


def _pin_first(manager: Any, register: Any) -> None:
    """Move our implementations to the end of the list (asked first) if they are not."""
    ours = UnderstudyPlugin
    if not manager.is_registered(ours):
        return
    for hook_name in _PINNED_HOOKS:
        caller = getattr(manager.hook, hook_name, None)
        impls = caller.get_hookimpls() if caller is not None else []
        if impls and impls[-1].plugin is not ours:
            name = next((n for n, p in manager.list_name_plugin() if p is ours), None)
            manager.unregister(ours)
            register(ours, name=name)
            return


def _keep_pinned(manager: Any) -> None:
    """Wrap `manager.register` so that we stay first whatever registers after us."""
    if getattr(manager, "_understudy_pinned", False):
        return
    original = manager.register

    def register(plugin: object, name: str | None = None):
        result = original(plugin, name=name)
        try:
            _pin_first(manager, original)
        except Exception as exc:
            _warn(f"cannot order the Jac plugin hooks ({type(exc).__name__}: {exc})")
        return result

    manager.register = register
    manager._understudy_pinned = True
    _pin_first(manager, original)


if _url() is not None:
    try:
        _keep_pinned(plugin_manager)
        model_cls = _byllm_model_class()
        if model_cls is not None:  # byLLM's models were imported before this plugin
            _install(model_cls)
    except Exception as _exc:  # pragma: no cover - defensive
        _warn(f"cannot register the Jac plugin ({type(_exc).__name__}: {_exc})")
