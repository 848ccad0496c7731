"""BLAS thread control, and reproducibility for a thread count."""
import numpy as np
from conftest import make_classification

from fastnn import Network
from fastnn.blas import get_num_threads, set_num_threads


def test_thread_count_is_set_and_runs_reproduce():
    before = get_num_threads()
    try:
        set_num_threads(1)
        assert get_num_threads() == 1
        X, y = make_classification(n=300, n_features=30)
        runs = []
        for _ in range(2):
            net = Network([30, 64, 4], seed=3)
            net.fit(X, y, epochs=2, batch_size=64)
            runs.append(net.weights[0].copy())
        np.testing.assert_array_equal(*runs)
    finally:
        set_num_threads(before)
