"""Convolution and pooling: the compiled kernels against the NumPy reference,
naive loops, central finite differences and PyTorch."""
import numpy as np
import pytest
from conftest import examples, hypothesis_api, needs, one_hot
from numpy.testing import assert_allclose, assert_array_equal
from test_backprop import numerical_gradient, relative_error

from fastnn import Network, _core, _kernels
from fastnn import _reference as ref
from fastnn.layers import Conv2D, Dense, Dropout, L2Pool2D, MaxPool2D
from fastnn.losses import LOSSES
from fastnn.optimizers import OPTIMIZERS, hyper_array
from fastnn.plan import Plan

given, settings, st, _ = hypothesis_api()

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def conv_case(rng, dtype, N, H, W, C, F, kernel, stride, padding):
    """(X, W, b, stride, (top, left) padding, output shape) of a random convolution."""
    layer = Conv2D(F, kernel, stride=stride, padding=padding)
    top, _, left, _ = layer.padding_amounts((H, W, C))
    OH, OW, _ = layer.output_shape((H, W, C))
    return (rand(rng, (N, H, W, C), dtype), rand(rng, (*layer.kernel, C, F), dtype),
            rand(rng, (F,), dtype), layer.stride, (top, left), (N, OH, OW, F))


def conv_naive(X, W, b, stride, padding, out_shape):
    """out[n, y, x, f] = b[f] + sum_{i, j, c} X[n, y*sh + i - pt, x*sw + j - pl, c] W[i, j, c, f],
    terms outside the image left out: the definition, by loops."""
    N, OH, OW, F = out_shape
    kh, kw, C, _ = W.shape
    out = np.empty(out_shape)
    for n in range(N):
        for y in range(OH):
            for x in range(OW):
                acc = b.astype(np.float64).copy()
                for i in range(kh):
                    for j in range(kw):
                        iy, ix = y * stride[0] + i - padding[0], x * stride[1] + j - padding[1]
                        if 0 <= iy < X.shape[1] and 0 <= ix < X.shape[2]:
                            acc += X[n, iy, ix] @ W[i, j]
                out[n, y, x] = acc
    return out


CONV_CASES = [
    # N, H, W, C, F, kernel, stride, padding
    (2, 6, 5, 1, 3, 3, 1, "valid"),
    (3, 7, 7, 2, 4, (3, 2), 2, "same"),
    (2, 6, 6, 3, 2, 4, 1, "same"),                 # even kernel: the extra zeros at the end
    (1, 9, 8, 2, 5, 3, (2, 3), "valid"),
    (4, 5, 5, 2, 3, 5, 1, "valid"),                # the window is the whole image
    (2, 4, 4, 3, 2, 1, 1, "valid"),                # 1x1
    (2, 3, 3, 1, 2, 3, 2, "same"),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward_matches_naive_loops(case):
    rng = np.random.default_rng(0)
    X, W, b, stride, padding, shape = conv_case(rng, np.float64, *case)
    out = np.empty(shape)
    _core.conv2d_forward(X, W, b, stride, padding, out)
    assert_allclose(out, conv_naive(X, W, b, stride, padding, shape), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward_and_backward_match_reference(case, dtype):
    rng = np.random.default_rng(1)
    X, W, b, stride, padding, shape = conv_case(rng, dtype, *case)
    D = rand(rng, shape, dtype)
    results = []
    for kernels in (_core, ref):
        out = np.empty(shape, dtype)
        dW, db, dX = np.empty_like(W), np.empty_like(b), np.empty_like(X)
        kernels.conv2d_forward(X, W, b, stride, padding, out)
        kernels.conv2d_backward(X, W, D, stride, padding, dW, db, dX)
        results.append((out, dW, db, dX))
    tol = RTOL[dtype] * 10
    for got, want in zip(*results):
        assert_allclose(got, want, rtol=tol, atol=tol)
    # the input gradient is optional (without it, a layer with short window
    # rows builds its im2col matrix transposed: the same weight gradient)
    dW, db = np.empty_like(W), np.empty_like(b)
    _core.conv2d_backward(X, W, D, stride, padding, dW, db)
    assert_allclose(dW, results[0][1], rtol=tol, atol=tol)
    assert_array_equal(db, results[0][2])


@settings(max_examples=examples(40), deadline=None)
@given(N=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 9), C=st.integers(1, 3),
       F=st.integers(1, 4), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), padding=st.sampled_from(["valid", "same"]),
       seed=st.integers(0, 2**32 - 1))
def test_conv_matches_reference_on_random_geometries(N, H, W, C, F, kh, kw, sh, sw, padding,
                                                     seed):
    if padding == "valid" and (kh > H or kw > W):
        return
    rng = np.random.default_rng(seed)
    X, Wt, b, stride, pad, shape = conv_case(rng, np.float64, N, H, W, C, F, (kh, kw),
                                             (sh, sw), padding)
    D = rand(rng, shape, np.float64)
    outs = []
    for kernels in (_core, ref):
        out, dW, db, dX = np.empty(shape), np.empty_like(Wt), np.empty_like(b), np.empty_like(X)
        kernels.conv2d_forward(X, Wt, b, stride, pad, out)
        kernels.conv2d_backward(X, Wt, D, stride, pad, dW, db, dX)
        outs.append((out, dW, db, dX))
    for got, want in zip(*outs):
        assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_blocks_give_the_whole_product():
    # a batch whose im2col matrix spans many L2-sized blocks gives what one
    # GEMM over all of it gives
    rng = np.random.default_rng(2)
    X, W, b, stride, padding, shape = conv_case(rng, np.float64, 40, 12, 12, 8, 6, 5, 1,
                                                "same")
    D = rand(rng, shape, np.float64)
    out, dW, db, dX = np.empty(shape), np.empty_like(W), np.empty_like(b), np.empty_like(X)
    _core.conv2d_forward(X, W, b, stride, padding, out)
    _core.conv2d_backward(X, W, D, stride, padding, dW, db, dX)
    col = np.lib.stride_tricks.sliding_window_view(
        np.pad(X, ((0, 0), (2, 2), (2, 2), (0, 0))), (5, 5), axis=(1, 2))
    col = col.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 200)
    assert_allclose(out.reshape(-1, 6), col @ W.reshape(200, 6) + b, rtol=1e-12)
    assert_allclose(dW.reshape(200, 6), col.T @ D.reshape(-1, 6), rtol=1e-12)


@pytest.fixture(params=[True, False], ids=["small_conv", "blas"])
def small_conv(request):
    """Both paths of a first convolution layer in float32: smallgemm.h's
    kernels (where the CPU has AVX2 and FMA) and BLAS."""
    if request.param and not _core.small_gemm_available():
        pytest.skip("this CPU lacks AVX2 or FMA: only the BLAS path exists")
    previous = _core.set_small_conv(request.param)
    yield request.param
    _core.set_small_conv(previous)


