"""Checks on user data, done in Python before any kernel sees it.

The kernels trust their inputs, so everything a user can get wrong (shape,
dtype, NaN, labels out of range) is caught here with one clear message.
"""
import math
import numbers
import re
import threading
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import numpy as np

from fastnn._typing import Array
from fastnn.exceptions import ConfigError, DataError

#: Input dtypes the kernels read directly (uint8 is scaled to [0, 1]).
INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))

#: Entries the NumPy fallback of first_nonfinite_row tests at a time: its
#: temporary mask stays at 1 MB however large X is (a memory-mapped file).
FINITE_CHUNK = 1 << 20


#: Arrays that `verified_finite` blocks now running hold: their memory, shape,
#: strides and dtype (_finite_key) -> [how many blocks hold each, its check].
_verified: dict[tuple[Any, ...], list] = {}
_verified_lock = threading.Lock()


class SharedCheck:
    """One check of an X for NaN and infinities that several threads may ask
    at once (`row`): a _core.BackgroundScan still running, whose answer the
    first to ask waits for, or the answer itself."""

    def __init__(self, scan: Any = None, row: Optional[int] = None) -> None:
        self._scan = scan
        self._row = row
        self._lock = threading.Lock()

    def row(self) -> int:
        """The first row of X with a NaN or an infinity, or -1."""
        with self._lock:
            if self._row is None:
                self._row = int(self._scan.row())
                self._scan = None
            return self._row


def _finite_key(X: Array) -> tuple[Any, ...]:
    return (X.__array_interface__["data"][0], X.shape, X.strides, X.dtype.str)


def _held_check(X: Array) -> Optional[SharedCheck]:
    """The check of X that a running verified_finite block holds, or None."""
    if not _verified:
        return None
    held = _verified.get(_finite_key(X))
    return held[1] if held is not None else None


def one_thread(entries: int) -> int:
    """The threads a pass over `entries` entries may take, for callers that
    do not split it (the default scan_threads; fastnn.blas.scan_threads
    counts the idle cores)."""
    return 1


@contextmanager
def verified_finite(X: Any, scan_threads: Callable[[int], int] = one_thread) -> Iterator[None]:
    """Within this block, X (the same memory, shape, strides and dtype, a
    C-contiguous float array) is read for NaN and infinities once: every
    check of it (first_nonfinite_row, check_X) takes that one pass's answer
    without reading X again. For fit_many, whose networks each check the X
    they share: a check of 20,000 MNIST rows reads 63 MB (5 ms on an AMD
    EPYC, a tenth of an epoch of [784, 30, 10]). From BACKGROUND_ENTRIES
    entries the pass starts on entry and runs while the block goes on
    (_core.BackgroundScan: the networks prepare meanwhile, and each fit
    waits for it before its kernels, as with its own BackgroundChecks);
    below, it is read on entry, and an X found with a NaN is left to each
    check as ever. A caller that writes to X meanwhile gets what it wrote
    into the kernels: those stop at a loss that is not finite.
    scan_threads(entries): the threads the check read on entry may take."""
    X = np.asarray(X) if isinstance(X, np.ndarray) else None
    if (X is None or X.dtype.kind != "f" or X.ndim != 2 or not X.flags.c_contiguous
            or X.size == 0):
        yield
        return
    check = _background_check(X) if X.size >= BACKGROUND_ENTRIES else None
    if check is None:
        if first_nonfinite_row(X, scan_threads(X.size)) >= 0:
            yield
            return
        check = SharedCheck(row=-1)
    key = _finite_key(X)
    with _verified_lock:
        held = _verified.setdefault(key, [0, check])
        held[0] += 1
    try:
        yield
    finally:
        with _verified_lock:
            held[0] -= 1
            if not held[0]:
                del _verified[key]


def _background_check(X: Array) -> Optional[SharedCheck]:
    """A SharedCheck of X whose pass has started (_core.BackgroundScan), or
    None where the compiled core is not built."""
    try:
        import fastnn._core as _core
    except ImportError:
        return None
    return SharedCheck(_core.BackgroundScan(X))


