"""The NumPy reference: the maths of ``fastnn._core`` in plain NumPy.

Every function has the signature of its compiled twin, so the reference is
the oracle the tests compare the kernels with, the baseline the benchmarks
time, and the ``backend="numpy"`` of ``Network``. It is vectorised over the
mini-batch, as a careful NumPy user would write it, and keeps no
workspace: ``work`` arguments are accepted and ignored.

Legend: N = rows in a batch, I = fan-in, O = fan-out, L = layers.
"""
import numpy as np

from fastnn._kernels import DIVERGED, DONE, ROWS_DONE, STOP_REQUEST, STOPPED, param_views
from fastnn.activations import BY_CODE as ACTIVATION
from fastnn.losses import BY_CODE as LOSS


def workspace_size(sizes, capacity):
    """The reference needs no workspace."""
    return 0


def _as_float(X, dtype):
    """Rows of X as `dtype`; uint8 pixels are divided by 255 (as _core does)."""
    if X.dtype == np.uint8:
        return X.astype(dtype) / dtype.type(255)
    return X.astype(dtype, copy=False)


def _forward(X, layers, acts, slope):
    """[A_0, ..., A_L]: A_{l+1} = act_l(A_l @ W_l + b_l)."""
    A = [X]
    for (W, b), code in zip(layers, acts):
        A.append(ACTIVATION[code].fn(A[-1] @ W + b, slope))
    return A


def _backward(A, delta, layers, acts, slope):
    """Yield (l, dC/dW_l, dC/db_l), summed over the batch, from the last layer down.

    delta^{l-1} = (delta^l @ W_l^T) * act'(z^{l-1}) is computed before the
    caller sees layer l's gradient, so the caller may update W_l in place.
    """
    for l in range(len(layers) - 1, -1, -1):
        W, _ = layers[l]
        grad_W = A[l].T @ delta
        grad_b = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ W.T) * ACTIVATION[acts[l - 1]].derivative(A[l], slope)
        yield l, grad_W, grad_b


def _output_delta(loss, act, A, Y, slope):
    output = ACTIVATION[act]
    return LOSS[loss].fn(A, Y, output).sum(), LOSS[loss].delta(A, Y, output, slope)


def _count_correct(A, Y):
    if A.shape[1] == 1:
        return int(np.count_nonzero((A[:, 0] > 0.5) == (Y[:, 0] > 0.5)))
    return int(np.count_nonzero(A.argmax(axis=1) == Y.argmax(axis=1)))


def train_epoch(X, Y, order, params, sizes, activations, slope, loss, batch_size,
                lr, decay, work, control):
    """One epoch of mini-batch SGD over X[order]; see fastnn._core.train_epoch."""
    layers = param_views(params, [int(s) for s in sizes])
    dtype = params.dtype
    lr, decay = dtype.type(lr), dtype.type(decay)
    loss_sum, n_correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        if control[STOP_REQUEST]:
            return STOPPED, loss_sum, n_correct
        rows = order[start:start + batch_size]
        m = len(rows)
        A = _forward(_as_float(X[rows], dtype), layers, activations, slope)
        y = Y[rows]
        batch_loss, delta = _output_delta(loss, activations[-1], A[-1], y, slope)
        if not np.isfinite(batch_loss):
            return DIVERGED, loss_sum, n_correct
        loss_sum += float(batch_loss)
        n_correct += _count_correct(A[-1], y)
        for l, grad_W, grad_b in _backward(A, delta, layers, activations, slope):
            W, b = layers[l]
            if decay != 1:
                W *= decay
            W -= (lr / m) * grad_W
            b -= (lr / m) * grad_b
        control[ROWS_DONE] += m
    return DONE, loss_sum, n_correct


def predict(X, params, sizes, activations, slope, work, chunk, out):
    """out := the network's output activations for every row of X."""
    layers = param_views(params, [int(s) for s in sizes])
    for start in range(0, len(X), chunk):
        rows = slice(start, start + chunk)
        out[rows] = _forward(_as_float(X[rows], params.dtype), layers, activations, slope)[-1]


def gradient(X, Y, params, sizes, activations, slope, loss, work, grad):
    """grad := dC/dparams for the mean loss over X; returns sum_x C_x."""
    sizes = [int(s) for s in sizes]
    layers = param_views(params, sizes)
    A = _forward(_as_float(X, params.dtype), layers, activations, slope)
    total, delta = _output_delta(loss, activations[-1], A[-1], Y, slope)
    grads = param_views(grad, sizes)
    for l, grad_W, grad_b in _backward(A, delta, layers, activations, slope):
        grads[l][0][...] = grad_W / len(X)
        grads[l][1][...] = grad_b / len(X)
    return float(total)


# Single kernels, the twins of fastnn._core's.

def linear_forward(A, W, b, out):
    """out := A @ W + b."""
    np.matmul(A, W, out=out)
    out += b


def activate(act, A, slope=0.01):
    """A := act(A), in place."""
    A[...] = ACTIVATION[act].fn(A, slope)


def activation_grad(act, A, D, slope=0.01):
    """D := D * act'(z) from the stored a = act(z), in place."""
    D *= ACTIVATION[act].derivative(A, slope)


def output_delta(loss, act, A, Y, D, slope=0.01):
    """D := dC_x/dz^L row by row; returns sum_x C_x."""
    total, D[...] = _output_delta(loss, act, A, Y, slope)
    return float(total)


def hidden_delta(D_next, W_next, act, A, out, slope=0.01):
    """out := (D_next @ W_next.T) * act'(z)."""
    out[...] = (D_next @ W_next.T) * ACTIVATION[act].derivative(A, slope)
