"""Weight initialisations, looked up by name.

Each takes the layer sizes and a NumPy Generator and returns float64
(W, b) pairs, which the network then casts to its dtype: the same seed
gives the same starting point in float32 and float64.
"""
from collections.abc import Callable, Sequence

import numpy as np

from fastnn._typing import Array

from fastnn.exceptions import lookup


def nielsen(sizes: Sequence[int], rng: np.random.Generator) -> list[tuple[Array, Array]]:
    """W ~ N(0, 1/n_in), b ~ N(0, 1): Nielsen's network2 default."""
    return [(rng.standard_normal((i, o)) / np.sqrt(i), rng.standard_normal(o))
            for i, o in zip(sizes[:-1], sizes[1:])]


def large(sizes: Sequence[int], rng: np.random.Generator) -> list[tuple[Array, Array]]:
    """W ~ N(0, 1), b ~ N(0, 1): Nielsen's chapter-1 network.py."""
    return [(rng.standard_normal((i, o)), rng.standard_normal(o))
            for i, o in zip(sizes[:-1], sizes[1:])]


def xavier(sizes: Sequence[int], rng: np.random.Generator) -> list[tuple[Array, Array]]:
    """W ~ U(-r, r), r = sqrt(6 / (n_in + n_out)) (Glorot uniform), b = 0."""
    return [(rng.uniform(-1, 1, (i, o)) * np.sqrt(6.0 / (i + o)), np.zeros(o))
            for i, o in zip(sizes[:-1], sizes[1:])]


def he(sizes: Sequence[int], rng: np.random.Generator) -> list[tuple[Array, Array]]:
    """W ~ N(0, 2/n_in) (Kaiming normal, for ReLU layers), b = 0."""
    return [(rng.standard_normal((i, o)) * np.sqrt(2.0 / i), np.zeros(o))
            for i, o in zip(sizes[:-1], sizes[1:])]


#: ``init(sizes, rng)`` -> [(W, b) per layer], float64.
Initializer = Callable[[Sequence[int], np.random.Generator], list[tuple[Array, Array]]]

INITIALIZERS: dict[str, Initializer] = {f.__name__: f for f in (nielsen, large, xavier, he)}


def get_initializer(name: str) -> Initializer:
    """The registered initialisation called `name`; ConfigError lists the valid ones."""
    return lookup(INITIALIZERS, "init", name)
