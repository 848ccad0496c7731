"""bfloat16 mixed precision (Network(dtype="bfloat16"), issue 23).

The oracle is the NumPy reference, which rounds the same operands of the same
products (fastnn._reference.round_bf16); the rounding itself is checked
against a table worked out by hand from the bit patterns, and against
PyTorch's float32 -> bfloat16 conversion. bfloat16 has 8 significant bits:
rounding to nearest, an operand's relative error is at most u = 2**-8, a
product of two rounded operands's (1 + u)**2 - 1.
"""
import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs
from numpy.testing import assert_allclose, assert_array_equal

from fastnn import Network, _core, _kernels, blas, io
from fastnn import _reference as ref
from fastnn.exceptions import ConfigError, FastnnWarning, ModelFileError
from fastnn.layers import Conv2D, Dense, Dropout, MaxPool2D
from fastnn.losses import LOSSES
from fastnn.optimizers import OPTIMIZERS, hyper_array
from fastnn.plan import Plan

U = 2.0 ** -8       # bfloat16's unit round-off (8 significant bits)

pytestmark = pytest.mark.filterwarnings("ignore::fastnn.exceptions.FastnnWarning")


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def floats(words):
    return np.asarray(words, np.uint32).view(np.float32)


def core_round(x):
    x = np.ascontiguousarray(x, np.float32).ravel()
    out = np.empty_like(x)
    _core.round_bf16(x, out)
    return out


# ---------------------------------------------------------------- rounding

# (float32 bits, bfloat16 result as float32 bits), each worked out by hand:
# the kept half is the upper 16 bits; the lower 16 decide, 0x8000 is a tie.
TABLE = [
    (0x3F800000, 0x3F800000),   # 1.0 exact
    (0x3F808000, 0x3F800000),   # 1 + 2^-8: tie between 1 and 1 + 2^-7, to even (1.0)
    (0x3F818000, 0x3F820000),   # 1 + 3 * 2^-8: tie, to even (1 + 2^-6)
    (0x3F808001, 0x3F810000),   # just above the tie: up
    (0x3F807FFF, 0x3F800000),   # just below it: down
    (0x3F804000, 0x3F800000),   # 1 + 2^-9: down
    (0xBF818000, 0xBF820000),   # -(1 + 3 * 2^-8): ties to even, sign kept
    (0x3FFFFFFF, 0x40000000),   # carry into the exponent: 1.99999... -> 2
    (0x00000000, 0x00000000),   # +0
    (0x80000000, 0x80000000),   # -0 keeps its sign
    (0x7F7F0000, 0x7F7F0000),   # the largest bfloat16 (3.3895e38) is exact
    (0x7F7F7FFF, 0x7F7F0000),   # below the tie above it: stays finite
    (0x7F7F8000, 0x7F800000),   # tie, odd: up, past the largest: +inf
    (0x7F7FFFFF, 0x7F800000),   # float32's largest overflows to +inf
    (0xFF7FFFFF, 0xFF800000),   # and its negative to -inf
    (0x7F800000, 0x7F800000),   # +inf
    (0xFF800000, 0xFF800000),   # -inf
    (0x7FC00000, 0x7FC00000),   # quiet NaN
    (0x7F800001, 0x7FC00000),   # a NaN whose payload is all in the low bits: NaN, not inf
    (0xFFC00001, 0xFFC00000),   # negative NaN: sign and upper payload kept
    (0x7FA00000, 0x7FE00000),   # signalling NaN: made quiet
    (0x00000001, 0x00000000),   # the smallest subnormal rounds to 0
    (0x00008000, 0x00000000),   # subnormal tie, even: 0
    (0x00018000, 0x00020000),   # subnormal tie, odd: up
    (0x00010000, 0x00010000),   # the smallest bfloat16 subnormal is exact
    (0x0000FFFF, 0x00010000),   # up to it
    (0x007FFFFF, 0x00800000),   # the largest subnormal rounds to the smallest normal
    (0x80018000, 0x80020000),   # negative subnormal tie
]


@pytest.mark.parametrize("round_bf16", [ref.round_bf16, core_round], ids=["reference", "core"])
def test_rounding_matches_the_hand_computed_table(round_bf16):
    x = floats([a for a, _ in TABLE])
    with np.errstate(invalid="ignore"):
        got = bits(round_bf16(x))
    for (a, want), g in zip(TABLE, got):
        assert g == want, f"{a:#010x} -> {int(g):#010x}, expected {want:#010x}"


def test_core_and_reference_round_every_bit_pattern_alike():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    words[:4] = [0x7F800001, 0xFFFFFFFF, 0x7FFFFFFF, 0x8000FFFF]
    x = floats(words)
    with np.errstate(invalid="ignore"):
        assert_array_equal(bits(core_round(x)), bits(ref.round_bf16(x)))


def test_rounding_matches_torch():
    torch = needs("torch")
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, 50_000), rng.normal(0, 1e30, 1000),
                        rng.normal(0, 1e-39, 1000)]).astype(np.float32)
    x = np.concatenate([x, floats(rng.integers(0, 2 ** 32, 50_000, dtype=np.uint64)
                                  .astype(np.uint32))])
    x = x[~np.isnan(x)]
    theirs = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert_array_equal(bits(ref.round_bf16(x)), bits(theirs))


