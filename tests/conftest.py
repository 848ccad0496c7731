"""Shared fixtures; slow end-to-end tests run with --runslow (the README's test command).

A test that needs an optional package (torch, scikit-learn, matplotlib, onnx,
onnxruntime, hypothesis, ...: the `test` extra installs them all) says so
with `needs("name")`, and one that needs a C compiler with `needs_cc()`:
without it, the test skips. CI sets FASTNN_NO_SKIPS=1 (in .ci/run), which
turns every skip into a failure: there, a missing package must not quietly
hide a comparison.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = REPO / "data" / "mnist"


def needs(package):
    """The optional package (a module name, "sklearn", "elftools.elf.elffile"),
    imported; without it, the test (or, at a module's top, the module) skips."""
    return pytest.importorskip(package, reason=f"needs {package} (pip install -e '.[test]')")


def needs_cc():
    """The C compiler (cc); without one, the test skips."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler (cc)")
    return cc


#: How the exported C is compiled: it must build without a single warning.
STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror"]
#: Any out-of-bounds access or undefined behaviour then aborts the program.
SANITIZE = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def compile_c(sources, exe, flags=STRICT, main=True, sanitize=False, cwd=None):
    """Compile C sources into the program exe with cc (the test skips without
    one): with `flags`, -DFASTNN_MAIN when `main` (an exported file's own
    main), the sanitizers when `sanitize`. A failed build fails the test with
    the compiler's messages. Returns exe."""
    import subprocess

    command = [needs_cc(), *flags, *(SANITIZE if sanitize else ()),
               *(["-DFASTNN_MAIN"] if main else ()), *map(str, sources), "-o", str(exe), "-lm"]
    build = subprocess.run(command, capture_output=True, text=True, errors="backslashreplace",
                           cwd=cwd, timeout=300)
    assert build.returncode == 0, f"{' '.join(command)}\n{build.stderr[-4000:]}"
    return exe


def compile_export(net, tmp_path, name="model", sanitize=False):
    """The network exported as C (tmp_path/NAME.c), compiled with STRICT
    into the program tmp_path/NAME, which is returned."""
    from fastnn.export import export

    [source] = export(net, tmp_path / f"{name}.c", "c")
    return compile_c([source], tmp_path / name, sanitize=sanitize)


class _StandIn:
    """Any attribute of it and any call to it give itself: hypothesis's
    strategies and settings where hypothesis is not installed."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self


def hypothesis_api():
    """(given, settings, strategies, HealthCheck) from hypothesis; without it,
    stand-ins under which each @given test skips (as needs("hypothesis")
    does) while the module's other tests run."""
    try:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies
    except ModuleNotFoundError:
        def given(*args, **kwargs):
            def decorate(test):
                def skipped(*args, **kwargs):
                    needs("hypothesis")
                for name in ("__name__", "__qualname__", "__module__", "__doc__"):
                    setattr(skipped, name, getattr(test, name))
                return skipped
            return decorate

        stand_in = _StandIn()
        return given, lambda *a, **k: (lambda test: test), stand_in, stand_in
    return given, settings, strategies, HealthCheck


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the slow end-to-end tests")


#: Whether this run has --runslow (CI's run): set before any test module is imported.
RUNSLOW = False


def pytest_configure(config):
    global RUNSLOW
    RUNSLOW = bool(config.getoption("--runslow"))


def examples(n):
    """hypothesis's max_examples for a property test that CI's run (--runslow)
    gives n examples: a fifth of them (at least 10) in the fast suite."""
    return n if RUNSLOW else max(10, n // 5)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("FASTNN_NO_SKIPS") == "1"
            and not hasattr(report, "wasxfail")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under FASTNN_NO_SKIPS=1 (CI installs everything): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a module-level importorskip skips the whole file while it is collected,
    # before any test runs: that must fail under FASTNN_NO_SKIPS too
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("FASTNN_NO_SKIPS") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under FASTNN_NO_SKIPS=1 (CI installs everything): {reason}"


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def sweep(cases, fast):
    """The parameters of an exhaustive sweep: those in `fast` (keys of a dict,
    or indices of a list, whose tuples are the values of several arguments)
    run in every run, the others only with --runslow (CI's run), so that the
    fast suite keeps a representative subset."""
    keys = list(range(len(cases))) if isinstance(cases, list) else list(cases)
    assert set(fast) <= set(keys), sorted(set(fast) - set(keys))
    values = cases if isinstance(cases, list) else keys
    return [value if key in fast
            else pytest.param(*(value if isinstance(value, tuple) else (value,)),
                              marks=pytest.mark.slow)
            for key, value in zip(keys, values)]


@pytest.fixture
def one_core(monkeypatch):
    """fastnn.blas.idle_cores() is 1 for one test, so that every epoch runs
    on one thread with a single-threaded BLAS whatever else the machine
    runs. An epoch's BLAS threads follow the idle cores (the load), and a
    multi-threaded BLAS rounds differently from a single-threaded one (dense
    networks on the BLAS: float64, float32 at larger batches): a test that
    compares two such fits bit for bit takes this. (A team's weights do not
    depend on how many threads it took: `training.team_slices`.)"""
    from fastnn import blas

    monkeypatch.setattr(blas, "idle_cores", lambda: 1)


def small_gemm_isas():
    """The kernels of smallgemm.h this CPU runs: "avx2", and "avx512" where it
    has AVX-512 F and VL (none without AVX2 and FMA)."""
    from fastnn import _core

    before = _core.small_gemm_isa()
    runs = []
    for isa in _core.SMALL_GEMM_ISAS[1:]:
        _core.set_small_gemm_isa(isa)      # falls back to the best the CPU has
        if _core.small_gemm_isa() == isa:
            runs.append(isa)
    _core.set_small_gemm_isa(before)
    return runs


@pytest.fixture(params=small_gemm_isas())
def isa(request):
    """Each of smallgemm.h's kernels this CPU runs, in turn (the process's
    choice restored)."""
    from fastnn import _core

    before = _core.set_small_gemm_isa(request.param)
    yield request.param
    _core.set_small_gemm_isa(before)


@pytest.fixture
def placement():
    """placement(p): how a team judges how far apart its threads are,
    "measured", "near" or "far" (restored): a fused team that would split
    its later layers, and a team with a deferred dense layer."""
    from fastnn import _core

    before = _core.set_team_placement()
    yield _core.set_team_placement
    _core.set_team_placement(before)


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, from the repository's data/mnist."""
    from fastnn.datasets import load_mnist

    return load_mnist(MNIST_DIR)


def make_classification(n=200, n_features=12, n_classes=4, seed=0, dtype=np.float64):
    """Small separable-ish data: Gaussian blobs around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (n_classes, n_features))
    y = rng.integers(0, n_classes, n)
    X = centres[y] + rng.normal(0, 1, (n, n_features))
    return X.astype(dtype), y


def damage(data, good, max_random=300, max_flips=8):
    """Bytes for a fuzz test, drawn with hypothesis's ``data``: random bytes,
    `good` truncated, or `good` with a few bytes overwritten."""
    from hypothesis import strategies as st

    how = data.draw(st.sampled_from(["random", "truncate", "flip"]))
    if how == "random":
        return data.draw(st.binary(max_size=max_random))
    good = bytearray(good)
    if how == "truncate":
        return bytes(good[:data.draw(st.integers(0, len(good) - 1))])
    for _ in range(data.draw(st.integers(1, max_flips))):
        good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
    return bytes(good)


def benchmark(name):
    """The script benchmarks/NAME.py as a module (the tests use its tables
    and generators rather than copies of them)."""
    import importlib.util

    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rewrite_header(path, edit):
    """Rewrite a model file's JSON header through `edit(header)` (the tensors
    stay as they are)."""
    import json

    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def one_hot(y, k):
    Y = np.zeros((len(y), k))
    Y[np.arange(len(y)), y] = 1
    return Y


# ---------------------------------------------------------------- hostile runs
# A real `fastnn` subprocess under a memory and a time limit, and the checks
# every hostile case shares: a clean refusal, nothing changed, no temp file.

HOSTILE_MEMORY = 3 * 1024 ** 3     # RLIMIT_AS of each hostile run (bytes)
HOSTILE_SECONDS = 120              # wall-clock limit of each hostile run


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (HOSTILE_MEMORY, HOSTILE_MEMORY))


def run_fastnn(*args, cwd, memory=True, timeout=HOSTILE_SECONDS, env=None, input=None):
    """`python -m fastnn ARGS` in cwd, as a real process (RLIMIT_AS of
    HOSTILE_MEMORY unless memory=False); returns the CompletedProcess."""
    import subprocess
    import sys

    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fastnn", *[str(a) for a in args]], cwd=cwd,
                          capture_output=True, text=True, errors="backslashreplace",
                          timeout=timeout, env=env, input=input,
                          preexec_fn=_limit_memory if memory else None)


def snapshot(directory):
    """{relative path: bytes or ('symlink', target) or ('special', mode)} of
    everything under directory, to compare before and after a run."""
    import stat

    out = {}
    for path in sorted(Path(directory).rglob("*")):
        rel = str(path.relative_to(directory))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = path.read_bytes()
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir",)
        else:
            out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def assert_refused(proc, before=None, directory=None, codes=(1, 2)):
    """proc failed cleanly: exit status in codes, at most two lines on stderr,
    no traceback; with `before` (a snapshot of directory), nothing under
    directory changed and no file was added (temp files included)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in codes, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert 1 <= len(lines) <= 2, proc.stderr[-2000:]
    if before is not None:
        after = snapshot(directory)
        assert after.keys() == before.keys(), (sorted(after.keys() - before.keys()),
                                               sorted(before.keys() - after.keys()))
        changed = [k for k in before if before[k] != after[k]]
        assert not changed, changed
