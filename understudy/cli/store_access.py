"""How the CLI reads and changes the store: through a running proxy, or directly when none runs.

DuckDB admits one writing process, and the proxy holds its file open. So when the data
directory's proxy.json names a live proxy, `StoreAccess.run(name, ...)` sends the operation
(`understudy.operations`) to its admin API; otherwise it runs the same operation on the store
file itself (read-only for a read). Either way a refusal is the operation's `OperationError`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from understudy.operations import OPERATIONS, Context, Operation, OperationError
from understudy.operations.client import AdminClient, running_proxy  # noqa: F401 (re-exported)
from understudy.store import Store


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StoreAccess(AdminClient):
    """Every CLI read and change: the running proxy's admin API, else the store file itself."""

    def run(self, operation: str, /, **args: Any) -> Any:
        """The named operation with `args`: in the running proxy when there is one, else here."""
        op = OPERATIONS[operation]
        return self.call(op, args) if self.proxy else self.run_here(op, args)

    def run_here(self, op: Operation, args: dict[str, Any]) -> Any:
        """`op` on the store file (or with no store, for an operation that does without)."""
        store = None
        if op.store == "required" or (op.store == "optional" and self._store_exists()):
            store = self._open(read_only=op.read_only)
        try:
            return op.call(Context(self.settings, store), args)
        finally:
            if store is not None:
                store.close()

    def _store_exists(self) -> bool:
        return self.settings.shared_store or self.settings.db_path.exists()

    def _open(self, read_only: bool) -> Store:
        if not self._store_exists():
            raise OperationError(
                404,
                f"no Understudy store at {self.settings.db_path} (has the proxy run with this --data-dir?)",
                code="no_store",
            )
        try:
            # A PostgreSQL store is opened for writing even to read: the first open creates its tables.
            return Store.open(self.settings, read_only=read_only and not self.settings.shared_store)
        except OSError as exc:  # store.StoreBusy: another process holds the file; ConnectionError: no server
            raise OperationError(503, str(exc), code="store_unavailable") from None

    def export(
        self, site: str, *, filtered: bool, jsonl: str | None, parquet: str | None, teacher_model: str | None = None
    ) -> dict[str, Any]:
        """The `export` operation, writing wherever the user asked: a proxy writes only inside the
        data dir, so a file wanted elsewhere is staged in <data-dir>/exports/ and moved where it was
        asked for by this (the user's) process."""
        args = {"site": site, "filtered": filtered, "teacher_model": teacher_model}
        if not self.proxy:
            return self.run("export", **args, jsonl=jsonl, parquet=parquet)
        staged: dict[str, tuple[Path, Path]] = {}  # kind -> (staging path, target)
        for kind, wanted in (("jsonl", jsonl), ("parquet", parquet)):
            args[kind] = wanted
            if wanted is None or self.settings.within_data_dir(wanted):
                continue
            stage_dir = self.settings.data_dir / "exports"
            stage_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            stage = stage_dir / f".staging-{secrets.token_hex(6)}.{kind}"
            staged[kind] = (stage, Path(wanted))
            args[kind] = str(stage.resolve())
        try:
            result = self.run("export", **args)
            for kind, (stage, target) in staged.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(stage, target)
                os.chmod(target, 0o666 & ~_umask())  # the user's file, made as their own tools would make it
                result["files"][kind]["path"] = str(target)
            return result
        finally:
            for stage, _ in staged.values():
                stage.unlink(missing_ok=True)
