"""The contract between the Python layer and the kernels.

Two backends implement the same functions with the same signatures:
``fastnn._core`` (compiled Cython, the default) and ``fastnn._reference``
(pure NumPy: the test oracle and benchmark baseline). This module holds
what both must agree on: the flat parameter layout, the status codes,
control slots and hyper-parameter slots of ``train_epoch``, the
counter-based random numbers, the layer table, and the registry of backends.

The layer table (built by ``fastnn.plan.Plan.table``) is an int64 array
with one row per layer the kernels run (Dense, Conv2D, MaxPool2D, L2Pool2D;
Flatten and Dropout have no row: rows are already flat, and a dropout is a
keep probability on the next row's input). Its columns (``T_*``) are the
layer's kind, activation code, input and output shape (H, W, C), window
(kh, kw), stride (sh, sw), zero padding at the top and left, and the
offsets of its weights and biases in the flat parameter vector (-1 for
pooling). Beside it, ``keep`` (float64, one per row) is the probability of
keeping each unit of the row's input while training (1: no dropout).

Activations are rows of samples, images in HWC order (NHWC for a batch),
so a layer's output is the next one's input as it is.

Flat parameter layout: layer by layer, its weights in row-major order, then
its bias: a dense layer's W (I, O) and b (O,), a convolution's W (kh, kw,
C, F) (HWIO) and b (F,). A dense stack therefore has the layout fastnn has
always had. Optimizer state is rows of the same length; row 0 holds the
gradient.

bfloat16 networks (mixed precision): ``workspace_size``, ``train_epoch``,
``predict`` and ``gradient`` take ``bf16=True`` with float32 parameters, and
then round both operands of every matrix product (dense and im2col GEMMs,
forward, input and weight gradients) to bfloat16 before multiplying, as
``fastnn._reference.round_bf16`` does; the sums, biases, activations,
losses and optimizer steps stay float32.
"""
import importlib

from typing import Any

import numpy as np

from fastnn.exceptions import FastnnError, unknown_name

# train_epoch's status (the same numbers as fastnn._core's enum).
DONE, DIVERGED, STOPPED = 0, 1, 2
# Slots of the int64 control array shared with a running epoch.
STOP_REQUEST, ROWS_DONE, STEPS = 0, 1, 2
N_CONTROL = 3
# Slots of the float64 hyper-parameter array.
(H_LR, H_L2, H_L1, H_MOMENTUM, H_BETA1, H_BETA2, H_EPS, H_ETA_MINUS, H_ETA_PLUS,
 H_STEP_MIN, H_STEP_MAX, H_WEIGHT_DECAY, H_CLIP_NORM) = range(13)
N_HYPER = 13
# Added to the gradient's norm before dividing by it when clipping, as in
# torch.nn.utils.clip_grad_norm_.
CLIP_EPS = 1e-6
# Augmentations done while gathering a batch, and fit's names for them.
NO_AUGMENT, SHIFT = 0, 1
AUGMENTATIONS = {"shift": SHIFT}
# Rows of a chunk: a batch larger than this is processed in chunks whose
# gradients accumulate, so the workspace stays small (and cache-friendly).
MAX_CHUNK = 1024
# Random streams per row: 0 = augmentation, l = dropout on the input of
# table row l (l >= 1), INPUT_STREAM = dropout on the network's input.
MAX_STREAMS = 1024
INPUT_STREAM = MAX_STREAMS - 1
# Layer kinds (the kernels' codes).
DENSE, CONV2D, MAXPOOL2D, L2POOL2D = 0, 1, 2, 3
# Columns of the layer table.
(T_KIND, T_ACT, T_IN_H, T_IN_W, T_IN_C, T_OUT_H, T_OUT_W, T_OUT_C, T_KH, T_KW, T_SH, T_SW,
 T_PT, T_PL, T_W_OFF, T_B_OFF) = range(16)
N_COLS = 16


def param_views(params, table):
    """The (W, b) views into a flat parameter vector of each table row that
    has parameters: W (I, O) for a dense layer, (kh, kw, C, F) for a
    convolution."""
    views = []
    for row in table:
        if row[T_W_OFF] < 0:
            continue
        if row[T_KIND] == DENSE:
            shape = (int(row[T_IN_H] * row[T_IN_W] * row[T_IN_C]), int(row[T_OUT_C]))
        else:
            shape = tuple(int(row[c]) for c in (T_KH, T_KW, T_IN_C, T_OUT_C))
        w, o = int(row[T_W_OFF]), int(row[T_B_OFF])
        views.append((params[w:o].reshape(shape), params[o:o + shape[-1]]))
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


#: The dtypes a network (fastnn.network) computes in, and the dtype of its parameters for each.
#: "bfloat16" is mixed precision, as PyTorch's autocast and Keras's
#: mixed_bfloat16 policy: weights, activations, losses and optimizer state
#: are float32, and each matrix product (dense and im2col GEMMs, forward and
#: backward) takes its two operands rounded to bfloat16 and accumulates in
#: float32 (see fastnn._reference.round_bf16 and _core.gemm_bf16).
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
                                    "bfloat16": np.dtype(np.float32)}

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
