"""How many threads fastnn may use, and who uses them.

fastnn's matrix products run in the OpenBLAS that SciPy ships (and NumPy's,
for the reference backend). Its thread count is one setting for the whole
process: OpenBLAS's pthreads build (SciPy's) has no per-thread count (even
``openblas_set_num_threads_local`` sets the global one), so only
``set_num_threads`` (or threadpoolctl) changes it, never a computation.

Training runs a dense network's products on the BLAS's threads, or a team
of fastnn's own threads on idle cores (small batches, convolutional
networks, Adam: ``fastnn.training.team_threads``). ``forward`` reads the count and
changes nothing: when the BLAS runs one thread, a team of fastnn's own
threads (OpenMP) takes whole chunks of rows, each with single-threaded GEMMs
(faster than splitting every GEMM, see benchmarks/README.md), and the teams
of forwards running at once in several threads share ``get_num_threads()``
threads (``team``); otherwise the chunks run in turn, each GEMM on the
BLAS's threads (OpenBLAS queues concurrent multi-threaded GEMMs). A chunk's
result does not depend on which thread computes it or on what other threads
do; a multi-threaded GEMM rounds differently from a single-threaded one
(about 4e-7 in float32), so results are bit-for-bit reproducible for a
given seed and BLAS thread count. (A training team's weights do not depend
on how many threads it took: ``fastnn.training.team_slices``.)
"""
import os
import threading
import time
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

from fastnn._validation import positive_int

_threads = None     # the limit set by set_num_threads, or the BLAS's own
_controller = None  # found once: scanning the loaded libraries takes a millisecond
_team_lock = threading.Lock()
_team_in_use = 0    # threads held by the forwards running now (calling threads included)
_local = threading.local()  # .threads: this thread's share (thread_budget)


def _blas():
    """The controller of the BLAS libraries loaded (SciPy's included)."""
    global _controller
    if _controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call)

        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def _set_bf16_threads(n):
    """Give a bfloat16 network's products on AMX tiles (_core.gemm_bf16)
    the BLAS's thread count n; returns the previous count (None without the
    compiled core)."""
    try:
        from fastnn import _core
    except ImportError:
        return None
    return _core.set_bf16_threads(n)


def set_num_threads(n):
    """Let fastnn, and the BLAS libraries, use at most n threads from now on."""
    global _threads
    n = positive_int(n, "threads")
    _blas().limit(limits=n)
    _set_bf16_threads(n)
    _threads = n


def get_num_threads():
    """The number of threads fastnn uses (by default, the BLAS's: all cores;
    in a thread_budget block, that block's share)."""
    share = getattr(_local, "threads", None)
    return share if share is not None else process_threads()


def process_threads():
    """The number of threads fastnn uses in all (set_num_threads's, by default
    the BLAS's: all cores), whatever thread_budget shares out."""
    global _threads
    if _threads is None:
        counts = [lib["num_threads"] for lib in _blas().info()]
        _threads = max(counts) if counts else 1
    return _threads


@contextmanager
def thread_budget(n):
    """Within this block, the fits and forwards that the calling thread runs
    use at most n threads (their teams; the BLAS's own count is process-wide
    and unchanged): fit_many's share of the cores for each network."""
    previous = getattr(_local, "threads", None)
    _local.threads = positive_int(n, "threads")
    try:
        yield
    finally:
        _local.threads = previous


@contextmanager
def single_threaded_blas():
    """Within this block the BLAS libraries run on the calling thread only."""
    with _blas().limit(limits=1), _bf16_threads_within(1):
        yield


@contextmanager
def _bf16_threads_within(n):
    previous = _set_bf16_threads(n)
    try:
        yield
    finally:
        if previous is not None:
            _set_bf16_threads(previous)


@contextmanager
def blas_threads_at_most(n):
    """Within this block the BLAS libraries run on at most n threads (as many
    as before, if that is fewer)."""
    if blas_num_threads() <= n:
        yield
        return
    with _blas().limit(limits=positive_int(n, "threads")), _bf16_threads_within(n):
        yield


def blas_num_threads():
    """The thread count the BLAS libraries run with now (the largest, if
    several are loaded). Read only."""
    counts = [lib.get_num_threads() for lib in _blas().lib_controllers]
    return max(counts) if counts else 1


_primed: dict[str, int] = {}             # dtype name -> concurrent single-threaded callers primed for
_prime_lock = threading.Lock()


