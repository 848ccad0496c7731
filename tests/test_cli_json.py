"""The CLI options of issue 14: per-layer activations, --json on predict,
export and datasets, plot reading train --json, the progress bar's rate."""
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST_DIR, make_classification, needs

import fastnn
from fastnn.cli import main


def run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args],
                                env={"FASTNN_DATA": str(MNIST_DIR)})
    assert result.exit_code == code, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    X, y = make_classification(n=100)
    np.savez(tmp / "d.npz", X=X, y=y)
    model = tmp / "m.safetensors"
    out = run("train", tmp / "d.npz", "--hidden", "6,5", "--activation", "tanh,relu",
              "--output", "softmax", "--loss", "cross_entropy", "--epochs", "3", "--seed", "0",
              "--val-split", "0.2", "--json", "-o", model).output
    return tmp, model, json.loads(out), X


def test_per_layer_activations(trained, tmp_path):
    _, model, _, _ = trained
    assert fastnn.load(model).activations == ("tanh", "relu", "softmax")
    bad = run("train", "--hidden", "6,5", "--activation", "tanh,relux", code=2).output
    assert "'relux' is not one of" in bad
    wrong = run("train", "--hidden", "6,5", "--activation", "tanh,relu,relu", code=1).output
    assert wrong.startswith("Error: activation lists one name per hidden layer")


def test_predict_json(trained):
    tmp, model, _, X = trained
    net = fastnn.load(model)
    result = json.loads(run("predict", model, tmp / "d.npz", "--json", "--proba").output)
    assert result["n"] == 100 and result["labels"] == net.predict(X).tolist()
    np.testing.assert_allclose(result["outputs"], net.forward(X), rtol=1e-6)
    assert "--json prints to stdout" in run("predict", model, tmp / "d.npz", "--json", "-o",
                                            tmp / "p.csv", code=2).output


def test_export_json(trained, tmp_path):
    _, model, _, _ = trained
    result = json.loads(run("export", model, "-o", tmp_path / "m.c", "--json").output)
    assert result["format"] == "c" and result["files"] == [str(tmp_path / "m.c")]
    assert (tmp_path / "m.c").exists() and result["activations"] == ["tanh", "relu", "softmax"]


def test_datasets_json():
    result = run("datasets", "--json").output
    info = json.loads(result)["mnist"]
    assert info["found"] and info["ok"] and info["path"] == str(MNIST_DIR)
    assert sorted(info["files"].values(), key=str) == [None] * 4


def test_plot_reads_train_json(trained, tmp_path):
    needs("matplotlib")
    _, _, printed, _ = trained
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(printed))
    from fastnn.plot import load_history

    series, info = load_history(run_json)
    assert info["epochs"] == 3 and list(series["val_loss"]) == printed["history"]["val_loss"]
    run("plot", run_json, "-o", tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")


def test_progress_bar_shows_rate_and_time_left():
    from fastnn.training import text_progress

    stream, now = io.StringIO(), [100.0]
    show = text_progress(stream, width=10, clock=lambda: now[0])
    show(0, 0, 1000)
    now[0] = 102.0
    show(0, 500, 1000)             # 250 rows/s, 2 s left
    now[0] = 104.0
    show(0, 1000, 1000)
    lines = stream.getvalue().split("\r")
    assert "-- rows/s  --:-- left" in lines[1]
    assert "500/1,000  250 rows/s  0:02 left" in lines[2]
    assert lines[3].endswith("0:00 left\x1b[K\n")
