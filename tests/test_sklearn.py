"""fastnn.sklearn: scikit-learn's own estimator checks, and the estimators in
pipelines, searches and everyday use."""
import pickle
import sys
import unittest

import numpy as np
import pytest
from conftest import needs

sklearn = needs("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import (make_classification, make_multilabel_classification,  # noqa: E402
                              make_regression)
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastnn.schedules import Step  # noqa: E402
from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Short max_iter is on purpose here; the ConvergenceWarning it causes is
# tested once, in test_convergence_warning_as_scikit_learn_gives_it.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# The checks expected to fail, each with its reason: none. The checks give
# float64 data, which the estimators compute in, as scikit-learn's MLP does,
# so the comparisons at rtol 1e-7 (sample-weight equivalence, methods on
# subsets) hold; test_sklearn_parity.py repeats the sample-weight check in
# float32 at float32's precision, and shows the one documented exception:
# shuffled mini-batches, where a repeated row lands in other batches than
# the weighted one.
EXPECTED_FAILURES: dict[str, str] = {}


# Checks scikit-learn skips itself, and the reason it gives: array-API input
# needs SciPy's experimental SCIPY_ARRAY_API mode (fastnn's kernels take
# NumPy arrays), and an MLP has no decision_function.
NOT_APPLICABLE = {
    "check_array_api_input": "SCIPY_ARRAY_API is not set",
    "check_classifiers_multilabel_output_format_decision_function":
        "does not have a decision_function method",
}


@parametrize_with_checks(
    [MLPClassifier(max_iter=100, random_state=0), MLPRegressor(max_iter=100, random_state=0)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILURES, xfail_strict=True)
def test_scikit_learn_estimator_checks(estimator, check):
    try:
        check(estimator)
    except unittest.SkipTest as exc:
        # scikit-learn skips these itself; they pass here only for the known reason
        name = getattr(check, "func", check).__name__
        assert name in NOT_APPLICABLE and NOT_APPLICABLE[name] in str(exc), (name, str(exc))


def blobs(n=300, classes=3, seed=0, separation=2.0):
    return make_classification(n, 10, n_informative=6, n_classes=classes, random_state=seed,
                               class_sep=separation)


def test_classifier_kinds():
    X, y = blobs()
    multi = MLPClassifier(max_iter=150, random_state=0).fit(X, y)
    assert multi.score(X, y) > 0.9 and multi.network_.output == "softmax"
    assert multi.predict_proba(X).shape == (300, 3)
    np.testing.assert_allclose(multi.predict_proba(X).sum(axis=1), 1, rtol=1e-5)
    Xb, yb = blobs(classes=2)
    labels = np.where(yb == 1, "spam", "ham")
    binary = MLPClassifier(max_iter=150, random_state=0).fit(Xb, labels)
    assert binary.network_.sizes[-1] == 1 and set(binary.predict(Xb)) <= {"spam", "ham"}
    assert list(binary.classes_) == ["ham", "spam"] and binary.score(Xb, labels) > 0.9
    Xm, Ym = make_multilabel_classification(300, 10, n_classes=4, random_state=0)
    multilabel = MLPClassifier(max_iter=200, random_state=0).fit(Xm, Ym)
    assert multilabel.predict(Xm).shape == (300, 4)
    assert (multilabel.predict(Xm) == Ym).mean() > 0.8


def test_regressor_single_and_multi_output():
    X, y = make_regression(300, 8, n_targets=2, noise=0.1, random_state=0)
    multi = MLPRegressor(max_iter=300, learning_rate_init=0.01, random_state=0).fit(X, y / 100)
    assert multi.predict(X).shape == (300, 2) and multi.score(X, y / 100) > 0.95
    single = MLPRegressor(max_iter=300, learning_rate_init=0.01, random_state=0).fit(X, y[:, 0] / 100)
    assert single.predict(X).shape == (300,)


def test_mnist_grid_search_in_a_pipeline_picks_a_model(mnist):
    (X, y), (X_test, y_test) = mnist
    pipe = make_pipeline(FunctionTransformer(lambda Z: Z / 255.0),
                         MLPClassifier(max_iter=8, random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(32,), (64,)],
                                 "mlpclassifier__learning_rate_init": [1e-3, 3e-3]}, cv=2)
    search.fit(X[:3000], y[:3000])
    assert set(search.best_params_) == {"mlpclassifier__hidden_layer_sizes",
                                        "mlpclassifier__learning_rate_init"}
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert search.best_estimator_.score(X_test[:2000], y_test[:2000]) > 0.85


