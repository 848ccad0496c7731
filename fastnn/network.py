"""``Network``: a feedforward network (dense, or convolutional) trained by mini-batch SGD.

Samples are rows: ``X.shape == (n_samples, n_features)``, images in HWC
order. A dense layer's weights have shape ``(n_in, n_out)`` (``(sizes[l],
sizes[l+1])`` in a dense stack), a convolution's ``(kh, kw, C_in, F)``. All
parameters live in one flat vector laid out by the network's ``plan`` (see
``fastnn.plan`` and ``fastnn._kernels``); ``weights`` and ``biases`` are
views into it, so the compiled kernels update them in place.
"""
import numbers
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, SupportsIndex, Union

import numpy as np

from fastnn import _kernels, blas, memory, modelfile, training
from fastnn._kernels import DTYPES
from fastnn._typing import Array, ArrayLike, DTypeLike, Metrics, PathLike
from fastnn._validation import (MAX_SEED, BackgroundChecks, check_finite, check_fits,
                                check_targets, check_targets_fit_loss, check_X, image_rows,
                                nonnegative_float, one_hot_rows, positive_int)
from fastnn.activations import get_activation
from fastnn.callbacks import Callback, check_callbacks
from fastnn.exceptions import ConfigError, DataError
from fastnn.history import History
from fastnn.initializers import get_initializer
from fastnn.losses import get_loss
from fastnn.metrics import predicted_labels
from fastnn.optimizers import OptimizerState
from fastnn.plan import Plan
from fastnn.schedules import Schedule
from fastnn.table import is_table_like

if TYPE_CHECKING:
    from fastnn.columns import Columns
    from fastnn.layers import Layer
    from fastnn.preprocessing import InputScaling, Preprocessing


# Rows forward() pushes through the network at a time: big enough for
# efficient GEMMs, small enough that each layer's activations stay in cache.
# 512 measured best on an AMD Zen 1 (L2 512 KiB); on an Emerald Rapids (L2 2
# MiB) 1,024 gave 1.06-1.16x on [784, 256, 128, 10] and 1.07-1.10x on
# [784, 1024, 1024, 10] (a fresh network's first forward of 10,000 rows, as
# benchmarks/run.py times it, 9 rounds). The chunk does not change a result.
PREDICT_CHUNK = 1024
# Entries of one thread's forward() workspace at most (16 MiB of float32):
# a convolutional net's rows are wide, so its chunks are fewer rows.
PREDICT_BUDGET = 4 * 1024 * 1024
# Rows evaluate() runs through forward() at a time (a multiple of
# PREDICT_CHUNK, so the chunks forward computes are the same).
EVALUATE_CHUNK = 64 * PREDICT_CHUNK
# ... and at most this many outputs at a time (1M: the loss's float64
# temporaries are 8 MiB each), however many classes.
EVALUATE_BUDGET = 1024 * 1024

class Gradient(NamedTuple):
    """The mean loss over a batch and its gradients per layer."""

    loss: float
    weights: list[Array]
    biases: list[Array]


class ParamList(list[Array]):
    """Per-layer parameter arrays that are views into a network's flat vector.

    ``net.weights[i][...] = value`` and ``net.weights[i] = value`` both copy
    ``value`` into the network (its shape must match); ``net.weights[i]``
    itself is never replaced.
    """

    def __init__(self, arrays: Iterable[Array], kind: str) -> None:
        super().__init__(arrays)
        self._kind = kind

    def __setitem__(self, i: SupportsIndex, value: ArrayLike) -> None:  # type: ignore[override]
        if not isinstance(i, numbers.Integral):
            raise TypeError(f"assign {self._kind} one layer at a time, not with {i!r}")
        target = list.__getitem__(self, i)
        value = np.asarray(value)
        if value.shape != target.shape:
            raise DataError(f"{self._kind}[{i}] has shape {target.shape}; cannot assign "
                            f"an array of shape {value.shape}")
        rows = value.reshape(len(value), -1)
        check_finite(rows, f"{self._kind}[{i}]")
        # a float64 value past float32's range would become inf (with a warning)
        check_fits(rows, target.dtype, f"{self._kind}[{i}]", hint="train in float64")
        target[...] = value


