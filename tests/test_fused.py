"""The fused small-batch epoch (_core.train_fused_impl, src_c/fusedgemm.h):
where it runs, and that it trains train_units_impl's weights bit for bit, on
one thread and on a team that splits the first layer's columns, with each of
the CPU's kernels (AVX-512's, AVX2's). (Against BLAS and the NumPy
reference: test_smallgemm.py's small-batch tests, which take this path.)"""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastnn
from fastnn import _core, blas, training
from fastnn.optimizers import get_optimizer, hyper_array

pytestmark = pytest.mark.skipif(not _core.small_gemm_available(),
                                reason="the CPU lacks AVX2 or FMA")


class AlwaysTeam:
    """training.TEAM_PACE choosing the team every epoch."""

    def threads(self, key, team):
        return team

    def record(self, key, threads, rate):
        pass


@pytest.fixture
def team_of(monkeypatch):
    """team_of(n): fit's teams of n threads from now on in this test, whatever
    else the machine runs (thread count, idle cores and pace restored)."""
    monkeypatch.setattr(blas, "idle_cores", lambda: 8)
    monkeypatch.setattr(training, "TEAM_PACE", AlwaysTeam())
    before = blas.get_num_threads()
    yield blas.set_num_threads
    blas.set_num_threads(before)


@pytest.fixture
def units_up_to_64():
    """train_units_impl for batches of up to 64 rows (restored), the fused
    epoch's limit: the path to compare it with."""
    before = _core.get_small_rows()
    _core.set_small_rows(64)
    yield
    _core.set_small_rows(before)


@pytest.fixture
def fused():
    """fused(on): whether train_epoch may take the fused epoch (restored)."""
    before = _core.set_fused(True)
    yield _core.set_fused
    _core.set_fused(before)


def team_for(sizes, batch_size=10, optimizer="sgd", dropout=None, l2=0.0):
    """training.fused_team for a float32 network of these sizes."""
    net = fastnn.Network(sizes, seed=0)
    table, keep = net.plan.table(dropout, None)
    opt = get_optimizer(optimizer)
    return training.fused_team(net, table, keep, opt.code, hyper_array(0.1, l2),
                               batch_size, batch_size, _core.NO_AUGMENT)


def test_the_fused_team_is_one_thread_per_16_columns_where_it_runs(isa):
    assert team_for([784, 30, 10]) == 2             # 30 columns: two groups of 16
    assert team_for([784, 100, 10]) == 7
    # up to 64 rows (fused_rows), with AVX-512's kernels or AVX2's
    assert team_for([784, 100, 10], batch_size=16, l2=5.0) == 7
    assert team_for([784, 100, 10], batch_size=64) == 7
    assert team_for([784, 100, 10], batch_size=65) == 0
    assert team_for([100, 40, 20, 10]) == 3         # later layers: 4 x 1,000 <= 4,000
    for sizes, options in [
            ([784, 30, 10], dict(batch_size=65)),       # more rows than the kernels take
            ([784, 30, 10], dict(optimizer="adam")),    # plain SGD only
            ([784, 30, 10], dict(dropout=[0.2])),
            ([784, 10], {}),                            # no hidden layer
            ([64, 40, 33, 10], {}),                     # later layers too large to repeat
            ([784, 1024, 10], {})]:                     # more than SMALL_WEIGHTS parameters
        assert team_for(sizes, **options) == 0, (sizes, options)


@pytest.mark.parametrize("rows", [0, 12, 100])
def test_the_fused_epoch_takes_at_most_64_rows_whatever_small_rows(isa, units_up_to_64, rows):
    """The fused kernels hold a batch of up to SGK_ROWS (64) rows in their
    tables, AVX-512's and AVX2's alike; train_units_impl's limit
    (small_rows, restored by the fixture) moves neither bound."""
    _core.set_small_rows(rows)
    assert team_for([784, 30, 10], batch_size=64) == 2
    assert team_for([784, 30, 10], batch_size=65) == 0