@pytest.mark.parametrize("N, H, C, F, kernel, stride, padding, dX", [
    # first layers (no input gradient; col_t where kw * C < 16)
    (10, 28, 1, 20, 5, 1, "valid", False),     # MNIST's first layer: 5,760 pixels in 5 blocks
    (3, 13, 1, 7, 5, 1, "same", False),        # F below 8: the transpose's edge only
    (2, 11, 3, 9, 3, 2, "same", False),        # RGB, stride 2, F = 8 + 1
    (1, 9, 2, 33, (3, 5), 1, "valid", False),  # F = 4 x 8 + 1, pixels not a multiple of 8
    (64, 12, 1, 16, 3, 1, "same", False),      # many blocks, F a multiple of 8
    # later layers (kw * C >= 16: conv_sg's three products)
    (4, 12, 20, 40, 5, 1, "valid", True),      # MNIST's second layer: F = 32 + 8, K = 500
    (3, 9, 8, 33, 3, 2, "same", True),         # stride 2, padding, F = 32 + 1
    (2, 7, 6, 7, (3, 5), 1, "valid", True),    # F below 16, a rectangular window
    (5, 10, 16, 16, 3, 1, "same", True),       # F one vector, 500 pixels in 4 blocks
])
def test_a_layer_in_float32_takes_either_path_to_round_off(small_conv, N, H, C, F, kernel,
                                                           stride, padding, dX):
    # smallgemm.h's kernels or BLAS for the forward, the weight gradient and
    # (dX) the input gradient, each against the definition in float64; the
    # gradients written without being read (they start as NaN)
    rng = np.random.default_rng(5)
    X, W, b, stride, pad, shape = conv_case(rng, np.float32, N, H, H, C, F, kernel, stride,
                                            padding)
    D = rand(rng, shape, np.float32)
    out = np.full(shape, np.nan, np.float32)
    _core.conv2d_forward(X, W, b, stride, pad, out)
    X64, W64, D64 = X.astype(np.float64), W.astype(np.float64), D.astype(np.float64)
    want = conv_naive(X64, W64, b.astype(np.float64), stride, pad, shape)
    scale = np.abs(X64).max() * np.abs(W64).sum(axis=(0, 1, 2)).max()
    assert np.abs(out - want).max() <= 4e-7 * scale
    dW, db = np.full_like(W, np.nan), np.full_like(b, np.nan)
    dX = np.full_like(X, np.nan) if dX else None
    _core.conv2d_backward(X, W, D, stride, pad, dW, db, dX)
    dW64, db64 = np.empty_like(W64), np.empty(F)
    dX64 = None if dX is None else np.empty_like(X64)
    ref.conv2d_backward(X64, W64, D64, stride, pad, dW64, db64, dX64)
    scale = np.abs(X64).max() * np.abs(D64).sum(axis=(0, 1, 2)).max()
    assert np.abs(dW - dW64).max() <= 4e-7 * scale
    assert_allclose(db, db64, rtol=1e-5, atol=1e-4)
    if dX is not None:
        scale = np.abs(D64).max() * np.abs(W64).sum(axis=3).max() * np.prod(W.shape[:2])
        assert np.abs(dX - dX64).max() <= 4e-7 * scale


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "im2col"])
def test_a_later_layer_on_smallgemm_gives_the_same_bits_in_any_chunk(in_place):
    # smallgemm.h computes each output row alone (the same FMAs in the same
    # order whatever the block's rows), from the windows in place or from
    # the im2col blocks (conv_sg): a forward of 7 rows is the same bits as
    # those rows inside a forward of 40, and inside blocks of 12 rows
    if not _core.small_gemm_available():
        pytest.skip("this CPU lacks AVX2 or FMA: only the BLAS path exists")
    rng = np.random.default_rng(9)
    X, W, b, stride, pad, shape = conv_case(rng, np.float32, 40, 12, 12, 20, 40, 5, 1,
                                            "valid")
    outs = []
    was = _core.set_conv_in_place(in_place)
    try:
        for rows, blocking in ((40, None), (7, None), (40, (12 * 500, 12))):
            previous = _core.set_conv_blocking(*blocking) if blocking else None
            try:
                out = np.empty((rows,) + shape[1:], np.float32)
                _core.conv2d_forward(X[:rows], W, b, stride, pad, out)
            finally:
                if previous:
                    _core.set_conv_blocking(*previous)
            outs.append(out)
    finally:
        _core.set_conv_in_place(was)
    assert_array_equal(outs[1], outs[0][:7])
    assert_array_equal(outs[2], outs[0])


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "im2col"])
@pytest.mark.parametrize("N, H, C, F, kernel, stride", [
    (3, 12, 20, 40, 5, 1),          # MNIST's second layer: F = 32 + 8, K = 500
    (2, 9, 8, 33, 3, 2),            # stride 2, F = 32 + 1
    (2, 8, 6, 13, (3, 5), 1),       # F = 8 + 5: one half panel, part of it
])
def test_a_later_layer_is_the_unpacked_kernel_bit_for_bit(isa, in_place, N, H, C, F, kernel,
                                                          stride):
    # W packed once (fastnn_sg_pack_bp) and each block of rows read from
    # im2col or in place (conv_sg, conv_in_place), on each of smallgemm.h's
    # kernels the CPU runs: the forward is, bit for bit, small_gemm (W not
    # packed) over the im2col rows starting from the bias, the input
    # gradient its D @ W^T added back into the image window by window, in
    # row order (np.add.at: one addition at a time), and the weight
    # gradient its D^T @ col over all the rows at once (one FMA chain
    # each, across the blocks), with or without an input gradient
    rng = np.random.default_rng(12)
    X, W, b, stride, pad, shape = conv_case(rng, np.float32, N, H, H, C, F, kernel, stride,
                                            "valid")
    (kh, kw), (sh, sw), (_, OH, OW, _) = W.shape[:2], stride, shape
    K = kh * kw * C
    windows = np.lib.stride_tricks.sliding_window_view(X, (kh, kw), axis=(1, 2))
    col = windows[:, ::sh, ::sw][:, :OH, :OW].transpose(0, 1, 2, 4, 5, 3).reshape(-1, K)
    want = np.repeat(b[None], col.shape[0], axis=0)
    _core.small_gemm(np.ascontiguousarray(col), W.reshape(K, F), want, 1.0, 1.0)
    D = rand(rng, shape, np.float32)
    dcol = np.empty((col.shape[0], K), np.float32)
    _core.small_gemm(D.reshape(-1, F), np.ascontiguousarray(W.reshape(K, F).T), dcol)
    n, y, x, i, j, c = np.meshgrid(*map(np.arange, (N, OH, OW, kh, kw, C)), indexing="ij")
    dX_want = np.zeros_like(X)
    np.add.at(dX_want, (n.ravel(), (y * sh + i).ravel(), (x * sw + j).ravel(), c.ravel()),
              dcol.ravel())
    dWT = np.empty((F, K), np.float32)
    _core.small_gemm(D.reshape(-1, F), np.ascontiguousarray(col), dWT, transpose_a=True)
    was = _core.set_conv_in_place(in_place)
    blocking = _core.set_conv_blocking(7 * K, 7)    # blocks of 7 rows: the sums cross them
    try:
        out = np.full(shape, np.nan, np.float32)
        _core.conv2d_forward(X, W, b, stride, pad, out)
        dW, db, dX = np.full_like(W, np.nan), np.empty_like(b), np.full_like(X, np.nan)
        _core.conv2d_backward(X, W, D, stride, pad, dW, db, dX)
        dW_alone = np.full_like(W, np.nan)
        _core.conv2d_backward(X, W, D, stride, pad, dW_alone, db, None)
    finally:
        _core.set_conv_blocking(*blocking)
        _core.set_conv_in_place(was)
    assert_array_equal(out.reshape(-1, F).view(np.int32), want.view(np.int32))
    assert_array_equal(dX.view(np.int32), dX_want.view(np.int32))
    assert_array_equal(dW.reshape(K, F).view(np.int32), dWT.T.view(np.int32))
    assert_array_equal(dW_alone.view(np.int32), dW.view(np.int32))


