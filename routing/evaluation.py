"""`understudy eval`: the automatic comparison on a site's held-out set, re-runnable by anyone.

The held-out set is the `eval` split of the newest evaluated version's dataset snapshot (the
immutable Parquet its training read; `training.snapshots` splits by a hash of the prompt, so it
never held training examples). Each held-out request is answered by:

- `upstream`: the recorded answer (what the large model said then; its latency and cost are the
  recorded ones, its agreement is the teacher's self-agreement from `self_agreement`, since an
  answer always agrees with itself);
- `base`: the base GGUF the versions adapt, without an adapter (the untrained control);
- `vN`: each version, its adapter on that base with its own site prompt, exactly as the proxy
  serves it (`inference.local_model.LocalModels`: under the response schema tightened for each
  request, drawn again while it fails its checks, as `inference.checked_sampling` serves).

Per row: parse-valid rate (JSON answers against the schema), validator pass rate with the pass
rate of each of the validator's named checks, agreement with the recorded upstream answer
(`routing.scoring.score_pair` under the site's scoring policy, so the same number shadow mode
records; incomparable pairs left out), latency per call (p50 and mean) and cost per call (the
recorded upstream spend; local answers cost no API money, so 0).

`eval_inputs` reads the store (in the proxy while it runs, via the admin API; else the CLI's own
read-only store); `run_eval` does the generation in the caller's process, so a long run never
holds the proxy's request path.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from understudy import wire
from understudy.db import Cursor
from understudy.routing.registry import list_versions
from understudy.store import Store
from understudy.validators import ValidatorRegistry, bind, site_validator_reference


class EvalError(ValueError):
    """Nothing to evaluate (no version with a snapshot, an unknown version, an empty held-out set)."""


def eval_inputs(
    store: Store,
    site_ref: str,
    versions: list[int] | None = None,
    *,
    limit: int | None = None,
    validators: ValidatorRegistry | None = None,
) -> dict[str, Any]:
    """Everything `run_eval` needs, read from the store: versions, held-out examples, recorded figures."""
    site = store.resolve_site(site_ref)
    cur = store.cursor()
    known = list_versions(store, site.id)
    if versions:
        missing = sorted(set(versions) - {v.version for v in known})
        if missing:
            raise EvalError(f"site {site.name} has no version {', '.join(f'v{m}' for m in missing)}")
        chosen = [v for v in known if v.version in versions]
    else:
        chosen = [v for v in known if v.status != "failed" and (v.adapter_path or v.control == "base")]
    with_snapshot = [v for v in chosen if v.dataset_snapshot and Path(v.dataset_snapshot).exists()]
    if not with_snapshot:
        raise EvalError(
            f"site {site.name} has no trained version with a dataset snapshot to take a held-out set from "
            "(understudy train SITE first)"
        )
    snapshot = with_snapshot[-1].dataset_snapshot
    examples = _heldout(snapshot, limit)
    if not examples:
        raise EvalError(f"the snapshot {snapshot} has no held-out examples (its site has too few distinct prompts)")
    recorded = {
        row[0]: row[1:]
        for row in cur.execute(
            "SELECT id, latency_ms, cost_usd, model FROM calls WHERE id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
            [[e["call_id"] for e in examples]],
        ).fetchall()
    }
    for e in examples:
        latency, cost, model = recorded.get(e["call_id"], (None, None, None))
        e.update(latency_ms=latency, cost_usd=cost)
        e["request"]["model"] = model or "gpt-4o-mini"
    teacher = cur.execute(
        "SELECT avg(score), count(*) FROM self_agreement WHERE site_id = ? AND comparable", [site.id]
    ).fetchone()
    schema_name = cur.execute("SELECT schema_name FROM sites WHERE id = ?", [site.id]).fetchone()[0]
    return {
        "site": site.id,
        "site_name": site.name,
        "schema_name": schema_name,
        "snapshot": snapshot,
        "validator": site_validator_reference(
            store, site.id, examples[0]["request"].get("response_format"), validators or ValidatorRegistry()
        ),
        "site_policy": store.site_policy(site.id),
        "versions": [v.to_dict() for v in chosen],
        "teacher_agreement": {"mean": teacher[0], "n": teacher[1]},
        "examples": examples,
    }


def _heldout(snapshot: str, limit: int | None) -> list[dict[str, Any]]:
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            "SELECT call_id, messages, response_format, tools, completion FROM read_parquet(?, file_row_number = true) "
            "WHERE split = 'eval' ORDER BY file_row_number",
            [snapshot],
        ).fetchall()
    finally:
        con.close()
    out = []
    for call_id, messages, response_format, tools, completion in rows[: limit or None]:
        request: dict[str, Any] = {"messages": json.loads(messages)}
        if response_format:
            request["response_format"] = json.loads(response_format)
        if tools:
            request["tools"] = json.loads(tools)
        out.append({"call_id": call_id, "request": request, "completion": completion})
    return out


def run_eval(
    inputs: dict[str, Any],
    *,
    base_gguf: str,
    n_threads: int | None = None,
    max_tokens: int = 512,
    on_answer: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Answer the held-out set with the base and each version; figures per row (module docstring)."""
    from understudy.inference.checked_sampling import SamplingPolicy
    from understudy.inference.local_model import LocalModels, PromptMismatch, Variant, checks_for
    from understudy.inference.site_prompt import SitePrompt
    from understudy.routing.router import site_scoring
    from understudy.routing.scoring import score_pair

    examples = inputs["examples"]
    validator = inputs["validator"]
    scoring = site_scoring(inputs["schema_name"], inputs["site_policy"])
    sampling = SamplingPolicy.from_dict(None, (inputs["site_policy"] or {}).get("sampling"))
    similarity = None
    if not any(
        (e["request"].get("response_format") or {}).get("type") in ("json_schema", "json_object") for e in examples
    ):
        from understudy.routing.similarity import (
            cosine_similarity,  # free text is compared by meaning, as in shadow mode
        )

        similarity = cosine_similarity
    rows = [
        _row(
            "upstream",
            [_judge(e, e["completion"], validator, None, e["latency_ms"], e["cost_usd"]) for e in examples],
            agreement=inputs["teacher_agreement"],
        )
    ]
    variants = [("base", Variant(None, SitePrompt()))]
    for v in inputs["versions"]:
        variants.append(
            (
                f"v{v['version']}",
                Variant(
                    v["adapter_path"],
                    SitePrompt.from_dict((v["config"] or {}).get("prompt")) if v["adapter_path"] else SitePrompt(),
                ),
            )
        )
    models = LocalModels(base_gguf, n_threads=n_threads)
    try:
        for label, variant in variants:
            judged = []
            for e in examples:
                request = {**e["request"], "max_tokens": max_tokens}
                started = time.perf_counter()
                try:
                    text = models.complete_sync(
                        request, variant, checks_for(request, bind(validator, request), sampling)
                    ).text
                except PromptMismatch:
                    text = ""  # the version cannot answer this request at all: counted as invalid
                latency = (time.perf_counter() - started) * 1000
                agreement = score_pair(
                    e["completion"],
                    text,
                    response_format=e["request"].get("response_format"),
                    policy=scoring,
                    validator=bind(validator, e["request"]),
                    similarity=similarity,
                ).agreement
                judged.append(_judge(e, text, validator, agreement, latency, 0.0))
                if on_answer:
                    on_answer(label)
            rows.append(_row(label, judged))
    finally:
        models.close()
    return {
        "id": uuid.uuid4().hex[:12],
        "site": inputs["site"],
        "site_name": inputs["site_name"],
        "ts": datetime.now(UTC).isoformat(),
        "snapshot": inputs["snapshot"],
        "heldout": len(examples),
        "validator": validator,
        "base_gguf": base_gguf,
        "rows": rows,
    }


