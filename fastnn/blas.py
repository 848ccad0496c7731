"""How many threads the BLAS behind the kernels may use.

fastnn's matrix products run in the OpenBLAS that SciPy ships (and NumPy's,
for the reference backend). Results are bit-for-bit reproducible for a
given seed and thread count; changing the count may change the last bits.
"""
from threadpoolctl import threadpool_info, threadpool_limits

from fastnn._validation import positive_int


def set_num_threads(n):
    """Let the BLAS libraries use at most n threads from now on."""
    import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS so it is limited too)

    threadpool_limits(limits=positive_int(n, "threads"), user_api="blas")


def get_num_threads():
    """The thread limit of the BLAS libraries (the largest, if they differ)."""
    import scipy.linalg.cython_blas  # noqa: F401

    counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return max(counts) if counts else 1
