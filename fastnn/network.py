"""``Network``: a fully-connected feedforward network trained by mini-batch SGD.

Samples are rows: ``X.shape == (n_samples, n_features)``, and layer l's
weights have shape ``(sizes[l], sizes[l+1])``. All parameters live in one
flat vector (see ``fastnn._kernels``); ``weights`` and ``biases`` are views
into it, so the compiled kernels update them in place.
"""
import math
import numbers
import secrets
import sys
import time
from collections import namedtuple

import numpy as np

from fastnn import _kernels
from fastnn._validation import check_finite, check_targets, check_targets_fit_loss, check_X
from fastnn.activations import get_activation
from fastnn.exceptions import ConfigError, DataError, TrainingDiverged
from fastnn.history import History
from fastnn.initializers import get_initializer
from fastnn.losses import get_loss

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}

# Rows forward() pushes through the network at a time: big enough for
# efficient GEMMs, small enough that each layer's activations stay in cache.
PREDICT_CHUNK = 256

Gradient = namedtuple("Gradient", ["loss", "weights", "biases"])
Gradient.__doc__ = """The mean loss over a batch and its gradients per layer."""


class ParamList(list):
    """Per-layer parameter arrays that are views into a network's flat vector.

    ``net.weights[i][...] = value`` and ``net.weights[i] = value`` both copy
    ``value`` into the network (its shape must match); ``net.weights[i]``
    itself is never replaced.
    """

    def __init__(self, arrays, kind):
        super().__init__(arrays)
        self._kind = kind

    def __setitem__(self, i, value):
        if not isinstance(i, numbers.Integral):
            raise TypeError(f"assign {self._kind} one layer at a time, not with {i!r}")
        target = list.__getitem__(self, i)
        value = np.asarray(value)
        if value.shape != target.shape:
            raise DataError(f"{self._kind}[{i}] has shape {target.shape}; cannot assign "
                            f"an array of shape {value.shape}")
        check_finite(value.reshape(len(value), -1), f"{self._kind}[{i}]")
        target[...] = value


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def _positive_float(value, name, allow_zero=False):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, not {value!r}")
    return x


