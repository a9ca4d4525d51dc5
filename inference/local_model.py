"""The proxy's local model: one base GGUF loaded once, per-site adapters, off the event loop.

`LocalModels` owns the single `inference.local_generate.LocalGenerator` (loaded lazily on
first use, so a proxy with no trained site never pays for it) and runs generations in a
worker thread, one at a time (a llama.cpp context runs one generation at a time, and the event
loop must keep serving upstream traffic meanwhile), in the order `inference.local_queue` gives:
served answers first, shadow work as a fair bounded sample. Prompts are rendered with
`inference.site_prompt.render_request` in the version's site prompt (compact or full), the
same rendering its adapter was trained on, and the prompt's fixed prefix is reused per adapter;
typed outputs are decoded under the request's JSON schema (inference.constraints, llguidance;
compact JSON for lean versions), so they always parse.

Answers come back OpenAI-shaped (`chat.completion`, or SSE chunks for `stream: true`;
the local text is produced whole and then sent as chunks).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio

from understudy import wire
from understudy.inference.checked_sampling import AnswerChecks, SamplingPolicy, draw_until_valid, token_cap
from understudy.inference.constraints import Constraint, compile_schema
from understudy.inference.local_queue import LocalQueue
from understudy.inference.site_prompt import SitePrompt, render_with_prefix
from understudy.validators import BoundValidator, local_verdict

log = logging.getLogger("understudy.local_model")
DEFAULT_MAX_TOKENS = 1024  # a generous cap for a typed answer from a small model
SSE_PIECE_CHARS = 24  # characters per streamed content chunk


class PromptMismatch(ValueError):
    """The request's static part is not the one the version was trained on: it cannot answer it."""


@dataclass(frozen=True)
class Variant:
    """What answers locally for one version: its adapter (None: the bare base) and site prompt."""

    adapter_path: str | None
    prompt: SitePrompt = SitePrompt()


@dataclass(frozen=True)
class LocalAnswer:
    text: str
    latency_ms: float  # all draws together
    prompt_tokens: int
    completion_tokens: int
    confidence: float | None = None  # the model's own (inference.local_generate.Generation)
    tries: int = 1  # draws made for this answer (inference.checked_sampling)
    passed: bool | None = None  # the serving gate's verdict on it (None: not checked)
    why: str = "ok"  # why it may not be served, when it may not


def render(request: dict[str, Any], variant: Variant) -> tuple[str, str | None]:
    """(prompt, its fixed prefix) in the version's site prompt; PromptMismatch when it cannot answer."""
    rendered = render_with_prefix(request, variant.prompt)
    if rendered is None:
        raise PromptMismatch(
            "the request's static part (system text, docstring, schema, tools) is not the one "
            "this version was trained on"
        )
    return rendered


def checks_for(
    request: dict[str, Any],
    validator: BoundValidator | None,
    sampling: SamplingPolicy | None = None,
    reference_answers: tuple[str, ...] = (),
    site: str | None = None,
) -> AnswerChecks:
    """What a local answer to `request` must satisfy, the same wherever it is drawn (serving, shadow,
    `understudy eval`, a training job's held-out set): the response schema tightened by the bound
    validator's `constrain`, and the serving gate (parses, fits the schema, passes the validator)."""
    response_format = request.get("response_format")
    schema = wire.response_schema(response_format)
    if schema is not None and validator is not None:
        schema = validator.constrain(schema)
    return AnswerChecks(
        schema,
        lambda text: local_verdict(text, response_format, validator),
        sampling or SamplingPolicy(),
        reference_answers,
        site,
    )


def max_tokens_of(request: dict[str, Any], default: int = DEFAULT_MAX_TOKENS) -> int:
    """The request's own token limit, or `default`."""
    return int(request.get("max_completion_tokens") or request.get("max_tokens") or default)