def test_rounded_values_are_bfloat16_and_within_half_an_ulp():
    x = np.random.default_rng(2).normal(0, 100, 10_000).astype(np.float32)
    r = ref.round_bf16(x)
    assert not (bits(r) & 0xFFFF).any()
    assert np.all(np.abs(r.astype(np.float64) - x) <= U * np.abs(x))


# --------------------------------------------- bfloat16 against float32: bounds

def test_a_dense_layer_is_within_the_bfloat16_bound_of_float32():
    # |bf16(x) . bf16(w) - x . w| <= ((1 + u)^2 - 1) sum |x_i w_i|, plus float32's
    # own round-off of the sums (I * 2^-24 of the same sum, generously)
    I, O = 300, 40
    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (64, I)).astype(np.float32)
    nets = {d: Network([I, O], activation="identity", dtype=d, seed=0)
            for d in ("float32", "bfloat16")}
    W = nets["float32"].weights[0]
    assert_array_equal(nets["bfloat16"].weights[0], W)     # the same float32 masters
    exact = X.astype(np.float64) @ W + nets["float32"].biases[0]
    scale = np.abs(X).astype(np.float64) @ np.abs(W)
    bound = ((1 + U) ** 2 - 1 + I * 2.0 ** -24) * scale
    for backend in ("cython", "numpy"):
        bf = Network([I, O], activation="identity", dtype="bfloat16", seed=0, backend=backend)
        error = np.abs(bf.forward(X) - exact)
        assert np.all(error <= bound)
        # and bfloat16 is really used: far from float32's own error
        assert error.max() > 100 * 2.0 ** -24 * scale.max()


def test_a_convolution_is_within_the_bfloat16_bound_of_float32():
    shape, conv = (9, 9, 3), Conv2D(5, 3, padding="same")
    rng = np.random.default_rng(4)
    X = rng.normal(0, 1, (6, *shape)).astype(np.float32)
    net = Network([shape, conv], activation="identity", dtype="bfloat16", seed=0)
    W, b = net.weights[0].astype(np.float64), net.biases[0].astype(np.float64)
    exact = np.empty((6, 9, 9, 5))
    ref.conv2d_forward(X.astype(np.float64), W, b, (1, 1), (1, 1), exact)
    scale = np.empty_like(exact)
    ref.conv2d_forward(np.abs(X).astype(np.float64), np.abs(W), 0 * b, (1, 1), (1, 1), scale)
    bound = ((1 + U) ** 2 - 1 + W.size * 2.0 ** -24) * scale.reshape(6, -1)
    error = np.abs(net.forward(X) - exact.reshape(6, -1))
    assert np.all(error <= bound)
    assert error.max() > 1e-5


def test_bfloat16_training_stays_close_to_float32():
    # one epoch of SGD on 600 rows (60 steps): the weights of bfloat16 training
    # differ from float32's by much less than how far training moved them
    rng = np.random.default_rng(5)
    X = rng.normal(0, 1, (600, 20)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(int) + (X[:, 3] > 1)
    nets = {}
    for dtype in ("float32", "bfloat16"):
        net = Network([20, 32, 16, 3], activation="relu", output="softmax",
                      loss="cross_entropy", init="he", dtype=dtype, seed=0)
        start = [W.copy() for W in net.weights]
        net.fit(X, y, epochs=1, batch_size=10, lr=0.05)
        nets[dtype] = net
    moved = max(np.abs(W - W0).max() for W, W0 in zip(nets["float32"].weights, start))
    drift = max(np.abs(a - b).max()
                for a, b in zip(nets["bfloat16"].weights, nets["float32"].weights))
    assert 0 < drift <= 0.05 * moved
    assert (nets["bfloat16"].predict(X) == nets["float32"].predict(X)).mean() > 0.97


# ------------------------------------- the kernels against the NumPy reference

CONV_NET = [(8, 8, 2), Dropout(0.2), Conv2D(4, 3, padding="same"), MaxPool2D(2),
            Conv2D(6, 2), Dropout(0.1), Dense(12), Dense(3)]
DENSE_NET = [30, 24, 16, 3]


def _args(sizes, n=40, batch=8, capacity=None, optimizer="adam", augment=_kernels.NO_AUGMENT,
          dropout=None, seed=6, activation="relu"):
    plan = Plan.parse(sizes, activation=activation, output="softmax")
    table, keep = plan.table(dropout, (8, 8, 2) if augment == _kernels.SHIFT else None)
    rng = np.random.default_rng(seed)
    X = rng.random((n, plan.sizes[0])).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    params = np.empty(plan.n_params, np.float32)
    from fastnn.initializers import INITIALIZERS
    plan.init(params, INITIALIZERS["he"], rng)
    opt = OPTIMIZERS[optimizer]
    capacity = capacity or batch
    return dict(X=X, Y=Y, order=rng.permutation(n), params=params,
                state=opt.new_state(plan.n_params, np.float32, 0.01), table=table, keep=keep,
                slope=0.05, loss=LOSSES["cross_entropy"].code, batch_size=batch,
                capacity=capacity, optimizer=opt.code, hyper=hyper_array(0.01, 0.001, 0.0),
                sample_weight=np.empty(0, np.float32), augment=augment, seed=9,
                work=np.empty(0, np.float32), control=np.zeros(_kernels.N_CONTROL, np.int64))


def _train(kernels, args, bf16=True, threads=1):
    run = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
           "control": args["control"].copy(), "n_threads": threads, "bf16": bf16}
    run["work"] = np.empty(kernels.workspace_size(args["table"], args["capacity"],
                                                  args["keep"], threads, bf16=bf16), np.float32)
    with blas.single_threaded_blas():
        status, loss, hits = kernels.train_epoch(**run)
    assert status == _kernels.DONE
    return run["params"], loss


