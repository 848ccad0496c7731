"""Pictures: learning curves, confusion matrices, misclassified samples (fastnn[plot])."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST_DIR, make_classification, needs

import fastnn
from fastnn import Network
from fastnn.cli.evaluate import eval_command
from fastnn.cli.plot import plot
from fastnn.cli.show import show
from fastnn.cli.train import train
from fastnn.exceptions import ConfigError, DataError, FastnnError

# An earlier picture (PNG signature, so that it may be replaced without --force).
OLD_PNG = b"\x89PNG\r\n\x1a\n an older picture"

ENV = {"FASTNN_DATA": str(MNIST_DIR)}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mpl():
    return needs("matplotlib")


def invoke(command, *args, code=0):
    result = CliRunner().invoke(command, [str(a) for a in args], env=ENV)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def png_size(path):
    """(width, height) of a PNG file, after checking it is one of some size."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000, len(data)
    # IHDR is the first chunk: 4 bytes length, 'IHDR', then width and height
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def one_error_line(result):
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def images(n=240, seed=0, side=4):
    """side x side uint8 'images' of 3 classes that a small network can learn."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[40], [130], [220]]) * np.ones(side * side)
    X = np.clip(centres[y] + rng.normal(0, 25, (n, side * side)), 0, 255).astype(np.uint8)
    return X, y


@pytest.fixture
def small_model(tmp_path):
    """A 16-input model that gets some of its .npz data wrong, and the data."""
    X, y = images()
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y)
    model = tmp_path / "model.safetensors"
    net = Network([16, 4, 3], seed=0)
    net.fit(X, y, epochs=1, lr=0.5)
    net.save(model)
    return model, data, net, X, y


# ------------------------------------------------------------ learning curves

def test_history_from_fit_with_validation_and_lr_steps(mpl, tmp_path):
    X, y = make_classification(n=300, n_features=9, n_classes=3)
    net = Network([9, 8, 3], seed=0)
    hist = net.fit(X[:200], y[:200], epochs=4, lr=1.0, validation_data=(X[200:], y[200:]),
                   lr_schedule="step:every=1,factor=0.5", early_stopping=3)
    from fastnn.plot import _lr_changes, load_history, plot_history

    out = tmp_path / "curves.png"
    plot_history(hist, out)
    width, height = png_size(out)
    assert width > 2 * height  # two panels side by side: loss and accuracy
    series, info = load_history(hist)
    # the epoch (from 1) that first trained at each new rate is marked
    assert [(int(e), float(r)) for e, r in zip(*_lr_changes(series["lr"]))] == [
        (2, 0.5), (3, 0.25), (4, 0.125)]
    assert info["best_epoch"] == hist.best_epoch is not None
    # the same through History.to_dict() as a dict and as a JSON file
    plot_history(hist.to_dict(), tmp_path / "from_dict.png")
    saved = tmp_path / "history.json"
    saved.write_text(json.dumps(hist.to_dict()))
    plot_history(saved, tmp_path / "from_file.png")
    assert png_size(tmp_path / "from_file.png") == (width, height)


def test_history_without_accuracy_has_one_panel(mpl, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    hist = Network([3, 4, 2], activation="tanh", output="identity", seed=0).fit(
        X, X[:, :2] * 0.5, epochs=3, lr=0.05)
    assert "accuracy" not in hist
    from fastnn.plot import plot_history

    plot_history(hist, tmp_path / "loss.png")
    width, height = png_size(tmp_path / "loss.png")
    assert width < 1.6 * height


def test_history_json_written_by_fastnn_train(mpl, tmp_path):
    X, y = images()
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y)
    history = tmp_path / "run.json"
    invoke(train, data, "--hidden", "8", "--epochs", "4", "--lr", "1.0", "--seed", "0",
           "--val-split", "0.25", "--lr-schedule", "step:every=2,factor=0.5",
           "--history", history, "-q")
    saved = json.loads(history.read_text())
    assert saved["epochs"] == 4 and saved["lr"] == [1.0, 1.0, 0.5, 0.5] and saved["val_loss"]
    out = tmp_path / "curves.png"
    result = invoke(plot, history, "-o", out)
    assert result.output == f"Wrote the learning curves to {out}\n"
    width, height = png_size(out)
    assert width > 2 * height
    # without -o, beside the history file
    invoke(plot, history, "--title", "a run")
    png_size(tmp_path / "run.png")


def test_plot_refuses_bad_history_files_in_one_line(mpl, tmp_path):
    out = tmp_path / "curves.png"
    out.write_bytes(OLD_PNG)
    not_json = tmp_path / "notes.json"
    not_json.write_text("loss: 0.3\n")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"epochs": 0, "stopped": None}))
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"loss": ["low", "lower"]}))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    for history, message in [(tmp_path / "missing.json", "no such history file"),
                             (not_json, "is not a history file: not JSON"),
                             (empty, "has no per-epoch series to plot"),
                             (words, "series 'loss' holds 'low', not a number"),
                             (listed, "JSON list, not an object")]:
        line = one_error_line(invoke(plot, history, "-o", out, code=1))
        assert message in line and str(history) in line, line
        assert out.read_bytes() == OLD_PNG
    with pytest.raises(DataError, match="no per-epoch series"):
        from fastnn.plot import plot_history

        plot_history(fastnn.History(), out)
    result = invoke(plot, out, "-o", out, code=1)
    assert "it is the same file as HISTORY" in result.output


# ------------------------------------------------------------- confusion matrix

def test_confusion_matrix_png(mpl, tmp_path):
    from fastnn.plot import plot_confusion

    matrix = [[50, 2, 0], [3, 40, 7], [0, 1, 1200]]
    plot_confusion(matrix, tmp_path / "cm.png", labels=["cat", "dog", "bird"])
    png_size(tmp_path / "cm.png")
    with pytest.raises(ConfigError, match="2 labels for a confusion matrix of 3 classes"):
        plot_confusion(matrix, tmp_path / "cm.png", labels=["cat", "dog"])
    with pytest.raises(DataError, match=r"must be square \(k, k\), not of shape \(2, 3\)"):
        plot_confusion([[1, 2, 3], [4, 5, 6]], tmp_path / "cm.png")
    with pytest.raises(DataError, match="whole numbers >= 0"):
        plot_confusion([[1, -2], [0, 3]], tmp_path / "cm.png")


def test_eval_confusion_png(mpl, tmp_path, small_model):
    model, data, net, X, y = small_model
    out = tmp_path / "cm.png"
    text = invoke(eval_command, model, data, "--confusion-png", out).output
    assert "confusion matrix (rows: true class" in text
    assert text.endswith(f"Wrote the confusion matrix to {out}\n")
    png_size(out)
    out.unlink()
    result = invoke(eval_command, model, data, "--json", "--confusion-png", out)
    report = json.loads(result.stdout)
    assert report["confusion_png"] == str(out) and len(report["confusion_matrix"]) == 3
    png_size(out)
    # without the option, the output is as it was
    assert "confusion_png" not in json.loads(invoke(eval_command, model, data, "--json").stdout)


def test_eval_confusion_png_errors_through_the_group(mpl, tmp_path, small_model):
    from fastnn.cli import Group

    model, data, *_ = small_model
    group = Group(commands={"eval": eval_command})
    result = invoke(group, "eval", model, data, "--confusion-png",
                    tmp_path / "missing" / "cm.png", code=1)
    assert "cannot write" in one_error_line(result) and "does not exist" in result.output
    # float targets have no confusion matrix: the report is not printed either
    rng = np.random.default_rng(0)
    regression = tmp_path / "regression.npz"
    np.savez(regression, X=rng.normal(size=(20, 3)), y=rng.normal(size=(20, 2)))
    reg_model = tmp_path / "reg.safetensors"
    Network([3, 2], activation="identity", seed=0).save(reg_model)
    line = one_error_line(invoke(group, "eval", reg_model, regression, "--confusion-png",
                                 tmp_path / "cm.png", code=1))
    assert "not class labels: no confusion matrix" in line
    assert not (tmp_path / "cm.png").exists()


# ------------------------------------------------------- misclassified samples

@pytest.fixture(scope="module")
def mnist_net(mnist):
    (X, y), test = mnist
    net = Network([784, 30, 10], seed=0)
    net.fit(X[:5000], y[:5000], epochs=1)
    return net, test


def test_misclassified_grid_on_mnist(mpl, tmp_path, mnist_net):
    from fastnn.plot import plot_misclassified

    net, (X, y) = mnist_net
    X, y = X[:2000], y[:2000]
    out = tmp_path / "grid.png"
    shown = plot_misclassified(net, X, y, out)
    width, height = png_size(out)
    assert len(shown) == 25 and width > 500 and height > 500
    outputs = net.forward(X)
    assert np.all(net.predict(X[shown]) != y[shown])
    truth = outputs[shown, y[shown]]
    assert np.all(np.diff(truth) >= 0)  # worst first
    wrong = net.predict(X) != y
    assert np.allclose(truth, np.sort(outputs[wrong, y[wrong]])[:25])
    # one-hot labels and an explicit shape give the same choice
    assert np.array_equal(plot_misclassified(net, X, np.eye(10)[y], out, n=3,
                                             image_shape=(28, 28)), shown[:3])
    with pytest.raises(ConfigError, match="an image of 28x27 has 756 pixels, but the samples "
                                          "have 784 inputs"):
        plot_misclassified(net, X, y, out, image_shape=(28, 27))


def test_misclassified_needs_square_inputs_or_a_shape(mpl, tmp_path):
    from fastnn.plot import plot_misclassified

    X, y = make_classification(n=60, n_features=12, n_classes=3)
    net = Network([12, 3], seed=0)
    with pytest.raises(DataError, match="cannot draw 12 inputs as an image: not a square "
                                        r"number; give image_shape=\(height, width\)"):
        plot_misclassified(net, X, y, tmp_path / "grid.png")
    plot_misclassified(net, X, y, tmp_path / "grid.png", n=4, image_shape=(3, 4))
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(DataError, match="no misclassified sample"):
        right = Network([12, 3], seed=0)
        plot_misclassified(right, X, right.predict(X), tmp_path / "none.png", image_shape=(3, 4))
    assert not (tmp_path / "none.png").exists()


def test_show_on_mnist(mpl, tmp_path, mnist_net):
    net, _ = mnist_net
    model = tmp_path / "mnist.safetensors"
    net.save(model)
    out = tmp_path / "grid.png"
    result = invoke(show, model, "mnist", "--misclassified", out, "--count", "9",
                    "--limit", "1000")
    assert result.output.startswith("Wrote the 9 worst-classified samples of ")
    width, height = png_size(out)
    assert abs(width - height) < 0.3 * width  # 3 x 3


def test_show_refuses_non_square_inputs_and_keeps_old_files(mpl, tmp_path):
    X, y = make_classification(n=60, n_features=12, n_classes=3)
    data = tmp_path / "wide.npz"
    np.savez(data, X=X, y=y)
    model = tmp_path / "wide.safetensors"
    Network([12, 3], seed=0).save(model)
    out = tmp_path / "grid.png"
    out.write_bytes(OLD_PNG)
    line = one_error_line(invoke(show, model, data, "--misclassified", out, code=1))
    assert line == ("Error: cannot draw 12 inputs as an image: not a square number; "
                    "give --image-shape HEIGHTxWIDTH")
    line = one_error_line(invoke(show, model, data, "--misclassified", out, "--image-shape",
                                 "3x5", code=1))
    assert "an image of 3x5 has 15 pixels, but the samples have 12 inputs" in line
    assert out.read_bytes() == OLD_PNG
    assert "expected HEIGHTxWIDTH" in invoke(show, model, data, "--misclassified", out,
                                             "--image-shape", "3by4", code=2).output
    invoke(show, model, data, "--misclassified", out, "--image-shape", "3x4")
    png_size(out)


def test_show_needs_labels(mpl, tmp_path, small_model):
    model, _, _, X, _ = small_model
    unlabelled = tmp_path / "images.npy"
    np.save(unlabelled, X)
    line = one_error_line(invoke(show, model, unlabelled, "--misclassified",
                                 tmp_path / "grid.png", code=1))
    assert "has no labels" in line


# ------------------------------------------------------------ without matplotlib

def test_without_matplotlib_a_one_line_hint(tmp_path, monkeypatch, small_model):
    from fastnn.plot import plot_confusion, plot_history, plot_misclassified

    model, data, net, X, y = small_model
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    hint = r"plots need matplotlib: pip install 'fastnn\[plot\]'"
    hist = {"loss": [1.0, 0.5]}
    for call in (lambda: plot_history(hist, tmp_path / "h.png"),
                 lambda: plot_confusion([[1, 0], [0, 1]], tmp_path / "c.png"),
                 lambda: plot_misclassified(net, X, y, tmp_path / "m.png")):
        with pytest.raises(FastnnError, match=hint):
            call()
    history = tmp_path / "h.json"
    history.write_text(json.dumps(hist))
    line = one_error_line(invoke(plot, history, code=1))
    assert line == "Error: plots need matplotlib: pip install 'fastnn[plot]'"
    assert not list(tmp_path.glob("*.png"))
    # the normal eval report still works without it
    assert "accuracy" in invoke(eval_command, model, data).output


def test_fastnn_and_its_commands_import_without_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import fastnn, fastnn.plot, fastnn.cli.plot, fastnn.cli.show, fastnn.cli.evaluate\n"
            "assert 'matplotlib' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_commands_have_help_with_an_example():
    for name, command in [("plot", plot), ("show", show)]:
        result = invoke(command, "--help")
        assert command.help and f"fastnn {name}" in result.output
    assert "--confusion-png" in invoke(eval_command, "--help").output


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_pictures_through_the_fastnn_command(mpl, tmp_path, small_model):
    """plot, eval --confusion-png and show as a user runs them: a real process."""
    import os

    model, data, *_ = small_model

    def fastnn_command(*args, code=0):
        out = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)],
                             capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "MPLBACKEND": "TkAgg"})
        assert out.returncode == code, out.stderr
        return out

    history = tmp_path / "run.json"
    fastnn_command("train", data, "--hidden", "4", "--epochs", "3", "--quiet",
                   "--history", history, "-o", tmp_path / "m2.safetensors")
    assert fastnn_command("plot", history).stdout == f"Wrote the learning curves to " \
                                                     f"{tmp_path / 'run.png'}\n"
    fastnn_command("eval", model, data, "--confusion-png", "cm.png")
    fastnn_command("show", model, data, "--misclassified", "grid.png", "--count", "4")
    for name in ("run.png", "cm.png", "grid.png"):
        png_size(tmp_path / name)
    bad = fastnn_command("plot", data, "-o", "x.png", code=1)
    assert bad.stdout == "" and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith(f"Error: {data} is not a history file")
    assert not (tmp_path / "x.png").exists()
