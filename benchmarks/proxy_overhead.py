"""Proxy overhead: requests/s and added p50/p99 latency of Understudy vs calling the upstream directly.

Setup (as in DESIGN.md's reference figures): nginx answers a canned chat completion as
the fake upstream; `hey` is the load generator; both pinned to CPU 0, the proxy pinned to
CPU 1, recording on (every request reaches DuckDB; the script checks the count).
Needs Debian's nginx and hey: `apt-get install nginx-light hey`.

    .venv/bin/python benchmarks/proxy_overhead.py [--requests 5000] [--concurrency 1 64] [--paced 100]
    .venv/bin/python benchmarks/proxy_overhead.py --baseline HEAD~3   # old and new proxy in one run
    .venv/bin/python benchmarks/proxy_overhead.py --smoke   # no nginx/hey: a Python upstream and client, 200 requests

`--baseline REF` also runs the proxy as it was at git REF (a worktree of REF, its package put
ahead of this checkout's on the proxy's PYTHONPATH; the venv is shared, so REF must need no other
packages), beside the working tree's: each load is sent to the upstream directly, to the
baseline proxy and to the new one in turn, so old and new are measured in one run on one
machine. `--paced RPS` adds a row at concurrency 1 paced to RPS requests a second (hey -q).

`--smoke` checks the harness end to end (proxy, recording, the figures) where nginx and hey are
not installed; its numbers measure the Python upstream and client too, so they are not the
reference figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import duckdb
import httpx

HERE = Path(__file__).parent
BODY = HERE / "byllm_request.json"
UPSTREAM_RESPONSE = HERE / "upstream_response.json"
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            client_body_buffer_size 64k;
            default_type application/json;
            return 200 '{response}';
        }}
    }}
}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def hey(url: str, requests: int, concurrency: int, rate: float | None = None) -> dict[str, float]:
    """hey's figures; it sends requests // concurrency * concurrency requests (`sent`); `rate`:
    requests a second per worker (hey -q), else as fast as answers come."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "hey",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            *(["-q", f"{rate:g}"] if rate else []),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            str(BODY),
            "-H",
            "Authorization: Bearer sk-bench",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latencies = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%% in ([\d.]+) secs".replace("%%", "%"), out)}
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    if set(codes) != {"200"}:
        raise RuntimeError(f"non-200 answers: {codes}\n{out}")
    return {"rps": rps, "p50": latencies[50], "p99": latencies[99], "sent": sum(int(n) for n in codes.values())}


def python_load(url: str, requests: int, concurrency: int, rate: float | None = None) -> dict[str, float]:
    """hey's figures from an httpx client in threads (the --smoke stand-in for hey; `rate` is ignored)."""
    from concurrent.futures import ThreadPoolExecutor

    body = BODY.read_bytes()
    per_worker = max(1, requests // concurrency)

    def worker(_: int) -> list[float]:
        out = []
        with httpx.Client(timeout=30) as client:
            for _ in range(per_worker):
                started = time.perf_counter()
                response = client.post(
                    url, content=body, headers={"content-type": "application/json", "authorization": "Bearer sk-bench"}
                )
                if response.status_code != 200:
                    raise RuntimeError(f"non-200 answer: {response.status_code} {response.text[:200]}")
                out.append((time.perf_counter() - started) * 1000)
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(v for chunk in pool.map(worker, range(concurrency)) for v in chunk)
    seconds = time.perf_counter() - started
    return {
        "rps": len(latencies) / seconds,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "sent": len(latencies),
    }


def python_upstream(port: int) -> subprocess.Popen:
    """The canned completion from Python's http.server (the --smoke stand-in for nginx)."""
    code = (
        "import http.server, sys\n"
        f"body = open({str(UPSTREAM_RESPONSE)!r}, 'rb').read()\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    protocol_version = 'HTTP/1.1'\n"
        "    def log_message(self, *a): pass\n"
        "    def _answer(self):\n"
        "        self.rfile.read(int(self.headers.get('content-length') or 0))\n"
        # one write per answer: headers and body in separate segments meet delayed ACKs (40 ms stalls)
        "        self.wfile.write(b'HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: '\n"
        "                         + str(len(body)).encode() + b'\\r\\n\\r\\n' + body)\n"
        "    do_GET = do_POST = _answer\n"
        f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def baseline_package(ref: str, tmp: Path) -> Path:
    """A directory that, put first on PYTHONPATH, makes `understudy` the package as it was at git
    `ref`: a worktree of `ref` with its kernel folder as the package and the component folders
    linked in where pyproject's package-dir maps them."""
    repo = HERE.parent
    tree = tmp / "baseline-tree"
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--quiet", "--detach", "--force", str(tree), ref], check=True
    )
    package = tmp / "baseline-pkg" / "understudy"
    shutil.copytree(tree / "understudy", package)
    # the ref's own mapping: its components are whatever folders it declared
    mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        component = name.removeprefix("understudy.")
        if name.count(".") == 1 and folder != "understudy" and not (package / component).exists():
            (package / component).symlink_to(tree / folder)
    return package.parent


def remove_worktree(tmp: Path) -> None:
    tree = tmp / "baseline-tree"
    if tree.exists():
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=False)


