"""How many threads fastnn may use, and who uses them.

fastnn's matrix products run in the OpenBLAS that SciPy ships (and NumPy's,
for the reference backend). Training leaves the threading to BLAS;
``forward`` over several chunks has its own threads (OpenMP) take whole
chunks, each with a single-threaded BLAS, which measures faster (see
benchmarks/README.md). Results are bit-for-bit reproducible for a given seed
and thread count; changing the count may change the last bits.
"""
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

from fastnn._validation import positive_int

_threads = None     # the limit set by set_num_threads, or the BLAS's own
_controller = None  # found once: scanning the loaded libraries takes a millisecond


def _blas():
    """The controller of the BLAS libraries loaded (SciPy's included)."""
    global _controller
    if _controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call)

        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def set_num_threads(n):
    """Let fastnn, and the BLAS libraries, use at most n threads from now on."""
    global _threads
    n = positive_int(n, "threads")
    _blas().limit(limits=n)
    _threads = n


def get_num_threads():
    """The number of threads fastnn uses (by default, the BLAS's: all cores)."""
    global _threads
    if _threads is None:
        counts = [lib["num_threads"] for lib in _blas().info()]
        _threads = max(counts) if counts else 1
    return _threads


@contextmanager
def single_threaded_blas():
    """Within this block the BLAS libraries run on the calling thread only."""
    with _blas().limit(limits=1):
        yield
