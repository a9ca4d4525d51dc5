"""Shared fixtures for the RPG showcase tests: a hand-made valid map and a live teacher server.

The teacher runs in-process under uvicorn on a free loopback port (a daemon thread), and
tests talk to it over real HTTP, exactly as byLLM does.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn

from understudy.jac_examples.teacher.server import create_teacher_app

# 6x5, player top-left. Picture (y down):
#   P . # . . E
#   . . # . . .
#   . . # . . .
#   o . . . # #
#   . E . . . .
GOOD_MAP = {
    "level": {
        "name": "Level 1: Test Cellar",
        "difficulty": 2,
        "width": 6,
        "height": 5,
        "num_wall": 2,
        "num_enemies": 2,
        "time_countdown": 120,
        "n_retries_allowed": 3,
    },
    "walls": [
        {"start_pos": {"x": 2, "y": 0}, "end_pos": {"x": 2, "y": 2}},
        {"start_pos": {"x": 5, "y": 3}, "end_pos": {"x": 4, "y": 3}},
    ],
    "small_obstacles": [{"x": 0, "y": 3}],
    "enemies": [{"x": 5, "y": 0}, {"x": 1, "y": 4}],
    "player_pos": {"x": 0, "y": 0},
}


@pytest.fixture
def good_map() -> dict:
    return copy.deepcopy(GOOD_MAP)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningTeacher:
    def __init__(self, seed: int, flaw_share: float) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_teacher_app(seed=seed, flaw_share=flaw_share),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> RunningTeacher:
        self.thread.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("teacher did not become healthy")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def start_teacher() -> Iterator[Callable[[int, float], RunningTeacher]]:
    """Factory: start a teacher with (seed, flaw_share); all are stopped at module end."""
    started: list[RunningTeacher] = []

    def start(seed: int = 0, flaw_share: float = 0.0) -> RunningTeacher:
        teacher = RunningTeacher(seed, flaw_share).start()
        started.append(teacher)
        return teacher

    yield start
    for teacher in started:
        teacher.stop()