def test_cross_val_score_clone_and_pickle():
    from sklearn.neural_network import MLPClassifier as ScikitMLP

    X, y = blobs(separation=1.0)
    est = MLPClassifier(random_state=0)
    scores = cross_val_score(est, X, y, cv=3)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        theirs = cross_val_score(ScikitMLP(random_state=0), X, y, cv=3)
    # as good as scikit-learn's own MLP with the same defaults (both ~0.75 here)
    assert len(scores) == 3 and scores.mean() > theirs.mean() - 0.05
    copy = clone(est)
    assert copy.get_params() == est.get_params() and not hasattr(copy, "network_")
    est.fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))


def test_same_random_state_same_model(one_core):
    # one_core: batch_size "auto" is 200 rows, on the BLAS
    X, y = blobs()
    a = MLPClassifier(max_iter=20, random_state=3).fit(X, y)
    b = MLPClassifier(max_iter=20, random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def test_feature_names_from_a_dataframe():
    pd = needs("pandas")
    X, y = blobs()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(10)])
    est = MLPClassifier(max_iter=20, random_state=0).fit(frame, y)
    assert list(est.feature_names_in_) == list(frame.columns) and est.n_features_in_ == 10
    with pytest.warns(UserWarning, match="feature names"):
        est.predict(X)


def test_early_stopping_on_validation_loss_keeps_the_best_weights():
    X, y = blobs(n=200)
    est = MLPClassifier(hidden_layer_sizes=(200,), max_iter=300, learning_rate_init=0.01,
                        early_stopping=True, n_iter_no_change=5, tol=0, random_state=0)
    est.fit(X, y)
    assert est.n_iter_ < 300
    assert len(est.validation_loss_curve_) == len(est.validation_scores_) == est.n_iter_
    best = int(np.argmin(est.validation_loss_curve_))
    # scikit-learn stops when the count exceeds n_iter_no_change: 6 epochs after the best
    assert est.n_iter_ == best + 1 + 5 + 1
    assert est.best_validation_loss_ == est.validation_loss_curve_[best]
    by_score = clone(est).set_params(early_stopping_metric="score").fit(X, y)
    assert by_score.best_validation_score_ == max(by_score.validation_scores_)


def test_convergence_warning_as_scikit_learn_gives_it():
    X, y = blobs()
    with pytest.warns(sklearn.exceptions.ConvergenceWarning, match=r"maximum iterations \(2\)"):
        MLPClassifier(max_iter=2, random_state=0).fit(X, y)


def test_stopping_on_training_loss_with_tol():
    X, y = blobs()
    est = MLPClassifier(max_iter=500, tol=1e-2, n_iter_no_change=3, random_state=0).fit(X, y)
    assert est.n_iter_ < 500 and len(est.loss_curve_) == est.n_iter_
    assert est.best_loss_ == min(est.loss_curve_)


def test_loss_curve_includes_the_l2_penalty_as_scikit_learn_does():
    # scikit-learn's loss adds alpha/(2m) sum ||W||^2 to each batch of m rows
    # (200 here, "auto"), at the weights the epoch ends with in fastnn
    X, y = blobs()
    est = MLPClassifier(max_iter=1, alpha=10.0, random_state=0).fit(X, y)
    penalty = 10.0 / (2 * 200) * sum(float(np.sum(W.astype(np.float64) ** 2))
                                      for W in est.coefs_)
    data_loss = est.network_.history["loss"][0]
    assert est.loss_curve_[0] == pytest.approx(data_loss + penalty, rel=1e-9)
    assert penalty > 0.1


def test_lr_schedule_object_is_never_changed_by_fit(one_core):
    X, y = blobs()
    schedule = Step(every=1, factor=0.5)
    est = MLPClassifier(max_iter=3, lr_schedule=schedule, learning_rate_init=0.01,
                        random_state=0).fit(X, y)
    assert not schedule.started and est.network_.history["lr"] == [0.01, 0.005, 0.0025]
    again = clone(est).fit(X, y)            # a clone and a second fit start afresh
    np.testing.assert_array_equal(again.coefs_[0], est.coefs_[0])
    est.fit(X, y)
    np.testing.assert_array_equal(again.coefs_[0], est.coefs_[0])
    # partial_fit goes on where the last call left the schedule, as
    # scikit-learn's optimizer does between partial_fit calls
    inc = MLPClassifier(lr_schedule=schedule, learning_rate_init=0.01, random_state=0)
    lrs = [inc.partial_fit(X, y, classes=[0, 1, 2]).network_.history["lr"][0]
           for _ in range(3)]
    assert lrs == [0.01, 0.005, 0.0025] and not schedule.started