class Network:
    """A fully-connected feedforward network trained by mini-batch SGD.

    Parameters
    ----------
    sizes : sequence of int
        Units per layer, input first: ``[784, 30, 10]``.
    activation : str or sequence of str, default "sigmoid"
        Activation of the hidden layers: one name for all, or one per hidden
        layer. One of ``fastnn.activations.ACTIVATIONS``.
    output : str, optional
        Activation of the output layer. Defaults to `activation` (its last
        entry if it is a list).
    loss : {"mse", "cross_entropy"}, default "mse"
        ``mse`` is Nielsen's quadratic cost ``C = 1/(2n) sum ||a - y||^2``;
        ``cross_entropy`` is binary cross-entropy on a sigmoid output and
        categorical cross-entropy on a softmax output.
    dtype : {"float32", "float64"}, default "float32"
    init : str, default "nielsen"
        Weight initialisation, one of ``fastnn.initializers.INITIALIZERS``;
        ``nielsen`` draws W ~ N(0, 1/n_in) and b ~ N(0, 1).
    seed : int, optional
        Makes initialisation and shuffling exactly reproducible. If None, a
        seed is drawn and recorded in ``self.seed``.
    slope : float, default 0.01
        Negative-side slope of ``leaky_relu``.
    backend : {"cython", "numpy"}, default "cython"
        ``numpy`` runs the pure-NumPy reference instead of the compiled
        kernels (same maths, for checking and benchmarking).

    Examples
    --------
    >>> net = Network([784, 30, 10], seed=0)
    >>> hist = net.fit(X, y, epochs=30, batch_size=10, lr=3.0)   # doctest: +SKIP
    >>> net.evaluate(X_test, y_test)["accuracy"]                  # doctest: +SKIP
    0.95...
    """

    def __init__(self, sizes, activation="sigmoid", output=None, loss="mse", *,
                 dtype="float32", init="nielsen", seed=None, slope=0.01, backend="cython"):
        self.sizes = self._check_sizes(sizes)
        n_layers = len(self.sizes) - 1
        hidden = [activation] * (n_layers - 1) if isinstance(activation, str) else list(activation)
        if not isinstance(activation, str) and len(hidden) != n_layers - 1:
            raise ConfigError(f"activation lists one name per hidden layer: "
                              f"{n_layers - 1} for sizes {list(self.sizes)}, not {len(hidden)}")
        if output is None:
            output = activation if isinstance(activation, str) else (hidden or ["sigmoid"])[-1]
        for name in hidden:
            if get_activation(name).output_only:
                raise ConfigError(f"{name!r} can only be the output activation; "
                                  f"choose another for the hidden layers")
        get_activation(output)
        self.activations = tuple(hidden) + (output,)
        self.loss = get_loss(loss).name
        get_loss(loss).check_output(output)
        self.dtype = _check_dtype(dtype)
        self.init = get_initializer(init).__name__
        self.slope = _positive_float(slope, "slope", allow_zero=True)
        if seed is None:
            seed = secrets.randbits(63)
        self.seed = _positive_int(seed, "seed", minimum=0)
        self.backend = backend
        self._kernels = _kernels.get_backend(backend)
        self.epochs_trained = 0
        #: What the last fit() was asked and how it ended (kept in model files).
        self.training = {}

        self._params = np.empty(_kernels.n_params(self.sizes), dtype=self.dtype)
        rng = np.random.default_rng(self.seed)
        for (W, b), (W0, b0) in zip(self._views(), get_initializer(init)(self.sizes, rng)):
            W[...] = W0
            b[...] = b0

    @staticmethod
    def _check_sizes(sizes):
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise ConfigError(f"sizes must be a list of layer widths, not {sizes!r}") from None
        if len(sizes) < 2:
            raise ConfigError(f"sizes needs an input and an output layer at least, not {list(sizes)}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
                raise ConfigError(f"layer sizes must be integers >= 1; got {list(sizes)}")
        return tuple(int(s) for s in sizes)

    # ------------------------------------------------------------------ state

    def _views(self):
        return _kernels.param_views(self._params, self.sizes)

    @property
    def weights(self):
        """Per-layer weights, ``weights[l].shape == (sizes[l], sizes[l+1])``."""
        return ParamList([W for W, _ in self._views()], "weights")

    @weights.setter
    def weights(self, values):
        self._assign(self.weights, values)

    @property
    def biases(self):
        """Per-layer biases, ``biases[l].shape == (sizes[l+1],)``."""
        return ParamList([b for _, b in self._views()], "biases")

    @biases.setter
    def biases(self, values):
        self._assign(self.biases, values)

    def _assign(self, current, values):
        values = list(values)
        if len(values) != len(current):
            raise DataError(f"expected {len(current)} arrays, one per layer, not {len(values)}")
        for i, v in enumerate(values):
            current[i] = v

    @property
    def n_params(self):
        """Number of trainable parameters."""
        return self._params.size

    @property
    def output(self):
        """The output layer's activation."""
        return self.activations[-1]

    def __repr__(self):
        hidden = self.activations[:-1]
        act = hidden[0] if len(set(hidden)) == 1 else list(hidden)
        return (f"Network({list(self.sizes)}, activation={act!r}, output={self.output!r}, "
                f"loss={self.loss!r}, dtype={str(self.dtype)!r}, seed={self.seed})")

    # ---------------------------------------------------------------- kernels

    def _codes(self):
        sizes = np.array(self.sizes, dtype=np.intp)
        acts = np.array([get_activation(a).code for a in self.activations], dtype=np.int32)
        return sizes, acts

    def _targets(self, X, y, name="y"):
        Y, labels = check_targets(y, len(X), self.sizes[-1], self.dtype, name)
        check_targets_fit_loss(Y, self.loss, self.output, name)
        return Y, labels

    # ------------------------------------------------------------------- API

    def fit(self, X, y, epochs=30, batch_size=10, lr=3.0, shuffle=True, *,
            validation_data=None, callback=None, verbose=0):
        """Train by mini-batch stochastic gradient descent.

        Each epoch visits the rows in a fresh random order (``shuffle``),
        ``batch_size`` at a time (the last batch may be smaller), and after
        each batch of m rows subtracts ``lr / m`` times the summed gradients.
        The whole epoch runs in the compiled kernel without the GIL.

        Parameters
        ----------
        X : array (n, sizes[0]) of uint8, float32 or float64
            Inputs, one sample per row; uint8 pixels are scaled to [0, 1].
        y : array (n,) of int labels, or (n, sizes[-1]) of float targets
            Labels are one-hot encoded (with one output unit: 0 or 1).
        epochs : int, default 30
        batch_size : int, default 10
        lr : float, default 3.0
            Learning rate eta.
        shuffle : bool, default True
            Visit rows in a new random order each epoch (reproducible from
            ``seed``); if False, in their given order.
        validation_data : (X_val, y_val), optional
            Evaluated after each epoch as ``val_loss`` / ``val_accuracy``.
        callback : callable, optional
            ``callback(epoch, metrics)`` after each epoch (epoch counts from
            0); returning False stops training.
        verbose : int, default 0
            1 prints one line per epoch to stderr.

        Returns
        -------
        History
            Per-epoch ``loss``, ``accuracy`` (for class labels), ``val_loss``
            and ``val_accuracy`` (with validation data), ``lr``, ``seconds``.

        Raises
        ------
        TrainingDiverged
            If the loss becomes NaN or infinite; the weights from before that
            epoch are restored and the history so far is in ``exc.history``.
        """
        X = check_X(X, self.sizes[0])
        Y, labels = self._targets(X, y)
        epochs = _positive_int(epochs, "epochs", minimum=0)
        batch_size = _positive_int(batch_size, "batch_size")
        lr = _positive_float(lr, "lr")
        if validation_data is not None:
            try:
                X_val, y_val = validation_data
            except (TypeError, ValueError):
                raise ConfigError("validation_data must be a pair (X_val, y_val)") from None
            X_val = check_X(X_val, self.sizes[0], "X_val")
            Y_val, labels_val = self._targets(X_val, y_val, "y_val")

        sizes, acts = self._codes()
        loss_code = get_loss(self.loss).code
        kernels = self._kernels
        work = np.empty(kernels.workspace_size(sizes, batch_size), dtype=self.dtype)
        control = np.zeros(2, dtype=np.int64)
        order = np.arange(len(X), dtype=np.int64)
        self.training = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                         "shuffle": bool(shuffle), "n_train": len(X)}
        hist = History()
        for epoch in range(epochs):
            if shuffle:
                # one stream per (seed, epoch): a resumed run shuffles as an
                # uninterrupted one would
                rng = np.random.default_rng([self.seed, self.epochs_trained])
                order = rng.permutation(len(X)).astype(np.int64, copy=False)
            snapshot = self._params.copy()
            control[:] = 0
            start = time.perf_counter()
            status, loss_sum, n_correct = kernels.train_epoch(
                X, Y, order, self._params, sizes, acts, self.slope, loss_code,
                batch_size, lr, 1.0, work, control)
            seconds = time.perf_counter() - start
            if status == _kernels.DIVERGED:
                self._params[...] = snapshot
                hist.stopped = "diverged"
                exc = TrainingDiverged(
                    f"Training diverged at epoch {self.epochs_trained + 1} (loss = nan or inf); "
                    f"the weights from before that epoch are kept. Try a smaller learning "
                    f"rate (lr={lr:g}) or scale the inputs.")
                exc.history = hist
                raise exc
            rows = int(control[_kernels.ROWS_DONE])
            metrics = {"loss": loss_sum / rows}
            if labels is not None:
                metrics["accuracy"] = n_correct / rows
            if validation_data is not None:
                val = self._evaluate(X_val, Y_val, labels_val)
                metrics["val_loss"] = val["loss"]
                if "accuracy" in val:
                    metrics["val_accuracy"] = val["accuracy"]
            metrics["lr"] = lr
            metrics["seconds"] = seconds
            hist.append(metrics)
            self.epochs_trained += 1
            if verbose:
                print(_epoch_line(self.epochs_trained, metrics), file=sys.stderr, flush=True)
            if callback is not None and callback(epoch, dict(metrics)) is False:
                hist.stopped = "callback"
                break
        self.training["final"] = hist.last()
        return hist

    def forward(self, X):
        """The output layer's activations for each row of X, shape (n, sizes[-1])."""
        return self._forward(check_X(X, self.sizes[0]))

    def _forward(self, X):
        sizes, acts = self._codes()
        chunk = min(len(X), PREDICT_CHUNK)
        work = np.empty(self._kernels.workspace_size(sizes, chunk), dtype=self.dtype)
        out = np.empty((len(X), self.sizes[-1]), dtype=self.dtype)
        self._kernels.predict(X, self._params, sizes, acts, self.slope, work, chunk, out)
        return out

    def predict(self, X):
        """Predicted class of each row of X: the argmax of the outputs (with one
        output unit, 1 where it exceeds 0.5)."""
        return _predicted_labels(self.forward(X))

    def evaluate(self, X, y):
        """Loss and accuracy on (X, y).

        Returns
        -------
        dict
            ``loss`` (the mean cost), ``accuracy`` (when y holds class labels
            or one-hot rows) and ``n`` (samples).
        """
        X = check_X(X, self.sizes[0])
        Y, labels = self._targets(X, y)
        return self._evaluate(X, Y, labels)

    def _evaluate(self, X, Y, labels):
        A = self._forward(X)
        cost = get_loss(self.loss).fn(A, Y, get_activation(self.output))
        result = {"loss": float(cost.mean()), "n": len(X)}
        if labels is not None:
            result["accuracy"] = float(np.mean(_predicted_labels(A) == labels))
        return result

    def gradient(self, X, y):
        """The mean loss over (X, y) and its gradient, by backpropagation.

        Returns
        -------
        Gradient
            ``(loss, weights, biases)``: the mean cost and the lists of
            dC/dW_l and dC/db_l, shaped like ``self.weights`` and ``self.biases``.
        """
        X = check_X(X, self.sizes[0])
        Y, _ = self._targets(X, y)
        sizes, acts = self._codes()
        work = np.empty(self._kernels.workspace_size(sizes, len(X)), dtype=self.dtype)
        grad = np.empty_like(self._params)
        total = self._kernels.gradient(X, Y, self._params, sizes, acts, self.slope,
                                       get_loss(self.loss).code, work, grad)
        views = _kernels.param_views(grad, self.sizes)
        return Gradient(total / len(X), [W for W, _ in views], [b for _, b in views])

    def save(self, path):
        """Write the network to a safetensors model file (atomically)."""
        from fastnn.io import save
        save(self, path)


def _check_dtype(dtype):
    try:
        key = str(np.dtype(dtype))
    except TypeError:
        key = None
    if key not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    return DTYPES[key]


def _predicted_labels(A):
    if A.shape[1] == 1:
        return (A[:, 0] > 0.5).astype(np.int64)
    return A.argmax(axis=1)


def _epoch_line(epoch, metrics):
    parts = [f"epoch {epoch}"]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if name in metrics:
            parts.append(f"{name} {metrics[name]:.4f}")
    parts.append(f"{metrics['seconds']:.2f}s")
    return "  ".join(parts)
