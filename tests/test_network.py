"""fastnn.Network: the Python API, its checks, and the two backends agreeing."""
import numpy as np
import pytest
from conftest import make_classification, one_hot
from numpy.testing import assert_allclose, assert_array_equal

import fastnn
from fastnn import ConfigError, DataError, Network, TrainingDiverged

BACKENDS = ["cython", "numpy"]
# (hidden activation, output activation, loss): every pairing the library allows
OUTPUT_LOSS = [("sigmoid", "mse"), ("tanh", "mse"), ("relu", "mse"), ("leaky_relu", "mse"),
               ("identity", "mse"), ("softmax", "mse"), ("sigmoid", "cross_entropy"),
               ("softmax", "cross_entropy")]
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]


def test_api_shapes_and_defaults():
    net = Network([784, 30, 10], activation="sigmoid", loss="mse", dtype="float32", seed=0)
    assert [W.shape for W in net.weights] == [(784, 30), (30, 10)]
    assert [b.shape for b in net.biases] == [(30,), (10,)]
    assert all(W.dtype == np.float32 for W in net.weights)
    assert net.n_params == 784 * 30 + 30 + 30 * 10 + 10
    assert net.activations == ("sigmoid", "sigmoid") and net.loss == "mse"
    assert repr(net) == ("Network([784, 30, 10], activation='sigmoid', output='sigmoid', "
                         "loss='mse', dtype='float32', seed=0)")


def test_nielsen_initialisation_statistics():
    net = Network([1000, 500, 10], seed=1, dtype="float64")
    W, b = net.weights[0], net.biases[0]
    assert abs(W.mean()) < 0.001 and abs(W.std() - 1 / np.sqrt(1000)) < 0.001
    assert abs(b.mean()) < 0.15 and abs(b.std() - 1) < 0.1


def test_seed_makes_runs_identical_and_dtype_independent_at_start():
    X, y = make_classification()
    a, b = Network([12, 8, 4], seed=5), Network([12, 8, 4], seed=5)
    c = Network([12, 8, 4], seed=5, dtype="float64")
    assert_array_equal(a.weights[0], c.weights[0].astype(np.float32))
    a.fit(X, y, epochs=2, batch_size=7, lr=0.5)
    b.fit(X, y, epochs=2, batch_size=7, lr=0.5)
    for Wa, Wb in zip(a.weights + a.biases, b.weights + b.biases):
        assert_array_equal(Wa, Wb)
    assert not np.array_equal(Network([12, 8, 4], seed=6).weights[0], a.weights[0])


def test_unseeded_network_records_its_seed():
    net = Network([3, 2])
    again = Network([3, 2], seed=net.seed)
    assert_array_equal(net.weights[0], again.weights[0])


def test_weights_assignable_in_place():
    net = Network([3, 4, 2], seed=0, dtype="float64")
    view = net.weights[0]
    net.weights[0] = np.ones((3, 4))
    net.weights[1][...] = 2.0
    net.biases = [np.zeros(4), np.full(2, -1.0)]
    assert view is not None and (view == 1).all()          # same memory, updated
    out = net.forward(np.ones((1, 3)))
    assert_allclose(out, 1 / (1 + np.exp(-(4 * 2 * (1 / (1 + np.exp(-3))) - 1))) * np.ones((1, 2)))
    with pytest.raises(DataError, match=r"weights\[0\] has shape \(3, 4\)"):
        net.weights[0] = np.ones((4, 3))
    with pytest.raises(DataError, match="NaN"):
        net.biases[1] = np.array([0.0, np.nan])
    with pytest.raises(DataError, match="expected 2 arrays"):
        net.weights = [np.ones((3, 4))]


def test_hand_worked_sgd_step():
    # x = (1, 2), W = (0.5, -0.5), b = 0.1, y = 1, one sigmoid unit, eta = 1:
    # z = 0.5 - 1 + 0.1 = -0.4, a = sigma(-0.4) = 0.401312339887548
    # C = (a - 1)^2 / 2 = 0.17921345718546142
    # delta = (a - 1) a (1 - a) = -0.14384114368486886
    # W' = W - x delta = (0.6438411436848689, -0.21231771263026228), b' = 0.24384114368486887
    for backend in BACKENDS:
        net = Network([2, 1], dtype="float64", backend=backend, seed=0)
        net.weights[0] = [[0.5], [-0.5]]
        net.biases[0] = [0.1]
        X, Y = np.array([[1.0, 2.0]]), np.array([[1.0]])
        assert net.evaluate(X, Y)["loss"] == pytest.approx(0.17921345718546142, rel=1e-14)
        hist = net.fit(X, Y, epochs=1, batch_size=1, lr=1.0)
        assert hist["loss"] == [pytest.approx(0.17921345718546142, rel=1e-14)]
        assert_allclose(net.weights[0][:, 0], [0.6438411436848689, -0.21231771263026228], rtol=1e-14)
        assert_allclose(net.biases[0], [0.24384114368486887], rtol=1e-14)


