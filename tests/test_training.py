"""Network.fit's training features: optimizers, regularisation, dropout,
schedules, validation, early stopping, weights, augmentation, interrupts."""
import os
import signal

import numpy as np
import pytest
from conftest import make_classification, one_hot
from numpy.testing import assert_allclose, assert_array_equal

from fastnn import ConfigError, DataError, Network, TrainingDiverged
from fastnn import _core, blas
from fastnn import _reference as ref
from fastnn.schedules import Plateau, Step

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "rprop"]


def params(net):
    return [p.copy() for p in net.weights + net.biases]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_learns_and_backends_agree(optimizer):
    X, y = make_classification(n=200, seed=1)
    nets = [Network([12, 10, 4], activation="tanh", output="softmax", loss="cross_entropy",
                    dtype="float64", seed=0, backend=b) for b in ("cython", "numpy")]
    lr = {"sgd": 0.1, "adam": 0.01, "rprop": 0.01}.get(optimizer, 0.05)
    hists = [net.fit(X, y, epochs=15, lr=lr, optimizer=optimizer, l2=0.5, l1=0.1, dropout=0.1)
             for net in nets]
    assert hists[0]["loss"][-1] < 0.5 * hists[0]["loss"][0]
    for a, b in zip(params(nets[0]), params(nets[1])):
        assert np.max(np.abs(a - b)) < 1e-10
    assert nets[0].optimizer_state.steps == nets[1].optimizer_state.steps
    assert_allclose(hists[0]["penalty"], hists[1]["penalty"], rtol=1e-10)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_same_seed_gives_bit_identical_weights(optimizer, one_core):
    # one_core: rprop's batch is all 120 rows, on the BLAS
    X, y = make_classification(n=120, n_features=16)
    runs = []
    for _ in range(2):
        net = Network([16, 12, 4], activation="relu", output="softmax", loss="cross_entropy",
                      seed=9)
        net.fit(X, y, epochs=3, lr=0.01, optimizer=optimizer, dropout=0.3, augment="shift",
                l2=0.1)
        runs.append(params(net))
    for a, b in zip(*runs):
        assert_array_equal(a, b)


def test_l2_decays_weights_as_nielsen_writes():
    # one SGD step with a zero gradient: w -> (1 - lr*l2/n) w, biases unchanged
    net = Network([3, 2], output="identity", dtype="float64", seed=0)
    X = np.zeros((4, 3))
    Y = np.tile(net.biases[0], (4, 1))        # output == target: the data gradient is zero
    W0, b0 = net.weights[0].copy(), net.biases[0].copy()
    hist = net.fit(X, Y, epochs=1, batch_size=4, lr=0.5, l2=2.0)
    assert_allclose(net.weights[0], (1 - 0.5 * 2.0 / 4) * W0, rtol=1e-15)
    assert_array_equal(net.biases[0], b0)
    assert hist["penalty"][0] == pytest.approx(2.0 / 8 * np.sum(net.weights[0] ** 2))


def test_l1_shrinks_weights_by_a_constant():
    net = Network([3, 2], output="identity", dtype="float64", seed=0)
    X = np.zeros((4, 3))
    Y = np.tile(net.biases[0], (4, 1))
    W0 = net.weights[0].copy()
    net.fit(X, Y, epochs=1, batch_size=4, lr=0.01, l1=2.0, optimizer="momentum")
    assert_allclose(net.weights[0], W0 - 0.01 * 2.0 / 4 * np.sign(W0), rtol=1e-15)


def test_dropout_statistics():
    rng = np.random.default_rng(0)
    A = rng.uniform(0.5, 1.5, (2000, 500))
    mask, out = np.empty_like(A), np.empty_like(A)
    _core.dropout(A, 0.3, 1234, 0, 1, mask, out)
    assert abs((out == 0).mean() - 0.3) < 0.005                  # zeros at rate p
    assert abs(out.mean() / A.mean() - 1) < 0.005                 # mean activation preserved
    assert set(np.unique(mask)) == {0.0, 1 / 0.7}
    again, other = np.empty_like(A), np.empty_like(A)
    _core.dropout(A, 0.3, 1234, 0, 1, again, out)
    _core.dropout(A, 0.3, 1235, 0, 1, other, out)
    assert_array_equal(mask, again)                                # reproducible under a seed
    assert (mask != other).mean() > 0.3
    ref_mask = np.empty_like(A)
    ref.dropout(A, 0.3, 1234, 0, 1, ref_mask, np.empty_like(A))
    assert_array_equal(mask, ref_mask)