@pytest.mark.parametrize("N, H, C, F, kernel, stride", [
    (4, 12, 20, 40, 5, 1),          # MNIST's second layer: windows of 5 rows of 100
    (3, 11, 8, 33, 3, 2),           # stride 2, F = 32 + 1
    (2, 9, 6, 7, (3, 5), (2, 1)),   # a rectangular window, unequal strides
    (1, 40, 16, 16, 3, 1),          # 1,444 pixels: many blocks, each in calls of 120 windows
    (10, 28, 1, 20, 5, 1),          # MNIST's first layer (col_t): windows of 5 rows of 5
    (3, 13, 3, 9, 3, 2),            # RGB, stride 2 (col_t)
])
def test_a_forward_reads_the_windows_in_place_to_the_same_bits(N, H, C, F, kernel, stride):
    # no padding: every window inside the image, read where it lies
    # (sg_gemm_rows) or copied first (im2col; a col_t layer's im2col_t, its
    # product transposed and the bias added last), the same FMAs in the same
    # order and the bias at the same place: the same bits
    if not _core.small_gemm_available():
        pytest.skip("this CPU lacks AVX2 or FMA: only the BLAS path exists")
    rng = np.random.default_rng(11)
    X, W, b, stride, pad, shape = conv_case(rng, np.float32, N, H, H, C, F, kernel, stride,
                                            "valid")
    outs = []
    for on in (True, False):
        previous = _core.set_conv_in_place(on)
        try:
            out = np.full(shape, np.nan, np.float32)
            _core.conv2d_forward(X, W, b, stride, pad, out)
        finally:
            _core.set_conv_in_place(previous)
        outs.append(out)
    assert_array_equal(outs[0], outs[1])
    want = conv_naive(X.astype(np.float64), W.astype(np.float64), b.astype(np.float64), stride,
                      pad, shape)
    scale = np.abs(X).max() * np.abs(W.astype(np.float64)).sum(axis=(0, 1, 2)).max()
    assert np.abs(outs[0] - want).max() <= 4e-7 * scale


def test_a_conv_net_trains_the_same_on_either_conv_path():
    # an epoch of a float32 conv net (its two conv layers on smallgemm.h or
    # on BLAS; SGD fuses the step into the weight gradient there, Adam does
    # not) gives the same weights to float32 round-off
    if not _core.small_gemm_available():
        pytest.skip("this CPU lacks AVX2 or FMA: only the BLAS path exists")
    rng = np.random.default_rng(6)
    X = rng.random((300, 196), dtype=np.float32)
    y = rng.integers(0, 4, 300)
    for optimizer, lr in (("sgd", 0.1), ("adam", 1e-3)):
        weights = []
        for on in (True, False):
            previous = _core.set_small_conv(on)
            try:
                net = Network([(14, 14, 1), Conv2D(12, 5), MaxPool2D(2), Conv2D(8, 3),
                               Dense(20), Dense(4)],
                              activation="relu", output="softmax", loss="cross_entropy",
                              dtype="float32", seed=3)
                net.fit(X, y, epochs=2, batch_size=10, lr=lr, optimizer=optimizer)
            finally:
                _core.set_small_conv(previous)
            weights.append(net._params.copy())
        assert_allclose(weights[0], weights[1], rtol=2e-4, atol=2e-5)


def test_an_epoch_does_not_depend_on_the_convolution_block_size():
    # blocks of 1 row, of 7, and the default: the same weights (float64)
    rng = np.random.default_rng(8)
    X = rng.random((40, 100))
    y = rng.integers(0, 3, 40)
    weights, scratch = [], []
    for entries, min_rows in ((1, 1), (7 * 25, 7), (None, None)):
        previous = _core.set_conv_blocking(entries, min_rows) if entries else None
        try:
            net = Network([(10, 10, 1), Conv2D(6, 5), MaxPool2D(2), Conv2D(4, 3, padding="same"),
                           Dense(3)], activation="tanh", output="softmax",
                          loss="cross_entropy", dtype="float64", seed=2)
            net.fit(X, y, epochs=2, batch_size=8, lr=0.1)
            scratch.append(_core.workspace_size(net.plan.table()[0], 8))
        finally:
            if previous:
                _core.set_conv_blocking(*previous)
        weights.append(net._params.copy())
    # the blockings differ (their im2col blocks, so their workspaces; with
    # no smallgemm.h kernels, the two small blocks' scratch is below another
    # part of the workspace, so only the default's shows)
    assert scratch[0] <= scratch[1] < scratch[2]
    assert scratch[0] < scratch[1] or not _core.small_gemm_available()
    assert_allclose(weights[0], weights[2], rtol=1e-11, atol=1e-13)
    assert_allclose(weights[1], weights[2], rtol=1e-11, atol=1e-13)


