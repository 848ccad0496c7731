"""Issue 12 through the CLI, in real processes: scikit-learn's bundled data
sets written to CSV files with a header, trained with fastnn's defaults and
compared with make_pipeline(StandardScaler(), MLPClassifier/MLPRegressor)."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import needs

import fastnn

needs("sklearn")


def fastnn_run(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def write_split(name, tmp_path):
    """name_train.csv and name_test.csv (a quarter, stratified for
    classification) with a header and the label last; iris's as its names."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    d = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = d.frame.copy()
    regression = name == "diabetes"
    if name == "iris":
        frame["target"] = np.array(d.target_names)[d.target]
    train, test = train_test_split(frame, test_size=0.25, random_state=0,
                                   stratify=None if regression else frame["target"])
    train.to_csv(tmp_path / f"{name}_train.csv", index=False)
    test.to_csv(tmp_path / f"{name}_test.csv", index=False)
    return train, test


def scikit_learn_score(train, test, regression):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = (MLPRegressor if regression else MLPClassifier)(random_state=0, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), estimator)
        model.fit(train.drop(columns="target"), train["target"])
    return model.score(test.drop(columns="target"), test["target"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "digits", "diabetes"])
def test_defaults_match_scikit_learn_on_its_bundled_data_sets(tmp_path, name):
    regression = name == "diabetes"
    train, test = write_split(name, tmp_path)
    task = ["--task", "regression"] if regression else []
    fastnn_run("train", f"{name}_train.csv", "-o", "m.safetensors", "--seed", "0", *task,
               cwd=tmp_path)
    report = json.loads(fastnn_run("eval", "m.safetensors", f"{name}_test.csv", "--json",
                                   cwd=tmp_path).stdout)
    ours = report["r2"] if regression else report["accuracy"]
    theirs = scikit_learn_score(train, test, regression)
    if regression:
        assert ours >= theirs - 0.05, (ours, theirs)
    else:
        assert ours >= theirs - 0.03, (ours, theirs)


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_iris_with_class_names_through_the_cli(tmp_path):
    train, test = write_split("iris", tmp_path)
    out = fastnn_run("train", "iris_train.csv", "-o", "iris.safetensors", "--seed", "0",
                     "--val-split", "0.2", cwd=tmp_path).stdout.splitlines()
    assert out[0] == ("Task: classification, 3 classes (setosa, versicolor, virginica) "
                      "(inferred from the labels; state it with --task); scaling: standard "
                      "(mean 0, variance 1, learned from the training data)")
    assert out[-1] == "Saved the model to iris.safetensors"
    predicted = fastnn_run("predict", "iris.safetensors", "iris_test.csv",
                           cwd=tmp_path).stdout.splitlines()
    assert predicted[0] == "label" and len(predicted) == len(test) + 1
    assert set(predicted[1:]) <= {"setosa", "versicolor", "virginica"}
    accuracy = np.mean(np.array(predicted[1:]) == test["target"].to_numpy())
    assert accuracy > 0.8
    text = fastnn_run("eval", "iris.safetensors", "iris_test.csv", cwd=tmp_path).stdout
    assert "versicolor" in text and "0 = setosa, 1 = versicolor, 2 = virginica" in text
    info = fastnn_run("info", "iris.safetensors", cwd=tmp_path).stdout
    assert "task: classification, 3 classes (setosa, versicolor, virginica)" in info
    assert "scaling: standard" in info
    # resumed: the same classes and scaling, and the same predictions as the API's
    fastnn_run("train", "--resume", "iris.safetensors", "--epochs", "2", cwd=tmp_path)
    net = fastnn.load(tmp_path / "iris.safetensors")
    assert net.preprocessing.classes == ["setosa", "versicolor", "virginica"]
    X = test.drop(columns="target").to_numpy()
    again = fastnn_run("predict", "iris.safetensors", "iris_test.csv", cwd=tmp_path).stdout
    assert again.splitlines()[1:] == net.predict(X).tolist()


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_diabetes_regression_through_the_cli(tmp_path):
    train, test = write_split("diabetes", tmp_path)
    refused = subprocess.run([sys.executable, "-m", "fastnn", "train", "diabetes_train.csv"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "--task classification or --task regression" in refused.stderr
    out = fastnn_run("train", "diabetes_train.csv", "--task", "regression",
                     "--seed", "0", "-o", "d.safetensors", cwd=tmp_path).stdout
    assert out.startswith("Task: regression, 1 target (target), standardised; scaling: "
                          "standard")
    net = fastnn.load(tmp_path / "d.safetensors")
    assert net.output == "identity"
    predicted = fastnn_run("predict", "d.safetensors", "diabetes_test.csv",
                           cwd=tmp_path).stdout.splitlines()
    assert predicted[0] == "predicted_target"
    values = np.array(predicted[1:], dtype=float)
    assert len(values) == len(test) and 50 < values.mean() < 250 and values.std() > 10
    report = json.loads(fastnn_run("eval", "d.safetensors", "diabetes_test.csv", "--json",
                                   "--scatter-png", "s.png", cwd=tmp_path).stdout)
    assert set(report) >= {"mse", "rmse", "mae", "r2", "loss"} and report["r2"] > 0.2
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = fastnn_run("eval", "d.safetensors", "diabetes_test.csv", cwd=tmp_path).stdout
    assert "RMSE" in text and "R²" in text


def test_train_without_o_says_the_model_was_not_saved_and_hints_at_a_stall(tmp_path):
    write_split("breast_cancer", tmp_path)
    # Nielsen's recipe: its sigmoid units saturate on unscaled features
    proc = fastnn_run("train", "breast_cancer_train.csv", "--scale", "none", "--hidden", "300",
                      "--epochs", "3", "--seed", "0", "--recipe", "nielsen", cwd=tmp_path)
    assert proc.stdout.splitlines()[-1] == ("The model was not saved (no -o given); to keep "
                                            "it, run again with -o MODEL.safetensors")
    assert proc.stderr.count("Hint: after 3 epochs") == 1
    assert "--scale standard" in proc.stderr and "--lr" in proc.stderr