class Network:
    """A feedforward network trained by mini-batch SGD.

    Parameters
    ----------
    sizes : sequence
        Units per layer, input first: ``[784, 30, 10]`` (a dense stack). Or
        an input shape followed by layers of ``fastnn.layers``, where an int
        is a Dense layer: ``[(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), 100,
        10]`` (a Flatten is implied before the first Dense layer after
        images). The last layer is Dense or Conv2D.
    activation : str or sequence of str, default "sigmoid"
        Activation of the hidden layers (Dense and Conv2D; pooling has
        none): one name for all, or one per hidden layer. One of
        ``fastnn.activations.ACTIVATIONS``. A layer's own activation wins.
    output : str, optional
        Activation of the output layer. Defaults to `activation` (its last
        entry if it is a list), or the last layer's own.
    loss : {"mse", "cross_entropy"}, default "mse"
        ``mse`` is Nielsen's quadratic cost ``C = 1/(2n) sum ||a - y||^2``;
        ``cross_entropy`` is binary cross-entropy on a sigmoid output and
        categorical cross-entropy on a softmax output.
    dtype : {"float32", "float64", "bfloat16"}, default "float32"
        What the network computes in. "bfloat16" keeps float32 weights,
        activations and optimizer state, and rounds the two operands of
        every matrix product to bfloat16 (accumulating in float32), as
        PyTorch's autocast does; ``dtype`` is then float32 (the weights')
        and ``compute_dtype`` "bfloat16". Emulated (no faster than float32)
        on CPUs without AVX512_BF16: fastnn.blas.bf16_speed says which.
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
    >>> from fastnn.layers import Conv2D, MaxPool2D
    >>> Network([(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), 100, 10], activation="relu",
    ...         output="softmax", loss="cross_entropy", seed=0)
    Network([(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Flatten(), Dense(100), Dense(10)], \
activation='relu', output='softmax', loss='cross_entropy', dtype='float32', seed=0)
    """

    def __init__(self, sizes: Sequence[Any], activation: Union[str, Sequence[str]] = "sigmoid",
                 output: Optional[str] = None, loss: str = "mse", *,
                 dtype: DTypeLike = "float32", init: str = "nielsen", seed: Optional[int] = None,
                 slope: float = 0.01, backend: str = "cython") -> None:
        #: The layers resolved into shapes, activations, parameter offsets and
        #: the kernel's table (fastnn.plan.Plan): the one source of all of them.
        self.plan = Plan.parse(sizes, activation, output)
        self.sizes: tuple[int, ...] = self.plan.sizes
        self.activations: tuple[Optional[str], ...] = self.plan.activations
        self.loss = get_loss(loss).name
        get_loss(loss).check_output(self.output)
        #: What the network computes in: "float32", "float64" or "bfloat16".
        self.compute_dtype = _check_dtype(dtype)
        #: The dtype of the parameters, activations and optimizer state
        #: (float32 for a bfloat16 network).
        self.dtype = DTYPES[self.compute_dtype]
        if self.compute_dtype == "bfloat16":
            blas.warn_bf16_speed()
        self.init = get_initializer(init).name
        self.slope = nonnegative_float(slope, "slope")
        if seed is None:
            seed = secrets.randbits(63)
        self.seed = positive_int(seed, "seed", minimum=0, maximum=MAX_SEED)
        self.backend = backend
        self._kernels = _kernels.get_backend(backend)
        self.epochs_trained = 0
        #: What the last fit() was asked and how it ended (the model file's
        #: "training" entry).
        self.training_record: dict[str, Any] = {}
        #: The History of the last fit(), also after an interrupted one.
        self.history: Optional[History] = None
        #: The dtype of the inputs the kernels took in the last fit ("uint8"
        #: pixels are divided by 255: see input_scaling), or None before any.
        self.input_dtype: Optional[str] = None
        #: The optimizer's buffers (optimizers.OptimizerState), reused by the
        #: next fit() with the same optimizer.
        self.optimizer_state: Optional[OptimizerState] = None
        #: During a fit(restore_best=True), and after one that did not finish:
        #: the parameters of the best epoch so far (training_record["best"] says
        #: which), or None.
        self.best_params: Optional[np.ndarray] = None
        #: The task, class names, feature scaling and target scaling learned
        #: by prepare() (fastnn.preprocessing.Preprocessing), or None: rows
        #: and labels used as given.
        self.preprocessing: Optional["Preprocessing"] = None

        memory.check_fits(memory.new_network_bytes(self.plan, self.dtype.itemsize),
                          f"{memory.describe(self.plan)} ({self.dtype})",
                          "use smaller layers")
        self._params = np.empty(self.plan.n_params, dtype=self.dtype)
        self.plan.init(self._params, get_initializer(init), np.random.default_rng(self.seed))

    # ------------------------------------------------------------------ state

    @property
    def flat_params(self) -> Array:
        """Every weight and bias in one array, of which `weights` and
        `biases` are views: writing into it changes the network (internal:
        what fastnn.training snapshots, rolls back and keeps as the best
        epoch's)."""
        return self._params

    @property
    def kernels(self) -> Any:
        """The module of the backend's kernels, compiled or NumPy
        (fastnn._kernels.get_backend; internal, for fastnn.training)."""
        return self._kernels

    def _views(self) -> list[tuple[Array, Array]]:
        return self.plan.views(self._params)

    @property
    def layers(self) -> tuple["Layer", ...]:
        """The layers, input to output (fastnn.layers objects; a Flatten is
        implied before the first Dense layer after images)."""
        return self.plan.layers

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (n,) or an image (H, W, C)."""
        return self.plan.input_shape

    @property
    def weights(self) -> ParamList:
        """Weights of each layer that has them: ``(I, O)`` for a Dense layer
        (``(sizes[l], sizes[l+1])`` in a dense stack), ``(kh, kw, C_in, F)``
        (HWIO) for a Conv2D layer."""
        return ParamList([W for W, _ in self._views()], "weights")

    @weights.setter
    def weights(self, values: Iterable[ArrayLike]) -> None:
        self._assign(self.weights, values)

    @property
    def biases(self) -> ParamList:
        """Biases of each layer that has them: ``(O,)`` or ``(F,)``."""
        return ParamList([b for _, b in self._views()], "biases")

    @biases.setter
    def biases(self, values: Iterable[ArrayLike]) -> None:
        self._assign(self.biases, values)

    def _assign(self, current: ParamList, values: Iterable[ArrayLike]) -> None:
        values = list(values)
        if len(values) != len(current):
            raise DataError(f"expected {len(current)} arrays, one per layer, not {len(values)}")
        for i, v in enumerate(values):
            current[i] = v

    @property
    def n_params(self) -> int:
        """Number of trainable parameters."""
        return self._params.size

    @property
    def input_scaling(self) -> "InputScaling":
        """How a raw input row becomes what the layers compute on, from the
        preprocessing and the training inputs' dtype
        (fastnn.preprocessing.input_scaling): what the model file, the
        summary and the exporters read."""
        from fastnn.preprocessing import input_scaling

        return input_scaling(self.preprocessing, self.input_dtype)

    @property
    def input_scale(self) -> float:
        """The factor the kernels apply to the inputs this network was trained
        on: 1/255 for uint8 pixels, else 1 (``input_scaling.factor``)."""
        return float(self.input_scaling.factor)

    @property
    def _bf16(self) -> bool:
        """Whether the kernels round the operands of the matrix products to bfloat16."""
        return self.compute_dtype == "bfloat16"

    @property
    def output(self) -> str:
        """The output layer's activation."""
        output = self.activations[-1]
        assert output is not None       # the last layer is Dense or Conv2D
        return output

    def __getstate__(self) -> dict[str, Any]:
        # the backend module is found again by name (modules do not pickle);
        # pickling is for in-memory use such as scikit-learn's: model files
        # are written with save(), never pickled
        state = dict(self.__dict__)
        del state["_kernels"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("compute_dtype", str(self.dtype))   # pickled before bfloat16
        self._kernels = _kernels.get_backend(self.backend)

    def __repr__(self) -> str:
        plan = self.plan
        hidden = [plan.activations[s.layer] for s in plan.slots[:-1]]
        act = hidden[0] if len(set(hidden)) == 1 else list(hidden)
        if plan.plain_dense and not any(layer.activation for layer in plan.layers):
            spec = list(self.sizes)
        else:
            spec = [plan.input_shape if len(plan.input_shape) > 1 else plan.input_shape[0],
                    *plan.layers]
        return (f"Network({spec!r}, activation={act!r}, output={self.output!r}, "
                f"loss={self.loss!r}, dtype={self.compute_dtype!r}, seed={self.seed})")

    # ---------------------------------------------------------------- kernels

    def _chunk(self, n: int) -> int:
        """Rows forward() pushes through the network at a time."""
        per_row = sum(self.plan.widths())
        return max(1, min(n, PREDICT_CHUNK, PREDICT_BUDGET // per_row))

    def _rows(self, X: ArrayLike, name: str = "X",
              background: Optional[BackgroundChecks] = None) -> Array:
        """X as the C-contiguous (n, features) rows the kernels take: 2-D rows,
        or images (n, H, W) / (n, H, W, C) of the network's input shape
        (check_X, with its background)."""
        return check_X(image_rows(X, self.plan.input_shape, name), self.sizes[0], name,
                       scan_threads=blas.scan_threads, background=background)

    def kernel_inputs(self, X: ArrayLike, name: str = "X",
                      background: Optional[BackgroundChecks] = None) -> Array:
        """Rows X (or images) encoded, checked and scaled as the kernels take
        them (internal: for fit, evaluate and fastnn.training): raw tabular rows (a Table, a DataFrame, text) are encoded by
        the preprocessing's columns first. background: where X goes to the
        kernels as it is (no preprocessing), its check for NaN is left
        running there (check_X); the caller waits for it."""
        pre = self.preprocessing
        if pre is not None and pre.columns is not None:
            X = pre.columns.encode(X, name)
        elif is_table_like(X):
            X = _numbers_only(X, name)
        X = self._rows(X, name, background if pre is None else None)
        out = X if pre is None else pre.transform_X(X, self.dtype)
        if self.dtype != np.float64 and (out is not X or out.dtype != self.dtype):
            # 1e39 is finite in float64 but not in float32: say so, not "diverged"
            # (rows already in the network's dtype were checked finite)
            check_fits(out, self.dtype, name, raw=X,
                       scaling=pre.scaling.kind if pre is not None and pre.scaling else None,
                       scan_threads=blas.scan_threads)
        return out

    def kernel_targets(self, X: Array, y: ArrayLike, name: str = "y",
                       one_hot: bool = True) -> tuple[Any, Optional[Array]]:
        """(Y, labels) as check_targets gives them (one_hot=False: Y None for
        labels, whose one-hot rows are then made a chunk at a time, by
        evaluate_rows and by the training kernels); internal,
        as kernel_inputs."""
        if self.preprocessing is not None:
            y = self.preprocessing.encode(y, self.sizes[-1], name)
        Y, labels = check_targets(y, len(X), self.sizes[-1], self.dtype, name, one_hot)
        if Y is not None and (labels is None or Y.shape[1] == 1):
            # rows one-hot for labels of two or more classes are in [0, 1] and
            # sum to 1 by construction: the check summed every row (0.45 ms of
            # a 20,000-row fit, 2 % of nielsen30's) to find nothing
            check_targets_fit_loss(Y, self.loss, self.output, name)
        return Y, labels

    # ------------------------------------------------------------------- API

    @training.one_fit_at_a_time
    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 30, batch_size: Optional[int] = None,
            lr: Optional[float] = None, shuffle: bool = True, *, optimizer: str = "sgd",
            momentum: Optional[float] = None, betas: Optional[tuple[float, float]] = None,
            eps: Optional[float] = None, l2: float = 0.0, l1: float = 0.0,
            dropout: Union[float, Sequence[float]] = 0.0,
            lr_schedule: Union[str, Schedule, None] = None,
            validation_data: Optional[tuple[ArrayLike, ArrayLike]] = None,
            validation_split: float = 0.0, early_stopping: Optional[int] = None,
            augment: Optional[str] = None, sample_weight: Optional[ArrayLike] = None,
            class_weight: Union[str, Mapping[int, float], None] = None,
            callback: Optional[Callable[[int, Metrics], Optional[bool]]] = None,
            callbacks: Optional[Sequence[Callback]] = None,
            progress: Optional[Callable[[int, int, int], object]] = None,
            verbose: int = 0, task: Optional[str] = None,
            scale: Optional[str] = None, weight_decay: Optional[float] = None,
            clip_norm: Optional[float] = None, restore_best: bool = False,
            categorical: Optional[Iterable[Union[str, int]]] = None,
            drop: Optional[Iterable[Union[str, int]]] = None,
            missing: Optional[Sequence[str]] = None) -> History:
        """Train by mini-batch gradient descent with backpropagation.

        Each epoch visits the rows in a fresh random order, `batch_size` at a
        time (the last batch may be smaller); after each batch of m rows the
        optimizer steps along the mean gradient over the batch. The whole
        epoch runs in the compiled kernel without the GIL.

        Parameters
        ----------
        X : array (n, sizes[0]) of uint8, float32 or float64
            Inputs, one sample per row (images in HWC order; arrays (n, H,
            W, C), or (n, H, W) for one channel, are taken as rows); uint8
            pixels are scaled to [0, 1].
        y : array (n,) of int labels, or (n, sizes[-1]) of float targets
            Labels are one-hot encoded (with one output unit: 0 or 1).
        epochs : int, default 30
        batch_size : int, optional
            Rows per step; default 10, and the whole training set for the
            full-batch ``rprop``.
        lr : float, optional
            Learning rate. Defaults to the optimizer's: 3.0 for ``sgd``
            (Nielsen's chapter 1), 0.3 for ``momentum`` and ``nesterov``
            (the same effective step with momentum 0.9), 1e-3 for ``adam`` and ``adamw``,
            and for ``rprop`` the initial step size, 0.1.
        shuffle : bool, default True
            Visit rows in a new random order each epoch (reproducible from
            the network's ``seed``); if False, in their given order.
        optimizer : {"sgd", "momentum", "nesterov", "adam", "adamw", "rprop"}, default "sgd"
            Update rules of ``torch.optim.SGD`` (dampening 0, with
            ``nesterov=True`` for "nesterov"), ``torch.optim.Adam``,
            ``torch.optim.AdamW`` and ``torch.optim.Rprop`` (iRPROP-, full-batch, step sizes in
            [1e-6, 50], etas (0.5, 1.2)). The optimizer's state is kept on
            the network (``optimizer_state``) and reused by the next fit with
            the same optimizer.
        momentum : float, optional
            For ``momentum`` and ``nesterov``; default 0.9.
        betas : (float, float), optional
            For ``adam`` and ``adamw``; default (0.9, 0.999).
        eps : float, optional
            For ``adam`` and ``adamw``; default 1e-8.
        weight_decay : float, optional
            For ``adamw``; default 0.01 (torch's). Decoupled weight decay:
            each step first shrinks every parameter, biases included, by
            ``p *= 1 - lr * weight_decay``, as ``torch.optim.AdamW`` given
            all of a model's parameters does (l2 and l1 remain penalties in
            the cost, on the weights only).
        clip_norm : float, optional
            Gradient-norm clipping, off by default: before each step, when
            the total 2-norm of the batch's gradient over all parameters
            (the l2/l1 penalty gradients included) exceeds clip_norm, the
            gradient is scaled by ``clip_norm / (norm + 1e-6)``, as
            ``torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)``
            does. Not for ``rprop``.
        l2, l1 : float, default 0
            Regularisation in Nielsen's convention: the cost gains
            ``(l2/2n) sum w^2 + (l1/n) sum |w|`` over the weights (not the
            biases), n the number of training samples.
        dropout : float or sequence of float, default 0
            Inverted dropout rate of the output of every hidden Dense layer,
            or of each, for this fit (``Dropout`` layers, part of the
            architecture, apply as well; the keep probabilities multiply).
            Off in ``forward``, ``predict`` and ``evaluate``.
        lr_schedule : str or fastnn.schedules.Schedule, optional
            ``"constant"`` (default), ``"step:every=5,factor=0.5"``,
            ``"plateau:patience=3,factor=0.1,max_reductions=3"``, or the
            objects ``Step(...)``, ``Plateau(...)`` from fastnn.schedules
            (fit runs a copy: the object given never changes).
        validation_data : (X_val, y_val), optional
            Evaluated after each epoch as ``val_loss`` / ``val_accuracy``.
        validation_split : float, default 0
            Hold out this fraction of the rows (the last ones, before
            shuffling) as validation data instead.
        early_stopping : int, optional
            Stop after this many epochs without a lower validation loss and
            restore the weights of the best epoch (``hist.best_epoch``).
        restore_best : bool, default False
            Keep the weights of the epoch with the best validation accuracy
            (the lowest validation loss for regression; the first on a tie):
            when the run ends, the network has that epoch's weights,
            ``training_record["best"]`` says which epoch (``{"epoch": E, "monitor":
            "val_accuracy", "value": v}``, E counting the network's epochs
            from 1) and ``hist.best_epoch`` is it within this fit. Until
            then the best weights are ``best_params``; a model file saved
            meanwhile (a checkpoint, a Ctrl-C) keeps them. Another fit with
            restore_best goes on comparing with the best so far (give it
            the same validation data); a fit without it drops the record.
            Needs validation data. Nielsen's rule in chapter 6: report the test
            accuracy of the best validation epoch.
        augment : {"shift"}, optional
            Each epoch, shift each input image (every channel alike) by a
            random (dx, dy), each in -2..2 pixels, filling with 0 (Nielsen's
            expanded data). A vector input must be a square image.
        sample_weight : array (n,), optional
            Weight of each sample's loss and gradient: the batch gradient is
            ``(1/m) sum w_x grad C_x``.
        class_weight : dict or "balanced", optional
            Weight of each class's samples, multiplied into sample_weight;
            "balanced" gives class c the weight ``n / (k * n_c)``.
        callback : callable, optional
            ``callback(epoch, metrics)`` after each epoch (epoch counts from
            0); returning False stops training.
        callbacks : list of fastnn.callbacks.Callback, optional
            Objects told of the run's beginning, each epoch's end (before
            `callback`) and its end: ``EarlyStopping``, ``ModelCheckpoint``,
            ``CSVLogger`` or your own subclass.
        progress : callable, optional
            ``progress(epoch, rows_done, rows_total)``, called about ten
            times a second while an epoch trains.
        verbose : int, default 0
            1 shows one line per epoch on stderr (they go to the "fastnn"
            logger at INFO level, also when verbose is 0); 2 also a
            progress bar.
        task : {"classification", "regression"}, optional
            What y holds (see `prepare`). Without it, class names that are
            text are classes, and numbers are used as before: integer labels
            are output units, float arrays targets.
        scale : {"standard", "minmax", "pixels", "none", "auto"}, optional
            Feature scaling learned from X (see `prepare`); without it, the
            inputs are used as given (uint8 pixels divided by 255).
        categorical, drop, missing : optional
            For tabular X (see `prepare`): the columns to read as categories
            and to leave out, and the cells that mean missing.

        Returns
        -------
        History
            Per-epoch ``loss`` (the mean training cost, weighted by the
            sample weights), ``accuracy`` (for class labels), ``penalty``
            (with l1/l2), ``val_loss`` and ``val_accuracy`` (when
            validating), ``lr`` and ``seconds``. Also kept as ``self.history``.

        Raises
        ------
        TrainingDiverged
            If the loss becomes NaN or infinite; the weights from before that
            epoch are restored and the history so far is in ``exc.history``.
        NetworkBusy
            If another fit call (in another thread) is training this network.
        ResourceError
            If training would need more memory than is available.
        KeyboardInterrupt
            On Ctrl-C (SIGINT, in the main thread), once the kernel has
            finished its current batch: the weights, the optimizer state and
            its step count are rolled back to the start of the interrupted
            epoch, so ``self.history`` and ``epochs_trained`` count complete
            epochs only and another ``fit`` continues exactly as an
            uninterrupted run would. (The signal is held back while the
            kernel runs, then passed to the SIGINT handler that was in place;
            fit raises KeyboardInterrupt if that handler returns.)
        """
        tabular = categorical is not None or drop is not None or missing is not None or (
            is_table_like(X) and (self.preprocessing is None
                                  or self.preprocessing.columns is None))
        if task is not None or scale is not None or tabular or (
                self.preprocessing is None and np.asarray(y).dtype.kind in "USO"):
            self.prepare(X, y, task=task, scale=scale, categorical=categorical, drop=drop,
                         missing=missing)
        # X's check for NaN reads it while the rest is prepared; the block
        # waits for it before the kernels read X (BackgroundChecks)
        with BackgroundChecks() as checks:
            X = self.kernel_inputs(X, background=checks)
            Y, labels = self.kernel_targets(X, y, one_hot=False)
            weights = training.sample_weights(sample_weight, class_weight, labels, len(X),
                                              self.sizes[-1])
            train, val = training.split_validation(X, Y, labels, weights, validation_data,
                                                   validation_split, self)
            options = training.check_options(
                self, len(train[0]), epochs=epochs, batch_size=batch_size, lr=lr,
                shuffle=shuffle, optimizer=optimizer, momentum=momentum, betas=betas, eps=eps,
                l2=l2, l1=l1, dropout=dropout, lr_schedule=lr_schedule,
                early_stopping=early_stopping, augment=augment,
                validation_split=validation_split, has_validation=val is not None,
                weight_decay=weight_decay, clip_norm=clip_norm, restore_best=restore_best)
            if verbose >= 2 and progress is None:
                progress = training.text_progress()
            trainer = training.Trainer(self, train, val, options, callback, progress, verbose,
                                       check_callbacks(callbacks))
        self.input_dtype = str(X.dtype)
        # an unfinished restore_best run's best epoch so far, continued by BestEpoch
        best = self.training_record.get("best") if options.restore_best else None
        if not options.restore_best:
            self.best_params = None
        self.training_record = {**options.record(), "n_train": len(train[0]),
                                "sample_weight": weights is not None,
                                "class_weight": class_weight
                                if isinstance(class_weight, (str, type(None)))
                                else {int(k): float(v) for k, v in class_weight.items()}}
        if best is not None:
            self.training_record["best"] = best
        return trainer.run()

    def prepare(self, X: ArrayLike, y: ArrayLike, task: Optional[str] = None,
                scale: Optional[str] = None, *,
                categorical: Optional[Iterable[Union[str, int]]] = None,
                drop: Optional[Iterable[Union[str, int]]] = None,
                missing: Optional[Sequence[str]] = None,
                columns: Optional["Columns"] = None,
                name: Optional[str] = None) -> "Preprocessing":
        """Learn what the network does to raw rows and labels, from training
        data (fit calls it when given a task or a scaling).

        task : {"classification", "regression"}, optional
            Classification maps every distinct label (text, or numbers such
            as 3, 7, 9) to an output unit in sorted order (integer labels
            0..k-1 keep their units); ``predict`` then returns the labels.
            Regression standardises each target column for training, and
            ``predict`` returns target values. Without it, text labels are
            classes and numbers are used as given.
        scale : {"standard", "minmax", "pixels", "none", "auto"}, optional
            standard: (x - mean) / std per feature; minmax: to [0, 1];
            pixels: x / 255; none: as given (uint8 too); auto: pixels for
            uint8 X, else standard. A constant feature becomes 0.

        Tabular rows (a pandas DataFrame, a ``fastnn.table.Table``, an array of
        text, or any X given with one of the options below) get a
        ``fastnn.columns.Columns`` encoding, applied before the scaling
        (``auto`` is then standard): numeric columns as they are (a
        missing value filled with the training median, and a 0/1 unit
        saying so when the training rows had any), text columns (and a
        DataFrame's object, string and category columns) one-hot encoded in
        sorted order. The network's first layer must take the encoded width
        (``Columns.learn(X, ...).n_features``).

        categorical : names or 1-based numbers of columns, optional
            Columns of numbers to read as categories.
        drop : names or 1-based numbers of columns, optional
            Columns to leave out (an ID, a free-text name).
        missing : strings, optional
            The cells that mean missing (fastnn.table.MISSING by default:
            empty, NA, NaN, null, ? ...).
        columns : fastnn.columns.Columns, optional
            An encoding already learned from X, used instead of learning one.
        name : str, optional
            What messages call the data [default: X and y] (see check_data).

        A network that has been trained keeps what it learned: asking for
        another task or scaling raises ConfigError.
        """
        from fastnn.columns import Columns
        from fastnn.preprocessing import Preprocessing, auto_scale, resolve_scale

        old = self.preprocessing
        if old is not None and self.epochs_trained:
            if scale is not None:
                raw = old.columns is None and not is_table_like(X)
                scale = resolve_scale(scale, auto_scale(self._rows(X).dtype if raw else None))
            kept = old.scaling.kind if old.scaling is not None else None
            if scale is not None and scale != kept:
                raise ConfigError(f"this network was trained with scale={kept!r}; it cannot "
                                  f"change to {scale!r}")
            if task is not None and task != old.task:
                raise ConfigError(f"this network was trained for task={old.task!r}; it cannot "
                                  f"change to {task!r}")
            return old
        if columns is None and (categorical is not None or drop is not None
                                or missing is not None or is_table_like(X)):
            columns = Columns.learn(X, categorical=categorical, drop=drop, missing=missing)
        if columns is not None:
            if columns.n_features != self.sizes[0]:
                raise DataError(f"{name or 'X'} encodes to {columns.n_features} inputs "
                                f"({columns.kinds_text()}), "
                                f"but this network's first layer takes {self.sizes[0]}; build it "
                                f"with {columns.n_features} inputs")
        rows = None if columns is not None else self._rows(X, name or "X")
        if rows is not None:
            X = rows
        if scale is not None:
            scale = resolve_scale(scale, auto_scale(None if rows is None else rows.dtype))
        self.preprocessing = Preprocessing.learn(X, y, self.sizes[-1], task, scale,
                                                 name=name or "y", columns=columns)
        return self.preprocessing

    def check_data(self, X: ArrayLike, y: Optional[ArrayLike] = None,
                   name: Optional[str] = None) -> None:
        """Raise DataError if (X, y) cannot be given to fit or evaluate: the
        checks fit runs first, without training. `name` is what messages
        call the data [default: X and y]; a fastnn._validation.DataName
        also makes them count rows as its file's lines."""
        X = self.kernel_inputs(X, name or "X")
        if y is not None:
            self.kernel_targets(X, y, name or "y", one_hot=False)

    def training_labels(self, y: ArrayLike, name: str = "y") -> Optional[Array]:
        """The output unit of each label of y (class names mapped), or None
        when y holds targets rather than class labels. `name` is what
        messages call y."""
        n = len(np.asarray(y))
        _, labels = self.kernel_targets(np.empty((n, 0)), y, name, one_hot=False)
        return labels

    def forward(self, X: ArrayLike) -> Array:
        """The output layer's activations for each row of X, shape (n, sizes[-1])."""
        return self._forward(self.kernel_inputs(X))

    def _forward(self, X: Array) -> Array:
        table, _ = self.plan.table()
        chunk = self._chunk(len(X))
        n_chunks = -(-len(X) // max(chunk, 1))
        # A float32 network whose forward makes no BLAS call (its dense
        # layers on smallgemm.h's kernels: _core.predicts_without_blas)
        # and any network on a single-threaded BLAS give whole chunks to a
        # team of threads, sized by blas.team so that concurrent forwards
        # share get_num_threads(); otherwise the chunks run in turn on the
        # BLAS's threads, except for a convolutional network, whose forward
        # holds the BLAS at one thread for its team (blas.forward_team). A
        # chunk's result does not depend on the team (see fastnn.blas).
        chunks = n_chunks if self.backend == "cython" else 1
        blas_free = (self.backend == "cython" and not self._bf16 and self.dtype == np.float32
                     and self._kernels.predicts_without_blas(table))
        out = np.empty((len(X), self.sizes[-1]), dtype=self.dtype)
        with blas.forward_team(chunks, self.plan.spatial, blas_free) as threads:
            if not blas_free:
                blas.prime(self.dtype)
            work = np.empty(threads * self._kernels.workspace_size(table, chunk, bf16=self._bf16),
                            dtype=self.dtype)
            self._kernels.predict(X, self._params, table, self.slope, work, chunk, out, threads,
                                  bf16=self._bf16)
        return out

    def predict(self, X: ArrayLike) -> Array:
        """Predicted class of each row of X: the argmax of the outputs (with one
        output unit, 1 where it exceeds 0.5), as the class names the network
        was trained with. For regression, the predicted target values: shape
        (n,) with one output, else (n, outputs)."""
        pre = self.preprocessing
        if pre is not None and pre.task == "regression":
            values = pre.restore(self.forward(X))
            return values[:, 0] if values.shape[1] == 1 else values
        labels = predicted_labels(self.forward(X))
        return labels if pre is None else pre.decode(labels)

    def predict_proba(self, X: ArrayLike) -> Array:
        """Class probabilities of each row of X, shape (n, n_classes).

        A softmax output gives its outputs; one sigmoid unit, the two
        columns ``[1 - a, a]`` (as scikit-learn's classifiers); several
        sigmoid units, each unit's probability (multi-label). Other output
        activations do not give probabilities: ConfigError (use forward).
        """
        if self.output not in ("softmax", "sigmoid"):
            raise ConfigError(f"a {self.output!r} output layer does not give probabilities; "
                              f"predict_proba needs a 'softmax' or 'sigmoid' output "
                              f"(forward() gives the outputs as they are)")
        A = self.forward(X)
        return np.hstack([1 - A, A]) if A.shape[1] == 1 else A

    def summary(self, print_fn: Optional[Callable[[str], object]] = print) -> str:
        """A table of the layers (inputs, outputs, activation, parameters)
        and how the network was trained, as ``fastnn info`` prints it.

        Each line goes to `print_fn` (None: nothing printed); returns the text.
        """
        from fastnn.summary import summary_lines

        lines = summary_lines(self)
        if print_fn is not None:
            for line in lines:
                print_fn(line)
        return "\n".join(lines)

    def evaluate(self, X: ArrayLike, y: ArrayLike,
                 name: Optional[str] = None) -> dict[str, float]:
        """Loss and accuracy on (X, y); `name` is what messages call the data
        [default: X and y] (see check_data).

        Returns
        -------
        dict
            ``loss`` (the mean cost), ``accuracy`` (when y holds class labels
            or one-hot rows) and ``n`` (samples); for regression, also
            ``mse``, ``rmse``, ``mae`` and ``r2`` of the predicted values in
            the targets' own units.
        """
        X = self.kernel_inputs(X, name or "X")
        Y, labels = self.kernel_targets(X, y, name or "y", one_hot=False)
        result = self.evaluate_rows(X, Y, labels)
        pre = self.preprocessing
        if pre is not None and pre.task == "regression":
            from fastnn.preprocessing import regression_metrics

            truth = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
            result.update(regression_metrics(truth, pre.restore(self._forward(X))))
        return result

    def evaluate_rows(self, X: Array, Y: Optional[Array],
                      labels: Optional[Array]) -> dict[str, float]:
        """evaluate's loss and accuracy on rows and targets that
        kernel_inputs and kernel_targets gave (internal: for evaluate and
        fastnn.training's validation)."""
        # EVALUATE_CHUNK rows at a time, fewer with many outputs (at most
        # EVALUATE_BUDGET outputs, in whole forward chunks): the outputs, the
        # one-hot targets (Y None: made here from labels) and the loss's
        # temporaries stay bounded however many rows X has (a memory-mapped
        # file larger than memory) and however many classes
        loss_fn, output = get_loss(self.loss).fn, get_activation(self.output)
        loss_sum, n_correct = 0.0, 0
        chunk, rows = self._chunk(EVALUATE_CHUNK), EVALUATE_BUDGET // self.sizes[-1]
        rows = min(EVALUATE_CHUNK, rows // chunk * chunk) if rows >= chunk else max(1, rows)
        for start in range(0, len(X), rows):
            part = slice(start, start + rows)
            A = self._forward(X[part])
            if Y is None:
                assert labels is not None
                target = one_hot_rows(labels[part], A.shape[1], A.dtype)
            else:
                target = Y[part]
            loss_sum += float(loss_fn(A, target, output).sum(dtype=np.float64))
            if labels is not None:
                n_correct += int(np.count_nonzero(predicted_labels(A) == labels[part]))
        result = {"loss": loss_sum / len(X), "n": len(X)}
        if labels is not None:
            result["accuracy"] = n_correct / len(X)
        return result

    def gradient(self, X: ArrayLike, y: ArrayLike) -> Gradient:
        """The mean loss over (X, y) and its gradient, by backpropagation.

        Returns
        -------
        Gradient
            ``(loss, weights, biases)``: the mean cost and the lists of
            dC/dW_l and dC/db_l, shaped like ``self.weights`` and ``self.biases``.
        """
        X = self.kernel_inputs(X)
        Y, _ = self.kernel_targets(X, y)
        table, _ = self.plan.table()
        work = np.empty(self._kernels.workspace_size(table, len(X), bf16=self._bf16),
                        dtype=self.dtype)
        grad = np.empty_like(self._params)
        total = self._kernels.gradient(X, Y, self._params, table, self.slope,
                                       get_loss(self.loss).code, work, grad, bf16=self._bf16)
        views = self.plan.views(grad)
        return Gradient(total / len(X), [W for W, _ in views], [b for _, b in views])

    def save(self, path: PathLike, force: bool = False, weights_only: bool = False) -> None:
        """Write the network to a safetensors model file, atomically.

        The output policy of fastnn.files applies: a directory, FIFO or
        device is refused, a symlink is followed, and an existing file that
        is not a fastnn model is replaced only with ``force=True``.
        Refusals and failures raise ModelFileError with a one-line message.
        With ``weights_only=True`` the optimizer's state is left out (a
        smaller file that predicts the same; training from it starts a new
        optimizer). The same run with the same seed writes the same bytes.
        """
        modelfile.save(self, path, force=force, weights_only=weights_only)

    # The old name of training_record, kept for users' code for now, with a
    # DeprecationWarning. Last in the class: defined earlier, the name
    # would hide the module `training` from the decorators above.
    @property
    def training(self) -> dict[str, Any]:
        """Deprecated: the old name of ``training_record``."""
        warnings.warn("Network.training is now Network.training_record (the old name goes "
                      "in a later version)", DeprecationWarning, stacklevel=2)
        return self.training_record

    @training.setter
    def training(self, record: dict[str, Any]) -> None:
        warnings.warn("Network.training is now Network.training_record (the old name goes "
                      "in a later version)", DeprecationWarning, stacklevel=2)
        self.training_record = record


def _numbers_only(X: Any, name: str) -> Array:
    """Tabular rows given to a network without a columns encoding: their
    numbers, if they are only numbers; else a DataError that says how to
    train for them."""
    from fastnn.table import as_table

    table = as_table(X, source=name)
    block = table.numeric()
    if block is None:
        raise DataError(f"{name} has text or missing values, but this network was trained on "
                        f"numbers only; train it on such rows (fit encodes them) to use them")
    return block


def _check_dtype(dtype: DTypeLike) -> str:
    """The name in DTYPES of a dtype given by name or as a NumPy dtype."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        key = str(np.dtype(dtype))
    except TypeError:
        key = ""
    if key not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    return key


modelfile.register("network", Network)
