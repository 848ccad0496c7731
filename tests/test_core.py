"""The compiled kernels (fastnn._core) against the NumPy reference and naive loops."""
import os
import threading
import time

import numpy as np
import pytest
from conftest import examples, hypothesis_api
from numpy.testing import assert_allclose, assert_array_equal

from fastnn import _core, _kernels, blas
from fastnn._kernels import SHIFT
from fastnn import _reference as ref
from fastnn.activations import ACTIVATIONS
from fastnn.losses import LOSSES
from fastnn.optimizers import OPTIMIZERS, hyper_array
from fastnn.plan import Plan

given, settings, st, _ = hypothesis_api()

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ELEMENTWISE = [a.code for a in ACTIVATIONS.values() if not a.output_only]
PAIRS = [(LOSSES["mse"].code, a.code) for a in ACTIVATIONS.values()] + [
    (LOSSES["cross_entropy"].code, ACTIVATIONS["sigmoid"].code),
    (LOSSES["cross_entropy"].code, ACTIVATIONS["softmax"].code),
]


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def targets(rng, loss, act, shape, dtype):
    """Targets a loss accepts: one-hot for softmax CE, [0, 1] for sigmoid CE."""
    if loss == LOSSES["cross_entropy"].code and act == ACTIVATIONS["softmax"].code:
        Y = np.zeros(shape, dtype)
        Y[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = 1
        return Y
    if loss == LOSSES["cross_entropy"].code:
        return rng.uniform(0, 1, shape).astype(dtype)
    return rand(rng, shape, dtype)


def outputs(rng, act, shape, dtype):
    """Plausible output activations for `act` (the kernels get a = act(z))."""
    Z = rand(rng, shape, dtype, 2.0)
    ref.activate(act, Z)
    return Z


def test_codes_match_registries():
    # the numbers the Python side uses are the compiled module's
    for name in ["N_CONTROL", "N_HYPER", "SHIFT", "NO_AUGMENT", "MAX_STREAMS", "STEPS"] + [
            n for n in dir(_kernels) if n.startswith("H_")]:
        assert getattr(_core, name) == getattr(_kernels, name), name
    assert (_core.DONE, _core.DIVERGED, _core.STOPPED) == (
        _kernels.DONE, _kernels.DIVERGED, _kernels.STOPPED)
    assert (_core.STOP_REQUEST, _core.ROWS_DONE) == (_kernels.STOP_REQUEST, _kernels.ROWS_DONE)


def linear_forward_naive(A, W, b):
    """Z[r, j] = b[j] + sum_i A[r, i] W[i, j], by loops (llm.c's matmul_forward_naive)."""
    Z = np.empty((A.shape[0], W.shape[1]))
    for r in range(A.shape[0]):
        for j in range(W.shape[1]):
            Z[r, j] = b[j] + sum(A[r, i] * W[i, j] for i in range(A.shape[1]))
    return Z


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_forward_matches_naive_loops(dtype):
    rng = np.random.default_rng(1)
    A, W, b = rand(rng, (5, 7), dtype), rand(rng, (7, 3), dtype), rand(rng, (3,), dtype)
    out = np.empty((5, 3), dtype)
    _core.linear_forward(A, W, b, out)
    assert_allclose(out, linear_forward_naive(A, W, b), rtol=RTOL[dtype] * 10, atol=1e-6)


dims = st.integers(1, 24)


@settings(max_examples=examples(60), deadline=None)
@given(N=dims, I=dims, O=dims, seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(DTYPES))
def test_linear_forward_matches_reference(N, I, O, seed, dtype):
    rng = np.random.default_rng(seed)
    A, W, b = rand(rng, (N, I), dtype), rand(rng, (I, O), dtype), rand(rng, (O,), dtype)
    got, want = np.empty((N, O), dtype), np.empty((N, O), dtype)
    _core.linear_forward(A, W, b, got)
    ref.linear_forward(A, W, b, want)
    assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * 10)


@settings(max_examples=examples(60), deadline=None)
@given(act=st.sampled_from([a.code for a in ACTIVATIONS.values()]), N=dims, O=dims,
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_activate_matches_reference(act, N, O, seed, dtype, scale):
    rng = np.random.default_rng(seed)
    Z = rand(rng, (N, O), dtype, scale)
    got, want = Z.copy(), Z.copy()
    _core.activate(act, got, slope=0.02)
    ref.activate(act, want, slope=0.02)
    assert np.isfinite(got).all()
    assert_allclose(got, want, rtol=RTOL[dtype] * 10, atol=RTOL[dtype])


def test_softmax_is_stable_for_huge_inputs():
    Z = np.array([[1000.0, 1000.0, -1000.0], [-1e300, 0.0, 1e300]])
    _core.activate(ACTIVATIONS["softmax"].code, Z)
    assert_allclose(Z, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_saturates_without_nan(dtype):
    Z = np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]], dtype)
    _core.activate(ACTIVATIONS["sigmoid"].code, Z)
    assert np.isfinite(Z).all()
    assert Z[0, 0] == 0 and Z[0, 2] == 0.5 and Z[0, -1] == 1


@settings(max_examples=examples(60), deadline=None)
@given(act=st.sampled_from(ELEMENTWISE), N=dims, O=dims, seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES))
def test_activation_grad_matches_reference(act, N, O, seed, dtype):
    rng = np.random.default_rng(seed)
    A, D = outputs(rng, act, (N, O), dtype), rand(rng, (N, O), dtype)
    got, want = D.copy(), D.copy()
    _core.activation_grad(act, A, got, slope=0.1)
    ref.activation_grad(act, A, want, slope=0.1)
    assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype])


