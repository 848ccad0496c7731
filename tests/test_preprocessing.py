"""Tasks, class names, feature scaling and target standardisation (issue 12)."""
import json

import numpy as np
import pytest
from conftest import needs

import fastnn
from fastnn import Network
from fastnn._validation import infer_targets
from fastnn.exceptions import ConfigError, DataError, ModelFileError
from fastnn.preprocessing import Preprocessing, Scaling, regression_metrics


# ------------------------------------------------------------ the task

@pytest.mark.parametrize("y, task, classes, n_out", [
    (np.array(["b", "a", "c", "a"]), "classification", ["a", "b", "c"], 3),
    (np.array([3, 7, 9, 3]), "classification", [3, 7, 9], 3),
    (np.array([-1, 1, 1, -1]), "classification", [-1, 1], 2),
    (np.array([5, 0, 4, 1, 9]), "classification", list(range(10)), 10),   # MNIST rows
    (np.array([0.5, 1.25, 2.0, 0.75]), "regression", None, 1),
    (np.eye(3)[[0, 1, 2, 1]], "classification", [0, 1, 2], 3),             # one-hot rows
    (np.array([[0.5, 2.0], [1.5, 3.0]]), "regression", None, 2),
])
def test_the_task_is_inferred_when_the_labels_leave_no_doubt(y, task, classes, n_out):
    got = infer_targets(y)
    assert (got.task, got.classes, got.n_outputs, got.inferred) == (task, classes, n_out, True)


@pytest.mark.parametrize("y, message", [
    (np.array([0, 1, 2, 3.5, 1, 0]), "mixes whole numbers with non-integer values such as 3.5"),
    (np.arange(25, 347), "fewer than two rows per class"),         # diabetes-like targets
    (np.repeat(np.arange(100, 140), 3), "only 40 of those 140 classes occur"),
])
def test_ambiguous_labels_ask_for_the_task(y, message):
    with pytest.raises(DataError, match=message) as info:
        infer_targets(y)
    assert "task='classification' or task='regression'" in str(info.value)
    assert "\n" not in str(info.value)
    # stated, they are accepted
    assert infer_targets(y, "regression").n_outputs == 1
    assert infer_targets(y, "classification").n_outputs == len(np.unique(y))


def test_a_stated_task_is_checked():
    with pytest.raises(ConfigError, match=r"task must be one of \['classification', "
                                          r"'regression'\], not 'ranking'"):
        infer_targets(np.array([0, 1]), "ranking")
    with pytest.raises(DataError, match="regression needs numbers"):
        infer_targets(np.array(["a", "b"]), "regression")
    with pytest.raises(DataError, match="a single class"):
        infer_targets(np.array([4, 4, 4]), "classification")


# ------------------------------------------------------------ scaling

def test_standard_and_minmax_scaling_match_scikit_learn_and_constant_columns_give_zero():
    needs("sklearn")
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(3, 5, size=(50, 4))
    X[:, 2] = 7.0                                             # a constant column
    for kind, reference in (("standard", StandardScaler()), ("minmax", MinMaxScaler())):
        got = Scaling.fit(kind, X).transform(X, np.dtype(np.float64))
        np.testing.assert_allclose(got, reference.fit_transform(X), atol=1e-12)
        assert np.isfinite(got).all() and (got[:, 2] == 0).all()


def test_pixels_divide_by_255_and_keep_uint8_for_the_kernels():
    X = np.array([[0, 51, 255]], np.uint8)
    s = Scaling.fit("pixels", X)
    assert s.transform(X, np.dtype(np.float32)) is X
    np.testing.assert_allclose(s.transform(X.astype(float), np.dtype(np.float64)),
                               [[0, 0.2, 1]])
    # none: uint8 used as numbers, not pixels
    assert Scaling.fit("none", X).transform(X, np.dtype(np.float64)).max() == 255


def test_fit_with_scale_equals_fitting_on_scaled_rows():
    rng = np.random.default_rng(1)
    X = rng.normal(100, 30, size=(80, 5))
    y = (X[:, 0] > 100).astype(int)
    a = Network([5, 6, 2], seed=0, dtype="float64")
    a.fit(X, y, epochs=3, scale="standard")
    Xs = (X - X.mean(axis=0)) / X.std(axis=0)
    b = Network([5, 6, 2], seed=0, dtype="float64")
    b.fit(Xs, y, epochs=3)
    np.testing.assert_allclose(a.forward(X), b.forward(Xs), rtol=1e-10, atol=1e-12)
    # a trained network keeps its scaling
    with pytest.raises(ConfigError, match="trained with scale='standard'"):
        a.fit(X, y, epochs=1, scale="minmax")


# ------------------------------------------------------------ classes