POOL_CASES = [
    # N, H, W, C, size, stride
    (2, 6, 6, 3, 2, None),              # windows tiling the image
    (2, 5, 7, 2, 2, None),              # a last row and column in no window
    (2, 7, 5, 2, 3, 2),
    (1, 5, 5, 1, 2, 1),                 # overlapping windows
    (3, 4, 6, 2, (2, 3), (2, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_pools_match_reference(case, dtype):
    N, H, W, C, size, stride = case
    rng = np.random.default_rng(3)
    X = rand(rng, (N, H, W, C), dtype)
    for cls in (MaxPool2D, L2Pool2D):
        layer = cls(size, stride)
        shape = (N, *layer.output_shape((H, W, C)))
        D = rand(rng, shape, dtype)
        results = []
        for kernels in (_core, ref):
            out, dX = np.empty(shape, dtype), np.empty_like(X)
            if cls is MaxPool2D:
                idx = np.empty(shape, np.int32)
                kernels.maxpool_forward(X, layer.size, layer.stride, out, idx)
                kernels.maxpool_backward(D, idx, dX)
                results.append((out, idx, dX))
            else:
                kernels.l2pool_forward(X, layer.size, layer.stride, out)
                kernels.l2pool_backward(X, out, D, layer.size, layer.stride, dX)
                results.append((out, dX))
        for got, want in zip(*results):
            assert_allclose(got, want, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_ties_go_to_the_first_element_and_nan_wins(dtype):
    # one channel, 2x2 windows: ties at the window's first element in row-major
    # order; a NaN wins over numbers, and the last NaN over earlier ones (PyTorch)
    X = np.array([[1.0, 1.0, 5.0, 2.0],
                  [1.0, 0.0, 5.0, 5.0],
                  [np.nan, 3.0, 7.0, np.nan],
                  [9.0, np.nan, np.nan, 1.0]], dtype)[None, :, :, None]
    for kernels in (_core, ref):
        out, idx = np.empty((1, 2, 2, 1), dtype), np.empty((1, 2, 2, 1), np.int32)
        with np.errstate(invalid="ignore"):
            kernels.maxpool_forward(X, (2, 2), (2, 2), out, idx)
        assert out[0, 0, 0, 0] == 1 and idx[0, 0, 0, 0] == 0
        assert out[0, 0, 1, 0] == 5 and idx[0, 0, 1, 0] == 2
        assert np.isnan(out[0, 1, 0, 0]) and idx[0, 1, 0, 0] == 13       # the later NaN (3, 1)
        assert np.isnan(out[0, 1, 1, 0]) and idx[0, 1, 1, 0] == 14       # (3, 2) after (2, 3)
        dX = np.empty_like(X)
        kernels.maxpool_backward(np.ones((1, 2, 2, 1), dtype), idx, dX)
        assert_array_equal(np.flatnonzero(dX), [0, 2, 13, 14])


@pytest.mark.parametrize("C", [3, 8, 20])         # the 8-channel blocks and their tails
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_ties_and_nan_as_torch(dtype, C):
    torch = needs("torch")
    rng = np.random.default_rng(4)
    X = rng.integers(0, 3, (2, 6, 6, C)).astype(dtype)            # many ties
    X[0, 1, 1, 0] = X[1, 4, 2, 2] = X[1, 5, 3, 2] = np.nan
    X[0, 2:4, 2:4, C - 1] = np.nan                                  # a window of NaNs
    out, idx = np.empty((2, 3, 3, C), dtype), np.empty((2, 3, 3, C), np.int32)
    _core.maxpool_forward(X, (2, 2), (2, 2), out, idx)
    t_out, t_idx = torch.nn.functional.max_pool2d(torch.from_numpy(X).permute(0, 3, 1, 2), 2,
                                                  return_indices=True)
    assert_array_equal(out, t_out.permute(0, 2, 3, 1).numpy())
    # torch's index is y * W + x within a channel's plane; fastnn's (y * W + x) * C + c
    assert_array_equal(idx // C, t_idx.permute(0, 2, 3, 1).numpy())
    assert_array_equal(idx % C, np.broadcast_to(np.arange(C), idx.shape))


def test_l2pool_is_torch_lppool_and_zero_windows_have_zero_gradient():
    torch = needs("torch")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2, 6, 5, 3))
    X[0, :2, :2, 1] = 0                                 # a window of zeros: y = 0
    out, dX = np.empty((2, 3, 2, 3)), np.empty_like(X)
    D = rng.normal(size=out.shape)
    _core.l2pool_forward(X, (2, 2), (2, 2), out)
    _core.l2pool_backward(X, out, D, (2, 2), (2, 2), dX)
    Xt = torch.from_numpy(X).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.LPPool2d(2, 2)(Xt)
    yt.backward(torch.from_numpy(D).permute(0, 3, 1, 2))
    assert_allclose(out, yt.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-14)
    # torch, too, gives 0 where y = 0
    assert_allclose(dX, Xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-12, atol=1e-15)
    assert_array_equal(dX[0, :2, :2, 1], 0)


# --------------------------------------------------------- whole networks

NETS = {
    "conv_maxpool": [(6, 5, 2), Conv2D(3, 3), MaxPool2D(2), Dense(4), Dense(3)],
    "strided_same_l2pool": [(7, 7, 2), Conv2D(3, (3, 2), stride=2, padding="same"),
                            L2Pool2D(2, stride=1), Dense(3)],
    "two_convs": [(5, 6, 3), Conv2D(2, 2, padding="same"), Conv2D(3, 3, stride=(1, 2)),
                  Dense(3)],
    "pool_first": [(6, 6, 1), MaxPool2D(3, stride=2), Conv2D(2, 2), Dense(3)],
    # windows that overlap: an input's gradient adds up from several, each
    # times its activation's derivative (maxpool_backward_act)
    "conv_overlapping_maxpool": [(8, 7, 2), Conv2D(3, 3), MaxPool2D(3, stride=2), Dense(3)],
    "conv_output": [(6, 6, 2), Conv2D(4, 4, padding="same"), L2Pool2D(2), Conv2D(3, 3)],
}


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("name", sorted(NETS))
def test_gradient_matches_finite_differences(name, hidden, backend):
    rng = np.random.default_rng(6)
    net = Network(NETS[name], activation=hidden, output="softmax", loss="cross_entropy",
                  dtype="float64", seed=1, slope=0.1, backend=backend)
    X = rng.normal(size=(4, net.sizes[0]))
    Y = one_hot(rng.integers(0, 3, 4), net.sizes[-1]) if net.sizes[-1] == 3 else \
        rng.dirichlet(np.ones(net.sizes[-1]), 4)
    g = net.gradient(X, Y)
    assert g.loss == pytest.approx(net.evaluate(X, Y)["loss"], rel=1e-13)
    numeric = numerical_gradient(net, X, Y)
    assert relative_error(list(g.weights) + list(g.biases), numeric) < 1e-7
    for got, want in zip(list(g.weights) + list(g.biases), numeric):
        assert got.shape == want.shape
        assert_allclose(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("output, loss", [("sigmoid", "mse"), ("tanh", "mse"),
                                          ("sigmoid", "cross_entropy"), ("softmax", "mse")])
def test_gradient_of_every_output_and_loss(output, loss):
    rng = np.random.default_rng(7)
    net = Network(NETS["conv_maxpool"], activation="tanh", output=output, loss=loss,
                  dtype="float64", seed=2)
    X = rng.normal(size=(3, net.sizes[0]))
    Y = rng.uniform(0, 1, (3, 3)) if output != "softmax" else rng.dirichlet(np.ones(3), 3)
    g = net.gradient(X, Y)
    assert relative_error(list(g.weights) + list(g.biases),
                          numerical_gradient(net, X, Y)) < 1e-7


def _epoch(plan, X, Y, dtype, *, batch, capacity=None, optimizer="sgd", lr=0.1, l2=0.0, l1=0.0,
           dropout=None, sample_weight=None, augment=_kernels.NO_AUGMENT, seed=77, params=None,
           image_shape=None):
    table, keep = plan.table(dropout, image_shape)
    capacity = capacity or batch
    opt = OPTIMIZERS[optimizer]
    if params is None:
        params = np.empty(plan.n_params, dtype)
        from fastnn.initializers import INITIALIZERS
        plan.init(params, INITIALIZERS["nielsen"], np.random.default_rng(0))
    n = len(X)
    return dict(X=X, Y=Y.astype(dtype), order=np.random.default_rng(1).permutation(n),
                params=params, state=opt.new_state(plan.n_params, dtype, lr), table=table,
                keep=keep, slope=0.05, loss=LOSSES["cross_entropy"].code, batch_size=batch,
                capacity=capacity, optimizer=opt.code,
                hyper=hyper_array(lr, l2 / n, l1 / n, betas=(0.8, 0.99)),
                sample_weight=(np.empty(0, dtype) if sample_weight is None
                               else sample_weight.astype(dtype)),
                augment=augment, seed=seed,
                work=np.empty(_core.workspace_size(table, capacity, keep), dtype),
                control=np.zeros(_kernels.N_CONTROL, np.int64))


def _both(args):
    runs = []
    for kernels in (_core, ref):
        mine = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
                "control": args["control"].copy()}
        result = kernels.train_epoch(**mine)
        runs.append((result, mine))
    return runs


def _assert_same(runs, dtype):
    (r1, a1), (r2, a2) = runs
    assert r1[0] == r2[0] == _kernels.DONE and r1[2] == r2[2]
    assert_allclose(r1[1], r2[1], rtol=RTOL[dtype] * 10)
    assert_array_equal(a1["control"], a2["control"])
    tol = {np.float32: 1e-4, np.float64: 1e-11}[dtype]
    assert_allclose(a1["params"], a2["params"], rtol=tol, atol=tol)
    assert_allclose(a1["state"], a2["state"], rtol=tol, atol=tol)


EPOCH_NET = [(8, 8, 2), Dropout(0.2), Conv2D(4, 3, padding="same"), MaxPool2D(2),
             Conv2D(3, 2, stride=2), L2Pool2D(2, stride=1), Dense(10), Dropout(0.3), Dense(3)]


def _data(n, shape, dtype=np.uint8, seed=8):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, int(np.prod(shape)))).astype(np.uint8)
    if dtype != np.uint8:
        X = (X / 255).astype(dtype)
    return X, one_hot(rng.integers(0, 3, n), 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_epoch_matches_reference_for_every_optimizer(optimizer, dtype):
    plan = Plan.parse(EPOCH_NET, activation="relu", output="softmax")
    X, Y = _data(36, (8, 8, 2))
    batch = 36 if optimizer == "rprop" else 5
    args = _epoch(plan, X, Y, dtype, batch=batch, optimizer=optimizer, lr=0.02, l2=0.3, l1=0.1,
                  dropout=[0.25])
    _assert_same(_both(args), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_epoch_with_shift_sample_weights_and_chunks_matches_reference(dtype):
    plan = Plan.parse(EPOCH_NET, activation="tanh", output="softmax")
    X, Y = _data(30, (8, 8, 2), dtype)
    w = np.random.default_rng(9).uniform(0, 2, 30)
    for capacity in (7, 3):                     # one chunk (fused SGD), chunks that add up
        args = _epoch(plan, X, Y, dtype, batch=7, capacity=capacity, sample_weight=w,
                      augment=_kernels.SHIFT, l2=0.2)
        _assert_same(_both(args), dtype)


@pytest.mark.parametrize("act", HIDDEN)
def test_every_activation_in_an_epoch_matches_reference(act):
    plan = Plan.parse([(7, 6, 3), Conv2D(4, 3, stride=(2, 1), padding="same"), MaxPool2D(2),
                       Dense(5), Dense(3)], activation=act, output="sigmoid")
    X, Y = _data(20, (7, 6, 3), np.float64)
    _assert_same(_both(_epoch(plan, X, Y, np.float64, batch=4, lr=0.3)), np.float64)


def test_chunks_give_the_step_of_the_whole_batch():
    plan = Plan.parse(EPOCH_NET, activation="relu", output="softmax")
    X, Y = _data(24, (8, 8, 2), np.float64)
    runs = []
    for capacity in (24, 5):
        args = _epoch(plan, X, Y, np.float64, batch=24, capacity=capacity,
                      optimizer="momentum")
        _core.train_epoch(**args)
        runs.append(args["params"])
    assert_allclose(runs[0], runs[1], rtol=1e-12, atol=1e-14)


DROPOUT_NETS = {
    "tanh, l2pool, dropout on the input": (
        [(6, 6, 2), Dropout(0.3), Conv2D(3, 3, padding="same"), L2Pool2D(2), Dropout(0.4),
         Dense(5), Dense(3)], "tanh", [0.5]),
    # Nielsen's chapter-6 row 6 in small: ReLU conv-pool layers, dropout on the
    # 4-D pooled output (before the implied Flatten) and on both hidden Dense
    "relu, maxpool, row 6 of chapter 6": (
        [(12, 12, 1), Conv2D(3, 3), MaxPool2D(2), Conv2D(4, 2), MaxPool2D(2), Dropout(0.5),
         Dense(7), Dropout(0.5), Dense(6), Dropout(0.5), Dense(3)], "relu", None),
}


@pytest.mark.parametrize("net", list(DROPOUT_NETS))
def test_dropout_layers_match_finite_differences_of_the_training_loss(net):
    # the masks depend only on (seed, row position, layer), so the training
    # loss with dropout is a function of the parameters: one SGD step of the
    # kernel on one batch moves the parameters by -lr times its gradient
    layers, activation, dropout = DROPOUT_NETS[net]
    plan = Plan.parse(layers, activation=activation, output="softmax")
    shape = layers[0]
    X, Y = _data(6, shape, np.float64)
    args = _epoch(plan, X, Y, np.float64, batch=6, lr=1e-3, dropout=dropout)
    args["order"] = np.arange(6)
    before = args["params"].copy()
    _core.train_epoch(**args)
    grad = (before - args["params"]) / 1e-3
    table, keep = args["table"], args["keep"]
    positions = np.arange(6)

    def loss(params):
        A = ref._forward(X, params, table, 0.05, keep, args["seed"], positions)[0]
        return -np.sum(Y * np.log(A[-1])) / 6

    h, numeric = 1e-6, np.empty_like(before)
    for i in range(len(before)):
        up, down = before.copy(), before.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = (loss(up) - loss(down)) / (2 * h)
    assert np.count_nonzero(keep < 1) == 3
    assert_allclose(grad, numeric, rtol=1e-4, atol=1e-7)
    assert all(np.count_nonzero(W) > 0 for W, _ in _kernels.param_views(grad, table))
    # and the masks did something: without them the gradient differs
    plain = _epoch(plan, X, Y, np.float64, batch=6, lr=1e-3, params=before.copy())
    plain["keep"], plain["order"] = np.ones(len(table)), np.arange(6)
    _core.train_epoch(**plain)
    assert not np.allclose((before - plain["params"]) / 1e-3, grad, rtol=1e-3)


# -------------------------------------------------------------- PyTorch

def _torch_net(torch, net):
    """PyTorch modules computing what a fastnn conv net computes (float64),
    fastnn's HWIO weights permuted to PyTorch's OIHW; activations kept NHWC
    at the flatten so that the Dense weights are used as they are."""
    F = torch.nn.functional
    params = []
    for W, b in zip(net.weights, net.biases):
        Wt = torch.from_numpy(W.transpose(3, 2, 0, 1).copy() if W.ndim == 4 else W.T.copy())
        params += [Wt.requires_grad_(), torch.from_numpy(b.copy()).requires_grad_()]

    def forward(x):
        a = x.reshape(-1, *net.input_shape).permute(0, 3, 1, 2)      # NHWC rows -> NCHW
        k, z = 0, None
        for layer, shape_in, act in zip(net.layers, net.plan.shapes, net.activations):
            if isinstance(layer, Conv2D):
                top, bottom, left, right = layer.padding_amounts(shape_in)
                z = F.conv2d(F.pad(a, (left, right, top, bottom)), params[k], params[k + 1],
                             stride=layer.stride)
                k += 2
            elif isinstance(layer, MaxPool2D):
                a = F.max_pool2d(a, layer.size, layer.stride)
                continue
            elif isinstance(layer, L2Pool2D):
                a = F.lp_pool2d(a, 2, layer.size, layer.stride)
                continue
            elif isinstance(layer, Dense):
                if a.dim() == 4:
                    a = a.permute(0, 2, 3, 1).flatten(1)             # HWC order, as fastnn
                z = F.linear(a, params[k], params[k + 1])
                k += 2
            else:
                continue
            a = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                 "softmax": lambda t: t}[act](z)
        return z                                                        # logits
    return params, forward


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_three_steps_match_torch(optimizer):
    torch = needs("torch")
    rng = np.random.default_rng(10)
    m, n = 5, 15
    spec = [(9, 8, 2), Conv2D(4, 3, padding="same"), MaxPool2D(2), Conv2D(5, 2, stride=2),
            L2Pool2D(2, stride=1), Dense(6, activation="tanh"), Dense(3)]
    net = Network(spec, activation="relu", output="softmax", loss="cross_entropy",
                  dtype="float64", seed=3, init="he")
    X = rng.uniform(0, 1, (n, net.sizes[0]))
    y = rng.integers(0, 3, n)
    l2, l1, lr = 0.4, 0.2, {"sgd": 0.2, "adam": 0.01}[optimizer]
    params, forward = _torch_net(torch, net)
    weights, biases = params[0::2], params[1::2]
    groups = [{"params": weights, "weight_decay": l2 / n}, {"params": biases, "weight_decay": 0}]
    opt = (torch.optim.SGD(groups, lr=lr) if optimizer == "sgd"
           else torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8))
    for step in range(3):
        rows = slice(step * m, (step + 1) * m)
        cost = torch.nn.functional.cross_entropy(forward(torch.from_numpy(X[rows])),
                                                 torch.from_numpy(y[rows]))
        cost = cost + l1 / n * sum(W.abs().sum() for W in weights)
        opt.zero_grad()
        cost.backward()
        opt.step()
    net.fit(X, y, epochs=1, batch_size=m, lr=lr, optimizer=optimizer, l2=l2, l1=l1,
            shuffle=False)
    for W, b, Wt, bt in zip(net.weights, net.biases, weights, biases):
        Wt = Wt.detach().numpy()
        Wt = Wt.transpose(2, 3, 1, 0) if W.ndim == 4 else Wt.T
        assert_allclose(W, Wt, rtol=1e-9, atol=1e-12)
        assert_allclose(b, bt.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_forward_matches_torch_in_float32():
    torch = needs("torch")
    rng = np.random.default_rng(11)
    net = Network([(12, 12, 3), Conv2D(6, 5, padding="same"), MaxPool2D(2), Conv2D(4, 3),
                   L2Pool2D(2), Dense(10)], activation="sigmoid", output="softmax",
                  loss="cross_entropy", seed=0)
    X = rng.integers(0, 256, (50, 432)).astype(np.uint8)
    params, forward = _torch_net(torch, net)
    with torch.no_grad():
        want = torch.softmax(forward(torch.from_numpy(X / np.float32(255)).float()), 1).numpy()
    assert_allclose(net.forward(X), want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------ the table's checks

def _conv_args():
    plan = Plan.parse([(6, 6, 1), Conv2D(2, 3), MaxPool2D(2), Dense(3)], output="softmax")
    X, Y = _data(10, (6, 6, 1), np.float64)
    return _epoch(plan, X, Y, np.float64, batch=5)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.__setitem__((0, _kernels.T_KIND), 7), "unknown layer kind 7"),
    (lambda t: t.__setitem__((1, _kernels.T_IN_C), 3), r"takes 4x4x3 inputs, but the layer "
                                                       r"before gives \(4, 4, 2\)"),
    (lambda t: t.__setitem__((0, _kernels.T_SH), 3),
     "4x4 outputs need windows beyond the padded input"),
    (lambda t: t.__setitem__((0, _kernels.T_PT), 3), "padding must be smaller than the window"),
    (lambda t: t.__setitem__((1, _kernels.T_KH), 3), "pooling windows must lie inside"),
    (lambda t: t.__setitem__((1, _kernels.T_W_OFF), 20), "pooling layers have no parameters"),
    (lambda t: t.__setitem__((1, _kernels.T_ACT), 3), "pooling layers have no activation"),
    (lambda t: t.__setitem__((2, _kernels.T_W_OFF), 0), "its weights must be at offset 20"),
    (lambda t: t.__setitem__((0, _kernels.T_SH), 0), "must be >= 1"),
    (lambda t: t.__setitem__((0, _kernels.T_IN_H), 2**31), "more than 2147483647 entries"),
    (lambda t: t.__setitem__((2, _kernels.T_OUT_H), 2), "a dense layer's output is 1x1xO"),
])
def test_inconsistent_tables_are_refused_before_the_kernel_runs(change, message):
    args = _conv_args()
    change(args["table"])
    before = args["params"].copy()
    with pytest.raises(ValueError, match=message):
        _core.train_epoch(**args)
    assert_array_equal(args["params"], before)