CASES = {
    "dense": dict(sizes=DENSE_NET),
    "dense-chunks": dict(sizes=DENSE_NET, batch=16, capacity=5),
    "dense-sgd-fused": dict(sizes=DENSE_NET, optimizer="sgd"),
    "dense-small-batch": dict(sizes=DENSE_NET, batch=4, optimizer="sgd", dropout=[0.2, 0.1]),
    "conv": dict(sizes=CONV_NET),
    "conv-shift-chunks": dict(sizes=CONV_NET, batch=10, capacity=3, augment=_kernels.SHIFT),
    "conv-sgd-fused": dict(sizes=CONV_NET, optimizer="sgd", batch=5),
}


def assert_beside(mine, theirs, f32, share=0.05):
    """mine agrees with theirs (both bfloat16) within `share` of float32's
    distance from theirs.

    Both round the same operands, so they agree to float32 round-off (here
    about 1e-3 of float32's distance), except where a float32 sum lands on
    one side of a bfloat16 rounding boundary in one and on the other side in
    the other: that operand then moves by 2^-8 of itself. How often depends
    on the BLAS's order of summation (rarely: about 1e-5 of the roundings),
    so the bound leaves room for such a flip, and still fails if any product
    were not rounded."""
    gap, far = np.abs(mine - theirs).max(), np.abs(f32 - theirs).max()
    assert gap <= share * far, (gap, far)


@pytest.mark.parametrize("case", CASES)
def test_the_kernels_train_as_the_reference_does_in_bfloat16(case):
    args = _args(**CASES[case])
    mine, loss = _train(_core, args)
    theirs, ref_loss = _train(ref, args)
    f32, f32_loss = _train(_core, args, bf16=False)
    assert abs(loss - ref_loss) <= 0.05 * abs(f32_loss - ref_loss)
    assert_beside(mine, theirs, f32)


@pytest.mark.parametrize("case", ["dense", "conv-shift-chunks"])
def test_a_team_of_threads_trains_as_one_in_bfloat16(case):
    # each thread rounds into the scratch of its own workspace
    args = _args(**CASES[case])
    one, _ = _train(_core, args)
    f32, _ = _train(_core, args, bf16=False)
    for threads in (2, 3):
        team, _ = _train(_core, args, threads=threads)
        assert_beside(team, one, f32)


@pytest.mark.parametrize("sizes", [DENSE_NET, CONV_NET])
def test_gradient_and_forward_match_the_reference_in_bfloat16(sizes):
    nets = [Network(sizes, activation="relu", output="softmax", loss="cross_entropy",
                    dtype="bfloat16", seed=1, backend=b) for b in ("cython", "numpy")]
    rng = np.random.default_rng(7)
    n = 1100      # more than one forward chunk (1,024 rows): a team of threads
    X = rng.random((n, nets[0].plan.n_inputs)).astype(np.float32)
    y = rng.integers(0, 3, n)
    f32 = Network(sizes, activation="relu", output="softmax", loss="cross_entropy", seed=1)
    out = [net.forward(X) for net in (*nets, f32)]
    # row by row: all but a rare row (an operand rounded across a bfloat16
    # boundary, see assert_beside) agree to float32 round-off; most of
    # float32's rows do not
    rows = [np.abs(o - out[1]).max(axis=1) for o in out]
    assert np.mean(rows[0] > 1e-6) <= 0.01 and rows[0].max() <= 1e-2
    assert np.mean(rows[2] > 1e-6) > 0.5
    grads = [net.gradient(X[:50], y[:50]) for net in (*nets, f32)]
    flat = [np.concatenate([a.ravel() for a in g.weights + g.biases]) for g in grads]
    assert_beside(flat[0], flat[1], flat[2])
    assert abs(grads[0].loss - grads[1].loss) <= 0.05 * abs(grads[2].loss - grads[1].loss)


# The kernels a bfloat16 product may run here: the emulation everywhere, AMX
# tiles (src_c/amxgemm.h) where the CPU and the OS have them, and AVX512_BF16's
# VDPBF16PS on the same packed tiles where the CPU has it (chosen only here).
PATHS = (["emulated"] + (["amx"] if _core.amx_available() else [])
         + (["avx512_bf16"] if _core.vdpbf16_available() else []))


@pytest.fixture(params=PATHS)
def bf16_path(request):
    # VDPBF16PS products below _core's VDP_TEAM_WORK run on one thread: here
    # every product takes the BLAS's thread count, so that the tests' small
    # products run the team too (the thread-count tests below then show that
    # one thread and the team give the same bits, which the default relies on)
    previous = _core.set_bf16_kernel(request.param)
    work = _core.set_vdp_team_work(0)
    assert _core.bf16_kernel_name() == request.param
    assert _core.native_bf16() == (request.param != "emulated")
    yield request.param
    _core.set_vdp_team_work(work)
    _core.set_bf16_kernel(previous)


