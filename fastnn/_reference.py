"""The NumPy reference: the maths of ``fastnn._core`` in plain NumPy.

Every function has the signature of its compiled twin, so the reference is
the oracle the tests compare the kernels with, the baseline the benchmarks
time, and the ``backend="numpy"`` of ``Network``. It is vectorised over the
mini-batch, as a careful NumPy user would write it: each batch is done in
one piece (the kernels' chunking changes only round-off), and ``work`` and
``capacity`` arguments are accepted and ignored except to decide, as the
kernels do, whether an SGD step is fused.

Legend: N = rows in a batch, I = fan-in, O = fan-out, L = layers.
"""
import numpy as np

from fastnn import _kernels as K
from fastnn._kernels import DIVERGED, DONE, ROWS_DONE, STEPS, STOP_REQUEST, STOPPED, param_views
from fastnn.activations import BY_CODE as ACTIVATION
from fastnn.losses import BY_CODE as LOSS
from fastnn.optimizers import OPTIMIZERS

OPTIMIZER = {o.code: o for o in OPTIMIZERS.values()}


def workspace_size(sizes, capacity, dropout=()):
    """The reference needs no workspace."""
    return 0


def _as_float(X, dtype):
    """Rows of X as `dtype`; uint8 pixels are divided by 255 (as _core does)."""
    if X.dtype == np.uint8:
        return X.astype(dtype) / dtype.type(255)
    return X.astype(dtype, copy=False)


def _shifted(X, rows, positions, seed, dtype):
    """X[rows] as side x side images, each shifted by its random (dx, dy)."""
    side = int(round(np.sqrt(X.shape[1])))
    images = _as_float(X[rows], dtype).reshape(-1, side, side)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    d = K.shifts(seed, positions)
    # out[y, x] = image[y - dy, x - dx]: a window of the padded image
    ys = np.arange(side)[None, :, None] + 2 - d[:, 1, None, None]
    xs = np.arange(side)[None, None, :] + 2 - d[:, 0, None, None]
    return padded[np.arange(len(rows))[:, None, None], ys, xs].reshape(len(rows), -1)


def _dropout_mask(shape, keep, seed, positions, stream, dtype):
    """[u < keep] / keep for each unit of these rows: inverted dropout."""
    u = K.uniform(seed, positions, stream, shape[1])
    return np.where(u < keep, dtype.type(1 / keep), dtype.type(0))


def _forward(X, layers, acts, slope, keep=None, seed=0, positions=None):
    """Activations [A_0, ..., A_L] and what each layer read: A_{l+1} =
    act_l(in_l @ W_l + b_l), in_l = A_l * mask_l with inverted dropout."""
    A, inputs, masks = [X], [], [None]
    for l, ((W, b), code) in enumerate(zip(layers, acts)):
        inputs.append(A[l] if masks[l] is None else A[l] * masks[l])
        A.append(ACTIVATION[code].fn(inputs[l] @ W + b, slope))
        mask = None
        if keep is not None and l + 1 < len(layers) and keep[l + 1] < 1:
            mask = _dropout_mask(A[-1].shape, keep[l + 1], seed, positions, l + 1, A[-1].dtype)
        masks.append(mask)
    return A, inputs, masks


def _backward(A, inputs, masks, delta, layers, acts, slope):
    """Yield (l, dC/dW_l, dC/db_l), summed over the batch, from the last layer down.

    delta^{l-1} = (delta^l @ W_l^T) * act'(z^{l-1}) [* mask] is computed
    before the caller sees layer l's gradient, so it may update W_l in place.
    """
    for l in range(len(layers) - 1, -1, -1):
        W, _ = layers[l]
        grad_W = inputs[l].T @ delta
        grad_b = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ W.T) * ACTIVATION[acts[l - 1]].derivative(A[l], slope)
            if masks[l] is not None:
                delta *= masks[l]
        yield l, grad_W, grad_b


def _output_delta(loss, act, A, Y, slope, weights=None):
    output = ACTIVATION[act]
    cost = LOSS[loss].fn(A, Y, output)
    delta = LOSS[loss].delta(A, Y, output, slope)
    if weights is not None:
        cost = cost * weights
        delta = delta * weights[:, None]
    return float(cost.sum()), delta


def _count_correct(A, Y):
    if A.shape[1] == 1:
        return int(np.count_nonzero((A[:, 0] > 0.5) == (Y[:, 0] > 0.5)))
    return int(np.count_nonzero(A.argmax(axis=1) == Y.argmax(axis=1)))


def penalty_grad(params, grad, sizes, l2, l1):
    """grad_W += l2 W + l1 sign(W) for every layer's weights (not biases)."""
    for (W, _), (G, _) in zip(param_views(params, sizes), param_views(grad, sizes)):
        if l2:
            G += W.dtype.type(l2) * W
        if l1:
            G += W.dtype.type(l1) * np.sign(W)


