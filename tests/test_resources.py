"""Resources an epoch uses: memory, allocations, the GIL."""
import ast
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
from conftest import MNIST_DIR, make_classification, needs_cc

from fastnn import Network, _core, _kernels, blas
from fastnn.optimizers import OPTIMIZERS, hyper_array
from fastnn.plan import Plan


def test_train_mnist_one_epoch_peaks_below_300_mb():
    # uint8 images stay uint8; the kernel scales them as it gathers a batch
    script = (
        "import resource, subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'fastnn', 'train', 'mnist', '--hidden', '100',"
        " '--epochs', '1', '--quiet'], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, env={**__import__("os").environ,
                                           "FASTNN_DATA": str(MNIST_DIR)})
    assert out.returncode == 0, out.stderr
    peak_mb = int(out.stdout.split()[-1]) / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")
    assert peak_mb < 300


def _epoch(n, batch):
    X, y = make_classification(n=n, n_features=40, dtype=np.float32)
    plan = Plan.parse([40, 64, 4], activation="sigmoid", output="softmax")
    table, keep = plan.table(dropout=[0.1])
    Y = np.eye(4, dtype=np.float32)[y]
    params = np.random.default_rng(0).normal(size=plan.n_params).astype(np.float32)
    return dict(X=X, Y=Y, order=np.arange(n, dtype=np.int64), params=params,
                state=OPTIMIZERS["adam"].new_state(len(params), np.float32, 1e-3), table=table,
                keep=keep, slope=0.01, loss=1, batch_size=batch,
                capacity=batch, optimizer=OPTIMIZERS["adam"].code, hyper=hyper_array(1e-3),
                sample_weight=np.empty(0, np.float32), augment=0,
                seed=1, work=np.empty(_core.workspace_size(table, batch, keep), np.float32),
                control=np.zeros(3, np.int64))


def _epoch_peaks():
    """tracemalloc's peak during an epoch of 10 and of 10,000 batches."""
    peaks = {}
    for batches in (10, 10_000):
        args = _epoch(10 * batches, 10)
        tracemalloc.start()
        _core.train_epoch(**args)
        peaks[batches] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert args["control"][_kernels.ROWS_DONE] == 10 * batches
    return peaks


def test_an_epoch_allocates_nothing_per_batch():
    # in a process of its own: tracemalloc counts every thread's Python
    # allocations, and a thread left by another test would count here
    script = ("import sys; sys.path.insert(0, sys.argv[1])\n"
              "from test_resources import _epoch_peaks\n"
              "print(repr(_epoch_peaks()))\n")
    out = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    peaks = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    # a few kB of call overhead, the same for 10 batches as for 10,000
    assert peaks[10] < 16 * 1024 and abs(peaks[10_000] - peaks[10]) < 1024, peaks


# Counts malloc calls made while counting is on, split by the library that
# called malloc: OpenBLAS's or anyone else's (fastnn's kernels, Python).
MALLOC_COUNTER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>
static void *(*real_malloc)(size_t);
static long ours, blas;
static int counting;
void *malloc(size_t n)
{
    if (!real_malloc)
        real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    if (counting) {
        Dl_info info;
        if (dladdr(__builtin_return_address(0), &info) && info.dli_fname
                && strstr(info.dli_fname, "openblas"))
            __atomic_add_fetch(&blas, 1, __ATOMIC_RELAXED);
        else
            __atomic_add_fetch(&ours, 1, __ATOMIC_RELAXED);
    }
    return real_malloc(n);
}
void count_start(void) { ours = blas = 0; counting = 1; }
long count_stop(void) { counting = 0; return ours; }
long count_blas(void) { return blas; }
"""

COUNT_EPOCHS = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from test_resources import _epoch
from fastnn import _core
lib = ctypes.CDLL(None)
lib.count_stop.restype = lib.count_blas.restype = ctypes.c_long
for batches in (10, 10_000):
    args = _epoch(10 * batches, 10)
    lib.count_start()
    _core.train_epoch(**args)
    print(batches, lib.count_stop(), lib.count_blas())
"""