class QueuedModels:
    """What the router calls for a local answer; `complete_sync` runs in a worker thread, in the
    order `queue` (inference.local_queue) gives. In-process (`LocalModels`) or a model server
    (inference.model_server.ServedModels)."""

    queue: LocalQueue

    def prepare(self, variant: Variant) -> None:
        """A version the router may answer with (in-process: its adapter loads on first use)."""

    def draw(
        self,
        request: dict[str, Any],
        variant: Variant,
        checks: AnswerChecks,
        max_tokens: int,
        temperature: float,
        seed: int | None,
    ) -> LocalAnswer:
        """One answer decoded under `checks.schema` (the request's, tightened; None: free text)."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """`text`'s length in the local model's tokens (the token cap's measure)."""
        return len(text.encode()) // 2 + 1  # no tokenizer at hand: a generous bound

    def complete_sync(
        self, request: dict[str, Any], variant: Variant, checks: AnswerChecks | None = None
    ) -> LocalAnswer:
        """A checked local answer (inference.checked_sampling): drawn again while it fails `checks`."""
        render(request, variant)  # PromptMismatch before any draw
        checks = checks or AnswerChecks(wire.response_schema(request.get("response_format")))
        cap = token_cap(checks, self.count_tokens)
        max_tokens = max_tokens_of(request) if cap is None else min(cap, max_tokens_of(request, default=cap))
        return draw_until_valid(
            lambda temperature, seed: self.draw(request, variant, checks, max_tokens, temperature, seed), checks
        )

    async def complete(
        self, request: dict[str, Any], variant: Variant, *, background: bool = False, checks: AnswerChecks | None = None
    ) -> LocalAnswer:
        """A local answer; `background` (shadow work) waits behind served answers and may be `Skipped`."""
        await self.queue.acquire(background=background)
        try:
            return await anyio.to_thread.run_sync(self.complete_sync, request, variant, checks)
        finally:
            self.queue.release()


class LocalModels(QueuedModels):
    def __init__(self, base_gguf: str, *, n_threads: int | None = None, max_background: int = 256):
        self.base_gguf = base_gguf
        self.n_threads = n_threads
        self._generator = None
        self._load_lock = threading.Lock()
        self.queue = LocalQueue(max_background)
        self._reported: set[tuple[str | None, tuple[str, ...]]] = set()  # (site, keywords) logged

    @property
    def loaded(self) -> bool:
        return self._generator is not None

    def generator(self):
        with self._load_lock:
            if self._generator is None:
                from understudy.inference.local_generate import LocalGenerator

                self._generator = LocalGenerator(self.base_gguf, n_threads=self.n_threads)
            return self._generator

    def count_tokens(self, text: str) -> int:
        return len(self.generator().llm.tokenize(text.encode(), add_bos=False, special=False))

    def constraint(self, schema: dict | None, lean: bool, site: str | None) -> Constraint | None:
        """The compiled constraint; keywords the engine cannot enforce are reported once per site."""
        if schema is None:
            return None
        constraint = compile_schema(schema, lean)
        if constraint.unsupported and (site, constraint.unsupported) not in self._reported:
            self._reported.add((site, constraint.unsupported))
            log.warning(
                "site %s: the decoder cannot enforce %s; the validator still checks every answer",
                site or "?",
                ", ".join(constraint.unsupported),
            )
        return constraint

    def draw(
        self,
        request: dict[str, Any],
        variant: Variant,
        checks: AnswerChecks,
        max_tokens: int,
        temperature: float,
        seed: int | None,
    ) -> LocalAnswer:
        prompt, prefix = render(request, variant)
        generator = self.generator()
        started = time.perf_counter()
        out = generator.complete(
            prompt,
            adapter_path=variant.adapter_path,
            max_tokens=max_tokens,
            constraint=self.constraint(checks.schema, variant.prompt.lean, checks.site),
            prefix=prefix,
            temperature=temperature,
            seed=seed,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return LocalAnswer(out.text, latency_ms, out.prompt_tokens, out.completion_tokens, out.confidence)

    def close(self) -> None:
        with self._load_lock:
            if self._generator is not None:
                self._generator.close()
                self._generator = None


def completion_object(answer: LocalAnswer, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-local-{uuid.uuid4().hex[:20]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
    }


def sse_body(completion: dict[str, Any], include_usage: bool) -> bytes:
    """The completion as `chat.completion.chunk` events, ending with `data: [DONE]`."""
    text = completion["choices"][0]["message"]["content"] or ""
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
    }
    pieces = [text[i : i + SSE_PIECE_CHARS] for i in range(0, len(text), SSE_PIECE_CHARS)] or [""]
    events = []
    for index, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if index == 0 else {"content": piece}
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": completion["usage"]})
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
