"""Loss functions (costs), looked up by name.

Like Nielsen's cost classes, each loss has ``fn`` (the cost of each sample)
and ``delta`` (the error of the output layer, dC_x/dz^L). The compiled
kernels know each loss by its code and compute the same two things fused
in one pass (``fastnn._core.output_delta``).
"""
from dataclasses import dataclass
from typing import Callable, FrozenSet, Optional

import numpy as np

from fastnn._typing import Array
from fastnn.activations import ACTIVATIONS, Activation
from fastnn.exceptions import ConfigError, lookup


def _log(a: Array) -> Array:
    # log clipped at the smallest normal number: a saturated unit costs a
    # large finite loss, never inf or nan (its delta a - y is unaffected).
    return np.log(np.maximum(a, np.finfo(a.dtype).tiny))


def _mse_fn(a: Array, y: Array, output: Activation) -> Array:
    """C_x = 1/2 ||a - y||^2 (Nielsen's quadratic cost, before averaging)."""
    d = a.astype(np.float64) - y
    return 0.5 * np.einsum("ij,ij->i", d, d)


def _mse_delta(a: Array, y: Array, output: Activation, slope: float) -> Array:
    diff = a - y
    if output.name == "softmax":
        # the softmax Jacobian: delta_j = a_j ((a - y)_j - sum_k (a - y)_k a_k)
        return a * (diff - (diff * a).sum(axis=1, keepdims=True))
    assert output.derivative is not None  # softmax, the one without, is handled above
    return diff * output.derivative(a, slope)


def _ce_fn(a: Array, y: Array, output: Activation) -> Array:
    """Binary cross-entropy on sigmoid outputs, categorical on softmax."""
    a = a.astype(np.float64)
    if output.name == "sigmoid":
        return -(y * _log(a) + (1 - y) * _log(1 - a)).sum(axis=1)
    return -np.where(y != 0, y * _log(a), 0).sum(axis=1)


def _ce_delta(a: Array, y: Array, output: Activation, slope: float) -> Array:
    # With a sigmoid output (binary CE) and with a softmax output
    # (categorical CE) the output layer's delta is exactly a - y.
    return a - y


@dataclass(frozen=True)
class Loss:
    """A cost function.

    Attributes
    ----------
    name : str
    code : int
        The number ``fastnn._core`` knows it by.
    fn : callable
        ``fn(a, y, output) -> (n,) float64``: the cost of each sample.
    delta : callable
        ``delta(a, y, output, slope) -> dC_x/dz^L`` for each sample.
    outputs : frozenset of str or None
        The output activations it may be paired with (None: any).
    """

    name: str
    code: int
    fn: Callable
    delta: Callable
    outputs: Optional[FrozenSet[str]] = None

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"

    def check_output(self, output: str) -> None:
        """Raise ConfigError if this loss cannot follow that output activation."""
        if self.outputs is not None and output not in self.outputs:
            raise ConfigError(
                f"loss {self.name!r} needs a {' or '.join(sorted(self.outputs))} output "
                f"layer, not {output!r}; use output='softmax' (classes) or 'sigmoid' "
                f"(independent labels), or loss='mse'"
            )


LOSSES = {
    loss.name: loss
    for loss in [
        Loss("mse", 0, _mse_fn, _mse_delta),
        Loss("cross_entropy", 1, _ce_fn, _ce_delta, frozenset({"sigmoid", "softmax"})),
    ]
}

BY_CODE = {loss.code: loss for loss in LOSSES.values()}

assert all(o in ACTIVATIONS for loss in LOSSES.values() for o in (loss.outputs or ()))


def get_loss(name: str) -> Loss:
    """The registered loss called `name`; ConfigError lists the valid ones."""
    return lookup(LOSSES, "loss", name)
