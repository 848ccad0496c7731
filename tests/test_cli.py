"""The fastnn command, through CliRunner and through real subprocesses."""
import gzip
import http.server
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
from functools import partial

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST_DIR

import fastnn
from fastnn.cli import main

ENV = {"FASTNN_DATA": str(MNIST_DIR)}


def run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args], env=ENV)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def images(n=240, seed=0):
    """4x4 uint8 'images' of 3 classes that a small network can learn."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[40] * 16, [130] * 16, [220] * 16])
    X = np.clip(centres[y] + rng.normal(0, 25, (n, 16)), 0, 255).astype(np.uint8)
    return X, y


def idx_bytes(array):
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


@pytest.fixture
def files(tmp_path):
    """The same small dataset in every format fastnn reads."""
    X, y = images()
    made = {}
    made["npz"] = tmp_path / "data.npz"
    np.savez(made["npz"], X=X, y=y)
    np.save(tmp_path / "X_train.npy", X)
    np.save(tmp_path / "y_train.npy", y)
    made["npy"] = tmp_path / "X_train.npy"
    made["csv"] = tmp_path / "data.csv"
    header = ",".join([f"px{i}" for i in range(16)] + ["label"])
    np.savetxt(made["csv"], np.column_stack([X, y]), fmt="%d", delimiter=",", header=header,
               comments="")
    made["csv_noheader"] = tmp_path / "plain.csv"
    np.savetxt(made["csv_noheader"], np.column_stack([y, X]), fmt="%d", delimiter=",")
    made["idx"] = tmp_path / "train-images-idx3-ubyte.gz"
    made["idx"].write_bytes(gzip.compress(idx_bytes(X.reshape(-1, 4, 4))))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    made["idx_raw"] = tmp_path / "raw" / "t10k-images-idx3-ubyte"
    made["idx_raw"].parent.mkdir()
    made["idx_raw"].write_bytes(idx_bytes(X.reshape(-1, 4, 4)))
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    split = ((X / 255).astype(np.float32), y)
    made["pickle"] = tmp_path / "mnist.pkl.gz"
    made["pickle"].write_bytes(gzip.compress(pickle.dumps((split, split, split), protocol=2)))
    return made


def train_small(data, out, *extra, code=0):
    return run("train", data, "--hidden", "8", "--epochs", "15", "--lr", "1.0", "--seed", "0",
               "-o", out, *extra, code=code)


def test_every_command_has_help_with_an_example():
    for name, command in main.commands.items():
        result = run(name, "--help")
        assert command.help and f"fastnn {name}" in result.output, name
    assert "fastnn train" in run("--help").output


def test_version():
    assert fastnn.__version__ in run("--version").output


def test_a_random_seed_is_said_once_as_the_option_that_repeats_the_run(tmp_path):
    first = run("train", "--hidden", "8", "--epochs", "1", "--limit", "300", "-o",
                tmp_path / "a.safetensors").output.splitlines()[1]
    network, said = re.fullmatch(r"(Network\(.*\)): .*; seed: random \(--seed (\d+) repeats "
                                 r"this run\)", first).groups()
    assert "seed=" not in network and said == str(fastnn.load(tmp_path / "a.safetensors").seed)
    again = run("train", "--hidden", "8", "--epochs", "1", "--limit", "300", "--seed", said,
                "-o", tmp_path / "b.safetensors").output.splitlines()[1]
    assert f"seed={said})" in again and "random" not in again
    a, b = (fastnn.load(tmp_path / f"{k}.safetensors") for k in "ab")
    for Wa, Wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(Wa, Wb)


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_session_on_mnist(tmp_path):
    model = tmp_path / "m.safetensors"
    out = run("train", "--hidden", "16", "--epochs", "2", "--limit", "3000", "--seed", "3",
              "-o", model).output.splitlines()
    assert out[0] == ("Task: classification, 10 classes (0..9) "
                      "(inferred from the labels; state it with --task); scaling: pixels "
                      "divided by 255")
    assert out[1].startswith("Network([784, 16, 10]") and "seed=3" in out[1]
    epochs = [line for line in out if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[0].startswith("epoch 1/2  loss ")
    assert "test_accuracy" in epochs[0] and out[-1] == f"Saved the model to {model}"
    net = fastnn.load(model)
    assert net.sizes == (784, 16, 10) and net.epochs_trained == 2 and net.input_dtype == "uint8"

    text = run("eval", model).output
    accuracy = net.evaluate(*fastnn.datasets.load_mnist(MNIST_DIR)[1])["accuracy"]
    assert f"({accuracy:.2%})" in text and "confusion matrix" in text and "precision" in text
    report = json.loads(run("eval", model, "--json").output)
    assert report["accuracy"] == pytest.approx(accuracy) and report["n"] == 10000
    assert np.sum(report["confusion_matrix"]) == 10000 and len(report["per_class"]) == 10

    predictions = tmp_path / "p.csv"
    run("predict", model, "mnist", "-o", predictions)
    rows = predictions.read_text().splitlines()
    assert rows[0] == "label" and len(rows) == 10001
    (_, _), (X_test, _) = fastnn.datasets.load_mnist(MNIST_DIR)
    assert [int(r) for r in rows[1:]] == net.predict(X_test).tolist()
    proba = run("predict", model, "mnist", "--proba", "--limit", "5").output.splitlines()
    assert proba[0] == "label," + ",".join(f"p{k}" for k in range(10)) and len(proba) == 6

    info = run("info", model).output
    assert "23,550" not in info and "12,560" in info and "total" in info and "epochs trained: 2" in info
    assert json.loads(run("info", model, "--json").output)["parameters"] == net.n_params


@pytest.mark.parametrize("kind, extra", [
    ("npz", []), ("npy", []), ("csv", []), ("csv_noheader", ["--label-col", "1"]),
    ("idx", []), ("idx_raw", []), ("pickle", []),
])
def test_every_data_format_trains_evaluates_and_predicts(files, tmp_path, kind, extra):
    model = tmp_path / f"{kind}.safetensors"
    train_small(files[kind], model, *extra)
    net = fastnn.load(model)
    assert net.sizes == (16, 8, 3)
    report = json.loads(run("eval", model, files[kind], *extra, "--json").output)
    assert report["n"] == 240 and report["accuracy"] > 0.9
    predicted = run("predict", model, files[kind], *extra).output.splitlines()
    assert len(predicted) == 241


def test_all_formats_give_the_same_model(files, tmp_path):
    # uint8 pixels in IDX, npz, npy and CSV are the same data: the same network
    # (a CSV is tabular data, standardised unless told they are pixels)
    models = {}
    for kind in ("npz", "npy", "csv", "idx"):
        train_small(files[kind], tmp_path / f"{kind}.safetensors",
                    *(["--scale", "pixels"] if kind == "csv" else []))
        models[kind] = fastnn.load(tmp_path / f"{kind}.safetensors")
    for net in models.values():
        np.testing.assert_array_equal(net.weights[0], models["npz"].weights[0])
    # Nielsen's pickle holds floats in [0, 1]: the same up to float rounding
    train_small(files["pickle"], tmp_path / "p.safetensors")
    from_pickle = fastnn.load(tmp_path / "p.safetensors")
    assert from_pickle.input_dtype == "float32"
    for W, W_npz in zip(from_pickle.weights, models["npz"].weights):
        np.testing.assert_allclose(W, W_npz, rtol=1e-4, atol=1e-5)


def test_labels_option_and_label_less_predict(files, tmp_path):
    X, y = images()
    np.save(tmp_path / "features.npy", X)
    np.save(tmp_path / "answers.npy", y)
    model = tmp_path / "m.safetensors"
    run("train", tmp_path / "features.npy", code=1)            # no labels found beside it
    train_small(tmp_path / "features.npy", model, "--labels", tmp_path / "answers.npy")
    plain = tmp_path / "unlabelled.csv"
    np.savetxt(plain, X, fmt="%d", delimiter=",")               # as wide as the model's input
    assert len(run("predict", model, plain).output.splitlines()) == 241
    result = run("eval", model, plain, code=1)
    assert "has no labels" in result.output


def test_csv_label_column_by_name(files, tmp_path):
    X, y = images()
    path = tmp_path / "first.csv"
    np.savetxt(path, np.column_stack([y, X]), fmt="%d", delimiter=",",
               header=",".join(["digit"] + [f"px{i}" for i in range(16)]), comments="")
    train_small(path, tmp_path / "m.safetensors", "--label-col", "digit")
    result = run("train", path, "--label-col", "nope", code=1)
    assert "has no label column 'nope'; its columns are ['digit'" in result.output


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned > " + str(tmp_path / "pwned"),)

    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(Evil())))
    result = run("train", path, "-o", tmp_path / "m.safetensors", code=1)
    assert "refusing to load" in result.output and "only NumPy arrays and tuples" in result.output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m.safetensors").exists()


def test_old_numpy_pickles_of_nielsens_file_load(tmp_path):
    # Nielsen's file was written by Python 2 NumPy: numpy.core.multiarray names
    X, y = images(30)
    split = ((X / 255).astype(np.float32), y)
    raw = pickle.dumps((split, split, split), protocol=2).replace(b"numpy._core", b"numpy.core")
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(raw))
    data = fastnn.data.load_data(path)
    np.testing.assert_array_equal(data.y, y)


BAD_INPUTS = [
    ("missing", lambda d: d / "nope.csv", "nope.csv: no such file, and not a known dataset"),
    ("directory", lambda d: d, "is a directory"),
    ("unknown format", lambda d: _write(d / "notes.dat", b"hello world\n"), "unknown data format"),
    # a column of numbers with one text among them: named, with the ways on
    ("non-numeric CSV", lambda d: _write(d / "bad.csv", b"a,b,label\n" + b"1,2,0\n" * 20
                                         + b"3,x,1\n"),
     "bad.csv: row 22, column b is not a number: 'x', where 20 of its 21 values are; mark such "
     "values missing with --missing, read the column as categories with --categorical b, "
     "leave it out with --drop b, or name the label column with --label-col"),
    ("ragged CSV", lambda d: _write(d / "ragged.csv", b"1,2,0\n3,4\n"),
     "ragged.csv: row 2 has 2 columns, the first row has 3"),
    ("inf in features", lambda d: _write(d / "inf.csv", b"1,2,0\ninf,4,1\n"),
     "inf.csv: row 2, column 1 is inf, not a finite number"),
    ("all missing", lambda d: _write(d / "gone.csv", b"a,b,label\n1,,0\n2,NA,1\n"),
     "gone.csv: column b is missing on every row; --drop b leaves it out"),
    ("empty CSV", lambda d: _write(d / "empty.csv", b""), "empty.csv is empty"),
    ("header only", lambda d: _write(d / "head.csv", b"a,b,label\n"), "has a header but no rows"),
    ("empty npz", lambda d: _npz(d / "e.npz", np.zeros((0, 16)), np.zeros(0)), "has no samples"),
    # a valid IDX header for 30 images of 3 x 3, then the stream is cut
    ("truncated gzip", lambda d: _write(d / "x-images-idx3-ubyte.gz", gzip.compress(
        bytes([0, 0, 8, 3, 0, 0, 0, 30, 0, 0, 0, 3, 0, 0, 0, 3]) + bytes(range(135)) * 2)[:-9]),
     "damaged gzip"),
    ("inf in npz", lambda d: _npz(d / "inf.npz", np.full((4, 16), np.inf), np.zeros(4)),
     r"NaN or infinity \(first at row 0, column 0\)"),
    ("npz without X", lambda d: _npz(d / "noX.npz", None, np.zeros(4)), "has no array 'X'"),
]


def _write(path, data):
    path.write_bytes(data)
    return path


def _npz(path, X, y):
    arrays = {"y": y} if X is None else {"X": X, "y": y}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("name, make, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_data_is_one_line_and_no_model_is_written(tmp_path, name, make, message):
    model = tmp_path / "m.safetensors"
    result = run("train", make(tmp_path), "-o", model, code=1)
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output and not model.exists()


def test_bad_data_leaves_an_existing_model_intact(files, tmp_path):
    model = tmp_path / "m.safetensors"
    train_small(files["npz"], model)
    before = model.read_bytes()
    _npz(tmp_path / "bad.npz", np.full((4, 16), np.nan), np.zeros(4))
    run("train", tmp_path / "bad.npz", "-o", model, code=1)
    X, y = images()
    _npz(tmp_path / "wide.npz", np.zeros((4, 17)), np.zeros(4))
    _npz(tmp_path / "labels.npz", X, y + 5)
    for data, message, commands in [
            # the messages name the file, not X and y
            ("wide.npz", "wide.npz has 17 features, but this network expects 16",
             ("eval", "predict")),
            ("labels.npz", "at row 0, but the output layer's 3 unit(s) take labels 0..2", ("eval",))]:
        for command in commands:
            assert message in run(command, model, tmp_path / data, code=1).output
        # a resumed run trains on its own data: other data is refused up front
        assert "DATA is fixed by the model file" in run("train", "--resume", model,
                                                        tmp_path / data, code=1).output
    run("predict", model, tmp_path / "labels.npz")        # predict needs no labels
    assert model.read_bytes() == before


def test_eval_and_info_refuse_bad_model_files(tmp_path):
    for command in ("eval", "info", "predict"):
        args = [command, tmp_path / "none.safetensors"] + (["mnist"] if command == "predict" else [])
        assert "no such model file" in run(*args, code=1).output
    junk = _write(tmp_path / "junk.safetensors", b"\0" * 100)
    assert "not a fastnn model" in run("eval", junk, code=1).output


def test_divergence_keeps_the_last_good_weights(tmp_path):
    # heavy momentum: fine for a few epochs, then the oscillations blow up
    # (Nielsen's recipe: the tabular one's l2 and early stopping would calm them)
    rng = np.random.default_rng(0)
    _npz(tmp_path / "big.npz", rng.normal(size=(200, 4)), rng.normal(size=(200, 2)))
    model = tmp_path / "m.safetensors"
    result = run("train", tmp_path / "big.npz", "--hidden", "8", "--activation", "relu",
                 "--output", "identity", "--optimizer", "momentum", "--momentum", "0.99",
                 "--lr", "0.05", "--epochs", "60", "--seed", "0", "--recipe", "nielsen",
                 "-o", model, code=1)
    assert "Training diverged at epoch" in result.output and "Try a smaller learning rate" in result.output
    saved = fastnn.load(model)
    assert all(np.isfinite(W).all() for W in saved.weights) and saved.epochs_trained >= 1
    assert "Saved the weights of the last good epoch" in result.output
    # exactly the weights of a run that stops after those good epochs
    good = tmp_path / "good.safetensors"
    run("train", tmp_path / "big.npz", "--hidden", "8", "--activation", "relu",
        "--output", "identity", "--optimizer", "momentum", "--momentum", "0.99",
        "--lr", "0.05", "--epochs", saved.epochs_trained, "--seed", "0", "--recipe", "nielsen",
        "-o", good)
    for W, W_good in zip(saved.weights, fastnn.load(good).weights):
        np.testing.assert_array_equal(W, W_good)
    # without -o, --history still keeps the good epochs
    run("train", tmp_path / "big.npz", "--hidden", "8", "--activation", "relu",
        "--output", "identity", "--optimizer", "momentum", "--momentum", "0.99",
        "--lr", "0.05", "--epochs", "60", "--seed", "0", "--recipe", "nielsen",
        "--history", tmp_path / "h.json", code=1)
    kept = json.loads((tmp_path / "h.json").read_text())
    assert kept["stopped"] == "diverged" and kept["epochs"] == saved.epochs_trained
    model.unlink()
    result = run("train", tmp_path / "big.npz", "--hidden", "8", "--activation", "relu",
                 "--output", "identity", "--lr", "1e6", "--seed", "0", "--recipe", "nielsen",
                 "-o", model, code=1)
    assert "diverged at epoch 1" in result.output and not model.exists()


@pytest.mark.parametrize("args, message", [
    (["--layers", "784,x,10"], "cannot read layer token 'x'"),
    (["--layers", "784"], "has no layers after the input shape"),
    (["--hidden", "0"], "a layer size must be an integer >= 1, not 0"),
    (["--layers", "784,10", "--hidden", "30"], "give --layers or --hidden, not both"),
    (["--activation", "relux"], "'relux' is not one of"),
    (["--activation", "softmax"], "'softmax' is not one of"),
    (["--lr", "0"], "0.0 is not in the range x>0"),
    (["--epochs", "-1"], "-1 is not in the range"),
    (["--val", "mnist", "--val-split", "0.1"], "give --val or --val-split, not both"),
    (["--checkpoint-every", "2"], "--checkpoint-every needs -o MODEL"),
    (["--dropout", "a"], "expected comma-separated numbers"),
])
def test_usage_errors_exit_2(args, message):
    result = CliRunner().invoke(main, ["train", *args], env=ENV)
    assert result.exit_code == 2 and message in result.output


def test_library_errors_are_one_line_exit_1(tmp_path):
    result = run("train", "--hidden", "10", "--loss", "cross_entropy", "--activation", "relu",
                 "--output", "relu", "-o", tmp_path / "m.safetensors", code=1)
    assert result.output.startswith("Error: loss 'cross_entropy' needs a sigmoid or softmax")
    assert not (tmp_path / "m.safetensors").exists()
    result = run("train", "--layers", "100,10", "--epochs", "1", code=1)
    # the message names DATA, not X
    assert "mnist (train) has 784 features, but this network expects 100" in result.output
    result = run("train", "--hidden", "10", "--lr-schedule", "exponential", "--epochs", "1",
                 code=1)
    assert "Unknown lr_schedule 'exponential'" in result.output
    result = run("train", "--hidden", "10", "--optimizer", "rprop", "--batch-size", "5", code=1)
    assert "rprop is a full-batch method" in result.output


def test_every_training_option_reaches_fit(files, tmp_path):
    model = tmp_path / "m.safetensors"
    run("train", files["npz"], "--layers", "16,12,6,3", "--activation", "leaky_relu",
        "--slope", "0.05", "--output", "softmax", "--loss", "cross_entropy", "--init", "he",
        "--optimizer", "adam", "--lr", "0.01", "--betas", "0.8,0.99", "--eps", "1e-7",
        "--batch-size", "16", "--epochs", "3", "--l2", "0.1", "--l1", "0.01", "--dropout",
        "0.1,0.2", "--lr-schedule", "step:every=2,factor=0.5", "--val-split", "0.25",
        "--early-stopping", "5", "--augment", "shift", "--class-weight", "balanced",
        "--dtype", "float64", "--seed", "7", "--threads", "1", "-o", model)
    net = fastnn.load(model)
    t = net.training_record
    assert net.activations == ("leaky_relu", "leaky_relu", "softmax") and net.slope == 0.05
    assert net.init == "he" and net.dtype == np.float64 and net.seed == 7
    assert (t["optimizer"], t["lr"], t["betas"], t["eps"]) == ("adam", 0.01, [0.8, 0.99], 1e-7)
    assert (t["batch_size"], t["l2"], t["l1"], t["dropout"]) == (16, 0.1, 0.01, [0.1, 0.2])
    assert t["lr_schedule"] == "step:every=2,factor=0.5" and t["early_stopping"] == 5
    assert t["augment"] == "shift" and t["class_weight"] == "balanced" and t["n_train"] == 180
    momentum = tmp_path / "mom.safetensors"
    run("train", files["npz"], "--hidden", "8", "--optimizer", "nesterov", "--momentum", "0.5",
        "--epochs", "1", "--no-shuffle", "--val", files["csv"], "-o", momentum)
    t = fastnn.load(momentum).training_record
    assert (t["optimizer"], t["momentum"], t["shuffle"]) == ("nesterov", 0.5, False)
    assert "val_accuracy" in t["final"]


def test_history_json_and_quiet(files, tmp_path):
    history = tmp_path / "h.json"
    result = run("train", files["npz"], "--hidden", "8", "--epochs", "3", "--val-split", "0.2",
                 "--history", history, "--quiet", "-o", tmp_path / "m.safetensors")
    assert result.output == ""
    saved = json.loads(history.read_text())
    assert saved["epochs"] == 3 and len(saved["loss"]) == 3 and len(saved["val_accuracy"]) == 3


def test_json_output(files, tmp_path):
    out = json.loads(run("train", files["npz"], "--hidden", "8", "--epochs", "2", "--json").output)
    assert out["epochs_trained"] == 2 and len(out["history"]["loss"]) == 2
    assert out["final"]["loss"] == out["history"]["loss"][-1]


def test_checkpoint_every(files, tmp_path, monkeypatch):
    saves = []
    original = fastnn.Network.save
    monkeypatch.setattr(fastnn.Network, "save",
                        lambda self, path, **kw: saves.append(self.epochs_trained)
                        or original(self, path, **kw))
    run("train", files["npz"], "--hidden", "8", "--epochs", "5", "--checkpoint-every", "2",
        "-o", tmp_path / "m.safetensors")
    assert saves == [2, 4, 5]


def test_resume_continues_exactly(files, tmp_path):
    args = ["--hidden", "8", "--optimizer", "adam", "--lr", "0.01", "--seed", "1",
            "--lr-schedule", "step:every=1,factor=0.7", "--dropout", "0.1"]
    straight, first = tmp_path / "straight.safetensors", tmp_path / "resumed.safetensors"
    run("train", files["npz"], *args, "--epochs", "4", "-o", straight)
    run("train", files["npz"], *args, "--epochs", "2", "-o", first)
    out = run("train", "--resume", first, "--epochs", "2").output
    assert "epoch 4/4" in out
    a, b = fastnn.load(straight), fastnn.load(first)
    assert b.epochs_trained == 4 and b.optimizer_state.steps == a.optimizer_state.steps
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(x, y)
    result = CliRunner().invoke(main, ["train", "--resume", str(first), "--hidden", "4"], env=ENV)
    assert result.exit_code == 2 and "--hidden is fixed by the model file" in result.output


def test_datasets_lists_and_verifies(tmp_path, monkeypatch):
    assert "mnist: " in run("datasets").output and "checksums verified" in run("datasets").output
    broken = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, broken)
    (broken / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["datasets"], env={"FASTNN_DATA": str(broken)})
    assert result.exit_code == 1 and "CORRUPT" in result.output and "MD5" in result.output
    monkeypatch.setattr("fastnn.datasets.SOURCE_TREE_MNIST", tmp_path / "no")
    monkeypatch.chdir(tmp_path / "mnist")
    result = CliRunner().invoke(main, ["datasets"], env={"FASTNN_DATA": "",
                                                           "XDG_CACHE_HOME": str(tmp_path / "c")})
    # a missing dataset is a failure a script can see
    assert result.exit_code == 1 and "not found" in result.output
    assert "run 'fastnn download mnist'" in result.output


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server serving the MNIST files, and one serving junk."""
    served = tmp_path / "served"
    shutil.copytree(MNIST_DIR, served / "good")
    (served / "bad").mkdir()
    for f in MNIST_DIR.iterdir():
        (served / "bad" / f.name).write_bytes(b"not mnist")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_checksums(tmp_path, mirror):
    target = tmp_path / "dl"
    result = run("download", "mnist", "--dir", target, "--mirror", f"{mirror}/bad/", code=1)
    assert "MD5" in result.output and not list(target.glob("*.gz"))
    result = run("download", "mnist", "--dir", target, "--mirror", f"{mirror}/bad/",
                 "--mirror", f"{mirror}/good/")
    assert "mnist is ready" in result.output
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in MNIST_DIR.iterdir())
    (_, y), _ = fastnn.datasets.load_mnist(target)
    assert len(y) == 60000
    again = run("download", "mnist", "--dir", target, "--mirror", f"{mirror}/bad/")
    assert again.output.count("already there") == 4


