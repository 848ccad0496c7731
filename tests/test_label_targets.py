"""Class labels as training targets: fit hands the kernels the labels, and
each chunk's one-hot rows are made as they are gathered (train_epoch's
`labels`), instead of an (n, outputs) array of one-hot targets made first.
The oracle is the same fit given those one-hot rows as float targets: the
same weights, bit for bit, on every kernel path."""
import tracemalloc

import numpy as np
import pytest
from conftest import make_classification
from numpy.testing import assert_array_equal

from fastnn import Network, _core, _kernels, blas
from fastnn import _reference as ref
from fastnn.optimizers import get_optimizer, hyper_array

# (network, fit options, X's dtype): one case per kernel path of train_epoch
CASES = {
    # train_fused_impl (float32 dense, plain SGD, small batches)
    "fused": (dict(sizes=[12, 20, 4]), dict(batch_size=10), np.float32),
    # uint8 rows, the fused epoch's k-major copy
    "fused-uint8": (dict(sizes=[12, 20, 4]), dict(batch_size=10), np.uint8),
    # train_units_impl (a float64 X: the fused epoch reads float32 or uint8)
    "units": (dict(sizes=[12, 20, 4]), dict(batch_size=10), np.float64),
    # train_epoch_impl: a float64 network; dropout, sample weights, held-out rows
    "float64": (dict(sizes=[12, 20, 4], dtype="float64"),
                dict(batch_size=16, dropout=0.2, validation_split=0.2,
                     sample_weight="ramp"), np.float64),
    # Adam's costly step: the team that splits each batch's rows
    "adam": (dict(sizes=[12, 20, 4]), dict(batch_size=32, optimizer="adam", lr=0.01),
             np.float32),
    # a bfloat16 network: train_epoch_impl, X's rows read in place
    "bfloat16": (dict(sizes=[12, 20, 4], dtype="bfloat16"), dict(batch_size=16), np.float32),
    # convolution: the team that splits rows, chunks gathered with shifts
    "conv": (dict(sizes=None), dict(batch_size=8, augment="shift"), np.float32),
}


def network(spec, seed=3):
    if spec["sizes"] is None:
        from fastnn.layers import Conv2D, Dense, Flatten, MaxPool2D

        return Network([(4, 3, 1), Conv2D(3, 2, activation="relu"), MaxPool2D(1),
                        Flatten(), Dense(4, activation="softmax")],
                       loss="cross_entropy", seed=seed)
    return Network(spec["sizes"], activation="sigmoid", output="softmax",
                   loss="cross_entropy", seed=seed,
                   **{k: v for k, v in spec.items() if k != "sizes"})


def data(dtype, n=203):
    X, y = make_classification(n=n, seed=4)
    X = (X - X.min()) / (X.max() - X.min())
    if dtype == np.uint8:
        return (X * 255).astype(np.uint8), y
    return X.astype(dtype), y


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_labels_train_the_weights_of_their_one_hot_rows(case, threads, one_core, monkeypatch):
    spec, options, dtype = CASES[case]
    if threads > 1:
        # two idle cores on any machine: adam and conv then train on a team
        # that splits rows (the dense SGD cases stay on one thread at these
        # widths; test_every_team_makes_the_one_hot_rows forces their teams)
        monkeypatch.setattr(blas, "idle_cores", lambda: 2)
    X, y = data(dtype)
    options = dict(options)
    if options.get("sample_weight") == "ramp":
        options["sample_weight"] = np.linspace(0.5, 2.0, len(X))
    before = blas.get_num_threads()
    blas.set_num_threads(threads)
    try:
        nets = [network(spec), network(spec)]
        n_out = nets[0].plan.sizes[-1]
        given = [y, np.eye(n_out)[y]]          # labels; their one-hot rows as floats
        hists = [net.fit(X, targets, epochs=2, **options) for net, targets in zip(nets, given)]
    finally:
        blas.set_num_threads(before)
    assert_array_equal(nets[0].flat_params, nets[1].flat_params)
    for key in hists[0]:
        if key != "seconds":
            assert hists[0][key] == hists[1][key], key


