"""Weight initialisations, looked up by name.

Each draws one layer's float64 (W, b) from its weight shape and fans (a
dense layer (I, O) has fan-in I and fan-out O; a convolution (kh, kw, C, F)
has fan-in kh*kw*C and fan-out kh*kw*F, as in PyTorch and Keras); the
network then casts them to its dtype, so the same seed gives the same
starting point in float32 and float64. Weights are drawn before biases,
layer by layer, so a dense stack starts where it always has.
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fastnn._typing import Array
from fastnn.exceptions import lookup


@dataclass(frozen=True)
class Initializer:
    """A weight initialisation.

    Attributes
    ----------
    name : str
    draw : callable
        ``draw(w_shape, fan_in, fan_out, rng) -> (W, b)``, float64, b of
        shape ``(w_shape[-1],)``.
    """

    name: str
    draw: Callable[[tuple[int, ...], int, int, np.random.Generator], tuple[Array, Array]]

    def __call__(self, sizes: Sequence[int],
                 rng: np.random.Generator) -> list[tuple[Array, Array]]:
        """(W, b) of each layer of the dense stack `sizes` (W of shape (I, O))."""
        return [self.draw((i, o), i, o, rng) for i, o in zip(sizes[:-1], sizes[1:])]

    def __repr__(self) -> str:
        return f"Initializer({self.name!r})"


def _nielsen(shape: tuple[int, ...], fan_in: int, fan_out: int,
             rng: np.random.Generator) -> tuple[Array, Array]:
    return rng.standard_normal(shape) / np.sqrt(fan_in), rng.standard_normal(shape[-1])


def _large(shape: tuple[int, ...], fan_in: int, fan_out: int,
           rng: np.random.Generator) -> tuple[Array, Array]:
    return rng.standard_normal(shape), rng.standard_normal(shape[-1])


def _xavier(shape: tuple[int, ...], fan_in: int, fan_out: int,
            rng: np.random.Generator) -> tuple[Array, Array]:
    return rng.uniform(-1, 1, shape) * np.sqrt(6.0 / (fan_in + fan_out)), np.zeros(shape[-1])


def _he(shape: tuple[int, ...], fan_in: int, fan_out: int,
        rng: np.random.Generator) -> tuple[Array, Array]:
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in), np.zeros(shape[-1])


INITIALIZERS: dict[str, Initializer] = {i.name: i for i in [
    # W ~ N(0, 1/fan_in), b ~ N(0, 1): Nielsen's network2 default
    Initializer("nielsen", _nielsen),
    # W ~ N(0, 1), b ~ N(0, 1): Nielsen's chapter-1 network.py
    Initializer("large", _large),
    # W ~ U(-r, r), r = sqrt(6 / (fan_in + fan_out)) (Glorot uniform), b = 0
    Initializer("xavier", _xavier),
    # W ~ N(0, 2/fan_in) (Kaiming normal, for ReLU layers), b = 0
    Initializer("he", _he),
]}


def get_initializer(name: str) -> Initializer:
    """The registered initialisation called `name`; ConfigError lists the valid ones."""
    return lookup(INITIALIZERS, "init", name)