def test_cli_is_a_subpackage_of_fastnn():
    assert main.__module__ == "fastnn.cli" and isinstance(main, click.Group)


# Real processes: exit codes, stderr, and signals.

def fastnn_cmd(*args):
    return [sys.executable, "-m", "fastnn", *[str(a) for a in args]]


def test_subprocess_exit_codes_and_messages(tmp_path):
    env = {**os.environ, **ENV}
    ok = subprocess.run(fastnn_cmd("--version"), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and fastnn.__version__ in ok.stdout
    bad = subprocess.run(fastnn_cmd("eval", tmp_path / "none.safetensors"), capture_output=True,
                         text=True, timeout=120, env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == f"Error: {tmp_path / 'none.safetensors'}: no such model file\n"
    usage = subprocess.run(fastnn_cmd("train", "--epochs", "x"), capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "Invalid value for '--epochs'" in usage.stderr


def test_the_installed_fastnn_command_runs():
    # the console script pip installs beside this interpreter (not another on PATH)
    script = shutil.which("fastnn", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("fastnn is not installed in this environment (pip install -e .)")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Commands:" in proc.stdout, proc.stderr


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
# (test_cli_layers.py interrupts and resumes a dense run in the fast suite)
@pytest.mark.slow
def test_sigint_saves_the_model_and_resume_continues(tmp_path):
    model = tmp_path / "m.safetensors"
    env = {**os.environ, **ENV}
    proc = subprocess.Popen(fastnn_cmd("train", "--hidden", "128", "--batch-size", "1",
                                       "--lr", "0.1", "--epochs", "1000", "--limit", "20000",
                                       "-o", model),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().startswith("Task: classification")
        assert proc.stdout.readline().startswith("Network(")
        assert proc.stdout.readline().startswith("epoch 1/1000")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert f"Interrupted: saved the model after" in err and f"--resume {model}" in err
    net = fastnn.load(model)
    assert net.epochs_trained >= 1 and net.optimizer_state is not None
    done = net.epochs_trained
    resumed = subprocess.run(fastnn_cmd("train", "--resume", model, "--epochs", "1"),
                             capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert fastnn.load(model).epochs_trained == done + 1


def test_early_stopping_history_has_every_epoch_and_the_best(files, tmp_path):
    # the epoch that triggers early stopping was trained: it is printed and recorded
    X, y = images()
    noisy = tmp_path / "noisy.npz"
    np.savez(noisy, X=np.random.default_rng(1).integers(0, 256, X.shape, dtype=np.uint8), y=y)
    result = run("train", files["npz"], "--val", noisy, "--hidden", "8", "--epochs", "50",
                 "--lr", "2", "--early-stopping", "2", "--history", tmp_path / "h.json",
                 "--json", "-o", tmp_path / "m.safetensors")
    report = json.loads(result.stdout)
    history = json.loads((tmp_path / "h.json").read_text())
    trained = fastnn.load(tmp_path / "m.safetensors").epochs_trained
    assert history["stopped"] == "early_stopping" and trained < 50
    assert history["epochs"] == report["history"]["epochs"] == trained == len(history["loss"])
    best = history["best_epoch"]
    assert best == report["history"]["best_epoch"] == trained - 3
    assert history["val_loss"][best] == min(history["val_loss"])


def test_val_data_is_scaled_like_the_training_data(files, tmp_path):
    # uint8 pixels for training, the same rows as floats 0..255 for validation:
    # a new network must scale both by 1/255 (validation loss == test loss)
    X, y = images()
    floats = tmp_path / "floats.npz"
    np.savez(floats, X=X.astype(np.float64), y=y)
    result = run("train", files["npz"], "--val", floats, "--test", floats, "--hidden", "4",
                 "--epochs", "1", "--json")
    final = json.loads(result.stdout)["final"]
    assert final["val_loss"] == pytest.approx(final["test_loss"], rel=1e-6)


def test_every_command_gives_one_line_errors_on_its_own_too(tmp_path):
    from fastnn.cli.common import Command
    from fastnn.cli.evaluate import eval_command

    assert all(isinstance(c, Command) for c in main.commands.values()), main.commands
    # outside the group (as a script embedding one command would run it)
    result = CliRunner().invoke(eval_command, [str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'nope.safetensors'}: no such model file\n"


def test_restore_best_keeps_the_best_epoch_through_checkpoints_and_resume(tmp_path,
                                                                          monkeypatch):
    # a run killed right after any of its checkpoints (a copy of the file taken
    # then) and resumed ends as the straight run does: the best epoch's weights,
    # also when that epoch came before the kill
    X, y = images()
    data, noisy = tmp_path / "data.npz", tmp_path / "noisy.npz"
    np.savez(data, X=X, y=y)
    np.savez(noisy, X=np.random.default_rng(1).integers(0, 256, X.shape, dtype=np.uint8), y=y)
    args = ["train", data, "--val", noisy, "--test", data, "--hidden", "8", "--lr", "2",
            "--seed", "0", "--epochs", "6", "--restore-best"]
    straight = tmp_path / "straight.safetensors"
    result = run(*args, "--history", tmp_path / "h.json", "-o", straight)
    history = json.loads((tmp_path / "h.json").read_text())
    best = history["best_epoch"]
    assert best == int(np.argmax(history["val_accuracy"]))
    assert f"Restored the weights of epoch {best + 1}, the best by val_accuracy" in result.output
    report = json.loads(run("eval", straight, data, "--json").stdout)
    assert report["accuracy"] == history["test_accuracy"][best]

    copies = []
    original = fastnn.Network.save

    def save_and_copy(self, path, **kw):
        original(self, path, **kw)
        copy = tmp_path / f"killed{len(copies)}.safetensors"
        copy.write_bytes(open(path, "rb").read())
        copies.append(copy)

    monkeypatch.setattr(fastnn.Network, "save", save_and_copy)
    run(*args, "--checkpoint-every", "1", "-o", tmp_path / "m.safetensors")
    monkeypatch.setattr(fastnn.Network, "save", original)
    assert len(copies) == 7            # six checkpoints and the finished model
    a = fastnn.load(straight)
    before_the_kill = 0
    for copy in copies:                # the finished model goes on too (0 epochs left)
        killed = fastnn.load(copy)
        before_the_kill += killed.training_record["best"]["epoch"] < killed.epochs_trained
        run("train", "--resume", copy)
        b = fastnn.load(copy)
        assert b.training_record["best"] == a.training_record["best"] and b.best_params is None
        np.testing.assert_array_equal(a._params, b._params)
    assert before_the_kill
    message = run(*args[:-1], "--epochs", "1", "-o", tmp_path / "n.safetensors").output
    assert "Restored" not in message
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "n.safetensors"),
                                       "--restore-best"], env=ENV)
    assert result.exit_code == 1 and "--restore-best is fixed by the model file" in result.output
