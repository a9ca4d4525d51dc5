"""The local model's queue: served answers never wait behind more than the running generation,
and shadow work under load is a fair, bounded sample of the traffic."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from understudy.inference.local_queue import LocalQueue, Skipped


async def job(queue: LocalQueue, name: str, order: list[str], *, background: bool, work: float = 0.001):
    try:
        await queue.acquire(background=background)
    except Skipped:
        order.append(f"skipped:{name}")
        return
    try:
        order.append(name)
        await asyncio.sleep(work)
    finally:
        queue.release()


def test_a_served_answer_waits_only_for_the_generation_running_now():
    async def main():
        queue, order = LocalQueue(), []
        running = asyncio.create_task(job(queue, "shadow-0", order, background=True, work=0.05))
        await asyncio.sleep(0.01)
        shadows = [asyncio.create_task(job(queue, f"shadow-{i}", order, background=True)) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        served = asyncio.create_task(job(queue, "served", order, background=False))
        await asyncio.gather(running, served, *shadows)
        return order

    order = asyncio.run(main())
    assert order[:2] == ["shadow-0", "served"]  # behind the one running generation, ahead of 5 queued
    assert sorted(order[2:]) == [f"shadow-{i}" for i in range(1, 6)]


def test_a_full_pool_keeps_a_fair_sample_of_a_burst():
    """200 bursts of 40 shadow jobs into a pool of 8 behind a busy model: every position in the burst
    is kept about equally often (a reservoir sample), not only the first or the last arrivals."""

    async def burst(seed: int) -> list[int]:
        queue, order = LocalQueue(max_background=8, rng=random.Random(seed)), []
        running = asyncio.create_task(job(queue, "busy", order, background=False, work=0.01))
        await asyncio.sleep(0)
        jobs = [asyncio.create_task(job(queue, str(i), order, background=True)) for i in range(40)]
        await asyncio.gather(running, *jobs)
        kept = [int(name) for name in order if name.isdigit()]
        assert len(kept) == 8 and sum(name.startswith("skipped") for name in order) == 32
        assert queue.skipped == 32
        return kept

    counts = Counter(i for seed in range(200) for i in asyncio.run(burst(seed)))
    expected = 200 * 8 / 40  # 40 times each
    early, late = sum(counts[i] for i in range(20)), sum(counts[i] for i in range(20, 40))
    assert abs(early - late) < 0.2 * (early + late)
    assert min(counts[i] for i in range(40)) > expected / 2


def test_shutdown_lets_queued_shadow_work_go():
    async def main():
        queue, order = LocalQueue(), []
        running = asyncio.create_task(job(queue, "served", order, background=False, work=0.02))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(job(queue, f"s{i}", order, background=True)) for i in range(3)]
        await asyncio.sleep(0)
        queue.drop_background()
        await asyncio.gather(running, *waiting)
        return order

    assert sorted(asyncio.run(main())) == ["served", "skipped:s0", "skipped:s1", "skipped:s2"]


def test_a_cancelled_waiter_gives_its_turn_away():
    async def main():
        queue, order = LocalQueue(), []
        running = asyncio.create_task(job(queue, "a", order, background=False, work=0.02))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(job(queue, "b", order, background=False))
        after = asyncio.create_task(job(queue, "c", order, background=False))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(running, after)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return order

    assert asyncio.run(main()) == ["a", "c"]
