"""fastnn's defaults on small tabular CSV files against scikit-learn, over seeds.

The data sets are scikit-learn's bundled iris, wine, breast_cancer
(classification) and diabetes (regression), made to look like a real export
as tests/test_tabular_mixed.py does (its `mixed`: the first three features
binned into the text categories low/mid/high/top, 10 % of the next three
features' cells and 5 % of the first category column missing, the label
first), written to CSV files and split 75/25 (stratified for a classifier)
with random_state=0. The split and the files are the same for every seed;
each seed is one training run of each method:

- fastnn: ``fastnn train NAME_train.csv --label-col target`` (``--task
  regression`` for diabetes) ``--seed S`` and ``fastnn eval --json`` on the
  test file: the real commands, run in this process (``--fastnn ARGS`` adds
  options to train);
- scikit-learn's MLP pipeline: ``ColumnTransformer`` with ``SimpleImputer``
  + ``StandardScaler`` for the numbers and ``OneHotEncoder(handle_unknown=
  "ignore")`` for the text, then ``MLPClassifier``/``MLPRegressor`` with its
  defaults and ``random_state=S``;
- ``HistGradientBoosting`` with native categories (pandas ``category``
  columns) and missing values, ``random_state=S``: the reference tabular
  users know.

The score is test accuracy (R² for diabetes). Prints a markdown table of the
median, worst and best per method and data set, and whether fastnn meets the
bar of issue 20 §6: the median >= scikit-learn's MLP - 0.02 (R² - 0.05) and the
worst within 0.10 of the median.

    nice -n 19 python benchmarks/tabular.py                   # 10 seeds, every set
    nice -n 19 python benchmarks/tabular.py --seeds 3 --data iris --fastnn "--epochs 50"
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import warnings

import numpy as np
from pandas.api.types import is_numeric_dtype

DATA = ("iris", "wine", "breast_cancer", "diabetes")
METHODS = ("fastnn", "sklearn-mlp", "hist-gb")


def mixed(name, seed=0):
    """(train, test, regression) of scikit-learn's `name` data set made to look
    like a real export: its first three features binned by quartile into the
    text categories low/mid/high/top (a feature of at most four values: its
    values named so, in order), 10 % of the cells of the next three
    features and 5 % of the first category column missing (drawn with
    `seed`), the label first (as class names for a classifier); split 75/25,
    stratified for a classifier, with random_state=0."""
    import pandas as pd
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    d = getattr(datasets, f"load_{name}")(as_frame=True)
    df = d.frame.copy()
    rng = np.random.default_rng(seed)
    features = [c for c in df.columns if c != "target"]
    names = ["low", "mid", "high", "top"]
    for c in features[:3]:
        values = np.sort(df[c].unique())
        if len(values) <= 4:
            df[c] = df[c].map(dict(zip(values.tolist(), names)))
        else:
            df[c] = pd.qcut(df[c], 4, labels=names).astype(str)
    for c in features[3:6]:
        df.loc[rng.random(len(df)) < 0.10, c] = np.nan
    df.loc[rng.random(len(df)) < 0.05, features[0]] = np.nan
    regression = name == "diabetes"
    if not regression:
        df["target"] = np.array(d.target_names)[d.target]
    df = df[["target", *features]]
    train, test = train_test_split(df, test_size=0.25, random_state=0,
                                   stratify=None if regression else df["target"])
    return train, test, regression


def fastnn_score(directory, name, regression, seed, extra):
    from click.testing import CliRunner

    from fastnn.cli import main

    def run(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        if result.exit_code != 0:
            raise SystemExit(f"fastnn {' '.join(map(str, args))} failed:\n{result.output}")
        return result

    train, test = (os.path.join(directory, f"{name}_{part}.csv") for part in ("train", "test"))
    model = os.path.join(directory, f"{name}.safetensors")
    task = ["--task", "regression"] if regression else []
    run("train", train, "--label-col", "target", *task, "--seed", seed, *extra, "-o", model,
        "-q", "--force")
    report = json.loads(run("eval", model, test, "--json").stdout)
    return report["r2"] if regression else report["accuracy"]


def _frames(directory, name):
    import pandas as pd

    train = pd.read_csv(os.path.join(directory, f"{name}_train.csv"))
    test = pd.read_csv(os.path.join(directory, f"{name}_test.csv"))
    return (train.drop(columns="target"), train["target"], test.drop(columns="target"),
            test["target"])


def sklearn_mlp_score(directory, name, regression, seed):
    from sklearn.compose import ColumnTransformer
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y, X_test, y_test = _frames(directory, name)
    text = [c for c in X.columns if not is_numeric_dtype(X[c])]
    numbers = [c for c in X.columns if c not in text]
    columns = ColumnTransformer([
        ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
        ("text", OneHotEncoder(handle_unknown="ignore"), text)])
    estimator = (MLPRegressor if regression else MLPClassifier)(random_state=seed)
    model = make_pipeline(columns, estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return model.score(X_test, y_test)


def hist_gb_score(directory, name, regression, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    X, y, X_test, y_test = _frames(directory, name)
    for c in X.columns:
        if not is_numeric_dtype(X[c]):
            categories = sorted(X[c].dropna().unique())
            X[c] = X[c].astype("category").cat.set_categories(categories)
            X_test[c] = X_test[c].astype("category").cat.set_categories(categories)
    estimator = (HistGradientBoostingRegressor if regression
                 else HistGradientBoostingClassifier)
    model = estimator(categorical_features="from_dtype", random_state=seed)
    model.fit(X, y)
    return model.score(X_test, y_test)


def summary(scores):
    return statistics.median(scores), min(scores), max(scores)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 [10]")
    parser.add_argument("--data", action="append", choices=DATA,
                        help="a data set (repeatable) [all four]")
    parser.add_argument("--method", action="append", choices=METHODS,
                        help="a method (repeatable) [all three]")
    parser.add_argument("--fastnn", default="", metavar="ARGS",
                        help="more options for fastnn train, as one string")
    parser.add_argument("--json", metavar="FILE", help="also write every score here")
    args = parser.parse_args(argv)
    extra = shlex.split(args.fastnn)
    methods = args.method or METHODS
    scorers = {"fastnn": lambda d, n, r, s: fastnn_score(d, n, r, s, extra),
               "sklearn-mlp": sklearn_mlp_score, "hist-gb": hist_gb_score}
    seeds = range(args.seeds)
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for name in args.data or DATA:
            train, test, regression = mixed(name)
            train.to_csv(os.path.join(directory, f"{name}_train.csv"), index=False)
            test.to_csv(os.path.join(directory, f"{name}_test.csv"), index=False)
            for method in methods:
                scores = [scorers[method](directory, name, regression, seed) for seed in seeds]
                results[(name, method)] = scores
                print(f"{name:14} {method:12} " + " ".join(f"{s:.3f}" for s in scores),
                      file=sys.stderr, flush=True)
    names = list(dict.fromkeys(n for n, _ in results))
    print(f"| data set (measure) | " + " | ".join(f"{m}: median (worst, best)" for m in methods)
          + (" | bar |" if {"fastnn", "sklearn-mlp"} <= set(methods) else " |"))
    print("|---" * (len(methods) + 1 + ({"fastnn", "sklearn-mlp"} <= set(methods))) + "|")
    for name in names:
        regression = name == "diabetes"
        cells = []
        for method in methods:
            median, worst, best = summary(results[(name, method)])
            cells.append(f"{median:.3f} ({worst:.3f}, {best:.3f})")
        row = f"| {name} ({'R²' if regression else 'accuracy'}) | " + " | ".join(cells)
        if {"fastnn", "sklearn-mlp"} <= set(methods):
            ours, worst, _ = summary(results[(name, "fastnn")])
            theirs = summary(results[(name, "sklearn-mlp")])[0]
            met = ours >= theirs - (0.05 if regression else 0.02) and ours - worst <= 0.10
            row += f" | {'met' if met else 'missed'}"
        print(row + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{n}/{m}": s for (n, m), s in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