SHAPES = [(1, 1, 1), (5, 7, 3), (16, 32, 16), (33, 65, 17), (17, 33, 49), (40, 300, 70),
          (64, 0, 5)]


@pytest.mark.parametrize("M, K, N", SHAPES)
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_a_product_is_the_exact_product_of_the_rounded_operands(bf16_path, M, K, N, ta, tb):
    # alpha bf(op(A)) bf(op(B)) + beta C, to float32's round-off of K + 2 terms,
    # whatever the transposes, edges of tiles and K past a multiple of 32;
    # beta == 0 never reads C (a NaN there stays out)
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    for alpha, beta in [(1, 0), (0.5, 1), (-0.3, 0.7)]:
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        C0 = np.full((M, N), np.nan, np.float32) if beta == 0 else \
            rng.standard_normal((M, N)).astype(np.float32)
        C = C0.copy()
        _core.gemm_bf16_matmul(A, B, C, alpha, beta, ta, tb)
        a = ref.round_bf16(np.ascontiguousarray(A.T if ta else A)).astype(np.float64)
        b = ref.round_bf16(np.ascontiguousarray(B.T if tb else B)).astype(np.float64)
        c = 0 if beta == 0 else beta * C0.astype(np.float64)
        exact = alpha * (a @ b) + c
        scale = abs(alpha) * (np.abs(a) @ np.abs(b)) + np.abs(c)
        assert np.all(np.abs(C - exact) <= (K + 2) * 2.0 ** -24 * scale + 1e-30), (alpha, beta)


@pytest.mark.parametrize("M, K, N", SHAPES)
@pytest.mark.parametrize("ta", [False, True])
def test_a_product_reads_a_table_of_rows_as_their_gathered_copy(bf16_path, M, K, N, ta):
    # training reads a batch's rows of X in place through the epoch's order:
    # op(A) from A[rows] (rows repeated, out of order, some of A's left out),
    # the same bits as from the gathered copy, either transpose
    rng = np.random.default_rng(M * 100 + K + N)
    n_rows = K if ta else M
    A = rng.standard_normal((n_rows + 7, M if ta else K)).astype(np.float32)
    rows = rng.integers(0, len(A), n_rows)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C, gathered = np.zeros((M, N), np.float32), np.zeros((M, N), np.float32)
    _core.gemm_bf16_matmul(A, B, C, 0.5, 0, ta, False, rows)
    _core.gemm_bf16_matmul(np.ascontiguousarray(A[rows]), B, gathered, 0.5, 0, ta, False)
    assert_array_equal(C, gathered)


def test_a_table_of_rows_outside_the_matrix_is_refused():
    A = np.ones((4, 3), np.float32)
    C = np.zeros((2, 5), np.float32)
    for rows in ([0, 4], [-1, 0]):
        with pytest.raises(ValueError, match=r"row index -?\d+ is outside \[0, 4\)"):
            _core.gemm_bf16_matmul(A, np.ones((3, 5), np.float32), C,
                                   a_rows=np.array(rows, np.int64))


X_IN_PLACE = {
    "sgd": dict(optimizer="sgd"),
    "adam": dict(optimizer="adam"),
    "chunks": dict(optimizer="adam", batch=16, capacity=5),
    "relu-sgd-chunks": dict(optimizer="sgd", batch=16, capacity=6),
}


@pytest.mark.parametrize("case", X_IN_PLACE)
def test_an_epoch_reading_its_rows_in_place_trains_the_same_bits(bf16_path, case):
    # a bfloat16 dense network's first layer takes the chunk's rows of X in
    # place (no gathered copy): forward and weight step, whole and in chunks
    args = _args([30, 40, 16, 3], n=60, **X_IN_PLACE[case])
    out = []
    for on in (True, False):
        previous = _core.set_x_in_place(on)
        before = _core.x_in_place_epochs_run()
        try:
            params, _ = _train(_core, args)
        finally:
            _core.set_x_in_place(previous)
        assert _core.x_in_place_epochs_run() == before + on
        out.append(params)
    assert not np.array_equal(out[0], args["params"])
    assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("why", ["uint8 rows", "input dropout", "float32 network",
                                 "convolution first"])
def test_rows_are_gathered_where_they_cannot_be_read_in_place(why):
    # uint8 pixels are scaled as they are gathered, input dropout masks the
    # copy, and only gemm_bf16 takes a table of rows
    sizes = {"convolution first": CONV_NET,
             "input dropout": [30, Dropout(0.2), Dense(40), Dense(3)]}.get(why, [30, 40, 3])
    args = _args(sizes, n=40)
    if why == "uint8 rows":
        args["X"] = (args["X"] * 255).astype(np.uint8)
    before = _core.x_in_place_epochs_run()
    _train(_core, args, bf16=why != "float32 network")
    assert _core.x_in_place_epochs_run() == before


