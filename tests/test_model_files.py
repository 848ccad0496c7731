"""What model files hold: the weight layout, weights-only files, and the
same bytes for the same run."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_classification, needs

import fastnn
from fastnn import Network
from fastnn.cli import main
from fastnn.io import WEIGHT_LAYOUT, read_header, read_metadata

X, y = make_classification(n=90)


def trained(seed=0, optimizer="adam"):
    net = Network([12, 8, 4], activation="relu", output="softmax", loss="cross_entropy",
                  seed=seed)
    net.fit(X, y, epochs=3, optimizer=optimizer, validation_split=0.2)
    return net


def test_the_header_states_the_weight_layout(tmp_path):
    net = trained()
    net.save(tmp_path / "m.safetensors")
    assert read_metadata(tmp_path / "m.safetensors")["weight_layout"] == WEIGHT_LAYOUT
    # and it is true: x @ W + b, W (in, out), computes the first layer
    W, b = net.weights[0], net.biases[0]
    assert W.shape == (12, 8)
    out = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "m.safetensors"),
                                               "--json"]).output)
    assert out["weight_layout"] == WEIGHT_LAYOUT
    one = Network([12, 8], activation="identity", seed=0)
    one.weights, one.biases = [W], [b]
    np.testing.assert_allclose(one.forward(X[:5]), X[:5].astype(np.float32) @ W + b, rtol=1e-5)


def test_a_file_claiming_another_layout_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "m.safetensors"
    trained().save(path)
    meta = read_metadata(path)
    save_file(load_file(path), path, metadata={**meta, "weight_layout": "W @ x + b"})
    with pytest.raises(fastnn.ModelFileError, match="weight_layout must be one of"):
        fastnn.load(path)


def test_weights_only_leaves_the_optimizer_state_out(tmp_path):
    net = trained()
    full, light = tmp_path / "full.safetensors", tmp_path / "light.safetensors"
    net.save(full)
    net.save(light, weights_only=True)
    assert "optimizer.state" in read_header(full).tensors
    assert "optimizer.state" not in read_header(light).tensors
    # Adam keeps 3 rows of state, one the size of the parameters each
    saved = full.stat().st_size - light.stat().st_size - 3 * net.n_params * 4
    assert 0 < saved < 200     # the tensors, and their lines in the header
    loaded = fastnn.load(light)
    assert loaded.optimizer_state is None and loaded.epochs_trained == 3
    np.testing.assert_array_equal(loaded.forward(X), net.forward(X))
    loaded.fit(X, y, epochs=1, optimizer="adam")    # trains on, with a new optimizer
    assert loaded.optimizer_state.steps == 9


def test_files_are_plain_safetensors(tmp_path):
    from safetensors.numpy import load_file

    net = trained()
    net.save(tmp_path / "m.safetensors")
    tensors = load_file(tmp_path / "m.safetensors")
    assert sorted(tensors) == ["biases.0", "biases.1", "optimizer.state", "weights.0",
                               "weights.1"]
    np.testing.assert_array_equal(tensors["weights.1"], net.weights[1])
    np.testing.assert_array_equal(tensors["optimizer.state"], net.optimizer_state.state)
    torch = needs("torch")
    from safetensors.torch import load_file as torch_load

    assert torch.equal(torch_load(tmp_path / "m.safetensors")["biases.0"],
                       torch.from_numpy(net.biases[0]))


def test_the_same_run_writes_the_same_bytes(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    first, second = trained(seed=5), trained(seed=5)
    assert first.history["seconds"] != second.history["seconds"]   # timings differ...
    first.save(a)
    second.save(b)
    assert a.read_bytes() == b.read_bytes()                        # ...the files do not
    final = first.training_record["final"]
    assert "seconds" not in final and "loss" in final
    trained(seed=6).save(b, force=True)
    assert a.read_bytes() != b.read_bytes()


def test_cli_same_bytes_and_weights_only(tmp_path):
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = str(tmp_path / "d.npz")
    args = ["train", data, "--hidden", "6", "--epochs", "2", "--seed", "1", "--optimizer",
            "adam", "-q"]
    for name in ("a", "b"):
        result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / f"{name}.safetensors")])
        assert result.exit_code == 0, result.output
    assert ((tmp_path / "a.safetensors").read_bytes()
            == (tmp_path / "b.safetensors").read_bytes())
    result = CliRunner().invoke(main, [*args, "--weights-only", "-o",
                                       str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output
    assert "optimizer.state" not in read_header(tmp_path / "w.safetensors").tensors
    assert fastnn.load(tmp_path / "w.safetensors").epochs_trained == 2
