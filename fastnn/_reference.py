"""The NumPy reference: the maths of ``fastnn._core`` in plain NumPy.

Every function has the signature of its compiled twin, so the reference is
the oracle the tests compare the kernels with, the baseline the benchmarks
time, and the ``backend="numpy"`` of ``Network``. It is vectorised over the
mini-batch, as a careful NumPy user would write it: each batch is done in
one piece (the kernels' chunking changes only round-off), and ``work`` and
``capacity`` arguments are accepted and ignored except to decide, as the
kernels do, whether an SGD step is fused. The epoch walks the same layer
table as the kernels (see fastnn._kernels).

Each layer is a ``*_forward`` / ``*_backward`` pair, kept next to each
other. Legend: N = rows (samples) in a batch, I = fan-in, O = fan-out,
L = layers; images are (N, H, W, C), channels last; a window is kh x kw
with strides (sh, sw), an output image (OH, OW, F), and K = kh*kw*C.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fastnn import _kernels as K
from fastnn._kernels import DIVERGED, DONE, ROWS_DONE, STEPS, STOP_REQUEST, STOPPED, param_views
from fastnn._validation import one_hot_rows
from fastnn.activations import BY_CODE as ACTIVATION
from fastnn.losses import BY_CODE as LOSS
from fastnn.optimizers import OPTIMIZERS, clip_grad_norm

OPTIMIZER = {o.code: o for o in OPTIMIZERS.values()}


def workspace_size(table, capacity, keep=(), n_threads=1, bf16=False):
    """The reference needs no workspace."""
    return 0


def round_bf16(x):
    """x (float32) rounded to the nearest bfloat16, ties to even, as float32.

    bfloat16 is float32's upper 16 bits (sign, 8 exponent bits, 7 mantissa
    bits), so this rounds the bit pattern: add 0x7FFF plus the lowest kept
    bit, clear the low 16 bits. Past the largest bfloat16 that gives inf,
    subnormals round on their own grid, and a NaN stays a NaN (its sign and
    upper payload kept, made quiet): _core's round_bf16 is the same, bit for
    bit."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) \
            & np.uint32(0xFFFF0000)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (u & np.uint32(0xFFFF0000)) | np.uint32(0x00400000)
    return np.where(nan, quiet, rounded).view(np.float32)


def _operands(bf16, *arrays):
    """The operands of a matrix product: rounded to bfloat16 (still float32
    arrays) in a bfloat16 network, else as they are."""
    return tuple(round_bf16(a) for a in arrays) if bf16 else arrays


def _as_float(X, dtype):
    """Rows of X as `dtype`; uint8 pixels are divided by 255 (as _core does)."""
    if X.dtype == np.uint8:
        return X.astype(dtype) / dtype.type(255)
    return X.astype(dtype, copy=False)


def _shifted(X, rows, positions, seed, dtype, shape=None):
    """X[rows] as (H, W, C) images (default: square, one channel), each
    shifted by its random (dx, dy)."""
    if shape is None:
        side = int(round(np.sqrt(X.shape[1])))
        shape = (side, side, 1)
    H, W, C = shape
    images = _as_float(X[rows], dtype).reshape(-1, H, W, C)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    d = K.shifts(seed, positions)
    # out[y, x] = image[y - dy, x - dx]: a window of the padded image
    ys = np.arange(H)[None, :, None] + 2 - d[:, 1, None, None]
    xs = np.arange(W)[None, None, :] + 2 - d[:, 0, None, None]
    return padded[np.arange(len(rows))[:, None, None], ys, xs].reshape(len(rows), -1)


def _dropout_mask(shape, keep, seed, positions, stream, dtype):
    """[u < keep] / keep for each unit of these rows: inverted dropout."""
    u = K.uniform(seed, positions, stream, shape[1])
    return np.where(u < keep, dtype.type(1 / keep), dtype.type(0))


def _stream(l):
    """The random stream of the dropout on table row l's input."""
    return l if l > 0 else K.INPUT_STREAM


