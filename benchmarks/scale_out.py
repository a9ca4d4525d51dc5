"""Scale-out: c=64 throughput and p99 for 1, 2 and 4 proxy processes on PostgreSQL vs one on DuckDB.

Same machine, same run, same load as benchmarks/proxy_overhead.py: nginx answers a canned chat
completion as the upstream, `hey` sends its byLLM request body, both pinned to CPU 0; recording
is on, and after each configuration the script checks that the store holds every request sent.
The proxy processes and PostgreSQL are not pinned (they share what the machine has left), so
on a 2-core machine the figures show what extra processes cost or gain when there is no spare
core for them, not the scaling a larger host gets.

    .venv/bin/python benchmarks/scale_out.py [--requests 5000] [--workers 1 2 4] [--json]
    .venv/bin/python benchmarks/scale_out.py --store postgresql://user@host/db   # your server
    .venv/bin/python benchmarks/scale_out.py --smoke    # Python upstream and client, 300 requests

Without --store, a PostgreSQL server is started from Debian's package for the run (as the tests
do) with its defaults but fsync on. Needs nginx and hey (`apt-get install nginx-light hey`) unless --smoke.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from proxy_overhead import NGINX_CONF, UPSTREAM_RESPONSE, free_port, hey, python_load, python_upstream, wait_http  # noqa: E402

from understudy.store import Store  # noqa: E402


def start_upstream(tmp: Path, smoke: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if smoke:
        return python_upstream(port), port
    response = UPSTREAM_RESPONSE.read_text().replace("'", "\\'")
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port, response=response))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen(["taskset", "-c", "0", nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)]), port


def measure(store: str | None, workers: int, upstream_port: int, tmp: Path, requests: int, smoke: bool) -> dict:
    port = free_port()
    data_dir = tmp / f"data-{'pg' if store else 'duckdb'}-{workers}"
    command = [
        str(Path(sys.executable).parent / "understudy"),
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--upstream-url",
        f"http://127.0.0.1:{upstream_port}/v1",
        "--data-dir",
        str(data_dir),
    ]
    if store:
        command += ["--store", store]
    proxy = subprocess.Popen(command, stderr=open(tmp / f"proxy-{workers}.log", "ab"))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    load = python_load if smoke else hey
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
        except RuntimeError:
            raise RuntimeError(
                f"the proxy did not start: {(tmp / f'proxy-{workers}.log').read_text()[-2000:]}"
            ) from None
        sent = load(url, 100 if smoke else 500, 8)["sent"]  # warm-up: connections, caches, first commits
        figures = load(url, requests, 64 if not smoke else 8)
        sent += figures["sent"]
    finally:
        proxy.terminate()
        proxy.wait(120)
    db = Store(store or data_dir / "understudy.duckdb", read_only=True)
    try:
        recorded = db.call_count()
    finally:
        db.close()
    return {
        "store": "postgresql" if store else "duckdb",
        "workers": workers,
        "rps": round(figures["rps"], 1),
        "p50_ms": round(figures["p50"], 2),
        "p99_ms": round(figures["p99"], 2),
        "sent": sent,
        "recorded": recorded,
    }


def fresh_database(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(base, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--store", help="a postgresql:// URL of a database the run may drop and create databases beside"
    )
    parser.add_argument("--smoke", action="store_true", help="300 requests at c=8, Python upstream and client")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    if args.smoke:
        args.requests = 300
    else:
        for tool in ("nginx", "hey", "taskset"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                sys.exit(f"error: {tool} not found (apt-get install nginx-light hey), or run with --smoke")
    tmp = Path(tempfile.mkdtemp(prefix="understudy-scale-"))
    server = None
    if args.store is None:
        from tests.support.services import PostgresServer

        server = PostgresServer().start(durable=True)
        args.store = server.url("postgres")
    upstream, upstream_port = start_upstream(tmp, args.smoke)
    results = []
    try:
        wait_http(f"http://127.0.0.1:{upstream_port}/")
        results.append(measure(None, 1, upstream_port, tmp, args.requests, args.smoke))
        for workers in args.workers:
            store = fresh_database(args.store, f"understudy_scale_{workers}")
            results.append(measure(store, workers, upstream_port, tmp, args.requests, args.smoke))
    finally:
        upstream.terminate()
        upstream.wait(10)
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    load = "Python client, c=8 (--smoke)" if args.smoke else "hey c=64, nginx upstream, both on CPU 0"
    from proxy_overhead import BODY

    print(
        f"Scale-out, {BODY.stat().st_size / 1024:.2f} KB byLLM body, {load}, recording on, {args.requests} requests per configuration"
    )
    print(f"{'store':>10} {'processes':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recorded/sent':>14}")
    for row in results:
        print(
            f"{row['store']:>10} {row['workers']:>9} {row['rps']:>8.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['recorded']:>7}/{row['sent']:<6}"
        )
    lost = [row for row in results if row["recorded"] != row["sent"]]
    if args.json:
        print(json.dumps({"results": results, "ok": not lost}))
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
