"""Who gets the local model next: served answers first, shadow work as a fair bounded sample.

One llama.cpp context generates one answer at a time (a model server a few: `slots`). Two
kinds of work want it:

- a *served* local answer (the site is local): a client is waiting, so it goes first; it waits at
  most for the one generation already running;
- *background* work (shadow samples, drift checks' local halves): nobody waits for it, but the
  policy needs a fair sample of the site's traffic over time, not only the calls that arrive
  while the model happens to be idle.

Background jobs wait in a bounded pool (`max_background`). When it is full, the pool behaves
like a reservoir sample of everything that arrived since it was last empty: the n-th arrival is
admitted with probability max_background / n, in place of a pending job chosen at random, so
what finally runs is an unbiased sample of a burst, however long. A job that loses its place is
told so (`Skipped`) and counted.
"""

from __future__ import annotations

import asyncio
import itertools
import random


class Skipped(Exception):
    """A background job was dropped from the full pool (a fair sample keeps others instead)."""


class LocalQueue:
    def __init__(self, max_background: int = 256, rng: random.Random | None = None, slots: int = 1):
        """`slots`: generations at once (1 for the in-process llama.cpp context; a model server more)."""
        self.max_background = max_background
        self.rng = rng or random.Random()
        self.slots = slots
        self._running = 0
        self._served: list[asyncio.Future] = []
        self._background: list[asyncio.Future] = []
        self._arrivals = 0  # background arrivals since the pool was last empty (the reservoir's n)
        self._order = itertools.count()
        self.skipped = 0
        self.background_done = 0

    @property
    def pending_background(self) -> int:
        return len(self._background)

    async def acquire(self, *, background: bool) -> None:
        """Wait for the model; raises Skipped when a background job loses its place in the pool."""
        if self._running < self.slots and not self._served and not self._background:
            self._running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        if not background:
            self._served.append(waiter)
        else:
            self._admit(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            self._forget(waiter)
            raise

    def _admit(self, waiter: asyncio.Future) -> None:
        if not self._background:
            self._arrivals = 0
        self._arrivals += 1
        if len(self._background) < self.max_background:
            self._background.append(waiter)
            return
        slot = self.rng.randrange(self._arrivals)
        if slot >= self.max_background:
            self.skipped += 1
            waiter.set_exception(Skipped())
            return
        evicted = self._background[slot]
        self._background[slot] = waiter
        self.skipped += 1
        if not evicted.done():
            evicted.set_exception(Skipped())

    def _forget(self, waiter: asyncio.Future) -> None:
        for pool in (self._served, self._background):
            if waiter in pool:
                pool.remove(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.release()  # it was handed the model as it was cancelled: pass it on

    def drop_background(self) -> None:
        """Shutting down: the waiting shadow work is a sample, not a promise; let it go."""
        pending, self._background = self._background, []
        for waiter in pending:
            if not waiter.done():
                waiter.set_exception(Skipped())

    def release(self) -> None:
        """The running generation finished: hand the model to the next job (served first)."""
        while self._served or self._background:
            pool = self._served if self._served else self._background
            waiter = pool.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        self._running = max(0, self._running - 1)
