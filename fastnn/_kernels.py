"""The contract between the Python layer and the kernels.

Two backends implement the same functions with the same signatures:
``fastnn._core`` (compiled Cython, the default) and ``fastnn._reference``
(pure NumPy: the test oracle and benchmark baseline). This module holds
what both must agree on: the flat parameter layout, the status codes,
control slots and hyper-parameter slots of ``train_epoch``, the
counter-based random numbers, and the registry of backends.

Flat parameter layout: for each layer l, its weights W_l of shape
(sizes[l], sizes[l+1]) in row-major order, then its bias b_l of shape
(sizes[l+1],). Optimizer state is rows of the same length; row 0 holds the
gradient.
"""
import importlib

import numpy as np

from fastnn.exceptions import FastnnError, unknown_name

# train_epoch's status (the same numbers as fastnn._core's enum).
DONE, DIVERGED, STOPPED = 0, 1, 2
# Slots of the int64 control array shared with a running epoch.
STOP_REQUEST, ROWS_DONE, STEPS = 0, 1, 2
N_CONTROL = 3
# Slots of the float64 hyper-parameter array.
(H_LR, H_L2, H_L1, H_MOMENTUM, H_BETA1, H_BETA2, H_EPS, H_ETA_MINUS, H_ETA_PLUS,
 H_STEP_MIN, H_STEP_MAX) = range(11)
N_HYPER = 11
# Augmentations done while gathering a batch.
NO_AUGMENT, SHIFT = 0, 1
# Rows of a chunk: a batch larger than this is processed in chunks whose
# gradients accumulate, so the workspace stays small (and cache-friendly).
MAX_CHUNK = 1024
# Random streams per row (0 = augmentation, l = dropout on layer l's output).
MAX_STREAMS = 1024


def n_params(sizes):
    """Number of entries of the flat parameter vector for these layer sizes."""
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def param_views(params, sizes):
    """The per-layer (W, b) views into a flat parameter vector."""
    views, p = [], 0
    for i, o in zip(sizes[:-1], sizes[1:]):
        W = params[p:p + i * o].reshape(i, o)
        p += i * o
        b = params[p:p + o]
        p += o
        views.append((W, b))
    return views


# The kernels' random numbers, in NumPy: counter-based (splitmix64), so a
# row's dropout mask and shift depend only on (epoch seed, its position in
# the epoch, stream), never on how batches are split into chunks.

def _mix64(z):
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_keys(seed, positions, stream):
    """The random key of each row position for one stream."""
    with np.errstate(over="ignore"):
        counter = np.asarray(positions, dtype=np.uint64) * np.uint64(MAX_STREAMS) + np.uint64(stream)
    return _mix64(np.uint64(seed) ^ _mix64(counter))


def uniform(seed, positions, stream, n):
    """(len(positions), n) uniform numbers in [0, 1), as _core.random_uniform."""
    keys = row_keys(seed, positions, stream)[:, None]
    with np.errstate(over="ignore"):
        j = (np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        h = _mix64(keys + j[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def shifts(seed, positions):
    """(len(positions), 2) shifts (dx, dy) in -2..2, as _core.random_shifts."""
    h = _mix64(row_keys(seed, positions, 0))
    dx = (h >> np.uint64(32)) % np.uint64(5)
    dy = (h & np.uint64(0xFFFFFFFF)) % np.uint64(5)
    return np.stack([dx, dy], axis=1).astype(np.int64) - 2


BACKENDS = {"cython": "fastnn._core", "numpy": "fastnn._reference"}


def get_backend(name):
    """The kernel module of a backend, by name ('cython' or 'numpy')."""
    if name not in BACKENDS:
        raise unknown_name("backend", name, BACKENDS)
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        if name != "cython":
            raise
        raise FastnnError(
            f"fastnn's compiled core is not available ({exc}); reinstall with "
            "'pip install .' to build it, or use backend='numpy'"
        ) from None