def kernel_args(threads, optimizer="sgd", n=157, batch=10, seed=5):
    """train_epoch's arguments for [9, 16, 5] (relu, softmax) on n rows, and
    the labels (n,)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 9), dtype=np.float32)
    labels = rng.integers(0, 5, n)
    net = Network([9, 16, 5], activation="relu", output="softmax", loss="cross_entropy",
                  seed=seed)
    table, keep = net.plan.table(None, None)
    opt = get_optimizer(optimizer)
    args = dict(
        X=X, Y=np.eye(5, dtype=np.float32)[labels], order=rng.permutation(n),
        params=net.flat_params.copy(),
        state=np.zeros((opt.state_rows, len(net.flat_params)), np.float32),
        table=table, keep=keep, slope=0.0, loss=_core.CROSS_ENTROPY, batch_size=batch,
        capacity=batch, optimizer=opt.code, hyper=hyper_array(0.05 if optimizer == "sgd" else 0.01),
        sample_weight=np.empty(0, np.float32), augment=_core.NO_AUGMENT, seed=7,
        work=np.empty(_core.workspace_size(table, batch, keep, threads), np.float32),
        control=np.zeros(_kernels.N_CONTROL, np.int64), n_threads=threads)
    return args, labels


def run(kernels, args, **changes):
    mine = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
            "control": np.zeros(_kernels.N_CONTROL, np.int64), **changes}
    return kernels.train_epoch(**mine), mine


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_kernel_makes_one_hot_rows_from_labels(threads, optimizer):
    args, labels = kernel_args(threads, optimizer)
    rows = run(_core, args)
    made = run(_core, args, Y=np.empty((0, 5), np.float32), labels=labels)
    assert rows[0] == made[0] and rows[0][0] == _kernels.DONE
    assert_array_equal(rows[1]["params"], made[1]["params"])
    assert_array_equal(rows[1]["control"], made[1]["control"])


def test_the_reference_makes_one_hot_rows_from_labels():
    args, labels = kernel_args(1)
    rows = run(ref, args)
    made = run(ref, args, Y=np.empty((0, 5), np.float32), labels=labels)
    assert rows[0] == made[0]
    assert_array_equal(rows[1]["params"], made[1]["params"])


@pytest.mark.parametrize("kind, message", [
    ("out of range", r"label 5 \(labels\[3\]\) is outside \[0, 5\)"),
    ("negative", r"label -1 \(labels\[0\]\) is outside \[0, 5\)"),
    ("short", "labels has 156 entries; X has 157 rows"),
    ("with Y", "Y must have no rows when labels are given, not 157"),
])
def test_the_kernel_refuses_labels_that_do_not_fit(kind, message):
    args, labels = kernel_args(1)
    Y = np.empty((0, 5), np.float32)
    labels = labels.copy()
    if kind == "out of range":
        labels[3] = 5
    elif kind == "negative":
        labels[0] = -1
    elif kind == "short":
        labels = labels[:-1]
    else:
        Y = args["Y"]
    before = args["params"].copy()
    with pytest.raises(ValueError, match=message):
        _core.train_epoch(**{**args, "Y": Y, "labels": labels})
    assert_array_equal(args["params"], before)


@pytest.mark.parametrize("label, row, message", [
    (5, 3, r"label 5 \(labels\[3\]\) is outside \[0, 5\)"),
    (-1, 0, r"label -1 \(labels\[0\]\) is outside \[0, 5\)"),
    (None, None, "labels take Y of no rows"),
])
def test_the_reference_refuses_labels_that_do_not_fit(label, row, message):
    args, labels = kernel_args(1)
    labels = labels.copy()
    Y = np.empty((0, 5), np.float32)
    if label is None:
        Y = args["Y"]
    else:
        labels[row] = label
    before = args["params"].copy()
    with pytest.raises(ValueError, match=message):
        ref.train_epoch(**{**args, "Y": Y, "labels": labels})
    assert_array_equal(args["params"], before)


def test_the_kernel_takes_labels_only_for_two_outputs_or_more():
    rng = np.random.default_rng(0)
    net = Network([3, 4, 1], activation="relu", output="sigmoid", loss="cross_entropy")
    table, keep = net.plan.table(None, None)
    with pytest.raises(ValueError, match="two or more units"):
        _core.train_epoch(
            rng.random((6, 3), dtype=np.float32), np.empty((0, 1), np.float32),
            np.arange(6), net.flat_params.copy(), np.zeros((1, net.n_params), np.float32),
            table, keep, 0.0, _core.CROSS_ENTROPY, 2, 2, _core.SGD, hyper_array(0.1),
            np.empty(0, np.float32), _core.NO_AUGMENT, 1,
            np.empty(_core.workspace_size(table, 2, keep), np.float32),
            np.zeros(_kernels.N_CONTROL, np.int64), labels=np.zeros(6, np.int64))


def test_fit_on_labels_builds_no_one_hot_array():
    # 20,000 rows of 1,000 classes: their one-hot rows would be 80 MB of float32
    n, classes = 20_000, 1_000
    rng = np.random.default_rng(0)
    X = rng.random((n, 8), dtype=np.float32)
    y = rng.integers(0, classes, n)
    net = Network([8, 4, classes], activation="relu", output="softmax", loss="cross_entropy")
    tracemalloc.start()
    try:
        net.fit(X, y, epochs=1, batch_size=100, lr=0.1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * classes * 4 // 4
    assert net.history.epochs == 1


@pytest.fixture
def kernel_settings(placement):
    """set(name, value): one of _core's switches for this test (restored
    after), or the team's placement ("near", "far")."""
    setters = {"fused": _core.set_fused, "fused_split": _core.set_fused_split,
               "small_rows": _core.set_small_rows, "defer_weights": _core.set_defer_weights}
    before = []

    def set_(name, value):
        if name == "placement":
            placement(value)
        else:
            before.append((setters[name], setters[name](value)))

    yield set_
    for setter, previous in reversed(before):
        setter(previous)


