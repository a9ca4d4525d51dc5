"""The PostgreSQL backend of the store: DuckDB's cursor interface over psycopg.

The store's SQL is written once, in DuckDB's dialect (the embedded default). Here each
statement is translated to PostgreSQL by sqlglot, once per distinct text (cached), and run on
a psycopg connection in autocommit mode, so `BEGIN` / `COMMIT` mean what they mean on DuckDB.
Values come back as DuckDB's driver returns them: JSON columns as text (callers `json.loads`
them), numerics as floats, arrays as lists, timestamps as aware datetimes.

Each thread that touches the store gets its own connection (`PostgresDatabase.cursor`), as
with DuckDB's per-thread cursors: a proxy process opens one for its writer thread and one per
worker thread that reads (a handful), so several processes fit PostgreSQL's default 100.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
import sqlglot
from psycopg.types.numeric import FloatLoader
from psycopg.types.string import TextLoader
from sqlglot import exp

# One key for the session-level lock that serialises migrations across processes.
MIGRATION_LOCK_KEY = 0x756E64657273  # "unders"


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return url.split("@")[-1]
    host, port, db = info.get("host", "localhost"), info.get("port", "5432"), info.get("dbname", "")
    user = info.get("user")
    return f"postgresql://{f'{user}@' if user else ''}{host}:{port}/{db}"


_PLACEHOLDER = "\x00understudy-parameter\x00"


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """DuckDB SQL -> PostgreSQL SQL with psycopg's `%s` parameters (a literal % doubled)."""
    statements = sqlglot.parse(sql, read="duckdb")
    out = []
    aliases = itertools.count(1)

    def adapt(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            return exp.var(_PLACEHOLDER)
        # DuckDB lets a subquery in FROM go unnamed; PostgreSQL before 16 does not.
        if isinstance(node, exp.Subquery) and not node.alias and isinstance(node.parent, (exp.From, exp.Join)):
            node.set("alias", exp.TableAlias(this=exp.to_identifier(f"_q{next(aliases)}")))
        # GROUP BY ALL: PostgreSQL needs the grouped columns spelled out (by position).
        if (
            isinstance(node, exp.Select)
            and isinstance(node.args.get("group"), exp.Group)
            and node.args["group"].args.get("all")
        ):
            positions = [
                exp.Literal.number(n)
                for n, projection in enumerate(node.expressions, start=1)
                if not projection.find(exp.AggFunc)
            ]
            node.set("group", exp.Group(expressions=positions) if positions else None)
        # A JSON value cast to a scalar (json_extract(...)::INT): PostgreSQL casts json's text, not json.
        if (
            isinstance(node, exp.Cast)
            and isinstance(node.this, exp.JSONExtract)
            and not node.to.is_type(exp.DataType.Type.JSON)
        ):
            node.set("this", exp.JSONExtractScalar(this=node.this.this, expression=node.this.expression))
        # LIKE on a JSON column (DuckDB compares its text): compare the text on PostgreSQL too.
        if isinstance(node, (exp.Like, exp.ILike)) and not isinstance(node.this, exp.Cast):
            node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("TEXT")))
        # INSERT OR REPLACE (DuckDB, SQLite): PostgreSQL's upsert on the table's primary key.
        if isinstance(node, exp.Insert) and node.args.get("alternative") == "REPLACE":
            node.set("alternative", None)
            node.set("conflict", _replace_on_conflict(node))
        return node

    for tree in statements:
        if tree is None:
            continue
        out.append(tree.transform(adapt).sql(dialect="postgres"))
    return "; ".join(out).replace("%", "%%").replace(_PLACEHOLDER, "%s")


# Primary keys of the tables `INSERT OR REPLACE` writes (the store's schema, understudy.migrations).
PRIMARY_KEYS = {
    "review_judgments": ("item_id", "reviewer"),
    "review_rubrics": ("site_id",),
    "reviewers": ("name",),
    "sites": ("id",),
    "review_items": ("id",),
    "eval_runs": ("id",),
}


def _replace_on_conflict(insert: exp.Insert) -> exp.OnConflict:
    schema = insert.this
    table = schema.this.name if isinstance(schema, exp.Schema) else schema.name
    columns = [column.name for column in schema.expressions] if isinstance(schema, exp.Schema) else []
    if table not in PRIMARY_KEYS or not columns:
        raise ValueError(f"INSERT OR REPLACE INTO {table}: name its columns, and its key in PRIMARY_KEYS")
    keys = PRIMARY_KEYS[table]
    updates = [exp.EQ(this=exp.column(c), expression=exp.column(c, table="excluded")) for c in columns if c not in keys]
    return (
        exp.OnConflict(
            conflict_keys=[exp.to_identifier(k) for k in keys], action=exp.var("DO UPDATE"), expressions=updates
        )
        if updates
        else exp.OnConflict(conflict_keys=[exp.to_identifier(k) for k in keys], action=exp.var("DO NOTHING"))
    )


class PostgresCursor:
    """One thread's connection, with the methods the store's callers use on a DuckDB cursor.

    A connection the server dropped (a restart, a failover) fails the statement running on it;
    the next statement opens a new one, so a proxy outlives its database's restart (the
    recorder keeps what it could not commit meanwhile: proxy.recorder)."""

    def __init__(self, database: PostgresDatabase):
        self.database = database
        self.connection = database.connect()
        self._cursor = self.connection.cursor()

    def _usable(self) -> psycopg.Cursor:
        if self.connection.closed or self.connection.broken:
            self.connection = self.database.connect()
            self._cursor = self.connection.cursor()
        return self._cursor

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> PostgresCursor:
        self._usable().execute(translate(sql), list(parameters) if parameters else None, prepare=False)
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> PostgresCursor:
        self._usable().executemany(translate(sql), [list(row) for row in rows])
        return self

    def raw(self, sql: str, parameters: Sequence[Any] | None = None) -> PostgresCursor:
        """PostgreSQL's own SQL, untranslated (locks, COPY)."""
        self._usable().execute(sql, parameters)
        return self

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Bulk insert through COPY: the group commit's calls, thousands of rows in one round trip."""
        with self._usable().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple]:
        return self._cursor.fetchall()

    @property
    def description(self):
        return self._cursor.description

    def close(self) -> None:
        self._cursor.close()


class PostgresDatabase:
    """A store's PostgreSQL server: hands each calling thread a connection of its own."""

    def __init__(self, url: str, *, read_only: bool = False):
        self.url = url
        self.read_only = read_only
        self._lock = threading.Lock()
        self._cursors: list[PostgresCursor] = []

    def connect(self) -> psycopg.Connection:
        try:
            connection = psycopg.connect(self.url, autocommit=True, application_name="understudy", connect_timeout=10)
        except psycopg.OperationalError as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ConnectionError(f"cannot reach the store {redacted(self.url)}: {detail}") from None
        # JSON as text (as DuckDB returns it) and numerics as floats (avg() of an integer column).
        for name in ("json", "jsonb"):
            connection.adapters.register_loader(name, TextLoader)
        connection.adapters.register_loader("numeric", FloatLoader)
        if self.read_only:
            connection.execute("SET default_transaction_read_only = on")
        return connection

    def cursor(self) -> PostgresCursor:
        cursor = PostgresCursor(self)
        with self._lock:
            self._cursors.append(cursor)
        return cursor

    def close(self) -> None:
        with self._lock:
            cursors, self._cursors = self._cursors, []
        for cursor in cursors:
            try:
                cursor.connection.close()
            except psycopg.Error:
                pass