def test_dropout_is_off_outside_training():
    X, y = make_classification(n=50)
    net = Network([12, 30, 4], seed=0)
    net.fit(X, y, epochs=2, dropout=0.5)
    assert_array_equal(net.forward(X), net.forward(X))
    plain = Network([12, 30, 4], seed=0)
    plain.weights, plain.biases = net.weights, net.biases
    assert_array_equal(plain.forward(X), net.forward(X))


def test_dropout_per_layer_and_only_hidden_layers():
    X, y = make_classification(n=50, dtype=np.float64)

    def trained(rates, backend="cython"):
        net = Network([12, 8, 6, 4], dtype="float64", seed=0, backend=backend)
        net.fit(X, y, epochs=1, dropout=rates)
        return net._params

    # a rate of 0 is no dropout; each rate acts on its own layer; and the
    # kernel drops the same units as the NumPy reference
    assert_array_equal(trained([0.0, 0.0]), trained(0.0))
    assert not np.array_equal(trained([0.5, 0.0]), trained([0.0, 0.5]))
    assert not np.array_equal(trained([0.5, 0.0]), trained(0.0))
    np.testing.assert_allclose(trained([0.5, 0.0]), trained([0.5, 0.0], "numpy"), atol=1e-12)
    with pytest.raises(ConfigError, match="one per hidden layer \\(2\\), not 3"):
        Network([12, 8, 6, 4], seed=0).fit(X, y, dropout=[0.1, 0.1, 0.1])
    with pytest.raises(ConfigError, match="this network has none"):
        Network([12, 4], seed=0).fit(X, y, dropout=0.2)


def test_step_schedule_in_history():
    X, y = make_classification(n=60)
    hist = Network([12, 4], seed=0).fit(X, y, epochs=7, lr=0.8,
                                        lr_schedule="step:every=3,factor=0.5")
    assert hist["lr"] == [0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2]
    again = Network([12, 4], seed=0).fit(X, y, epochs=7, lr=0.8, lr_schedule=Step(3, 0.5))
    assert again["lr"] == hist["lr"]


def test_plateau_schedule_reduces_after_patience_at_most_max_reductions():
    # a learning rate so small that the validation loss barely moves: no
    # improvement after the first epochs, so the rate drops every `patience`
    X, y = make_classification(n=80)
    net = Network([12, 4], seed=0)
    losses = iter([1.0, 0.9, 0.95, 0.97, 0.96, 0.99, 0.98, 0.97, 0.99, 0.99, 0.99, 0.99])
    schedule = Plateau(patience=2, factor=0.1, max_reductions=2)
    schedule.start(1.0)
    lrs = [schedule.next_lr({"val_loss": next(losses)}) for _ in range(12)]
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    hist = net.fit(X[:60], y[:60], epochs=6, lr=1e-9, validation_data=(X[60:], y[60:]),
                   lr_schedule="plateau:patience=2,factor=0.5,max_reductions=1")
    assert hist["lr"][0] == 1e-9 and min(hist["lr"]) == 0.5e-9