# team -> (threads, switches, the counter of the path's epochs)
TEAMS = {
    "fused, 2 threads": (2, {}, _core.fused_epochs_run),
    "fused, 3 threads": (3, {}, _core.fused_epochs_run),
    "fused, rows split": (2, {"fused_split": 0, "placement": "near"}, _core.fused_epochs_run),
    "fused, far apart": (2, {"fused_split": 0, "placement": "far"}, _core.far_epochs_run),
    # neither the fused epoch nor the units one: the team that splits rows
    "deferred layer": (2, {"fused": False, "small_rows": 4, "defer_weights": 0,
                           "placement": "near"}, _core.deferred_epochs_run),
    "deferred, far apart": (2, {"fused": False, "small_rows": 4, "defer_weights": 0,
                                "placement": "far"}, _core.replicated_epochs_run),
}


@pytest.mark.parametrize("team", sorted(TEAMS))
def test_every_team_makes_the_one_hot_rows(team, kernel_settings):
    """The teams fit forms only on some machines and shapes, forced through
    the kernel: [64, 30, 10] at batch 10 (two column groups)."""
    threads, switches, counter = TEAMS[team]
    for name, value in switches.items():
        kernel_settings(name, value)
    rng = np.random.default_rng(2)
    X = rng.random((203, 64), dtype=np.float32)
    labels = rng.integers(0, 10, len(X))
    net = Network([64, 30, 10], activation="relu", output="softmax", loss="cross_entropy",
                  seed=5)
    table, keep = net.plan.table(None, None)
    args = dict(
        X=X, Y=np.eye(10, dtype=np.float32)[labels], order=rng.permutation(len(X)),
        params=net.flat_params.copy(), state=np.zeros((1, net.n_params), np.float32),
        table=table, keep=keep, slope=0.0, loss=_core.CROSS_ENTROPY, batch_size=10,
        capacity=10, optimizer=_core.SGD, hyper=hyper_array(0.5),
        sample_weight=np.empty(0, np.float32), augment=_core.NO_AUGMENT, seed=7,
        work=np.empty(_core.workspace_size(table, 10, keep, threads), np.float32),
        control=np.zeros(_kernels.N_CONTROL, np.int64), n_threads=threads)
    before = counter()
    rows = run(_core, args)
    made = run(_core, args, Y=np.empty((0, 10), np.float32), labels=labels)
    assert counter() == before + 2, "the epochs did not take this team's path"
    assert rows[0] == made[0] and rows[0][0] == _kernels.DONE
    assert_array_equal(rows[1]["params"], made[1]["params"])