def prime(dtype):
    """Before single-threaded BLAS products of `dtype` (float32 or float64)
    run, on up to get_num_threads() threads at once: put each OpenBLAS
    buffer they will hold in its fast state, once per process (see
    _core.prime_blas: on an AMD EPYC, products whose rows fit one block ran
    3x slower until a larger product had used the buffer). Does nothing
    while the BLAS runs several threads (its own threads do not need it),
    and costs about 10 ms the first time. Call it where the BLAS is held at
    one thread and will be called: an epoch on the BLAS path (fit_many's
    networks too, each in its own), a forward's team."""
    import numpy as np

    name, threads = np.dtype(dtype).name, process_threads()
    if _primed.get(name, 0) >= threads or blas_num_threads() != 1:
        return
    from fastnn import _core

    with _prime_lock:
        if _primed.get(name, 0) < threads:
            _core.prime_blas(threads, name == "float64")
            _primed[name] = threads


@contextmanager
def team(wanted):
    """Threads for one forward: the calling thread, plus up to wanted - 1
    more while the threads of all forwards running at once stay within
    get_num_threads(). Yields the team's size (at least 1)."""
    global _team_in_use
    limit = get_num_threads()
    with _team_lock:
        size = 1 + max(0, min(wanted - 1, limit - _team_in_use - 1))
        _team_in_use += size
    try:
        yield size
    finally:
        with _team_lock:
            _team_in_use -= size


_blas_owner = False  # a forward holds the BLAS at one thread for its team (forward_team)


@contextmanager
def forward_team(chunks, spatial, blas_free=False):
    """Threads for one forward of `chunks` chunks; yields the team's size.

    A forward that makes no BLAS call (`blas_free`: a dense float32
    network on smallgemm.h's kernels, `_core.predicts_without_blas`)
    gives whole chunks to a team of threads, whatever the BLAS's threads.
    With a single-threaded BLAS a team of threads takes whole chunks (see
    team). With a multi-threaded one the chunks run in turn on the BLAS's
    threads, which suits a dense network (its time is in the products), but
    not a convolutional one: im2col, pooling and the first layer's kernels
    run on one thread, and at its products' sizes two BLAS threads gave a
    conv net's inference 1.1-1.2x one thread's. So a convolutional network's
    forward, alone and on the main thread (threadpoolctl's limits are set
    there), holds the BLAS at one thread while its team runs, and restores
    it after; a forward that runs meanwhile sees a single-threaded BLAS. A
    chunk's result does not depend on either count."""
    global _blas_owner
    if blas_free:
        with team(chunks) as size:
            yield size
        return
    own = False
    if (chunks > 1 and spatial and get_num_threads() > 1 and blas_num_threads() > 1
            and threading.current_thread() is threading.main_thread()):
        with _team_lock:
            if not _blas_owner and _team_in_use == 0:
                _blas_owner = own = True
    if not own:
        with team(chunks if chunks > 1 and blas_num_threads() == 1 else 1) as size:
            yield size
        return
    try:
        with _blas().limit(limits=1), team(chunks) as size:
            yield size
    finally:
        with _team_lock:
            _blas_owner = False


def usable_cores():
    """The cores this process may run on (its affinity mask; elsewhere the
    machine's)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def idle_cores():
    """Cores that no other process's runnable thread wants now (Linux: the
    running count of /proc/loadavg, less this process's running threads;
    elsewhere all of them).

    A team whose threads meet at a barrier after every step runs at the pace
    of its slowest thread: one that shares its core with another process,
    even a niced one, makes the whole team wait for the scheduler (measured
    next to a nice-19 job: [784, 30, 10] at batch 10 ran at 11,000 samples/s
    on two threads, 86,000 on one). The small-batch team takes only these.

    This process's own threads do not count: fits run one at a time
    (`one_fit_at_a_time`), so those running are the pools of the last
    product winding down. OpenBLAS's threads spin for about 130 ms after
    each product (measured on an Emerald Rapids), and counted as busy they
    made every other epoch of a wide network's fit take one BLAS thread
    (24,207 and 11,494 samples/s in turn, 2026-12-06).
    """
    cores = usable_cores()
    running = _all_running()
    if running is None:
        return cores
    # this process's threads, the caller's included, only when some other
    # thread runs (a look at /proc/self/task took 17 µs with 3 threads)
    own = _own_running() if running > 1 else None
    return max(1, cores - max(0, running - (1 if own is None else own)))


def _all_running():
    """The machine's threads that are running or runnable now (Linux: the
    running count of /proc/loadavg), or None where that cannot be read."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _own_running():
    """This process's threads that are running or runnable now, the caller
    included (Linux: the states in /proc/self/task), or None where that
    cannot be read."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    running = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue            # a thread that ended meanwhile
        # "pid (comm) S ...": the name may hold spaces and parentheses
        end = stat.rfind(b")")
        if stat[end + 2:end + 3] == b"R":
            running += 1
    return max(1, running)


#: Entries from which a pass over memory (fit's check of X for NaN) is split
#: over the idle cores fastnn may use: a memory-bound pass, and two cores read
#: more per second (20,000 MNIST rows, 63 MB, out of the caches: 3.99 ms on one
#: Emerald Rapids core, 2.43 ms on two, 2026-12-06).
SCAN_SPLIT = 1 << 20


def scan_threads(entries):
    """The threads a pass over `entries` entries may take: one below
    SCAN_SPLIT, else fastnn's thread count capped by the idle cores."""
    if entries < SCAN_SPLIT:
        return 1
    return min(get_num_threads(), idle_cores())


