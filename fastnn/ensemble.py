"""``Ensemble``: K networks whose prediction is the mean of their outputs.

Networks trained from different seeds make different mistakes, and the
mean of their output activations is more often right than any one of them
(Nielsen, chapter 6: five networks at 99.60 % each voted to 99.67 %)::

    a(x) = (1/K) sum_k a_k(x)

For softmax or sigmoid outputs that is the mean of the members'
probabilities; for regression, the mean of their predictions. ``predict``,
``predict_proba`` and ``evaluate`` are Network's, on that mean.

The members share everything that maps rows and labels to and from the
output units: the input shape, the output units, activation and loss, the
dtype, the training inputs' dtype, and the preprocessing (task, classes,
column encoding, scaling). Their hidden layers may differ. A model file
holds all of them (``save``; ``fastnn.load`` gives an Ensemble back), and
every export computes the same mean.

>>> import fastnn
>>> from fastnn.ensemble import Ensemble
>>> ens = Ensemble.of(fastnn.Network([784, 30, 10], seed=0), 5)  # seeds 0..4
>>> histories = ens.fit(X, y, epochs=30, batch_size=10, lr=3.0)   # doctest: +SKIP
>>> ens.evaluate(X_test, y_test)["accuracy"]                      # doctest: +SKIP
"""
import copy
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from fastnn._typing import Array, ArrayLike
from fastnn import modelfile
from fastnn._validation import MAX_MEMBERS, MAX_SEED
from fastnn.exceptions import ConfigError
from fastnn.history import History
from fastnn.initializers import get_initializer
from fastnn.network import Gradient, Network, ParamList



def _interface(net: Network) -> dict[str, Any]:
    """What members must share: how rows come in and outputs go out."""
    pre = net.preprocessing
    return {"input shape": tuple(net.input_shape), "outputs": net.sizes[-1],
            "output activation": net.output, "loss": net.loss, "dtype": net.compute_dtype,
            "training inputs' dtype": net.input_dtype,
            "preprocessing (task, classes, columns, scaling)":
                None if pre is None else pre.to_dict()}


def _no_own(what: str) -> ConfigError:
    return ConfigError(f"an Ensemble has no {what} of its own; use ensemble.members[k].{what}")


class Ensemble(Network):
    """K networks whose outputs are averaged (see the module's docstring).

    Parameters
    ----------
    members : sequence of Network
        Between 2 and MAX_MEMBERS networks, each given once, sharing their
        inputs, outputs, loss, dtype and preprocessing.

    Attributes
    ----------
    members : list of Network
        The networks, in order: ``members[k].weights``, ``.seed``,
        ``.history`` ... are each member's own.

    The attributes that describe the interface (``plan``, ``sizes``,
    ``layers``, ``preprocessing``, ``input_dtype``, ``training_record``) are the
    first member's; ``n_params`` counts every member's.
    """

    def __init__(self, members: Sequence[Network]) -> None:
        members = list(members) if isinstance(members, Sequence) else []
        if not all(isinstance(m, Network) and not isinstance(m, Ensemble) for m in members):
            raise ConfigError("an Ensemble takes a list of fastnn.Network objects "
                              "(not ensembles)")
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise ConfigError(f"an Ensemble takes 2 to {MAX_MEMBERS} networks, "
                              f"not {len(members)}")
        if len({id(m) for m in members}) != len(members):
            raise ConfigError("an Ensemble's members must be distinct networks "
                              "(Ensemble.of(net, k) makes k of one kind)")
        first = _interface(members[0])
        for k, m in enumerate(members[1:], 2):
            theirs = _interface(m)
            for what, value in first.items():
                if theirs[what] != value:
                    raise ConfigError(f"an Ensemble's members must share their {what}: "
                                      f"network {k} differs from network 1")
        self.members = members
        head = members[0]
        # Network's prediction methods read these: the shared interface
        self.plan, self.sizes, self.activations = head.plan, head.sizes, head.activations
        self.loss, self.dtype, self.slope, self.init = head.loss, head.dtype, head.slope, head.init
        self.compute_dtype = head.compute_dtype
        self.backend, self._kernels = head.backend, head._kernels
        self.input_dtype, self.preprocessing = head.input_dtype, head.preprocessing
        self.training_record = head.training_record
        self.seed = head.seed
        self.epochs_trained = min(m.epochs_trained for m in members)
        self.history: Optional[History] = None
        self.optimizer_state = None
        self.best_params = None
        self._params = np.empty(0, dtype=self.dtype)

    @classmethod
    def of(cls, net: Network, k: int) -> "Ensemble":
        """K untrained networks like `net` (itself the first): the same
        layers, options and preprocessing, seeds ``net.seed + i``."""
        if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= MAX_MEMBERS:
            raise ConfigError(f"an ensemble has 2 to {MAX_MEMBERS} networks, not {k!r}")
        if net.epochs_trained:
            raise ConfigError("Ensemble.of takes an untrained network (its copies start "
                              "from new seeds); Ensemble([...]) takes trained ones")
        members = [net]
        for i in range(1, k):
            m = copy.deepcopy(net)
            m.seed = (net.seed + i) % (MAX_SEED + 1)
            m.plan.init(m.flat_params, get_initializer(m.init), np.random.default_rng(m.seed))
            members.append(m)
        return cls(members)

    def __repr__(self) -> str:
        reprs = [repr(m).replace(f", seed={m.seed})", ")") for m in self.members]
        if len(set(reprs)) == 1:
            return f"Ensemble({len(reprs)} x {reprs[0]}, seeds={self.seeds})"
        return f"Ensemble([{', '.join(map(repr, self.members))}])"

    @property
    def n_params(self) -> int:
        """Trainable parameters of all members."""
        return sum(m.n_params for m in self.members)

    @property
    def seeds(self) -> list[int]:
        """The members' seeds, in order."""
        return [m.seed for m in self.members]

    @property
    def weights(self) -> ParamList:
        raise _no_own("weights")

    @weights.setter
    def weights(self, values: Any) -> None:
        raise _no_own("weights")

    @property
    def biases(self) -> ParamList:
        raise _no_own("biases")

    @biases.setter
    def biases(self, values: Any) -> None:
        raise _no_own("biases")

    # ------------------------------------------------------------------ maths

    def _forward(self, X: Array) -> Array:
        """a = (1/K) sum_k a_k(X), X (n, features) already encoded; (n, outputs)."""
        out = self.members[0]._forward(X)
        for m in self.members[1:]:
            out += m._forward(X)
        out /= len(self.members)
        return out

    def fit(self, X: ArrayLike, y: ArrayLike,  # type: ignore[override]
            **fit_options: Any) -> list[History]:
        """Train every member on (X, y) with `fit_options` (Network.fit's),
        several at once (fastnn.fit_many); returns their histories. Each
        member keeps its own seed, so its weights are those of its own fit."""
        from fastnn.many import fit_many

        try:
            return fit_many(self.members, X, y, **fit_options)
        finally:
            self.epochs_trained = min(m.epochs_trained for m in self.members)
            self.input_dtype = self.members[0].input_dtype
            self.preprocessing = self.members[0].preprocessing
            self.training_record = self.members[0].training_record

    def gradient(self, X: ArrayLike, y: ArrayLike) -> Gradient:
        raise _no_own("gradient")


modelfile.register("ensemble", Ensemble)
