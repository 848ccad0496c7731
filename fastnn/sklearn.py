"""scikit-learn estimators trained by fastnn: ``MLPClassifier`` and ``MLPRegressor``.

They take scikit-learn's parameters with scikit-learn's meaning
(``hidden_layer_sizes``, ``activation``, ``alpha``, ``batch_size``,
``learning_rate_init``, ``max_iter``, ``random_state``, ``early_stopping``,
``validation_fraction``, ``n_iter_no_change``, ``tol``, ``warm_start``,
``verbose``, ``shuffle``, ``momentum``, ``nesterovs_momentum``, ``beta_1``,
``beta_2``, ``epsilon``; ``optimizer`` plays the part of ``solver``), and
add what scikit-learn's MLP lacks: more optimizers (momentum, nesterov,
rprop), ``dropout``, ``leaky_relu`` and one activation per hidden layer,
``class_weight``, early stopping on the validation *loss*
(``early_stopping_metric``), ``lr_schedule``, ``init``, ``callbacks`` and
``dtype``.

They compute as scikit-learn's MLP does: in float32 for float32 input, in
float64 for any other (scikit-learn's ``validate_data`` makes it float64).
``dtype="float32"`` or ``"float64"`` fixes the dtype whatever the input;
``"bfloat16"`` computes in mixed precision (see Network).

Where fastnn's own conventions differ, the estimators translate:

- ``alpha`` is scikit-learn's L2 strength: each step adds ``alpha * W / m``
  to the gradient (m the batch's rows, or its weight sum), where
  ``Network.fit``'s ``l2`` (Nielsen's) adds ``l2 * W / n`` over the whole
  training set. The estimators pass ``l2 = alpha * n / m`` (times
  ``n / sum(sample_weight)`` with weights): the same step for every batch of
  ``batch_size`` rows (scikit-learn's last, smaller batch of an epoch gets a
  slightly stronger penalty).
- ``optimizer="sgd"`` is scikit-learn's ``solver="sgd"``: momentum
  ``momentum`` (0.9), Nesterov's when ``nesterovs_momentum`` (the default),
  plain SGD with ``momentum=0``. ``"momentum"`` and ``"nesterov"`` name
  the two kinds directly.
- ``sample_weight`` (times ``class_weight``) is normalised by its sum, as
  scikit-learn does: the weights are rescaled to mean 1 over the training
  rows, which makes a full-batch step exactly scikit-learn's
  ``sum(w g) / sum(w)``. With mini-batches each batch's weights are divided
  by the mean weight of the training set, not of the batch.
- ``n_iter_no_change``: training stops after more than that many epochs
  without improvement, at the epoch scikit-learn stops.
- ``warm_start`` keeps the weights; the optimizer, the schedule and
  ``n_iter_`` start afresh on each ``fit``, while ``partial_fit`` carries
  all of them on.

Two differences remain (tests/test_sklearn_parity.py measures both):
``loss_curve_`` adds the L2 penalty of the weights an epoch ends with, where
scikit-learn averages it over the epoch's batches; and ``epsilon`` is added
as PyTorch's Adam adds it, to the bias-corrected ``sqrt(v)``, where
scikit-learn adds it before the correction (the same epsilon weighs up to
``1 / sqrt(1 - beta_2**t)`` times more here).

Features are used as given, as scikit-learn does: unlike ``Network.fit``,
uint8 inputs are not divided by 255 here (put a scaler in the pipeline).

Requires scikit-learn (``pip install 'fastnn[sklearn]'``).
"""
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # pragma: no cover - exercised without scikit-learn
    raise ImportError(f"fastnn.sklearn needs scikit-learn ({exc}): "
                      f"pip install 'fastnn[sklearn]'") from None

from fastnn._typing import Array, ArrayLike
from fastnn.callbacks import logger
from fastnn.network import Network
from fastnn.schedules import Schedule, parse as parse_schedule
from fastnn.training import sample_weights

