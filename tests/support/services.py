"""Real PostgreSQL and Redis servers for the tests, from the machine's Debian packages.

`scripts/machine_packages.sh` (run by `make test` and `.ci/run`) installs the packages (postgresql, redis-server); each server runs from a temporary
directory on a free loopback port for one test session and is stopped at its end. PostgreSQL
refuses to run as root, so under root it runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support.fake_upstream import free_port


def _postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def services_missing() -> list[str]:
    """Which server programs this machine lacks (the tests that need them say so and fail)."""
    missing = [name for name in ("initdb", "postgres") if _postgres_bin(name) is None]
    return missing + ([] if shutil.which("redis-server") else ["redis-server"])


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="understudy-pg-"))
        self.data = self.root / "data"
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._names = itertools.count(1)
        self.process: subprocess.Popen | None = None

    def _run_as(self):
        return {"user": self._user.pw_uid, "group": self._user.pw_gid} if self._user else {}

    def start(self, durable: bool = False) -> PostgresServer:
        """`durable`: PostgreSQL's own defaults (fsync on), for benchmarks; tests turn fsync off."""
        subprocess.run(
            [
                _postgres_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "understudy",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._run_as(),
        )
        self.durable = durable
        return self._run()

    def restart(self) -> None:
        """Stop the server (every connection dropped) and start it again on the same port and data."""
        self.process.send_signal(signal.SIGINT)  # "fast" shutdown: clients are disconnected, not waited for
        self.process.wait(30)
        self._run()

    def _run(self) -> PostgresServer:
        durable = self.durable
        self.log = open(self.root / "server.log", "ab")
        # fsync off: a test server's durability is not under test, and every test makes a database.
        fast = [] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.process = subprocess.Popen(
            [
                _postgres_bin("postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=400",
                *fast,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **self._run_as(),
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not start: " + (self.root / "server.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://understudy@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL (one per test: nothing leaks between tests)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="understudy-redis-"))
        self.process: subprocess.Popen | None = None
        self._numbers = itertools.count(0)

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=open(self.root / "server.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "Redis did not start: " + (self.root / "server.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.05)

    def new_url(self) -> str:
        """A Redis database of its own (0-15), flushed: one per test."""
        number = next(self._numbers) % 16
        import redis

        redis.Redis(port=self.port, db=number).flushdb()
        return f"redis://127.0.0.1:{self.port}/{number}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)