@settings(max_examples=examples(80), deadline=None)
@given(pair=st.sampled_from(PAIRS), N=dims, O=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(DTYPES))
def test_output_delta_matches_reference(pair, N, O, seed, dtype):
    loss, act = pair
    rng = np.random.default_rng(seed)
    A, Y = outputs(rng, act, (N, O), dtype), targets(rng, loss, act, (N, O), dtype)
    got, want = np.empty_like(A), np.empty_like(A)
    cost = _core.output_delta(loss, act, A, Y, got, slope=0.05)
    cost_ref = ref.output_delta(loss, act, A, Y, want, slope=0.05)
    assert_allclose(got, want, rtol=RTOL[dtype] * 10, atol=RTOL[dtype])
    assert_allclose(cost, cost_ref, rtol=RTOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_of_saturated_units_is_finite(dtype):
    # a confident wrong answer costs a large finite loss and the delta a - y
    A = np.array([[0.0, 1.0]], dtype)
    Y = np.array([[1.0, 0.0]], dtype)
    for act in ("sigmoid", "softmax"):
        D = np.empty_like(A)
        cost = _core.output_delta(LOSSES["cross_entropy"].code, ACTIVATIONS[act].code, A, Y, D)
        assert np.isfinite(cost) and cost > 10
        assert_allclose(D, A - Y)


@settings(max_examples=examples(60), deadline=None)
@given(act=st.sampled_from(ELEMENTWISE), N=dims, I=dims, O=dims,
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(DTYPES))
def test_hidden_delta_matches_reference(act, N, I, O, seed, dtype):
    rng = np.random.default_rng(seed)
    D_next, W = rand(rng, (N, O), dtype), rand(rng, (I, O), dtype)
    A = outputs(rng, act, (N, I), dtype)
    got, want = np.empty((N, I), dtype), np.empty((N, I), dtype)
    _core.hidden_delta(D_next, W, act, A, got, slope=0.1)
    ref.hidden_delta(D_next, W, act, A, want, slope=0.1)
    assert_allclose(got, want, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 10)


def dense(sizes, acts):
    """(layer table, number of parameters) of a dense stack."""
    plan = Plan.parse(list(sizes), activation=list(acts[:-1]), output=acts[-1])
    return plan.table()[0], plan.n_params


def keep_of(dropout):
    """The keep probabilities of a dense stack's layer inputs, from the
    dropout rates of its hidden layers (empty: none)."""
    return np.array([1.0] + [1 - r for r in dropout]) if len(dropout) else np.empty(0)


def _epoch_args(sizes, acts, n=40, batch=7, dtype=np.float64, seed=0, X_dtype=None,
                optimizer="sgd", lr=0.5, capacity=None):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, sizes[0])).astype(X_dtype or dtype)
    Y = np.zeros((n, sizes[-1]), dtype)
    Y[np.arange(n), rng.integers(0, sizes[-1], n)] = 1
    table, n_params = dense(sizes, acts)
    params = rand(rng, n_params, dtype, 0.5)
    capacity = capacity or batch
    opt = OPTIMIZERS[optimizer]
    return dict(X=X, Y=Y, order=rng.permutation(n).astype(np.int64), params=params,
                state=opt.new_state(len(params), dtype, lr), table=table, keep=np.empty(0),
                slope=0.01, loss=LOSSES["mse"].code, batch_size=batch, capacity=capacity,
                optimizer=opt.code, hyper=hyper_array(lr),
                sample_weight=np.empty(0, dtype), augment=_kernels.NO_AUGMENT, seed=12345,
                work=np.empty(_core.workspace_size(table, capacity), dtype),
                control=np.zeros(_kernels.N_CONTROL, np.int64))


def _run_both(args, **changes):
    """train_epoch on copies of args, compiled and reference; returns both.
    A change dropout=rates (of the hidden layers) becomes their keep."""
    if "dropout" in changes:
        changes["keep"] = keep_of(changes.pop("dropout"))
    args = {**args, **changes}
    if "keep" in changes or "capacity" in changes:
        args["work"] = np.empty(_core.workspace_size(args["table"], args["capacity"],
                                                     args["keep"]), args["params"].dtype)
    runs = []
    for kernels in (_core, ref):
        mine = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
                "control": np.zeros(_kernels.N_CONTROL, np.int64)}
        mine["result"] = kernels.train_epoch(**{k: v for k, v in mine.items() if k != "result"})
        runs.append(mine)
    return runs


