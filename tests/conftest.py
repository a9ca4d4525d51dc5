"""Shared fixtures: every test gets its own data directory; servers are real and on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent
# Real byLLM wire captures (copied from the project's shared fixtures; read-only).
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "byllm"


def query_store(data_dir: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Rows from the test's store: the data dir's DuckDB file, opened read-only (run it after the
    proxy stops), or the test's PostgreSQL database when it runs on one (`store_backend`)."""
    url = os.environ.get("UNDERSTUDY_STORE")
    if url:
        from understudy.store import Store

        store = Store(url, read_only=True)
        try:
            return store.cursor().execute(sql, params or []).fetchall()
        finally:
            store.close()
    con = duckdb.connect(str(data_dir / "understudy.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def open_test_store(duckdb_path: Path, **kwargs):
    """The test's store: the DuckDB file at `duckdb_path`, or its PostgreSQL database when it has one."""
    from understudy.store import Store

    return Store(os.environ.get("UNDERSTUDY_STORE") or duckdb_path, **kwargs)


# ---- parallel runs: `make test` runs pytest-xdist (`-n 2 --dist loadgroup --no-loadscope-reorder`) ----
# Every worker is its own process with its own session fixtures (PostgreSQL and Redis servers on
# free ports, its own database names, the tiny Llama, tmp_path under its own basetemp). The tests
# of a module that use a module-scoped fixture go to one worker together (an `xdist_group` named
# after the module), so no module fixture is built twice; every other test is a work unit of its
# own. The units are handed out longest first (EXPECTED_SECONDS, measured on the 2-core machine),
# so no long test starts last while the other worker sits idle.
EXPECTED_SECONDS = {  # nodeid prefix: seconds per test (setup included), from a parallel run's --junitxml
    # (the largest re-measured on 2026-12-06 from `make test --durations=40`, with the embedder's
    # cache: routing.similarity)
    "tests/routing/test_decisions_e2e.py": 58,
    "tests/routing/test_partial_e2e.py": 40,
    "tests/test_benchmarks_smoke.py::test_learning_curve_smoke": 68,
    # 34 s once llama-server is built, 492 s on a fresh machine (its build): handed out first, so the
    # build overlaps the rest of the suite instead of running alone at its end
    "tests/routing/test_model_server.py": 492,
    "tests/test_benchmarks_smoke.py::test_local_serving_smoke": 33,  # with its share of the module's fixtures
    "tests/routing/test_routing_e2e.py::test_record_train_shadow_promote_and_operate": 30,
    "tests/routing/test_eval.py::test_eval_compares_upstream_base_and_versions": 19,
    "tests/test_benchmarks_smoke.py::test_train_smoke": 21,
    "tests/test_benchmarks_smoke.py::test_scale_out_smoke": 21,
    "tests/training/test_worker.py::test_scheduler_and_worker_train_a_version": 34,
    "tests/routing/test_routing_e2e.py::test_byllm_accepts_local_answers": 21,
    "tests/proxy/test_scale_out.py::test_without_the_sync": 19,
    "tests/jac_examples/test_corpus_export.py": 17,
    "tests/proxy/test_scale_out.py::test_a_pin_made_through_one_proxy": 16,
    "tests/plugin/test_plugin_through_proxy.py": 13,
    "tests/test_benchmarks_smoke.py::test_durability_smoke": 14,
    "tests/proxy/test_scale_out.py::test_a_worker_on_the_redis_queue": 14,
    "tests/routing/test_checked_sampling.py::test_a_failing_local_answer": 14,
    "tests/routing/test_routing_e2e.py::test_upstream_down": 13,
    "tests/routing/test_policy.py::test_false_promotion_rate": 12,
    "tests/plugin/test_byllm_plugin.py::test_litellm_transport": 12,
    "tests/plugin/test_byllm_plugin.py::test_inert_without_understudy_url": 12,
    "tests/training/test_tiny_pipeline.py::test_export_checks_the_base": 12,
    "tests/routing/test_routing_e2e.py::test_invalid_local_answer": 11,
    "tests/proxy/test_hostile_input.py::test_random_mutations": 11,
    "tests/test_benchmarks_smoke.py::test_constraint_engines_smoke": 11,
    "tests/test_benchmarks_smoke.py::test_gpu_training_layout": 10,
}


# Each worker gets its share of the cores for the model work it runs (torch, llama.cpp, OpenMP):
# two workers each spinning two threads on two cores made the tiny-model tests slower in parallel
# than one after the other.
WORKER_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # inherited by every proxy, CLI and benchmark started
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, str(WORKER_THREADS))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _expected_seconds(nodeid: str) -> float:
    """The longest-matching prefix's figure; 1 s (about the suite's mean) when none matches."""
    matches = [prefix for prefix in EXPECTED_SECONDS if nodeid.startswith(prefix)]
    return EXPECTED_SECONDS[max(matches, key=len)] if matches else 1.0


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain run keeps pytest's order
    units: dict[str, list] = {}
    for item in items:
        defs = item._fixtureinfo.name2fixturedefs.values()
        if any(d.scope in ("module", "class", "package") for fixturedefs in defs for d in fixturedefs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
            units.setdefault("group:" + item.module.__name__, []).append(item)
        else:
            units.setdefault(item.nodeid, []).append(item)
    order = sorted(units.values(), key=lambda unit: -sum(_expected_seconds(item.nodeid) for item in unit))
    items[:] = [item for unit in order for item in unit]  # a stable sort: ties keep pytest's order


# ---- the store backends: DuckDB everywhere; PostgreSQL too where a module asks for both ----
# A module sets `STORE_BACKENDS = ("duckdb", "postgresql")` to run each of its tests on both
# (`UNDERSTUDY_TEST_STORE=postgresql` runs the whole suite on PostgreSQL). On PostgreSQL each
# test gets a database of its own, named by UNDERSTUDY_STORE for the proxies and CLIs it starts.


def pytest_generate_tests(metafunc):
    if "store_backend" in metafunc.fixturenames:
        forced = os.environ.get("UNDERSTUDY_TEST_STORE")
        backends = (forced,) if forced else getattr(metafunc.module, "STORE_BACKENDS", None)
        if backends:
            metafunc.parametrize("store_backend", backends, indirect=True)


@pytest.fixture(scope="session")
def postgres_server():
    from tests.support.services import PostgresServer, services_missing

    if "postgres" in services_missing():
        pytest.fail("PostgreSQL is not installed (scripts/machine_packages.sh, run by `make test`, installs it)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    from tests.support.services import RedisServer, services_missing

    if "redis-server" in services_missing():
        pytest.fail("Redis is not installed (scripts/machine_packages.sh, run by `make test`, installs it)")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def store_backend(request, monkeypatch):
    """'duckdb' (the data dir's file) or 'postgresql' (a fresh database, in UNDERSTUDY_STORE)."""
    backend = getattr(request, "param", "duckdb")
    monkeypatch.delenv("UNDERSTUDY_STORE", raising=False)
    if backend == "postgresql":
        monkeypatch.setenv("UNDERSTUDY_STORE", request.getfixturevalue("postgres_server").new_database())
    return backend


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path, monkeypatch):
    """Nothing a test does touches ./understudy-data or the user's keys."""
    data_dir = tmp_path / "understudy-data"
    monkeypatch.setenv("UNDERSTUDY_DATA_DIR", str(data_dir))
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "UNDERSTUDY_UPSTREAM_KEY",
        "UNDERSTUDY_UPSTREAM_URL",
        "UNDERSTUDY_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    return data_dir


PROXY_LOG_TAIL = 4000  # characters of each proxy's log shown with a failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test shows the end of every proxy log it wrote: the proxy's side of a failure
    (a shadow sample that raised, a decision's reason) is otherwise lost with the tmp dir on CI."""
    report = yield
    data_dir = item.funcargs.get("isolated_data_dir") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(data_dir, Path):
        for log in sorted(data_dir.parent.glob("**/proxy.log")):
            text = log.read_text(errors="replace")
            if text.strip():
                report.sections.append((f"proxy log {log.relative_to(data_dir.parent)}", text[-PROXY_LOG_TAIL:]))
    return report


@pytest.fixture
def fake_upstream():
    with FakeUpstream() as upstream:
        yield upstream


@dataclass
class RunningProxy:
    process: subprocess.Popen
    url: str
    data_dir: Path
    admin_token: str

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        return (self.data_dir.parent / "proxy.log").read_text()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(*args, "--data-dir", str(self.data_dir), check=check)

    def operation(self, name: str, **args):
        """One operation of the table (`understudy.operations`) run in this proxy through its admin
        API by the client the CLI uses, as `understudy <command> --json` would, without a CLI
        process: a loop polling a site's state or report every few calls spent most of its CPU
        starting CLIs (~1 s each). A text result (the report) comes back parsed as JSON."""
        from understudy.operations import OPERATIONS
        from understudy.operations.client import AdminClient
        from understudy.settings import load_settings

        result = AdminClient(load_settings(data_dir=self.data_dir)).call(OPERATIONS[name], args)
        return json.loads(result.body) if hasattr(result, "body") else result


def run_cli(
    *args: str, check: bool = True, env: dict | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(VENV_BIN / "understudy"), *args], capture_output=True, text=True, timeout=120, env=env, input=input
    )
    if check and result.returncode != 0:
        raise AssertionError(f"understudy {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def wait_for(condition, timeout: float = 30, what: str = "condition"):
    """Poll `condition` until it returns something true (returned) or `timeout` s pass (fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def start_proxy(data_dir: Path, upstream_url: str, *extra: str, env: dict | None = None) -> RunningProxy:
    """`understudy serve` exactly as a user runs it, on a free port."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / "proxy.log", "a")  # a file, not a pipe: a full pipe would block the proxy
    process = subprocess.Popen(
        [
            str(VENV_BIN / "understudy"),
            "serve",
            "--port",
            "0",
            "--upstream-url",
            upstream_url,
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        env=env or os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    log.close()
    discovery = data_dir / "proxy.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"proxy exited {process.returncode}: {(data_dir.parent / 'proxy.log').read_text()[-2000:]}"
            )
        if discovery.exists():
            try:
                info = json.loads(discovery.read_text())
                assert info["url"] == info["root"] + "/v1"  # `url` is what an OpenAI client is given
                httpx.get(info["root"] + "/healthz", timeout=2).raise_for_status()
                return RunningProxy(process, info["root"], data_dir, info["admin_token"])
            except (ValueError, httpx.HTTPError):
                pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("proxy did not start within 60 s")


@pytest.fixture
def proxy(fake_upstream, isolated_data_dir):
    running = start_proxy(isolated_data_dir, fake_upstream.url)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(hf_dir, gguf_path) of the tiny random Llama (DESIGN.md), built once per session."""
    from understudy.training.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_model_env(tiny_llama, monkeypatch):
    """Environment for a proxy / CLI / worker that trains and serves the tiny model fast."""
    hf_dir, gguf = (str(p) for p in tiny_llama)
    monkeypatch.setenv("UNDERSTUDY_BASE_GGUF", gguf)
    monkeypatch.setenv("UNDERSTUDY_LOCAL_THREADS", str(WORKER_THREADS))
    # No routing policy here: every test of a decision runs at the shipped defaults.
    monkeypatch.setenv(
        "UNDERSTUDY_TRAIN_CONFIG",
        json.dumps(
            {
                "base_model": hf_dir,
                "base_gguf": gguf,
                "lr": 1e-2,
                "max_steps": 40,
                "batch_size": 2,
                "grad_accum": 1,
                "lora_dropout": 0.0,
                "device": "cpu",
                "verify_max_tokens": 32,
                "num_threads": WORKER_THREADS,
            }
        ),
    )
    return os.environ.copy()
