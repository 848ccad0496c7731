"""The fastnn command, through CliRunner and through real subprocesses."""
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST_DIR

import fastnn
from fastnn.cli import main

DATA = ["--data-dir", str(MNIST_DIR)]


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    for name, command in main.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert command.help and "fastnn " + name.split()[0] in result.output, name
    assert "fastnn train" in run("--help").output


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and fastnn.__version__ in result.output


def test_train_then_eval(tmp_path):
    model = tmp_path / "m.safetensors"
    result = run("train", "--layers", "784,16,10", "--epochs", "2", "--train-size", "2000",
                 "--seed", "3", "-o", str(model), *DATA)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Network([784, 16, 10]") and "seed=3" in lines[0]
    epochs = [l for l in lines if l.startswith("Epoch ")]
    assert len(epochs) == 2 and "test accuracy" in epochs[0] and "/ 10000" in epochs[0]
    assert f"Saved the model to {model}" in result.output
    net = fastnn.load(model)
    assert net.sizes == (784, 16, 10) and net.epochs_trained == 2
    result = run("eval", str(model), *DATA)
    assert result.exit_code == 0
    accuracy = net.evaluate(*fastnn.datasets.load_mnist(MNIST_DIR)[1])["accuracy"]
    assert f"({accuracy:.2%})" in result.output


def test_train_options_reach_the_network(tmp_path):
    model = tmp_path / "m.safetensors"
    result = run("train", "--layers", "784,8,10", "--activation", "relu", "--output", "softmax",
                 "--loss", "cross_entropy", "--lr", "0.1", "--batch-size", "32", "--epochs", "1",
                 "--dtype", "float64", "--train-size", "500", "-o", str(model), *DATA)
    assert result.exit_code == 0, result.output
    net = fastnn.load(model)
    assert net.activations == ("relu", "softmax") and net.loss == "cross_entropy"
    assert net.dtype == np.float64 and net.training["batch_size"] == 32


@pytest.mark.parametrize("args, message", [
    (["train", "--layers", "784,x,10"], "expected comma-separated integers"),
    (["train", "--layers", "784"], "needs at least two layer sizes"),
    (["train", "--activation", "relux"], "'relux' is not one of"),
    (["train", "--lr", "0"], "0.0 is not in the range x>0"),
    (["train", "--epochs", "-1"], "-1 is not in the range"),
])
def test_usage_errors_exit_2(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output


def test_library_errors_are_one_line_exit_1(tmp_path):
    model = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--layers", "784,10", "--loss", "cross_entropy",
                                       "--activation", "relu", "--output", "relu", *DATA,
                                       "-o", str(model)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: loss 'cross_entropy' needs a sigmoid or softmax")
    assert "Traceback" not in result.output and not model.exists()
    result = CliRunner().invoke(main, ["train", "--layers", "100,10", *DATA, "-o", str(model)])
    assert result.exit_code == 1 and "X has 784 features, but this network expects 100" in result.output
    assert not model.exists()


def test_eval_missing_or_bad_model(tmp_path):
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "nope.safetensors"), *DATA])
    assert result.exit_code == 1 and "no such model file" in result.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(main, ["eval", str(junk), *DATA])
    assert result.exit_code == 1 and "not a fastnn model" in result.output


def test_missing_dataset_names_the_places(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.setattr("fastnn.datasets.SOURCE_TREE_MNIST", tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: MNIST not found") and str(tmp_path / "d") in result.output


def test_console_script_and_module_run_in_a_subprocess(tmp_path):
    exe = [sys.executable, "-m", "fastnn"]
    out = subprocess.run(exe + ["--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and fastnn.__version__ in out.stdout
    bad = subprocess.run(exe + ["eval", str(tmp_path / "none.safetensors"), *DATA],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"Error: {tmp_path / 'none.safetensors'}: no such model file"
    usage = subprocess.run(exe + ["train", "--epochs", "x"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "Invalid value for '--epochs'" in usage.stderr
    script = subprocess.run(["fastnn", "--help"], capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "Commands:" in script.stdout


def test_cli_is_a_subpackage_of_fastnn():
    assert main.__module__ == "fastnn.cli"
    assert isinstance(main, click.Group)