def _assert_same(fast, slow, dtype=np.float64):
    status, loss, hits = fast["result"]
    assert fast["result"][0] == slow["result"][0] == _kernels.DONE
    assert fast["control"][1] == slow["control"][1]
    assert fast["control"][2] == slow["control"][2]
    assert hits == slow["result"][2]
    assert_allclose(loss, slow["result"][1], rtol=RTOL[dtype] * 10)
    assert_allclose(fast["params"], slow["params"], rtol=RTOL[dtype] * 100, atol=RTOL[dtype] * 10)
    assert_allclose(fast["state"], slow["state"], rtol=RTOL[dtype] * 100, atol=RTOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_train_epoch_matches_reference(dtype, l2):
    args = _epoch_args([6, 5, 4, 3], ["tanh", "relu", "sigmoid"], dtype=dtype)
    args["hyper"] = hyper_array(0.5, l2_over_n=l2)
    _assert_same(*_run_both(args), dtype)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_optimizer_matches_reference(optimizer, dtype):
    args = _epoch_args([6, 5, 3], ["sigmoid", "softmax"], dtype=dtype, optimizer=optimizer,
                       lr=0.05, batch=40 if optimizer == "rprop" else 7)
    args["loss"] = LOSSES["cross_entropy"].code
    args["hyper"] = hyper_array(0.05, 0.001, 0.002, momentum=0.8, betas=(0.8, 0.99))
    _assert_same(*_run_both(args), dtype)


def test_chunks_give_the_step_of_the_whole_batch():
    # a batch of 40 rows done in chunks of 6 accumulates the same mean gradient
    args = _epoch_args([6, 5, 3], ["tanh", "sigmoid"], batch=40, optimizer="momentum")
    whole, = _run_both(args, capacity=40)[:1]
    chunked, = _run_both(args, capacity=6)[:1]
    _assert_same(chunked, whole)
    sgd = _epoch_args([6, 5, 3], ["tanh", "sigmoid"], batch=40)
    fused, = _run_both(sgd, capacity=40)[:1]     # one chunk: the step fused into GEMM
    chunked, = _run_both(sgd, capacity=6)[:1]    # several: gradient buffer, then the step
    assert_allclose(chunked["params"], fused["params"], rtol=1e-13)


@pytest.mark.parametrize("capacity", [7, 3])
def test_dropout_matches_reference(capacity):
    args = _epoch_args([6, 8, 7, 3], ["relu", "tanh", "sigmoid"], n=30, batch=7)
    fast, slow = _run_both(args, dropout=np.array([0.5, 0.25]), capacity=capacity)
    _assert_same(fast, slow)
    plain, = _run_both(args)[:1]
    assert not np.allclose(plain["params"], fast["params"])


def test_shift_augmentation_matches_reference():
    args = _epoch_args([16, 5, 3], ["sigmoid", "sigmoid"], n=30, batch=4)
    args["X"] = np.random.default_rng(0).integers(0, 256, (30, 16)).astype(np.uint8)
    args["table"][0, _kernels.T_IN_H:_kernels.T_IN_C + 1] = (4, 4, 1)   # the rows are 4x4 images
    fast, slow = _run_both(args, augment=_kernels.SHIFT)
    _assert_same(fast, slow)
    plain, = _run_both(args)[:1]
    assert not np.allclose(plain["params"], fast["params"])


def test_sample_weights_match_reference_and_scale_the_step():
    args = _epoch_args([6, 5, 3], ["sigmoid", "sigmoid"], n=21, batch=7)
    w = np.random.default_rng(1).uniform(0, 2, 21)
    _assert_same(*_run_both(args, sample_weight=w))
    ones, = _run_both(args, sample_weight=np.ones(21))[:1]
    plain, = _run_both(args)[:1]
    assert_allclose(ones["params"], plain["params"], rtol=1e-14)
    doubled, = _run_both(args, sample_weight=np.full(21, 2.0), hyper=hyper_array(0.25))[:1]
    assert_allclose(doubled["params"], plain["params"], rtol=1e-12)


def test_random_numbers_are_the_same_in_both_backends():
    positions = np.array([0, 1, 2, 999_999, 2**40], dtype=np.int64)
    for stream in (1, 5):
        u = _core.random_uniform(2**63 + 17, positions, stream, 33)
        assert_array_equal(u, ref.random_uniform(2**63 + 17, positions, stream, 33))
    assert_array_equal(_core.random_shifts(7, positions), ref.random_shifts(7, positions))
    big = _core.random_uniform(3, np.arange(2000, dtype=np.int64), 1, 50)
    assert 0 <= big.min() and big.max() < 1 and abs(big.mean() - 0.5) < 0.01
    shifts = _core.random_shifts(3, np.arange(25000, dtype=np.int64))
    counts = np.unique(shifts, axis=0, return_counts=True)[1]
    assert len(counts) == 25 and counts.min() > 850      # uniform over the 5 x 5 shifts


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_optimizer_step_matches_reference(optimizer):
    rng = np.random.default_rng(0)
    opt = OPTIMIZERS[optimizer]
    p = rng.normal(size=50)
    state = opt.new_state(50, np.float64, 0.1)
    hyper = hyper_array(0.1, momentum=0.9)
    fast_p, fast_s = p.copy(), state.copy()
    for t in range(1, 4):
        g = rng.normal(size=50)
        g[:5] = 0
        fast_s[0] = state[0] = g
        _core.optimizer_step(opt.code, fast_p, fast_s, hyper, t)
        ref.optimizer_step(opt.code, p, state, hyper, t)
        assert_allclose(fast_p, p, rtol=1e-14)
        assert_allclose(fast_s, state, rtol=1e-14)


@pytest.mark.parametrize("X_dtype", [np.uint8, np.float32, np.float64])
def test_train_epoch_reads_every_input_dtype(X_dtype):
    # uint8 rows are divided by 255 as they are gathered: the same run as float / 255
    pixels = np.random.default_rng(3).integers(0, 256, (30, 6)).astype(np.uint8)
    base = _epoch_args([6, 4, 2], ["sigmoid", "sigmoid"], n=30, batch=4)
    scaled, = _run_both(base, X=pixels / 255.0)[:1]
    X = pixels if X_dtype == np.uint8 else (pixels / 255).astype(X_dtype)
    fast, slow = _run_both(base, X=X)
    _assert_same(fast, slow)
    # float32 inputs carry float32 rounding into the float64 network
    tol = 1e-6 if X_dtype == np.float32 else 1e-13
    assert_allclose(fast["params"], scaled["params"], rtol=tol, atol=tol)


def test_train_epoch_reports_divergence_before_updating():
    args = _epoch_args([4, 3, 2], ["identity", "identity"], n=10, batch=5)
    args["X"][7, 2] = np.inf  # in the second batch of the order below
    args["order"] = np.arange(10, dtype=np.int64)
    before = args["params"].copy()
    status, _, _ = _core.train_epoch(**args)
    assert status == _kernels.DIVERGED
    assert args["control"][1] == 5                 # the first batch was trained...
    assert not np.array_equal(args["params"], before)
    assert np.isfinite(args["params"]).all()       # ...the bad one was not applied


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_nan_outputs_are_divergence_with_cross_entropy(output):
    # a NaN activation must not hide behind the log's clipping
    args = _epoch_args([4, 3, 2], ["identity", output], n=10, batch=5)
    args["loss"] = LOSSES["cross_entropy"].code
    args["X"][7] = [np.inf, -np.inf, np.inf, -np.inf]
    args["order"] = np.arange(10, dtype=np.int64)
    for kernels in (_core, ref):
        run = {**args, "params": args["params"].copy(), "control": np.zeros(3, np.int64)}
        with np.errstate(invalid="ignore"):
            assert kernels.train_epoch(**run)[0] == _kernels.DIVERGED
        assert np.isfinite(run["params"]).all()
    A = np.array([[np.nan, 0.5]])
    assert np.isnan(_core.output_delta(LOSSES["cross_entropy"].code,
                                       ACTIVATIONS[output].code, A, np.array([[1.0, 0.0]]),
                                       np.empty_like(A)))


def test_train_epoch_stops_on_request_and_releases_the_gil():
    # a long epoch in a thread: the main thread keeps running Python while
    # it trains, then asks it to stop between batches
    rng = np.random.default_rng(0)
    n = 400_000
    args = _epoch_args([64, 64, 10], ["sigmoid", "sigmoid"], n=8, batch=10)
    # an epoch of n rows drawn from 1,000 (the order may repeat rows): as
    # long as one over n distinct rows, without their 200 MB
    args["X"] = rng.uniform(0, 1, (1000, 64))
    args["Y"] = np.zeros((1000, 10))
    args["order"] = np.arange(n, dtype=np.int64) % 1000
    args["work"] = np.empty(_core.workspace_size(args["table"], 10))
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=_core.train_epoch(**args)))
    worker.start()
    deadline = time.monotonic() + 60
    while args["control"][1] == 0:   # wait for the first batches
        assert args["control"][1] or (worker.is_alive() and time.monotonic() < deadline), \
            f"the epoch never trained a batch: {result}"
        time.sleep(0.001)
    rows_before = int(args["control"][1])
    time.sleep(0.05)                 # Python runs here while the kernel trains
    running = worker.is_alive() and args["control"][1] < n
    args["control"][0] = 1
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert running                   # the epoch was still under way 50 ms later
    assert args["control"][1] > rows_before   # and trained on while Python slept
    assert result["out"][0] == _kernels.STOPPED
    assert 0 < args["control"][1] < n
    assert args["control"][1] % 10 == 0          # stopped between batches


