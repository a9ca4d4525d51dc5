"""Local answers from a model server: llama.cpp's `llama-server` holding the base and the adapters.

On a GPU host the local model need not live in every proxy process. With a `[local_server]`
table in the upstreams configuration, local answers (served, shadow, drift) go to one
llama-server instead of the in-process llama-cpp-python model (still the default):

    [local_server]
    url = "http://gpu-host:8080"         # llama-server's root (it serves /completion, /lora-adapters)
    publish_dir = "/shared/published"    # where adapters are copied for it to load (default: none)
    slots = 4                            # answers in flight at once (llama-server --parallel)
    timeout_s = 120

The server must run the proxies' base GGUF with every adapter it may be asked for loaded but not
applied: `llama-server -m base.gguf --lora-init-without-apply --lora a.gguf --lora b.gguf`.
Each request names its adapter by id (`"lora": [{"id": N, "scale": 1}]`, llama-server's
per-request selection), ids taken from `GET /lora-adapters` by file name; the bare base (a
control) sends no adapter. When `publish_dir` is set, every adapter the proxy uses is copied
there and listed in `adapters.txt` (one path per line), so a server restarted with
`--lora $(paste -sd, adapters.txt)` loads them all. An adapter the server has not loaded is an
error the router treats like any failed local answer (the upstream answers).

The prompt is rendered here exactly as in-process (the version's site prompt, the same text
its adapter was trained on) and typed answers are constrained by the same tightened schema
(`inference.checked_sampling.AnswerChecks.schema`), sent as `json_schema` for llama-server's own
converter (llama.cpp's C++ one: it enforces integer ranges, item counts, lengths, enum/const and
patterns; llguidance, the in-process engine, cannot be used there without a llguidance-enabled
build, which needs Rust crates fetched at build time); what it drops is reported once per site. The
answer's confidence is not available from the server (None: the cascade does not use it).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from understudy.inference.checked_sampling import AnswerChecks
from understudy.inference.local_model import LocalAnswer, QueuedModels, Variant, render
from understudy.inference.local_queue import LocalQueue
from understudy.inference.prompt_format import STOP_SEQUENCES

log = logging.getLogger("understudy.model_server")
ADAPTER_LIST = "adapters.txt"
# JSON-schema keywords llama-server's converter (llama.cpp common/json-schema-to-grammar.cpp, the
# version built by scripts/build_llama_server.sh) does not enforce: numbers' bounds (it bounds
# integers only) and the value keywords no GBNF converter of llama.cpp handles.
SERVER_UNENFORCED = frozenset(
    {
        "multipleOf",
        "uniqueItems",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "contains",
        "minContains",
        "maxContains",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "number bounds",
    }
)


def _keywords(node: Any):
    """The constraining keywords a schema uses ("number bounds" for a non-integer number's range)."""
    if isinstance(node, dict):
        if node.get("type") == "number" and {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & set(node):
            yield "number bounds"
        for key, value in node.items():
            if key not in ("properties", "$defs", "definitions", "const", "enum", "default", "examples"):
                yield key
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for child in value.values():
                    yield from _keywords(child)
            elif key not in ("const", "enum", "default", "examples"):
                yield from _keywords(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keywords(value)


class ModelServerError(RuntimeError):
    """The model server could not answer (unreachable, an error status, an adapter it lacks)."""


@dataclass(frozen=True)
class LocalServerConfig:
    url: str
    publish_dir: Path | None = None
    slots: int = 4
    timeout_s: float = 120.0

    @classmethod
    def from_table(cls, where: str, table: Any) -> LocalServerConfig:
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [local_server] must be a table")
        unknown = set(table) - {"url", "publish_dir", "slots", "timeout_s"}
        if unknown:
            raise ValueError(
                f"{where}: [local_server]: unknown key(s) {', '.join(sorted(unknown))} "
                "(expected url, publish_dir, slots, timeout_s)"
            )
        url = table.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f'{where}: [local_server] needs url = "http://host:port" (llama-server\'s root)')
        slots = table.get("slots", 4)
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"{where}: [local_server] slots must be a whole number >= 1")
        timeout = table.get("timeout_s", 120.0)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"{where}: [local_server] timeout_s must be a positive number")
        publish = table.get("publish_dir")
        return cls(url.rstrip("/").removesuffix("/v1"), Path(publish) if publish else None, slots, float(timeout))


