"""What a network does to raw rows and labels around its layers: the task,
class names, feature scaling and target standardisation.

A ``Preprocessing`` is learned from the training data (``Network.prepare``,
called by ``fit`` when a task or a scaling is asked for), kept in the model
file's ``preprocessing`` header field and applied by ``forward``,
``predict``, ``evaluate`` and every export, so that all of them take the
rows and labels a user has, not the ones the kernels see:

- features: ``(X - offset) / scale`` per column (``standard``: mean and
  standard deviation; ``minmax``: minimum and range), ``X / 255``
  (``pixels``) or as given (``none``); a constant column has scale 1, so it
  becomes 0, never NaN;
- classification: the class names (strings, or numbers such as 3, 7, 9)
  are mapped to output units 0..k-1 in sorted order, and back;
- regression: each target column is standardised for training, and the
  network's outputs are turned back into target values by ``predict``.

Which task and which classes labels mean is decided in one place,
``fastnn._validation.infer_targets``.
"""
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np

from fastnn._validation import (MAX_CLASSES, TASKS, check_finite_targets, infer_targets,
                                listing, row_number)
from fastnn.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    from fastnn.columns import Columns

#: Feature scalings by name (``auto`` is resolved to one of them by `resolve_scale`).
SCALINGS = ("standard", "minmax", "pixels", "none")
#: What ``pixels`` divides a value by: uint8 rows are divided by it in the
#: kernels (fastnn._core; fastnn._reference._as_float), other rows by
#: `Scaling.transform`.
PIXEL_MAX = 255
#: The longest class or target name kept in a model file.
MAX_NAME = 256


def auto_scale(dtype, source=None):
    """What ``scale="auto"`` means for rows of `dtype` (None: encoded raw
    columns), read from a data file of format `source` if given: ``none``
    for Nielsen's pickle (images already in [0, 1]), ``pixels`` for IDX
    images and other uint8 rows (a CSV's are tabular, whatever their
    values), else ``standard``. The one place the rule lives: data files
    (``fastnn.data.Data.auto_scale``) and ``Network.prepare`` ask it."""
    if source == "pickle":
        return "none"
    if source == "idx" or (source != "csv" and dtype is not None
                           and np.dtype(dtype) == np.uint8):
        return "pixels"
    return "standard"


def resolve_scale(scale, auto):
    """The scaling `scale` names; ``auto`` is `auto` (see `auto_scale`)."""
    if scale == "auto":
        return auto
    if scale not in SCALINGS:
        raise ConfigError(f"scale must be one of {['auto', *SCALINGS]}, not {scale!r}")
    return scale