def test_single_kernels_refuse_bad_shapes_and_indices():
    X = np.zeros((2, 5, 5, 2))
    with pytest.raises(ValueError, match="conv2d_forward: shapes do not match"):
        _core.conv2d_forward(X, np.zeros((3, 3, 1, 4)), np.zeros(4), (1, 1), (0, 0),
                             np.empty((2, 3, 3, 4)))
    with pytest.raises(ValueError, match="windows beyond the padded input"):
        _core.conv2d_forward(X, np.zeros((3, 3, 2, 4)), np.zeros(4), (1, 1), (0, 0),
                             np.empty((2, 6, 5, 4)))
    with pytest.raises(ValueError, match="pooling windows must lie inside"):
        _core.maxpool_forward(X, (2, 2), (2, 2), np.empty((2, 3, 3, 2)),
                              np.empty((2, 3, 3, 2), np.int32))
    idx = np.zeros((2, 2, 2, 2), np.int32)
    idx[1, 1, 1, 1] = 50
    with pytest.raises(ValueError, match="argmax holds an index outside the sample"):
        _core.maxpool_backward(np.ones((2, 2, 2, 2)), idx, np.empty_like(X))


# ---------------------------------------------------------------- MNIST

def test_a_small_conv_net_learns_mnist(mnist):
    (X, y), (X_test, y_test) = mnist
    net = Network([(28, 28, 1), Conv2D(8, 5), MaxPool2D(2), Dense(10)], activation="relu",
                  output="softmax", loss="cross_entropy", init="he", seed=0)
    net.fit(X[:3000].reshape(-1, 28, 28), y[:3000], epochs=1, batch_size=10, lr=0.05)
    accuracy = net.evaluate(X_test[:1000], y_test[:1000])["accuracy"]
    assert accuracy > 0.85, accuracy


