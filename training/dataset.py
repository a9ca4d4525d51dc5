"""Load a dataset snapshot (Parquet) into example dicts.

The proxy exports one immutable Parquet snapshot per training job (training never opens
the proxy's DuckDB file). Columns:

    messages         JSON string   the request's OpenAI chat messages
    response_format  JSON string or null
    tools            JSON string or null
    completion       string        the exact assistant content the upstream returned
    split            'train' | 'eval'

An example is a plain dict: {"messages", "response_format", "tools", "completion"}.
DuckDB reads the file (it is a project dependency already; no pyarrow needed), rows come
back in file order so a given snapshot always yields the same lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

SPLITS = ("train", "eval")


def _json_or_none(text: str | None):
    return None if text is None or text == "" else json.loads(text)


def row_to_example(messages: str, response_format: str | None, tools: str | None, completion: str) -> dict:
    return {
        "messages": json.loads(messages),
        "response_format": _json_or_none(response_format),
        "tools": _json_or_none(tools),
        "completion": completion,
    }


def load_examples(parquet_path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train, eval) example lists from a snapshot; unknown split values are an error."""
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            "SELECT messages, response_format, tools, completion, split "
            "FROM read_parquet(?, file_row_number = true) ORDER BY file_row_number",
            [str(parquet_path)],
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for messages, response_format, tools, completion, split in rows:
        if split not in out:
            raise ValueError(f"{parquet_path}: unknown split {split!r} (want train/eval)")
        out[split].append(row_to_example(messages, response_format, tools, completion))
    return out["train"], out["eval"]


def write_examples(parquet_path: str | Path, train: list[dict], eval_: list[dict]) -> Path:
    """Write examples in the snapshot format (used by tests and tools; the proxy has its own)."""

    def dump(v):
        return None if v is None else json.dumps(v, ensure_ascii=False)

    rows = [
        (
            json.dumps(ex["messages"], ensure_ascii=False),
            dump(ex.get("response_format")),
            dump(ex.get("tools")),
            ex["completion"],
            split,
        )
        for split, exs in (("train", train), ("eval", eval_))
        for ex in exs
    ]
    con = duckdb.connect(":memory:")
    try:
        con.execute(
            "CREATE TABLE t (messages VARCHAR, response_format VARCHAR, tools VARCHAR, "
            "completion VARCHAR, split VARCHAR)"
        )
        if rows:
            con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
        path = Path(parquet_path)
        con.execute(f"COPY t TO '{str(path).replace(chr(39), chr(39) * 2)}' (FORMAT PARQUET)")
    finally:
        con.close()
    return path
