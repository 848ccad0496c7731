"""Optimizers, looked up by name.

Every optimizer takes the mean gradient of a mini-batch (with the L1/L2
penalty gradients added) and updates the flat parameter vector, keeping
its state in preallocated rows of the same length. The compiled kernel
(``fastnn._core.optimizer_step``) and the NumPy functions here implement
the same rules as ``torch.optim.SGD`` (dampening 0), ``torch.optim.Adam``,
``torch.optim.AdamW`` and ``torch.optim.Rprop``.

AdamW's decoupled weight decay shrinks every parameter, biases included,
as ``torch.optim.AdamW(model.parameters())`` and Keras's ``AdamW`` do by
default (``l2`` and ``l1`` stay penalties on the weights only, added to the
gradient). With ``clip_norm`` the gradient (penalties included) is scaled
to that total 2-norm first when it is longer (``clip_grad_norm``).
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from fastnn._kernels import (CLIP_EPS, H_BETA1, H_BETA2, H_CLIP_NORM, H_EPS, H_ETA_MINUS,
                             H_ETA_PLUS, H_L1, H_L2, H_LR, H_MOMENTUM, H_STEP_MAX, H_STEP_MIN,
                             H_WEIGHT_DECAY, N_HYPER)
from fastnn._typing import Array, DTypeLike
from fastnn.exceptions import lookup


def _sgd(p: Array, state: Array, hyper: Array, t: int) -> None:
    """p -= lr g"""
    p -= p.dtype.type(hyper[H_LR]) * state[0]


def _momentum(p: Array, state: Array, hyper: Array, t: int) -> None:
    """v = mu v + g; p -= lr v"""
    g, v = state[0], state[1]
    v *= p.dtype.type(hyper[H_MOMENTUM])
    v += g
    p -= p.dtype.type(hyper[H_LR]) * v


def _nesterov(p: Array, state: Array, hyper: Array, t: int) -> None:
    """v = mu v + g; p -= lr (g + mu v)"""
    g, v = state[0], state[1]
    mu = p.dtype.type(hyper[H_MOMENTUM])
    v *= mu
    v += g
    p -= p.dtype.type(hyper[H_LR]) * (g + mu * v)


def _adam(p: Array, state: Array, hyper: Array, t: int) -> None:
    """m = m + (1 - b1)(g - m); v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)"""
    g, m, v = state[0], state[1], state[2]
    f = p.dtype.type
    b1, b2 = f(hyper[H_BETA1]), f(hyper[H_BETA2])
    m += (1 - b1) * (g - m)
    v *= b2
    v += (1 - b2) * g * g
    step_size = f(hyper[H_LR] / (1 - hyper[H_BETA1] ** t))
    bc2_sqrt = f(np.sqrt(1 - hyper[H_BETA2] ** t))
    denom = np.sqrt(v) / bc2_sqrt + f(hyper[H_EPS])
    p -= step_size * (m / denom)


def _adamw(p: Array, state: Array, hyper: Array, t: int) -> None:
    """p *= 1 - lr wd (every parameter); then Adam's step"""
    p *= p.dtype.type(1 - hyper[H_LR] * hyper[H_WEIGHT_DECAY])
    _adam(p, state, hyper, t)


def clip_grad_norm(grad: np.ndarray, max_norm: float) -> float:
    """grad *= max_norm / (||grad|| + 1e-6) when that is below 1, in place,
    as torch.nn.utils.clip_grad_norm_ does to all the gradients at once; the
    norm is summed in float64. Returns the norm before clipping."""
    g = grad.astype(np.float64, copy=False)
    norm = float(np.sqrt(np.dot(g, g)))
    scale = max_norm / (norm + CLIP_EPS)
    if scale < 1:
        grad *= grad.dtype.type(scale)
    return norm