# scikit-learn's activation names, and fastnn's
ACTIVATION_NAMES = {"logistic": "sigmoid", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
                    "identity": "identity", "leaky_relu": "leaky_relu"}


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the network,
    the epoch loop with scikit-learn's stopping rules."""

    def __init__(self, hidden_layer_sizes: Union[int, Sequence[int]] = (100,),
                 activation: Union[str, Sequence[str]] = "relu", *, optimizer: str = "adam",
                 alpha: float = 0.0001, batch_size: Union[int, str] = "auto",
                 learning_rate_init: float = 0.001, max_iter: int = 200, shuffle: bool = True,
                 random_state: Union[int, np.random.RandomState, None] = None, tol: float = 1e-4,
                 verbose: Union[bool, int] = False, warm_start: bool = False,
                 momentum: float = 0.9, nesterovs_momentum: bool = True, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 early_stopping_metric: str = "loss", dropout: Union[float, Sequence[float]] = 0.0,
                 slope: float = 0.01, init: str = "xavier",
                 lr_schedule: Union[str, Schedule, None] = None,
                 callbacks: Optional[Sequence[Callable[..., Any]]] = None,
                 dtype: Optional[str] = None) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping_metric = early_stopping_metric
        self.dropout = dropout
        self.slope = slope
        self.init = init
        self.lr_schedule = lr_schedule
        self.callbacks = callbacks
        self.dtype = dtype

    # ----------------------------------------------------------- parameters

    def _hidden(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = [sizes]
        sizes = list(sizes)
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        return sizes

    def _activations(self, n_hidden):
        names = [self.activation] * n_hidden if isinstance(self.activation, str) else list(self.activation)
        if len(names) != n_hidden:
            raise ValueError(f"activation lists one name per hidden layer ({n_hidden}), not "
                             f"{len(names)}")
        unknown = [a for a in names if a not in ACTIVATION_NAMES]
        if unknown:
            raise ValueError(f"Unknown activation {unknown[0]!r}; expected one of "
                             f"{sorted(ACTIVATION_NAMES)}")
        return [ACTIVATION_NAMES[a] for a in names]

    def _check_params(self):
        for name in ("max_iter", "n_iter_no_change"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.early_stopping_metric not in ("loss", "score"):
            raise ValueError(f"early_stopping_metric must be 'loss' or 'score', got "
                             f"{self.early_stopping_metric!r}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size must be 'auto' or an integer >= 1, got {self.batch_size!r}")
        if self.batch_size > n:
            warnings.warn("Got `batch_size` larger than the number of samples; it is clipped",
                          UserWarning)
        return min(self.batch_size, n)

    def _optimizer(self):
        """fastnn's optimizer for self.optimizer: "sgd" is scikit-learn's
        solver="sgd", whose momentum (Nesterov's by default) is on unless
        momentum=0."""
        if self.optimizer == "sgd" and self.momentum > 0:
            return "nesterov" if self.nesterovs_momentum else "momentum"
        return self.optimizer

    def _fit_options(self, n, weight_sum, schedule):
        optimizer = self._optimizer()
        batch_size = n if optimizer == "rprop" else self._batch_size(n)
        # scikit-learn's step adds alpha W / (the batch's rows or weight sum),
        # Nielsen's l2 adds l2 W / n: see the module docstring
        l2 = self.alpha * (n / batch_size) * (n / weight_sum)
        options = dict(lr=self.learning_rate_init, optimizer=optimizer, l2=l2,
                       shuffle=self.shuffle, dropout=self.dropout, lr_schedule=schedule)
        if optimizer != "rprop":
            options["batch_size"] = batch_size
        if optimizer in ("momentum", "nesterov"):
            options["momentum"] = self.momentum
        if optimizer in ("adam", "adamw"):
            options.update(betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        return options

    def _sample_weights(self, Y, sample_weight):
        """sample_weight times class_weight, one per row, or None."""
        class_weight = self._class_weight()
        if sample_weight is None and class_weight is None:
            return None
        labels = Y.argmax(axis=1) if Y.shape[1] > 1 else Y[:, 0].astype(np.int64)
        return sample_weights(sample_weight, class_weight, labels, len(Y), Y.shape[1])

    def _schedule(self, incremental):
        """The learning-rate schedule of this call: a new one on fit, the
        one partial_fit left off otherwise (as scikit-learn keeps its
        optimizer between partial_fit calls)."""
        schedule = parse_schedule(self.lr_schedule)     # a copy: never changed by fit
        state = self.network_.training_record.get("lr_schedule_state")
        if incremental and state:
            schedule.load_state_dict(state)
        return schedule

    # ---------------------------------------------------------------- fitting

    def _dtype(self, X):
        """The dtype of the network's arrays: `dtype`'s (float32 for
        "bfloat16"), or else X's, as scikit-learn's MLP does (float32 or
        float64: validate_data makes any other input float64)."""
        if self.dtype is None:
            return X.dtype
        from fastnn.network import DTYPES, _check_dtype

        return DTYPES[_check_dtype(self.dtype)]

    def _new_network(self, n_features, n_outputs, output, loss, random_state, dtype):
        hidden = self._hidden()
        return Network([n_features, *hidden, n_outputs],
                       activation=self._activations(len(hidden)), output=output, loss=loss,
                       dtype=dtype, init=self.init, slope=self.slope,
                       seed=int(random_state.randint(np.iinfo(np.int32).max)))

    def _fit(self, X, Y, sample_weight, incremental):
        """Train on X and the encoded targets Y for max_iter epochs (one for
        partial_fit), with scikit-learn's stopping rules."""
        self._check_params()
        random_state = check_random_state(self.random_state)
        # (when not fresh, validate_data(reset=False) has checked n_features)
        fresh = not (incremental or self.warm_start) or not hasattr(self, "network_")
        if fresh:
            output, loss = self._output_and_loss()
            self.network_ = self._new_network(X.shape[1], Y.shape[1], output, loss, random_state,
                                              self.dtype or self._dtype(X))
            self.loss_curve_ = []
            self.validation_loss_curve_ = []
            self.validation_scores_ = []
            self.best_loss_ = np.inf
            self.best_validation_score_ = -np.inf
            self.best_validation_loss_ = np.inf
            self.t_ = 0
            self.n_iter_ = 0
            self._no_improvement = 0
        elif not incremental:
            # warm start: the weights carry over; the optimizer starts afresh
            # and n_iter_ counts this fit's epochs, as in scikit-learn
            self.network_.optimizer_state = None
            self.n_iter_ = 0
        weights = self._sample_weights(Y, sample_weight)
        validation = None
        if self.early_stopping and not incremental:
            stratify = Y.argmax(axis=1) if self._stratify() else None
            X, X_val, Y, Y_val, *split = train_test_split(
                X, Y, *(() if weights is None else (weights,)),
                test_size=self.validation_fraction, random_state=random_state, stratify=stratify)
            weights = split[0] if split else None
            validation = (X_val, Y_val)
        weight_sum = len(X)
        if weights is not None and weights.sum() > 0:
            # normalised by their sum, as scikit-learn's loss is: mean 1
            weight_sum = float(weights.sum())
            weights = weights * (len(X) / weight_sum)
        epochs = 1 if incremental else self.max_iter
        best = {"params": None}

        def after_epoch(epoch, metrics):
            return self._after_epoch(metrics, validation, best, len(X), incremental)

        self.network_.fit(X, Y, epochs=epochs, sample_weight=weights,
                          validation_data=validation, callback=after_epoch,
                          verbose=int(bool(self.verbose)),
                          **self._fit_options(len(X), weight_sum, self._schedule(incremental)))
        if best["params"] is not None:
            self.network_.flat_params[...] = best["params"]
        if not incremental and not self._converged and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic optimizer: maximum iterations ({self.max_iter}) reached "
                          f"and the optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def _after_epoch(self, metrics, validation, best, n, incremental):
        """scikit-learn's bookkeeping and stopping rules after each epoch:
        no improvement by more than tol for n_iter_no_change epochs stops
        training; the watched value is the training loss, or with early
        stopping the validation loss (or score, with
        early_stopping_metric="score"), whose best weights are kept."""
        self.n_iter_ += 1
        self.t_ += n
        loss = metrics["loss"] + metrics.get("penalty", 0.0)   # as scikit-learn reports it
        self.loss_curve_.append(loss)
        self._converged = False
        if validation is not None:
            self.validation_loss_curve_.append(metrics["val_loss"])
            self.validation_scores_.append(self._score_encoded(*validation))
            if self.early_stopping_metric == "loss":
                value, best_value = -metrics["val_loss"], -self.best_validation_loss_
            else:
                value, best_value = self.validation_scores_[-1], self.best_validation_score_
            self._no_improvement = (self._no_improvement + 1 if value < best_value + self.tol
                                    else 0)
            if value > best_value:
                best["params"] = self.network_.flat_params.copy()
            self.best_validation_score_ = max(self.best_validation_score_, self.validation_scores_[-1])
            self.best_validation_loss_ = min(self.best_validation_loss_, metrics["val_loss"])
        else:
            self._no_improvement = (self._no_improvement + 1 if loss > self.best_loss_ - self.tol
                                    else 0)
            self.best_loss_ = min(self.best_loss_, loss)
        for callback in self.callbacks or ():
            if callback(self, self.n_iter_, dict(metrics)) is False:
                return False
        # more than n_iter_no_change epochs, as scikit-learn counts
        if not incremental and self._no_improvement > self.n_iter_no_change:
            self._converged = True
            logger.info("Training loss did not improve more than tol=%s for %d consecutive "
                        "epochs. Stopping.", self.tol, self.n_iter_no_change)
            return False
        return True

    def _class_weight(self):
        return None

    # ------------------------------------------------------------- results

    def _validate_for_predict(self, X):
        check_is_fitted(self, "network_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return X

    @property
    def coefs_(self) -> list[Array]:
        """The weights of each layer, shape (n_in, n_out), as in scikit-learn."""
        check_is_fitted(self, "network_")
        return [W.copy() for W in self.network_.weights]

    @property
    def intercepts_(self) -> list[Array]:
        """The biases of each layer."""
        check_is_fitted(self, "network_")
        return [b.copy() for b in self.network_.biases]

    @property
    def n_layers_(self) -> int:
        check_is_fitted(self, "network_")
        return len(self.network_.sizes)

    @property
    def n_outputs_(self) -> int:
        check_is_fitted(self, "network_")
        return self.network_.sizes[-1]

    @property
    def out_activation_(self) -> str:
        check_is_fitted(self, "network_")
        return {"sigmoid": "logistic"}.get(self.network_.output, self.network_.output)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by fastnn.

    Multi-class targets get a softmax output and categorical cross-entropy,
    binary ones a single sigmoid unit and binary cross-entropy, multi-label
    (an indicator matrix) one sigmoid unit per label. See the module
    docstring for the parameters; ``class_weight`` is a dict or "balanced".

    Attributes
    ----------
    classes_, n_features_in_, feature_names_in_, loss_curve_,
    validation_loss_curve_, validation_scores_, best_loss_,
    best_validation_score_, n_iter_, t_, coefs_, intercepts_, network_
    """

    def __init__(self, hidden_layer_sizes: Union[int, Sequence[int]] = (100,),
                 activation: Union[str, Sequence[str]] = "relu", *, optimizer: str = "adam",
                 alpha: float = 0.0001, batch_size: Union[int, str] = "auto",
                 learning_rate_init: float = 0.001, max_iter: int = 200, shuffle: bool = True,
                 random_state: Union[int, np.random.RandomState, None] = None, tol: float = 1e-4,
                 verbose: Union[bool, int] = False, warm_start: bool = False,
                 momentum: float = 0.9, nesterovs_momentum: bool = True, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 early_stopping_metric: str = "loss", dropout: Union[float, Sequence[float]] = 0.0,
                 slope: float = 0.01, init: str = "xavier",
                 lr_schedule: Union[str, Schedule, None] = None,
                 callbacks: Optional[Sequence[Callable[..., Any]]] = None,
                 dtype: Optional[str] = None,
                 class_weight: Union[str, Mapping[Any, float], None] = None) -> None:
        super().__init__(
            hidden_layer_sizes, activation, optimizer=optimizer, alpha=alpha,
            batch_size=batch_size, learning_rate_init=learning_rate_init, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, early_stopping=early_stopping,
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            early_stopping_metric=early_stopping_metric, dropout=dropout, slope=slope,
            init=init, lr_schedule=lr_schedule, callbacks=callbacks, dtype=dtype)
        self.class_weight = class_weight

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _output_and_loss(self):
        return ("sigmoid" if self._kind in ("binary", "multilabel") else "softmax"), "cross_entropy"

    def _stratify(self):
        return self._kind == "multiclass"

    def _class_weight(self):
        if self.class_weight is None:
            return None
        if self._kind == "multilabel":
            raise ValueError("class_weight is not supported for multi-label targets")
        if isinstance(self.class_weight, str):
            return self.class_weight
        # keyed by the user's class labels; the network knows them as 0..k-1
        index = {c: k for k, c in enumerate(self.classes_.tolist())}
        unknown = [c for c in self.class_weight if c not in index]
        if unknown:
            raise ValueError(f"class_weight has label {unknown[0]!r}, not in classes_ "
                             f"{self.classes_.tolist()}")
        return {index[c]: w for c, w in self.class_weight.items()}

    def _encode(self, y, dtype, classes=None, reset=True):
        """Targets for the network, setting classes_ and the kind of task
        (binary, multiclass, multilabel) on the first fit."""
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)      # a column vector is not multi-label
        if reset:
            self._binarizer = LabelBinarizer()
            self._binarizer.fit(y if classes is None else classes)
            self.classes_ = self._binarizer.classes_
            self._kind = ("multilabel" if self._binarizer.y_type_ == "multilabel-indicator"
                          else "binary" if len(self.classes_) <= 2 else "multiclass")
        elif not set(np.unique(y) if self._kind != "multilabel" else ()) <= set(self.classes_.tolist()):
            raise ValueError(f"y has classes not in classes_ {self.classes_.tolist()}")
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the "
                             f"data, but the data contains only one class: {self.classes_[0]!r}")
        return self._binarizer.transform(y).astype(dtype)

    def fit(self, X: ArrayLike, y: ArrayLike,
            sample_weight: Optional[ArrayLike] = None) -> "MLPClassifier":
        """Fit the network to X (n_samples, n_features) and class labels y
        (or a label indicator matrix for multi-label classification)."""
        X, y = _validate_xy(self, X, y, dtype=(np.float64, np.float32), multi_output=True,
                             reset=not (self.warm_start and hasattr(self, "network_")))
        check_classification_targets(y)
        Y = self._encode(y, self._dtype(X),
                         reset=not (self.warm_start and hasattr(self, "network_")))
        return self._fit(X, Y, _weights(sample_weight, len(X)), incremental=False)

    def partial_fit(self, X: ArrayLike, y: ArrayLike, classes: Optional[ArrayLike] = None,
                    sample_weight: Optional[ArrayLike] = None) -> "MLPClassifier":
        """One epoch over (X, y); the first call needs `classes` (all labels)."""
        first = not hasattr(self, "network_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        X, y = _validate_xy(self, X, y, dtype=(np.float64, np.float32), multi_output=True,
                             reset=first)
        check_classification_targets(y)
        if not first and classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={np.asarray(classes).tolist()}` is not the same as on the first call "
                             f"to partial_fit, was: {self.classes_.tolist()}")
        Y = self._encode(y, self._dtype(X), classes=classes, reset=first)
        return self._fit(X, Y, _weights(sample_weight, len(X)), incremental=True)

    def predict_proba(self, X: ArrayLike) -> Array:
        """Class probabilities, shape (n_samples, n_classes) (multi-label: the
        probability of each label)."""
        X = self._validate_for_predict(X)
        A = self.network_.forward(X).astype(np.float64)
        if self._kind == "binary":
            return np.hstack([1 - A, A])
        return A

    def predict_log_proba(self, X: ArrayLike) -> Array:
        return np.log(np.maximum(self.predict_proba(X), np.finfo(np.float64).tiny))

    def predict(self, X: ArrayLike) -> Array:
        """The predicted class of each sample (multi-label: an indicator matrix)."""
        proba = self.predict_proba(X)
        if self._kind == "multilabel":
            return (proba > 0.5).astype(int)
        return self.classes_[proba.argmax(axis=1)]

    def _score_encoded(self, X, Y):
        A = self.network_.forward(X)
        if self._kind == "multiclass":
            return accuracy_score(Y.argmax(axis=1), A.argmax(axis=1))
        return accuracy_score(Y > 0.5, A > 0.5)


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained by fastnn: identity output,
    the squared error 1/2 ||y - a||^2 (averaged), one or several outputs.

    See the module docstring for the parameters.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _output_and_loss(self):
        return "identity", "mse"

    def _stratify(self):
        return False

    def fit(self, X: ArrayLike, y: ArrayLike,
            sample_weight: Optional[ArrayLike] = None) -> "MLPRegressor":
        """Fit the network to X (n_samples, n_features) and targets y (n_samples,)
        or (n_samples, n_outputs)."""
        X, y = _validate_xy(self, X, y, dtype=(np.float64, np.float32), multi_output=True,
                             y_numeric=True,
                             reset=not (self.warm_start and hasattr(self, "network_")))
        return self._fit(X, self._encode(y, self._dtype(X)), _weights(sample_weight, len(X)),
                         incremental=False)

    def partial_fit(self, X: ArrayLike, y: ArrayLike,
                    sample_weight: Optional[ArrayLike] = None) -> "MLPRegressor":
        """One epoch over (X, y)."""
        first = not hasattr(self, "network_")
        X, y = _validate_xy(self, X, y, dtype=(np.float64, np.float32), multi_output=True,
                             y_numeric=True, reset=first)
        return self._fit(X, self._encode(y, self._dtype(X)), _weights(sample_weight, len(X)),
                         incremental=True)

    def _encode(self, y, dtype):
        self._one_output = y.ndim == 1
        return np.asarray(y, dtype=dtype).reshape(len(y), -1)

    def predict(self, X: ArrayLike) -> Array:
        """The predicted targets, shape (n_samples,) or (n_samples, n_outputs)."""
        X = self._validate_for_predict(X)
        A = self.network_.forward(X).astype(np.float64)
        return A[:, 0] if self._one_output else A

    def _score_encoded(self, X, Y):
        return r2_score(Y, self.network_.forward(X))


def _validate_xy(estimator: BaseEstimator, X: ArrayLike, y: ArrayLike,
                 **kwargs: Any) -> tuple[Array, Array]:
    """scikit-learn's validate_data(estimator, X, y, ...), typed."""
    checked: tuple[Array, Array] = validate_data(estimator, X, y, **kwargs)
    return checked


def _weights(sample_weight: Optional[ArrayLike], n: int) -> Optional[Array]:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n, float(w))
    return w