# ------------------------------------------------------------ thread teams

def _team(args, threads, slices=None):
    from fastnn.blas import single_threaded_blas

    slices = slices or threads
    run = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
           "control": args["control"].copy(), "n_threads": threads, "slices": slices,
           "work": np.empty(_core.workspace_size(args["table"], args["capacity"], args["keep"],
                                                 slices), args["params"].dtype)}
    with single_threaded_blas():
        result = _core.train_epoch(**run)
    return result, run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rprop"])
def test_a_team_of_threads_takes_the_steps_of_one(optimizer, dtype):
    # each thread takes a slice of each batch's rows, then a share of the
    # parameters for the step: one thread's result up to round-off
    plan = Plan.parse(EPOCH_NET, activation="relu", output="softmax")
    X, Y = _data(37, (8, 8, 2))
    args = _epoch(plan, X, Y, dtype, batch=37 if optimizer == "rprop" else 7, capacity=3,
                  optimizer=optimizer, lr=0.02, l2=0.3, l1=0.1, dropout=[0.25],
                  augment=_kernels.SHIFT)
    (status, loss, hits), one = _team(args, 1)
    tol = {np.float32: 2e-6, np.float64: 1e-14}[dtype]
    for threads in (2, 3):
        (status_t, loss_t, hits_t), team = _team(args, threads)
        assert status_t == status == _kernels.DONE and hits_t == hits
        assert_array_equal(team["control"], one["control"])
        assert_allclose(loss_t, loss, rtol=tol)
        assert_allclose(team["params"], one["params"], rtol=tol * 10, atol=tol)
        assert_allclose(team["state"], one["state"], rtol=tol * 10, atol=tol)
    again = _team(args, 2)[1]
    assert_array_equal(again["params"], _team(args, 2)[1]["params"])    # deterministic