def _rprop(p: Array, state: Array, hyper: Array, t: int) -> None:
    """iRPROP-: a weight's step grows by eta+ while its gradient keeps its
    sign and shrinks by eta- when it flips (that gradient then counts as
    0); p -= sign(g) step."""
    g, prev, step = state[0].copy(), state[1], state[2]
    f = p.dtype.type
    prod = g * prev
    step[prod > 0] *= f(hyper[H_ETA_PLUS])
    step[prod < 0] *= f(hyper[H_ETA_MINUS])
    np.clip(step, f(hyper[H_STEP_MIN]), f(hyper[H_STEP_MAX]), out=step)
    g[prod < 0] = 0
    p -= np.sign(g) * step
    prev[...] = g


@dataclass(frozen=True)
class Optimizer:
    """An update rule.

    Attributes
    ----------
    name : str
    code : int
        The number ``fastnn._core`` knows it by.
    state_rows : int
        Rows of state, the gradient included.
    default_lr : float
        The learning rate when ``fit`` is given none (for rprop: the
        initial step size).
    step : callable
        ``step(params, state, hyper, t)``, the NumPy update.
    full_batch : bool
        Whether each step must see the whole training set.
    costly_step : bool
        Whether the step costs a square root and a division per parameter
        (Adam's): a dense network then trains on a team of threads that
        split each batch's rows and each step's parameters, rather than on
        one thread whose products alone use the other cores
        (`fastnn.training.team_threads`).
    """

    name: str
    code: int
    state_rows: int
    default_lr: float
    step: Callable
    full_batch: bool = False
    costly_step: bool = False

    def __repr__(self) -> str:
        return f"Optimizer({self.name!r})"

    def new_state(self, n_params: int, dtype: DTypeLike, lr: float) -> Array:
        """Zeroed state; Rprop's step sizes start at lr (torch's convention)."""
        state = np.zeros((self.state_rows, n_params), dtype=dtype)
        if self.name == "rprop":
            state[2] = lr
        return state


OPTIMIZERS = {
    o.name: o
    for o in [
        # 3.0 is Nielsen's chapter-1 rate; with momentum 0.9 the rate 0.3
        # gives the same effective step, lr / (1 - momentum).
        Optimizer("sgd", 0, 1, 3.0, _sgd),
        Optimizer("momentum", 1, 2, 0.3, _momentum),
        Optimizer("nesterov", 2, 2, 0.3, _nesterov),
        Optimizer("adam", 3, 3, 1e-3, _adam, costly_step=True),
        # FANN's initial step size; torch.optim.Rprop's defaults otherwise
        Optimizer("rprop", 4, 3, 0.1, _rprop, full_batch=True),
        Optimizer("adamw", 5, 3, 1e-3, _adamw, costly_step=True),
    ]
}

RPROP_ETAS = (0.5, 1.2)
RPROP_STEP_SIZES = (1e-6, 50.0)


@dataclass
class OptimizerState:
    """An optimizer's buffers, kept on the network between fit calls."""

    name: str
    state: Array
    steps: int = 0


def get_optimizer(name: str) -> Optimizer:
    """The registered optimizer called `name`; ConfigError lists the valid ones."""
    return lookup(OPTIMIZERS, "optimizer", name)


def hyper_array(lr: float, l2_over_n: float = 0.0, l1_over_n: float = 0.0, momentum: float = 0.0,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.01, clip_norm: Optional[float] = None) -> Array:
    """The float64 hyper-parameter array train_epoch takes (weight_decay is
    read by adamw only; clip_norm None or 0 is no clipping)."""
    hyper = np.zeros(N_HYPER)
    hyper[H_LR], hyper[H_L2], hyper[H_L1] = lr, l2_over_n, l1_over_n
    hyper[H_MOMENTUM] = momentum
    hyper[H_BETA1], hyper[H_BETA2] = betas
    hyper[H_EPS] = eps
    hyper[H_ETA_MINUS], hyper[H_ETA_PLUS] = RPROP_ETAS
    hyper[H_STEP_MIN], hyper[H_STEP_MAX] = RPROP_STEP_SIZES
    hyper[H_WEIGHT_DECAY] = weight_decay
    hyper[H_CLIP_NORM] = clip_norm or 0.0
    return hyper