def test_predict_matches_reference_in_chunks():
    rng = np.random.default_rng(2)
    table, n_params = dense([5, 8, 3], ["relu", "softmax"])
    params = rand(rng, n_params, np.float64)
    X = rng.integers(0, 256, (23, 5)).astype(np.uint8)
    got, want = np.empty((23, 3)), np.empty((23, 3))
    _core.predict(X, params, table, 0.01, np.empty(_core.workspace_size(table, 4)), 4, got)
    ref.predict(X, params, table, 0.01, None, 4, want)
    assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_matches_reference(dtype):
    args = _epoch_args([6, 5, 4, 3], ["leaky_relu", "tanh", "softmax"], n=9, dtype=dtype)
    work = np.empty(_core.workspace_size(args["table"], 9), dtype)
    got, want = np.empty_like(args["params"]), np.empty_like(args["params"])
    common = (args["X"], args["Y"], args["params"], args["table"], 0.01,
              LOSSES["cross_entropy"].code)
    total = _core.gradient(*common, work, got)
    total_ref = ref.gradient(*common, None, want)
    assert_allclose(total, total_ref, rtol=RTOL[dtype] * 10)
    assert_allclose(got, want, rtol=RTOL[dtype] * 10, atol=RTOL[dtype])


# The wrappers check everything before the nogil code runs.