def data(rows=1003, features=64, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((rows, features), dtype=np.float32)
    y = rng.integers(0, classes, rows)
    return X, y


# (network options, fit options): 1003 rows leave a last, shorter batch
CASES = {
    "nielsen": (dict(sizes=[64, 30, 10]), dict(lr=3.0)),
    "uint8": (dict(sizes=[64, 30, 10]), dict(lr=1.0, uint8=True)),
    # a last block of 6 pixels, and rows in two blocks of 16 (and the
    # row-major copy) at 20
    "uint8-70-20": (dict(sizes=[70, 30, 10]), dict(lr=1.0, uint8=True, batch_size=20)),
    "uint8-70-13": (dict(sizes=[70, 30, 10]), dict(lr=1.0, uint8=True, batch_size=13)),
    "deep-softmax": (dict(sizes=[100, 40, 20, 10], activation="relu", output="softmax",
                          loss="cross_entropy"), dict(lr=0.1)),
    "tanh-l2": (dict(sizes=[70, 50, 10], activation="tanh"), dict(lr=0.5, l2=5.0)),
    "leaky-16": (dict(sizes=[64, 100, 10], activation="leaky_relu"),
                 dict(lr=0.2, batch_size=16)),
    "weights": (dict(sizes=[64, 30, 10]), dict(lr=1.0, class_weight="balanced")),
    "batch-1": (dict(sizes=[64, 17, 10]), dict(lr=0.5, batch_size=1)),
    "batch-47": (dict(sizes=[64, 100, 10]), dict(lr=0.5, batch_size=47)),
    "mid-64": (dict(sizes=[200, 64, 32, 10], activation="relu", output="softmax",
                    loss="cross_entropy"), dict(lr=0.1, batch_size=64)),
    "deep-l2": (dict(sizes=[256, 64, 40, 12, 10], activation="tanh"),
                dict(lr=0.3, batch_size=12, l2=0.01)),
    # inputs that leave AVX2's weight step (blocks of 4 rows of W) a last
    # block of 3 and of 1; a first layer of 20 units (12 pad columns)
    "inputs-67": (dict(sizes=[67, 30, 10]), dict(lr=1.0)),
    "inputs-65-b7": (dict(sizes=[65, 20, 10]), dict(lr=1.0, batch_size=7)),
}


def fit(case, epochs=2):
    net_options, fit_options = (dict(o) for o in CASES[case])
    sizes = net_options.pop("sizes")
    X, y = data(features=sizes[0])
    if fit_options.pop("uint8", False):
        X = (X * 255).astype(np.uint8)
    fit_options.setdefault("batch_size", 10)
    net = fastnn.Network(sizes, seed=3, **net_options)
    net.fit(X, y, epochs=epochs, **fit_options)
    return net


def fit_off_and_on(case, switch, counter):
    """fit(case) with switch(False), then with switch(True): the two
    networks, and how much counter() grew in the second fit (the first must
    leave it as it was)."""
    switch(False)
    before = counter()
    off = fit(case)
    assert counter() == before
    switch(True)
    on = fit(case)
    return off, on, counter() - before


@pytest.fixture
def split():
    """split(work): the fused team's threshold for splitting its later
    layers' rows (restored)."""
    before = _core.set_fused_split()
    yield _core.set_fused_split
    _core.set_fused_split(before)


@pytest.mark.parametrize("threads", [1, 2, "2, rows split", "2, far apart"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fused_epoch_trains_the_units_epochs_weights_bit_for_bit(case, threads, isa,
                                                                     team_of, fused,
                                                                     units_up_to_64, split,
                                                                     placement):
    """Every entry is the same FMAs in the same order (fusedgemm.h computes
    as smallgemm.h does), whether a thread's columns or all of them, and
    whatever blocks of rows the kernels take; with the later layers' rows
    split among the team too (every case, whatever its work); and where a
    team that would split them finds its threads far apart, and each keeps
    its own copy of the later layers instead."""
    far = threads == "2, far apart"
    if threads != 1 and threads != 2:
        split(0)
        placement("far" if far else "near")
        threads = 2
    team_of(threads)
    far_before = _core.far_epochs_run()
    units, both, fused_epochs = fit_off_and_on(case, fused, _core.fused_epochs_run)
    assert fused_epochs == 2
    assert _core.far_epochs_run() == far_before + (2 if far else 0)
    assert_array_equal(units._params, both._params)
    assert both.history["loss"][-1] == pytest.approx(units.history["loss"][-1], rel=1e-6)
    assert both.history["accuracy"] == units.history["accuracy"]


@pytest.fixture
def in_place():
    """in_place(on): whether a fused epoch reads a float32 X's rows where
    they lie (restored)."""
    before = _core.set_fused_in_place(True)
    yield _core.set_fused_in_place
    _core.set_fused_in_place(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", ["nielsen", "leaky-16", "deep-softmax", "tanh-l2", "weights",
                                  "batch-1", "uint8", "batch-47"])
def test_a_float32_X_read_in_place_trains_the_k_major_copys_weights(case, threads, isa,
                                                                    team_of, fused, in_place):
    """A thread with at most 64 columns of the first layer reads a float32
    X's rows where they lie in batches of up to 16 rows (the next batch's
    requested meanwhile), and the same FMAs in the same order give the same
    bits as from the batch put k-major first (AVX-512) or gathered (AVX2);
    a uint8 X, a larger batch or more columns are copied first as before
    (1,003 rows: a last, shorter batch, in place at 47 a batch; three
    threads on 30 columns: one with none)."""
    team_of(threads)
    fused(True)
    k_major, read, epochs = fit_off_and_on(case, in_place, _core.in_place_epochs_run)
    assert_array_equal(k_major._params, read._params)
    assert read.history["loss"][-1] == pytest.approx(k_major.history["loss"][-1], rel=1e-6)
    columns = {"nielsen": 30, "weights": 30, "batch-1": 17, "tanh-l2": 50, "deep-softmax": 40,
               "leaky-16": 100, "uint8": 30, "batch-47": 100}[case]
    team = min(threads, -(-columns // 16))      # fit caps a team at its column groups
    per_thread = -(-columns // 16 // team) * 16 if team > 1 else columns
    # batch-47's last batch has 16 rows (1,003 = 21 x 47 + 16): in place
    batch = CASES[case][1].get("batch_size", 10)
    assert batch <= 64                          # every case takes the fused epoch
    direct = case != "uint8" and per_thread <= 64
    assert (epochs > 0) == direct


@pytest.mark.parametrize("rows_split", [False, True, "measured", "far"])
def test_a_team_of_more_threads_than_column_groups_trains_the_same(isa, fused, split,
                                                                    rows_split, placement):
    """Three threads on [64, 30, 10]'s two groups (through the kernel: fit
    caps a team at the groups): the third has no columns of its own, and
    still every batch's barrier and later layers; with the later layers'
    rows split, no columns of the later layers' steps either; and with the
    round trips to the two others measured first, whatever they find, or
    taken as far apart (no split)."""
    if rows_split:
        split(0)
        placement(rows_split if isinstance(rows_split, str) else "near")
    X, y = data()
    # through the kernel directly: fit caps a team at the column groups
    table, keep = fastnn.Network([64, 30, 10], seed=5).plan.table(None, None)
    Y = np.eye(10, dtype=np.float32)[y]
    order = np.random.default_rng(1).permutation(len(X)).astype(np.int64)
    results = []
    for threads in (1, 3):
        params = fastnn.Network([64, 30, 10], seed=5).flat_params.copy()
        control = np.zeros(_core.N_CONTROL, dtype=np.int64)
        work = np.empty(_core.workspace_size(table, 10, keep, threads), dtype=np.float32)
        status, loss, correct = _core.train_epoch(
            X, Y, order, params, np.zeros((1, len(params)), np.float32), table, keep, 0.0,
            _core.MSE, 10, 10, _core.SGD, hyper_array(3.0), np.empty(0, np.float32),
            _core.NO_AUGMENT, 7, work, control, n_threads=threads)
        assert status == _core.DONE and control[_core.ROWS_DONE] == len(X)
        results.append((params, correct))
    assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_team_round_trip_measures_each_pair_with_thread_0(placement):
    """team_round_trip: a time in nanoseconds for any team (no figure: the
    machine's speed is not the test's), 0 for one thread; the placement
    setting names its choices."""
    assert _core.team_round_trip(1) == 0
    for threads in (2, 3):
        ns = _core.team_round_trip(threads)
        assert np.isfinite(ns) and ns > 0
    with pytest.raises(ValueError, match="threads must be in"):
        _core.team_round_trip(0)
    with pytest.raises(ValueError, match="measured, near, far"):
        placement("close")
    assert placement("far") == "measured"
    assert placement("measured") == "far"


def test_a_split_team_records_the_round_trip_it_measured(isa, team_of, split, placement):
    """A fused team that would split its later layers' rows measures its
    threads' round trip first (last_team_round_trip), and splits or not by
    what it found; its weights are the same either way."""
    split(0)
    team_of(2)
    placement("measured")
    far_before = _core.far_epochs_run()
    measured = fit("mid-64", epochs=1)
    ns = _core.last_team_round_trip()
    assert np.isfinite(ns) and ns > 0
    assert _core.far_epochs_run() - far_before in (0, 1)
    placement("near")
    assert_array_equal(fit("mid-64", epochs=1)._params, measured._params)


def epoch(threads, lr=3.0, stop=False, rows=1003):
    """One train_epoch of [64, 30, 10] (relu, softmax, cross-entropy) at batch
    10 straight through the kernel, on `threads` threads: (status, params
    before, params after, control)."""
    X, y = data(rows=rows)
    net = fastnn.Network([64, 30, 10], seed=5, activation="relu", output="softmax",
                         loss="cross_entropy")
    table, keep = net.plan.table(None, None)
    Y = np.eye(10, dtype=np.float32)[y]
    params = net.flat_params.copy()
    before = params.copy()
    control = np.zeros(_core.N_CONTROL, dtype=np.int64)
    control[_core.STOP_REQUEST] = stop
    work = np.empty(_core.workspace_size(table, 10, keep, threads), dtype=np.float32)
    status, _, _ = _core.train_epoch(
        X, Y, np.arange(len(X), dtype=np.int64), params, np.zeros((1, len(params)), np.float32),
        table, keep, 0.0, _core.CROSS_ENTROPY, 10, 10, _core.SGD, hyper_array(lr),
        np.empty(0, np.float32), _core.NO_AUGMENT, 7, work, control, n_threads=threads)
    return status, before, params, control


@pytest.mark.parametrize("threads", [1, 2])
def test_a_stop_before_the_epoch_changes_nothing(threads, isa, fused):
    status, before, after, control = epoch(threads, stop=True)
    assert status == _core.STOPPED
    assert control[_core.ROWS_DONE] == 0 and control[_core.STEPS] == 0
    assert_array_equal(before, after)


@pytest.mark.parametrize("threads", [1, 2, "2, rows split"])
def test_a_diverging_epoch_stops_every_thread_at_the_same_batch(threads, isa, fused, split):
    """A loss that is not finite is seen by every thread (each computes the
    later layers, or the team shares it before the step): all return before
    that batch's step, the rows before it trained."""
    if threads == "2, rows split":
        split(0)
        threads = 2
    status, before, after, control = epoch(threads, lr=1e30)
    assert status == _core.DIVERGED
    assert 0 < control[_core.ROWS_DONE] < 1003
    assert control[_core.STEPS] * 10 == control[_core.ROWS_DONE]
    if threads == 2:
        one = epoch(1, lr=1e30)
        assert one[3][_core.ROWS_DONE] == control[_core.ROWS_DONE]
        assert_array_equal(one[2], after)