def test_partial_fit_and_warm_start():
    X, y = blobs()
    est = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        est.partial_fit(X, y)
    for _ in range(30):
        est.partial_fit(X, y, classes=[0, 1, 2])
    assert est.n_iter_ == 30 and est.score(X, y) > 0.85
    warm = MLPClassifier(max_iter=5, warm_start=True, random_state=0, tol=0)
    warm.fit(X, y)
    first = warm.coefs_[0].copy()
    warm.fit(X, y)
    # as in scikit-learn, n_iter_ counts this fit's epochs; the loss curve goes on
    assert warm.n_iter_ == 5 and len(warm.loss_curve_) == 10
    assert not np.array_equal(first, warm.coefs_[0])


def test_sample_and_class_weights():
    X, y = blobs()
    a = MLPClassifier(max_iter=10, random_state=0).fit(X, y, sample_weight=np.where(y == 2, 3.0, 1.0))
    b = MLPClassifier(max_iter=10, random_state=0, class_weight={2: 3.0}).fit(X, y)
    np.testing.assert_allclose(a.coefs_[0], b.coefs_[0], rtol=1e-5)
    balanced = MLPClassifier(max_iter=10, random_state=0, class_weight="balanced").fit(X, y)
    assert balanced.score(X, y) > 0.8
    with pytest.raises(ValueError, match="class_weight has label 7"):
        MLPClassifier(max_iter=2, class_weight={7: 1.0}).fit(X, y)


def test_what_scikit_learns_mlp_lacks():
    X, y = blobs()
    seen = []
    est = MLPClassifier(hidden_layer_sizes=(32, 16), activation=["leaky_relu", "tanh"],
                        optimizer="nesterov", learning_rate_init=0.05, dropout=0.1,
                        lr_schedule="step:every=5,factor=0.5", dtype="float32", init="he",
                        callbacks=[lambda est, epoch, metrics: seen.append(epoch) or epoch < 7],
                        max_iter=50, random_state=0)
    est.fit(X, y)
    assert seen == list(range(1, 8)) and est.n_iter_ == 7
    assert est.network_.activations == ("leaky_relu", "tanh", "softmax")
    # dtype fixes the dtype whatever the input's (float64 here)
    assert est.network_.dtype == np.float32 and est.coefs_[0].dtype == np.float32
    rprop = MLPClassifier(optimizer="rprop", learning_rate_init=0.01, max_iter=40,
                          random_state=0).fit(X, y)
    assert rprop.score(X, y) > 0.8
    assert MLPClassifier(activation="logistic", max_iter=5).fit(X, y).out_activation_ == "softmax"


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_computes_in_the_inputs_dtype_as_scikit_learn_does(Estimator):
    from sklearn.neural_network import MLPClassifier as ScikitMLP

    X, y = blobs(n=60)
    for given, computed in [(np.float32, np.float32), (np.float64, np.float64),
                            (np.int64, np.float64)]:
        Xg = (10 * X).astype(given)
        est = Estimator(max_iter=2, random_state=0).fit(Xg, y)
        assert est.network_.dtype == computed and est.coefs_[0].dtype == computed, given
        est.partial_fit(Xg, y)                    # carries on in the same dtype
        assert est.network_.dtype == computed
        if Estimator is MLPClassifier:
            theirs = ScikitMLP(max_iter=2, random_state=0).fit(Xg, y)
            assert theirs.coefs_[0].dtype == computed, given      # scikit-learn's rule
        fixed = Estimator(max_iter=2, random_state=0, dtype="float64").fit(Xg, y)
        assert fixed.network_.dtype == np.float64


def test_bad_parameters_raise_value_errors():
    X, y = blobs()
    for params, message in [(dict(activation="relux"), "Unknown activation 'relux'"),
                            (dict(hidden_layer_sizes=(0,)), "positive integers"),
                            (dict(max_iter=0), "max_iter must be"),
                            (dict(optimizer="adagrad"), "Unknown optimizer 'adagrad'"),
                            (dict(validation_fraction=1.5), "validation_fraction")]:
        with pytest.raises(ValueError, match=message):
            MLPClassifier(**params).fit(X, y)


def test_pipeline_with_a_scaler_on_regression():
    X, y = make_regression(200, 5, noise=0.1, random_state=1)
    model = make_pipeline(StandardScaler(), MLPRegressor(max_iter=200, learning_rate_init=0.01,
                                                         random_state=0))
    assert model.fit(X, y / 50).score(X, y / 50) > 0.9


def test_import_without_scikit_learn_says_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "fastnn.sklearn", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'fastnn\[sklearn\]'"):
        import fastnn.sklearn  # noqa: F401
