"""Scaling out, as the README's "Scaling out" section shows it: GridSearchCV
over a fastnn pipeline with n_jobs (joblib's worker processes), on a Dask
cluster of worker processes, through joblib's "dask" backend, and on Ray
through its "ray" backend (slow: each starts its workers, 20-30 s).

Each search finds exactly what the same search finds in process with one
BLAS thread, and every fit and score ran in a worker whose BLAS and fastnn
ran one thread (a step of the pipeline checks and logs it)."""
import contextlib
import os

import numpy as np
import pytest
from conftest import needs

needs("sklearn")
distributed = needs("distributed")

import joblib  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fastnn.blas  # noqa: E402
from fastnn.sklearn import MLPClassifier  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]


@contextlib.contextmanager
def one_thread():
    """This process as each Dask worker runs: one BLAS thread, one fastnn thread."""
    before = fastnn.blas.get_num_threads()
    with threadpool_limits(1, user_api="blas"):
        fastnn.blas.set_num_threads(1)
        try:
            yield
        finally:
            fastnn.blas.set_num_threads(before)


def search(log, n_jobs=None, threads=1):
    def where_and_how_many_threads(X):
        # runs in every fit and score: notes the process, and fails the
        # search unless fastnn and the BLAS run `threads` threads there
        # (Dask's workers set OPENBLAS_NUM_THREADS=1; fastnn follows the BLAS)
        from fastnn.blas import blas_num_threads, get_num_threads

        if (blas_num_threads(), get_num_threads()) != (threads, threads):
            raise RuntimeError(f"BLAS threads {blas_num_threads()}, fastnn {get_num_threads()}")
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return X

    pipe = make_pipeline(FunctionTransformer(where_and_how_many_threads), StandardScaler(),
                         MLPClassifier(max_iter=30, random_state=0))
    grid = {"mlpclassifier__alpha": [1e-4, 1e-1],
            "mlpclassifier__hidden_layer_sizes": [(16,), (32,)]}
    return GridSearchCV(pipe, grid, cv=3, error_score="raise", n_jobs=n_jobs)


def pids(log):
    return [int(line) for line in log.read_text().split()]


def check_against_in_process(remote, here, there, workers=None):
    """remote (a search run in worker processes, logging to `there`) found
    what the in-process search (logging to `here`) found, and ran every fit
    and score in a worker: only the refit of the best candidate ran here."""
    with one_thread():       # the same computation as on the workers
        local = search(here).fit(X, y)
    assert set(pids(here)) == {os.getpid()}
    seen = pids(there)
    # 4 candidates x 3 folds, each a fit and a score, then the refit
    assert len(seen) == len(pids(here)) == 25 and seen.count(os.getpid()) == 1
    if workers is not None:
        assert set(seen) == workers | {os.getpid()}
    assert remote.best_params_ == local.best_params_
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_array_equal(remote.cv_results_[key], local.cv_results_[key])
    assert remote.best_score_ > 0.5          # chance: 1/3
    with one_thread():
        np.testing.assert_array_equal(remote.predict_proba(X), local.predict_proba(X))


X, y = make_classification(600, 20, n_informative=8, n_classes=3, random_state=0)


def test_grid_search_on_a_dask_cluster_equals_the_in_process_one(tmp_path):
    here, there = tmp_path / "here.log", tmp_path / "there.log"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        workers = set(client.run(os.getpid).values())
        with joblib.parallel_backend("dask"), one_thread():   # (the refit runs here)
            remote = search(there).fit(X, y)
    assert len(workers) == 2
    check_against_in_process(remote, here, there, workers)


def test_grid_search_on_ray_equals_the_in_process_one(tmp_path):
    ray = needs("ray")
    from ray.util.joblib import register_ray

    here, there = tmp_path / "here.log", tmp_path / "there.log"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        register_ray()
        # Ray's workers set OMP_NUM_THREADS=1, which OpenBLAS follows
        with joblib.parallel_backend("ray"), one_thread():
            remote = search(there).fit(X, y)
    finally:
        ray.shutdown()
    check_against_in_process(remote, here, there)


def test_grid_search_with_n_jobs_does_not_oversubscribe_the_cores(tmp_path):
    # joblib's default backend (loky) gives each of its worker processes its
    # share of the cores for the BLAS, and fastnn follows the BLAS: one
    # worker per core runs one thread, never workers x cores
    here, there = tmp_path / "here.log", tmp_path / "there.log"
    with one_thread():                                  # (the refit runs here)
        remote = search(there, n_jobs=len(os.sched_getaffinity(0))).fit(X, y)
    check_against_in_process(remote, here, there)
