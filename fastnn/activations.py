"""Activation functions, looked up by name.

Each entry carries the code the compiled kernels know it by and its NumPy
definition, which the reference backend runs. Derivatives are written in
terms of the stored activation a = f(z), so the pre-activations z need not
be kept: sigmoid' = a (1 - a), tanh' = 1 - a^2, relu' = [a > 0].
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from fastnn._typing import Array
from fastnn.exceptions import lookup


@dataclass(frozen=True)
class Activation:
    """An activation function and its derivative.

    Attributes
    ----------
    name : str
    code : int
        The number ``fastnn._core`` knows it by.
    fn : callable
        ``fn(z, slope) -> a``, NumPy, elementwise (softmax: row-wise).
    derivative : callable or None
        ``derivative(a, slope) -> f'(z)`` from the stored activation;
        None for softmax, whose Jacobian the loss applies.
    output_only : bool
        True if only the output layer may use it.
    """

    name: str
    code: int
    fn: Callable
    derivative: Optional[Callable]
    output_only: bool = False

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


def _identity(z: Array, slope: float) -> Array:
    return z.copy()


def _sigmoid(z: Array, slope: float) -> Array:
    # exp(-z) overflows to inf for very negative z, giving exactly 0: fine.
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-z))


def _tanh(z: Array, slope: float) -> Array:
    return np.tanh(z)


def _relu(z: Array, slope: float) -> Array:
    return np.maximum(z, 0)


def _leaky_relu(z: Array, slope: float) -> Array:
    return np.where(z > 0, z, z * z.dtype.type(slope))


def _softmax(z: Array, slope: float) -> Array:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


ACTIVATIONS = {
    a.name: a
    for a in [
        Activation("identity", 0, _identity, lambda a, s: np.ones_like(a)),
        Activation("sigmoid", 1, _sigmoid, lambda a, s: a * (1 - a)),
        Activation("tanh", 2, _tanh, lambda a, s: 1 - a * a),
        Activation("relu", 3, _relu, lambda a, s: (a > 0).astype(a.dtype)),
        # slope >= 0 keeps the sign of z, so a > 0 exactly when z > 0
        Activation("leaky_relu", 4, _leaky_relu,
                   lambda a, s: np.where(a > 0, a.dtype.type(1), a.dtype.type(s))),
        Activation("softmax", 5, _softmax, None, output_only=True),
    ]
}

BY_CODE = {a.code: a for a in ACTIVATIONS.values()}


def get_activation(name: str) -> Activation:
    """The registered activation called `name`; ConfigError lists the valid ones."""
    return lookup(ACTIVATIONS, "activation", name)