def test_validation_split_holds_out_a_seeded_stratified_sample():
    from fastnn.training import validation_rows

    X, y = make_classification(n=100)
    a = Network([12, 4], seed=0)
    b = Network([12, 4], seed=0)
    ha = a.fit(X, y, epochs=2, validation_split=0.2)
    held = validation_rows(100, 0.2, y, a.seed)
    train = np.setdiff1d(np.arange(100), held)
    hb = b.fit(X[train], y[train], epochs=2, validation_data=(X[held], y[held]))
    assert ha["val_loss"] == hb["val_loss"]
    assert a.training_record["n_train"] == 80
    # not the last rows; each class keeps its share (within one row)
    assert len(held) == 20 and not np.array_equal(held, np.arange(80, 100))
    for k in range(4):
        assert abs(np.count_nonzero(y[held] == k) - 0.2 * np.count_nonzero(y == k)) < 1
    # the same seed draws the same rows; another seed others
    assert np.array_equal(held, validation_rows(100, 0.2, y, a.seed))
    assert not np.array_equal(held, validation_rows(100, 0.2, y, a.seed + 1))
    # rare classes: one row of a class stays for training
    rare = np.array([0] * 18 + [1, 2])
    rows = validation_rows(20, 0.5, rare, 0)
    assert 18 in np.setdiff1d(np.arange(20), rows) and 19 not in rows
    with pytest.raises(ConfigError, match="not both"):
        a.fit(X, y, validation_split=0.2, validation_data=(X, y))
    with pytest.raises(ConfigError, match="validation_split must be a finite number >= 0 and < 1"):
        a.fit(X, y, validation_split=1.5)


def test_early_stopping_restores_the_best_epoch():
    # a big network on a few noisy samples overfits: validation loss rises
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 20))
    y = rng.integers(0, 3, 40)
    X_val, y_val = rng.normal(size=(200, 20)), rng.integers(0, 3, 200)
    net = Network([20, 200, 3], activation="tanh", output="softmax", loss="cross_entropy", seed=0)
    hist = net.fit(X, y, epochs=200, lr=0.01, optimizer="adam", batch_size=8,
                   validation_data=(X_val, y_val), early_stopping=5)
    assert hist.stopped == "early_stopping" and hist.epochs < 200
    best = int(np.argmin(hist["val_loss"]))
    assert hist.best_epoch == best and hist.epochs == best + 1 + 5
    assert net.evaluate(X_val, y_val)["loss"] == pytest.approx(hist["val_loss"][best], rel=1e-6)
    with pytest.raises(ConfigError, match="early_stopping watches the validation loss"):
        net.fit(X, y, early_stopping=3)


def test_sample_weights_and_class_weights():
    X, y = make_classification(n=60, n_classes=3)
    # class weights are sample weights looked up by label
    a, b = Network([12, 3], seed=0), Network([12, 3], seed=0)
    a.fit(X, y, epochs=2, class_weight={0: 2.0, 2: 0.5})
    b.fit(X, y, epochs=2, sample_weight=np.array([2.0, 1.0, 0.5])[y])
    assert_array_equal(a.weights[0], b.weights[0])
    # balanced: n / (k n_c), as scikit-learn computes it
    c = Network([12, 3], seed=0)
    c.fit(X, y, epochs=2, class_weight="balanced")
    d = Network([12, 3], seed=0)
    counts = np.bincount(y)
    d.fit(X, y, epochs=2, sample_weight=(60 / (3 * counts))[y])
    assert_allclose(c.weights[0], d.weights[0], rtol=1e-6)
    # a zero weight removes a sample's gradient
    e, f = Network([12, 3], seed=0), Network([12, 3], seed=0)
    w = np.ones(60)
    w[7] = 0
    X2 = X.copy()
    X2[7] = 100.0                                 # a wild sample that weighs nothing
    e.fit(X, y, epochs=1, sample_weight=w, shuffle=False, batch_size=60)
    f.fit(X2, y, epochs=1, sample_weight=w, shuffle=False, batch_size=60)
    assert_allclose(e.weights[0], f.weights[0], rtol=1e-6)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(sample_weight=np.ones(3)), DataError, r"sample_weight needs shape \(60,\)"),
    (dict(sample_weight=-np.ones(60)), DataError, "negative weight at row 0"),
    (dict(sample_weight=np.zeros(60)), DataError, "all zero"),
    (dict(sample_weight=np.full(60, np.nan)), DataError, "NaN"),
    (dict(class_weight="even"), ConfigError, "dict or 'balanced'"),
    (dict(class_weight={5: 1.0}), ConfigError, "label 5; labels are 0..2"),
    (dict(class_weight={0: -1.0}), ConfigError, r"class_weight\[0\] must be"),
])
def test_bad_weights(kwargs, error, message):
    X, y = make_classification(n=60, n_classes=3)
    with pytest.raises(error, match=message):
        Network([12, 3], seed=0).fit(X, y, **kwargs)


