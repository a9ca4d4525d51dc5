"""Interpreter and scheduler settings for the event-loop thread, so background threads delay a
request as little as they can without being starved themselves.

The proxy answers requests on one event-loop thread beside the recorder's writer thread (row
building and the group commit) and the router's worker threads. A request that arrives while
one of them runs can wait for it twice:

- **For the CPU.** Linux's EEVDF scheduler lets a running thread finish its slice (1.4 ms by
  default here) before a thread that wakes up gets the core. A custom slice (`sched_setattr`'s
  `sched_runtime`, Linux 6.12 and later) of `LOOP_SLICE_NS` gives the loop thread an earlier
  deadline, so on wakeup it preempts a background thread at once, as long as it has not used
  more than its fair share. Its weight (nice 0) is unchanged, so unlike SCHED_IDLE for the writer
  (tried, and removed: it starved beside other work) nothing can starve. SCHED_FLAG_RESET_ON_FORK
  keeps threads the loop thread starts later (worker threads, llama.cpp's) on the default slice.
- **For the GIL.** A thread that wants the GIL asks the holder to drop it and waits up to the
  switch interval (5 ms by default); at `SWITCH_INTERVAL_S`, at most half a millisecond.

Beside a DuckDB writer thread on one core, a mostly idle thread's 0.5 ms sleep overshot by
3.07 ms at p99 before, 0.99 ms with the short slice alone and 0.28 ms with both. In the proxy
at concurrency 1 the loop is busy most of the time, has used its share, and the writer's CPU
still sets the tail; paced and saturated loads gain (docs/benchmarks.md has the figures and
what the tail is made of). Elsewhere (macOS, older kernels) the slice request is skipped or
ignored.

`gc.freeze()` once the app is built moves the objects the imports left to a permanent
generation, so the oldest generation's collections no longer walk them while serving.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import sys

log = logging.getLogger("understudy.proxy")

SWITCH_INTERVAL_S = 0.0005
LOOP_SLICE_NS = 100_000  # the kernel's smallest custom slice (0.1 ms)
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}  # syscall numbers; glibc has no wrapper
_SCHED_FLAG_RESET_ON_FORK = 0x01


class _SchedAttr(ctypes.Structure):
    """`struct sched_attr` as of SCHED_ATTR_SIZE_VER0 (48 bytes)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def request_short_slice(slice_ns: int = LOOP_SLICE_NS) -> bool:
    """Ask for a short EEVDF slice for the calling thread (SCHED_OTHER, nice kept); False where
    the system has no such request."""
    number = _SCHED_SETATTR.get(platform.machine())
    if sys.platform != "linux" or number is None:
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=0,  # SCHED_OTHER
        sched_flags=_SCHED_FLAG_RESET_ON_FORK,
        sched_nice=os.getpriority(os.PRIO_PROCESS, 0),
        sched_runtime=slice_ns,
    )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.byref(attr), 0) != 0:
        log.debug("sched_setattr refused a short slice: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def tune_for_latency() -> None:
    """Call on the thread that will run the event loop, once the app is built (its imports
    done) and before the first request."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    request_short_slice()
    gc.collect()  # what startup left behind goes now, not with the first request's collection
    gc.freeze()
