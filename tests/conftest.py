"""Shared fixtures; slow end-to-end tests run with --runslow (the README's test command)."""
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = REPO / "data" / "mnist"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the slow end-to-end tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, from the repository's data/mnist."""
    from fastnn.datasets import load_mnist

    return load_mnist(MNIST_DIR)


def make_classification(n=200, n_features=12, n_classes=4, seed=0, dtype=np.float64):
    """Small separable-ish data: Gaussian blobs around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (n_classes, n_features))
    y = rng.integers(0, n_classes, n)
    X = centres[y] + rng.normal(0, 1, (n, n_features))
    return X.astype(dtype), y


def one_hot(y, k):
    Y = np.zeros((len(y), k))
    Y[np.arange(len(y)), y] = 1
    return Y