@dataclass
class Scaling:
    """Feature scaling ``(X - offset) / scale``, learned from training rows.

    `offset` and `scale` are float64 arrays of one value per feature for
    ``standard`` and ``minmax``, None for ``pixels`` (a division by 255, as
    the kernels do for uint8) and ``none``.
    """

    kind: str
    offset: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None

    @classmethod
    def fit(cls, kind, X):
        """Learn `kind` from training rows X (already checked)."""
        if kind not in SCALINGS:
            raise ConfigError(f"scale must be one of {['auto', *SCALINGS]}, not {kind!r}")
        if kind in ("pixels", "none"):
            return cls(kind)
        offset = np.empty(X.shape[1])
        spread = np.empty(X.shape[1])
        # a block of columns at a time in float64: bounded temporaries
        step = max(1, (1 << 20) // max(len(X), 1))
        for start in range(0, X.shape[1], step):
            block = np.asarray(X[:, start:start + step], dtype=np.float64)
            if kind == "standard":
                offset[start:start + step], spread[start:start + step] = _mean_std(block)
            else:
                low = block.min(axis=0)
                offset[start:start + step] = low
                with np.errstate(over="ignore"):
                    spread[start:start + step] = block.max(axis=0) - low
        _check_spread(spread, offset, kind, "feature")
        # a constant column (or one too narrow to divide by) becomes 0
        spread[~(spread > 1e-12 * np.maximum(np.abs(offset), 1))] = 1.0
        return cls(kind, offset, spread)

    def transform(self, X, dtype):
        """Checked rows X as the kernels take them: uint8 stays uint8 for
        ``pixels`` (the kernels divide it by 255), else `dtype`."""
        if self.kind == "pixels" and X.dtype == np.uint8:
            return X
        # scaled in float64, then rounded to dtype, a block of rows at a time:
        # 1e39 scales into float32's range where float32(1e39) would be inf
        # (Network._inputs names a value that overflows all the same)
        out = np.empty(X.shape, dtype=dtype)
        step = max(1, (1 << 20) // max(X.shape[1], 1))
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, len(X), step):
                block = np.asarray(X[start:start + step], dtype=np.float64)
                if self.kind == "pixels":
                    block = block / PIXEL_MAX
                elif self.kind != "none":
                    block = standardised(block, self.offset, self.scale)
                out[start:start + step] = block
        return out

    def describe(self):
        return {"standard": "standard (mean 0, variance 1, learned from the training data)",
                "minmax": "min-max to [0, 1] (learned from the training data)",
                "pixels": "pixels divided by 255",
                "none": "none (features used as given)"}[self.kind]

    def to_dict(self):
        d = {"kind": self.kind}
        if self.offset is not None:
            d.update(offset=self.offset.tolist(), scale=self.scale.tolist())
        return d

    @classmethod
    def from_dict(cls, d):
        if d.get("offset") is None:
            return cls(d["kind"])
        return cls(d["kind"], np.array(d["offset"], np.float64),
                   np.array(d["scale"], np.float64))


@dataclass(frozen=True)
class InputScaling:
    """How a raw input row becomes what a network's layers compute on: the
    one description that the model file (``input_scaling``), ``summary``,
    `fold` and every exporter read (`input_scaling` makes it).

    Attributes
    ----------
    kind : {"standard", "minmax", "pixels", "none"}
        The scaling applied: the stored one, or without one ``pixels`` for
        a network trained on uint8 rows (the kernels divide them by
        PIXEL_MAX) and ``none`` for one trained on floats.
    kernel_dtype : {"uint8", "float32", "float64"} or None
        What the kernels were given in training (``Network.input_dtype``):
        uint8 pixels, divided by PIXEL_MAX in the network's dtype by the
        kernels themselves, or rows already scaled; None before any fit.
    offset, scale : float64 arrays or None
        ``(x - offset) / scale`` per feature, for ``standard`` and ``minmax``.
    """

    kind: str
    kernel_dtype: Optional[str] = None
    offset: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None

    @property
    def in_kernels(self):
        """Whether the kernels do the scaling: uint8 pixels, divided by
        PIXEL_MAX in the network's dtype (an export does the same division)."""
        return self.kind == "pixels" and self.kernel_dtype == "uint8"

    @property
    def divisor(self):
        """PIXEL_MAX where the kernels divide the rows they are given by it, else None."""
        return PIXEL_MAX if self.in_kernels else None

    @property
    def factor(self):
        """The factor the kernels apply to their inputs (``Network.input_scale``)."""
        return 1 / PIXEL_MAX if self.in_kernels else 1.0

    def record(self):
        """The model file's ``input_scaling`` entry (formats 1 to 3)."""
        return {"input_dtype": self.kernel_dtype, "scale": self.factor}

    def text(self):
        """What happens to the inputs, in a few words (for ``summary``)."""
        return ("uint8 pixels divided by 255" if self.in_kernels else
                "used as given" if self.kind == "none" else Scaling(self.kind).describe())


def input_scaling(pre, input_dtype):
    """The InputScaling of a network with preprocessing `pre` (or None) that
    was trained on rows of `input_dtype` (or None): the one place that says
    what a uint8 input means (pixels, divided by PIXEL_MAX)."""
    scaling = None if pre is None else pre.scaling
    if scaling is None:
        return InputScaling("pixels" if input_dtype == "uint8" else "none", input_dtype)
    return InputScaling(scaling.kind, input_dtype, scaling.offset, scaling.scale)


@dataclass
class Preprocessing:
    """A network's task, class names, feature scaling and target scaling.

    Attributes
    ----------
    task : {"classification", "regression"} or None
        None: the labels are used as in fastnn before tasks (integer labels
        are output units, float arrays are targets).
    classes : list or None
        For classification, the class of each output unit (of unit 0 and 1
        with a single output unit): str, int or float names.
    scaling : Scaling or None
        None: inputs as given, uint8 divided by 255 by the kernels.
    target_mean, target_scale : float64 arrays or None
        For regression, what each target column was standardised with.
    target_names : list of str or None
        The target columns' names (from a CSV header), for ``predict``.
    columns : fastnn.columns.Columns or None
        For tabular rows (a CSV with a header, text or missing values, a
        DataFrame): each raw column's kind, categories and missing-value
        fill, applied before the scaling (which then leaves the 0/1 units of
        categories and missing values as they are). None: rows are numbers
        used as given.
    """

    task: Optional[str] = None
    classes: Optional[list] = None
    scaling: Optional[Scaling] = None
    target_mean: Optional[np.ndarray] = None
    target_scale: Optional[np.ndarray] = None
    target_names: Optional[list] = field(default=None)
    columns: Optional["Columns"] = None

    # ------------------------------------------------------------- learning

    @classmethod
    def learn(cls, X, y, n_outputs, task=None, scale=None, name="y", columns=None):
        """Learn from training rows X (checked rows, or with `columns` raw rows
        that it encodes) and raw labels y for a network of `n_outputs`
        units. Raises DataError when the labels do not fit."""
        if columns is not None:
            X = columns.encode(X)
        pre = cls(scaling=None if scale is None else Scaling.fit(scale, X), columns=columns)
        if columns is not None and pre.scaling is not None and pre.scaling.offset is not None:
            units = ~columns.numeric_units()
            pre.scaling.offset[units] = 0.0
            pre.scaling.scale[units] = 1.0
        y_arr = np.asarray(y)
        if task is None and y_arr.dtype.kind in "USO":
            task = "classification"    # text can only name classes
        if task is None:
            return pre
        decided = infer_targets(y_arr, task, name)
        pre.task = decided.task
        if decided.task == "classification":
            classes = decided.classes
            if _is_identity(classes) and len(classes) <= max(n_outputs, 2):
                # labels that are unit numbers keep them (a subset of MNIST's
                # digits): an output layer wider than the labels is allowed,
                # its units above the largest label being classes not seen
                if n_outputs > MAX_CLASSES:
                    raise DataError(f"{name} has {len(classes)} classes ({listing(classes)}), but "
                                    f"the output layer has {n_outputs:,} units, and a "
                                    f"classifier has at most {MAX_CLASSES:,} (one unit per "
                                    f"class); give it {len(classes)} units")
                classes = list(range(max(n_outputs, 2)))
            if len(classes) != max(n_outputs, 2):
                raise DataError(f"{name} has {len(classes)} classes ({listing(classes)}), but the "
                                f"output layer has {n_outputs} unit(s)"
                                + (" (one unit takes 2 classes)" if n_outputs == 1 else ""))
            for c in classes:
                if isinstance(c, str) and len(c) > MAX_NAME:
                    raise DataError(f"{name} has a class name of {len(c)} characters; fastnn "
                                    f"keeps names of at most {MAX_NAME}")
            pre.classes = classes
        else:
            Y = _float_targets(y_arr, n_outputs, name)
            pre.target_mean, spread = _mean_std(Y)
            _check_spread(spread, pre.target_mean, "standard", f"{name} column")
            spread[~(spread > 1e-12 * np.maximum(np.abs(pre.target_mean), 1))] = 1.0
            pre.target_scale = spread
        return pre

    # ------------------------------------------------------------ applying

    def encode_X(self, X, name="X"):
        """Raw rows X as the network's inputs before scaling: encoded by
        `columns` (see fastnn.columns), or X itself without them."""
        return X if self.columns is None else self.columns.encode(X, name)

    def transform_X(self, X, dtype):
        """Checked rows X as the kernels take them."""
        return X if self.scaling is None else self.scaling.transform(X, dtype)

    def encode(self, y, n_outputs, name="y"):
        """Raw labels or targets y as what the network is trained on: class
        indices for classification, standardised (n, n_outputs) targets for
        regression, y itself otherwise."""
        if self.task == "classification":
            return self.class_indices(y, name)
        if self.task == "regression":
            Y = _float_targets(np.asarray(y), n_outputs, name)
            return standardised(Y, self.target_mean, self.target_scale)
        return y

    def class_indices(self, y, name="y"):
        """The output unit of each label of y; DataError naming the first label
        that is not one of the classes."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim == 2 and _is_identity(self.classes) and y.dtype.kind in "biuf":
            return y          # one-hot rows, checked as targets
        if y.ndim != 1:
            raise DataError(f"{name} must hold one class label per sample, not shape {y.shape}")
        if _is_identity(self.classes) and y.dtype.kind in "biuf":
            return y          # unit numbers: checked against the layer as before
        table = {_key(c): k for k, c in enumerate(self.classes)}
        keys = _keys(y)
        out = np.empty(len(y), np.int64)
        for i, key in enumerate(keys):
            k = table.get(key)
            if k is None:
                raise DataError(f"{name} has label {_shown(y[i])} at row {row_number(name, i)}, "
                                f"which is not one of the model's classes "
                                f"({listing(self.classes)})")
            out[i] = k
        return out

    def decode(self, indices):
        """Class names of output unit numbers (an array of names)."""
        if self.classes is None or _is_identity(self.classes):
            return indices
        names = np.array(self.classes, dtype=object)
        if all(isinstance(c, str) for c in self.classes):
            names = np.array(self.classes)
        elif all(isinstance(c, int) for c in self.classes):
            names = np.array(self.classes, dtype=np.int64)
        return names[indices]

    def restore(self, A):
        """Network outputs as target values (regression), else A. A value
        past float64's range (targets standardised from near +-1.7e308, an
        output a little beyond the training targets') is +-inf, said as it
        is, without a warning."""
        if self.task != "regression":
            return A
        with np.errstate(over="ignore"):
            return A.astype(np.float64) * self.target_scale + self.target_mean

    # ------------------------------------------------------------- describe

    def task_text(self):
        if self.task == "classification":
            return f"classification, {len(self.classes)} classes ({listing(self.classes)})"
        if self.task == "regression":
            n = len(self.target_mean)
            names = f" ({listing(self.target_names)})" if self.target_names else ""
            return f"regression, {n} target{'s' if n > 1 else ''}{names}, standardised"
        return "not stated (labels used as output units)"

    def scaling_text(self):
        if self.scaling is None:
            return "as given (uint8 pixels divided by 255)"
        return self.scaling.describe()

    def class_names(self):
        """The classes as display strings, or None."""
        return None if self.classes is None else [str(c) for c in self.classes]

    # --------------------------------------------------------------- files

    def to_dict(self):
        d = {"task": self.task, "classes": self.classes,
             "scaling": None if self.scaling is None else self.scaling.to_dict()}
        if self.target_mean is not None:
            d["targets"] = {"mean": self.target_mean.tolist(),
                            "scale": self.target_scale.tolist(), "names": self.target_names}
        if self.columns is not None:
            d["columns"] = self.columns.to_dict()
        return d

    @classmethod
    def from_dict(cls, d):
        """From the checked header field (see `schema`)."""
        if d is None:
            return None
        pre = cls(task=d.get("task"), classes=d.get("classes"),
                  scaling=None if d.get("scaling") is None else Scaling.from_dict(d["scaling"]))
        if d.get("columns") is not None:
            from fastnn.columns import Columns

            pre.columns = Columns.from_dict(d["columns"])
        targets = d.get("targets")
        if targets is not None:
            pre.target_mean = np.array(targets["mean"], np.float64)
            pre.target_scale = np.array(targets["scale"], np.float64)
            pre.target_names = targets.get("names")
        return pre


# ----------------------------------------------------------------- schema

def schema(max_units):
    """The spec of the ``preprocessing`` header field (fastnn.schema), shared
    by every model format version."""
    from fastnn.columns import schema as columns_schema
    from fastnn.schema import Int, ListOf, Maybe, OneOf, Real, Record, Text

    values = ListOf(Real(), 1, max_units)
    return Maybe(Record(
        optional={
            "task": Maybe(Text(choices=TASKS)),
            "classes": Maybe(ListOf(OneOf(Int(), Real(), Text(MAX_NAME)), 2, MAX_CLASSES)),
            "scaling": Maybe(Record(required={"kind": Text(choices=SCALINGS)},
                                    optional={"offset": values,
                                              "scale": ListOf(Real(0, lo_open=True), 1,
                                                              max_units)})),
            "targets": Maybe(Record(required={"mean": values,
                                              "scale": ListOf(Real(0, lo_open=True), 1,
                                                              max_units)},
                                    optional={"names": Maybe(ListOf(Text(MAX_NAME), 1,
                                                                    max_units))})),
            "columns": Maybe(columns_schema(max_units)),
        },
        defaults={"task": None, "classes": None, "scaling": None, "targets": None,
                  "columns": None}))


def check_fields(pre, n_inputs, n_outputs):
    """Checks of a checked ``preprocessing`` field against the network's sizes
    (raises SchemaError)."""
    from fastnn.columns import check_field
    from fastnn.schema import SchemaError

    if pre is None:
        return
    check_field(pre["columns"], n_inputs)
    scaling, targets, classes = pre["scaling"], pre["targets"], pre["classes"]
    if scaling is not None:
        per_feature = scaling["kind"] in ("standard", "minmax")
        for key in ("offset", "scale"):
            have = scaling.get(key)
            if per_feature and (have is None or len(have) != n_inputs):
                raise SchemaError(f"preprocessing.scaling.{key}",
                                  f"a list of {n_inputs} numbers, one per input", have)
            if not per_feature and have is not None:
                raise SchemaError(f"preprocessing.scaling.{key}",
                                  f"absent for {scaling['kind']} scaling", have)
    if classes is not None:
        if pre["task"] != "classification" or len(classes) != max(n_outputs, 2):
            raise SchemaError("preprocessing.classes", f"{max(n_outputs, 2)} class names of a "
                              f"classification network", classes)
        if len({_key(c) for c in classes}) != len(classes):
            raise SchemaError("preprocessing.classes", "distinct names", classes)
    if pre["task"] == "classification" and classes is None:
        raise SchemaError("preprocessing.classes", "present for classification", None)
    if (targets is None) != (pre["task"] != "regression"):
        raise SchemaError("preprocessing.targets", "present for regression only", targets)
    if targets is not None:
        for key in ("mean", "scale", "names"):
            if targets.get(key) is not None and len(targets[key]) != n_outputs:
                raise SchemaError(f"preprocessing.targets.{key}",
                                  f"a list of {n_outputs} items, one per output", targets[key])


# ---------------------------------------------------------------- helpers

def _is_identity(classes):
    return classes is not None and all(type(c) is int and c == k for k, c in enumerate(classes))


def _key(value):
    """A dictionary key under which 3, 3.0 and np.int64(3) are one class and
    "3" another."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool):
        return ("n", float(value))
    return ("n", float(value))


def _keys(y):
    if y.dtype.kind in "US":
        return [("s", v) for v in y.astype(str).tolist()]
    if y.dtype.kind == "O":
        return [_key(v) if isinstance(v, (str, int, float, np.generic)) else ("?", repr(v))
                for v in y.tolist()]
    return [("n", v) for v in y.astype(np.float64).tolist()]


def _shown(value):
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return repr(value) if isinstance(value, str) else str(value)


def _mean_std(block):
    """The mean and standard deviation of each column of a float64 array,
    computed on the columns scaled by a power of two (exact), so that they
    do not overflow where they are themselves finite (values near 1e308)."""
    if len(block) == 0:
        return block.mean(axis=0), block.std(axis=0)
    top = np.abs(block).max(axis=0)
    unit = np.ldexp(1.0, np.frexp(top)[1] - 1)     # top / 2 < unit <= top, a power of 2
    unit[~(top > 0)] = 1.0
    scaled = block / unit
    return scaled.mean(axis=0) * unit, scaled.std(axis=0) * unit


def standardised(Y, offset, scale):
    """(Y - offset) / scale of a finite float64 Y, without overflowing where
    the result is finite: targets of -1.7e308 and +1.7e308 have a finite
    mean and spread, but -1.7e308 - mean is -inf in float64. Such entries
    are computed as Y / scale - offset / scale instead (the others exactly
    as before), without a warning."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (Y - offset) / scale
        bad = ~np.isfinite(out)
        if bad.any():
            again = np.broadcast_to(Y / scale - offset / scale, out.shape)
            out[bad] = again[bad]
    return out


def _check_spread(spread, offset, kind, what):
    """DataError for a learned scaling that float64 cannot hold (a min-max
    range past 1.8e308): the model file keeps only finite numbers."""
    bad = ~(np.isfinite(spread) & np.isfinite(offset))
    if bad.any():
        j = int(np.argmax(bad))
        raise DataError(f"{what} {j} spans more than float64 holds ({kind} scaling gives "
                        f"{float(spread[j]):g}); divide it down, or do not scale it")


def _float_targets(y, n_outputs, name):
    """Regression targets as a float64 (n, n_outputs) array."""
    if y.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numbers for regression, not {y.dtype}")
    Y = y[:, None] if y.ndim == 1 else y
    if Y.ndim != 2 or Y.shape[1] != n_outputs:
        have = (f"{Y.shape[1]} target(s) per row" if Y.ndim == 2
                else f"targets of shape {y.shape}")
        raise DataError(f"{name} has {have}, but the output layer has {n_outputs} unit(s), "
                        f"one per target")
    Y = Y.astype(np.float64)
    check_finite_targets(Y, name, "target")
    return Y


@np.errstate(over="ignore", invalid="ignore")   # targets near 1e308: MSE inf, no warnings
def regression_metrics(y_true, y_pred):
    """MSE, RMSE, MAE and R² (averaged over the outputs, as scikit-learn's
    r2_score) of predictions against targets, both (n, k) or (n,)."""
    T = np.asarray(y_true, np.float64).reshape(len(y_true), -1)
    P = np.asarray(y_pred, np.float64).reshape(len(y_pred), -1)
    err = P - T
    mse = float(np.mean(err ** 2))
    total = ((T - T.mean(axis=0)) ** 2).sum(axis=0)
    residual = (err ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 0, 1 - residual / total, np.where(residual > 0, 0.0, 1.0))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err))),
            "r2": float(r2.mean())}


def fold(net):
    """(a copy of `net` that takes raw rows, rest): the network's input
    scaling (`input_scaling`) folded into its first layer where it can take
    it (``((x - o) / s) @ W + b = x @ (W / s) + (b - (o / s) @ W)``), the
    target scaling of a regression with an identity output into the last
    (``a * t + m``), and `rest`, the InputScaling left to apply to raw rows
    first (its kind ``none`` when nothing is). The exporters use it and
    lower `rest`, so that every exported model applies the network's
    scaling to raw rows; the folding is done in float64, then rounded to
    the network's dtype. Raises ConfigError for a regression whose output
    is not identity.

    A per-feature standard or min-max scaling folds into a first Dense layer
    (after Flatten or Dropout, which move nothing); a convolution or pooling
    layer shares its weights between positions and pads with zeros, so
    before one the scaling is left in `rest` (its float64 offset and
    scale), and the exporters compute ``(x - offset) / scale`` in the
    network's dtype, as fastnn does. Pixels that the kernels divide (uint8
    rows) are left in `rest` too (its divisor), divided in the network's
    dtype as the kernels do; pixels divided before the kernels (float rows)
    fold into any first layer: convolution and pooling commute with a
    positive factor.
    """
    import copy

    from fastnn.layers import Dense

    pre = net.preprocessing
    scaling = input_scaling(pre, net.input_dtype)
    if pre is None:
        return net, scaling if scaling.in_kernels else InputScaling("none", net.input_dtype)
    out = copy.deepcopy(net)
    out.preprocessing = None
    W = [w.astype(np.float64) for w in net.weights]
    b = [v.astype(np.float64) for v in net.biases]
    rest = InputScaling("none", net.input_dtype)
    # the first layer that computes something (Flatten and Dropout do not at inference)
    first = next(layer for layer in net.layers if layer.kind is not None)
    if scaling.kind in ("standard", "minmax"):
        if isinstance(first, Dense):
            b[0] = b[0] - (scaling.offset / scaling.scale) @ W[0]
            W[0] = W[0] / scaling.scale[:, None]
        else:
            rest = scaling
        out.input_dtype = str(net.dtype)
    elif scaling.in_kernels:
        rest = scaling
    elif scaling.kind == "pixels":
        W[0] = W[0] / PIXEL_MAX
    if pre.task == "regression":
        if net.output != "identity":
            raise ConfigError(f"a regression with a {net.output!r} output cannot be exported "
                              f"(its targets are restored after the output layer); train it "
                              f"with an identity output")
        if not isinstance(net.layers[-1], Dense):
            raise ConfigError(f"a regression whose output layer is {net.layers[-1]!r} cannot "
                              f"be exported yet (its targets are restored by a last Dense "
                              f"layer's weights); end the network with a Dense layer")
        W[-1] = W[-1] * pre.target_scale[None, :]
        b[-1] = b[-1] * pre.target_scale + pre.target_mean
    out.weights = W
    out.biases = b
    return out, rest
