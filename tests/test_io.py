"""Model files: round trips, atomic writes, and refusing bad files clearly
(the write policy itself: test_files.py)."""
import json
import os

import numpy as np
import pytest
from conftest import damage, examples, hypothesis_api, rewrite_header
from numpy.testing import assert_array_equal

import fastnn
import fastnn.layers
from fastnn import ModelFileError, Network

given, settings, st, HealthCheck = hypothesis_api()


@pytest.fixture
def trained():
    rng = np.random.default_rng(0)
    net = Network([6, 5, 4, 3], activation=["tanh", "leaky_relu"], output="softmax",
                  loss="cross_entropy", seed=11, slope=0.05)
    net.fit(rng.normal(size=(40, 6)), rng.integers(0, 3, 40), epochs=2, lr=0.1)
    return net


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, dtype):
    net = Network([6, 5, 3], dtype=dtype, seed=3)
    path = tmp_path / "model.safetensors"
    net.save(path)
    loaded = fastnn.load(path)
    X = np.random.default_rng(1).normal(size=(20, 6))
    assert_array_equal(loaded.forward(X), net.forward(X))
    assert loaded.dtype == net.dtype and loaded.sizes == net.sizes


def test_round_trip_keeps_optimizer_state_and_input_scaling(tmp_path):
    rng = np.random.default_rng(0)
    net = Network([16, 5, 3], seed=1)
    net.fit(rng.integers(0, 256, (30, 16)).astype(np.uint8), rng.integers(0, 3, 30), epochs=2,
            optimizer="adam", lr=0.01)
    net.save(tmp_path / "m.safetensors")
    loaded = fastnn.load(tmp_path / "m.safetensors")
    assert loaded.input_dtype == "uint8" and loaded.input_scale == 1 / 255
    assert loaded.optimizer_state.name == "adam" and loaded.optimizer_state.steps == 6
    assert_array_equal(loaded.optimizer_state.state, net.optimizer_state.state)


def test_refuses_optimizer_state_of_the_wrong_shape(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    trained.save(path)
    rewrite_header(path, lambda h: h["__metadata__"].update(
        optimizer=json.dumps({"name": "adam", "steps": 3})))
    with pytest.raises(ModelFileError, match=r"optimizer.state is \(1, 74\), but sizes .* need \(3, 74\)"):
        fastnn.load(path)
    rewrite_header(path, lambda h: h["__metadata__"].update(optimizer='{"name": "lbfgs"}'))
    with pytest.raises(ModelFileError,
                       match=r"damaged fastnn header: optimizer.name must be one of .*not \"lbfgs\""):
        fastnn.load(path)


def test_round_trip_keeps_the_description(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    trained.save(str(path))
    loaded = fastnn.load(str(path))
    assert repr(loaded) == repr(trained)
    assert loaded.slope == 0.05 and loaded.epochs_trained == 2
    assert loaded.training_record["final"]["loss"] == trained.training_record["final"]["loss"]
    for a, b in zip(loaded.weights + loaded.biases, trained.weights + trained.biases):
        assert_array_equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))          # no temporary file left behind


def test_model_file_is_plain_safetensors_with_metadata(tmp_path, trained):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    trained.save(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["biases.0", "biases.1", "biases.2", "optimizer.state",
                                    "weights.0", "weights.1", "weights.2"]
    assert meta["format"] == "fastnn" and meta["format_version"] == "1"   # a dense stack
    assert meta["fastnn_version"] == fastnn.__version__
    network = json.loads(meta["network"])
    assert network["sizes"] == [6, 5, 4, 3] and network["seed"] == 11
    assert json.loads(meta["input_scaling"]) == {"input_dtype": "float64", "scale": 1.0}
    assert json.loads(meta["training"])["epochs"] == 2
    assert json.loads(meta["optimizer"]) == {"name": "sgd", "steps": 8}


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch, trained):
    path = tmp_path / "m.safetensors"
    trained.save(path)
    original = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ModelFileError, match="No space left on device"):
        Network([2, 2], seed=0).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_into_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        Network([2, 2], seed=0).save(tmp_path / "nope" / "m.safetensors")
    with pytest.raises(ModelFileError, match="is a directory"):
        Network([2, 2], seed=0).save(tmp_path)