def test_class_weight_needs_labels():
    X = np.ones((4, 2))
    with pytest.raises(ConfigError, match="class_weight needs class labels"):
        Network([2, 2], output="identity", seed=0).fit(X, np.full((4, 2), 0.3),
                                                       class_weight="balanced")


def test_shift_augmentation_changes_training_not_inference(mnist):
    (X, y), _ = mnist
    a, b = Network([784, 20, 10], seed=0), Network([784, 20, 10], seed=0)
    a.fit(X[:500], y[:500], epochs=1, augment="shift")
    b.fit(X[:500], y[:500], epochs=1)
    assert not np.allclose(a.weights[0], b.weights[0])
    with pytest.raises(ConfigError, match="square images, but the network takes 12"):
        Network([12, 4], seed=0).fit(*make_classification(), augment="shift")
    with pytest.raises(ConfigError, match="Unknown augment 'rotate'; expected one of \\['shift'\\]"):
        Network([12, 4], seed=0).fit(*make_classification(), augment="rotate")


def test_shifted_image_is_the_image_moved():
    # the kernel's shift moves a pixel by (dx, dy) with zeros shifted in
    side = 5
    image = np.zeros((1, side * side), np.uint8)
    image[0, 2 * side + 2] = 255                  # the centre pixel
    positions = np.arange(40, dtype=np.int64)
    shifts = _core.random_shifts(99, positions)
    out = ref._shifted(np.repeat(image, 40, axis=0), np.arange(40), positions, 99, np.dtype("f8"))
    for (dx, dy), row in zip(shifts, out):
        moved = np.zeros((side, side))
        moved[2 + dy, 2 + dx] = 1
        assert_array_equal(row.reshape(side, side), moved)


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adagrad"), r"Unknown optimizer 'adagrad'; expected one of \['adam'"),
    (dict(lr=-0.1), "lr must be a finite number > 0"),
    (dict(momentum=0.9), "momentum applies to optimizer 'momentum' or 'nesterov', not 'sgd'"),
    (dict(optimizer="momentum", momentum=1.0), "momentum must be a finite number >= 0 and < 1"),
    (dict(optimizer="momentum", betas=(0.9, 0.9)), "betas applies to optimizer 'adam'"),
    (dict(optimizer="adam", betas=(0.9,)), "betas must be a pair"),
    (dict(optimizer="adam", betas=(0.9, 1.0)), "betas must be a finite number >= 0 and < 1"),
    (dict(optimizer="adam", eps=0), "eps must be a finite number > 0"),
    (dict(optimizer="rprop", batch_size=10), "rprop is a full-batch method"),
    (dict(l2=-1), "l2 must be a finite number >= 0"),
    (dict(l1=float("inf")), "l1 must be a finite number >= 0"),
    (dict(dropout=1.0), "dropout must be a finite number >= 0 and < 1"),
    (dict(dropout=-0.1), "dropout must be a finite number >= 0"),
    (dict(lr_schedule="exponential"),
     r"Unknown lr_schedule 'exponential'; expected one of \['constant', 'cosine'"),
    (dict(lr_schedule="step:every=0"), "every must be an integer >= 1"),
    (dict(lr_schedule="step:factor=2"), r"factor must be a number in \(0, 1\]"),
    (dict(lr_schedule="step:evry=2"), r"has no option 'evry'; expected some of \['every', 'factor'\]"),
    (dict(lr_schedule="step:every"), "expected key=value"),
    (dict(lr_schedule=5), "lr_schedule must be a string"),
    (dict(early_stopping=0, validation_split=0.1), "early_stopping must be an integer >= 1"),
])
def test_invalid_options_are_one_clear_error(kwargs, message):
    X, y = make_classification(n=40)
    net = Network([12, 8, 4], seed=0)
    before = params(net)
    with pytest.raises(ConfigError, match=message):
        net.fit(X, y, epochs=1, **kwargs)
    for a, b in zip(params(net), before):
        assert_array_equal(a, b)