@pytest.fixture
def defer_from():
    """defer_from(weights): a team's SGD epoch steps dense layers of that
    many weights after each batch, rows split (restored)."""
    before = _core.set_defer_weights()
    yield _core.set_defer_weights
    _core.set_defer_weights(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("deferred", [False, True])
def test_a_team_steps_a_deferred_dense_layer_as_one_thread_does(threads, deferred, dtype,
                                                                defer_from, placement):
    # plain SGD, a dense layer of 64 x 20 weights: deferred, each thread
    # steps its rows of W from every thread's activations and deltas after
    # the batch (no gradient of W to sum); with L2, dropout before it, and
    # batches whose rows leave a thread of three with none (37 = 5 x 7 + 2)
    defer_from(1 if deferred else 10 ** 9)
    placement("near")
    plan = Plan.parse([(8, 8, 2), Conv2D(4, 3, padding="same"), MaxPool2D(2), Dropout(0.2),
                       Dense(20), Dense(3)], activation="sigmoid", output="softmax")
    X, Y = _data(37, (8, 8, 2), dtype)
    args = _epoch(plan, X, Y, dtype, batch=7, capacity=4, lr=0.5, l2=0.3)
    (status, loss, hits), one = _team(args, 1)
    before = _core.deferred_epochs_run()
    (status_t, loss_t, hits_t), team = _team(args, threads)
    # float64 never defers (its steps would need BLAS): summed as before
    assert _core.deferred_epochs_run() == before + (deferred and dtype == np.float32)
    assert status_t == status == _kernels.DONE and hits_t == hits
    assert_array_equal(team["control"], one["control"])
    tol = {np.float32: 2e-6, np.float64: 1e-14}[dtype]
    assert_allclose(loss_t, loss, rtol=tol)
    assert not np.array_equal(one["params"], args["params"])
    assert_allclose(team["params"], one["params"], rtol=tol * 10, atol=tol)
    assert_array_equal(team["params"], _team(args, threads)[1]["params"])   # deterministic
    # threads far apart: each keeps its own copy of the deferred W and steps
    # all its rows, from the same A and D in the same order: the same bits
    placement("far")
    replicated = _core.replicated_epochs_run()
    (status_f, loss_f, hits_f), far = _team(args, threads)
    assert _core.replicated_epochs_run() == replicated + (deferred and dtype == np.float32)
    assert (status_f, loss_f, hits_f) == (status_t, loss_t, hits_t)
    assert_array_equal(far["params"], team["params"])
    assert_array_equal(far["state"], team["state"])
    # measured (the default): the round trip between the threads decides
    placement("measured")
    replicated = _core.replicated_epochs_run()
    assert_array_equal(_team(args, threads)[1]["params"], team["params"])
    assert _core.replicated_epochs_run() - replicated in (0, 1)


def _same_run(a, b):
    (result_a, run_a), (result_b, run_b) = a, b
    assert result_a == result_b         # status, the loss's bits, the correct rows
    for key in ("params", "state", "control"):
        assert_array_equal(run_a[key], run_b[key])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer,clip", [("sgd", None), ("adam", None), ("adam", 0.05),
                                            ("rprop", None)])
def test_a_team_trains_the_same_bits_on_fewer_threads(optimizer, clip, dtype):
    # a team that splits rows cuts each batch into `slices`, and sums their
    # gradients (and, with clipping, their squares) in order: on a busy
    # machine it forms on fewer threads, and must give the same weights,
    # loss and hits, bit for bit (dropout, shifted images, L1 and L2 too;
    # 37 rows = 5 batches of 7 and one of 2, which leaves a slice of three
    # with no rows)
    plan = Plan.parse(EPOCH_NET, activation="relu", output="softmax")
    X, Y = _data(37, (8, 8, 2))
    args = _epoch(plan, X, Y, dtype, batch=37 if optimizer == "rprop" else 7, capacity=2,
                  optimizer=optimizer, lr=0.02, l2=0.3, l1=0.1, dropout=[0.25],
                  augment=_kernels.SHIFT)
    args["hyper"] = hyper_array(0.02, 0.3 / 37, 0.1 / 37, betas=(0.8, 0.99), clip_norm=clip)
    for slices in (2, 3):
        whole = _team(args, slices)
        assert whole[0][0] == _kernels.DONE
        assert not np.array_equal(whole[1]["params"], args["params"])
        for threads in range(1, slices):
            _same_run(_team(args, threads, slices), whole)


@pytest.mark.parametrize("placement_name", ["near", "far"])
def test_a_deferred_layer_is_stepped_alike_by_fewer_threads(placement_name, defer_from,
                                                            placement):
    # plain SGD with a deferred dense layer (float32): the team of one steps
    # all of W's rows, a team of three a third each, and the far team keeps
    # copies of W; all of them give the bits of the team of three
    defer_from(1)
    placement(placement_name)
    plan = Plan.parse([(8, 8, 2), Conv2D(4, 3, padding="same"), MaxPool2D(2), Dropout(0.2),
                       Dense(20), Dense(3)], activation="sigmoid", output="softmax")
    X, Y = _data(37, (8, 8, 2), np.float32)
    args = _epoch(plan, X, Y, np.float32, batch=7, capacity=3, lr=0.5, l2=0.3)
    before = _core.deferred_epochs_run()
    whole = _team(args, 3)
    assert _core.deferred_epochs_run() == before + 1
    for threads in (1, 2):
        _same_run(_team(args, threads, 3), whole)
    assert _core.deferred_epochs_run() == before + 3


def test_a_dense_adam_team_trains_the_same_bits_on_fewer_threads():
    # the team a float32 dense network's Adam epoch takes
    plan = Plan.parse([12, 8, 4], activation="relu", output="softmax")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((45, 12)).astype(np.float32)
    Y = one_hot(rng.integers(0, 4, 45), 4)
    args = _epoch(plan, X, Y, np.float32, batch=10, capacity=5, optimizer="adam", lr=0.01)
    whole = _team(args, 2)
    _same_run(_team(args, 1, 2), whole)
    one = _team(args, 1)            # one slice: one thread's own epoch, round-off apart
    assert_allclose(one[1]["params"], whole[1]["params"], rtol=1e-5, atol=1e-6)


def test_slices_are_checked():
    plan = Plan.parse([(6, 6, 1), Conv2D(2, 3), Dense(3)], output="softmax")
    X, Y = _data(8, (6, 6, 1), np.float64)
    args = _epoch(plan, X, Y, np.float64, batch=4)
    with pytest.raises(ValueError, match=r"slices must be in \[n_threads, 1024\]"):
        _team(args, 3, 2)
    # a workspace of two regions does not hold three slices
    run = {**args, "n_threads": 1, "slices": 3,
           "work": np.empty(_core.workspace_size(args["table"], 4, args["keep"], 2))}
    with pytest.raises(ValueError, match="workspace has"):
        _core.train_epoch(**run)


def test_a_team_stops_and_diverges_together():
    plan = Plan.parse([(6, 6, 1), Conv2D(2, 3), MaxPool2D(2), Dense(3)], output="softmax")
    X, Y = _data(20, (6, 6, 1), np.float64)
    args = _epoch(plan, X, Y, np.float64, batch=4)
    args["control"][_kernels.STOP_REQUEST] = 1
    (status, _, _), run = _team(args, 2)
    assert status == _kernels.STOPPED and run["control"][_kernels.ROWS_DONE] == 0
    args["control"][_kernels.STOP_REQUEST] = 0
    args["X"][args["order"][9]] = np.inf                 # in the third batch
    (status, _, _), run = _team(args, 2)
    assert status == _kernels.DIVERGED and run["control"][_kernels.ROWS_DONE] == 8
    assert np.isfinite(run["params"]).all()


def test_team_workspace_is_checked():
    plan = Plan.parse([(6, 6, 1), Conv2D(2, 3), Dense(3)], output="softmax")
    X, Y = _data(8, (6, 6, 1), np.float64)
    args = _epoch(plan, X, Y, np.float64, batch=4)
    args["n_threads"] = 2                 # with a one-thread workspace
    with pytest.raises(ValueError, match="workspace has"):
        _core.train_epoch(**args)