@pytest.mark.parametrize("M, K, N", [(40, 300, 70), (100, 64, 130)])
def test_a_product_is_the_same_on_any_bf16_thread_count(bf16_path, M, K, N):
    # native: each tile of C is summed by one thread in one order, whoever
    # takes it; emulated: the count is not the BLAS's, and changes nothing
    rng = np.random.default_rng(3)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    out = []
    for threads in (1, 2, 3):
        previous = _core.set_bf16_threads(threads)
        try:
            C = np.zeros((M, N), np.float32)
            _core.gemm_bf16_matmul(A, B, C)
        finally:
            _core.set_bf16_threads(previous)
        out.append(C)
    assert_array_equal(out[0], out[1])
    assert_array_equal(out[0], out[2])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_an_epoch_is_the_same_bits_on_any_bf16_thread_count(bf16_path, activation, optimizer):
    # natively, the passes between a bfloat16 network's products (the bias,
    # the activation and its derivative, the bias gradient) split over the
    # products' threads from _core's EW_SPLIT (32,768) entries on, each
    # thread whole rows or columns: 128 rows x 300 units are split, x 130 not
    args = _args([64, 300, 130, 3], n=300, batch=128, optimizer=optimizer,
                 activation=activation)
    out = []
    for threads in (1, 2, 3):
        run = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
               "control": args["control"].copy(), "n_threads": 1, "bf16": True}
        run["work"] = np.empty(_core.workspace_size(args["table"], args["capacity"],
                                                    args["keep"], 1, bf16=True), np.float32)
        previous = _core.set_bf16_threads(threads)
        try:
            status, loss, _ = _core.train_epoch(**run)
        finally:
            _core.set_bf16_threads(previous)
        assert status == _kernels.DONE and np.isfinite(loss)
        out.append(run["params"])
    assert not np.array_equal(out[0], args["params"])
    assert_array_equal(out[0], out[1])
    assert_array_equal(out[0], out[2])


def test_blas_limits_give_a_native_product_their_thread_count():
    previous = _core.set_bf16_threads(2)
    try:
        with blas.single_threaded_blas():
            assert _core.set_bf16_threads(1) == 1
        assert _core.set_bf16_threads(2) == 2
    finally:
        _core.set_bf16_threads(previous)


def _within(got, exact, scale, what):
    """|got - exact| <= 1e-5 scale: float32's round-off of sums whose terms'
    magnitudes add up to scale (a product whose operands were rounded
    otherwise, or not at all, is off by up to 2^-8 of each term)."""
    error = np.abs(got - exact)
    assert np.all(error <= 1e-5 * scale + 1e-30), f"{what}: {error.max():.3g}"


def test_each_dense_product_rounds_exactly_its_operands(bf16_path):
    # One network's own numbers as the oracle, so that no float32 sum is
    # rounded twice: its outputs A (one chunk, as gradient computes them),
    # the output delta D = A - Y (mse, identity), then in float64 from the
    # rounded operands: forward bf(X) bf(W1)... is checked through the last
    # layer, the weight gradient bf(A1)^T bf(D) / n through a one-layer
    # network, the input gradient through the first layer's bias gradient
    # sum_rows(bf(D) bf(W2)^T) / n, and each bias gradient sums D as it is.
    r, f8 = ref.round_bf16, np.float64
    rng = np.random.default_rng(8)
    X = rng.normal(0, 1, (40, 30)).astype(np.float32)
    for sizes in ([30, 7], [30, 12, 7]):
        net = Network(sizes, activation="identity", loss="mse", dtype="bfloat16", seed=4)
        Y = rng.normal(0, 1, (40, 7)).astype(np.float32)
        n, W, b = len(X), net.weights, net.biases
        A, g = net.forward(X), net.gradient(X, Y)
        D = (A - Y).astype(f8)
        _within(g.biases[-1], D.sum(axis=0) / n, np.abs(D).sum(axis=0) / n, "output bias")
        if len(sizes) == 2:
            x, w = r(X).astype(f8), r(W[0]).astype(f8)
            _within(A, x @ w + b[0], np.abs(x) @ np.abs(w) + np.abs(b[0]), "forward")
            d = r(A - Y).astype(f8)
            _within(g.weights[0], x.T @ d / n, np.abs(x).T @ np.abs(d) / n, "weight gradient")
        else:
            d, w = r(A - Y).astype(f8), r(W[1]).astype(f8)
            _within(g.biases[0], (d @ w.T).sum(axis=0) / n,
                    (np.abs(d) @ np.abs(w).T).sum(axis=0) / n, "input gradient")


@pytest.mark.parametrize("rows", [40, 300])
def test_a_relu_layer_is_its_linear_twin_clipped_at_zero(bf16_path, rows):
    # natively the bias and a ReLU are applied as the product stores its
    # tiles (amxgemm.h's epilogue), elsewhere in passes over the outputs:
    # either way max(x W + b, 0) of the very same x W + b, bit for bit
    rng = np.random.default_rng(9)
    X = rng.normal(0, 1, (rows, 70)).astype(np.float32)
    linear, relu = (Network([70, 37], output=out, loss="mse", dtype="bfloat16", seed=4)
                    for out in ("identity", "relu"))
    A, B = linear.forward(X), relu.forward(X)
    assert_array_equal(B.view(np.uint32), np.maximum(A, 0).view(np.uint32))
    assert (A < 0).any() and (A > 0).any()