def test_the_epoch_kernel_calls_malloc_once_per_epoch(tmp_path):
    # tracemalloc sees only Python's allocators; this counts C malloc calls
    # too, through an LD_PRELOAD wrapper, in a child process
    (tmp_path / "count.c").write_text(MALLOC_COUNTER)
    subprocess.run([needs_cc(), "-O2", "-shared", "-fPIC", tmp_path / "count.c", "-o",
                    tmp_path / "libcount.so", "-ldl"], check=True)
    out = subprocess.run([sys.executable, "-c", COUNT_EPOCHS, Path(__file__).parent],
                         env={**os.environ, "LD_PRELOAD": str(tmp_path / "libcount.so")},
                         capture_output=True, text=True, check=True).stdout
    counts = {int(b): (int(ours), int(blas)) for b, ours, blas in map(str.split, out.splitlines())}
    # fastnn: one malloc per epoch (the layer layout), none per batch; OpenBLAS's
    # small-matrix SGEMM kernel allocates inside some calls, which is not ours
    # to change, so it is only reported
    assert counts[10][0] == counts[10_000][0] <= 2, counts
    print(f"\nmalloc calls in an epoch of 10 / 10,000 batches: fastnn {counts[10][0]} / "
          f"{counts[10_000][0]}, OpenBLAS {counts[10][1]} / {counts[10_000][1]}")


def test_fit_allocates_per_epoch_not_per_batch(monkeypatch):
    # a team has a gradient buffer per thread, allocated per epoch, and its
    # size follows the idle cores: both fits take one thread
    monkeypatch.setattr(blas, "idle_cores", lambda: 1)
    X, y = make_classification(n=20_000, n_features=40, dtype=np.float32)
    peaks = {}
    for batch in (20, 10):                      # 1,000 batches an epoch, then 2,000
        net = Network([40, 64, 4], seed=0)
        net.fit(X[:100], y[:100], epochs=1, batch_size=batch)   # warm up
        tracemalloc.start()
        net.fit(X, y, epochs=1, batch_size=batch)
        peaks[batch] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # the per-epoch buffers (shuffled order, weight snapshot, one-hot targets)
    # plus a workspace 10 rows larger: nothing that grows with the batches
    assert abs(peaks[10] - peaks[20]) < 16 * 1024, peaks


def test_another_thread_runs_python_while_an_epoch_trains():
    X, y = make_classification(n=300_000, n_features=64, dtype=np.float32)
    net = Network([64, 64, 4], seed=0)
    done = threading.Event()
    seconds = {"epoch": 0.0}

    def train():
        # epochs until 0.2 s of them, whatever the machine's speed (one took
        # 0.093 s on a Zen 5); done either way, so a failing fit ends the loop
        try:
            while seconds["epoch"] <= 0.2:
                seconds["epoch"] += net.fit(X, y, epochs=1, batch_size=10)["seconds"][0]
        finally:
            done.set()

    trainer = threading.Thread(target=train)
    trainer.start()
    count, start = 0, time.perf_counter()
    while not done.is_set():
        count += 1                     # pure Python: needs the GIL
    elapsed = time.perf_counter() - start
    trainer.join()
    # the epochs trained (a fit that raised leaves them short); with the GIL
    # held by an epoch this loop could not run at all
    assert seconds["epoch"] > 0.2, seconds
    assert count > 100_000 * elapsed, (count, elapsed)


def test_proc_fields_reads_the_named_lines_of_a_proc_file(tmp_path):
    """'Name: N kB' lines, the last one without its newline too; not a line
    whose name only begins or ends with the one asked for, nor an absent one."""
    from fastnn import memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       5 kB\nMemAvailableX:  9 kB\nHugeMemAvailable: 11 kB\n"
                       "MemAvailable:   7 kB")
    assert memory._proc_fields(meminfo, ("MemAvailable", "MemTotal", "Swap")) == {
        "MemAvailable": 7 * 1024, "MemTotal": 5 * 1024}
    assert memory._proc_fields(tmp_path / "absent", ("MemTotal",)) == {}


def test_available_memory_counts_the_process_size_only_under_an_rlimit(monkeypatch):
    """Without an address-space or data limit, /proc/self/status is not read;
    under one, the room left below it bounds what is available."""
    import resource

    from fastnn import memory

    read = []

    def fields(path, names):
        read.append(str(path))
        if path == "/proc/self/status":
            return {"VmSize": 3 << 20, "VmData": 1 << 20}
        return {"MemAvailable": 1 << 40}

    monkeypatch.setattr(memory, "_proc_fields", fields)
    monkeypatch.setattr(memory, "_read_int", lambda path: None)
    monkeypatch.setattr(resource, "getrlimit", lambda limit: (resource.RLIM_INFINITY,) * 2)
    assert memory.available_bytes() == 1 << 40
    assert "/proc/self/status" not in read
    limits = {resource.RLIMIT_AS: 8 << 20, resource.RLIMIT_DATA: resource.RLIM_INFINITY}
    monkeypatch.setattr(resource, "getrlimit", lambda limit: (limits[limit],) * 2)
    assert memory.available_bytes() == (8 << 20) - (3 << 20)
