"""--layers tokens through the command line: a convolutional net and a dense net trained,
saved, reloaded, interrupted by Ctrl-C, resumed and evaluated in real processes (issue 11),
and the CLI's paths for layers, info and show in-process."""
import json
import re
import signal

import numpy as np
import pytest
from conftest import needs
from click.testing import CliRunner
from numpy.testing import assert_array_equal
from test_interrupts import finish, read_line, start

import fastnn
from fastnn.cli import main as cli
from fastnn.data import load_data

# 12 x 12 images of 4 classes, each a bright bar in its own place on noise
N, SIDE, CLASSES = 2000, 12, 4
RECIPE = ["--activation", "relu", "--output", "softmax", "--loss", "cross_entropy",
          "--init", "he", "--optimizer", "momentum", "--lr", "0.02", "--batch-size", "2",
          "--seed", "3", "--threads", "1"]
LAYERS = {"conv": "conv6:3:same,maxpool2,conv4:3:s1,l2pool2:s1,dropout0.1,16,4",
          "dense": f"{SIDE * SIDE},64,4"}
EPOCHS = 24


def idx_bytes(array):
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                      for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An IDX images file (12 x 12) with its labels file beside it."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, N)
    X = rng.integers(0, 60, (N, SIDE, SIDE))
    for k in range(CLASSES):
        r, c = divmod(k, 2)
        X[y == k, 2 + 6 * r:4 + 6 * r, 1 + 6 * c:5 + 6 * c] += 180
    directory = tmp_path_factory.mktemp("images")
    (directory / "train-images-idx3-ubyte").write_bytes(idx_bytes(X))
    (directory / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    return directory / "train-images-idx3-ubyte"


def train_args(data, kind, out, *extra):
    return ["train", data, "--layers", LAYERS[kind], *RECIPE, "--epochs", str(EPOCHS),
            "-o", out, *extra]


def run(args, cwd):
    proc = start(args, cwd=cwd)
    out, err = finish(proc)
    return proc.returncode, out, err


# both kinds in real processes under --runslow; dense in the fast suite too
@pytest.mark.parametrize("kind", [pytest.param("conv", marks=pytest.mark.slow), "dense"])
def test_train_interrupt_resume_and_evaluate_in_real_processes(tmp_path, images, kind):
    # the run straight through: the reference
    (tmp_path / "straight").mkdir()
    code, out, err = run(train_args(images, kind, "ref.safetensors"), tmp_path / "straight")
    assert code == 0, err
    reference = fastnn.load(tmp_path / "straight" / "ref.safetensors")
    expected_layers = {"conv": "Conv2D(6, 3, padding='same')", "dense": "Dense(64)"}[kind]
    assert expected_layers in repr(reference.layers) and reference.epochs_trained == EPOCHS

    # the same run, with checkpoints and a history, stopped by Ctrl-C after two epochs
    work = tmp_path / "run"
    work.mkdir()
    proc = start(train_args(images, kind, "m.safetensors", "--history", "h.json",
                            "--checkpoint-every", "5"), cwd=work)
    try:
        lines = [read_line(proc)]
        while not lines[-1].startswith("epoch 2/") and lines[-1]:
            lines.append(read_line(proc))
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    resume = re.search(r"continue with: fastnn (train --resume m\.safetensors)$", err.strip())
    assert resume, err
    stopped = fastnn.load(work / "m.safetensors")
    assert 2 <= stopped.epochs_trained < EPOCHS and stopped.layers == reference.layers
    history = json.loads((work / "h.json").read_text())
    assert history["stopped"] == "interrupted"
    assert len(history["loss"]) == stopped.epochs_trained

    # resumed to the end: bit for bit the straight run
    code, out, err = run([*resume.group(1).split(), "--threads", "1"], work)
    assert code == 0, err
    net = fastnn.load(work / "m.safetensors")
    assert net.epochs_trained == EPOCHS
    assert net.optimizer_state.steps == reference.optimizer_state.steps
    assert_array_equal(net._params, reference._params)
    assert_array_equal(net.optimizer_state.state, reference.optimizer_state.state)

    # evaluated, described and used for predictions by other processes
    data = load_data(images)
    code, out, err = run(["eval", "m.safetensors", images, "--json"], work)
    assert code == 0, err
    result = json.loads(out)
    expected = net.evaluate(data.X, data.y)
    assert result["accuracy"] == pytest.approx(expected["accuracy"]) and result["accuracy"] > 0.9
    code, out, err = run(["info", "m.safetensors"], work)
    assert code == 0, err
    assert f"format {1 if kind == 'dense' else 2}" in out
    # a layered network's table names each layer; a dense stack keeps the
    # table of inputs and outputs per layer (fastnn.summary)
    row = (rf"{re.escape(expected_layers)}\s+" if kind == "conv"
           else r"(?m)^\s*1\s+144\s+64\s")
    assert re.search(row, out) and "total" in out, out
    code, out, err = run(["predict", "m.safetensors", images, "--proba", "--limit", "4",
                          "-o", "p.csv"], work)
    assert code == 0, err
    rows = (work / "p.csv").read_text().splitlines()
    assert rows[0] == "label,p0,p1,p2,p3" and len(rows) == 5
    proba = np.array([[float(v) for v in r.split(",")[1:]] for r in rows[1:]])
    np.testing.assert_allclose(proba, net.forward(data.X[:4]), rtol=1e-5)


def test_layers_take_the_input_shape_from_the_idx_file_or_input_shape(tmp_path, images):
    runner = CliRunner()
    out = tmp_path / "a.safetensors"
    result = runner.invoke(cli, ["train", str(images), "--layers", "conv3:5,maxpool2,4",
                                 "--epochs", "1", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert fastnn.load(out).input_shape == (12, 12, 1)
    result = runner.invoke(cli, ["train", str(images), "--layers", "conv3:5,maxpool2,4",
                                 "--input-shape", "6x24", "--epochs", "1", "-o", str(out),
                                 "-q"])
    assert result.exit_code == 0, result.output
    assert fastnn.load(out).input_shape == (6, 24, 1)
    # --hidden keeps making a dense stack from the features (model-file format 1)
    result = runner.invoke(cli, ["train", str(images), "--hidden", "8", "--epochs", "1",
                                 "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert fastnn.load(out).input_shape == (144,)


@pytest.mark.parametrize("layers, code, message", [
    ("12x12,conv3,4", 2, r"cannot read layer token 'conv3' \(a convolution needs filters and "
                         r"a kernel: conv20:5\); expected .* maxpoolK\[xK\]\[:sS\]"),
    ("12x12,pool2,4", 2, "cannot read layer token 'pool2'; expected an input shape first"),
    ("12x12,conv3:3:bogus,4", 2, r"Unknown activation 'bogus'"),
    ("12x12,maxpool2:s2:s3,4", 2, "a pool takes only a stride"),
    # an activation given twice is not called "not an activation" (issue 24 §5)
    ("12x12,conv4:5:relu:tanh,4", 2, r"'tanh' is a second activation \(after 'relu'\); a "
                                     r"convolution has one"),
    ("12x12,conv4:5:s2:s1,4", 2, r"'s1' is a second stride \(after 's2'\)"),
    ("12x12,conv4:5:same:valid,4", 2, r"'valid' is a second padding \(after 'same'\)"),
    ("12x12,conv4:5:s-1,4", 2, r"'s-1' is not a stride sN"),
    ("12x12,8:relu:tanh,4", 2, r"a Dense layer has one activation, not 'relu', 'tanh'"),
    ("12x12,,4", 2, "an empty layer token"),
    ("12x12", 2, "has no layers after the input shape"),
    ("12x12,conv3:13,4", 1, r"Conv2D\(3, 13\) needs an input at least 13 high, not 12"),
    # named by its file, not X
    ("13x12,conv3:3,4", 1, r"train-images-idx3-ubyte has 144 features, but this network "
                           r"expects 156"),
])
def test_bad_layer_tokens_are_one_line_errors(tmp_path, images, layers, code, message):
    # tokens that cannot be read are usage errors, found before the data is read;
    # networks that do not fit the data, errors of the run
    result = CliRunner().invoke(cli, ["train", str(images), "--layers", layers, "--epochs", "1",
                                      "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_input_shape_and_layers_must_agree(tmp_path, images):
    result = CliRunner().invoke(cli, ["train", str(images), "--layers", "12x12,conv3:3,4",
                                      "--input-shape", "6x24", "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--input-shape says (6, 24, 1)" in result.output
    result = CliRunner().invoke(cli, ["train", str(images), "--input-shape", "12y12"])
    assert result.exit_code == 2 and "an input shape is N, HxW or HxWxC" in result.output


def test_info_prints_one_row_per_layer_and_show_draws_the_filters(tmp_path, images):
    from fastnn.layers import Conv2D, MaxPool2D

    net = fastnn.Network([(12, 12, 1), Conv2D(5, 3, activation="tanh"), MaxPool2D(2), 4],
                         output="softmax", loss="cross_entropy", seed=0)
    net.save(tmp_path / "c.safetensors")
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "c.safetensors")])
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    start_row = rows.index(next(r for r in rows if r.startswith("#  layer")))
    assert re.split(r"\s{2,}", rows[start_row + 2]) == [
        "1", "Conv2D(5, 3, activation='tanh')", "10x10x5", "tanh", "50"]
    assert re.split(r"\s{2,}", rows[start_row + 3]) == ["2", "MaxPool2D(2)", "5x5x5", "0"]
    assert re.split(r"\s{2,}", rows[start_row + 5]) == ["4", "Dense(4)", "4", "softmax", "504"]
    assert rows[start_row + 6].split() == ["total", "554"]
    info = json.loads(CliRunner().invoke(cli, ["info", str(tmp_path / "c.safetensors"),
                                               "--json"]).output)
    assert info["input_shape"] == [12, 12, 1]
    assert [(r["type"], r["output_shape"], r["parameters"]) for r in info["layers"]] == [
        ("Conv2D", [10, 10, 5], 50), ("MaxPool2D", [5, 5, 5], 0), ("Flatten", [125], 0),
        ("Dense", [4], 504)]

    needs("matplotlib")
    picture = tmp_path / "f.png"
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "c.safetensors"),
                                      "--filters", str(picture)])
    assert result.exit_code == 0, result.output
    assert "Wrote 5 filters" in result.output
    assert picture.read_bytes().startswith(b"\x89PNG")
    dense = fastnn.Network([144, 4], seed=0)
    dense.save(tmp_path / "d.safetensors")
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "d.safetensors"),
                                      "--filters", str(tmp_path / "g.png")])
    assert result.exit_code == 1 and "has no Conv2D layer" in result.output
    assert not (tmp_path / "g.png").exists()