@pytest.mark.parametrize("output, loss", OUTPUT_LOSS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_backends_give_the_same_weights_after_an_epoch(hidden, output, loss):
    X, y = make_classification(n=300, n_features=10, n_classes=4, seed=2)
    nets = [Network([10, 9, 7, 4], activation=hidden, output=output, loss=loss,
                    dtype="float64", seed=3, backend=b) for b in BACKENDS]
    lr = 0.05 if hidden in ("identity", "relu", "leaky_relu") else 0.5
    hists = [net.fit(X, y, epochs=1, batch_size=10, lr=lr) for net in nets]
    fast, slow = nets
    for a, b in zip(fast.weights + fast.biases, slow.weights + slow.biases):
        assert np.max(np.abs(a - b)) < 1e-10
    assert hists[0]["loss"][0] == pytest.approx(hists[1]["loss"][0], rel=1e-10)
    assert hists[0]["accuracy"] == hists[1]["accuracy"]


def test_backends_agree_on_mnist(mnist):
    (X, y), _ = mnist
    nets = [Network([784, 30, 10], dtype="float64", seed=0, backend=b) for b in BACKENDS]
    for net in nets:
        net.fit(X[:10000], y[:10000], epochs=1, batch_size=10, lr=3.0)
    for a, b in zip(nets[0].weights + nets[0].biases, nets[1].weights + nets[1].biases):
        assert np.max(np.abs(a - b)) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_pixels_are_scaled_to_unit_range(backend):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 6)).astype(np.uint8)
    y = rng.integers(0, 3, 50)
    a = Network([6, 5, 3], dtype="float64", seed=1, backend=backend)
    b = Network([6, 5, 3], dtype="float64", seed=1, backend=backend)
    a.fit(pixels, y, epochs=2, batch_size=8, lr=1.0)
    b.fit(pixels / 255.0, y, epochs=2, batch_size=8, lr=1.0)
    assert_allclose(a.weights[0], b.weights[0], rtol=1e-12)
    assert_allclose(a.forward(pixels), b.forward(pixels / 255.0), rtol=1e-12)


def test_labels_and_one_hot_targets_train_identically():
    X, y = make_classification(n=60, n_classes=4)
    a, b = Network([12, 6, 4], seed=2), Network([12, 6, 4], seed=2)
    ha = a.fit(X, y, epochs=1, batch_size=5, lr=1.0)
    hb = b.fit(X, one_hot(y, 4), epochs=1, batch_size=5, lr=1.0)
    assert_array_equal(a.weights[1], b.weights[1])
    assert ha["accuracy"] == hb["accuracy"]


def test_single_output_takes_binary_labels():
    X, y = make_classification(n=100, n_classes=2)
    net = Network([12, 5, 1], output="sigmoid", loss="cross_entropy", seed=0)
    net.fit(X, y, epochs=20, batch_size=10, lr=0.5)
    assert set(np.unique(net.predict(X))) <= {0, 1}
    assert net.evaluate(X, y)["accuracy"] > 0.9


def test_regression_targets_report_no_accuracy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    Y = np.c_[X @ [1.0, -2.0, 0.5], X[:, 0] ** 2] / 4
    net = Network([3, 16, 2], activation="tanh", output="identity", seed=0, dtype="float64")
    hist = net.fit(X, Y, epochs=200, batch_size=8, lr=0.05)
    assert "accuracy" not in hist
    assert hist["loss"][-1] < 0.2 * hist["loss"][0]
    result = net.evaluate(X, Y)
    assert set(result) == {"loss", "n"}