def first_nonfinite_row(X: Array, threads: int = 1) -> int:
    """The first row of a C-contiguous float X with a NaN or an infinity, or
    -1: one GIL-free pass in the compiled core, without a temporary (with
    `threads` above 1, on a team of that many OpenMP threads); in blocks of
    FINITE_CHUNK entries with NumPy where the core is not built
    (backend='numpy'); for an X a verified_finite block holds, its one
    pass's answer (waited for if still running)."""
    held = _held_check(X)
    if held is not None:
        return held.row()
    try:
        import fastnn._core as _core
    except ImportError:
        rows = max(1, FINITE_CHUNK // max(1, X.shape[1]))
        for start in range(0, len(X), rows):
            bad = ~np.isfinite(X[start:start + rows]).all(axis=1)
            if bad.any():
                return start + int(np.argmax(bad))
        return -1
    # above one thread, the calling thread's OpenMP team takes blocks of rows
    # in turn: a pass bound by memory, which two cores read faster than one,
    # on the threads a forward then runs on. (Python threads, each a
    # contiguous share, had started on the caller's CPU and waited there
    # while it read its own share: 2.1-2.2 ms for 20,000 MNIST rows against
    # 1.8-1.9 on one thread. A thread started for the pass found its CPU
    # taken by the last forward's OpenMP thread, still spinning, on 3 of 20
    # forwards: 3.4-4.5 ms for 10,000 rows, against 0.78-1.05 on one thread.)
    return int(_core.first_nonfinite_row(X, threads))


#: Entries check_fits looks at a time: its temporaries stay at a few MB
#: however large X is (a memory-mapped file larger than memory).
FITS_CHUNK = 1 << 20


class DataName(str):
    """The name of a data set in messages, with the line of its file that
    each row came from: messages about a CSV file's rows name their line in
    the file (its header is line 1); about arrays (.npz, .npy, IDX files,
    Python), their index from 0. See row_number."""

    lines: Optional[Array] = None

    def __new__(cls, name: str, lines: Optional[Array] = None) -> "DataName":
        self = super().__new__(cls, name)
        self.lines = lines
        return self


def row_number(name: str, i: int) -> int:
    """Row i (from 0) of the data named `name`, as every message counts
    rows: its line in the file for a DataName with lines, else i itself."""
    lines = getattr(name, "lines", None)
    return int(lines[i]) if lines is not None and 0 <= i < len(lines) else int(i)


def _first_bad(mask):
    """(row, column) of the first True in a 2-D boolean mask."""
    r, c = np.unravel_index(np.argmax(mask), mask.shape)
    return int(r), int(c)


def check_finite(a, name):
    """Raise DataError naming the first NaN or infinite entry of a float array."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = ~np.isfinite(a.reshape(len(a), -1))
        r, c = _first_bad(bad)
        raise DataError(f"{name} contains NaN or infinity (first at row "
                        f"{row_number(name, r)}, column {c})")


def check_finite_targets(y, name, what="label"):
    """Raise DataError naming the first NaN or infinite label (or target) of
    y, (n,) or (n, k), as the other label messages do: by its value and row
    (a CSV file's line), and with k > 1 by its target column."""
    Y = y.reshape(len(y), -1)
    if Y.dtype.kind != "f" or np.isfinite(Y).all():
        return
    r, c = _first_bad(~np.isfinite(Y))
    column = f", target column {c}" if Y.shape[1] > 1 else ""
    raise DataError(f"{name} has {what} {_number(Y[r, c])} at row {row_number(name, r)}"
                    f"{column}; {what}s must be finite numbers")


def check_fits(X: Array, dtype: Any, name: str, raw: Optional[Array] = None,
               scaling: Optional[str] = None,
               hint: str = "train in float64 or divide that column down",
               scan_threads: Callable[[int], int] = one_thread) -> None:
    """Raise DataError if a value of X (finite float rows, perhaps scaled
    from `raw`) is beyond what `dtype` holds: it would be infinite there.
    The message names the value as given (raw) and the scaling applied;
    scan_threads as in check_X."""
    if X.dtype.kind != "f":
        return
    largest = float(np.finfo(dtype).max)
    if X.dtype == np.dtype(dtype) and X.flags.c_contiguous:
        # rounded to dtype already: what did not fit is an infinity there,
        # found in one pass without a temporary (NumPy blocks without the core)
        first = first_nonfinite_row(X, scan_threads(X.size))
        blocks: Iterable[tuple[int, Array]] = [] if first < 0 else [(first, X[first:first + 1])]
    else:
        rows = max(1, FITS_CHUNK // max(X.shape[1], 1))
        blocks = ((start, X[start:start + rows]) for start in range(0, len(X), rows))
    for start, block in blocks:
        bad = ~(np.abs(block) <= largest)
        if bad.any():
            r, c = _first_bad(bad)
            value = (X if raw is None else raw)[start + r, c]
            scaled = (f" even after {scaling} scaling" if scaling not in (None, "none")
                      else "")
            raise DataError(f"{name} holds {_number(value)} at row "
                            f"{row_number(name, start + r)}, column {c}, which overflows "
                            f"{np.dtype(dtype).name} (largest {largest:.3g})"
                            f"{scaled}; {hint}")


def check_X(X: Any, n_features: int, name: str = "X",
            scan_threads: Callable[[int], int] = one_thread,
            background: Optional["BackgroundChecks"] = None) -> Array:
    """X as a C-contiguous 2-D array the kernels accept.

    uint8, float32 and float64 are kept as they are (uint8 is scaled by
    the kernels); other numeric dtypes are converted to float64 without
    scaling. Raises DataError for the wrong shape, an empty array, or NaN.
    scan_threads(entries): the threads the pass that looks for NaN may take
    (fastnn.blas.scan_threads splits a large X over the idle cores).
    background: a BackgroundChecks that takes that pass, left running, for
    an X of at least BACKGROUND_ENTRIES entries or one whose check a
    verified_finite block holds; the caller waits for it (its `wait`, or
    the end of its block) before any kernel reads X.
    """
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, not {X.dtype}")
    if X.ndim != 2:
        hint = " (for one sample use X.reshape(1, -1))" if X.ndim == 1 else ""
        raise DataError(f"{name} must be 2-D (n_samples, n_features); got shape {X.shape}{hint}")
    if X.shape[0] == 0:
        raise DataError(f"{name} is empty (0 samples)")
    if X.shape[1] != n_features:
        raise DataError(f"{name} has {X.shape[1]} features, but this network expects {n_features}")
    if X.dtype not in INPUT_DTYPES:
        X = X.astype(np.float64)
    X = np.ascontiguousarray(X)
    if X.dtype.kind == "f":
        # (scan_threads looks at the idle cores: not for an X whose check a
        # verified_finite block holds, as fit_many's networks' is)
        held = _held_check(X)
        if background is not None and (held is not None or X.size >= BACKGROUND_ENTRIES):
            if background.start(X, name, held):
                return X
        r = held.row() if held is not None else first_nonfinite_row(X, scan_threads(X.size))
        if r >= 0:
            raise nonfinite_error(X, r, name)
    return X


def nonfinite_error(X: Array, r: int, name: str) -> DataError:
    """check_X's error for row r of X, the first with a NaN or an infinity."""
    c = int(np.flatnonzero(~np.isfinite(X[r]))[0])
    return DataError(f"{name} contains NaN or infinity (first at row "
                     f"{row_number(name, r)}, column {c})")


#: Entries from which check_X, given a BackgroundChecks, leaves its pass over
#: X running while its caller goes on (and verified_finite starts its pass so):
#: 4 MB of float32, a pass of about 0.1 ms out of the caches (29 us a MB on
#: the Zen 5 of benchmarks/README.md), against some 50 us to start a thread.
BACKGROUND_ENTRIES = 1 << 20


class BackgroundChecks:
    """The checks of X for NaN and infinities that check_X leaves running
    while its caller goes on (`fit`: _core.BackgroundScan, on a thread of its
    own, while fit prepares the targets and the trainer), and that the
    caller waits for before any kernel reads X: `wait` raises check_X's
    DataError for the first X found with one. As a context manager it waits
    at the end of the block, and the DataError takes the place of an
    exception raised in the block, since it would have come first had X
    been checked at once. With 20,000 MNIST rows (63 MB), the pass and fit's
    preparation had taken 2.0 and 1.1 ms in turn (benchmarks/README.md)."""

    def __init__(self) -> None:
        self._scans: list = []

    def start(self, X: Array, name: str, held: Optional[SharedCheck] = None) -> bool:
        """Start the check of X (C-contiguous float32 or float64), or take
        the one a verified_finite block holds (`held`); False where the
        compiled core is not built (the caller checks at once)."""
        check = held if held is not None else _background_check(X)
        if check is None:
            return False
        self._scans.append((check, X, name))
        return True

    def wait(self) -> None:
        """Wait for every check started; the DataError of the first X (in
        the order they started) with a NaN or an infinity."""
        while self._scans:
            scan, X, name = self._scans.pop(0)
            r = scan.row()
            if r >= 0:
                self._scans.clear()         # the others stop as they go
                raise nonfinite_error(X, r, name)

    def __enter__(self) -> "BackgroundChecks":
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        try:
            self.wait()
        except DataError as nonfinite:
            if error is None:
                raise
            raise nonfinite from None


def image_rows(X: Any, input_shape: tuple[int, ...], name: str = "X") -> Any:
    """Images of a network's input shape (H, W, C) as rows in HWC order:
    (n, H, W, C), and (n, H, W) when C = 1, become (n, H*W*C) (a view of a
    C-contiguous array). Anything else is returned for check_X to judge."""
    X = np.asarray(X)
    if len(input_shape) != 3 or X.ndim not in (3, 4):
        return X
    H, W, C = input_shape
    if X.shape[1:] == (H, W, C) or (C == 1 and X.shape[1:] == (H, W)):
        return X.reshape(len(X), -1)
    raise DataError(f"{name} has shape {X.shape}, but this network takes images of shape "
                    f"(n, {H}, {W}, {C}) (channels last) or rows (n, {H * W * C})")


def one_hot_rows(labels: Array, n_outputs: int, dtype: Any) -> Array:
    """(len(labels), n_outputs) rows of dtype: 1 at each row's label, 0
    elsewhere (labels in [0, n_outputs))."""
    Y = np.zeros((len(labels), n_outputs), dtype=dtype)
    Y[np.arange(len(labels)), labels] = 1
    return Y


def check_targets(y: Any, n_samples: int, n_outputs: int, dtype: Any,
                  name: str = "y", one_hot: bool = True) -> tuple[Any, Optional[Array]]:
    """Targets as a (n_samples, n_outputs) array of `dtype`.

    Integer labels (or floats that are whole numbers, 1-D) are one-hot
    encoded; with a single output they must be 0 or 1. A float array of
    shape (n, n_outputs) is used as it is.

    Returns
    -------
    (Y, labels) : labels is the 1-D int array of class labels, or None when
    the targets were given as a float array that is not one-hot. With
    one_hot=False, Y is None where it would be labels one-hot encoded
    (n_samples x n_outputs entries: build them a chunk at a time).
    """
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, not {y.dtype}")
    if len(y) != n_samples:
        raise DataError(f"X has {n_samples} samples but {name} has {len(y)}")
    if y.ndim == 2 and y.shape[1] == 1 and n_outputs > 1 and y.dtype.kind in "biu":
        y = y[:, 0]
    if y.ndim == 1 and n_outputs == 1 and y.dtype.kind == "f":
        y = y[:, None]
    if y.ndim == 1:
        check_finite_targets(y, name)
        if y.dtype.kind == "f":
            if not np.array_equal(y, np.round(y)):
                raise DataError(
                    f"{name} is 1-D with non-integer values; give integer class labels "
                    f"or a ({n_samples}, {n_outputs}) array of targets")
        n_classes = max(n_outputs, 2)
        # compared in y's own dtype: a cast first would wrap 2**64 - 1 or 1e30
        bad = (y < 0) | (y >= n_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{name} has label {_number(y[i])} at row {row_number(name, i)}, but the "
                f"output layer's {n_outputs} unit(s) take labels 0..{n_classes - 1}")
        labels = y.astype(np.int64)
        if n_outputs == 1:
            return labels.astype(dtype)[:, None], labels
        if not one_hot:
            return None, labels
        return one_hot_rows(labels, n_outputs, dtype), labels
    if y.ndim != 2 or y.shape[1] != n_outputs:
        raise DataError(
            f"{name} has shape {y.shape}; expected integer labels of shape ({n_samples},) "
            f"or targets of shape ({n_samples}, {n_outputs})")
    check_finite_targets(y, name, "target")
    check_fits(y, dtype, name, hint="train in float64, or standardise the targets "
                                    "(task='regression')")
    Y = np.ascontiguousarray(y, dtype=dtype)
    return Y, one_hot_labels(Y)


def _number(value):
    """A label for a message: 7, not 7.0 or np.int64(7); 1e+30 as such."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


#: The most classes an output layer is built for from labels (n_outputs_for).
MAX_CLASSES = 10_000
# Up to this many classes, any labels are plausible (a few rows of MNIST
# need not show every digit).
FEW_CLASSES = 10


#: The tasks a network can be trained for.
TASKS = ("classification", "regression")

#: What infer_targets decided: the task, the class names (classification)
#: and the output units the targets need; `inferred` when no task was given.
Targets = namedtuple("Targets", ["task", "classes", "n_outputs", "inferred"])


def n_outputs_for(y, name="y", hint=None, task=None):
    """The output units that targets y need (see `infer_targets`)."""
    return infer_targets(y, task, name, hint).n_outputs


def infer_targets(y, task=None, name="y", hint=None, ask="task='classification' or "
                                                           "task='regression'"):
    """What targets y mean for a new network: the task, the classes and the
    number of output units. This is the one place that decides what labels
    mean; extend it rather than adding checks elsewhere.

    With task="regression", y is one target (1-D) or one per column (2-D).
    With task="classification", every distinct value of 1-D y is a class
    (text, or numbers such as 3, 7, 9), sorted; integer labels that are
    dense in 0..k-1 (k <= 10, or every class having two rows) are output
    units 0..k-1 themselves, so that a few rows of MNIST that miss a digit
    still get its unit. 2-D 0/1 rows summing to 1 are one-hot classes.

    Without a task, it is inferred only when the labels leave no doubt:
    text and booleans are classes; whole numbers are classes when they are
    dense labels 0..k-1 as above, or at most 10 distinct values of
    magnitude below MAX_CLASSES (-1/1, 3/7/9); floats of which at least half
    are not whole numbers (and 2-D targets that are not one-hot) are a
    regression. Anything else is refused with a DataError that says why,
    adds `hint` (what else to do) and asks for the task (`ask`):

    - a label that is negative or MAX_CLASSES (10,000) or more, beyond ten
      classes;
    - labels up to k-1, k > 10, with more than half of the classes 0..k-1
      never occurring (an id, a count or a measurement);
    - k > 10 classes and fewer than two rows per class;
    - non-integer values mixed with (mostly) whole numbers.
    """
    y = np.asarray(y)
    if task is not None and task not in TASKS:
        raise ConfigError(f"task must be one of {list(TASKS)}, not {task!r}")
    if y.ndim == 0 or len(y) == 0 or y.ndim > 2:
        raise DataError(f"{name} must hold one label per sample, not shape {y.shape}")
    if y.dtype.kind in "USO":
        return _text_targets(y, task, name, hint)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numbers or class names, not {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1 and task != "regression":
        y = y[:, 0]
    if y.ndim == 2:
        check_finite_targets(y, name, "target")
        one_hot = one_hot_labels(y) if y.shape[1] > 1 else None
        if task == "classification" and one_hot is None:
            raise DataError(f"{name} has {y.shape[1]} columns that are not one-hot rows; "
                            f"classification needs one class label per sample")
        if task == "classification" or (task is None and one_hot is not None):
            return Targets("classification", list(range(y.shape[1])), y.shape[1], task is None)
        return Targets("regression", None, y.shape[1], task is None)
    check_finite_targets(y, name, "target" if task == "regression" else "label")
    if task == "regression":
        return Targets("regression", None, 1, False)
    if y.dtype.kind == "b":
        return Targets("classification", [False, True] if task else [0, 1], 2, task is None)
    whole = y.dtype.kind in "iu" or bool(np.array_equal(y, np.round(y)))
    refusal = hint
    if task is None:
        refusal = ((f"{hint}, or " if hint else "") + f"state the task with {ask}")
    suffix = f". {refusal[0].upper()}{refusal[1:]}" if refusal else ""
    if not whole:
        if task == "classification":
            classes = [float(v) for v in np.unique(y)]
            return _checked_classes(classes, len(y), name, suffix)  # stated: not inferred
        fraction = np.count_nonzero(y != np.round(y)) / len(y)
        if fraction >= 0.5:
            return Targets("regression", None, 1, True)
        i = int(np.argmax(y != np.round(y)))
        raise DataError(f"{name} mixes whole numbers with non-integer values such as "
                        f"{_number(y[i])} at row {row_number(name, i)} (class labels or "
                        f"regression targets?){suffix}")
    low, high = y.min().item(), y.max().item()     # Python numbers: high + 1 cannot overflow
    if low >= 0 and high < MAX_CLASSES:
        k = int(high) + 1
        present = int(np.count_nonzero(np.bincount(y.astype(np.int64), minlength=k)))
        if present * 2 >= k and (k <= FEW_CLASSES or k * 2 <= len(y)):
            return Targets("classification", list(range(k)), k, task is None)
    distinct = np.unique(y)
    small = -MAX_CLASSES < low and high < MAX_CLASSES
    if task == "classification" or (small and len(distinct) <= FEW_CLASSES):
        classes = [int(v) if abs(v) < 2 ** 53 else float(v) for v in distinct.tolist()]
        return _checked_classes(classes, len(y), name, suffix, task is None)
    # not plausibly class labels: say why, and ask
    if low < 0:
        i = int(np.argmax(y < 0))
        raise DataError(f"{name} has label {_number(y[i])} at row {row_number(name, i)} among "
                        f"{len(distinct)} distinct values: these do not look like class "
                        f"labels 0, 1, 2, ...{suffix}")
    if high >= MAX_CLASSES:
        i = int(np.argmax(y >= MAX_CLASSES))
        raise DataError(f"{name} has label {_number(y[i])} at row {row_number(name, i)}, "
                        f"which would need an output layer of {_number(high + 1)} units; fastnn "
                        f"builds at most {MAX_CLASSES:,} classes from labels{suffix}")
    k = int(high) + 1
    if present * 2 < k:
        raise DataError(f"{name} has labels up to {k - 1}, but only {present} of those "
                        f"{k} classes occur: these do not look like class labels{suffix}")
    raise DataError(f"{name} has {k} classes (labels 0..{k - 1}) in {len(y)} rows, "
                    f"fewer than two rows per class: these do not look like class "
                    f"labels{suffix}")


def _text_targets(y, task, name, hint):
    if y.ndim != 1:
        raise DataError(f"{name} must hold one class name per sample, not shape {y.shape}")
    if task == "regression":
        i = next(i for i, v in enumerate(y.tolist()) if not isinstance(v, (int, float)))
        raise DataError(f"{name} has the text {str(y[i])[:40]!r} at row "
                        f"{row_number(name, i)}; regression needs numbers")
    values = y.tolist()
    if y.dtype.kind == "O":
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise DataError(f"{name} mixes text and {type(v).__name__} labels "
                                f"({v!r} at row {row_number(name, i)}); give class names of "
                                f"one kind")
    classes = sorted(set(values))
    return _checked_classes(classes, len(y), name, f". {hint}" if hint else "", task is None)


def _checked_classes(classes, n_rows, name, suffix, inferred=False):
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{name} has {len(classes):,} distinct labels; fastnn builds at most "
                        f"{MAX_CLASSES:,} classes{suffix}")
    if len(classes) < 2:
        raise DataError(f"{name} has a single class ({str(classes[0])[:40]}); classification "
                        f"needs two at least")
    if inferred and len(classes) > FEW_CLASSES and len(classes) * 2 > n_rows:
        raise DataError(f"{name} has {len(classes):,} distinct labels in {n_rows} rows, "
                        f"fewer than two rows per class: these do not look like class "
                        f"labels{suffix}")
    return Targets("classification", classes, len(classes), inferred)


def one_hot_labels(Y):
    """The class labels of a target array whose rows are one-hot (or 0/1 for a
    single output), else None."""
    if not np.isin(Y, (0, 1)).all():
        return None
    if Y.shape[1] == 1:
        return Y[:, 0].astype(np.int64)
    if not (Y.sum(axis=1) == 1).all():
        return None
    return Y.argmax(axis=1)


def check_targets_fit_loss(Y, loss, output, name="y"):
    """Cross-entropy needs targets in [0, 1]; with softmax, rows summing to 1
    (as one-hot labels, Y None, always are)."""
    if loss != "cross_entropy" or Y is None:
        return
    if Y.min() < 0 or Y.max() > 1:
        raise DataError(f"cross_entropy needs targets in [0, 1]; {name} has values "
                        f"in [{Y.min():g}, {Y.max():g}]")
    if output == "softmax":
        sums = Y.sum(axis=1, dtype=np.float64)
        bad = np.abs(sums - 1) > 1e-3
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"softmax cross_entropy needs target rows that sum to 1; "
                            f"row {row_number(name, i)} of {name} sums to {sums[i]:g}")


#: The largest count (epochs, batch size, rows) and seed a model file may
#: record: what fastnn.modelfile reads back. Larger ones are refused when given.
MAX_COUNT = 2 ** 62
MAX_SEED = 2 ** 1024
#: The most members an ensemble (fastnn.ensemble), and its model file, may have.
MAX_MEMBERS = 64


def positive_int(value: Any, name: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """value as an int >= minimum (and <= maximum, if given), or ConfigError
    naming the option."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or int(value) < minimum or (maximum is not None and int(value) > maximum)):
        raise ConfigError(f"{name} must be {_int_range(minimum, maximum)}, not "
                          f"{_shown_int(value)}")
    return int(value)


#: The most digits an integer typed by a user may have (2**1024, the largest
#: seed, has 309): longer ones are refused before Python converts them.
MAX_DIGITS = 400
_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_int(text: Any, name: str, minimum: Optional[int] = None,
              maximum: Optional[int] = None) -> int:
    """The integer a user typed (an option, a layer token, a column number),
    or ConfigError naming `name`: the one place where fastnn turns text into
    an int. Text of more than MAX_DIGITS digits is refused by its length,
    without converting it (Python refuses 4300 digits with a traceback)."""
    text = str(text).strip()
    if not _INTEGER.fullmatch(text):
        raise ConfigError(f"{name} must be {_int_range(minimum, maximum)}, not "
                          f"{short_text(text)}")
    sign = "-" if text[0] == "-" else ""
    digits = text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > MAX_DIGITS:
        if minimum is None and maximum is None:
            raise ConfigError(f"{name} must be an integer of at most {MAX_DIGITS} digits, not "
                              f"one of {len(digits):,}")
        raise ConfigError(f"{name} must be {_int_range(minimum, maximum)}, not an integer "
                          f"of {len(digits):,} digits")
    value = int(sign + digits)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be {_int_range(minimum, maximum)}, not "
                          f"{_shown_int(value)}")
    return value


def _int_range(minimum: Optional[int], maximum: Optional[int]) -> str:
    def bound(n: int) -> str:
        return (f"2**{n.bit_length() - 1}" if n > 2 ** 32 and n & (n - 1) == 0 else f"{n}")

    if minimum is not None and maximum is not None:
        return f"an integer >= {bound(minimum)} and <= {bound(maximum)}"
    if minimum is not None:
        return f"an integer >= {bound(minimum)}"
    if maximum is not None:
        return f"an integer <= {bound(maximum)}"
    return "an integer"


def _shown_int(value: Any) -> str:
    """An int for a message: a long one by its number of digits."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if abs(int(value)) >= 10 ** MAX_DIGITS:
            return f"an integer of more than {MAX_DIGITS} digits"
        if abs(int(value)) >= 10 ** 30:
            return f"an integer of {len(str(abs(int(value))))} digits"
    return repr(value)


def short_text(text: str) -> str:
    """repr of text, cut to about 60 characters, for messages."""
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


def listing(names: Sequence[Any], limit: int = 12) -> str:
    """Names (classes, columns) for a message, each printable and at most 40
    characters: all of them when there are `limit` or fewer, a run of five or
    more consecutive integers as its first and last ('0..9'), and beyond
    `limit` items the first ones and how many in all.

    >>> listing(["setosa", "versicolor", "virginica"])
    'setosa, versicolor, virginica'
    >>> listing(range(10)), listing([1, 2, 3, 7, 8, 9, 10, 11])
    ('0..9', '1, 2, 3, 7..11')
    >>> listing([f"c{k}" for k in range(20)], 3)
    'c0, c1, c2, ... (20 in all)'
    """
    names = list(names)
    items: list[str] = []
    i = 0
    while i < len(names) and len(items) < limit:
        j = i
        if _is_int(names[i]):
            while j + 1 < len(names) and _is_int(names[j + 1]) and names[j + 1] == names[j] + 1:
                j += 1
        if j - i >= 4:
            items.append(f"{int(names[i])}..{int(names[j])}")
            i = j + 1
        else:
            text = str(names[i]) if str(names[i]).isprintable() else ascii(str(names[i]))
            items.append(text if len(text) <= 40 else text[:37] + "...")
            i += 1
    return ", ".join(items) + (f", ... ({len(names)} in all)" if i < len(names) else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def nonnegative_float(value: Any, name: str, allow_zero: bool = True,
                      below: Optional[float] = None) -> float:
    """value as a finite float >= 0 (> 0 without allow_zero; < below if
    given), or ConfigError naming the option."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero) or (below is not None and x >= below):
        bound = (">= 0" if allow_zero else "> 0") + (f" and < {below:g}" if below is not None else "")
        raise ConfigError(f"{name} must be a finite number {bound}, not {value!r}")
    return x
