"""Backpropagation against central finite differences (float64), every
activation x output x loss the library allows, both backends."""
import numpy as np
import pytest
from conftest import one_hot

from fastnn import Network

OUTPUT_LOSS = [("sigmoid", "mse"), ("tanh", "mse"), ("relu", "mse"), ("leaky_relu", "mse"),
               ("identity", "mse"), ("softmax", "mse"), ("sigmoid", "cross_entropy"),
               ("softmax", "cross_entropy")]
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]


def problem(output, loss, seed=0, n=6, sizes=(5, 4, 3, 3)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0]))
    if output == "softmax":
        Y = one_hot(rng.integers(0, sizes[-1], n), sizes[-1])
    elif loss == "cross_entropy":
        Y = rng.uniform(0, 1, (n, sizes[-1]))    # soft targets for binary CE
    else:
        Y = rng.normal(size=(n, sizes[-1]))
    return X, Y


def numerical_gradient(net, X, Y, h=1e-6):
    """dC/dp by central differences, C the mean loss."""
    grads = []
    for p in list(net.weights) + list(net.biases):
        g = np.empty_like(p)
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = net.evaluate(X, Y)["loss"]
            flat[i] = old - h
            down = net.evaluate(X, Y)["loss"]
            flat[i] = old
            gflat[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def relative_error(a, b):
    a, b = np.concatenate([x.ravel() for x in a]), np.concatenate([x.ravel() for x in b])
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("output, loss", OUTPUT_LOSS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_gradient_matches_finite_differences(hidden, output, loss, backend):
    X, Y = problem(output, loss)
    net = Network([5, 4, 3, 3], activation=hidden, output=output, loss=loss, dtype="float64",
                  seed=7, slope=0.1, backend=backend)
    g = net.gradient(X, Y)
    assert g.loss == pytest.approx(net.evaluate(X, Y)["loss"], rel=1e-13)
    numeric = numerical_gradient(net, X, Y)
    assert relative_error(g.weights + g.biases, numeric) < 1e-6
    # and entry by entry, wherever the gradient is not tiny
    for got, want in zip(g.weights + g.biases, numeric):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)


def test_gradient_check_detects_a_wrong_gradient():
    # the check above is not vacuous: a slightly wrong gradient fails it
    X, Y = problem("sigmoid", "mse")
    net = Network([5, 4, 3, 3], dtype="float64", seed=7)
    g = net.gradient(X, Y)
    wrong = [w.copy() for w in g.weights + g.biases]
    wrong[0][0, 0] *= 1.01
    assert relative_error(wrong, numerical_gradient(net, X, Y)) > 1e-6


def test_sgd_step_is_minus_lr_times_gradient():
    X, Y = problem("softmax", "cross_entropy", n=8)
    net = Network([5, 4, 3, 3], activation="tanh", output="softmax", loss="cross_entropy",
                  dtype="float64", seed=1)
    g = net.gradient(X, Y)
    before = [p.copy() for p in net.weights + net.biases]
    net.fit(X, Y, epochs=1, batch_size=8, lr=0.3, shuffle=False)
    for p, p0, d in zip(net.weights + net.biases, before, g.weights + g.biases):
        np.testing.assert_allclose(p, p0 - 0.3 * d, rtol=1e-13, atol=1e-15)