def test_fit_learns_and_history_has_keras_names():
    X, y = make_classification(n=400, seed=4)
    net = Network([12, 16, 4], seed=0)
    calls = []
    hist = net.fit(X[:300], y[:300], epochs=5, batch_size=10, lr=1.0,
                   validation_data=(X[300:], y[300:]),
                   callback=lambda epoch, m: calls.append((epoch, m["loss"])))
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    assert hist.epochs == 5 and len(hist["loss"]) == 5 and hist.stopped is None
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4]
    assert hist["val_accuracy"][-1] > 0.8
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["val_loss"][-1] == pytest.approx(net.evaluate(X[300:], y[300:])["loss"])
    assert net.epochs_trained == 5


def test_callback_returning_false_stops_training():
    X, y = make_classification()
    hist = Network([12, 4], seed=0).fit(X, y, epochs=10, callback=lambda e, m: e < 2)
    assert hist.epochs == 3 and hist.stopped == "callback"


def test_last_batch_may_be_smaller():
    # 23 rows in batches of 10: steps of 10, 10 and 3 rows, each averaged over its own size
    X, y = make_classification(n=23)
    for backend in BACKENDS:
        net = Network([12, 4], dtype="float64", seed=0, backend=backend)
        expected = [p.copy() for p in net.weights + net.biases]
        for rows in (slice(0, 10), slice(10, 20), slice(20, 23)):
            g = net.gradient(X[rows], y[rows])
            expected = [p - 0.5 * d for p, d in zip(expected, g.weights + g.biases)]
            net.weights, net.biases = expected[:1], expected[1:]
        fresh = Network([12, 4], dtype="float64", seed=0, backend=backend)
        fresh.fit(X, y, epochs=1, batch_size=10, lr=0.5, shuffle=False)
        assert_allclose(fresh.weights[0], net.weights[0], rtol=1e-12)


def test_divergence_restores_weights_and_keeps_history():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4)) * 1e3
    Y = rng.normal(size=(100, 2)) * 1e3
    net = Network([4, 8, 2], activation="relu", output="identity", seed=0)
    before = [W.copy() for W in net.weights]
    with pytest.raises(TrainingDiverged, match="Try a smaller learning rate") as info:
        net.fit(X, Y, epochs=3, batch_size=10, lr=10.0)
    assert info.value.history.stopped == "diverged"
    for W, W0 in zip(net.weights, before):
        assert np.isfinite(W).all()
    assert all(np.array_equal(W, W0) for W, W0 in zip(net.weights, before)) == (
        info.value.history.epochs == 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sizes=[784]), "needs an input and an output layer"),
    (dict(sizes=[784, 0, 10]), "integers >= 1"),
    (dict(sizes=[784, 2.5, 10]), "integers >= 1"),
    (dict(sizes=5), "list of layer widths"),
    (dict(activation="relux"), r"Unknown activation 'relux'; expected one of \['identity'"),
    (dict(activation="softmax"), "can only be the output activation"),
    (dict(activation=["relu"]), "one name per hidden layer: 2"),
    (dict(output="nope"), "Unknown activation 'nope'"),
    (dict(loss="hinge"), r"Unknown loss 'hinge'; expected one of \['cross_entropy', 'mse'\]"),
    (dict(activation="relu", loss="cross_entropy"), "needs a sigmoid or softmax output"),
    (dict(dtype="float16"), "dtype must be one of"),
    (dict(init="glorot"), "Unknown init 'glorot'"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(slope=-0.1), "slope must be a finite number >= 0"),
    (dict(backend="gpu"), "Unknown backend 'gpu'"),
])
def test_invalid_configuration_is_one_clear_error(kwargs, message):
    kwargs = {"sizes": [784, 30, 30, 10], **kwargs}
    with pytest.raises(ConfigError, match=message):
        Network(**kwargs)


