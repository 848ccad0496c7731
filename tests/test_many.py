"""fastnn.fit_many: several networks at once, each as its own fit."""
import os
import signal
import threading

import numpy as np
import pytest

import fastnn
from fastnn import blas
from fastnn.layers import Conv2D, Dense, MaxPool2D


@pytest.fixture
def threads():
    """Set fastnn's thread count for one test, and put it back."""
    before = blas.get_num_threads()
    yield blas.set_num_threads
    blas.set_num_threads(before)


def data(n=600, features=64, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, features), dtype=np.float32)
    return X, (X[:, :classes].argmax(1) + rng.integers(0, 2, n)) % classes


DENSE = lambda seed: fastnn.Network([64, 12, 4], seed=seed, loss="cross_entropy")  # noqa: E731
CONV = lambda seed: fastnn.Network([(8, 8, 1), Conv2D(3, 3), MaxPool2D(2), Dense(4)],  # noqa: E731
                                   seed=seed, activation="relu", output="softmax",
                                   loss="cross_entropy")
OPTIONS = {
    "dense, small batches": (DENSE, dict(epochs=3, batch_size=10, lr=0.3, validation_split=0.2)),
    "dense, dropout, momentum": (DENSE, dict(epochs=2, batch_size=32, lr=0.1, dropout=0.2,
                                             optimizer="momentum")),
    "conv": (CONV, dict(epochs=2, batch_size=10, lr=0.05)),
}


@pytest.mark.parametrize("kind", OPTIONS)
def test_each_network_is_bit_identical_to_its_own_fit(kind, threads):
    make, options = OPTIONS[kind]
    X, y = data()
    threads(2)      # two networks on two threads: one each
    nets = [make(1), make(2)]
    histories = fastnn.fit_many(nets, X, y, **options)
    threads(1)
    for seed, net, hist in zip((1, 2), nets, histories):
        alone = make(seed)
        expected = alone.fit(X, y, **options)
        assert all(np.array_equal(a, b) for a, b in zip(alone.weights, net.weights))
        assert all(np.array_equal(a, b) for a, b in zip(alone.biases, net.biases))
        assert hist.epochs == expected.epochs == options["epochs"]
        assert hist["loss"] == expected["loss"]
    # different seeds, different networks
    assert not np.array_equal(nets[0].weights[0], nets[1].weights[0])


def test_more_networks_than_threads_queue_in_order(threads):
    X, y = data()
    threads(2)
    nets = [DENSE(seed) for seed in range(5)]
    histories = fastnn.fit_many(nets, X, y, epochs=2, batch_size=10, lr=0.3)
    assert [h.epochs for h in histories] == [2] * 5
    assert all(net.history is h for net, h in zip(nets, histories))
    threads(1)
    alone = DENSE(4)
    alone.fit(X, y, epochs=2, batch_size=10, lr=0.3)
    assert np.array_equal(alone.weights[0], nets[4].weights[0])


def test_one_network_is_a_plain_fit():
    X, y = data()
    net, alone = DENSE(3), DENSE(3)
    [hist] = fastnn.fit_many([net], X, y, epochs=2, batch_size=10, lr=0.3)
    alone.fit(X, y, epochs=2, batch_size=10, lr=0.3)
    assert hist.epochs == 2
    assert np.array_equal(alone.weights[0], net.weights[0])


@pytest.mark.parametrize("networks, options, message", [
    ([], {}, "non-empty list of fastnn.Network"),
    ("abc", {}, "non-empty list of fastnn.Network"),
    ([DENSE(1), "net"], {}, "non-empty list of fastnn.Network"),
    ("same twice", {}, "appears twice"),
    ([DENSE(1)], {"verbose": 1}, "does not take verbose="),
    ([DENSE(1)], {"progress": print}, "does not take progress="),
])
def test_refusals(networks, options, message):
    if networks == "same twice":
        net = DENSE(1)
        networks = [net, net]
    X, y = data(50)
    with pytest.raises(fastnn.ConfigError, match=message):
        fastnn.fit_many(networks, X, y, epochs=1, **options)


def test_an_error_in_one_network_stops_the_others_and_is_raised(threads):
    X, y = data()
    threads(2)
    wrong = fastnn.Network([10, 4], seed=1)        # 10 inputs: X has 64 columns
    nets = [DENSE(1), wrong, DENSE(2)]
    with pytest.raises(fastnn.FastnnError, match="10") as caught:
        fastnn.fit_many(nets, X, y, epochs=200, batch_size=10, lr=0.3)
    histories = caught.value.histories
    assert len(histories) == 3
    for net in (nets[0], nets[2]):
        # stopped long before 200 epochs, at an epoch's end: what the
        # history records is what the weights hold
        assert net.epochs_trained < 200
        if net.history is not None:
            assert net.history.epochs == net.epochs_trained


def test_ctrl_c_stops_every_network_at_a_batch_and_raises(threads):
    X, y = data(2000)
    threads(2)
    # once both networks have trained an epoch (each in its own thread):
    # sent after the first one's first epoch, the signal could come before
    # the other had begun on a loaded machine, and leave it without a history
    ran, lock = set(), threading.Lock()

    def interrupt_after_first_epoch(epoch, metrics):
        with lock:
            ran.add(threading.current_thread().name)
            if len(ran) == 2:
                ran.add("sent")
                os.kill(os.getpid(), signal.SIGINT)

    nets = [DENSE(1), DENSE(2)]
    with pytest.raises(KeyboardInterrupt):
        fastnn.fit_many(nets, X, y, epochs=500, batch_size=10, lr=0.3,
                        callback=interrupt_after_first_epoch)
    for net in nets:
        assert net.epochs_trained < 500
        assert net.history.stopped == "interrupted"
        assert net.history.epochs == net.epochs_trained
        assert all(np.isfinite(W).all() for W in net.weights)
    # both can go on training
    fastnn.fit_many(nets, X, y, epochs=1, batch_size=10, lr=0.3)


