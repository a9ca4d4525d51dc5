"""What the code asks of a database cursor, whichever store is behind it.

The store is DuckDB (a `duckdb.DuckDBPyConnection` cursor) or PostgreSQL
(`understudy.store_postgres.PostgresCursor`, which translates DuckDB's SQL dialect); queries are
written once against `Cursor`, the part both provide, so a type hint never names DuckDB where
PostgreSQL may be passed. `transaction` is the one spelling of BEGIN / COMMIT / ROLLBACK.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: object) -> bool:
    """Whether a store location names a PostgreSQL server (else it is a DuckDB file). Here, not in
    `store_postgres`, so telling the two apart never imports psycopg and sqlglot (~0.2 s a start)."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


class Cursor(Protocol):
    """A DB-API-like cursor in DuckDB's SQL dialect (`?` parameters)."""

    def execute(self, sql: str, parameters: Any = None, /) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> list[tuple[Any, ...]]: ...


@contextmanager
def transaction(cursor: Cursor) -> Iterator[Cursor]:
    """BEGIN, then COMMIT when the block ends, ROLLBACK (and re-raise) when it raises. The
    PostgreSQL adapter runs in autocommit mode, so BEGIN means there what it means on DuckDB."""
    cursor.execute("BEGIN")
    try:
        yield cursor
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")
