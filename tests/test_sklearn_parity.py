"""fastnn.sklearn against scikit-learn's own MLP: each shared parameter has
scikit-learn's effect.

Both estimators start from the same weights (scikit-learn's Glorot draw,
copied into fastnn's network), visit the rows in order (shuffle=False) and
compute in float64, so every step is the same computation: the fitted
weights, the loss curves and the epoch training stops at must agree to
rounding. Any parameter that meant something else (alpha in Nielsen's
convention, "sgd" without its momentum, stopping an epoch early, weights
normalised by the row count) fails here.
"""
import warnings

import numpy as np
import pytest
from conftest import needs

needs("sklearn")

from sklearn import neural_network  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils.estimator_checks import \
    check_sample_weight_equivalence_on_dense_data  # noqa: E402

from fastnn import sklearn as fastnn_sklearn  # noqa: E402

RTOL = 1e-9


def data(kind, n=60, n_features=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    if kind == "regressor":
        return X, np.tanh(X @ rng.normal(size=n_features)) + 0.1 * rng.normal(size=n)
    classes = 2 if kind == "binary" else 3
    return X, np.argmax(X[:, :classes] + 0.5 * rng.normal(size=(n, classes)), axis=1)


def scikit_learn_init(sizes, activation, random_state):
    """The weights scikit-learn's MLP starts from (its _init_coef, in order)."""
    rng = np.random.RandomState(random_state)
    factor = 2.0 if activation == "logistic" else 6.0
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        layers.append((rng.uniform(-bound, bound, (fan_in, fan_out)),
                       rng.uniform(-bound, bound, fan_out)))
    return layers


def twins(kind, **params):
    """(fastnn's estimator, scikit-learn's), configured alike, fastnn's
    network starting from scikit-learn's initial weights. alpha is 0 unless
    given: its penalty's timing makes the loss curves differ (see below)."""
    params = {"random_state": 0, "shuffle": False, "alpha": 0.0, **params}
    theirs_params = dict(params)
    if "optimizer" in params:
        theirs_params["solver"] = theirs_params.pop("optimizer")
    name = "MLPRegressor" if kind == "regressor" else "MLPClassifier"
    theirs = getattr(neural_network, name)(**theirs_params)
    # float64 data: computed in float64, as scikit-learn computes it
    ours = getattr(fastnn_sklearn, name)(**params)
    activation = params.get("activation", "relu")

    def new_network(*args):
        net = type(ours)._new_network(ours, *args)
        assert net.dtype == np.float64
        layers = scikit_learn_init(net.sizes, activation, params["random_state"])
        net.weights = [W for W, _ in layers]
        net.biases = [b for _, b in layers]
        return net

    ours._new_network = new_network
    return ours, theirs


def assert_same_fit(ours, theirs, rtol=RTOL, loss_rtol=None):
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=loss_rtol or rtol)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def fit_both(ours, theirs, X, y, **fit_params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y, **fit_params)
        theirs.fit(X, y, **fit_params)


def test_the_same_initial_weights_give_the_same_predictions():
    X, y = data("multiclass")
    ours, theirs = twins("multiclass", hidden_layer_sizes=(7,), max_iter=1,
                         learning_rate_init=1e-300)
    fit_both(ours, theirs, X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-12)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regressor"])
@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_alpha_is_scikit_learns_per_batch_l2(kind, alpha):
    # batches of 20 rows: Nielsen's l2/n would be 3x weaker than alpha/20
    X, y = data(kind)
    ours, theirs = twins(kind, hidden_layer_sizes=(7, 4), optimizer="sgd", momentum=0.0,
                         alpha=alpha, batch_size=20, learning_rate_init=0.05, max_iter=15,
                         n_iter_no_change=100)
    fit_both(ours, theirs, X, y)
    # the weights agree to rounding; the loss curves to 3% at alpha=3: each
    # epoch's penalty is that of the weights at its end in fastnn, the mean
    # over the epoch's batches in scikit-learn (the kernel runs a whole epoch)
    assert_same_fit(ours, theirs, loss_rtol=3e-2 if alpha else RTOL)


@pytest.mark.parametrize("momentum, nesterovs_momentum", [(0.9, True), (0.9, False), (0.5, True),
                                                         (0.0, True)])
def test_sgd_is_scikit_learns_sgd_with_its_momentum(momentum, nesterovs_momentum):
    X, y = data("multiclass")
    ours, theirs = twins("multiclass", hidden_layer_sizes=(7,), optimizer="sgd",
                         momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         batch_size=15, learning_rate_init=0.05, max_iter=12,
                         n_iter_no_change=100)
    fit_both(ours, theirs, X, y)
    assert_same_fit(ours, theirs)


@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu", "identity"])
def test_adam_and_activations(activation):
    # epsilon is PyTorch's here (added to the bias-corrected sqrt(v)), while
    # scikit-learn adds it before the correction: the same epsilon weighs
    # 1/sqrt(1 - beta_2^t) times more in fastnn. A tiny epsilon makes the
    # two the same computation, so that every other part is compared exactly.
    X, y = data("multiclass")
    ours, theirs = twins("multiclass", hidden_layer_sizes=(6,), activation=activation,
                         optimizer="adam", beta_1=0.8, beta_2=0.99, epsilon=1e-30,
                         batch_size=32, learning_rate_init=0.01, max_iter=10,
                         n_iter_no_change=100)
    fit_both(ours, theirs, X, y)
    assert_same_fit(ours, theirs)


