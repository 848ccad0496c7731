"""benchmarks/nielsen_ch6.py, the chapter-6 table's runner, on a few images (--smoke)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MNIST_DIR

import fastnn

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "nielsen_ch6.py"


def table(*args, cwd):
    env = {**os.environ, "FASTNN_DATA": str(MNIST_DIR)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=True).stdout


def test_a_row_is_one_fastnn_train_command_and_one_json_line(tmp_path):
    results = tmp_path / "results.jsonl"
    args = ["--rows", "1", "--smoke", "600", "--workdir", str(tmp_path), "--results",
            str(results)]
    table(*args, cwd=tmp_path)
    [record] = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["command"].startswith("fastnn train mnist --layers 784,100,10 ")
    assert "--restore-best" in record["command"] and "--checkpoint-every 1" in record["command"]
    net = fastnn.load(tmp_path / "row1.safetensors")
    assert record["best_val_epoch"] == net.training_record["best"]["epoch"] <= record["epochs"] == 2
    assert 0 < record["test_accuracy"] <= 1 and record["cpu"]
    # done rows are skipped; the vote of one model is its accuracy
    assert "[row 1] done" in table(*args, cwd=tmp_path)
    assert results.read_text().count("\n") == 1
    # the vote of a model and its copy (fastnn ensemble, then fastnn eval) is its accuracy
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes((tmp_path / "row1.safetensors").read_bytes())
    vote = table("--vote", str(tmp_path / "row1.safetensors"), str(copy), "--workdir",
                 str(tmp_path), cwd=tmp_path)
    assert float(vote) == round(record["test_accuracy"], 4)
    assert len(fastnn.load(tmp_path / "vote.safetensors").members) == 2
    markdown = table("--markdown", "--results", str(results), cwd=tmp_path)
    assert f"| **{100 * record['test_accuracy']:.2f} %** | 97.80 % |" in markdown
    assert "| 2 | conv 20x5x5, max-pool 2x2, FC100, sigmoid | | | not yet run |" in markdown


@pytest.mark.slow
def test_row_7_in_one_command_trains_five_networks_in_one_file(tmp_path):
    """Row "7e": row 6's command with --ensemble 5, one file of five
    networks (seeds 1 to 5) that fastnn eval votes with; its JSON line has
    each member's best validation epoch, and the table shows it."""
    results = tmp_path / "results.jsonl"
    args = ["--rows", "7e", "--smoke", "300", "--workdir", str(tmp_path), "--results",
            str(results), "--threads", "2"]
    table(*args, cwd=tmp_path)
    [record] = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["row"] == "7e" and "--ensemble 5 --seed 1" in record["command"]
    assert "--init xavier" in record["command"] and "--restore-best" in record["command"]
    ensemble = fastnn.load(tmp_path / "row7e.safetensors")
    assert [m.seed for m in ensemble.members] == [1, 2, 3, 4, 5]
    assert [m.training_record["best"]["epoch"] for m in ensemble.members] \
        == record["best_val_epoch"]
    assert record["epochs"] == 2 and 0 < record["test_accuracy"] <= 1
    assert "[row 7e] done" in table(*args, cwd=tmp_path)
    markdown = table("--markdown", "--results", str(results), cwd=tmp_path)
    assert f"| 7e | row 7 as one command" in markdown
    assert f"**{100 * record['test_accuracy']:.2f} %** | 99.67 %" in markdown
    assert "--ensemble 5 --seed 1 --threads 2" in markdown


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A directory where row 1 ran straight through (--smoke 600), read only."""
    straight = tmp_path_factory.mktemp("straight")
    table("--rows", "1", "--smoke", "600", "--workdir", str(straight), "--results",
          str(straight / "r.jsonl"), cwd=straight)
    return straight


# two rows run in real processes each: under --runslow (CI) only
@pytest.mark.parametrize("where", [pytest.param("model", marks=pytest.mark.slow),
                                   pytest.param("checkpoint", marks=pytest.mark.slow)])
def test_an_unfinished_row_goes_on_with_resume(tmp_path, where, straight):
    # a checkpoint left by a killed run (here: a 2-epoch run's first epoch) is continued
    results = tmp_path / "results.jsonl"
    args = ["--rows", "1", "--smoke", "600", "--workdir", str(tmp_path), "--results",
            str(results)]
    first = fastnn.load(straight / "row1.safetensors")
    cut = tmp_path / "row1.safetensors"
    env = {**os.environ, "FASTNN_DATA": str(MNIST_DIR)}
    command = json.loads((straight / "r.jsonl").read_text())["command"].split()[1:]
    command[command.index("-o") + 1] = str(cut)
    command[command.index("--epochs", command.index("--epochs") + 1) + 1] = "1"
    subprocess.run([sys.executable, "-m", "fastnn", *command], env=env, check=True,
                   capture_output=True)
    # the 1-epoch run is finished; make it look like the 2-epoch run stopped after epoch 1
    net = fastnn.load(cut)
    net.training_record["cli"]["epochs"] = 2
    net.best_params = net._params.copy()
    net.save(cut, force=True)
    if where == "checkpoint":
        # a resumed run stopped after epoch 1 leaves it beside the model, which
        # says epoch 0: going on from the model would train two more epochs
        checkpoint = tmp_path / "row1.checkpoint.safetensors"
        os.replace(cut, checkpoint)
        net.training_record["cli"]["epochs_done"] = 0
        net.save(cut)
    out = table(*args, cwd=tmp_path)
    resumed_from = cut if where == "model" else tmp_path / "row1.checkpoint.safetensors"
    assert f"fastnn train --resume {resumed_from} -o {cut}" in out
    assert not (tmp_path / "row1.checkpoint.safetensors").exists()
    resumed = fastnn.load(cut)
    assert resumed.training_record["best"] == first.training_record["best"]
    assert (resumed._params == first._params).all()