def train_epoch(X, Y, order, params, state, sizes, activations, slope, loss, batch_size,
                capacity, optimizer, hyper, dropout, sample_weight, augment, seed, work,
                control):
    """One epoch of mini-batch training over X[order]; see fastnn._core.train_epoch."""
    sizes = [int(s) for s in sizes]
    layers = param_views(params, sizes)
    grads = param_views(state[0], sizes)
    dtype = params.dtype
    keep = [1.0] + [1 - p for p in dropout] + [1.0] if len(dropout) else None
    fused = optimizer == OPTIMIZERS["sgd"].code and hyper[K.H_L1] == 0 and batch_size <= capacity
    lr = dtype.type(hyper[K.H_LR])
    decay = dtype.type(1 - hyper[K.H_LR] * hyper[K.H_L2])
    loss_sum, n_correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        if control[STOP_REQUEST]:
            return STOPPED, loss_sum, n_correct
        rows = order[start:start + batch_size]
        m = len(rows)
        # sample positions seed the dropout masks and the shifts; only then needed
        positions = (np.arange(start, start + m) if keep is not None or augment == K.SHIFT
                     else None)
        if augment == K.SHIFT:
            x = _shifted(X, rows, positions, seed, dtype)
        else:
            x = _as_float(X[rows], dtype)
        A, inputs, masks = _forward(x, layers, activations, slope, keep, seed, positions)
        y = Y[rows]
        weights = sample_weight[rows] if len(sample_weight) else None
        batch_loss, delta = _output_delta(loss, activations[-1], A[-1], y, slope, weights)
        if not np.isfinite(batch_loss):
            return DIVERGED, loss_sum, n_correct
        loss_sum += batch_loss
        n_correct += _count_correct(A[-1], y)
        for l, grad_W, grad_b in _backward(A, inputs, masks, delta, layers, activations, slope):
            W, b = layers[l]
            if fused:
                if decay != 1:
                    W *= decay
                W -= (lr / m) * grad_W
                b -= (lr / m) * grad_b
            else:
                grads[l][0][...] = grad_W / m
                grads[l][1][...] = grad_b / m
        control[STEPS] += 1
        if not fused:
            if hyper[K.H_L2] or hyper[K.H_L1]:
                penalty_grad(params, state[0], sizes, hyper[K.H_L2], hyper[K.H_L1])
            OPTIMIZER[optimizer].step(params, state, hyper, int(control[STEPS]))
        control[ROWS_DONE] += m
    return DONE, loss_sum, n_correct


def predict(X, params, sizes, activations, slope, work, chunk, out, n_threads=1):
    """out := the network's output activations for every row of X (n_threads
    is ignored)."""
    layers = param_views(params, [int(s) for s in sizes])
    for start in range(0, len(X), chunk):
        rows = slice(start, start + chunk)
        out[rows] = _forward(_as_float(X[rows], params.dtype), layers, activations, slope)[0][-1]


def gradient(X, Y, params, sizes, activations, slope, loss, work, grad):
    """grad := dC/dparams for the mean loss over X; returns sum_x C_x."""
    sizes = [int(s) for s in sizes]
    layers = param_views(params, sizes)
    A, inputs, masks = _forward(_as_float(X, params.dtype), layers, activations, slope)
    total, delta = _output_delta(loss, activations[-1], A[-1], Y, slope)
    grads = param_views(grad, sizes)
    for l, grad_W, grad_b in _backward(A, inputs, masks, delta, layers, activations, slope):
        grads[l][0][...] = grad_W / len(X)
        grads[l][1][...] = grad_b / len(X)
    return total


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
    return total


def hidden_delta(D_next, W_next, act, A, out, slope=0.01):
    """out := (D_next @ W_next.T) * act'(z)."""
    out[...] = (D_next @ W_next.T) * ACTIVATION[act].derivative(A, slope)


def optimizer_step(optimizer, params, state, hyper, t):
    """One optimizer step on params from the gradient in state[0]."""
    OPTIMIZER[optimizer].step(params, state, hyper, t)


def random_uniform(seed, positions, stream, n):
    """The uniform numbers that decide dropout masks (as _core.random_uniform)."""
    return K.uniform(seed, positions, stream, n)


def random_shifts(seed, positions):
    """The (dx, dy) shifts of augmented rows (as _core.random_shifts)."""
    return K.shifts(seed, positions)


def dropout(A, rate, seed, first, stream, mask, out):
    """mask := [u < 1 - rate] / (1 - rate), out := A * mask (as _core.dropout)."""
    positions = np.arange(first, first + len(A))
    mask[...] = _dropout_mask(A.shape, 1 - rate, seed, positions, stream, A.dtype)
    out[...] = A * mask