def test_refuses_missing_and_non_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        fastnn.load(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="is a directory"):
        fastnn.load(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model at all")
    with pytest.raises(ModelFileError, match="not a fastnn model"):
        fastnn.load(text)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"abc")
    with pytest.raises(ModelFileError, match="too short"):
        fastnn.load(tiny)


def test_refuses_safetensors_that_is_not_fastnn(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(ModelFileError, match="safetensors file but not a fastnn model"):
        fastnn.load(path)


def test_refuses_truncated_files(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    trained.save(path)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 40):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated"):
            fastnn.load(path)


def test_refuses_newer_format_version(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    trained.save(path)
    rewrite_header(path, lambda h: h["__metadata__"].update(format_version="99"))
    with pytest.raises(ModelFileError, match="newer fastnn .*format version 99.*Upgrade"):
        fastnn.load(path)


def test_refuses_inconsistent_shapes(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    trained.save(path)

    def wrong_sizes(h):
        net = json.loads(h["__metadata__"]["network"])
        net["sizes"] = [6, 5, 4, 4]
        h["__metadata__"]["network"] = json.dumps(net)

    rewrite_header(path, wrong_sizes)
    with pytest.raises(ModelFileError, match=r"inconsistent shapes: weights.2 is \(4, 3\)"):
        fastnn.load(path)


def test_refuses_a_damaged_description(tmp_path, trained):
    path = tmp_path / "m.safetensors"
    trained.save(path)
    rewrite_header(path, lambda h: h["__metadata__"].update(network="{broken"))
    with pytest.raises(ModelFileError, match="damaged fastnn header"):
        fastnn.load(path)
    trained.save(path)
    rewrite_header(path, lambda h: h["__metadata__"].update(
        network=h["__metadata__"]["network"].replace('"tanh"', '"exec"')))
    with pytest.raises(ModelFileError, match=r"damaged fastnn header: network.activations\[0\] "
                                             r"must be one of \[.*'tanh'\], not \"exec\""):
        fastnn.load(path)
    # names the schema knows, in an order the network refuses: the header
    # check builds the plan, so `info` refuses it as `load` does
    trained.save(path)
    rewrite_header(path, lambda h: h["__metadata__"].update(
        network=h["__metadata__"]["network"].replace('"tanh"', '"softmax"')))
    with pytest.raises(ModelFileError, match="damaged fastnn header: network describes no valid "
                                             "network: 'softmax' can only be the output"):
        fastnn.load(path)
    with pytest.raises(ModelFileError, match="'softmax' can only be the output"):
        fastnn.io.read_header(path)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_loader_survives_random_and_damaged_bytes(tmp_path, data):
    # only fastnn's own error ever comes out, whatever the bytes
    net = Network([4, 3, 2], seed=0)
    path = tmp_path / "fuzz.safetensors"
    net.save(path, force=True)   # over the previous example's damaged bytes
    blob = damage(data, path.read_bytes())
    path.write_bytes(blob)
    try:
        loaded = fastnn.load(path)
    except ModelFileError:
        return
    assert loaded.forward(np.ones((1, 4))).shape == (1, 2)


# ------------------------------------------------------------- format 2

def conv_net(dtype="float32", **fit):
    """A small conv net with every layer kind, trained one epoch on uint8 images."""
    from fastnn.layers import Conv2D, Dropout, L2Pool2D, MaxPool2D

    net = Network([(10, 12, 2), Conv2D(4, 3, padding="same", activation="tanh"), MaxPool2D(2),
                   Conv2D(5, (2, 3), stride=(1, 2)), L2Pool2D(2, stride=1), Dropout(0.25), 12,
                   3], activation="relu", output="softmax", loss="cross_entropy",
                  dtype=dtype, init="he", seed=3)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (60, 240)).astype(np.uint8)
    y = rng.integers(0, 3, 60)
    net.fit(X, y, epochs=1, batch_size=6, **fit)
    return net, X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_conv_net_is_written_in_format_2_and_read_back_exactly(tmp_path, dtype, monkeypatch):
    from fastnn import blas
    from fastnn.io import read_header

    # a conv team sums its threads' gradients, so its weights depend on its
    # size, which follows the idle cores: both fits below take the same
    monkeypatch.setattr(blas, "idle_cores", lambda: 1)

    net, X, y = conv_net(dtype, optimizer="adam", lr=0.01, lr_schedule="step:every=1,factor=0.5")
    net.save(tmp_path / "c.safetensors")
    header = read_header(tmp_path / "c.safetensors")
    assert header.version == 2
    assert sorted(header.tensors) == ["layers.0.biases", "layers.0.weights", "layers.2.biases",
                                      "layers.2.weights", "layers.6.biases", "layers.6.weights",
                                      "layers.7.biases", "layers.7.weights", "optimizer.state"]
    assert header.tensors["layers.2.weights"].shape == (2, 3, 4, 5)          # HWIO
    network = header.fields["network"]
    assert network["input_shape"] == [10, 12, 2]
    assert [layer["type"] for layer in network["layers"]] == [
        "conv2d", "maxpool2d", "conv2d", "l2pool2d", "dropout", "flatten", "dense", "dense"]
    assert network["activations"] == ["tanh", "relu", "relu", "softmax"]
    loaded = fastnn.load(tmp_path / "c.safetensors")
    assert repr(loaded) == repr(net) and loaded.layers == net.layers
    assert_array_equal(loaded._params, net._params)
    assert_array_equal(loaded.forward(X), net.forward(X))
    assert loaded.optimizer_state.steps == net.optimizer_state.steps == 10
    assert_array_equal(loaded.optimizer_state.state, net.optimizer_state.state)
    assert loaded.training_record == json.loads(json.dumps(net.training_record))
    assert loaded.input_dtype == "uint8" and loaded.epochs_trained == 1
    # resuming from the file continues exactly as the network in memory does
    schedule = fastnn.schedules.parse("step:every=1,factor=0.5")
    schedule.load_state_dict(loaded.training_record["lr_schedule_state"])
    loaded.fit(X, y, epochs=1, batch_size=6, optimizer="adam", lr=0.01, lr_schedule=schedule)
    schedule = fastnn.schedules.parse("step:every=1,factor=0.5")
    schedule.load_state_dict(net.training_record["lr_schedule_state"])
    net.fit(X, y, epochs=1, batch_size=6, optimizer="adam", lr=0.01, lr_schedule=schedule)
    assert_array_equal(loaded._params, net._params)


def test_the_weights_in_the_file_are_the_networks_hwio_tensors(tmp_path):
    from safetensors.numpy import load_file

    net, _, _ = conv_net()
    net.save(tmp_path / "c.safetensors")
    tensors = load_file(tmp_path / "c.safetensors")
    names = [s.layer for s in net.plan.slots]
    for k, i in enumerate(names):
        assert_array_equal(tensors[f"layers.{i}.weights"], net.weights[k])
        assert_array_equal(tensors[f"layers.{i}.biases"], net.biases[k])


@pytest.mark.parametrize("spec", [[(4, 4), 3], [4, fastnn.layers.Dropout(0.5), 3],
                                  [4, fastnn.layers.Dense(5, activation="tanh"), 3]])
def test_which_networks_need_format_2(tmp_path, spec):
    from fastnn.io import read_header

    net = Network(spec, seed=0)
    net.save(tmp_path / "m.safetensors")
    expected = 1 if net.plan.plain_dense else 2
    assert read_header(tmp_path / "m.safetensors").version == expected
    loaded = fastnn.load(tmp_path / "m.safetensors")
    assert_array_equal(loaded._params, net._params)
    assert loaded.activations == net.activations and loaded.input_shape == net.input_shape


def test_an_unknown_layer_type_names_the_version_that_wrote_it(tmp_path):
    net, _, _ = conv_net()
    path = tmp_path / "c.safetensors"
    net.save(path)

    def future(header):
        network = json.loads(header["__metadata__"]["network"])
        network["layers"][1] = {"type": "attention", "heads": 4}
        header["__metadata__"]["network"] = json.dumps(network)
        header["__metadata__"]["fastnn_version"] = "9.0"

    rewrite_header(path, future)
    with pytest.raises(ModelFileError, match=r"layer 1 has type \"attention\", which fastnn "
                       r".* does not know .*written by fastnn 9.0: load it with that version"):
        fastnn.load(path)


# ------------------------------------------------ what save writes, load reads

def _unloadable(net, how):
    """Damage `net` in memory the ways a run once wrote files that fastnn
    then refused (issue 24 §1), past the checks a run makes at its start."""
    pre = net.preprocessing
    if how == "classes":
        pre.classes = list(range(12_000))
    elif how == "scaling":
        pre.scaling.scale[1] = np.inf
    elif how == "target_name":
        pre.task, pre.classes = "regression", None
        pre.target_mean, pre.target_scale = np.zeros(3), np.ones(3)
        pre.target_names = ["t" * 300] * 3
    elif how == "schedule":
        net.training_record["lr_schedule"] = "step:every=" + "9" * 300
    elif how == "label_col":
        net.training_record["cli"] = {"label_col": "l" * 5000}
    elif how == "nan":
        net._params[0] = np.nan     # past the weights' own check
    elif how == "loss":
        net.loss = "cross_entropy"
        net.plan = Network([6, 5, 4, 3], activation="tanh", output="relu").plan


@pytest.mark.parametrize("how", ["classes", "scaling", "target_name", "schedule", "label_col",
                                 "nan", "loss"])
def test_save_refuses_what_load_would_and_keeps_the_old_file(tmp_path, how):
    rng = np.random.default_rng(0)
    net = Network([6, 5, 4, 3], activation="tanh", output="softmax", loss="cross_entropy",
                  seed=1)
    net.fit(rng.normal(size=(30, 6)), rng.integers(0, 3, 30), epochs=1, lr=0.1,
            task="classification", scale="standard")
    path = tmp_path / "good.safetensors"
    net.save(path)
    before = path.read_bytes()
    _unloadable(net, how)
    with pytest.raises(ModelFileError, match=r"^cannot save .*good.safetensors, nothing was "
                                             r"written: the model") as info:
        net.save(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors"]
    fastnn.load(path)


def test_a_checkpoint_callback_refuses_before_the_first_epoch(tmp_path):
    from fastnn.callbacks import ModelCheckpoint

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.normal(size=30)
    net = Network([4, 3, 1], output="identity", seed=0)
    net.fit(X, y, epochs=1, lr=0.1, task="regression")
    net.preprocessing.target_names = ["t" * 300]
    path = tmp_path / "m.safetensors"
    with pytest.raises(ModelFileError, match="targets.names"):
        net.fit(X, y, epochs=3, lr=0.1, callbacks=[ModelCheckpoint(path, save_best_only=False)])
    assert net.epochs_trained == 1 and not path.exists()


def test_an_output_layer_wider_than_the_classes_keeps_unit_numbers_up_to_the_limit(tmp_path):
    # integer labels are output units: a subset of the classes keeps them
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    net = Network([4, 10], seed=0)
    net.fit(X, y, epochs=1, task="classification")
    assert net.preprocessing.classes == list(range(10))
    net.save(tmp_path / "m.safetensors")
    assert fastnn.load(tmp_path / "m.safetensors").preprocessing.classes == list(range(10))
    # ... up to the most classes a model may have, and no further
    for net in (Network([4, 12_000], seed=0), Network([4, 10_001], seed=0)):
        with pytest.raises(fastnn.DataError, match=r"has 3 classes \(0, 1, 2\), but the output "
                                                   r"layer has 1[02],00[01] units.*give it 3"):
            net.fit(X, y, epochs=1, task="classification")
    # labels that are names must match the layer exactly
    with pytest.raises(fastnn.DataError, match="has 3 classes .* output layer has 10 unit"):
        Network([4, 10], seed=0).fit(X, np.array(["a", "b", "c"])[y], epochs=1)


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_scaling_of_features_near_the_float64_limit(tmp_path, kind):
    X = np.random.default_rng(0).normal(size=(40, 3))
    X[:20, 1], X[20:, 1] = 1.7e308, -1.7e308
    y = np.arange(40) % 2
    net = Network([3, 4, 2], seed=0)
    if kind == "minmax":
        # the range itself is past float64: refused before training
        with pytest.raises(fastnn.DataError, match="feature 1 spans more than float64"):
            net.fit(X, y, epochs=1, scale=kind)
        assert net.epochs_trained == 0
        return
    with np.errstate(all="ignore"):
        net.prepare(X, y, scale=kind)
    scaling = net.preprocessing.scaling
    assert np.isfinite(scaling.scale).all() and scaling.scale[1] == pytest.approx(1.7e308)
    net.save(tmp_path / "m.safetensors")
    assert_array_equal(fastnn.load(tmp_path / "m.safetensors").preprocessing.scaling.scale,
                       scaling.scale)


def test_regression_targets_near_the_float64_limit_are_standardised():
    from fastnn.preprocessing import Preprocessing

    y = np.where(np.arange(20) % 2, 1e308, -1e308)
    pre = Preprocessing.learn(np.zeros((20, 2)), y, 1, task="regression")
    assert pre.target_mean[0] == 0 and pre.target_scale[0] == pytest.approx(1e308)
    np.testing.assert_allclose(pre.encode(y, 1)[:, 0], np.sign(y), rtol=1e-15)


def _same_network(a, b):
    assert repr(a) == repr(b)
    assert a.epochs_trained == b.epochs_trained and a.input_dtype == b.input_dtype
    for x, y in zip([*a.weights, *a.biases], [*b.weights, *b.biases]):
        assert_array_equal(x, y)
    pa, pb = a.preprocessing, b.preprocessing
    assert (pa is None) == (pb is None)
    if pa is not None:
        assert json.dumps(pa.to_dict()) == json.dumps(pb.to_dict())
    assert json.loads(json.dumps(a.training_record, default=float)) == b.training_record


def _fit_and_save(tmp_path, sizes, X, y, net_options, fit_options):
    net = Network(sizes, **net_options)
    with np.errstate(all="ignore"):
        net.fit(X, y, **fit_options)
    path = tmp_path / "m.safetensors"
    net.save(path, force=True)
    return net, path


MAX_NAME = "n" * 256


@pytest.mark.parametrize("case", [
    "seed_max", "seed_zero", "epochs_zero", "names_at_limit", "float_classes", "int_classes",
    "many_classes", "regression_names", "schedules", "conv", "minmax", "pixels", "none", "adamw",
    "dropout_list", "class_weight", "early_stopping"])
def test_every_option_that_reaches_the_header_reads_back(tmp_path, case):
    from fastnn._validation import MAX_COUNT, MAX_SEED
    from fastnn.layers import Conv2D, MaxPool2D

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 4)), rng.integers(0, 3, 24)
    sizes, net_opts, fit = [4, 5, 3], {"seed": 1}, {"epochs": 1, "lr": 0.1}
    if case == "seed_max":
        net_opts["seed"] = MAX_SEED
    elif case == "seed_zero":
        net_opts["seed"] = 0
    elif case == "epochs_zero":
        fit["epochs"] = 0
    elif case == "names_at_limit":
        y = np.array([MAX_NAME, "é" * 256, "b"])[y]
    elif case == "float_classes":
        y, fit["task"] = np.array([0.5, 1e300, -3.25])[y], "classification"
    elif case == "int_classes":
        y, fit["task"] = np.array([3, 7, 9999])[y], "classification"
    elif case == "many_classes":
        sizes, y, fit["task"] = [4, 2, 10_000], np.arange(24), "classification"
    elif case == "regression_names":
        sizes, y = [4, 5, 1], rng.normal(size=24) * 1e300
        net_opts["output"], fit["task"] = "identity", "regression"
    elif case == "schedules":
        fit["lr_schedule"] = (f"plateau:patience={MAX_COUNT},factor=0.1,"
                              f"max_reductions={MAX_COUNT},monitor=loss")
    elif case == "conv":
        sizes = [(2, 2, 1), Conv2D(3, 2, padding="same"), MaxPool2D(2), 3]
        X = rng.integers(0, 256, (24, 4)).astype(np.uint8)
    elif case in ("minmax", "pixels", "none"):
        fit["scale"] = case
    elif case == "adamw":
        fit.update(optimizer="adamw", lr=1e-3, betas=(0.5, 0.999), eps=1e-30,
                   weight_decay=0.5, clip_norm=1e300)
    elif case == "dropout_list":
        sizes, fit["dropout"] = [4, 5, 5, 3], [0.5, 0.0]
    elif case == "class_weight":
        fit["class_weight"] = "balanced"
    elif case == "early_stopping":
        fit.update(early_stopping=MAX_COUNT, validation_split=0.25, epochs=2)
    net, path = _fit_and_save(tmp_path, sizes, X, y, net_opts, fit)
    loaded = fastnn.load(path)
    _same_network(net, loaded)
    if case == "regression_names":
        net.preprocessing.target_names = [MAX_NAME]
        net.save(path)
        assert fastnn.load(path).preprocessing.target_names == [MAX_NAME]
    if case == "schedules":
        from fastnn.schedules import SCHEDULES

        for name in SCHEDULES:
            net, path = _fit_and_save(tmp_path, sizes, X, y, net_opts,
                                      {**fit, "lr_schedule": name})
            _same_network(net, fastnn.load(path))


text = st.characters(blacklist_categories=("Cs",))
names = st.one_of(st.text(text, min_size=1, max_size=20), st.text(text, min_size=250,
                                                                   max_size=300))


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_the_writer_what_it_writes_loads(tmp_path, data):
    """Random options and small data into Network/fit, then save over a good
    model: either the run or the save is refused with a FastnnError (and the
    good model is byte-identical), or load reads back what was written."""
    from fastnn.exceptions import FastnnError
    from fastnn.schedules import SCHEDULES

    good = tmp_path / "good.safetensors"
    if not good.exists():
        Network([3, 2], seed=0).save(good)
    before = good.read_bytes()
    draw = data.draw
    n = draw(st.integers(4, 12))
    n_out = draw(st.integers(1, 4))
    hidden = draw(st.lists(st.integers(1, 6), max_size=2))
    magnitude = draw(st.sampled_from([1.0, 1e-300, 1e30, 1e300, 1.7e308]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    with np.errstate(over="ignore"):
        X = rng.normal(size=(n, 3)) * magnitude
    task = draw(st.sampled_from([None, "classification", "regression"]))
    if task == "regression":
        with np.errstate(over="ignore"):
            y = rng.normal(size=(n, n_out)) * draw(st.sampled_from([1.0, 1e300, 1.7e308]))
    else:
        label_names = draw(st.lists(names, min_size=2, max_size=3, unique=True))
        y = np.array(label_names)[rng.integers(0, len(label_names), n)]
        if draw(st.booleans()):
            y = rng.integers(0, draw(st.integers(2, 5)), n)
    net_options = {
        "activation": draw(st.sampled_from(["sigmoid", "tanh", "relu", "leaky_relu"])),
        "output": draw(st.sampled_from(["sigmoid", "softmax", "identity", "tanh"])),
        "loss": "mse",
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "seed": draw(st.one_of(st.integers(0, 2 ** 64), st.just(2 ** 1024))),
        "slope": draw(st.floats(0, 1e300)),
    }
    fit_options = {
        "epochs": draw(st.integers(0, 2)),
        "lr": draw(st.floats(1e-300, 1e3)),
        "scale": draw(st.sampled_from([None, "standard", "minmax", "pixels", "none"])),
        "lr_schedule": draw(st.sampled_from([None, *SCHEDULES])),
        "optimizer": draw(st.sampled_from(["sgd", "adam", "momentum"])),
        "task": task,
    }
    if net_options["output"] in ("sigmoid", "softmax") and task != "regression":
        net_options["loss"] = draw(st.sampled_from(["mse", "cross_entropy"]))
    try:
        net = Network([3, *hidden, n_out], **net_options)
        with np.errstate(all="ignore"):
            net.fit(X, y, **fit_options)
    except FastnnError:
        return
    net.training_record["cli"] = {"label_col": draw(st.one_of(names, st.integers(1, 2 ** 62)))}
    if net.preprocessing is not None and net.preprocessing.task == "regression":
        net.preprocessing.target_names = draw(st.one_of(st.none(),
                                                        st.lists(names, min_size=n_out,
                                                                 max_size=n_out)))
    try:
        net.save(good)
    except FastnnError as exc:
        assert "\n" not in str(exc)
        assert good.read_bytes() == before
        return
    _same_network(net, fastnn.load(good))


def test_without_memory_for_a_second_copy_save_still_checks_header_and_values(tmp_path,
                                                                              monkeypatch):
    # the network is not built again, but the header and NaN/inf still are checked
    from fastnn import memory
    from fastnn.exceptions import ResourceError

    net = Network([4, 3, 2], seed=0)
    path = tmp_path / "m.safetensors"

    def no_memory(*args, **kwargs):
        raise ResourceError("no memory")

    monkeypatch.setattr(memory, "check_fits", no_memory)
    net.save(path)
    net._params[0] = np.inf
    with pytest.raises(ModelFileError, match="nothing was written: the model: weights.0 "
                                             "contains NaN or infinity"):
        net.save(path)
    monkeypatch.undo()
    assert np.isfinite(fastnn.load(path).weights[0]).all()     # the first save, kept


# Headers as older fastnn versions wrote them, by hand: the first format 1
# (input_scaling a table by dtype, no input_dtype, no weight_layout), a later
# format 1 and a format 2 (input_dtype recorded), and a format 3 of those.
_W = np.array([[1, 0], [0, 1], [0, 0], [0, 0]], np.float32)    # picks x0 and x1
_B = np.zeros(2, np.float32)
_OLD_HEADERS = {
    "format 1, first style": {
        "network": {"sizes": [4, 2], "activations": ["identity"], "loss": "mse",
                    "dtype": "float32", "init": "nielsen", "seed": 1, "slope": 0.01,
                    "epochs_trained": 3},
        "input_scaling": {"uint8": 1 / 255, "float32": 1.0, "float64": 1.0}},
    "format 1, input_dtype": {
        "network": {"sizes": [4, 2], "activations": ["identity"], "loss": "mse",
                    "dtype": "float32", "seed": 1, "epochs_trained": 3, "input_dtype": "uint8"},
        "input_scaling": {"input_dtype": "uint8", "scale": 1 / 255}},
    "format 2": {
        "network": {"input_shape": [4], "layers": [{"type": "dropout", "rate": 0.5},
                                                   {"type": "dense", "units": 2}],
                    "activations": ["identity"], "loss": "mse", "dtype": "float32", "seed": 1,
                    "input_dtype": "uint8"},
        "input_scaling": {"input_dtype": "uint8", "scale": 1 / 255}},
}


def _old_member(name):
    fields = _OLD_HEADERS[name]
    version = "2" if "layers" in fields["network"] else "1"
    meta = {"format": "fastnn", "format_version": version, "fastnn_version": "0.0.1",
            **{key: json.dumps(value) for key, value in fields.items()}}
    names = ("layers.1.weights", "layers.1.biases") if version == "2" else ("weights.0",
                                                                           "biases.0")
    return meta, dict(zip(names, (_W, _B)))


@pytest.mark.parametrize("name", [*_OLD_HEADERS, "format 3"])
def test_files_of_older_versions_load_and_give_the_same_outputs(tmp_path, name):
    from fastnn.io import safetensors_bytes

    if name == "format 3":
        members = [_old_member("format 1, input_dtype"), _old_member("format 2")]
        meta = {"format": "fastnn", "format_version": "3", "fastnn_version": "0.0.1",
                "ensemble": json.dumps({"members": 2})}
        tensors = {}
        for k, (theirs, arrays) in enumerate(members):
            meta[f"member.{k}"] = json.dumps(theirs)
            tensors.update({f"member.{k}.{t}": a for t, a in arrays.items()})
    else:
        meta, tensors = _old_member(name)
    path = tmp_path / "old.safetensors"
    path.write_bytes(safetensors_bytes(tensors, meta))
    net = fastnn.load(path)
    X = np.array([[0, 1, 2, 3], [255, 128, 7, 9], [3, 254, 0, 0]], np.uint8)
    # uint8 pixels are divided by 255 in float32 (a division: the same
    # rounding), and the weights pick x0 and x1 exactly
    expected = X[:, :2].astype(np.float32) / np.float32(255)
    assert_array_equal(net.forward(X), expected)
    assert_array_equal(net.forward(X.astype(np.float32)), X[:, :2])
    # the first style did not record the inputs' dtype
    first = name == "format 1, first style"
    assert net.input_dtype == (None if first else "uint8")
    assert net.input_scale == (1.0 if first else 1 / 255)
    assert net.input_scaling.kind == ("none" if first else "pixels")
