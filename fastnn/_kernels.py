"""The contract between the Python layer and the kernels.

Two backends implement the same functions with the same signatures:
``fastnn._core`` (compiled Cython, the default) and ``fastnn._reference``
(pure NumPy: the test oracle and benchmark baseline). This module holds
what both must agree on: the flat parameter layout, the status codes and
control slots of ``train_epoch``, and the registry of backends.

Flat parameter layout: for each layer l, its weights W_l of shape
(sizes[l], sizes[l+1]) in row-major order, then its bias b_l of shape
(sizes[l+1],).
"""
import importlib

from fastnn.exceptions import FastnnError, unknown_name

# train_epoch's status (the same numbers as fastnn._core's enum).
DONE, DIVERGED, STOPPED = 0, 1, 2
# Slots of the int64 control array shared with a running epoch.
STOP_REQUEST, ROWS_DONE = 0, 1


def n_params(sizes):
    """Number of entries of the flat parameter vector for these layer sizes."""
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def param_views(params, sizes):
    """The per-layer (W, b) views into the flat parameter vector."""
    views, p = [], 0
    for i, o in zip(sizes[:-1], sizes[1:]):
        W = params[p:p + i * o].reshape(i, o)
        p += i * o
        b = params[p:p + o]
        p += o
        views.append((W, b))
    return views


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