def test_each_convolution_product_rounds_exactly_its_operands(bf16_path):
    # as test_each_dense_product_rounds_exactly_its_operands, through the
    # im2col GEMMs: a first layer with one channel (im2col transposed, the
    # path smallgemm.h takes in float32) and a padded second one
    r, f8 = ref.round_bf16, np.float64
    rng = np.random.default_rng(9)
    X = rng.normal(0, 1, (5, 9, 9, 1)).astype(np.float32)
    one = [(9, 9, 1), Conv2D(4, 3)]
    for sizes in (one, [*one, Conv2D(3, 3, padding="same")]):
        net = Network(sizes, activation="identity", loss="mse", dtype="bfloat16", seed=4)
        n, W, b = len(X), net.weights, net.biases
        Y = rng.normal(0, 1, (n, net.sizes[-1])).astype(np.float32)
        A, g = net.forward(X), net.gradient(X, Y)
        D = (A - Y).astype(f8).reshape(n, 7, 7, -1)
        _within(g.biases[-1], D.sum(axis=(0, 1, 2)) / n, np.abs(D).sum(axis=(0, 1, 2)) / n,
                "output bias")
        if len(sizes) == 2:
            x, w = r(X).astype(f8), r(W[0]).astype(f8)
            exact, scale = np.empty((n, 7, 7, 4)), np.empty((n, 7, 7, 4))
            ref.conv2d_forward(x, w, b[0], (1, 1), (0, 0), exact)
            ref.conv2d_forward(np.abs(x), np.abs(w), np.abs(b[0]), (1, 1), (0, 0), scale)
            _within(A, exact.reshape(n, -1), scale.reshape(n, -1), "forward")
            d = r(A - Y).astype(f8).reshape(n, 7, 7, 4)
            dW, dW_scale, db = np.empty_like(w), np.empty_like(w), np.empty(4)
            ref.conv2d_backward(x, w, d, (1, 1), (0, 0), dW, db)
            ref.conv2d_backward(np.abs(x), w, np.abs(d), (1, 1), (0, 0), dW_scale, db)
            _within(g.weights[0], dW / n, dW_scale / n, "weight gradient")
        else:
            d, w = r(A - Y).astype(f8).reshape(n, 7, 7, 3), r(W[1]).astype(f8)
            A1 = np.zeros((n, 7, 7, 4))
            dA, dA_scale = np.empty_like(A1), np.empty_like(A1)
            dW, db = np.empty_like(w), np.empty(3)
            ref.conv2d_backward(A1, w, d, (1, 1), (1, 1), dW, db, dA)
            ref.conv2d_backward(A1, np.abs(w), np.abs(d), (1, 1), (1, 1), dW, db, dA_scale)
            _within(g.biases[0], dA.sum(axis=(0, 1, 2)) / n, dA_scale.sum(axis=(0, 1, 2)) / n,
                    "input gradient")


def test_the_kernels_refuse_bfloat16_on_float64_parameters():
    args = _args(DENSE_NET)
    run = {**args, "X": args["X"].astype(np.float64), "Y": args["Y"].astype(np.float64),
           "params": args["params"].astype(np.float64),
           "state": args["state"].astype(np.float64),
           "sample_weight": np.empty(0), "work": np.empty(10 ** 5), "bf16": True}
    with pytest.raises(ValueError, match="bfloat16 network's parameters are float32"):
        _core.train_epoch(**run)


