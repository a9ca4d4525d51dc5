"""The store: the only module that opens the database.

Two backends behind one interface, both speaking the same SQL (DuckDB's dialect, translated
for PostgreSQL by `store_postgres`):

- the embedded DuckDB file (the default): one process (the proxy) owns it for writing, as
  DuckDB admits a single writing process;
- PostgreSQL (`--store postgresql://...`): several proxy processes and hosts share one
  database; each still writes through its own single writer thread in group commits.

Writes arrive from the recorder's single writer thread in batches; reads (the admin API, the
CLI when no proxy runs) use their own cursor. Opening runs the pending migrations (on
PostgreSQL under an advisory lock, so processes starting together apply each step once), so
every code path sees the current schema.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import duckdb

from understudy.db import Cursor, is_postgres_url, transaction
from understudy.migrations import migrate
from understudy.rows import CallRow, SelfAgreementRow, ShadowRow, SiteRow

if TYPE_CHECKING:
    import pyarrow as pa

    from understudy.store_postgres import PostgresCursor, PostgresDatabase

# The tables the recorder writes: their columns are the typed rows' fields (understudy.rows).
CALL_COLUMNS = CallRow._fields
SHADOW_COLUMNS = ShadowRow._fields
SELF_AGREEMENT_COLUMNS = SelfAgreementRow._fields
SITE_COLUMNS = SiteRow._fields


@functools.cache
def calls_arrow_schema() -> pa.Schema:
    """The calls table as Arrow types. Calls are inserted as one Arrow table per batch: building
    columns in C and one INSERT ... SELECT costs a fraction of binding thousands of statement
    parameters. pyarrow (with numpy, ~0.2 s) is imported on the first write, not by every process
    that opens the store to read it."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("site_id", pa.string()),
            ("model", pa.string()),
            ("served_by", pa.string()),
            ("stream", pa.bool_()),
            ("turn", pa.string()),
            ("conversation", pa.string()),
            ("retry_of", pa.string()),
            ("request", pa.string()),
            ("response", pa.string()),
            ("status", pa.int32()),
            ("error", pa.string()),
            ("latency_ms", pa.float64()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("valid", pa.bool_()),
            ("provider", pa.string()),
            ("upstream_model", pa.string()),
            ("purpose", pa.string()),
            ("client", pa.string()),
            ("usage_estimated", pa.bool_()),
            ("attempts", pa.int32()),
            ("retried_for", pa.string()),
            ("local_tries", pa.int32()),
        ]
    )
    assert tuple(schema.names) == CALL_COLUMNS
    return schema


# New sites and shadow results are rare next to calls; multi-row VALUES is plenty for them.
_ROWS_PER_STATEMENT = 200


class SiteNotFound(LookupError):
    pass


class SiteNameTaken(ValueError):
    """A rename to a name another site already has (it would make the name unusable)."""


class StoreBusy(OSError):
    """Another process holds the store file (DuckDB admits one writing process): one line, not DuckDB's text."""


@dataclass(frozen=True)
class SiteRecord:
    """What the proxy keeps in memory about a site between requests."""

    id: str
    name: str
    name_source: str
    state: str
    pinned: str | None
    active_version: int | None


