"""How long fastnn's OpenMP threads spin before they sleep: set once, as the
compiled core loads libgomp.

Each epoch runs in a new thread (training.run_epoch), so its team is a new
libgomp pool: the epoch's thread creates the other threads, then spins until
they have started. Linux often queues a new thread on its creator's CPU, so
it waited there behind that spin until libgomp's spin count ran out (300,000
pauses by default) or the scheduler moved it. On the 2 vCPUs of an AMD EPYC
(Zen 5), [784, 30, 10] at batch 10: the second thread of a team started 1.0-4.5
ms after the first in about half the epochs, and those epochs ran at
1.35-1.8 million samples/s against 2.0-2.2 million for the others; with a
spin count of 2,000 it started within 80-260 us in every epoch (41)
(benchmarks/README.md). fastnn's own barriers spin by themselves
(fastnn_spin_barrier), so the count changes only libgomp's waits: a team's
start, and the end of a parallel region.

Too short a count costs a forward, though. A forward of a team after an
idle moment has several waits (the check of X, then the layers' region),
and with a count of 2,000 (47 us here: a spin of libgomp's takes 23 ns) its
threads slept in them and were woken again (perf sched: in the slow
forwards, 10-17 ms of the two CPUs' time idle within 20 ms). The forward
of 10,000 rows of [784, 256, 128, 10], 0.5 s after the last, ran at 578,000
samples/s (median of 50) against 738,000 with libgomp's default of 300,000
(7 ms). So the count is 20,000 (0.47 ms): forwards 680,000, one-epoch fits
of [784, 30, 10] 1.39 million samples/s against 1.43 (2,000) and 1.38
(300,000), in processes in turn on the same 2 vCPUs (2026-12-07,
benchmarks/README.md); a new team thread queued behind its creator waits
at most that long. Nor does the longer spin cost a team on a busy machine
(a units team meets at a libgomp barrier three times a batch): 6-epoch fits
with one or two busy processes started 30 ms in ran no slower with 20,000
than with 2,000, in the medians of 4 of each (2026-12-07,
benchmarks/README.md).

libgomp reads GOMP_SPINCOUNT once, when it is loaded. So the variable is set
only for the import of fastnn._core, and taken out of the environment again
(no subprocess inherits it); not where the user set GOMP_SPINCOUNT or
OMP_WAIT_POLICY, and not where libgomp is already loaded (it keeps what it
read). Elsewhere than Linux nothing is done.
"""
import importlib
import os
import sys
from typing import Callable, MutableMapping

#: libgomp's spin count (pauses before a waiting thread sleeps) while fastnn
#: loads it; see the module's docstring.
SPIN_COUNT = "20000"


def libgomp_loaded() -> bool:
    """Whether this process has a libgomp mapped (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line for line in f)
    except OSError:
        return True     # unknown: leave the environment alone


def load_core(environ: MutableMapping[str, str] = os.environ,
              loaded: Callable[[], bool] = libgomp_loaded,
              load: Callable[[], object] = lambda: importlib.import_module("fastnn._core"),
              platform: str = sys.platform) -> bool:
    """Import fastnn._core with GOMP_SPINCOUNT at SPIN_COUNT for libgomp to
    read, then put the environment back; returns whether it set the
    variable. An ImportError (no compiled core) is left for the first use of
    the core to report."""
    mine = (platform.startswith("linux") and "GOMP_SPINCOUNT" not in environ
            and "OMP_WAIT_POLICY" not in environ and not loaded())
    if mine:
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        load()
    except ImportError:
        pass
    finally:
        if mine:
            del environ["GOMP_SPINCOUNT"]
    return mine