def test_default_learning_rates_and_full_batch_rprop():
    X, y = make_classification(n=50)
    for optimizer, lr in [("sgd", 3.0), ("momentum", 0.3), ("adam", 1e-3), ("rprop", 0.1)]:
        net = Network([12, 4], seed=0)
        hist = net.fit(X, y, epochs=2, optimizer=optimizer)
        assert hist["lr"][0] == lr
    assert net.training_record["batch_size"] == 50 and net.optimizer_state.steps == 2


def test_optimizer_state_carries_over_between_fits():
    # two fits of one epoch each == one fit of two epochs, Adam's moments included;
    # on one thread: a fit takes fewer threads where cores are busy (idle_cores),
    # and this network's bits depend on the count (it flaked under a parallel run)
    X, y = make_classification(n=50)
    a, b = Network([12, 6, 4], seed=0), Network([12, 6, 4], seed=0)
    before = blas.get_num_threads()
    blas.set_num_threads(1)
    try:
        a.fit(X, y, epochs=2, optimizer="adam", lr=0.01)
        b.fit(X, y, epochs=1, optimizer="adam", lr=0.01)
        b.fit(X, y, epochs=1, optimizer="adam", lr=0.01)
    finally:
        blas.set_num_threads(before)
    assert_array_equal(a.weights[0], b.weights[0])
    b.fit(X, y, epochs=1, optimizer="momentum", lr=0.01)      # a new optimizer starts afresh
    assert b.optimizer_state.name == "momentum" and b.optimizer_state.steps == 5


def test_progress_reports_rows_as_the_epoch_runs():
    X, y = make_classification(n=60000, n_features=100)
    seen = []
    Network([100, 200, 4], seed=0).fit(X, y, epochs=2, batch_size=1,
                                       progress=lambda e, done, total: seen.append((e, done, total)))
    assert {e for e, _, _ in seen} == {0, 1}
    assert all(total == 60000 for _, _, total in seen)
    assert seen[-1] == (1, 60000, 60000)
    assert len(seen) > 2
    done = [d for e, d, _ in seen if e == 0]
    assert done == sorted(done)


def test_verbose_prints_a_line_per_epoch(capsys):
    X, y = make_classification(n=50)
    Network([12, 4], seed=0).fit(X, y, epochs=2, verbose=1, validation_split=0.2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2  loss ") and "val_accuracy" in lines[1]


def test_ctrl_c_stops_between_batches_and_keeps_a_consistent_network():
    X, y = make_classification(n=200_000, n_features=64)
    net = Network([64, 64, 4], seed=0)
    sent = []

    def interrupt_once_training(epoch, done, total):
        if epoch == 1 and done > 0 and not sent:   # mid-way through the second epoch
            sent.append(done)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=1000, batch_size=1, progress=interrupt_once_training)
    assert net.history.stopped == "interrupted"
    assert net.epochs_trained == 1
    assert net.epochs_trained == net.history.epochs
    assert all(np.isfinite(W).all() for W in net.weights)
    net.fit(X[:100], y[:100], epochs=1)               # and it trains on afterwards


@pytest.mark.parametrize("options", [
    dict(optimizer="momentum", lr=1.0, momentum=0.9),
    # unfused SGD (l1) keeps its gradient in the optimizer state
    dict(optimizer="sgd", lr=1.0, l1=0.01),
])
def test_divergence_restores_the_last_good_epoch_and_can_go_on(options):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    Y = rng.normal(size=(200, 2)) * 100
    net = Network([4, 16, 16, 2], activation="sigmoid", output="identity", seed=0)
    kept = []

    def snapshot(epoch, metrics):
        kept.append((net._params.copy(), net.optimizer_state.state.copy()))

    with pytest.raises(TrainingDiverged, match="diverged"):
        net.fit(X, Y, epochs=10, callback=snapshot, **options)
    # these settings diverge after some good epochs, so there is something to restore
    assert len(kept) >= 1 and net.epochs_trained == len(kept)
    np.testing.assert_array_equal(net._params, kept[-1][0])
    np.testing.assert_array_equal(net.optimizer_state.state, kept[-1][1])
    # a smaller rate continues from there (no NaN left behind in any state)
    net.fit(X, Y, epochs=2, **{**options, "lr": 1e-4})
    assert np.isfinite(net._params).all() and net.epochs_trained == len(kept) + 2