class Store:
    def __init__(self, location: Path | str, *, read_only: bool = False):
        """`location`: the DuckDB file's path, or a `postgresql://` URL."""
        self.read_only = read_only
        self._local = threading.local()
        self.is_postgres = is_postgres_url(location)
        self._con: PostgresDatabase | duckdb.DuckDBPyConnection
        if self.is_postgres:
            self.url = str(location)
            self.path = None
            from understudy.store_postgres import PostgresDatabase

            self._con = PostgresDatabase(self.url, read_only=read_only)
            self.cursor()  # this thread's connection: fails here, at open, when the server is unreachable
            if not read_only:
                self._migrate_postgres()
            return
        self.path = Path(location)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # recorded prompts: the owner's only
        try:
            con = self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            holder = re.search(r"PID (\d+)", str(exc))
            who = f"process {holder.group(1)}" if holder else "another process"
            raise StoreBusy(f"the store {self.path} is in use by {who}; stop it or use another --data-dir") from None
        if not read_only:
            migrate(con)
            self.restrict_permissions()

    @classmethod
    def open(cls, settings, *, read_only: bool = False) -> Store:
        """The store a settings object names: its PostgreSQL URL, else the data dir's DuckDB file."""
        return cls(settings.store_location, read_only=read_only)

    def _migrate_postgres(self) -> None:
        from understudy.store_postgres import MIGRATION_LOCK_KEY

        cur = cast("PostgresCursor", self.cursor())
        cur.raw("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        try:
            migrate(cur)
        finally:
            cur.raw("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])

    def restrict_permissions(self) -> None:
        """The database file and its WAL 0600: they hold every recorded prompt and answer.
        (The proxy also runs under umask 077, so a WAL DuckDB creates later is born 0600.)"""
        if self.path is None:
            return
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                path.chmod(0o600)
            except FileNotFoundError:
                pass

    def cursor(self) -> Cursor:
        """A per-thread cursor: DuckDB connections must not be shared across threads (on
        PostgreSQL, a connection per thread)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._con.cursor()
        return cur

    def close(self) -> None:
        self._con.close()

    # ---- writes (the recorder's thread) ----

    def write_batch(
        self,
        sites: Sequence[SiteRow] = (),
        calls: Sequence[CallRow] = (),
        shadows: Sequence[ShadowRow] = (),
        self_agreement: Sequence[SelfAgreementRow] = (),
    ) -> None:
        """New sites, calls, shadow and self-agreement results in one transaction: the group commit."""
        cur = self.cursor()
        with transaction(cur):
            for chunk in _chunks(sites, _ROWS_PER_STATEMENT):
                cur.execute(_insert_sql("sites", SITE_COLUMNS, len(chunk), on_conflict=True), _flatten(chunk))
                cur.execute(
                    _insert_sql("site_names", ("site_id", "name", "source"), len(chunk), on_conflict=True),
                    _flatten([(row.id, row.name, row.name_source) for row in chunk]),
                )
            if calls and self.is_postgres:
                cast("PostgresCursor", cur).copy_rows("calls", CALL_COLUMNS, calls)
            elif calls:
                import pyarrow as pa

                schema = calls_arrow_schema()
                columns = list(zip(*calls))
                batch = pa.Table.from_arrays(
                    [pa.array(column, type=field.type) for column, field in zip(columns, schema)], schema=schema
                )
                duck = cast(duckdb.DuckDBPyConnection, cur)
                duck.register("_calls_batch", batch)
                duck.execute(f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) SELECT * FROM _calls_batch")
                duck.unregister("_calls_batch")
            for shadow_chunk in _chunks(shadows, _ROWS_PER_STATEMENT):
                cur.execute(_insert_sql("shadow_results", SHADOW_COLUMNS, len(shadow_chunk)), _flatten(shadow_chunk))
            for pair_chunk in _chunks(self_agreement, _ROWS_PER_STATEMENT):
                cur.execute(
                    _insert_sql("self_agreement", SELF_AGREEMENT_COLUMNS, len(pair_chunk)), _flatten(pair_chunk)
                )

    def rename_site(self, ref: str, name: str) -> SiteRecord:
        """Give a site a new name; refused when empty or when another site is called that."""
        name = name.strip()
        if not name:
            raise ValueError("the new name must not be empty")
        site = self.resolve_site(ref)
        other = self.cursor().execute("SELECT id FROM sites WHERE name = ? AND id <> ?", [name, site.id]).fetchone()
        if other is not None:
            raise SiteNameTaken(f"site {other[0]} is already called {name!r}; pick another name")
        self.cursor().execute("UPDATE sites SET name = ?, name_source = 'user' WHERE id = ?", [name, site.id])
        self._remember_name(site.id, name, "user")
        return self.resolve_site(site.id)

    def set_site_name(self, site_id: str, name: str, source: str) -> None:
        self.cursor().execute("UPDATE sites SET name = ?, name_source = ? WHERE id = ?", [name, source, site_id])
        self._remember_name(site_id, name, source)

    def claim_site(self, site_id: str, tag: str) -> None:
        """An explicit tag takes over an untagged site (continuity) and names it, unless a user named it."""
        self.cursor().execute(
            "UPDATE sites SET tag = ?, name = CASE WHEN name_source = 'user' THEN name ELSE ? END, "
            "name_source = CASE WHEN name_source = 'user' THEN 'user' ELSE 'explicit' END WHERE id = ?",
            [tag, tag, site_id],
        )
        self._remember_name(site_id, tag, "tag")

    def tag_site(self, site_id: str, tag: str) -> None:
        """A hand-set tag joins the site already called by it: the tag is kept, the name stays."""
        self.cursor().execute("UPDATE sites SET tag = coalesce(tag, ?) WHERE id = ?", [tag, site_id])
        self._remember_name(site_id, tag, "tag")

    def _remember_name(self, site_id: str, name: str, source: str) -> None:
        self.cursor().execute(
            "INSERT INTO site_names (site_id, name, source) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [site_id, name, source],
        )

    def site_names(self, site_id: str) -> list[str]:
        """Every name the site has been known by, oldest first."""
        rows = (
            self.cursor()
            .execute("SELECT name FROM site_names WHERE site_id = ? ORDER BY first_seen, name", [site_id])
            .fetchall()
        )
        return [row[0] for row in rows]

    def site_tags(self) -> dict[str, str]:
        """tag -> site id: each site's own tag and the hand-set tags that joined it later."""
        return dict(
            self.cursor()
            .execute(
                "SELECT name, site_id FROM site_names WHERE source = 'tag' "
                "UNION ALL SELECT tag, id FROM sites WHERE tag IS NOT NULL"
            )
            .fetchall()
        )

    def recent_conversations(self, limit: int) -> list[tuple[str, str]]:
        """(conversation, site id) of the latest `limit` first turns, oldest first."""
        rows = (
            self.cursor()
            .execute(
                "SELECT conversation, site_id FROM (SELECT conversation, site_id, ts FROM calls WHERE turn = 'first' "
                "ORDER BY ts DESC LIMIT ?) ORDER BY ts",
                [limit],
            )
            .fetchall()
        )
        return [(conversation, site_id) for conversation, site_id in rows]

    # ---- reads ----

    def site_policy(self, site_id: str) -> dict[str, Any]:
        """The site's policy overrides (`understudy policy`), {} when it has none."""
        row = self.cursor().execute("SELECT policy FROM sites WHERE id = ?", [site_id]).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def site_records(self) -> list[SiteRecord]:
        rows = (
            self.cursor()
            .execute("SELECT id, name, name_source, state, pinned, active_version FROM sites ORDER BY created_at")
            .fetchall()
        )
        return [SiteRecord(*row) for row in rows]

    def resolve_site(self, ref: str) -> SiteRecord:
        """A site by id, by its name, by any name it has been known by (site_names), or by a
        unique id prefix; a miss names the likely candidates."""
        ref = ref.strip() if isinstance(ref, str) else ""
        if not ref:
            raise SiteNotFound("give a site id, name or id prefix (`understudy sites` lists them)")
        cur = self.cursor()
        columns = "s.id, s.name, s.name_source, s.state, s.pinned, s.active_version"
        for sql in (
            f"SELECT {columns} FROM sites s WHERE s.id = ?",
            f"SELECT {columns} FROM sites s WHERE s.name = ?",
            f"SELECT DISTINCT {columns} FROM sites s JOIN site_names n ON n.site_id = s.id WHERE n.name = ?",
            f"SELECT {columns} FROM sites s WHERE starts_with(s.id, ?)",
        ):
            rows = cur.execute(sql, [ref]).fetchall()
            if len(rows) == 1:
                return SiteRecord(*rows[0])
            if rows:
                listed = ", ".join(f"{row[0]} ({row[1]})" for row in rows[:6])
                raise SiteNotFound(f"{ref!r} matches {len(rows)} sites: {listed}; use the id")
        raise SiteNotFound(self._miss_message(ref))

    def _miss_message(self, ref: str) -> str:
        import difflib

        names = (
            self.cursor()
            .execute("SELECT n.name, s.id, s.name FROM site_names n JOIN sites s ON s.id = n.site_id")
            .fetchall()
        )
        if not names:
            return f"no site matches {ref!r}: the store has no sites yet"
        by_name: dict[str, tuple[str, bool]] = {}
        for alias, site_id, current in names:
            by_name.setdefault(alias, (site_id, current))
        close = difflib.get_close_matches(ref, list(by_name), n=6, cutoff=0.5)
        close += [alias for alias in by_name if ref.lower() in alias.lower() and alias not in close]
        picked = {by_name[alias] for alias in close[:6]}
        if not picked:
            return f"no site matches {ref!r} (`understudy sites` lists them)"
        listed = ", ".join(f"{name} ({site_id})" for site_id, name in sorted(picked, key=lambda p: p[1]))
        return f"no site matches {ref!r}; did you mean: {listed}?"

    def site_summaries(self) -> list[dict[str, Any]]:
        """One row per site for `understudy sites`: counts, parse-valid rate, state, who serves it."""
        rows = (
            self.cursor()
            .execute(
                """
            SELECT s.id, s.name, s.kind, s.schema_name, s.state, s.pinned, s.active_version, s.partial_threshold,
                   count(c.id) AS calls,
                   avg(CASE WHEN starts_with(c.served_by, 'local:') THEN 1.0 ELSE 0.0 END)
                       FILTER (WHERE c.purpose IS NULL OR c.purpose = 'client') AS local_share,
                   avg(CASE WHEN c.valid IS NULL THEN NULL WHEN c.valid THEN 1.0 ELSE 0.0 END) AS valid_rate,
                   max(c.ts) AS last_call
            FROM sites s LEFT JOIN calls c ON c.site_id = s.id
            GROUP BY s.id, s.name, s.kind, s.schema_name, s.state, s.pinned, s.active_version, s.partial_threshold
            ORDER BY calls DESC, s.name
            """
            )
            .fetchall()
        )
        out = []
        for (
            sid,
            name,
            kind,
            schema_name,
            state,
            pinned,
            version,
            threshold,
            calls,
            local_share,
            valid_rate,
            last_call,
        ) in rows:
            out.append(
                {
                    "id": sid,
                    "name": name,
                    "kind": kind,
                    "returns": schema_name or "str",
                    "calls": calls,
                    "valid_rate": valid_rate,
                    "state": state,
                    "pinned": pinned,
                    "active_version": version,
                    "served_by": served_by_label(sid, state, pinned, version),
                    # partial: local answers at or above this confidence are served (routing.partial)
                    "partial_threshold": threshold if state == "partial" else None,
                    "local_share": local_share,  # of the clients' calls so far
                    "last_call": last_call.isoformat() if isinstance(last_call, datetime) else None,
                }
            )
        return out

    def recent_calls(self, site_ref: str, limit: int = 20) -> list[dict[str, Any]]:
        site = self.resolve_site(site_ref)
        cur = self.cursor()
        rows = cur.execute(
            f"""
            SELECT {", ".join(CALL_COLUMNS)} FROM calls WHERE site_id = ? ORDER BY ts DESC LIMIT ?
            """,
            [site.id, limit],
        ).fetchall()
        out = []
        for row in rows:
            record = dict(zip(CALL_COLUMNS, row))
            record["ts"] = record["ts"].isoformat()
            out.append(record)
        return out

    def site_count(self, kind: str) -> int:
        """How many sites of one kind (byllm | generic | explicit | overflow) the store holds."""
        return self.cursor().execute("SELECT count(*) FROM sites WHERE kind = ?", [kind]).fetchone()[0]

    def call_count(self) -> int:
        return self.cursor().execute("SELECT count(*) FROM calls").fetchone()[0]


def served_by_label(site_id: str, state: str, pinned: str | None, version: int | None) -> str:
    """What answers this site's requests right now: `upstream` or `local:<site>@v<N>`."""
    if pinned and pinned.startswith("local"):
        pinned_version = pinned.rsplit("@v", 1)[1] if "@v" in pinned else version
        return f"local:{site_id}@v{pinned_version}" if pinned_version else "upstream"
    if state == "local" and version and pinned != "upstream":
        return f"local:{site_id}@v{version}"
    if state == "partial" and version and pinned != "upstream":
        return f"local:{site_id}@v{version} (confident answers), else upstream"
    return "upstream"


def _chunks[Row: tuple](rows: Sequence[Row], size: int) -> Iterable[Sequence[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _flatten(rows: Sequence[tuple]) -> list:
    return [value for row in rows for value in row]


def _insert_sql(table: str, columns: Sequence[str], n_rows: int, *, on_conflict: bool = False) -> str:
    placeholders = "(" + ", ".join("?" * len(columns)) + ")"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([placeholders] * n_rows)
    return sql + (" ON CONFLICT DO NOTHING" if on_conflict else "")