def test_train_epoch_rejects_out_of_range_rows():
    args = _epoch_args([4, 3, 2], ["sigmoid", "sigmoid"], n=10, batch=5)
    args["order"][3] = 10
    with pytest.raises(ValueError, match="row index 10 is outside"):
        _core.train_epoch(**args)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(X=a["X"][:, :3].copy()), "X has 3 columns"),
    (lambda a: a.update(Y=a["Y"][:, :1].copy()), "Y has shape"),
    (lambda a: a.update(params=a["params"][:-1].copy()), "params has"),
    (lambda a: a.update(work=a["work"][:10].copy()), "workspace has"),
    (lambda a: a.update(batch_size=0), "batch_size must be >= 1"),
    (lambda a: a.update(capacity=0), "at least one row"),
    (lambda a: a.update(optimizer=9), "unknown optimizer code 9"),
    (lambda a: a.update(state=np.zeros((1, 5))), r"state needs shape \(1, 23\)"),
    (lambda a: a.update(hyper=np.zeros(3)), f"hyper needs {_kernels.N_HYPER} entries"),
    (lambda a: a.update(keep=np.array([1.0, 0.0])), "outside \\(0, 1\\]"),
    (lambda a: a.update(keep=np.array([0.9, 0.9, 0.9])), "3 keep probabilities for 2 layers"),
    (lambda a: a.update(sample_weight=np.ones(3)), "sample_weight needs 0 or 10"),
    (lambda a: a.update(augment=5), "unknown augmentation 5"),
    (lambda a: a["table"].__setitem__((0, _kernels.T_ACT), 5), "softmax is only allowed"),
    (lambda a: a["table"].__setitem__((1, _kernels.T_ACT), 9), "unknown activation code"),
    (lambda a: a.update(loss=7), "unknown loss code"),
    (lambda a: (a.update(loss=1), a["table"].__setitem__((1, _kernels.T_ACT), 3)),
     "cross_entropy needs"),
    (lambda a: a.update(slope=-1.0), "slope"),
    (lambda a: a.update(control=np.zeros(1, np.int64)), "control needs 3"),
])
def test_train_epoch_rejects_inconsistent_arguments(change, message):
    args = _epoch_args([4, 3, 2], ["sigmoid", "sigmoid"], n=10, batch=5)
    change(args)
    before = args["params"].copy()
    with pytest.raises(ValueError, match=message):
        _core.train_epoch(**args)
    assert np.array_equal(args["params"][:len(before)], before[:len(args["params"])])


def test_shift_needs_images():
    # a dense first layer's input is 1 x 5 x 1 unless the table says otherwise
    args = _epoch_args([5, 3, 2], ["sigmoid", "sigmoid"], n=10, batch=5)
    with pytest.raises(ValueError, match="shift needs images; the first layer's input is 1x1x5"):
        _core.train_epoch(**{**args, "augment": SHIFT})


def test_kernels_refuse_mixed_dtypes():
    args = _epoch_args([4, 3, 2], ["sigmoid", "sigmoid"], n=10, batch=5)
    args["state"] = args["state"].astype(np.float32)
    with pytest.raises((ValueError, TypeError)):
        _core.train_epoch(**args)


def test_single_kernels_check_shapes():
    A, W = np.ones((2, 3)), np.ones((4, 5))
    with pytest.raises(ValueError, match="shapes do not match"):
        _core.linear_forward(A, W, np.ones(5), np.empty((2, 5)))
    with pytest.raises(ValueError, match="no elementwise derivative"):
        _core.activation_grad(ACTIVATIONS["softmax"].code, A, A.copy())
    with pytest.raises(ValueError, match="differ in shape"):
        _core.output_delta(0, 1, A, np.ones((2, 2)), A.copy())
    with pytest.raises(ValueError, match="shapes do not match"):
        _core.hidden_delta(np.ones((2, 5)), W, 1, np.ones((2, 3)), np.empty((2, 3)))


@pytest.fixture(params=[True, False], ids=["settled", "unsettled"])
def team_settle(request):
    """Teams of predict and of the check for NaN that settle as they start
    (_core.team_settle: a thread on thread 0's CPU moves off it), and teams
    that do not. Where each thread runs is measured in benchmarks/README.md;
    the tests check that both give the same bits and always finish."""
    previous = _core.set_team_settle(request.param)
    yield request.param
    _core.set_team_settle(previous)