@pytest.mark.parametrize("X, y, message", [
    (np.ones((5, 7)), np.zeros(5, int), "X has 7 features, but this network expects 6"),
    (np.ones(6), np.zeros(1, int), r"must be 2-D .* X.reshape\(1, -1\)"),
    (np.ones((0, 6)), np.zeros(0, int), "X is empty"),
    (np.array([[1, 2, 3, 4, 5, np.nan]]), np.zeros(1, int), r"NaN or infinity \(first at row 0, column 5\)"),
    (np.array([["a"] * 2]), np.zeros(1, int), "X encodes to 2 inputs .* first layer takes 6"),
    (np.ones((5, 6)), np.zeros(4, int), "X has 5 samples but y has 4"),
    (np.ones((2, 6)), np.array([0, 3]), "label 3 at row 1, but the output layer's 3 unit"),
    (np.ones((2, 6)), np.array([0, -1]), "label -1 at row 1"),
    (np.ones((2, 6)), np.array([0.5, 1.0]), "non-integer values"),
    (np.ones((2, 6)), np.ones((2, 4)), r"y has shape \(2, 4\)"),
    (np.ones((2, 6)), np.array([[0.0, 1.0, np.inf]] * 2),
     "y has target inf at row 0, target column 2; targets must be finite numbers"),
    (np.ones((2, 6)), np.array([0, np.nan]), "y has label nan at row 1; labels must be finite"),
])
def test_bad_data_is_one_clear_error(X, y, message):
    net = Network([6, 4, 3], seed=0)
    before = net.weights[0].copy()
    with pytest.raises(DataError, match=message):
        net.fit(X, y, epochs=1)
    assert_array_equal(net.weights[0], before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=-1), "epochs must be an integer >= 0"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=2.5), "batch_size must be an integer"),
    (dict(lr=0), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(lr="fast"), "lr must be a number"),
    (dict(validation_data=np.ones((3, 6))), "validation_data must be a pair"),
])
def test_bad_fit_options_are_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Network([6, 3], seed=0).fit(np.ones((4, 6)), [0, 1, 2, 0], **kwargs)


def test_cross_entropy_targets_are_checked():
    net = Network([2, 3], output="softmax", loss="cross_entropy", seed=0)
    with pytest.raises(DataError, match="targets in \\[0, 1\\]"):
        net.fit(np.ones((2, 2)), np.array([[2.0, -1.0, 0.0]] * 2))
    with pytest.raises(DataError, match="row 0 of y sums to 0.5"):
        net.fit(np.ones((2, 2)), np.array([[0.25, 0.25, 0.0]] * 2))


def test_forward_predict_evaluate():
    X, y = make_classification(n=50)
    net = Network([12, 7, 4], output="softmax", loss="cross_entropy", seed=0)
    out = net.forward(X)
    assert out.shape == (50, 4) and out.dtype == np.float32
    assert_allclose(out.sum(axis=1), 1, rtol=1e-6)
    assert_array_equal(net.predict(X), out.argmax(axis=1))
    result = net.evaluate(X, y)
    assert set(result) == {"loss", "accuracy", "n"} and result["n"] == 50
    manual = -np.log(out[np.arange(50), y].astype(np.float64)).mean()
    assert result["loss"] == pytest.approx(manual, rel=1e-6)
    assert result["accuracy"] == np.mean(net.predict(X) == y)


def test_forward_handles_many_chunks_and_other_dtypes():
    from fastnn import network

    X = np.random.default_rng(0).normal(size=(2 * network.PREDICT_CHUNK + 7, 5))
    net = Network([5, 4, 2], seed=0, dtype="float64")
    full = net.forward(X)
    assert net._chunk(len(X)) < len(X) // 2                   # three chunks, the last short
    assert_allclose(net.forward(X[:3]), full[:3], rtol=1e-14)
    assert_allclose(net.forward(X.astype(np.float32)), full, rtol=1e-6)
    assert_allclose(net.forward(np.asfortranarray(X)), full, rtol=1e-14)
    assert_allclose(net.forward(X.tolist()), full, rtol=1e-14)


def test_float32_and_float64_train_alike():
    X, y = make_classification(n=200)
    a = Network([12, 8, 4], seed=0, dtype="float32")
    b = Network([12, 8, 4], seed=0, dtype="float64")
    a.fit(X, y, epochs=3, lr=0.5)
    b.fit(X, y, epochs=3, lr=0.5)
    assert_allclose(a.weights[0], b.weights[0], rtol=1e-3, atol=1e-4)


def test_package_exports():
    assert fastnn.Network is Network
    assert callable(fastnn.load) and callable(fastnn.datasets.load_mnist)
    assert isinstance(fastnn.__version__, str)


def test_training_is_the_deprecated_name_of_training_record():
    net = Network([3, 2], seed=0)
    net.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=1)
    with pytest.warns(DeprecationWarning, match="Network.training is now Network.training_record"):
        assert net.training is net.training_record
    with pytest.warns(DeprecationWarning):
        net.training = {"epochs": 1}
    assert net.training_record == {"epochs": 1}