def _judge(
    example: dict[str, Any],
    text: str,
    validator: str | None,
    agreement: float | None,
    latency_ms: float | None,
    cost_usd: float | None,
) -> dict[str, Any]:
    bound = bind(validator, example["request"])  # None without a validator
    verdict = bound(text) if bound is not None else None
    checks = {}
    if verdict is not None:
        for check in verdict.detail.get("checks", []):
            if isinstance(check, dict) and "name" in check:
                checks[str(check["name"])] = bool(check.get("passed"))
    return {
        "parse_valid": wire.fits(text, example["request"].get("response_format")),
        "validator": None if verdict is None else verdict.passed,
        "checks": checks,
        "agreement": agreement,
        "latency_ms": latency_ms,
        "cost_usd": cost_usd,
    }


def _row(label: str, judged: list[dict[str, Any]], agreement: dict[str, Any] | None = None) -> dict[str, Any]:
    def rate(values: list[bool | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    names = sorted({name for j in judged for name in j["checks"]})
    checks = {name: rate([j["checks"].get(name) for j in judged]) for name in names}
    latencies = sorted(j["latency_ms"] for j in judged if j["latency_ms"] is not None)
    costs = [j["cost_usd"] for j in judged if j["cost_usd"] is not None]
    scored = [j["agreement"] for j in judged if j["agreement"] is not None]
    return {
        "row": label,
        "n": len(judged),
        "parse_valid_rate": rate([j["parse_valid"] for j in judged]),
        "validator_pass_rate": rate([j["validator"] for j in judged]),
        "checks": checks,
        "agreement": agreement["mean"] if agreement is not None else (sum(scored) / len(scored) if scored else None),
        "agreement_n": agreement["n"] if agreement is not None else len(scored),
        "latency_p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "latency_mean_ms": sum(latencies) / len(latencies) if latencies else None,
        "cost_per_call_usd": sum(costs) / len(costs) if costs else None,
    }


def store_run(cur: Cursor, result: dict[str, Any]) -> str:
    run_id = str(result.get("id") or uuid.uuid4().hex[:12])
    cur.execute(
        "INSERT OR REPLACE INTO eval_runs (id, site_id, ts, result) VALUES (?, ?, ?, ?)",
        [run_id, result["site"], datetime.now(UTC), json.dumps(result, default=str)],
    )
    return run_id


def latest_run(cur: Cursor, site_id: str) -> dict[str, Any] | None:
    row = cur.execute("SELECT result FROM eval_runs WHERE site_id = ? ORDER BY ts DESC LIMIT 1", [site_id]).fetchone()
    return json.loads(row[0]) if row else None