@pytest.mark.parametrize("kind", ["multiclass", "regressor"])
def test_n_iter_no_change_and_tol_stop_at_scikit_learns_epoch(kind):
    X, y = data(kind)
    ours, theirs = twins(kind, hidden_layer_sizes=(7,), optimizer="sgd", batch_size=20,
                         learning_rate_init=0.05, max_iter=200, tol=1e-2, n_iter_no_change=4)
    fit_both(ours, theirs, X, y)
    assert 5 < theirs.n_iter_ < 200     # stopped by the rule, not by max_iter
    assert_same_fit(ours, theirs)


def test_max_iter_warns_as_scikit_learn_does():
    X, y = data("regressor")
    ours, theirs = twins("regressor", hidden_layer_sizes=(7,), max_iter=3, optimizer="sgd")
    for est in (ours, theirs):
        with pytest.warns(ConvergenceWarning, match=r"(?i)maximum iterations \(3\)"):
            est.fit(X, y)
    assert_same_fit(ours, theirs)


@pytest.mark.parametrize("kind", ["multiclass", "regressor"])
def test_sample_weight_normalised_by_its_sum_as_scikit_learn(kind):
    X, y = data(kind)
    w = np.random.default_rng(1).integers(0, 4, len(X)).astype(float)
    # a full batch: sum(w g) / sum(w), alpha / sum(w), exactly as scikit-learn
    ours, theirs = twins(kind, hidden_layer_sizes=(7,), optimizer="sgd", alpha=2.0,
                         batch_size=len(X), learning_rate_init=0.1, max_iter=15,
                         n_iter_no_change=100)
    fit_both(ours, theirs, X, y, sample_weight=w)
    assert_same_fit(ours, theirs, loss_rtol=3e-2)     # the penalty's timing: see above


def test_warm_start_and_partial_fit_carry_over_what_scikit_learn_does():
    X, y = data("multiclass")
    # warm_start: a second fit keeps the weights, restarts the optimizer
    ours, theirs = twins("multiclass", hidden_layer_sizes=(7,), warm_start=True, epsilon=1e-30,
                         batch_size=20, max_iter=4, learning_rate_init=0.01)
    fit_both(ours, theirs, X, y)
    fit_both(ours, theirs, X, y)
    assert len(theirs.loss_curve_) == 8
    assert_same_fit(ours, theirs)
    # partial_fit: one epoch a call, the optimizer's state kept between calls
    ours, theirs = twins("multiclass", hidden_layer_sizes=(7,), optimizer="sgd",
                         batch_size=20, learning_rate_init=0.05)
    for _ in range(3):
        ours.partial_fit(X, y, classes=[0, 1, 2])
        theirs.partial_fit(X, y, classes=[0, 1, 2])
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=RTOL)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL)


def test_early_stopping_stops_by_scikit_learns_rule():
    # the validation split differs (each draws its own), so the rule is
    # checked on each: more than n_iter_no_change epochs after the best
    # validation score (tol=0), and the best epoch's weights are kept
    X, y = data("multiclass", n=200)
    params = dict(hidden_layer_sizes=(16,), early_stopping=True, validation_fraction=0.2,
                  n_iter_no_change=3, tol=0.0, learning_rate_init=0.05, max_iter=300)
    ours = fastnn_sklearn.MLPClassifier(random_state=0, early_stopping_metric="score",
                                        dtype="float64", **params)
    theirs = neural_network.MLPClassifier(random_state=0, **params)
    fit_both(ours, theirs, X, y)
    for est in (ours, theirs):
        scores = est.validation_scores_
        last_best = len(scores) - 1 - int(np.argmax(scores[::-1]))
        assert est.n_iter_ < 300 and est.n_iter_ == last_best + 1 + 3 + 1, scores
        assert est.best_validation_score_ == max(scores)


@pytest.mark.parametrize("name", ["MLPClassifier", "MLPRegressor"])
def test_sample_weight_equivalence_with_a_full_batch(name):
    # scikit-learn's own check (zero/integer weights against removed/repeated
    # rows): on its 15 rows, batch_size="auto" is the whole set
    est = getattr(fastnn_sklearn, name)(max_iter=100, random_state=0, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_sample_weight_equivalence_on_dense_data(name, est)


def test_sample_weight_equivalence_fails_only_with_shuffled_mini_batches():
    # the documented exception: a repeated row lands in other mini-batches
    # than the single weighted row, so the steps differ (as for scikit-learn)
    est = fastnn_sklearn.MLPClassifier(max_iter=100, random_state=0, dtype="float64",
                                       batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(AssertionError, match="not equivalent"):
            check_sample_weight_equivalence_on_dense_data("MLPClassifier", est)


@pytest.mark.parametrize("name", ["MLPClassifier", "MLPRegressor"])
def test_sample_weight_equivalence_in_float32_to_its_precision(name):
    # the check's data (15 rows, integer weights 0..4 against repeated rows),
    # in float32 (float32 input computes in float32), compared at float32's precision
    rng = np.random.RandomState(42)
    X = rng.rand(15, 30).astype(np.float32)
    y = rng.randint(0, 3, size=15)
    w = rng.randint(0, 5, size=15)
    est = getattr(fastnn_sklearn, name)(max_iter=100, random_state=0)
    assert clone(est).fit(X, y).network_.dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = clone(est).fit(X, y, sample_weight=w)
        repeated = clone(est).fit(X.repeat(w, axis=0), y.repeat(w))
    method = "predict_proba" if name == "MLPClassifier" else "predict"
    np.testing.assert_allclose(getattr(weighted, method)(X), getattr(repeated, method)(X),
                               rtol=1e-4, atol=1e-6)
