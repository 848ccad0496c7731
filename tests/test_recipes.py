"""fastnn.recipes: which defaults `fastnn train` picks (issue 20 §6), and that
the options a user gives win. The oracle is the rule the README states:
tabular for data that is not images with at most 10,000 rows, Nielsen's
otherwise; only the options not given are filled."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import fastnn
from fastnn.cli import main
from fastnn.exceptions import ConfigError
from fastnn.recipes import (RECIPES, TABULAR_MAX_ROWS, VALIDATION_MIN_ROWS, choose,
                            describe)

TRAINING = ("optimizer", "lr", "batch_size", "l2", "epochs", "val_split", "early_stopping")
OPTIONS = ("hidden", "activation", "output_activation", "loss", "init", *TRAINING)


def blank(**given):
    options = dict.fromkeys(OPTIONS)
    options.update(given)
    return options


@pytest.mark.parametrize("rows, auto, scale, expected", [
    (150, "standard", None, "tabular"),
    (TABULAR_MAX_ROWS, "standard", "minmax", "tabular"),
    (TABULAR_MAX_ROWS + 1, "standard", None, "nielsen"),
    (150, "pixels", None, "nielsen"),          # images: IDX, uint8 arrays, named data sets
    (150, "none", None, "nielsen"),            # Nielsen's pickle
    (150, "standard", "pixels", "nielsen"),    # a CSV of pixels, said so
])
def test_auto_picks_tabular_for_small_data_that_is_not_images(rows, auto, scale, expected):
    assert choose("auto", rows, auto, scale)[0].name == expected
    assert choose(None, rows, auto, scale)[0].name == expected


def test_a_named_recipe_is_used_whatever_the_data():
    assert choose("nielsen", 100, "standard")[0] is RECIPES["nielsen"]
    assert choose("tabular", 60000, "pixels")[0] is RECIPES["tabular"]
    with pytest.raises(ConfigError, match="recipe must be one of auto, nielsen, tabular"):
        choose("keras", 100, "standard")


def test_tabular_fills_every_option_left_open():
    options = blank()
    filled = RECIPES["tabular"].fill(options, "classification", 500, has_val=False)
    assert options == {"hidden": [100], "activation": "relu", "output_activation": "softmax",
                       "loss": "cross_entropy", "init": "he", "optimizer": "adam", "lr": 1e-3,
                       "batch_size": 32, "l2": 1.0, "epochs": 200, "val_split": 0.1,
                       "early_stopping": 20}
    assert set(filled) == set(OPTIONS)
    options = blank()
    RECIPES["tabular"].fill(options, "regression", 500, has_val=False)
    assert options["output_activation"] == "identity" and options["loss"] == "mse"


def test_given_options_win_and_what_depends_on_them_follows():
    given = dict(hidden=[7], activation="tanh", loss="mse", epochs=3, l2=0.0, optimizer="sgd")
    options = blank(**given)
    filled = RECIPES["tabular"].fill(options, "classification", 500, has_val=False)
    assert {k: options[k] for k in given} == given and not set(given) & set(filled)
    assert options["lr"] == 0.1                        # sgd's step for a ReLU network
    options = blank(optimizer="rprop")
    RECIPES["tabular"].fill(options, "classification", 500, has_val=False)
    assert options["lr"] is None                       # rprop's own
    options = blank(lr=0.01)
    RECIPES["tabular"].fill(options, "classification", 500, has_val=False)
    assert options["lr"] == 0.01 and options["optimizer"] == "adam"


def test_validation_and_early_stopping_follow_the_data():
    tabular = RECIPES["tabular"]
    options = blank()                                  # --val DATA: no split, early stopping
    tabular.fill(options, "classification", 500, has_val=True)
    assert options["val_split"] is None and options["early_stopping"] == 20
    options = blank(val_split=0.0)                     # --val-split 0: every row, no stopping
    tabular.fill(options, "classification", 500, has_val=False)
    assert options["val_split"] == 0.0 and options["early_stopping"] is None
    options = blank(val_split=0.3)
    tabular.fill(options, "classification", 500, has_val=False)
    assert options["val_split"] == 0.3 and options["early_stopping"] == 20
    options = blank()                                  # too few rows to hold any out
    tabular.fill(options, "classification", VALIDATION_MIN_ROWS - 1, has_val=False)
    assert options["val_split"] is None and options["early_stopping"] is None
    options = blank(early_stopping=5)
    tabular.fill(options, "classification", 500, has_val=False)
    assert options["early_stopping"] == 5


def test_nielsen_fills_what_fastnn_always_did():
    options = blank()
    RECIPES["nielsen"].fill(options, "classification", 500, has_val=False)
    assert {k: v for k, v in options.items() if v is not None} == {
        "hidden": [30], "activation": "sigmoid", "epochs": 30}
    options = blank()
    RECIPES["nielsen"].fill(options, "regression", 500, has_val=False)
    assert options["output_activation"] == "identity" and options["lr"] == 0.1
    options = blank(optimizer="adam")
    RECIPES["nielsen"].fill(options, "regression", 500, has_val=False)
    assert options["lr"] is None


def test_the_line_says_only_the_training_options_the_recipe_set():
    options = blank(optimizer="sgd", epochs=5)
    filled = RECIPES["tabular"].fill(options, "classification", 500, has_val=False)
    line = describe(RECIPES["tabular"], "tabular data of 500 rows", filled, options)
    assert line == ("Recipe: tabular (tabular data of 500 rows; --recipe nielsen for Nielsen's "
                    "chapter-1 recipe): he init, lr 0.1, batches of 32, l2 1, 10% of the rows "
                    "held out, stopping after 20 epochs without a lower validation loss")


def _write_csv(path, n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    path.write_text("a,b,c,label\n" + "".join(f"{a:.3f},{b:.3f},{c:.3f},{t}\n"
                                              for (a, b, c), t in zip(X, y)))


def run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_train_on_a_small_csv_uses_and_prints_the_tabular_recipe(tmp_path):
    _write_csv(tmp_path / "t.csv", 120)
    model = tmp_path / "m.safetensors"
    out = run("train", tmp_path / "t.csv", "--seed", "0", "--epochs", "2", "-o", model).output
    lines = out.splitlines()
    assert lines[1] == ("Recipe: tabular (tabular data of 120 rows, at most 10,000; --recipe "
                        "nielsen for Nielsen's chapter-1 recipe): he init, adam, lr 0.001, "
                        "batches of 32, l2 1, 10% of the rows held out, stopping after 20 "
                        "epochs without a lower validation loss")
    assert lines[2].startswith("Network([3, 100, 2], activation='relu', output='softmax', "
                               "loss='cross_entropy'")
    assert "training on 108 samples of" in lines[2] and "(12 more held out" in lines[2]
    assert lines[-2].startswith("Kept the weights of epoch ")
    net = fastnn.load(model)
    assert net.training_record["cli"]["recipe"] == "tabular"
    assert net.training_record["cli_options"] == {"optimizer": "adam", "lr": 1e-3, "batch_size": 32,
                                           "l2": 1.0, "val_split": 0.1, "early_stopping": 20}
    assert net.training_record["optimizer"] == "adam" and net.epochs_trained == 2
    # resumed: the same run goes on; the recipe is the model file's
    run("train", "--resume", model, "--epochs", "1")
    assert fastnn.load(model).epochs_trained == 3
    refused = run("train", "--resume", model, "--recipe", "nielsen", code=2)
    assert "--recipe is fixed by the model file when resuming" in refused.output


def test_explicit_options_win_over_the_recipe(tmp_path):
    _write_csv(tmp_path / "t.csv", 120)
    result = run("train", tmp_path / "t.csv", "--seed", "0", "--epochs", "2", "--hidden", "7",
                 "--activation", "tanh", "--loss", "mse", "--optimizer", "sgd",
                 "--val-split", "0", "--batch-size", "10", "--json")
    report = json.loads(result.output)
    assert report["recipe"] == "tabular" and report["epochs_trained"] == 2
    assert report["network"].startswith("Network([3, 7, 2], activation='tanh', "
                                        "output='softmax', loss='mse'")
    assert "val_loss" not in report["final"]


@pytest.mark.parametrize("extra", [["--recipe", "nielsen"], ["--scale", "pixels"]])
def test_nielsen_when_asked_or_for_pixels(tmp_path, extra):
    _write_csv(tmp_path / "t.csv", 120)
    out = run("train", tmp_path / "t.csv", "--seed", "0", "--epochs", "1", *extra).output
    assert "Network([3, 30, 2], activation='sigmoid', output='sigmoid', loss='mse'" in out
    assert ("Recipe: nielsen (--recipe nielsen; --recipe tabular for the recipe for small "
            "tabular data)" in out) == (extra[0] == "--recipe")
    assert "held out" not in out


def test_images_and_large_data_keep_nielsens_defaults(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 16), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", X=images, y=rng.integers(0, 3, 50))
    out = run("train", tmp_path / "img.npz", "--seed", "0", "--epochs", "1").output
    assert "Recipe" not in out and "Network([16, 30, 3], activation='sigmoid'" in out
    n = TABULAR_MAX_ROWS + 1
    np.savez(tmp_path / "big.npz", X=rng.normal(size=(n, 2)), y=rng.integers(0, 2, n))
    out = run("train", tmp_path / "big.npz", "--seed", "0", "--epochs", "1").output
    assert "Recipe" not in out and "Network([2, 30, 2], activation='sigmoid'" in out
    assert "epoch 1/30" not in out and "epoch 1/1" in out
