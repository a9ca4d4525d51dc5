"""Dataset export for one site, the same whether the CLI or the proxy's admin API runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from understudy.store import Store
from understudy.training.snapshots import site_examples, write_jsonl, write_parquet
from understudy.validators import ValidatorRegistry, site_validator_for


def export_site(
    store: Store,
    site_ref: str,
    *,
    filtered: bool,
    jsonl: Path | None,
    parquet: Path | None,
    teacher_model: str | None = None,
    validators: ValidatorRegistry | None = None,
) -> dict[str, Any]:
    site = store.resolve_site(site_ref)
    examples, counts = site_examples(
        store.cursor(),
        site.id,
        filtered=filtered,
        validator_for=site_validator_for(store, site.id, validators),
        teacher_model=teacher_model,
    )
    written = {}
    if jsonl is not None:
        written["jsonl"] = str(write_jsonl(examples, Path(jsonl)))
    if parquet is not None:
        written["parquet"] = str(write_parquet(examples, Path(parquet)))
    return {
        "site": site.id,
        "name": site.name,
        "filtered": filtered,
        **counts.to_dict(),
        "files": {kind: {"path": path, "bytes": Path(path).stat().st_size} for kind, path in written.items()},
    }