#: The waits of idle_cores_settled before each look after the first (s).
SETTLE_GAPS = (0.0002, 0.002, 0.002)


def idle_cores_settled():
    """The most idle cores of up to 1 + len(SETTLE_GAPS) looks at
    idle_cores, the second 0.2 ms after the first, the others 2 ms apart:
    another process's thread pool winding down (PyTorch's, OpenBLAS's,
    OpenMP's spin a while after their work; this process's own do not count)
    shows as running for a moment, and a team chosen from that one moment ran
    on one thread for the whole fit. Measured on 2 vCPUs of an Emerald Rapids, a fit
    of a conv net 0.5 s after a PyTorch forward, 30 fits each: one look
    chose a team of one in 4 (9,200 samples/s against 17,700), three looks 2
    ms apart in none (benchmarks/README.md).

    The short wait first: a kernel thread that runs for some microseconds
    (rcu_preempt, a kworker) is counted by /proc/loadavg just as well. On 2
    vCPUs of an AMD EPYC, 7 of 20 nielsen30 fits, one after another, saw a
    busy core at the first look, and every look from 0.2 ms later on saw
    none; the 2 ms sleep had cost 0.75-0.89 ms of an 18 ms fit on average
    (now 0.21-0.29 ms).

    Stops at the first look that finds every core idle; a core that stays
    busy (another process) costs at most 4.2 ms, once a fit."""
    cores = usable_cores()
    best = idle_cores()
    for gap in SETTLE_GAPS:
        if best >= cores:
            break
        time.sleep(gap)
        best = max(best, idle_cores())
    return best


# bfloat16 (Network(dtype="bfloat16")): every matrix product of such a network
# goes through one kernel, _core.gemm_bf16. Where the CPU and the OS give the
# process AMX tiles (Intel Sapphire Rapids and later), it multiplies there
# (src_c/amxgemm.h: 16 x 16 x 32 bfloat16 multiply-adds an instruction, against
# 16 for one AVX-512 FMA). On AMD's cores with AVX512_BF16 and no AMX (Zen 4
# and 5) it multiplies the same packed tiles with VDPBF16PS, which they issue at
# twice float32's FMA rate. Elsewhere it emulates: it rounds both operands to
# bfloat16 and multiplies them with float32 FMAs (sgemm), which costs a little
# more than float32, never less.
_bf16_said = False


def native_bf16():
    """Whether a bfloat16 network's products run natively here (on AMX
    tiles or AVX512_BF16), rather than emulated with float32 arithmetic."""
    try:
        from fastnn import _core
    except ImportError:
        return False
    return bool(_core.native_bf16())


def cpu_has_bf16():
    """Whether this CPU has the AVX512_BF16 instructions (Linux: the flag
    avx512_bf16 in /proc/cpuinfo; elsewhere False)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False


def bf16_speed():
    """What bfloat16 does for speed on this machine, in one sentence: native
    (faster than float32) where the products run on AMX tiles, or on
    AVX512_BF16's VDPBF16PS on AMD's cores (Zen 4 and 5, which issue it at
    twice float32's FMA rate); otherwise emulated, and no faster."""
    if native_bf16():
        from fastnn import _core

        kernel = _core.bf16_kernel_name()
        return ("this CPU computes bfloat16 natively ("
                + ("AMX tiles" if kernel == "amx" else "AVX512_BF16") + ")")
    if cpu_has_bf16():
        return ("this CPU has AVX512_BF16, but fastnn emulates bfloat16 here with float32 "
                "arithmetic (its native kernels need AMX tiles, or an AMD core, which issues "
                "VDPBF16PS at twice float32's rate), so it gains no speed from bfloat16 "
                "(only its rounding)")
    return ("this CPU has no AVX512_BF16: fastnn emulates bfloat16 with float32 arithmetic, "
            "so it gains no speed from bfloat16 (only its rounding)")


def warn_bf16_speed():
    """Say once per process, as a FastnnWarning (on stderr), that bfloat16 is
    emulated here, where it is (see bf16_speed)."""
    global _bf16_said
    if _bf16_said or native_bf16():
        return
    _bf16_said = True
    import warnings

    from fastnn.exceptions import FastnnWarning

    warnings.warn(bf16_speed(), FastnnWarning, stacklevel=3)
