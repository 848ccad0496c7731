"""Data larger than the memory limit: a memory-mapped float32 .npy file.

The run is a subprocess that, once NumPy, SciPy, OpenBLAS and fastnn are
loaded and warmed up, caps its memory with RLIMIT_DATA at what it uses then
plus 64 MiB, and is given a 1.2 GB file. RLIMIT_DATA and not RLIMIT_AS:
RLIMIT_AS also counts the file's mapping, so a file larger than it cannot
even be opened with mmap; RLIMIT_DATA counts what the process allocates
(heap, anonymous and private mappings), not a read-only mapping of a file,
and that is the memory at stake. The file is sparse, so it costs nothing on
disk. A check or an evaluation that allocated anything per entry of X (a
NaN mask of the whole file is 300 MB) fails with MemoryError.
"""
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from fastnn import Network

BUDGET = 64 << 20
ROWS, FEATURES = 380_000, 784          # 1.2 GB of float32

SCRIPT = f"""
import json, resource, sys
import numpy as np
import fastnn
import fastnn.blas

path = sys.argv[1]
net = fastnn.Network([{FEATURES}, 8, 10], seed=0)
# an epoch's BLAS threads follow the idle cores (the load): the warm-up and the
# run below must take as many, or the run's may need buffers past the limit
fastnn.blas.idle_cores = lambda: 1
# warm up: the BLAS's and OpenMP's threads and their buffers exist before the limit
warm = np.zeros((4000, {FEATURES}), np.float32)
net.fit(warm, np.arange(4000) % 10, epochs=1, batch_size=1000)
net.evaluate(warm, np.arange(4000) % 10)
used = int(open("/proc/self/status").read().split("VmData:")[1].split()[0]) * 1024
limit = used + {BUDGET}
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

X = np.load(path, mmap_mode="r")
y = np.arange(len(X)) % 10
hist = net.fit(X, y, epochs=1, batch_size=1000, lr=0.1, shuffle=False)
result = net.evaluate(X, y)
out = net.forward(X[-2000:])
# a NaN in the very last entry, written in place: the check still finds it
with open(path, "r+b") as f:
    f.seek(-4, 2)
    f.write(np.float32("nan").tobytes())
try:
    net.check_data(np.load(path, mmap_mode="r"))
    error = None
except fastnn.DataError as exc:
    error = str(exc)
print(json.dumps({{"limit": limit, "loss": hist["loss"][0], "eval": result,
                  "out": list(out.shape), "error": error}}))
"""


def sparse_npy(path, shape):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + shape[0] * shape[1] * 4)


@pytest.mark.slow   # a process reading 1.2 GB: 13 s of the fast suite on a shared 2-core machine
def test_fit_evaluate_and_check_a_file_larger_than_the_memory_limit(tmp_path):
    path = tmp_path / "X.npy"
    sparse_npy(path, (ROWS, FEATURES))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert path.stat().st_size > result["limit"]
    assert np.isfinite(result["loss"]) and result["eval"]["n"] == ROWS
    assert np.isfinite(result["eval"]["loss"]) and 0 <= result["eval"]["accuracy"] <= 1
    assert result["out"] == [2000, 10]
    assert result["error"] == (f"X contains NaN or infinity (first at row {ROWS - 1}, "
                               f"column {FEATURES - 1})")


def test_check_and_evaluate_allocate_per_chunk_not_per_entry():
    n = 100_000
    net = Network([64, 16, 10], seed=0)
    X, y = np.zeros((n, 64), np.float32), np.arange(n) % 10
    net.evaluate(X[:1000], y[:1000])
    tracemalloc.start()
    try:
        net.check_data(X)
        check_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        result = net.evaluate(X, y)
        evaluate_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["n"] == n
    # the NaN check: one chunk's mask (1 MiB), not a byte per entry (6.4 MB)
    assert check_peak < 1.5 * 2 ** 20, check_peak
    # evaluate: the targets (labels and one-hot rows) and one chunk's
    # outputs and loss temporaries (about 9 MB here), not the outputs and
    # temporaries of every row at once (17.6 MB, 176 bytes a row)
    assert evaluate_peak < 60 * n + 6 * 2 ** 20, evaluate_peak
