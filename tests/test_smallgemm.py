"""smallgemm.h's float32 kernels and the small-batch epoch that uses them
(_core.train_units_impl): against float64 NumPy products, the BLAS path, the
NumPy reference backend, and themselves on one and two threads."""
import os

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastnn
from fastnn import _core, blas, training
from fastnn.exceptions import TrainingDiverged
from fastnn.layers import Conv2D, Dense
from fastnn.optimizers import get_optimizer, hyper_array

from conftest import small_gemm_isas

IDLE_CORES = blas.idle_cores   # before the fixture below replaces it

pytestmark = pytest.mark.skipif(not _core.small_gemm_available(),
                                reason="the CPU lacks AVX2 or FMA")


ISAS = small_gemm_isas()


def test_the_best_kernels_the_cpu_has_are_chosen():
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "").split()
    wanted = ["avx2"] + (["avx512"] if {"avx512f", "avx512vl"} <= set(flags) else [])
    assert ISAS == wanted
    assert _core.small_gemm_isa() == wanted[-1]
    with pytest.raises(ValueError, match="avx2, avx512"):
        _core.set_small_gemm_isa("sse")


ROWS_PER_UNITS_THREAD = dict(training.ROWS_PER_UNITS_THREAD)   # before the fixture below


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """The team sizes of these tests, whatever else runs on the machine: two
    threads from 10 rows on, whichever kernels the CPU runs."""
    monkeypatch.setattr(blas, "idle_cores", lambda: 2)
    monkeypatch.setattr(training, "ROWS_PER_UNITS_THREAD", {"avx2": 5, "avx512": 5})


def test_a_units_thread_takes_more_rows_with_the_avx512_kernels(monkeypatch):
    """The AVX-512 kernel does a batch in half the time, so a team pays for
    its barriers only from 16 rows a thread (5 with AVX2's)."""
    monkeypatch.setattr(training, "ROWS_PER_UNITS_THREAD", ROWS_PER_UNITS_THREAD)
    assert ROWS_PER_UNITS_THREAD == {"avx2": 5, "avx512": 16}
    per = ROWS_PER_UNITS_THREAD[_core.small_gemm_isa()]
    assert training.rows_per_units_thread() == per
    before = blas.get_num_threads()
    try:
        blas.set_num_threads(2)
        net = fastnn.Network([64, 30, 10])
        assert training.team_threads(net, units=True, batch_size=2 * per) == 2
        assert training.team_threads(net, units=True, batch_size=2 * per - 1) == 1
        for isa in ISAS:
            previous = _core.set_small_gemm_isa(isa)
            try:
                assert training.rows_per_units_thread() == ROWS_PER_UNITS_THREAD[isa]
            finally:
                _core.set_small_gemm_isa(previous)
    finally:
        blas.set_num_threads(before)


class AlwaysTeam:
    """training.TEAM_PACE choosing the team every epoch: the machine's pace is
    not what these tests check."""

    def __init__(self):
        self.chosen = []

    def threads(self, key, team):
        self.chosen.append(team)
        return team

    def record(self, key, threads, rate):
        pass


@pytest.fixture
def small_rows(monkeypatch):
    """Set _core's small-batch limit (and the thread count) for one test; a
    team of that many threads whatever else runs, every epoch."""
    from fastnn import training

    monkeypatch.setattr(blas, "idle_cores", lambda: 2)
    monkeypatch.setattr(training, "TEAM_PACE", AlwaysTeam())
    before_rows, before_threads = _core.get_small_rows(), blas.get_num_threads()

    def set_(rows, threads=None):
        _core.set_small_rows(rows)
        if threads is not None:
            blas.set_num_threads(threads)

    yield set_
    _core.set_small_rows(before_rows)
    blas.set_num_threads(before_threads)


SHAPES = [(M, K, N) for M in (1, 5, 6, 7, 11, 12, 13, 25) for K in (0, 1, 10, 64, 65, 300)
          for N in (1, 2, 3, 4, 7, 8, 9, 16, 17, 30, 32, 33, 100)]


