"""Datasets from the store: per-site examples, filtering, train/eval split, JSONL and Parquet.

An example is one successful upstream call with a complete answer (`COMPLETE_ANSWER`:
status 200 and a first choice that finished, not cut off by `length` or a content filter;
a stream the upstream broke is stored as failed and never qualifies): the request's
messages (and response schema and tools) and the exact assistant content the upstream
returned. Filtering keeps
calls whose typed output parsed against its schema and, where the site has a task validator
(the RPG `Map` and `Level` validators), passed it *for its own request's arguments* (a map
of the wrong size is not learned from). Identical (prompt, completion)
pairs are kept once. The split is by a hash of the prompt, so an example never moves
between train and eval as the dataset grows.

Training reads an immutable Parquet snapshot named by its content
(`<site>-<sha256 prefix>.parquet`), so a job can always say exactly what it learned from
and two jobs over the same data share one file. DuckDB writes the Parquet (COPY ... TO).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from understudy.db import Cursor
from understudy.validators import BoundValidator

# request -> the site's validator bound to that request's arguments (None: no validator)
ValidatorFor = Callable[[dict[str, Any]], BoundValidator | None]
EVAL_SHARE = 0.1  # share of distinct prompts held out for evaluation
# Columns of an exported / snapshot Parquet file (training.dataset reads these).
COLUMNS = (
    "call_id",
    "site_id",
    "provider_model",
    "messages",
    "response_format",
    "tools",
    "completion",
    "parse_valid",
    "validator_passed",
    "split",
)
# SQL over `calls`: the call is a whole upstream answer worth learning from. A stream cut
# short, stalled or abandoned has a non-200 status; an answer stopped by max_tokens or a
# filter is whole on the wire but not as an answer.
COMPLETE_ANSWER = (
    "status = 200 AND served_by = 'upstream' AND response IS NOT NULL "
    "AND json_extract_string(response, '$.choices[0].finish_reason') IS NOT NULL "
    "AND json_extract_string(response, '$.choices[0].finish_reason') NOT IN ('length', 'content_filter')"
)


@dataclass
class ExportCounts:
    considered: int
    kept: int
    dropped_invalid: int
    dropped_validator: int
    duplicates: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def site_examples(
    cur: Cursor,
    site_id: str,
    *,
    filtered: bool,
    validator_for: ValidatorFor | None = None,
    teacher_model: str | None = None,
) -> tuple[list[dict[str, Any]], ExportCounts]:
    """Successful upstream calls of one site as examples, optionally filtered."""
    query = f"SELECT id, model, request, response, valid FROM calls WHERE site_id = ? AND {COMPLETE_ANSWER}"
    params: list[Any] = [site_id]
    if teacher_model:  # a model name (as asked or as served) or a provider: train on one teacher's answers
        query += " AND (model = ? OR upstream_model = ? OR provider = ?)"
        params += [teacher_model] * 3
    rows = cur.execute(query + " ORDER BY ts, id", params).fetchall()
    examples, seen = [], set()
    counts = ExportCounts(len(rows), 0, 0, 0, 0)
    for call_id, model, request_json, response_json, valid in rows:
        request = json.loads(request_json)
        completion = _content(json.loads(response_json))
        if completion is None:  # a tool call, not text: nothing to imitate here
            counts.dropped_invalid += 1
            continue
        validator = validator_for(request) if validator_for else None
        validator_passed = validator(completion).passed if validator else None
        if filtered and valid is False:
            counts.dropped_invalid += 1
            continue
        if filtered and validator_passed is False:
            counts.dropped_validator += 1
            continue
        messages = request["messages"]
        key = hashlib.sha256(json.dumps([messages, completion], sort_keys=True).encode()).hexdigest()
        if key in seen:
            counts.duplicates += 1
            continue
        seen.add(key)
        examples.append(
            {
                "call_id": call_id,
                "site_id": site_id,
                "provider_model": model,
                "messages": messages,
                "response_format": request.get("response_format"),
                "tools": request.get("tools") or None,
                "completion": completion,
                "parse_valid": valid,
                "validator_passed": validator_passed,
                "split": _split_of(messages),
            }
        )
    counts.kept = len(examples)
    return examples, counts


def write_jsonl(examples: list[dict[str, Any]], path: Path) -> Path:
    """OpenAI fine-tuning chat format: {"messages": [..., {"role": "assistant", ...}], "tools"?}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            record: dict[str, Any] = {
                "messages": [*example["messages"], {"role": "assistant", "content": example["completion"]}]
            }
            if example["tools"]:
                record["tools"] = example["tools"]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_parquet(examples: list[dict[str, Any]], path: Path) -> Path:
    """One row per example; JSON-valued columns as JSON strings (see COLUMNS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {column: [_cell(example[column], column) for example in examples] for column in COLUMNS},
        schema=pa.schema(
            [(c, pa.bool_() if c in ("parse_valid", "validator_passed") else pa.string()) for c in COLUMNS]
        ),
    )
    con = duckdb.connect()
    try:
        con.register("examples", table)
        con.execute(f"COPY (SELECT * FROM examples) TO '{_sql_path(path)}' (FORMAT parquet)")
    finally:
        con.close()
    return path


def write_snapshot(examples: list[dict[str, Any]], snapshots_dir: Path, site_id: str) -> Path:
    """An immutable, content-named Parquet snapshot; an identical dataset reuses its file."""
    digest = hashlib.sha256(
        json.dumps([[e["messages"], e["completion"], e["split"]] for e in examples], sort_keys=True).encode()
    ).hexdigest()[:16]
    path = snapshots_dir / f"{site_id}-{digest}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_parquet(examples, tmp)
        tmp.rename(path)
    return path


def _split_of(messages: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    return "eval" if digest[0] < 256 * EVAL_SHARE else "train"


def _content(completion: dict[str, Any]) -> str | None:
    try:
        content = completion["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return content if isinstance(content, str) and content != "" else None


def _cell(value: Any, column: str) -> Any:
    if column in ("messages", "response_format", "tools"):
        return None if value is None else json.dumps(value, ensure_ascii=False)
    return value


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
