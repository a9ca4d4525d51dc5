"""The offline teacher: answers byLLM requests for the RPG call sites like a good model would.

`Teacher.respond(body)` takes a chat-completion request body and returns a `Reply`:
1. parse the prompt the way byLLM writes it (`prompt`), identify the call site (`sites`);
2. compute the answer procedurally (`procgen` for levels and maps, `flavour` for the rest,
   `schema_fill` for typed sites it does not know), fitted to the request's JSON schema;
3. with probability `flaw_share`, decided by (seed, request counter), swap in a flawed
   version (`flaws`) so the corpus has negatives. Retries (byLLM's "Your previous response
   could not be used") are never flawed, so a program always gets through eventually.

Tool requests follow what the fixtures show: with no tool result yet, call the first real
tool with schema-valid arguments; once a `role: tool` result is in the history, call
`finish_tool` with the answer when it is offered, else answer in plain content.

Randomness per request comes from `Random(f"{seed}:{counter}:{site}")`, so one teacher seed
replays to the same corpus when requests arrive in the same order.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import uuid
from typing import Any

from understudy.jac_examples.teacher import flaws
from understudy.jac_examples.teacher.flavour import describe_level, generic_text, pick_enemies, rate_map
from understudy.jac_examples.teacher.procgen import make_level, make_map
from understudy.jac_examples.teacher.prompt import ParsedRequest, parse_request
from understudy.jac_examples.teacher.pyrepr import strip_type
from understudy.jac_examples.teacher.schema_fill import conform, enum_members, fill
from understudy.jac_examples.teacher.sites import Site, identify
from understudy.jac_examples.teacher.wire import Reply

FINISH_TOOL = "finish_tool"
DEFAULT_ENEMY_KINDS = ["goblin", "skeleton", "slime", "archer", "ogre", "wraith", "dragon"]


def _level_arg(args: dict[str, Any]) -> dict[str, Any] | None:
    """The first argument that looks like a Level (or a Map's level), else any object."""
    objects = [v for v in args.values() if isinstance(v, dict)]
    for value in objects:
        if {"width", "height"} <= value.keys():
            return strip_type(value)
        if isinstance(value.get("level"), dict):
            return strip_type(value["level"])
    return strip_type(objects[0]) if objects else None


def _map_arg(args: dict[str, Any]) -> dict[str, Any] | None:
    for value in args.values():
        if isinstance(value, dict) and isinstance(value.get("level"), dict):
            return strip_type(value)
    return None


class Teacher:
    def __init__(self, seed: int = 0, flaw_share: float = 0.1) -> None:
        if not 0.0 <= flaw_share <= 1.0:
            raise ValueError("flaw_share must be between 0 and 1")
        self.seed = seed
        self.flaw_share = flaw_share
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:  # the server may call from several threads
            return next(self._counter)

    def respond(self, body: dict[str, Any]) -> Reply:
        n = self._next()
        req = parse_request(body)
        site = identify(req)
        rng = random.Random(f"{self.seed}:{n}:{site}")
        if req.tools:
            return self._tool_reply(req, site, rng)
        flawed = not req.is_retry and flaws.is_flawed(self.seed, n, self.flaw_share)
        return self._answer(req, site, rng, flawed)

    # ----------------------------------------------------------------------- answers

    def _value(self, req: ParsedRequest, site: Site, rng: random.Random) -> Any:
        """The good answer as plain data (str for text sites), before schema fitting."""
        args = req.args
        if site is Site.LEVEL:
            return make_level(
                rng,
                difficulty=args.get("difficulty"),
                width=args.get("level_width", args.get("width")),
                height=args.get("level_height", args.get("height")),
                last_levels=strip_type(args.get("last_levels")),
            )
        if site is Site.MAP:
            return make_map(rng, _level_arg(args) or make_level(rng))
        if site is Site.DESCRIBE:
            return describe_level(rng, _level_arg(args))
        if site is Site.ENEMIES:
            members = enum_members(req.schema) if req.schema else []
            return pick_enemies(rng, members or DEFAULT_ENEMY_KINDS, _level_arg(args))
        if site is Site.RATE:
            game_map = _map_arg(args)
            return rate_map(rng, game_map) if game_map else rng.randint(1, 10)
        if site is Site.TYPED and req.schema is not None:
            return fill(req.schema, rng)
        return generic_text(rng, req.header, args)

    def _fitted(self, req: ParsedRequest, value: Any, rng: random.Random) -> Any:
        return conform(value, req.schema, rng) if req.schema is not None else value

    def _answer(self, req: ParsedRequest, site: Site, rng: random.Random, flawed: bool) -> Reply:
        value = self._value(req, site, rng)
        if isinstance(value, str) and req.schema is None:
            if flawed and site is Site.DESCRIBE:
                text, kind = flaws.flawed_description(rng, _level_arg(req.args) or {}, describe_level)
                return Reply(content=text, flaw=kind)
            return Reply(content=value)
        good = self._fitted(req, value, rng)
        if not flawed:
            return Reply(content=json.dumps(good))
        if site is Site.MAP and isinstance(good, dict):
            text, kind = flaws.flawed_map(rng, good)
        elif site is Site.LEVEL and isinstance(good, dict):
            text, kind = flaws.flawed_level(rng, good)
        else:
            text, kind = flaws.flawed_typed(rng, good)
        return Reply(content=text, flaw=kind)

    # ----------------------------------------------------------------------- tools

    def _tool_reply(self, req: ParsedRequest, site: Site, rng: random.Random) -> Reply:
        by_name = {t.get("function", {}).get("name"): t.get("function", {}) for t in req.tools}
        real = [name for name in req.tool_names if name and name != FINISH_TOOL]
        if req.tool_results == 0 and real:
            params = by_name[real[0]].get("parameters") or {"type": "object", "properties": {}}
            return Reply(tool_calls=[_call(real[0], fill(params, rng))])
        value = self._value(req, site, rng)
        if FINISH_TOOL in by_name:
            params = by_name[FINISH_TOOL].get("parameters") or {}
            out_schema = (params.get("properties") or {}).get("final_output", {"type": "string"})
            if out_schema.get("type") == "string" and not isinstance(value, str):
                value = json.dumps(value)
            return Reply(tool_calls=[_call(FINISH_TOOL, {"final_output": conform(value, out_schema, rng)})])
        good = self._fitted(req, value, rng)
        return Reply(content=good if isinstance(good, str) else json.dumps(good))


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:16]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