def test_the_bfloat16_workspace_holds_the_rounded_operands():
    table, _ = Plan.parse(DENSE_NET).table()
    plain, bf = _core.workspace_size(table, 8), _core.workspace_size(table, 8, bf16=True)
    # the largest product's operands: the first layer's A (8, 30) and W (30, 24);
    # where AMX or AVX512_BF16 can multiply (amxgemm.h), the largest product's
    # packed tiles (tiles of 16 rows, an even count of them, by 32 of the
    # summed size; 64 bytes to align)
    expected = 8 * 30 + 30 * 24
    if _core.amx_available() or _core.vdpbf16_available():
        def tiles(x):
            return (-(-x // 16) + 1) // 2 * 2

        def packed(a, b, summed):
            return (tiles(a) + tiles(b)) * -(-summed // 32) * 256 + 16

        expected = max(expected, packed(8, 24, 30), packed(8, 30, 24), packed(30, 24, 8))
    assert bf - plain == expected
    args = _args(DENSE_NET)
    run = {**args, "work": np.empty(bf - 1, np.float32), "bf16": True}
    with pytest.raises(ValueError, match="workspace has"):
        _core.train_epoch(**run)


# ------------------------------------------------------------------- the API

def test_a_bfloat16_network_keeps_float32_masters():
    net = Network([4, 3, 2], dtype="bfloat16", seed=0)
    assert net.dtype == np.float32 and net.compute_dtype == "bfloat16"
    assert net.weights[0].dtype == np.float32
    assert "dtype='bfloat16'" in repr(net)
    assert eval(repr(net), {"Network": Network}).compute_dtype == "bfloat16"
    X = np.random.default_rng(0).normal(size=(30, 4))
    net.fit(X, np.arange(30) % 2, epochs=1, batch_size=5, lr=0.1, optimizer="adam")
    assert net.optimizer_state.state.dtype == np.float32
    assert net.summary(print_fn=None).count("bfloat16") >= 1
    for other in ("float32", "float64", np.float32, np.dtype("float64")):
        assert Network([4, 2], dtype=other).compute_dtype == np.dtype(other).name


@pytest.mark.parametrize("dtype", ["bf16", "float16", "bfloat", np.int32])
def test_an_unknown_dtype_names_the_valid_ones(dtype):
    with pytest.raises(ConfigError) as info:
        Network([4, 2], dtype=dtype)
    assert str(info.value).startswith("dtype must be one of ['bfloat16', 'float32', 'float64']")
    assert "\n" not in str(info.value)


def test_a_pickled_bfloat16_network_stays_bfloat16():
    import pickle

    net = Network([4, 3, 2], dtype="bfloat16", seed=0)
    back = pickle.loads(pickle.dumps(net))
    assert back.compute_dtype == "bfloat16" and back.dtype == np.float32
    X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert_array_equal(back.forward(X), net.forward(X))
    state = net.__getstate__()
    del state["compute_dtype"]             # pickled by a fastnn before bfloat16
    old = Network.__new__(Network)
    old.__setstate__(state)
    assert old.compute_dtype == "float32"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_scikit_learn_estimators_take_bfloat16():
    needs("sklearn")
    from fastnn.sklearn import MLPClassifier

    X = np.random.default_rng(0).normal(size=(60, 5))
    y = (X[:, 0] > 0).astype(int)
    model = MLPClassifier(hidden_layer_sizes=(8,), dtype="bfloat16", max_iter=3).fit(X, y)
    assert model.network_.compute_dtype == "bfloat16" and model.network_.dtype == np.float32
    assert model.predict(X).shape == (60,)


def test_the_warning_is_said_once_and_names_the_cpu(monkeypatch):
    monkeypatch.setattr(blas, "_bf16_said", False)
    monkeypatch.setattr(blas, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(blas, "native_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Network([4, 2], dtype="bfloat16")
        Network([4, 2], dtype="bfloat16")
        Network([4, 2], dtype="float32")
    assert [w.category for w in seen] == [FastnnWarning]
    assert "no AVX512_BF16" in str(seen[0].message)
    assert "gains no speed" in str(seen[0].message)
    assert seen[0].filename == __file__          # points at the caller's line
    # a CPU with AVX512_BF16 whose native kernels are not in use: said too
    monkeypatch.setattr(blas, "_bf16_said", False)
    monkeypatch.setattr(blas, "cpu_has_bf16", lambda: True)
    with pytest.warns(FastnnWarning, match="has AVX512_BF16, but fastnn emulates"):
        Network([4, 2], dtype="bfloat16")
    # where the products run on AMX tiles, nothing is said
    monkeypatch.setattr(blas, "_bf16_said", False)
    monkeypatch.setattr(blas, "native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Network([4, 2], dtype="bfloat16")
    assert "natively" in blas.bf16_speed()


def test_native_bfloat16_is_on_where_the_cpu_gives_amx_tiles_or_vdpbf16ps_on_an_amd_core():
    # AMX tiles first; else AVX512_BF16's VDPBF16PS on AMD's cores (Zen 4 and
    # 5 issue it at twice float32's FMA rate); else (Intel without AMX, where
    # it runs at float32's rate) the emulation. The vendor is read here from
    # /proc/cpuinfo, apart from the kernel's own CPUID check.
    with open("/proc/cpuinfo") as f:
        fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                      if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    amd = fields.get("vendor_id") == "AuthenticAMD"
    best = ("amx" if _core.amx_available() else
            "avx512_bf16" if amd and _core.vdpbf16_available() else "emulated")
    assert _core.bf16_kernel_name() == best
    assert _core.native_bf16() == (best != "emulated")
    assert blas.native_bf16() == _core.native_bf16()
    if not {"amx_tile", "amx_bf16"} <= set(flags):
        assert not _core.amx_available()
    if "avx512_bf16" not in flags:
        assert not _core.vdpbf16_available()


def test_set_bf16_kernel_names_the_choices_and_refuses_what_the_cpu_lacks():
    with pytest.raises(ValueError, match="unknown bfloat16 kernel 'vnni'; choose one of "
                                         "emulated, amx, avx512_bf16"):
        _core.set_bf16_kernel("vnni")
    for name, available in [("amx", _core.amx_available()),
                            ("avx512_bf16", _core.vdpbf16_available())]:
        if not available:
            with pytest.raises(ValueError, match="this CPU"):
                _core.set_bf16_kernel(name)


def test_cpu_has_bf16_reads_the_cpu_flags():
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    assert blas.cpu_has_bf16() == ("avx512_bf16" in flags.split())


# -------------------------------------------------------------- model files

@pytest.mark.parametrize("sizes", [[5, 4, 3], [(6, 6, 1), Conv2D(2, 3), MaxPool2D(2), Dense(3)]])
def test_save_and_load_keep_float32_weights_and_the_dtype(tmp_path, sizes):
    net = Network(sizes, activation="relu", output="softmax", loss="cross_entropy",
                  dtype="bfloat16", seed=2)
    rng = np.random.default_rng(0)
    X = rng.random((40, net.plan.n_inputs)).astype(np.float32)
    net.fit(X, np.arange(40) % 3, epochs=2, batch_size=8, lr=0.05, optimizer="adam")
    path = tmp_path / "m.safetensors"
    net.save(path)
    header = io.read_header(path)
    assert {t.dtype for t in header.tensors.values()} == {np.dtype("<f4")}
    network = json.loads(header.metadata["network"])
    assert network["dtype"] == "float32" and network["compute_dtype"] == "bfloat16"
    back = io.load(path)
    assert back.compute_dtype == "bfloat16" and back.dtype == np.float32
    assert_array_equal(back._params, net._params)
    assert_array_equal(back.optimizer_state.state, net.optimizer_state.state)
    assert_array_equal(back.forward(X), net.forward(X))
    # the same bytes again: the header is deterministic
    net.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_float_files_are_written_as_before(tmp_path):
    net = Network([5, 4, 3], seed=2)
    net.save(tmp_path / "m.safetensors")
    network = json.loads(io.read_metadata(tmp_path / "m.safetensors")["network"])
    assert "compute_dtype" not in network
    assert io.load(tmp_path / "m.safetensors").compute_dtype == "float32"


def _rewrite_network(path, **changes):
    """The model file at path with its network field changed (tensors kept)."""
    header = io.read_header(path)
    meta = dict(header.metadata)
    meta["network"] = json.dumps({**json.loads(meta["network"]), **changes})
    net = io.load(path)
    tensors = {n: a for n, a in zip([x for p in header.format.tensor_names(net.plan) for x in p],
                                    [a for W, b in zip(net.weights, net.biases) for a in (W, b)])}
    if changes.get("dtype") == "float64":
        tensors = {n: a.astype(np.float64) for n, a in tensors.items()}
    path.write_bytes(io.safetensors_bytes(tensors, meta))


@pytest.mark.parametrize("changes, message", [
    (dict(compute_dtype="float16"), r"compute_dtype must be one of \['bfloat16'\]"),
    (dict(dtype="float64"), r"network.dtype must be 'float32' \(the tensors of a bfloat16 "
                            r"network\), not \"float64\""),
])
def test_a_bad_compute_dtype_in_a_file_is_refused(tmp_path, changes, message):
    path = tmp_path / "m.safetensors"
    Network([5, 4, 3], dtype="bfloat16", seed=2).save(path)
    _rewrite_network(path, **changes)
    with pytest.raises(ModelFileError, match=message) as info:
        io.load(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- CLI

def _csv(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    path = tmp_path / "tiny.csv"
    path.write_text("a,b,c,d,label\n" + "".join(
        ",".join(f"{v:.4f}" for v in row) + f",{label}\n" for row, label in zip(X, y)))
    return path


def test_cli_trains_evaluates_and_predicts_in_bfloat16(tmp_path, monkeypatch, bf16_path):
    from fastnn.cli import main

    monkeypatch.setattr(blas, "_bf16_said", False)
    data, model = _csv(tmp_path), tmp_path / "m.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("always")     # as a plain Python process would show it
        result = CliRunner().invoke(main, ["train", str(data), "--hidden", "8", "--epochs",
                                           "20", "--dtype", "bfloat16", "--seed", "1",
                                           "--optimizer", "adam", "--lr", "0.01",
                                           "-o", str(model)])
    assert result.exit_code == 0, result.output
    assert "dtype='bfloat16'" in result.stdout
    # emulated: said once, in one line, without a traceback; native: nothing to say
    assert result.stderr.count("Warning: this CPU") == (bf16_path == "emulated")
    assert "FastnnWarning" not in result.stderr
    net = io.load(model)
    assert net.compute_dtype == "bfloat16" and net.dtype == np.float32
    report = CliRunner().invoke(main, ["eval", str(model), str(data), "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["accuracy"] > 0.8
    info = CliRunner().invoke(main, ["info", str(model)])
    assert "dtype='bfloat16'" in info.stdout


def test_cli_refuses_an_unknown_dtype_naming_the_choices(tmp_path):
    from fastnn.cli import main

    result = CliRunner().invoke(main, ["train", str(_csv(tmp_path)), "--dtype", "bf16",
                                       "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2
    assert "'bf16' is not one of 'bfloat16', 'float32', 'float64'" in result.stderr


# -------------------------------------------------------------------- MNIST

@pytest.mark.slow
def test_modern_recipe_reaches_98_3_percent_in_bfloat16(mnist):
    # tests/test_mnist.py's modern recipe, the target for bfloat16
    (X, y), (X_test, y_test) = mnist
    net = Network([784, 512, 256, 10], activation="relu", output="softmax",
                  loss="cross_entropy", init="he", dtype="bfloat16", seed=0)
    net.fit(X[:50000], y[:50000], epochs=20, batch_size=128, optimizer="adam", lr=1e-3,
            dropout=0.2, lr_schedule="step:every=5,factor=0.5")
    accuracy = net.evaluate(X_test, y_test)["accuracy"]
    print(f"modern recipe in bfloat16: test accuracy {accuracy:.2%}")
    assert accuracy >= 0.983