def test_string_classes_are_learned_predicted_and_saved(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 3))
    names = np.array(["cat", "dog", "émeu"])
    y = names[np.argmax(X, axis=1)]
    net = Network([3, 8, 3], seed=0)
    net.fit(X, y, epochs=20, lr=1.0, scale="standard")
    assert net.preprocessing.classes == ["cat", "dog", "émeu"]
    predicted = net.predict(X)
    assert predicted.dtype.kind == "U" and (predicted == y).mean() > 0.8
    assert net.evaluate(X, y)["accuracy"] == (predicted == y).mean()
    with pytest.raises(DataError, match="label 'cow' at row 1, which is not one of the "
                                        "model's classes"):
        net.evaluate(X[:2], np.array(["cat", "cow"]))
    net.save(tmp_path / "m.safetensors")
    loaded = fastnn.load(tmp_path / "m.safetensors")
    assert loaded.preprocessing.classes == net.preprocessing.classes
    assert (loaded.predict(X) == predicted).all()
    np.testing.assert_array_equal(loaded.forward(X), net.forward(X))


def test_integer_classes_3_7_9_map_to_three_units():
    X = np.random.default_rng(3).normal(size=(30, 2))
    y = np.array([3, 7, 9] * 10)
    net = Network([2, 4, 3], seed=0)
    net.fit(X, y, epochs=1, task="classification")
    assert net.preprocessing.classes == [3, 7, 9]
    assert set(net.predict(X).tolist()) <= {3, 7, 9}
    # without a task, numbers are unit numbers, as before
    with pytest.raises(DataError, match="label 3 at row 0, but the output layer's 3 unit"):
        Network([2, 4, 3], seed=0).fit(X, y, epochs=1)


def test_class_count_must_match_the_output_layer():
    with pytest.raises(DataError, match=r"has 3 classes \(a, b, c\), but the output layer has "
                                        r"2 unit\(s\)"):
        Network([2, 2], seed=0).fit(np.zeros((3, 2)), np.array(["a", "b", "c"]), epochs=1)
    # one sigmoid unit takes two classes
    net = Network([2, 1], seed=0)
    net.fit(np.eye(2), np.array(["no", "yes"]), epochs=1)
    assert net.preprocessing.classes == ["no", "yes"]


@pytest.mark.parametrize("names, text", [
    (list(range(10)), "0..9"),                                  # MNIST's digits
    (np.arange(100).tolist(), "0..99"),
    ([0, 1, 2], "0, 1, 2"),                                     # a short run written out
    ([3, 7, 9], "3, 7, 9"),
    ([-2, -1, 0, 1, 2, 5], "-2..2, 5"),
    (["setosa", "versicolor", "virginica"], "setosa, versicolor, virginica"),
    ([f"c{k}" for k in range(12)], ", ".join(f"c{k}" for k in range(12))),   # all of 12
    ([f"c{k}" for k in range(13)], ", ".join(f"c{k}" for k in range(12)) + ", ... (13 in all)"),
    ([*range(0, 40, 2)], "0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, ... (20 in all)"),
    (["a\nb", "x" * 50], "'a\\nb', " + "x" * 37 + "..."),
    ([True, False], "True, False"),                              # booleans are no run
])
def test_class_lists_read_whole_or_as_ranges(names, text):
    from fastnn._validation import listing

    assert listing(names) == text


@pytest.mark.parametrize("dtype, source, scale", [
    (np.uint8, None, "pixels"), (np.float32, None, "standard"), (None, None, "standard"),
    (np.uint8, "idx", "pixels"), (np.uint8, "npy", "pixels"), (np.float64, "npz", "standard"),
    (np.uint8, "csv", "standard"),          # a CSV is tabular, whatever its values
    (np.float32, "pickle", "none"),         # Nielsen's images, already in [0, 1]
])
def test_auto_scale_is_decided_in_one_place(dtype, source, scale):
    from fastnn.preprocessing import auto_scale

    assert auto_scale(dtype, source) == scale


def test_the_task_line_names_mnist_s_classes_as_a_range():
    pre = Preprocessing(task="classification", classes=list(range(10)))
    assert pre.task_text() == "classification, 10 classes (0..9)"


# ---------------------------------------------------------- regression