def test_history_with_everything():
    X, y = make_classification(n=100)
    hist = Network([12, 8, 4], seed=0).fit(X, one_hot(y, 4), epochs=2, l2=1.0,
                                           validation_split=0.25)
    assert set(hist) == {"loss", "accuracy", "penalty", "val_loss", "val_accuracy", "lr",
                         "seconds"}


def _overfitting_run():
    """A network that overfits a few noisy samples (its validation accuracy
    peaks before the last epoch), and fit's arguments for it."""
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(60, 20)), rng.integers(0, 3, 60)
    X_val, y_val = rng.normal(size=(300, 20)) + X[:1], rng.integers(0, 3, 300)
    net = Network([20, 40, 3], activation="tanh", output="softmax", loss="cross_entropy",
                  seed=0, dtype="float64")
    return net, X, y, dict(epochs=12, lr=0.05, optimizer="momentum", batch_size=6,
                           validation_data=(X_val, y_val), restore_best=True)


def test_restore_best_keeps_exactly_the_best_validation_epochs_weights():
    net, X, y, kw = _overfitting_run()
    seen = []
    hist = net.fit(X, y, callback=lambda epoch, m: seen.append(net._params.copy()), **kw)
    best = int(np.argmax(hist["val_accuracy"]))           # the first of the best
    assert best < hist.epochs - 1                          # the test means something
    assert hist.best_epoch == best and hist.stopped is None
    assert net.training_record["best"] == {"epoch": best + 1, "monitor": "val_accuracy",
                                    "value": hist["val_accuracy"][best]}
    assert_array_equal(net._params, seen[best])
    assert net.best_params is None and net.epochs_trained == hist.epochs
    # another fit with it goes on comparing with the best so far
    more = net.fit(X, y, **{**kw, "epochs": 1})
    assert more.best_epoch is None and net.training_record["best"]["epoch"] == best + 1
    assert_array_equal(net._params, seen[best])
    # without it, a fit keeps its last epoch and drops the record
    net.fit(X, y, epochs=1, validation_data=kw["validation_data"])
    assert "best" not in net.training_record and net.best_params is None
    with pytest.raises(ConfigError, match="restore_best selects the epoch by its validation"):
        net.fit(X, y, epochs=1, restore_best=True)


@pytest.mark.parametrize("stop_after", [1, 7])   # before and after the best (2)
def test_restore_best_survives_an_interruption_and_a_model_file(tmp_path, stop_after):
    import fastnn

    straight, X, y, kw = _overfitting_run()
    hist = straight.fit(X, y, **kw)
    best = int(np.argmax(hist["val_accuracy"]))

    def stop(epoch, metrics):
        if epoch + 1 == stop_after:
            raise KeyboardInterrupt

    net = _overfitting_run()[0]
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, callback=stop, **kw)
    pending = net.training_record["best"]["epoch"]
    assert net.best_params is not None and pending <= stop_after
    net.save(tmp_path / "m.safetensors")
    # weights_only leaves the pending best out, as it does the optimizer
    net.save(tmp_path / "w.safetensors", weights_only=True)
    assert fastnn.load(tmp_path / "w.safetensors").best_params is None
    resumed = fastnn.load(tmp_path / "m.safetensors")
    assert_array_equal(resumed.best_params, net.best_params)
    assert resumed.training_record["best"]["epoch"] == pending
    rest = resumed.fit(X, y, **{**kw, "epochs": kw["epochs"] - stop_after})
    assert resumed.training_record["best"] == straight.training_record["best"]
    assert_array_equal(resumed._params, straight._params)
    assert rest.best_epoch == (best - stop_after if best >= stop_after else None)