class ServedModels(QueuedModels):
    """The local-model interface (`complete`, `prepare`, `queue`, `close`) over a llama-server."""

    def __init__(self, config: LocalServerConfig, *, max_background: int = 256):
        self.config = config
        self.queue = LocalQueue(max_background, slots=config.slots)
        self._client = httpx.Client(base_url=config.url, timeout=httpx.Timeout(config.timeout_s, connect=10.0))
        self._ids: dict[str, int] = {}  # adapter file name -> the server's id
        self._reported: set[tuple[str | None, tuple[str, ...]]] = set()  # (site, keywords) logged
        self._lock = threading.Lock()

    # ---- adapters ----

    def publish(self, adapter_path: str) -> Path:
        """Copy an adapter into the publish dir (once) and list it for the server's next start."""
        assert self.config.publish_dir is not None
        self.config.publish_dir.mkdir(parents=True, exist_ok=True)
        source = Path(adapter_path)
        target = self.config.publish_dir / _published_name(source)
        with self._lock:
            if not target.exists():
                tmp = target.with_suffix(".tmp")
                shutil.copyfile(source, tmp)
                tmp.rename(target)
            listing = self.config.publish_dir / ADAPTER_LIST
            listed = listing.read_text().split() if listing.exists() else []
            if str(target) not in listed:
                listing.write_text("".join(f"{line}\n" for line in [*listed, str(target)]))
        return target

    def prepare(self, variant: Variant) -> None:
        """A version the router may answer with: published at once, so the server can be restarted
        with it before the first request needs it."""
        if variant.adapter_path is not None and self.config.publish_dir is not None:
            self.publish(variant.adapter_path)

    def adapter_id(self, adapter_path: str) -> int:
        name = _published_name(Path(adapter_path))
        with self._lock:
            if name not in self._ids:
                self._ids = self._loaded_adapters()
            if name not in self._ids:
                raise ModelServerError(
                    f"the model server at {self.config.url} has not loaded adapter {name}: restart it with "
                    f"--lora-init-without-apply --lora for each adapter"
                    + (f" listed in {self.config.publish_dir / ADAPTER_LIST}" if self.config.publish_dir else "")
                )
            return self._ids[name]

    def _loaded_adapters(self) -> dict[str, int]:
        try:
            response = self._client.get("/lora-adapters")
            response.raise_for_status()
            return {_published_name(Path(entry["path"])): int(entry["id"]) for entry in response.json()}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ModelServerError(f"the model server at {self.config.url} did not list its adapters: {exc}") from None

    # ---- answering ----

    def draw(
        self,
        request: dict[str, Any],
        variant: Variant,
        checks: AnswerChecks,
        max_tokens: int,
        temperature: float,
        seed: int | None,
    ) -> LocalAnswer:
        prompt, _prefix = render(request, variant)
        body: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": max_tokens,
            "stop": STOP_SEQUENCES,
            "cache_prompt": True,
            "lora": [],  # every adapter at scale 0 but this version's (none: the bare base)
        }
        body.update(
            {"temperature": 0.0, "top_k": 1}
            if temperature == 0
            else {"temperature": temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed}
        )
        if variant.adapter_path is not None:
            body["lora"] = [{"id": self.adapter_id(variant.adapter_path), "scale": 1.0}]
        if checks.schema is not None:
            body["json_schema"] = self._server_schema(checks)
        started = time.perf_counter()
        try:
            response = self._client.post("/completion", json=body)
        except httpx.HTTPError as exc:
            raise ModelServerError(f"the model server at {self.config.url} did not answer: {exc}") from None
        if response.status_code != 200:
            raise ModelServerError(
                f"the model server at {self.config.url} answered {response.status_code}: {response.text[:200]}"
            )
        out = response.json()
        latency_ms = (time.perf_counter() - started) * 1000
        return LocalAnswer(
            out.get("content", ""),
            latency_ms,
            int(out.get("tokens_evaluated") or 0),
            int(out.get("tokens_predicted") or 0),
            None,
        )

    def _server_schema(self, checks: AnswerChecks) -> dict[str, Any]:
        """The tightened schema as llama-server takes it (its own converter compiles it). Keywords
        that converter drops (SERVER_UNENFORCED) are reported once per site, as in-process."""
        dropped = sorted({kw for kw in _keywords(checks.schema) if kw in SERVER_UNENFORCED})
        key = (checks.site, tuple(dropped))
        if dropped and key not in self._reported:
            self._reported.add(key)
            log.warning(
                "site %s: the model server's grammar cannot enforce %s; the validator still checks every answer",
                checks.site or "?",
                ", ".join(dropped),
            )
        return checks.schema

    def close(self) -> None:
        self._client.close()


def _published_name(adapter: Path) -> str:
    """An adapter's name on the server. Training writes every one as `<site>/job-<stamp>/adapter.gguf`:
    it is called `<site>-job-<stamp>.gguf` there (a published copy already has that name)."""
    if adapter.name != "adapter.gguf":
        return adapter.name
    return f"{adapter.parent.parent.name}-{adapter.parent.name}.gguf"