def test_regression_standardises_targets_and_restores_predictions(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 3))
    y = 300 + 80 * X[:, 0] - 40 * X[:, 1] + rng.normal(0, 5, 200)     # in the hundreds
    net = Network([3, 16, 1], output="identity", seed=0)
    net.fit(X, y, epochs=40, lr=0.05, task="regression", scale="standard")
    pre = net.preprocessing
    np.testing.assert_allclose(pre.target_mean, [y.mean()])
    np.testing.assert_allclose(pre.target_scale, [y.std()])
    predicted = net.predict(X)
    assert predicted.shape == (200,) and abs(predicted.mean() - y.mean()) < 10
    result = net.evaluate(X, y)
    needs("sklearn")
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    assert result["r2"] == pytest.approx(r2_score(y, predicted), rel=1e-5) and result["r2"] > 0.9
    assert result["mse"] == pytest.approx(mean_squared_error(y, predicted), rel=1e-5)
    assert result["mae"] == pytest.approx(mean_absolute_error(y, predicted), rel=1e-5)
    assert result["rmse"] == pytest.approx(np.sqrt(result["mse"]))
    net.save(tmp_path / "r.safetensors")
    loaded = fastnn.load(tmp_path / "r.safetensors")
    np.testing.assert_array_equal(loaded.predict(X), predicted)


def test_regression_metrics_on_a_hand_worked_example():
    # errors 1, -1, 0, 2: MSE 6/4, MAE 4/4; SS_tot of 1, 2, 3, 4 is 5
    got = regression_metrics([1, 2, 3, 4], [2, 1, 3, 6])
    assert got == {"mse": 1.5, "rmse": pytest.approx(1.5 ** 0.5), "mae": 1.0, "r2": 1 - 6 / 5}


# ------------------------------------------------------------- files

def _saved(tmp_path, net):
    path = tmp_path / "m.safetensors"
    net.save(path)
    return path


def _rewrite_preprocessing(path, change):
    """Rewrite the preprocessing header field of a model file in place."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        meta = dict(f.metadata())
    tensors = load_file(path)
    field = json.loads(meta["preprocessing"])
    change(field)
    meta["preprocessing"] = json.dumps(field)
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(classes=["a", "b"]), "preprocessing.classes must be 3 class names"),
    (lambda f: f.update(classes=["a", "a", "b"]), "distinct names"),
    (lambda f: f.update(classes=["x" * 300, "b", "c"]), r"preprocessing.classes\[0\]"),
    (lambda f: f["scaling"].update(offset=[0.0]), "one per input"),
    (lambda f: f["scaling"].update(scale=[1.0, 0.0, 1.0, 1.0]), r"scale\[1\] must be a finite "
                                                               r"number > 0"),
    (lambda f: f["scaling"].update(kind="zscore"), "preprocessing.scaling.kind must be one of"),
    (lambda f: f.update(task="ranking"), "preprocessing.task"),
])
def test_damaged_preprocessing_fields_are_refused(tmp_path, change, message):
    net = Network([4, 3, 3], seed=0)
    net.fit(np.random.default_rng(0).normal(size=(9, 4)), np.array(["a", "b", "c"] * 3),
            epochs=1, scale="standard")
    path = _saved(tmp_path, net)
    _rewrite_preprocessing(path, change)
    with pytest.raises(ModelFileError, match=message):
        fastnn.load(path)


def test_preprocessing_round_trips_through_its_dict():
    pre = Preprocessing(task="regression", scaling=Scaling("minmax", np.zeros(2), np.ones(2)),
                        target_mean=np.array([1.5]), target_scale=np.array([2.0]),
                        target_names=["price"])
    back = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back.to_dict() == pre.to_dict()


@pytest.mark.parametrize("scale, rows, kind, divisor", [
    (None, np.uint8, "pixels", 255), ("pixels", np.uint8, "pixels", 255),
    ("pixels", np.float32, "pixels", None), ("none", np.uint8, "none", None),
    (None, np.float32, "none", None), ("standard", np.uint8, "standard", None)])
def test_one_description_says_how_raw_inputs_become_the_kernels(scale, rows, kind, divisor):
    from fastnn.preprocessing import fold

    X = np.arange(24).reshape(6, 4).astype(rows) * 10
    net = Network([4, 3, 2], output="softmax", loss="cross_entropy", seed=0)
    net.fit(X, np.arange(6) % 2, epochs=1, lr=0.1, scale=scale)
    described = net.input_scaling
    assert (described.kind, described.divisor) == (kind, divisor)
    # the kernels divide uint8 pixels themselves; every other scaling reaches
    # them as rows of the network's dtype
    assert net.input_dtype == ("uint8" if divisor else "float32")
    assert net.input_scale == (1 / 255 if divisor else 1.0)
    # what an export leaves to apply to raw rows: the kernels' division, or nothing
    plain, rest = fold(net)
    assert rest.divisor == divisor and rest.offset is None
    raw = X.astype(np.float64)
    first = raw / divisor if divisor else raw
    z = first @ plain.weights[0].astype(np.float64) + plain.biases[0]
    np.testing.assert_allclose(
        z, net.kernel_inputs(X).astype(np.float64) / (divisor or 1) @ net.weights[0]
        + net.biases[0], rtol=1e-5, atol=1e-5)
