"""Corpus generation: run the Jac level generator many times through the proxy.

Each run is `jac run level_generator.jac` (a real byLLM client) with `OPENAI_BASE_URL`
pointed at the proxy, so the store fills with calls at every RPG call site. The proxy is
the one already running for the data directory, or one started for the length of the
corpus; its upstream is the real one when an upstream key is configured, otherwise the
offline teacher, started here too.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from understudy.cli.store_access import running_proxy
from understudy.jac_examples.rpg.runner import run_level_generator
from understudy.processes import Child, start_proxy, start_teacher
from understudy.settings import Settings


@dataclass
class CorpusResult:
    runs: int
    succeeded: int
    levels_per_run: int
    seconds: float
    upstream: str
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "runs": self.runs,
            "succeeded": self.succeeded,
            "levels_per_run": self.levels_per_run,
            "levels": self.succeeded * self.levels_per_run,
            "seconds": round(self.seconds, 1),
            "upstream": self.upstream,
            "failures": self.failures[:5],
        }


def generate_corpus(
    settings: Settings,
    *,
    runs: int,
    levels: int,
    parallel: int = 2,
    seed: int = 0,
    flaw_share: float = 0.1,
    run_timeout: float = 900,
    progress: bool = True,
) -> CorpusResult:
    started: list[Child] = []
    try:
        proxy_url, upstream = _proxy_for(settings, seed, flaw_share, started)
        key = settings.resolved_upstream_key() or "sk-offline-teacher"
        env = {"OPENAI_BASE_URL": proxy_url + "/v1", "OPENAI_API_KEY": key}
        workdirs = [settings.data_dir / "rpg-runs" / f"worker-{i}" for i in range(parallel)]
        result = CorpusResult(runs, 0, levels, 0.0, upstream)
        t0 = time.monotonic()
        columns = (
            TextColumn("corpus"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, disable=not progress) as bar, ThreadPoolExecutor(parallel) as pool:
            task = bar.add_task("corpus", total=runs)
            free = list(workdirs)
            pending: dict[Any, Path] = {}
            next_run = 0
            while next_run < runs or pending:
                while free and next_run < runs:
                    workdir = free.pop()
                    pending[pool.submit(run_level_generator, levels, env, run_timeout, workdir=workdir)] = workdir
                    next_run += 1
                done = next(as_completed(pending))
                free.append(pending.pop(done))
                completed = done.result()
                if completed.returncode == 0:
                    result.succeeded += 1
                else:
                    result.failures.append((completed.stderr or completed.stdout)[-300:])
                bar.advance(task)
        result.seconds = time.monotonic() - t0
        return result
    finally:
        for child in reversed(started):
            child.stop()


def _proxy_for(settings: Settings, seed: int, flaw_share: float, started: list[Child]) -> tuple[str, str]:
    running = running_proxy(settings)
    if running:
        return running["root"], "the running proxy's upstream"
    if settings.resolved_upstream_key():
        upstream, free = settings.upstream_url, settings.upstream_free
    else:
        teacher = start_teacher(seed=seed, flaw_share=flaw_share)
        started.append(teacher)
        upstream, free = teacher.url, True  # the offline teacher costs nothing
    proxy = start_proxy(settings, upstream, upstream_free=free)
    started.append(proxy)
    return proxy.url, upstream