@pytest.mark.parametrize("M, K, N", SHAPES)
@pytest.mark.parametrize("transpose_a", [False, True])
def test_small_gemm_is_the_product(M, K, N, transpose_a, isa):
    """C := beta C + alpha op(A) B for every tail of rows and columns (the
    last panel's pieces of 8, 4, 2 and 1 columns among them), short
    K (the stack copy of alpha B) and long, beta 0 (C not read), 1 and other."""
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A = rng.standard_normal((K, M) if transpose_a else (M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C = rng.standard_normal((M, N)).astype(np.float32)
    op = (A.T if transpose_a else A).astype(np.float64)
    for alpha, beta in [(1, 0), (1, 1), (0.5, 1), (-0.3, 0.9), (2, 0)]:
        out = np.full_like(C, np.nan) if beta == 0 else C.copy()
        _core.small_gemm(A, B, out, alpha, beta, transpose_a)
        expected = alpha * (op @ B) + (beta * C.astype(np.float64) if beta else 0)
        # the float32 GEMM bound: |error| <= (K + 2) u (|alpha| |op| |B| + |beta C|)
        bound = (K + 2) * 2 ** -24 * (abs(alpha) * (np.abs(op) @ np.abs(B))
                                      + abs(beta) * np.abs(C)) + 1e-30
        assert (np.abs(out - expected) <= bound).all()


def test_small_gemm_reads_nothing_past_its_operands(isa):
    """B's rows are read 16 entries at a time; the last ones must not run past
    B (a view at the end of a larger buffer whose tail would poison C)."""
    rng = np.random.default_rng(0)
    for N in (1, 3, 15):
        big = np.full((40 * N + 16,), np.nan, np.float32)
        B = big[:40 * N].reshape(40, N)
        B[...] = rng.standard_normal(B.shape)
        A = rng.standard_normal((3, 40)).astype(np.float32)
        C = np.zeros((3, N), np.float32)
        _core.small_gemm(A, B, C, 1.0, 0.0)
        assert np.isfinite(C).all()
        assert_allclose(C, A.astype(np.float64) @ B, atol=1e-5)


@pytest.mark.parametrize("N, I, O", [(N, I, O) for N in (1, 4, 5, 10) for I in (1, 2, 3, 4, 300)
                                     for O in (1, 7, 9, 16, 17, 30)])
def test_small_nt_is_the_product_with_a_transpose(N, I, O, isa):
    """Both forms: W transposed through a stack buffer in chunks of 256 rows
    (O <= 16), dot products in blocks of 4 x 3 (wider); blocks cut short on
    every side (N, I and O not multiples of 4, 3 and 8)."""
    rng = np.random.default_rng(N * 100 + I * 10 + O)
    D = rng.standard_normal((N, O)).astype(np.float32)
    W = rng.standard_normal((I, O)).astype(np.float32)
    out = np.full((N, I), np.nan, np.float32)
    _core.small_nt(D, W, out)
    bound = (O + 2) * 2 ** -24 * (np.abs(D) @ np.abs(W).T) + 1e-30
    assert (np.abs(out - D.astype(np.float64) @ W.T) <= bound).all()


def test_every_kernel_gives_the_same_bits():
    """AVX-512's blocks (12 rows x 32 columns, masked edges) and AVX2's (6 x
    16, the last panel in pieces) compute each entry the same way, so a
    network trains to the same weights on either kind of CPU."""
    rng = np.random.default_rng(7)
    for M in (1, 5, 10, 12, 13, 25, 392):
        for N in (1, 4, 15, 16, 17, 30, 32, 33, 100):
            for K in (0, 1, 10, 64, 65, 784):
                for alpha, beta, transpose_a in [(1, 0, False), (1, 1, False), (1, 0.5, False),
                                                 (-0.3, 0.99, True), (-0.3, 0, True),
                                                 (0.7, 1, False)]:
                    A = rng.standard_normal((K, M) if transpose_a else (M, K)).astype(np.float32)
                    B = rng.standard_normal((K, N)).astype(np.float32)
                    C = rng.standard_normal((M, N)).astype(np.float32)
                    outs = []
                    for isa in ISAS:
                        before = _core.set_small_gemm_isa(isa)
                        out = C.copy()
                        _core.small_gemm(A, B, out, alpha, beta, transpose_a)
                        _core.set_small_gemm_isa(before)
                        outs.append(out)
                    for out in outs[1:]:
                        assert_array_equal(out.view(np.int32), outs[0].view(np.int32))


@pytest.mark.parametrize("K", [385, 784, 1200])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_a_long_k_in_steps_gives_each_row_its_own_bits(K, beta, isa):
    """With more rows than one block, AVX2's kernel takes a K over 384 in
    equal steps, the sums stored in C between them (so a panel's step of B
    stays in L1): every entry the same FMAs in the same order as a row
    alone (one block: no steps), bit for bit, whatever the row's place."""
    rng = np.random.default_rng(K)
    A = rng.standard_normal((30, K)).astype(np.float32)
    B = rng.standard_normal((K, 37)).astype(np.float32)
    C0 = rng.standard_normal((30, 37)).astype(np.float32)
    together = C0.copy()
    _core.small_gemm(A, B, together, 1.0, beta)
    for i in range(30):
        alone = C0[i:i + 1].copy()
        _core.small_gemm(A[i:i + 1], B, alone, 1.0, beta)
        assert_array_equal(together[i:i + 1].view(np.int32), alone.view(np.int32))


@pytest.mark.parametrize("block", [0, 1, 12 * 4 * 300, 1 << 30])
def test_many_rows_are_packed_and_blocked_to_the_same_bits(block, isa):
    """From 48 rows on (AVX-512's products; with AVX2 only predict's forward,
    from 128 rows), the kernel packs B and goes through A in blocks of rows
    and steps along K (256; AVX2's equal steps of at most 384), the sums
    stored in C between steps: every entry is still computed as the unpacked
    kernel computes it, which 12 rows at a time (below the packing
    threshold) give. Blocks of one group of rows (block 1), of a few, and of
    all of them; K across the steps; beta 0 with a NaN in C (not read), 1
    and another; A as it is and transposed."""
    try:
        _core.set_small_gemm_block(block)
        rng = np.random.default_rng(block % 1000)
        for M, K, N in [(48, 1, 1), (49, 255, 33), (100, 256, 32), (130, 257, 100),
                        (300, 784, 30), (61, 513, 17), (1024, 130, 10), (128, 385, 16),
                        (200, 769, 47)]:
            A = rng.standard_normal((M, K)).astype(np.float32)
            B = rng.standard_normal((K, N)).astype(np.float32)
            AT = np.ascontiguousarray(A.T)
            for beta in (0.0, 1.0, 0.5):
                C = rng.standard_normal((M, N)).astype(np.float32)
                if beta == 0:
                    C[0, 0] = np.nan
                rows = C.copy()
                for i in range(0, M, 12):
                    _core.small_gemm(A[i:i + 12], B, rows[i:i + 12], 1.0, beta)
                assert np.isfinite(rows).all()
                for forward in (False, True):
                    packed, transposed = C.copy(), C.copy()
                    _core.small_gemm(A, B, packed, 1.0, beta, forward=forward)
                    _core.small_gemm(AT, B, transposed, 1.0, beta, transpose_a=True,
                                     forward=forward)
                    assert_array_equal(packed.view(np.int32), rows.view(np.int32))
                    assert_array_equal(transposed.view(np.int32), rows.view(np.int32))
    finally:
        _core.set_small_gemm_block(0)


def test_small_kernels_refuse_shapes_that_do_not_match():
    A = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="alpha 1"):
        _core.small_gemm(A, np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32), 0.5,
                         forward=True)
    with pytest.raises(ValueError, match="shapes do not match"):
        _core.small_gemm(A, np.zeros((5, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="shapes do not match"):
        _core.small_nt(A, np.zeros((2, 5), np.float32), np.zeros((3, 2), np.float32))


def data(n=1003, features=64, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, features), dtype=np.float32), rng.integers(0, classes, n)


# (Network options, fit options): each reaches train_units_impl (batches of
# 10 to 12 rows, so two threads on two, plain SGD) with something else to
# get right; 1003 rows leave a last, shorter batch.
CASES = {
    "nielsen": ({}, {"lr": 3.0}),
    "deep-softmax": ({"sizes": [64, 40, 33, 10], "activation": "tanh", "output": "softmax",
                      "loss": "cross_entropy"}, {"lr": 0.1}),
    "batch-11": ({}, {"lr": 1.0, "batch_size": 11}),
    "batch-32": ({"sizes": [64, 40, 20, 10]}, {"lr": 1.0, "batch_size": 32}),
    "l2": ({}, {"lr": 1.0, "l2": 5.0}),
    "dropout": ({"sizes": [64, 40, 20, 10]}, {"lr": 1.0, "dropout": [0.3, 0.2]}),
    "uint8": ({}, {"lr": 1.0, "uint8": True}),
    "shift": ({}, {"lr": 1.0, "augment": "shift"}),
    "weights": ({}, {"lr": 1.0, "class_weight": "balanced"}),
}


def fit(case, backend="cython", epochs=2):
    net_options, fit_options = CASES[case]
    net_options, fit_options = dict(net_options), dict(fit_options)
    sizes = net_options.pop("sizes", [64, 30, 10])
    X, y = data(features=sizes[0])
    if fit_options.pop("uint8", False):
        X = (X * 255).astype(np.uint8)
    net = fastnn.Network(sizes, seed=3, backend=backend, **net_options)
    fit_options.setdefault("batch_size", 10)
    net.fit(X, y, epochs=epochs, **fit_options)
    return net


@pytest.mark.parametrize("case", sorted(CASES))
def test_small_batches_train_the_same_on_one_and_two_threads(case, small_rows):
    """The team splits rows for the forward pass and units for the backward;
    every entry is the same sum in the same order, so the weights are the
    same bits."""
    small_rows(32, threads=1)
    one = fit(case)
    small_rows(32, threads=2)
    two = fit(case)
    from fastnn import training

    assert training.TEAM_PACE.chosen and set(training.TEAM_PACE.chosen) == {2}
    assert_array_equal(one._params, two._params)
    assert one.history["loss"][-1] == pytest.approx(two.history["loss"][-1], rel=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_small_batches_agree_with_blas_and_the_reference(case, small_rows):
    """The kernels' sums round differently from BLAS's (FMA, another order)
    and from NumPy's: float32 round-off, grown over two epochs of SGD."""
    small_rows(32, threads=2)
    fast = fit(case)
    small_rows(0)
    slow = fit(case)
    reference = fit(case, backend="numpy")
    assert_allclose(fast._params, reference._params, rtol=0, atol=5e-5)
    assert_allclose(slow._params, reference._params, rtol=0, atol=5e-5)
    assert fast.history["accuracy"][-1] == pytest.approx(reference.history["accuracy"][-1],
                                                         abs=0.005)


@pytest.mark.parametrize("case", sorted(CASES) + ["conv"])
def test_every_kernel_trains_the_same_weights(case, small_rows):
    """The small-batch epoch on two threads (and, for "conv", a first
    convolution's im2col products and a later one's packed products, its
    windows read in place) with each of the CPU's kernels: the same bits."""
    small_rows(32, threads=2)
    nets = []
    for isa in ISAS:
        before = _core.set_small_gemm_isa(isa)
        try:
            if case == "conv":
                X, y = data(features=144)
                net = fastnn.Network([(12, 12, 1), Conv2D(6, 5), fastnn.layers.MaxPool2D(2),
                                      Conv2D(20, 3), Dense(30), Dense(10)], seed=3)
                net.fit(X, y, epochs=2, batch_size=10, lr=0.5)
            else:
                net = fit(case)
        finally:
            _core.set_small_gemm_isa(before)
        nets.append(net)
    for net in nets[1:]:
        assert_array_equal(net._params, nets[0]._params)


def test_idle_cores_is_at_least_one_and_at_most_the_cores():
    assert 1 <= IDLE_CORES() <= os.cpu_count()


def test_which_fits_split_units(small_rows):
    """train_units_impl takes float32 dense nets trained by plain SGD (no L1,
    no clipping) in one-chunk batches of at most get_small_rows() rows;
    everything else keeps its path."""
    small_rows(12, threads=2)
    net = fastnn.Network([64, 30, 10])
    table, _ = net.plan.table(None, None)
    sgd, momentum = get_optimizer("sgd").code, get_optimizer("momentum").code
    plain = hyper_array(1.0)
    assert training.splits_units(net, table, sgd, plain, 10, 10)
    assert training.splits_units(net, table, sgd, plain, 12, 12)
    assert not training.splits_units(net, table, sgd, plain, 13, 13)   # over the limit
    assert not training.splits_units(net, table, sgd, plain, 10, 5)    # batches in chunks
    assert not training.splits_units(net, table, momentum, plain, 10, 10)
    assert not training.splits_units(net, table, sgd, hyper_array(1.0, l1_over_n=0.1), 10, 10)
    assert not training.splits_units(net, table, sgd, hyper_array(1.0, clip_norm=1.0), 10, 10)
    assert not training.splits_units(fastnn.Network([64, 30, 10], dtype="float64"),
                                     table, sgd, plain, 10, 10)
    conv = fastnn.Network([(8, 8, 1), Conv2D(2, 3), Dense(10)])
    assert not training.splits_units(conv, conv.plan.table(None, None)[0], sgd, plain, 10, 10)
    assert training.team_threads(net, units=True, batch_size=10) == 2
    assert training.team_threads(net, units=True, batch_size=9) == 1   # 5 rows a thread
    assert training.team_threads(net, units=True, batch_size=1) == 1
    assert training.team_threads(net) == 1
    with pytest.MonkeyPatch.context() as m:
        m.setattr(blas, "idle_cores", lambda: 1)    # the other core is busy
        assert training.team_threads(net, units=True, batch_size=10) == 1
    small_rows(0)
    assert not training.splits_units(net, table, sgd, plain, 10, 10)


def test_past_twelve_rows_only_layers_of_at_most_half_a_million_weights_take_the_kernels(
        small_rows):
    """With the AVX-512 kernels the default limit is 32 rows (12 with AVX2's),
    but from 13 rows on only for nets whose every W has at most 2**19 entries:
    a 1024 x 1024 layer stays on BLAS there (benchmarks/README.md)."""
    assert _core.get_small_rows() == (32 if _core.small_gemm_isa() == "avx512" else 12)
    small_rows(32, threads=2)
    sgd, plain = get_optimizer("sgd").code, hyper_array(1.0)
    narrow = fastnn.Network([784, 256, 128, 10])                 # 200,704 weights at most
    wide = fastnn.Network([1024, 512, 10])                       # 524,288 = 2**19
    wider = fastnn.Network([1025, 512, 10])                      # one row more
    for net, splits_at_32 in [(narrow, True), (wide, True), (wider, False)]:
        table, _ = net.plan.table(None, None)
        assert training.splits_units(net, table, sgd, plain, 12, 12)
        assert training.splits_units(net, table, sgd, plain, 13, 13) == splits_at_32
        assert training.splits_units(net, table, sgd, plain, 32, 32) == splits_at_32
        assert not training.splits_units(net, table, sgd, plain, 33, 33)


def test_a_diverging_small_batch_run_rolls_back(small_rows):
    """A batch whose loss is not finite stops the team before its step, and
    fit restores the weights of the epoch's start."""
    small_rows(12, threads=2)
    X, y = data()
    net = fastnn.Network([64, 30, 10], seed=1, activation="relu", output="softmax",
                         loss="cross_entropy")
    net.fit(X, y, epochs=1, batch_size=10, lr=0.1)
    before = net._params.copy()
    with pytest.raises(TrainingDiverged):
        net.fit(X, y, epochs=1, batch_size=10, lr=1e30)
    assert_array_equal(net._params, before)


def test_team_pace_measures_both_then_takes_the_faster_and_probes_the_other():
    from fastnn.training import TeamPace

    pace, key = TeamPace(), ("shape", 10, 2)
    assert pace.threads(key, 2) == 2                 # nothing measured: the team
    pace.record(key, 2, 10.0)                        # its first epoch, warming up,
    for _ in range(TeamPace.RATES):                  # is not counted; then RATES
        assert pace.threads(key, 2) == 2
        pace.record(key, 2, 100.0)
    assert pace.threads(key, 2) == 1                 # then one thread
    pace.record(key, 1, 5.0)                         # the same
    assert pace.threads(key, 2) == 1
    pace.record(key, 1, 150.0)
    chosen = [pace.threads(key, 2) for _ in range(2 * TeamPace.PROBE_EVERY)]
    # the faster (one thread), and every PROBE_EVERY-th epoch the team again
    assert chosen.count(2) == 2 and chosen[TeamPace.PROBE_EVERY - 1] == 2
    for rate in (300.0, 310.0, 290.0):               # the machine got quieter
        pace.record(key, 2, rate)
    assert pace.threads(key, 2) == 2
    # the median of the last RATES epochs: one slow epoch does not flip it
    pace.record(key, 2, 10.0)
    assert pace.threads(key, 2) == 2
    assert pace.threads(("other shape", 10, 2), 2) == 2     # each shape its own


def test_fit_measures_the_team_and_one_thread_with_the_same_weights(monkeypatch):
    from fastnn import training
    from fastnn.training import TeamPace

    monkeypatch.setattr(blas, "idle_cores", lambda: 2)
    pace = TeamPace()
    monkeypatch.setattr(training, "TEAM_PACE", pace)
    before = blas.get_num_threads()
    try:
        blas.set_num_threads(2)
        X, y = data(features=20, classes=3)
        # 40 units: three groups of 16 columns, which a fused team splits
        net = fastnn.Network([20, 40, 3], seed=1)
        # the team's first epoch warms up, RATES count; then one thread's
        epochs = TeamPace.RATES + 3
        net.fit(X, y, epochs=epochs, batch_size=10, lr=0.5)
        [rates] = pace._rates.values()
        assert set(rates) == {1, 2}              # both measured, in samples/s
        assert all(r > 0 for v in rates.values() for r in v)
        blas.set_num_threads(1)
        alone = fastnn.Network([20, 40, 3], seed=1)
        alone.fit(X, y, epochs=epochs, batch_size=10, lr=0.5)
        assert_array_equal(net._params, alone._params)
    finally:
        blas.set_num_threads(before)