def test_a_team_workspace_holds_the_parameter_copies():
    # workspace_size counts n_threads - 1 copies of the parameters (and a
    # line to align them) after the threads' regions: a workspace without
    # that room is refused before any thread starts, as a short one is
    plan = Plan.parse([(6, 6, 1), Conv2D(2, 3), Dense(3)], output="softmax")
    X, Y = _data(8, (6, 6, 1), np.float32)
    args = _epoch(plan, X, Y, np.float32, batch=4)
    table, P = args["table"], len(args["params"])
    one = _core.workspace_size(table, args["capacity"], args["keep"])
    for threads in (2, 3):
        size = _core.workspace_size(table, args["capacity"], args["keep"], threads)
        lines = -(-P // 16) * 16
        assert size == threads * (one + P) + (threads - 1) * lines + 16
        run = {**args, "n_threads": threads, "work": np.empty(size - 17, np.float32)}
        with pytest.raises(ValueError, match="workspace has"):
            _core.train_epoch(**run)


def test_far_apart_threads_keep_their_copies_inside_the_workspace(defer_from, placement):
    # the copies go in the room workspace_size leaves after the threads'
    # regions: entries past the workspace stay as they were, and that room
    # holds each copy (the trained parameters, bit for bit)
    from fastnn.blas import single_threaded_blas

    defer_from(1)
    placement("far")
    plan = Plan.parse([(8, 8, 2), Conv2D(4, 3, padding="same"), MaxPool2D(2), Dense(20),
                       Dense(3)], activation="sigmoid", output="softmax")
    X, Y = _data(37, (8, 8, 2), np.float32)
    args = _epoch(plan, X, Y, np.float32, batch=7, capacity=4, lr=0.5)
    table, P = args["table"], len(args["params"])
    for threads in (2, 3):
        size = _core.workspace_size(table, args["capacity"], args["keep"], threads)
        mark = np.float32(12345.0)
        buffer = np.full(size + 64, mark, np.float32)
        run = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
               "control": args["control"].copy(), "n_threads": threads, "work": buffer[:size]}
        replicated = _core.replicated_epochs_run()
        with single_threaded_blas():
            status, _, _ = _core.train_epoch(**run)
        assert status == _kernels.DONE and _core.replicated_epochs_run() == replicated + 1
        assert (buffer[size:] == mark).all()
        width = -(-P // 16) * 16            # each copy on 64-byte lines
        room = buffer[size - (threads - 1) * width - 16:size]
        first = (-room.ctypes.data) % 64 // 4
        for t in range(threads - 1):        # each copy ends as the params do
            assert_array_equal(room[first + t * width:first + t * width + P], run["params"])


def test_fit_of_a_conv_net_matches_the_reference_with_any_thread_count():
    from fastnn import blas

    rng = np.random.default_rng(12)
    X, y = rng.integers(0, 256, (40, 64)).astype(np.uint8), rng.integers(0, 3, 40)
    spec = [(8, 8, 1), Conv2D(3, 3), MaxPool2D(2), Dense(5), Dense(3)]
    ref_net = Network(spec, activation="tanh", output="softmax", loss="cross_entropy",
                      dtype="float64", seed=0, backend="numpy")
    ref_net.fit(X, y, epochs=2, batch_size=8, lr=0.1, optimizer="momentum", dropout=0.2)
    before = blas.get_num_threads()
    try:
        for threads in (1, 2):
            blas.set_num_threads(threads)
            net = Network(spec, activation="tanh", output="softmax", loss="cross_entropy",
                          dtype="float64", seed=0)
            net.fit(X, y, epochs=2, batch_size=8, lr=0.1, optimizer="momentum", dropout=0.2)
            assert_allclose(net._params, ref_net._params, rtol=1e-11, atol=1e-13)
    finally:
        blas.set_num_threads(before)


def test_a_team_epoch_runs_with_a_single_threaded_blas(monkeypatch):
    # the limit must be set by the thread that called fit: threadpoolctl lets
    # only one thread (here the main one, by set_num_threads) change
    # OpenBLAS's, and a limit set in the epoch's worker thread did nothing
    from fastnn import blas, training

    seen = []
    run_epoch = training.run_epoch

    def spy(*args, **kwargs):
        seen.append([lib["num_threads"] for lib in blas._blas().info()])
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "run_epoch", spy)
    monkeypatch.setattr(blas, "idle_cores", lambda: 2)    # whatever else runs now
    before = blas.get_num_threads()
    try:
        blas.set_num_threads(2)
        net = Network([(6, 6, 1), Conv2D(2, 3), Dense(3)], output="softmax",
                      loss="cross_entropy", seed=0)
        assert training.team_threads(net) == 2
        net.fit(np.zeros((20, 36)), np.zeros(20, int), epochs=2)
        assert seen and all(n == 1 for counts in seen for n in counts), seen
        assert all(lib["num_threads"] == 2 for lib in blas._blas().info())
    finally:
        blas.set_num_threads(before)


def test_class_weights_l1_and_float32_train_a_conv_net_as_the_reference():
    rng = np.random.default_rng(13)
    X, y = rng.integers(0, 256, (30, 50)).astype(np.uint8), rng.integers(0, 3, 30)
    spec = [(5, 10, 1), Conv2D(3, (2, 3), stride=(1, 2)), L2Pool2D(2, stride=1), Dense(3)]
    nets = [Network(spec, activation="leaky_relu", output="softmax", loss="cross_entropy",
                    seed=0, backend=backend) for backend in ("cython", "numpy")]
    for net in nets:
        hist = net.fit(X, y, epochs=2, batch_size=6, optimizer="nesterov", lr=0.05, l1=0.3,
                       l2=0.2, class_weight="balanced")
        assert "penalty" in hist
    assert_allclose(nets[0]._params, nets[1]._params, rtol=1e-4, atol=1e-5)
    assert_allclose(nets[0].predict(X), nets[1].predict(X))


def test_the_memory_estimate_counts_a_conv_nets_windows_and_refuses_before_allocating(
        monkeypatch):
    from fastnn import memory
    from fastnn.exceptions import ResourceError

    # a few hundred parameters, but a 996 x 996 x 8 output and 996*996*75
    # entries of im2col windows per row (the kernel makes them in chunks)
    net = Network([(1000, 1000, 3), Conv2D(8, 5)], seed=0)
    table, keep = net.plan.table()
    work = _core.workspace_size(table, 1, keep)
    assert net.plan.window_entries() == 996 * 996 * 5 * 5 * 3
    estimate = memory.training_bytes(net.plan, 4, 1, work, 1, 2)
    assert work > 2 * 996 * 996 * 8          # activations and deltas, and windows
    assert estimate >= work * 4
    # the NumPy reference reports no workspace: the bound still counts the windows
    assert memory.training_bytes(net.plan, 4, 1, 0, 1, 2) >= net.plan.window_entries() * 4
    X = np.zeros((2, 1000 * 1000 * 3), np.uint8)
    y = np.zeros((2, 996 * 996 * 8), np.float32)
    monkeypatch.setattr(memory, "available_bytes", lambda: estimate - 1)
    allocated = []
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    with pytest.raises(ResourceError, match="training a network of input shape "
                       r"\(1000, 1000, 3\) and 1 layers with sgd needs .* of memory"):
        net.fit(X, y, epochs=1, batch_size=1, lr=0.1)
    assert not any(np.prod(a[0]) >= work for a in allocated if a and np.ndim(a[0]) <= 1)
    assert net.epochs_trained == 0
