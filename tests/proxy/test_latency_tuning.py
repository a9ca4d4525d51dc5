"""`understudy serve` tunes its event-loop thread (proxy/latency_tuning.py): the GIL's switch
interval, a short scheduler slice for that thread only, and a frozen start-up heap. Checked in a
child process, since the settings are the process's own."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import gc, json, sys, threading
from pathlib import Path

def slice_ns(tid):
    path = Path(f"/proc/self/task/{tid}/sched")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None

from understudy.proxy.latency_tuning import LOOP_SLICE_NS, SWITCH_INTERVAL_S, request_short_slice, tune_for_latency

before = {"switch": sys.getswitchinterval(), "slice": slice_ns(threading.get_native_id()), "frozen": gc.get_freeze_count()}
tune_for_latency()
later = []
worker = threading.Thread(target=lambda: later.append(slice_ns(threading.get_native_id())))
worker.start(); worker.join()
print(json.dumps({
    "before": before,
    "switch": sys.getswitchinterval(),
    "slice": slice_ns(threading.get_native_id()),
    "later_thread_slice": later[0],
    "frozen": gc.get_freeze_count(),
    "slice_granted": request_short_slice(),
    "expected_switch": SWITCH_INTERVAL_S,
    "expected_slice": LOOP_SLICE_NS,
}))
"""


def test_the_loop_thread_gets_a_short_slice_and_switch_interval_and_later_threads_do_not():
    result = json.loads(
        subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    )
    assert result["before"]["switch"] == 0.005  # CPython's default, which it starts from
    assert result["switch"] == result["expected_switch"]
    assert result["frozen"] > result["before"]["frozen"] + 10_000  # the imports' objects, out of the collector's way
    if result["slice_granted"] and result["slice"] is not None:  # Linux with the custom-slice request
        assert result["slice"] == result["expected_slice"] != result["before"]["slice"]
        # control: a thread the loop thread starts afterwards is back on the default slice
        assert result["later_thread_slice"] == result["before"]["slice"]