# ----------------------------------------------------------------- layers

def _padded_windows(X, kh, kw, sh, sw, pt, pl, OH, OW):
    """(X zero-padded, its (N, OH, OW, kh, kw, C) windows as a view)."""
    N, H, W, C = X.shape
    pb = max(0, (OH - 1) * sh + kh - H - pt)
    pr = max(0, (OW - 1) * sw + kw - W - pl)
    Xp = np.pad(X, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt or pb or pl or pr else X
    v = sliding_window_view(Xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :OH, :OW]
    return Xp, v.transpose(0, 1, 2, 4, 5, 3)


def conv2d_forward(X, W, b, stride, padding, out):
    """out := X * W + b, the cross-correlation, by im2col and one GEMM.
    X (N, H, W, C), W (kh, kw, C, F), b (F,), out (N, OH, OW, F); stride
    (sh, sw); padding (top, left) rows and columns of zeros (the bottom and
    right as many as the output needs)."""
    N, OH, OW, F = out.shape
    kh, kw, C, _ = W.shape
    _, win = _padded_windows(X, kh, kw, *stride, *padding, OH, OW)
    col = win.reshape(N * OH * OW, kh * kw * C)                 # im2col: rows are pixels
    out[...] = (col @ W.reshape(-1, F) + b).reshape(out.shape)


def conv2d_backward(X, W, D, stride, padding, dW, db, dX=None):
    """dW := sum over pixels of im2col(X)^T @ D, db := sum of D, and, unless
    dX is None, dX := col2im(D @ W^T), from  out = im2col(X) @ W + b.
    X, dX (N, H, W, C), W, dW (kh, kw, C, F), D (N, OH, OW, F)."""
    N, OH, OW, F = D.shape
    kh, kw, C, _ = W.shape
    sh, sw = stride
    Xp, win = _padded_windows(X, kh, kw, sh, sw, *padding, OH, OW)
    Dm = D.reshape(-1, F)
    dW[...] = (win.reshape(-1, kh * kw * C).T @ Dm).reshape(dW.shape)
    db[...] = Dm.sum(axis=0)
    if dX is None:
        return
    dcol = (Dm @ W.reshape(-1, F).T).reshape(N, OH, OW, kh, kw, C)
    dXp = np.zeros(Xp.shape, X.dtype)
    for i in range(kh):             # col2im: each window position adds its share
        for j in range(kw):
            dXp[:, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw] += dcol[:, :, :, i, j]
    pt, pl = padding
    dX[...] = dXp[:, pt:pt + X.shape[1], pl:pl + X.shape[2]]


def _pool_windows(X, size, stride, OH, OW):
    """The (N, OH, OW, kh*kw, C) windows of X, row-major within a window."""
    kh, kw = size
    _, win = _padded_windows(X, kh, kw, *stride, 0, 0, OH, OW)
    return win.reshape(X.shape[0], OH, OW, kh * kw, X.shape[3])


def maxpool_forward(X, size, stride, out, argmax):
    """out := the maximum of each window, argmax := where it is, as the index
    (y * W + x) * C + c within the sample. The first maximum of a window in
    row-major order wins a tie; a NaN wins over numbers, and the last NaN
    over earlier ones (PyTorch's rule: v > max or isnan(v)).
    X (N, H, W, C), out and argmax (N, OH, OW, C)."""
    N, OH, OW, C = out.shape
    _, H, W, _ = X.shape
    kh, kw = size
    sh, sw = stride
    win = _pool_windows(X, size, stride, OH, OW)
    k = np.argmax(win, axis=3)                  # the first maximum, or the first NaN
    nan = np.isnan(win)
    last_nan = kh * kw - 1 - np.argmax(nan[:, :, :, ::-1], axis=3)
    k = np.where(nan.any(axis=3), last_nan, k)
    out[...] = np.take_along_axis(win, k[:, :, :, None], axis=3)[:, :, :, 0]
    i, j = np.divmod(k, kw)
    y = np.arange(OH)[None, :, None, None] * sh + i
    x = np.arange(OW)[None, None, :, None] * sw + j
    argmax[...] = (y * W + x) * C + np.arange(C)


def maxpool_backward(D, argmax, dX):
    """dX := D routed to where each maximum was (summed where windows
    overlap).  D, argmax (N, OH, OW, C), dX (N, H, W, C)."""
    N = D.shape[0]
    flat = np.zeros((N, dX[0].size), dX.dtype)
    np.add.at(flat, (np.arange(N)[:, None], argmax.reshape(N, -1)), D.reshape(N, -1))
    dX[...] = flat.reshape(dX.shape)


def l2pool_forward(X, size, stride, out):
    """out := sqrt(sum x^2) over each window.  X (N, H, W, C), out (N, OH, OW, C)."""
    N, OH, OW, C = out.shape
    win = _pool_windows(X, size, stride, OH, OW)
    out[...] = np.sqrt(np.einsum("nyxkc,nyxkc->nyxc", win, win))


def l2pool_backward(X, Y, D, size, stride, dX):
    """dX := sum over the windows holding x of x / y * dy (0 where y = 0),
    from y = sqrt(sum x^2).  X, dX (N, H, W, C), Y, D (N, OH, OW, C)."""
    N, OH, OW, C = Y.shape
    kh, kw = size
    sh, sw = stride
    win = _pool_windows(X, size, stride, OH, OW)
    ratio = np.divide(win, Y[:, :, :, None], out=np.zeros_like(win), where=Y[:, :, :, None] > 0)
    share = (ratio * D[:, :, :, None]).reshape(N, OH, OW, kh, kw, C)
    dX[...] = 0
    for i in range(kh):
        for j in range(kw):
            dX[:, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw] += share[:, :, :, i, j]


# ----------------------------------------------------------------- network

def _image(row, side):
    """(H, W, C) of a table row's input (side 'in') or output ('out')."""
    c = K.T_IN_H if side == "in" else K.T_OUT_H
    return tuple(int(v) for v in row[c:c + 3])


def _forward(X, params, table, slope, keep=None, seed=0, positions=None, bf16=False):
    """Activations [A_0, ..., A_L], what each layer read (its input, dropped
    out where keep < 1) and each max-pool's argmax. With bf16, the operands
    of each layer's product (its input and weights) are rounded to bfloat16."""
    views = iter(param_views(params, table))
    A, inputs, masks, extra = [X], [], [], []
    for l, row in enumerate(table):
        mask = None
        if keep is not None and keep[l] < 1:
            mask = _dropout_mask(A[l].shape, keep[l], seed, positions, _stream(l), A[l].dtype)
        masks.append(mask)
        x = A[l] if mask is None else A[l] * mask
        inputs.append(x)
        kind, N = row[K.T_KIND], len(x)
        shape_out = (N, *_image(row, "out"))
        geometry = (tuple(row[K.T_KH:K.T_KW + 1]), tuple(row[K.T_SH:K.T_SW + 1]))
        y, aux = np.empty(shape_out, x.dtype), None
        if kind == K.DENSE:
            W, b = next(views)
            xr, Wr = _operands(bf16, x, W)
            y = xr @ Wr + b
        elif kind == K.CONV2D:
            W, b = next(views)
            # im2col copies the input (and adds exact zeros): rounding the
            # image rounds every entry of the im2col matrix
            xr, Wr = _operands(bf16, x, W)
            conv2d_forward(xr.reshape(N, *_image(row, "in")), Wr, b, geometry[1],
                           tuple(row[K.T_PT:K.T_PL + 1]), y)
        elif kind == K.MAXPOOL2D:
            aux = np.empty(shape_out, np.int64)
            maxpool_forward(x.reshape(N, *_image(row, "in")), *geometry, y, aux)
        else:
            l2pool_forward(x.reshape(N, *_image(row, "in")), *geometry, y)
        extra.append(aux)
        A.append(ACTIVATION[row[K.T_ACT]].fn(y.reshape(N, -1), slope))
    return A, inputs, masks, extra


def _backward(A, inputs, masks, extra, delta, params, table, slope, bf16=False):
    """Yield (l, dC/dW_l, dC/db_l) of each layer with parameters, summed
    over the batch, from the last layer down; delta = dC/dz of the output.
    With bf16, the operands of the weight-gradient and input-gradient
    products (input, delta, weights) are rounded to bfloat16; the bias
    gradient sums the delta as it is.

    The delta of a layer's input, (input gradient) * act'(z) [* mask], is
    computed before the caller sees the layer's gradient, so it may update
    the layer's weights in place.
    """
    views = param_views(params, table)
    k = len(views)
    for l in range(len(table) - 1, -1, -1):
        row = table[l]
        kind, x, N = row[K.T_KIND], inputs[l], len(delta)
        shape_in, shape_out = (N, *_image(row, "in")), (N, *_image(row, "out"))
        geometry = (tuple(row[K.T_KH:K.T_KW + 1]), tuple(row[K.T_SH:K.T_SW + 1]))
        grads, dx = None, None
        if kind == K.DENSE:
            k -= 1
            W, _ = views[k]
            xr, Wr, dr = _operands(bf16, x, W, delta)
            grads = (xr.T @ dr, delta.sum(axis=0))
            if l > 0:
                dx = dr @ Wr.T
        elif kind == K.CONV2D:
            k -= 1
            W, b = views[k]
            xr, Wr, dr = _operands(bf16, x, W, delta)
            grads = (np.empty_like(W), np.empty_like(b))
            dx = np.empty(shape_in, x.dtype) if l > 0 else None
            conv2d_backward(xr.reshape(shape_in), Wr, dr.reshape(shape_out), geometry[1],
                            tuple(row[K.T_PT:K.T_PL + 1]), *grads, dx)
            if bf16:
                grads[1][...] = delta.reshape(-1, W.shape[-1]).sum(axis=0)
        elif l > 0 and kind == K.MAXPOOL2D:
            dx = np.empty(shape_in, x.dtype)
            maxpool_backward(delta.reshape(shape_out), extra[l], dx)
        elif l > 0:
            dx = np.empty(shape_in, x.dtype)
            l2pool_backward(x.reshape(shape_in), A[l + 1].reshape(shape_out),
                            delta.reshape(shape_out), *geometry, dx)
        if l > 0:
            delta = dx.reshape(N, -1) * ACTIVATION[table[l - 1][K.T_ACT]].derivative(A[l], slope)
            if masks[l] is not None:
                delta *= masks[l]
        if grads is not None:
            yield k, grads[0], grads[1]


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


def penalty_grad(params, grad, table, l2, l1):
    """grad_W += l2 W + l1 sign(W) for every layer's weights (not biases)."""
    for (W, _), (G, _) in zip(param_views(params, table), param_views(grad, table)):
        if l2:
            G += W.dtype.type(l2) * W
        if l1:
            G += W.dtype.type(l1) * np.sign(W)


def train_epoch(X, Y, order, params, state, table, keep, slope, loss, batch_size, capacity,
                optimizer, hyper, sample_weight, augment, seed, work, control, n_threads=1,
                bf16=False, labels=None, slices=0):
    """One epoch of mini-batch training over X[order]; see fastnn._core.train_epoch
    (n_threads and slices are ignored; with labels, each batch's targets are
    their one-hot rows)."""
    if labels is not None:      # as fastnn._core.train_epoch checks them
        labels = np.asarray(labels)
        if len(Y) or len(labels) != len(X) or Y.shape[1] < 2:
            raise ValueError(f"labels take Y of no rows and two or more columns, and one label "
                             f"a row of X: Y {Y.shape}, labels {labels.shape}, X {X.shape}")
        bad = np.flatnonzero((labels < 0) | (labels >= Y.shape[1]))
        if len(bad):
            raise ValueError(f"label {labels[bad[0]]} (labels[{bad[0]}]) is outside "
                             f"[0, {Y.shape[1]})")
    table = np.asarray(table)
    layers = param_views(params, table)
    grads = param_views(state[0], table)
    dtype = params.dtype
    keep = np.asarray(keep, dtype=np.float64) if len(keep) else np.ones(len(table))
    dropping = bool((keep < 1).any())
    clip = hyper[K.H_CLIP_NORM]
    fused = (optimizer == OPTIMIZERS["sgd"].code and hyper[K.H_L1] == 0 and clip == 0
             and batch_size <= capacity)
    lr = dtype.type(hyper[K.H_LR])
    decay = dtype.type(1 - hyper[K.H_LR] * hyper[K.H_L2])
    loss_sum, n_correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        if control[STOP_REQUEST]:
            return STOPPED, loss_sum, n_correct
        rows = order[start:start + batch_size]
        m = len(rows)
        # sample positions seed the dropout masks and the shifts; only then needed
        positions = np.arange(start, start + m) if dropping or augment == K.SHIFT else None
        if augment == K.SHIFT:
            x = _shifted(X, rows, positions, seed, dtype, _image(table[0], "in"))
        else:
            x = _as_float(X[rows], dtype)
        A, inputs, masks, extra = _forward(x, params, table, slope, keep if dropping else None,
                                           seed, positions, bf16)
        if labels is None:
            y = Y[rows]
        else:
            y = one_hot_rows(labels[rows], Y.shape[1], dtype)
        weights = sample_weight[rows] if len(sample_weight) else None
        batch_loss, delta = _output_delta(loss, table[-1][K.T_ACT], A[-1], y, slope, weights)
        if not np.isfinite(batch_loss):
            return DIVERGED, loss_sum, n_correct
        loss_sum += batch_loss
        n_correct += _count_correct(A[-1], y)
        for k, grad_W, grad_b in _backward(A, inputs, masks, extra, delta, params, table, slope,
                                           bf16):
            W, b = layers[k]
            if fused:
                if decay != 1:
                    W *= decay
                W -= (lr / m) * grad_W
                b -= (lr / m) * grad_b
            else:
                grads[k][0][...] = grad_W / m
                grads[k][1][...] = grad_b / m
        control[STEPS] += 1
        if not fused:
            if hyper[K.H_L2] or hyper[K.H_L1]:
                penalty_grad(params, state[0], table, hyper[K.H_L2], hyper[K.H_L1])
            if clip:
                clip_grad_norm(state[0], clip)
            OPTIMIZER[optimizer].step(params, state, hyper, int(control[STEPS]))
        control[ROWS_DONE] += m
    return DONE, loss_sum, n_correct


def predict(X, params, table, slope, work, chunk, out, n_threads=1, bf16=False):
    """out := the network's output activations for every row of X (n_threads
    is ignored)."""
    table = np.asarray(table)
    for start in range(0, len(X), chunk):
        rows = slice(start, start + chunk)
        out[rows] = _forward(_as_float(X[rows], params.dtype), params, table, slope,
                             bf16=bf16)[0][-1]


def gradient(X, Y, params, table, slope, loss, work, grad, bf16=False):
    """grad := dC/dparams for the mean loss over X; returns sum_x C_x."""
    table = np.asarray(table)
    A, inputs, masks, extra = _forward(_as_float(X, params.dtype), params, table, slope,
                                       bf16=bf16)
    total, delta = _output_delta(loss, table[-1][K.T_ACT], A[-1], Y, slope)
    grads = param_views(grad, table)
    for k, grad_W, grad_b in _backward(A, inputs, masks, extra, delta, params, table, slope,
                                       bf16):
        grads[k][0][...] = grad_W / len(X)
        grads[k][1][...] = grad_b / len(X)
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