def test_threads_taking_whole_chunks_predict_the_same(team_settle):
    from fastnn.blas import single_threaded_blas

    rng = np.random.default_rng(4)
    table, n_params = dense([6, 40, 3], ["tanh", "softmax"])
    params = rand(rng, n_params, np.float32)
    X = rng.integers(0, 256, (1003, 6)).astype(np.uint8)
    one = np.empty((1003, 3), np.float32)
    size = _core.workspace_size(table, 64)
    _core.predict(X, params, table, 0.01, np.empty(size, np.float32), 64, one)
    # teams of more threads than this machine has CPUs too (thread 0 waits
    # for the others to start for a moment only)
    for threads in (2, 3, 2 * (os.cpu_count() or 1) + 1):
        team = np.empty((1003, 3), np.float32)
        with single_threaded_blas():
            _core.predict(X, params, table, 0.01, np.empty(threads * size, np.float32), 64,
                          team, threads)
        assert_array_equal(one, team)
    three = np.empty((1003, 3), np.float32)
    with pytest.raises(ValueError, match="workspace has"):
        _core.predict(X, params, table, 0.01, np.empty(size, np.float32), 64, three, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_nonfinite_row_finds_nan_and_both_infinities_anywhere(dtype):
    X = np.random.default_rng(0).standard_normal((37, 19)).astype(dtype)
    X[5, 0] = np.finfo(dtype).max      # large but finite
    assert _core.first_nonfinite_row(X) == -1
    for value in (np.nan, np.inf, -np.inf):
        for r, c in [(0, 0), (36, 18), (12, 7)]:
            Y = X.copy()
            Y[r, c] = value
            Y[30, 3] = value
            assert _core.first_nonfinite_row(Y) == min(r, 30)


@pytest.mark.parametrize("threads", [1, 2, 3, 64])
def test_the_input_check_split_over_threads_finds_the_first_bad_row(threads):
    """The pass is split into contiguous shares, one a thread (never more
    than the rows): the first share's finding wins."""
    from fastnn import _validation
    X = np.random.default_rng(1).standard_normal((37, 5)).astype(np.float32)
    assert _validation.first_nonfinite_row(X, threads) == -1
    for rows in [(0,), (36,), (12, 30), (20, 21), (3, 36)]:
        Y = X.copy()
        for r in rows:
            Y[r, r % 5] = np.nan if r % 2 else -np.inf
        assert _validation.first_nonfinite_row(Y, threads) == rows[0]
        assert _validation.first_nonfinite_row(Y[:2], threads) == (0 if rows[0] == 0 else -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_background_scan_finds_the_first_bad_row_whichever_thread_takes_it(dtype,
                                                                            monkeypatch):
    """_core.BackgroundScan: blocks of one row here, taken in turn by the
    started thread and by the one asking (row()); the least of their
    findings is the first bad row, asked once or twice."""
    monkeypatch.setattr(_core, "SCAN_BLOCK_ENTRIES", 1)
    X = np.random.default_rng(2).standard_normal((37, 5)).astype(dtype)
    assert _core.BackgroundScan(X).row() == -1
    for rows in [(0,), (36,), (12, 30), (20, 21), (3, 36), tuple(range(5, 37))]:
        Y = X.copy()
        for r in rows:
            Y[r, r % 5] = (np.nan, np.inf, -np.inf)[r % 3]
        scan = _core.BackgroundScan(Y)
        assert scan.row() == rows[0]
        assert scan.row() == rows[0]
    assert _core.BackgroundScan(np.empty((0, 5), dtype)).row() == -1
    for bad in (np.ones((4, 5), np.int64), np.ones((5, 4), dtype).T, np.ones(5, dtype)):
        with pytest.raises(ValueError, match="C-contiguous 2-D float32 or float64"):
            _core.BackgroundScan(bad)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux's /proc")
def test_a_background_scan_dropped_unfinished_stops_before_its_array_goes():
    """A scan nobody waits for stops handing out blocks when it goes (a fit
    that raised before waiting) and waits for the block its thread reads:
    no block of X is read once it has gone (_core.scans_reading), so X can
    be freed at once (16 MB arrays, unmapped when freed: a read after that
    would crash). Its thread, detached, ends by itself soon after (Linux:
    this process's threads, /proc/self/task)."""
    import gc
    import time
    before = len(os.listdir("/proc/self/task"))
    for _ in range(20):
        X = np.ones((4096, 1024), np.float32)      # 16 MB: still running when dropped
        scan = _core.BackgroundScan(X)
        del scan
        assert _core.scans_reading() == 0
        del X
        gc.collect()
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/task")) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    # (at most: a scan thread of an earlier test may have ended meanwhile)
    assert len(os.listdir("/proc/self/task")) <= before


def test_a_background_scan_answers_after_its_thread_has_read_everything():
    """A scan asked once its thread has done the whole pass (the caller
    slept meanwhile) gives that thread's answer; asked at once, the caller
    takes what the thread has not (either way the first bad row)."""
    import time
    X = np.ones((3000, 700), np.float32)
    X[2500, 5] = np.inf
    X[2900, 1] = np.nan
    for wait in (0.0, 0.05):
        scan = _core.BackgroundScan(X)
        time.sleep(wait)
        assert scan.row() == 2500
        assert _core.scans_reading() == 0


ON_ONE_CPU = """
import os
import numpy as np
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from fastnn import _core
_core.SCAN_BLOCK_ENTRIES = 200      # blocks of 10 rows: the check's team forms
from fastnn.plan import Plan
rng = np.random.default_rng(5)
plan = Plan.parse([20, 30, 4], activation=["relu"], output="softmax")
table, n_params = plan.table()[0], plan.n_params
params = rng.standard_normal(n_params).astype(np.float32)
X = rng.standard_normal((2000, 20)).astype(np.float32)
size = _core.workspace_size(table, 64)
outs = []
for threads in (1, 2, 5):
    out = np.empty((2000, 4), np.float32)
    _core.predict(X, params, table, 0.01, np.empty(threads * size, np.float32), 64, out,
                  threads)
    outs.append(out)
X[1234, 3] = np.inf
rows = [_core.first_nonfinite_row(X, threads) for threads in (1, 2, 5)]
print(all((o == outs[0]).all() for o in outs), rows)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_teams_that_settle_finish_on_a_single_cpu():
    """A process held to one CPU: each thread of predict's team and of the
    check for NaN starts on the caller's CPU with nowhere to move
    (team_settle), and thread 0 yields once for it; every team still
    finishes, with one thread's results."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", ON_ONE_CPU], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[1234,", "1234,", "1234]"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3, 9])
def test_first_nonfinite_row_on_a_team_takes_blocks_in_any_order(dtype, threads,
                                                                  monkeypatch, team_settle):
    """_core.first_nonfinite_row with n_threads: an OpenMP team takes blocks
    (of one row here, or of 3) in turn; the first bad row wins whichever
    thread reads it, and blocks after a bad one found may be skipped."""
    X = np.random.default_rng(3).standard_normal((41, 6)).astype(dtype)
    for entries in (1, 18):
        monkeypatch.setattr(_core, "SCAN_BLOCK_ENTRIES", entries)
        assert _core.first_nonfinite_row(X, threads) == -1
        for rows in [(0,), (40,), (13, 29), (20, 21), (2, 40), tuple(range(7, 41))]:
            Y = X.copy()
            for r in rows:
                Y[r, r % 6] = (np.nan, np.inf, -np.inf)[r % 3]
            assert _core.first_nonfinite_row(Y, threads) == rows[0]
        assert _core.first_nonfinite_row(X[:1], threads) == -1
        assert _core.first_nonfinite_row(np.empty((0, 6), dtype), threads) == -1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_background_scan_forked_while_it_runs_reads_the_childs_X_anew(monkeypatch):
    """A child forked while a scan's thread runs has no such thread, and the
    block that thread had taken is not done in the child's copy of X: its
    row() reads the whole of its X again on the calling thread (the child
    reports by its exit status). One block of 128 MB here, which the thread
    takes at once; the fork may still come after it has read it all (glibc
    then answers the child's join at once), so this checks the child's
    answer either way, not that the race happened."""
    monkeypatch.setattr(_core, "SCAN_BLOCK_ENTRIES", 1 << 30)
    X = np.ones((32768, 1024), np.float32)
    X[30000, 7] = np.nan
    scan = _core.BackgroundScan(X)
    pid = os.fork()
    if pid == 0:                                # the child
        os._exit(0 if scan.row() == 30000 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert scan.row() == 30000


def test_fit_checks_X_in_the_background_and_before_any_kernel(monkeypatch):
    """fit leaves X's check for NaN running while it prepares
    (_validation.BackgroundChecks), waits for it before the first epoch:
    a NaN stops it with check_X's error, nothing trained; that error comes
    before one the preparation raised meanwhile, which is raised as it is
    when X is finite."""
    from fastnn import Network, _validation
    from fastnn.exceptions import ConfigError, DataError
    monkeypatch.setattr(_validation, "BACKGROUND_ENTRIES", 1)
    started = []
    start = _validation.BackgroundChecks.start
    monkeypatch.setattr(_validation.BackgroundChecks, "start",
                        lambda self, X, name, held=None: started.append(name)
                        or start(self, X, name, held))
    X = np.random.default_rng(3).random((300, 6)).astype(np.float32)
    y = np.arange(300) % 3
    net = Network([6, 5, 3], seed=1)
    before = net.flat_params.copy()
    X[217, 4] = np.nan
    with pytest.raises(DataError, match=r"X contains NaN or infinity \(first at row 217, column 4\)"):
        net.fit(X, y, epochs=1)
    assert started == ["X"]
    assert net.epochs_trained == 0
    assert_array_equal(net.flat_params, before)
    with pytest.raises(DataError, match="first at row 217"):
        net.fit(X, y, epochs=1, batch_size=0)       # an error of its own, after X's check began
    X[217, 4] = 0.5
    with pytest.raises(ConfigError, match="batch_size"):
        net.fit(X, y, epochs=1, batch_size=0)
    net.fit(X, y, epochs=1)
    assert net.epochs_trained == 1
    assert started == ["X"] * 4


def test_a_large_input_check_takes_the_idle_cores_fastnn_may_use(monkeypatch):
    """blas.scan_threads, the policy fit's check follows: one thread below
    SCAN_SPLIT entries, else fastnn's thread count capped by the idle cores."""
    from fastnn import Network
    from fastnn.exceptions import DataError
    monkeypatch.setattr(blas, "idle_cores", lambda: 3)
    monkeypatch.setattr(blas, "get_num_threads", lambda: 2)
    assert blas.scan_threads(blas.SCAN_SPLIT - 1) == 1
    assert blas.scan_threads(blas.SCAN_SPLIT) == 2
    monkeypatch.setattr(blas, "idle_cores", lambda: 1)
    assert blas.scan_threads(10 * blas.SCAN_SPLIT) == 1
    # Network's check of X takes that policy: a NaN in the last share is found
    monkeypatch.setattr(blas, "SCAN_SPLIT", 1)
    monkeypatch.setattr(blas, "idle_cores", lambda: 2)
    seen = []
    scan = blas.scan_threads
    monkeypatch.setattr(blas, "scan_threads", lambda n: seen.append(scan(n)) or seen[-1])
    X = np.ones((9, 4), np.float32)
    X[8, 1] = np.nan
    with pytest.raises(DataError, match="row 8, column 1"):
        Network([4, 3, 2]).predict(X)
    assert seen == [2]


def test_the_input_check_on_threads_is_an_openmp_team(monkeypatch):
    """With more than one thread, the pass runs on an OpenMP team of that
    many (_core.first_nonfinite_row's n_threads, the pool a forward then
    uses), not on a started thread; one thread reads it alone."""
    from fastnn import _validation
    teams = []
    real = _core.first_nonfinite_row
    monkeypatch.setattr(_core, "first_nonfinite_row",
                        lambda X, n_threads=1: teams.append(n_threads) or real(X, n_threads))
    monkeypatch.setattr(_core, "BackgroundScan", None)     # not used here
    monkeypatch.setattr(_core, "SCAN_BLOCK_ENTRIES", 3)
    X = np.ones((10, 3), np.float32)
    X[7, 2] = np.inf
    assert _validation.first_nonfinite_row(X, 2) == 7
    assert _validation.first_nonfinite_row(X, 4) == 7
    assert _validation.first_nonfinite_row(X, 1) == 7
    assert _validation.first_nonfinite_row(X[:1], 2) == -1
    assert teams == [2, 4, 1, 2]


def test_the_input_check_falls_back_to_numpy_without_the_compiled_core(monkeypatch):
    import sys

    from fastnn import _validation
    X = np.ones((3000, 700), np.float32)
    X[2500, 5] = np.nan
    assert _validation.first_nonfinite_row(X) == 2500
    monkeypatch.setitem(sys.modules, "fastnn._core", None)    # import fails
    assert _validation.first_nonfinite_row(X) == 2500
    X[2500, 5] = 1
    assert _validation.first_nonfinite_row(X) == -1


# Denormals: fastnn's epochs and forwards flush them to zero on x86-64 (FTZ and
# DAZ), where each operation on one took a slow microcode path.
FLUSHES = __import__("platform").machine().lower() in ("x86_64", "amd64")


@pytest.mark.parametrize("threads", [1, 2])
def test_a_forward_flushes_denormals_and_gives_the_caller_its_mode_back(threads):
    from fastnn import Network

    net = Network([1, 1], output="identity", seed=0)
    net.weights[0][...] = 1e-20
    net.biases[0][...] = 0
    X = np.full((4096, 1), 1e-20, np.float32)
    with blas.thread_budget(threads):
        out = net.forward(X)
    # 1e-40 is a float32 denormal: flushed to 0 where the kernels flush
    assert_array_equal(out, 0 if FLUSHES else np.float32(1e-20) * np.float32(1e-20))
    # this thread's arithmetic keeps its denormals afterwards
    assert np.float32(1e-38) * np.float32(0.5) == np.float32(5e-39)


@pytest.mark.parametrize("batch_size", [2, 8])       # 32 steps: m leaves the normals; 8: not yet
def test_adam_s_moments_of_a_blank_input_decay_to_zero_not_into_denormals(batch_size):
    from fastnn import Network

    rng = np.random.default_rng(0)
    X = rng.random((64, 3), dtype=np.float32)
    X[:, 0] = 0                                      # a pixel blank in every image
    y = rng.integers(0, 2, 64)
    net = Network([3, 2], output="softmax", loss="cross_entropy", seed=0)
    net.fit(X, y, epochs=1, batch_size=batch_size, optimizer="adam")
    state = net.optimizer_state.state                # rows: gradient, m, v
    flat = net.flat_params
    w0 = (net.weights[0].ctypes.data - flat.ctypes.data) // flat.itemsize
    dead = slice(w0, w0 + 2)                         # W[0, :]: its gradient is exactly 0
    state[1, dead] = 1e-37
    state[2, dead] = 1e-37
    net.fit(X, y, epochs=1, batch_size=batch_size, optimizer="adam")
    steps = 64 // batch_size
    # m decays by beta1 = 0.9 a step: 0.9^8 * 1e-37 = 4.3e-38 is still normal,
    # 0.9^32 * 1e-37 = 3.4e-39 is not and is flushed
    m = np.float32(1e-37) * np.float32(0.9) ** steps
    if FLUSHES and m < np.finfo(np.float32).tiny:
        assert_array_equal(state[1, dead], 0)
    else:
        assert_allclose(state[1, dead], m, rtol=1e-4)
    # v decays by 0.999 a step and stays normal: the state was the one set above
    assert_allclose(state[2, dead], np.float32(1e-37) * np.float32(0.999) ** steps, rtol=1e-4)


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.2, 0.7, 1e-9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_masks_are_the_kernels_uniform_numbers_below_keep(rate, dtype):
    """float32 rows take a vectorised loop that compares 53-bit integers with
    ceil(keep 2^53) instead of u = h / 2^53 with keep: the same masks, bit
    for bit, as [u < keep] / keep from the kernels' own random numbers, for
    keeps that are multiples of 2^-53 (0.5, 0.75) and those that are not.
    Rows of 1 to 67 entries cover every vector width's remainder."""
    rng = np.random.default_rng(3)
    keep = 1 - rate
    for width in (1, 7, 16, 31, 67):
        A = rand(rng, (5, width), dtype)
        mask, out = np.empty_like(A), np.empty_like(A)
        _core.dropout(A, rate, 12345, 40, 2, mask, out)
        u = _core.random_uniform(12345, np.arange(40, 45, dtype=np.int64), 2, width)
        scale = dtype(1 / keep)
        want = np.where(u < keep, scale, dtype(0)).astype(dtype)
        assert_array_equal(mask, want)
        assert_array_equal(out, A * want)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_float32_adam_steps_are_the_mixed_precision_formula_bit_for_bit(name):
    """The float32 Adam step runs in a loop compiled for the CPU's vectors
    (fastnn_adam_f): its moments in double, rounded once, the rest in
    float32, no fused multiply-adds; the same bits as this NumPy transcript
    of the formula, for lengths around every vector width."""
    from fastnn._kernels import H_BETA1, H_BETA2, H_EPS, H_LR, H_WEIGHT_DECAY

    rng = np.random.default_rng(5)
    f32, f64 = np.float32, np.float64
    for n in (1, 5, 8, 17, 33, 100):
        p = rng.standard_normal(n).astype(f32)
        state = (rng.standard_normal((3, n)) * 1e-2).astype(f32)
        state[2] = np.abs(state[2])
        hyper = hyper_array(3e-3, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
        want_p, m, v = p.copy(), state[1].copy(), state[2].copy()
        for t in range(1, 4):
            state[0] = g = (rng.standard_normal(n) * 1e-2).astype(f32)
            _core.optimizer_step(OPTIMIZERS[name].code, p, state, hyper, t)
            b1, b2, eps = f32(hyper[H_BETA1]), f32(hyper[H_BETA2]), f32(hyper[H_EPS])
            if name == "adamw":
                want_p = want_p * f32(1 - hyper[H_LR] * hyper[H_WEIGHT_DECAY])
            step = f32(hyper[H_LR] / (1 - hyper[H_BETA1] ** t))
            bc2 = f32(np.sqrt(1 - hyper[H_BETA2] ** t))
            m = (m.astype(f64) + (1.0 - f64(b1)) * (g - m).astype(f64)).astype(f32)
            v = ((b2 * v).astype(f64) + ((1.0 - f64(b2)) * g.astype(f64)) * g.astype(f64)
                 ).astype(f32)
            denom = np.sqrt(v) / bc2 + eps
            want_p = want_p - step * (m / denom)
            assert_array_equal(state[1], m)
            assert_array_equal(state[2], v)
            assert_array_equal(p, want_p)