def console_entry(pyproject: Path) -> str:
    """The `understudy` command's `module:function` as that pyproject declares it (the CLI moved
    in 363900e, so a baseline's proxy is started through its own entry point, not ours)."""
    return tomllib.loads(pyproject.read_text())["project"]["scripts"]["understudy"].split("#")[0].strip()


def start_proxy(
    pin: list[str], port: int, upstream_port: int, data_dir: Path, pythonpath: Path | None, entry: str
) -> subprocess.Popen:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    module, function = entry.split(":")
    return subprocess.Popen(
        [
            *pin,
            sys.executable,
            "-c",
            f"import sys; from {module} import {function}; sys.argv[0] = 'understudy'; sys.exit({function}())",
            "serve",
            "--port",
            str(port),
            "--upstream-url",
            f"http://127.0.0.1:{upstream_port}/v1",
            "--data-dir",
            str(data_dir),
        ],
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=data_dir.parent,  # not the checkout: its package folder must not shadow a baseline's
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--paced", type=float, metavar="RPS", help="Also concurrency 1 paced to RPS requests a second.")
    parser.add_argument("--baseline", metavar="REF", help="Also run the proxy as it was at this git ref.")
    parser.add_argument(
        "--smoke", action="store_true", help="200 requests at concurrency 1 and 4, no nginx or hey needed."
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.concurrency = 200, [1, 4]
    else:
        for tool in ("nginx", "hey", "taskset"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                sys.exit(f"error: {tool} not found (apt-get install nginx-light hey), or run with --smoke")
    load = python_load if args.smoke else hey
    # CPU pinning only where there is a second CPU and taskset (the smoke run may have neither).
    pin = (
        (lambda cpu: ["taskset", "-c", cpu])
        if shutil.which("taskset") and (os.cpu_count() or 1) > 1
        else (lambda cpu: [])
    )

    tmp = Path(tempfile.mkdtemp(prefix="understudy-bench-"))
    nginx_port = free_port()
    if args.smoke:
        nginx = python_upstream(nginx_port)
    else:
        # nginx reads backslash escapes in a quoted string: the JSON's own backslashes are doubled,
        # or the upstream would answer `"content":"{"name"...` (invalid JSON the recorder cannot decode)
        response = UPSTREAM_RESPONSE.read_text().strip().replace("\\", "\\\\").replace("'", "\\'")
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, response=response))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = subprocess.Popen([*pin("0"), nginx_bin, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
    # The proxies under test: the working tree's ("proxy") and, with --baseline, REF's ("baseline").
    labels = (["baseline"] if args.baseline else []) + ["proxy"]
    proxies: dict[str, tuple[subprocess.Popen, int, Path]] = {}
    sent = dict.fromkeys(labels, 0)
    # (label of the row, concurrency, rate, direct figures, figures per proxy)
    rows: list[tuple[str, int, float | None, dict, dict[str, dict]]] = []
    try:
        for label in labels:
            port, data_dir = free_port(), tmp / f"under-test-{label}" / "data"
            data_dir.parent.mkdir(parents=True)
            pythonpath = baseline_package(args.baseline, tmp) if label == "baseline" else None
            tree = tmp / "baseline-tree" if label == "baseline" else HERE.parent
            entry = console_entry(tree / "pyproject.toml")
            proxies[label] = (start_proxy(pin("1"), port, nginx_port, data_dir, pythonpath, entry), port, data_dir)
        wait_http(f"http://127.0.0.1:{nginx_port}/")
        direct_url = f"http://127.0.0.1:{nginx_port}/v1/chat/completions"
        json.loads(httpx.post(direct_url, content=b"{}").content)  # the canned answer is the JSON it should be
        urls = {label: f"http://127.0.0.1:{port}/v1/chat/completions" for label, (_, port, _) in proxies.items()}
        for label in labels:
            wait_http(urls[label].removesuffix("/v1/chat/completions") + "/healthz")
            # warm-up: connections, caches, the first DuckDB commits
            sent[label] += load(urls[label], 50 if args.smoke else 500, 8 if not args.smoke else 2)["sent"]
        loads = [(str(c), c, None) for c in args.concurrency]
        if args.paced and not args.smoke:
            loads.append((f"1@{args.paced:g}/s", 1, args.paced))
        for row_label, concurrency, rate in loads:
            requests = args.requests if rate is None else min(args.requests, int(rate * 30))  # at most 30 s paced
            direct = load(direct_url, requests, concurrency, rate)
            through = {}
            for label in labels:
                through[label] = load(urls[label], requests, concurrency, rate)
                sent[label] += through[label]["sent"]
            rows.append((row_label, concurrency, rate, direct, through))
    finally:
        for process, _, _ in proxies.values():
            process.terminate()
            process.wait(60)
        nginx.terminate()
        nginx.wait(10)
        remove_worktree(tmp)

    recorded = {}
    for label, (_, _, data_dir) in proxies.items():
        con = duckdb.connect(str(data_dir / "understudy.duckdb"), read_only=True)
        recorded[label] = con.execute("SELECT count(*) FROM calls").fetchone()[0]
        con.close()
    shutil.rmtree(tmp, ignore_errors=True)

    body_kb = BODY.stat().st_size / 1024
    setup = "Python upstream and client (--smoke)" if args.smoke else "nginx upstream + hey on CPU 0, proxy on CPU 1"
    print(f"Proxy overhead, {body_kb:.2f} KB byLLM body, {setup}, recording on")
    if args.baseline:
        print(f"baseline: the proxy at {args.baseline}; proxy: the working tree")
    print(
        f"{'load':>10} {'proxy':>8} {'direct rps':>11} {'proxy rps':>10} {'ratio':>6} {'direct p50':>11} "
        f"{'proxy p50':>10} {'added p50':>10} {'direct p99':>11} {'proxy p99':>10} {'added p99':>10}"
    )
    for row_label, _, _, direct, through in rows:
        for label, figures in through.items():
            print(
                f"{row_label:>10} {label:>8} {direct['rps']:>11.0f} {figures['rps']:>10.0f} "
                f"{figures['rps'] / direct['rps']:>6.0%} {direct['p50']:>9.2f}ms {figures['p50']:>8.2f}ms "
                f"{figures['p50'] - direct['p50']:>8.2f}ms {direct['p99']:>9.2f}ms {figures['p99']:>8.2f}ms "
                f"{figures['p99'] - direct['p99']:>8.2f}ms"
            )
    for label in labels:
        print(f"{label}: recorded {recorded[label]} of {sent[label]} proxied requests")
    print(
        json.dumps(
            {
                "results": [
                    {
                        "concurrency": c,
                        "rate": rate,
                        "direct": d,
                        "proxy": t["proxy"],
                        **({"baseline": t["baseline"]} if "baseline" in t else {}),
                    }
                    for _, c, rate, d, t in rows
                ],
                "recorded": recorded["proxy"],
                "sent": sent["proxy"],
                **(
                    {
                        "baseline_ref": args.baseline,
                        "baseline_recorded": recorded["baseline"],
                        "baseline_sent": sent["baseline"],
                    }
                    if args.baseline
                    else {}
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