def test_the_networks_of_fit_many_check_their_shared_X_once(monkeypatch):
    """fit_many reads X once for NaN and infinities (verified_finite), not
    once per network; an X it did not find finite is checked by each fit, as
    ever, and the first network's error names the row; after the call every
    check reads X again."""
    from fastnn import _validation

    from conftest import make_classification

    X, y = make_classification(n=300, n_features=10, dtype=np.float32)
    reads = []
    scan = fastnn._core.first_nonfinite_row
    monkeypatch.setattr(fastnn._core, "first_nonfinite_row",
                        lambda A, n_threads=1: reads.append(A.shape) or scan(A, n_threads))
    nets = [fastnn.Network([10, 8, 4], seed=s) for s in range(3)]
    fastnn.fit_many(nets, X, y, epochs=1, batch_size=30)
    assert reads.count(X.shape) == 1, reads
    reads.clear()
    assert _validation.first_nonfinite_row(X) == -1 and reads == [X.shape]
    # within a block, only the very array found finite is spared
    with _validation.verified_finite(X):
        assert _validation.first_nonfinite_row(X) == -1
        copy = X.copy()
        copy[7, 3] = np.nan
        assert _validation.first_nonfinite_row(copy) == 7
        assert _validation.first_nonfinite_row(X[1:]) == -1     # another view: read
    # X after the call, X on entering the block, the copy, the view; not X within
    assert reads == [X.shape, X.shape, copy.shape, (299, 10)]
    assert not _validation._verified
    bad = X.copy()
    bad[5, 2] = np.inf
    with pytest.raises(fastnn.DataError, match="row 5, column 2"):
        fastnn.fit_many([fastnn.Network([10, 8, 4], seed=s) for s in range(2)], bad, y,
                        epochs=1)
    assert not _validation._verified


def test_fit_many_reads_a_large_X_once_while_its_networks_prepare(monkeypatch):
    """From BACKGROUND_ENTRIES entries, fit_many's one pass over X starts in
    the background (one BackgroundScan for every network) and each fit waits
    for it before its kernels: a NaN is each network's DataError, nothing
    trained; a finite X trains them all; the block holds nothing after."""
    from fastnn import _validation

    from conftest import make_classification

    monkeypatch.setattr(_validation, "BACKGROUND_ENTRIES", 1)
    scans = []
    real = fastnn._core.BackgroundScan
    monkeypatch.setattr(fastnn._core, "BackgroundScan",
                        lambda A: scans.append(A.shape) or real(A))
    X, y = make_classification(n=300, n_features=10, dtype=np.float32)
    bad = X.copy()
    bad[211, 6] = np.nan
    nets = [fastnn.Network([10, 8, 4], seed=s) for s in range(3)]
    before = [n.flat_params.copy() for n in nets]
    with pytest.raises(fastnn.DataError, match="row 211, column 6"):
        fastnn.fit_many(nets, bad, y, epochs=1, batch_size=30)
    assert scans == [bad.shape]
    for net, params in zip(nets, before):
        assert net.epochs_trained == 0
        np.testing.assert_array_equal(net.flat_params, params)
    assert not _validation._verified
    scans.clear()
    fastnn.fit_many(nets, X, y, epochs=1, batch_size=30)
    assert scans == [X.shape]
    assert [n.epochs_trained for n in nets] == [1, 1, 1]
    assert not _validation._verified


def test_fit_many_checks_once_an_X_its_networks_convert(monkeypatch):
    """float64 rows for float32 networks: each fit checks the rows as given,
    before it converts them, so fit_many's one check spares both."""
    from conftest import make_classification

    X, y = make_classification(n=200, n_features=6, dtype=np.float64)
    reads = []
    scan = fastnn._core.first_nonfinite_row
    monkeypatch.setattr(fastnn._core, "first_nonfinite_row",
                        lambda A, n_threads=1: reads.append(A.dtype.name) or scan(A, n_threads))
    fastnn.fit_many([fastnn.Network([6, 5, 4], seed=s) for s in range(2)], X, y, epochs=1,
                    batch_size=20)
    assert reads == ["float64"], reads


def test_fit_many_primes_the_blas_only_for_networks_whose_epochs_call_it(monkeypatch, threads):
    """The fused epoch makes no BLAS call: fit_many of such networks does not
    prime the BLAS (a process's first prime took 5 ms); networks on the
    BLAS's path prime it in their own epochs, as their fits do."""
    from fastnn import _core

    threads(2)
    primed = []
    monkeypatch.setattr(blas, "prime", primed.append)
    X, y = data()
    before = _core.fused_epochs_run()
    fastnn.fit_many([DENSE(s) for s in range(2)], X, y, epochs=1, batch_size=10, lr=0.3)
    if _core.fused_epochs_run() == before + 2:      # (where the CPU has the kernels)
        assert primed == []
    primed.clear()
    fastnn.fit_many([fastnn.Network([64, 12, 4], seed=s, dtype="float64") for s in range(2)],
                    X, y, epochs=1, batch_size=200, lr=0.3)
    assert primed == [np.dtype(np.float64)] * 2
