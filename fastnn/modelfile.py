"""Model files: a network's weights in safetensors, its description in the header.

A fastnn model file is a plain safetensors file. Its ``__metadata__`` header
holds ``format = "fastnn"``, ``format_version``, ``fastnn_version``,
``weight_layout`` (how the tensors compute a layer: WEIGHT_LAYOUTS) and JSON
strings ``network`` (the architecture, loss, dtype of the tensors, init,
seed, slope, epochs trained, the dtype of the training inputs, and for a
bfloat16 network ``compute_dtype = "bfloat16"``: its tensors are float32
masters, COMPUTE_DTYPES), ``input_scaling`` (the training inputs' dtype
and the factor the kernels apply to them: 1/255 for uint8 pixels; see
fastnn.preprocessing.InputScaling), ``optimizer`` (name,
steps taken) and ``training`` (the options of the last fit, its final
metrics and learning-rate schedule state) and, for a network given a task
or a scaling, ``preprocessing`` (the task, class names, feature scaling and
target scaling: see fastnn.preprocessing). After training, the tensor
``optimizer.state`` holds the optimizer's buffers, for resuming.

Three format versions, one class each in FORMATS:

- format 1, dense stacks (what ``Network([784, 30, 10])`` builds): the
  network's ``sizes`` and ``activations``; tensors ``weights.<l>`` (n_in,
  n_out) and ``biases.<l>``. fastnn keeps writing it for dense stacks, and
  reads it forever.
- format 2, any other network (convolution, pooling, dropout layers, an
  image input shape): the network's ``input_shape``, ``layers`` (each
  layer's config, fastnn.layers) and ``activations`` (one per Dense or
  Conv2D layer, resolved); tensors ``layers.<i>.weights`` and
  ``layers.<i>.biases`` of layer i of that list, a convolution's weights
  HWIO (kh, kw, C_in, F).
- format 3, an ensemble (fastnn.ensemble): ``ensemble`` (the number of
  members, K) and ``member.<k>`` for k in 0..K-1, the ``__metadata__`` of
  member k's own model file (format 1 or 2) as a JSON text; member k's
  tensors are its own file's, named ``member.<k>.<name>``.

Writing is atomic and follows the output policy of ``fastnn.files``: the
file is written to a temporary name in the same directory, flushed to disk,
and renamed over the target, so a crash never leaves a half-written model,
and an existing file that is not a fastnn model is not replaced unless
asked to. Loading never executes code (no pickle): the
header is JSON and the tensors are raw arrays, checked against the header.

A file that `save` writes, `load` reads: before anything is replaced, the
bytes about to be written are read back through `load`'s own code (the
header schema, the tensor table, finiteness, the network they build), and
a model that would not load is refused with ModelFileError, the old file
untouched. `check_header` runs the header part alone, cheaply, so that
``fastnn train`` refuses such a run before it starts.

This module names neither Network nor Ensemble: they import it to save
themselves, and register themselves in KINDS, through which it builds them
when it reads a file. ``fastnn.io`` is the public face (``fastnn.load``).
"""
import io
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from fastnn import _validation
from fastnn._kernels import DTYPES, get_backend
from fastnn._typing import Array, PathLike
from fastnn._version import __version__
from fastnn.exceptions import ConfigError, ModelFileError
from fastnn.files import FileKind, atomic_write
from fastnn.optimizers import OptimizerState

if TYPE_CHECKING:
    from fastnn.plan import Plan

#: A fastnn.network.Network or a fastnn.ensemble.Ensemble, for the type
#: checker: this module names neither class (they import it, to save
#: themselves), but builds them through KINDS.
Model = Any

#: The classes a model file's objects are built as, by kind: "network"
#: (fastnn.network.Network) and "ensemble" (fastnn.ensemble.Ensemble), each
#: registered by its own module when it is defined (`register`).
KINDS: dict[str, type] = {}


def register(kind: str, cls: type) -> None:
    """Let model files of `kind` ("network" or "ensemble") be built as `cls`."""
    KINDS[kind] = cls


def _kind(kind: str) -> type:
    try:
        return KINDS[kind]
    except KeyError:
        raise ModelFileError(f"no class builds a model file's {kind}: import "
                             f"fastnn.{kind} first (import fastnn does)") from None


def is_ensemble(net: Model) -> bool:
    """Whether `net` is an ensemble (written in format 3)."""
    ensemble = KINDS.get("ensemble")
    return ensemble is not None and isinstance(net, ensemble)

FORMAT = "fastnn"
#: The newest format version this fastnn writes (and reads).
FORMAT_VERSION = 3
#: How the tensors compute a layer, stated in every model file's header
#: (``weight_layout``), by format version: rows are samples, ``weights.<l>``
#: is stored (inputs, outputs), row-major, so a layer is ``x @ W + b``, then
#: the activation (PyTorch's nn.Linear keeps the transpose: weight = W.T); in
#: format 2 a convolution's weights are HWIO over HWC rows.
WEIGHT_LAYOUT = "x @ W + b; W stored (in, out), row-major"
WEIGHT_LAYOUTS = {1: WEIGHT_LAYOUT,
                  2: WEIGHT_LAYOUT + "; conv W stored (kh, kw, in, out) over HWC rows",
                  3: "each member's, in its member.<k> header"}


def format_for(net: Model) -> "ModelFormat":
    """The ModelFormat a network is written in: format 1 for a dense stack
    (so that older fastnn versions read it), else format 2."""
    return FORMATS[1 if net.plan.plain_dense else 2]


def safetensors_bytes(tensors: dict[str, Array], metadata: dict[str, str]) -> bytes:
    """A safetensors file of `tensors` with `metadata`, the same bytes for the
    same arguments: the header's keys sorted, the tensors in name order.

    (The safetensors package writes its header from a hash map, whose order
    changes from process to process.) The layout is the specification's: an
    8-byte little-endian header length, the JSON header padded with spaces
    to a multiple of 8 bytes, then each tensor's little-endian bytes.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    data, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        dtype = array.dtype.newbyteorder("<")
        raw = array.astype(dtype, copy=False).tobytes()
        header[name] = {"dtype": DTYPE_NAMES[dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(data)


def _bytes(net: Model, weights_only: bool = False) -> bytes:
    return safetensors_bytes(*_contents(net, weights_only))


def _contents(net: Model,
              weights_only: bool = False) -> tuple[dict[str, Array], dict[str, str]]:
    """(tensors, metadata) of the model file of `net`."""
    if is_ensemble(net):
        return _ensemble_contents(net, weights_only)
    fmt = format_for(net)
    tensors = dict(zip([name for pair in fmt.tensor_names(net.plan) for name in pair],
                       [a for W, b in zip(net.weights, net.biases) for a in (W, b)]))
    optimizer = {}
    if net.optimizer_state is not None and not weights_only:
        tensors["optimizer.state"] = net.optimizer_state.state
        optimizer = {"name": net.optimizer_state.name, "steps": net.optimizer_state.steps}
    training = net.training_record
    if net.best_params is not None and not weights_only and "best" in training:
        # an unfinished fit(restore_best=True): its best epoch's weights
        tensors["best.params"] = net.best_params
        training = {**training, "best": {**training["best"], "pending": True}}
    network = {
        **fmt.architecture(net.plan),
        "loss": net.loss,
        "dtype": str(net.dtype),
        **({"compute_dtype": net.compute_dtype} if net.compute_dtype in COMPUTE_DTYPES else {}),
        "init": net.init,
        "seed": net.seed,
        "slope": net.slope,
        "epochs_trained": net.epochs_trained,
        "input_dtype": net.input_dtype,
    }
    metadata = {
        "format": FORMAT,
        "format_version": str(fmt.version),
        "fastnn_version": __version__,
        "weight_layout": WEIGHT_LAYOUTS[fmt.version],
        "network": json.dumps(network),
        "input_scaling": json.dumps(net.input_scaling.record()),
        "optimizer": json.dumps(optimizer),
        "training": json.dumps(training, default=float),
    }
    if net.preprocessing is not None:
        metadata["preprocessing"] = json.dumps(net.preprocessing.to_dict())
    return tensors, metadata


def _ensemble_contents(ens: Model,
                       weights_only: bool) -> tuple[dict[str, Array], dict[str, str]]:
    """(tensors, metadata) of an ensemble's file (format 3): each member's
    own, its tensors' names prefixed by ``member.<k>.``."""
    tensors: dict[str, Array] = {}
    metadata = {"format": FORMAT, "format_version": str(EnsembleFormat.version),
                "fastnn_version": __version__, "weight_layout": WEIGHT_LAYOUTS[3],
                "ensemble": json.dumps({"members": len(ens.members)})}
    for k, member in enumerate(ens.members):
        theirs, meta = _contents(member, weights_only)
        tensors.update({f"member.{k}.{name}": t for name, t in theirs.items()})
        metadata[f"member.{k}"] = json.dumps(meta, sort_keys=True)
    return tensors, metadata


def _looks_like_model(head: bytes) -> bool:
    """Whether a file whose first bytes are `head` is a fastnn model file."""
    if len(head) < 8:
        return False
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER or head[8:9] != b"{":
        return False
    if len(head) < 8 + n:  # a header longer than what was read
        return b'"format":"fastnn"' in head
    try:
        header = json.loads(head[8:8 + n])
    except (UnicodeDecodeError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == FORMAT


#: What a model file is, for the output policy (fastnn.files).
MODEL_FILE = FileKind("fastnn model", _looks_like_model)


def save(net: Model, path: PathLike, force: bool = False, weights_only: bool = False) -> None:
    """Write `net` to `path` as a safetensors model file, atomically, under
    the output policy of fastnn.files (an existing file that is not a fastnn
    model is replaced only with force=True). With weights_only, the
    optimizer's state is left out (the file loads and predicts the same; a
    fit continuing from it starts a new optimizer)."""
    data = _bytes(net, weights_only)
    try:
        _verify(data, net.backend)
    except ModelFileError as exc:
        raise ModelFileError(f"cannot save {os.fspath(path)}, nothing was written: "
                             f"{exc}") from None
    atomic_write(path, data, ModelFileError, kind=MODEL_FILE, force=force)


#: How a model being checked before it is written is called in messages.
_UNWRITTEN = "the model"


def _verify(data: bytes, backend: str) -> None:
    """Raise ModelFileError if `load` would refuse a file of these bytes.

    They are read as `load` reads a file: header, tensor table, each tensor
    (NaN and infinity refused), then the network is built. When there is no
    memory for a second copy of the network, the checks that need none
    stand: the header, the tensor table and each tensor's values."""
    f = io.BytesIO(data)
    header = _read_header(f, _UNWRITTEN)
    try:
        _build(f, header, _UNWRITTEN, backend)
    except ModelFileError as exc:
        if not isinstance(exc.__context__, MemoryError):
            raise
        view = memoryview(data)
        for name, t in header.tensors.items():
            start = header.data_start + t.begin
            array = np.frombuffer(view[start:header.data_start + t.end], t.dtype)
            if not all(np.isfinite(array[i:i + (1 << 20)]).all()
                       for i in range(0, array.size, 1 << 20)):
                raise ModelFileError(f"{_UNWRITTEN}: {name} contains NaN or infinity") from None


def check_header(net: Model) -> None:
    """Raise ModelFileError if the header of the model file of `net`, as it
    is now, would not load (a name longer than the header keeps, a scaling
    that is not finite, more classes than a model may have...): the check
    `save` makes, without the tensors, for runs to make before they start."""
    _check_metadata(_contents(net, weights_only=True)[1], _UNWRITTEN)


# ------------------------------------------------------------------ reading
#
# A model file is read in this order, and nothing is allocated for the
# network before the last step: the 8-byte header length (at most
# MAX_HEADER), the header JSON (depth-bounded, no repeated keys), fastnn's
# metadata checked against its format version's schema, the tensor table
# checked on its own (known dtypes, sizes that match the shapes, offsets
# contiguous and inside the file) and against the tensors the metadata
# needs; then the network is built and each tensor is read into it.

#: The most bytes a model file's JSON header may have (fastnn writes a few KB).
MAX_HEADER = 16 << 20
#: The most layers, and units per layer, a model file may describe.
MAX_LAYERS = 1024
MAX_UNITS = 2 ** 31 - 1
# Counts (epochs, optimizer steps, rows) in a header: far beyond any run,
# within the kernels' int64 counters.
MAX_COUNT = _validation.MAX_COUNT    # (what fit and Network accept)
MAX_SEED = _validation.MAX_SEED
MAX_MEMBERS = _validation.MAX_MEMBERS
#: safetensors dtype names fastnn reads, and what they are.
TENSOR_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
DTYPE_NAMES = {"float32": "F32", "float64": "F64"}
#: The compute dtypes a network's ``compute_dtype`` may name, and the dtype of
#: the tensors of such a network (fastnn._kernels.DTYPES): written only where
#: it differs from the tensors' own, so float32 and float64 files are as they
#: always were.
COMPUTE_DTYPES = {name: str(dtype) for name, dtype in DTYPES.items() if name != str(dtype)}
INPUT_DTYPES = ("uint8", "float32", "float64")
#: What fit(restore_best=True) compares epochs by (training["best"]["monitor"]).
BEST_MONITORS = ("val_accuracy", "val_loss")


@dataclass(frozen=True)
class Tensor:
    """One entry of a safetensors tensor table, checked."""

    dtype: np.dtype
    shape: tuple
    begin: int
    end: int


@dataclass
class ModelHeader:
    """A model file's header after every check: what `load`, ``fastnn info``
    and ``--resume`` read.

    Attributes
    ----------
    version : int
        The format version.
    format : ModelFormat
        That version's schema, which also builds the network.
    metadata : dict of str
        The ``__metadata__`` strings as they are in the file.
    fields : dict
        The metadata parsed and checked by the format's schema (for format
        1: "network", "optimizer", "training", ...).
    tensors : dict of str to Tensor
        The tensor table, each entry checked against the file and the metadata.
    data_start : int
        Where the tensors' bytes begin in the file.
    """

    path: str
    version: int
    format: "ModelFormat"
    metadata: dict
    fields: dict
    tensors: dict
    data_start: int


class ModelFormat:
    """One version of the model file format: the schema of its metadata,
    the tensors it needs, and how a Network is built from them.

    A new version (convolutional layers, say) is a new subclass registered
    in FORMATS; `read_header` and `load` dispatch on the file's
    format_version and need no other change.
    """

    version: int = 0
    #: The spec of the ``__metadata__`` object (a schema.Record).
    metadata: Any = None

    def check(self, fields: dict[str, Any]) -> None:
        """Checks across fields, after the schema (raise SchemaError)."""

    def architecture(self, plan: "Plan") -> dict[str, Any]:
        """The JSON-ready fields of the ``network`` metadata that describe
        the architecture (the rest, loss, dtype, seed..., are common)."""
        raise NotImplementedError

    def tensor_names(self, plan: "Plan") -> list[tuple[str, str]]:
        """(weights name, biases name) of each parametric layer, in order."""
        raise NotImplementedError

    def described(self, fields: dict[str, Any]) -> str:
        """The architecture in a few words, for messages."""
        raise NotImplementedError

    def tensors(self, fields: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """{tensor name: (shape, safetensors dtype name)} that the metadata needs."""
        raise NotImplementedError

    def build(self, fields: dict[str, Any], read: Callable[[str], Array],
              backend: str) -> Model:
        """The Network the metadata describes, with `read(name)` giving each
        tensor as a checked array. Raise ConfigError for an invalid network."""
        raise NotImplementedError


def _schema(version: int, architecture: dict[str, Any]) -> Any:
    """The metadata schema of a format version whose ``network`` record
    describes the architecture with the specs `architecture` (the other
    fields are common to all versions)."""
    from fastnn.initializers import INITIALIZERS
    from fastnn.losses import LOSSES
    from fastnn.optimizers import OPTIMIZERS
    from fastnn.schema import (AnyJSON, Bool, Int, JSONText, ListOf, MapOf, Maybe, OneOf,
                               Real, Record, Text)
    from fastnn.csvfile import DECIMALS, DELIMITERS
    from fastnn._kernels import AUGMENTATIONS

    count = Int(0, MAX_COUNT)
    positive = Real(0, lo_open=True)
    rate = Real(0, 1, hi_open=True)
    optimizer_name = Text(choices=OPTIMIZERS)
    schedule = Text(256)
    network = Record(
        required={**architecture,
                  "loss": Text(choices=LOSSES), "dtype": Text(choices=DTYPE_NAMES),
                  "seed": Int(0, MAX_SEED)},
        optional={"init": Text(choices=INITIALIZERS), "slope": Real(0),
                  "epochs_trained": count, "input_dtype": Maybe(Text(choices=INPUT_DTYPES)),
                  "compute_dtype": Text(choices=COMPUTE_DTYPES)},
        defaults={"init": "nielsen", "slope": 0.01, "epochs_trained": 0, "input_dtype": None,
                  "compute_dtype": None})
    optimizer = Record(optional={"name": optimizer_name, "steps": count})
    input_scaling = Record(optional={"input_dtype": Maybe(Text(choices=INPUT_DTYPES)),
                                     "scale": Real(0)}, extra=AnyJSON())
    lr_schedule_state = Record(
        required={"base_lr": positive, "lr": Real(0), "epochs": count},
        optional={"best": Real(finite=False), "waited": count, "reductions": count,
                  "total": Int(1, MAX_COUNT)},
        extra=AnyJSON())
    cli = Record(optional={
        "data": Maybe(Text()), "labels": Maybe(Text()),
        "label_col": Maybe(OneOf(Text(), Int(1, MAX_COUNT))), "val": Maybe(Text()),
        "test": Maybe(Text()), "limit": Maybe(Int(1, MAX_COUNT)), "epochs": count,
        "epochs_done": count, "delimiter": Text(choices=DELIMITERS),
        "decimal": Text(choices=DECIMALS)}, extra=AnyJSON())
    cli_options = Record(optional={
        "batch_size": Int(1, MAX_COUNT), "lr": positive, "optimizer": optimizer_name,
        "momentum": rate, "betas": ListOf(rate, 2, 2), "eps": positive, "l2": Real(0),
        "l1": Real(0), "dropout": OneOf(rate, ListOf(rate, 0, MAX_LAYERS)),
        "lr_schedule": schedule, "val_split": rate, "early_stopping": Int(1, MAX_COUNT),
        "augment": Text(choices=AUGMENTATIONS), "class_weight": Text(choices=("balanced",)),
        "shuffle": Bool(), "weight_decay": Real(0), "clip_norm": positive,
        "restore_best": Bool()}, extra=AnyJSON())
    training = Record(optional={
        "epochs": count, "batch_size": Int(1, MAX_COUNT), "lr": positive, "shuffle": Bool(),
        "optimizer": optimizer_name, "momentum": rate, "betas": ListOf(rate, 2, 2),
        "eps": positive, "l2": Real(0), "l1": Real(0), "dropout": ListOf(rate, 0, MAX_LAYERS),
        "lr_schedule": schedule, "early_stopping": Maybe(Int(1, MAX_COUNT)),
        "augment": Maybe(Text(choices=AUGMENTATIONS)), "validation_split": rate,
        "n_train": count, "sample_weight": Bool(),
        "class_weight": Maybe(OneOf(Text(choices=("balanced",)), MapOf(Real(0)))),
        "epochs_done": count, "final": MapOf(Real(finite=False, nan=True), 1000),
        "lr_schedule_state": lr_schedule_state, "cli": cli, "cli_options": cli_options,
        "weight_decay": Real(0), "clip_norm": positive, "restore_best": Bool(),
        "best": Record(required={"epoch": count, "monitor": Text(choices=BEST_MONITORS),
                                 "value": Real(finite=False, nan=True)},
                       optional={"pending": Bool()})},
        extra=AnyJSON())
    return Record(
        required={"format": Text(choices=(FORMAT,)),
                  "format_version": Text(choices=(str(version),)),
                  "network": JSONText(network)},
        optional={"fastnn_version": Text(40, pattern=r"[0-9A-Za-z.+!_-]+",
                                         description="a version number"),
                  "weight_layout": Text(choices=(WEIGHT_LAYOUTS[version],)),
                  "input_scaling": JSONText(input_scaling), "optimizer": JSONText(optimizer),
                  "training": JSONText(training),
                  "preprocessing": _preprocessing_spec()},
        defaults={"optimizer": {}, "training": {}, "preprocessing": None},
        extra=Text(MAX_HEADER))


def _preprocessing_spec() -> Any:
    """The ``preprocessing`` field (task, class names, scalings), the same in
    every format version: see fastnn.preprocessing."""
    from fastnn.preprocessing import schema
    from fastnn.schema import JSONText

    return JSONText(schema(MAX_UNITS))


def _check_network(network: dict[str, Any], plan: Callable[[], "Plan"]) -> "Plan":
    """The Plan `plan()` makes of a checked ``network`` field, and its loss
    checked against its output: what Network() checks before it allocates
    anything, so that a header that passes builds a network."""
    from fastnn.losses import get_loss
    from fastnn.schema import SchemaError

    compute = network["compute_dtype"]
    if compute is not None and network["dtype"] != COMPUTE_DTYPES[compute]:
        raise SchemaError("network.dtype", f"{COMPUTE_DTYPES[compute]!r} (the tensors of a "
                          f"{compute} network)", network["dtype"])
    try:
        made = plan()
        get_loss(network["loss"]).check_output(network["activations"][-1])
    except ConfigError as exc:
        raise SchemaError("network", "a network", None,
                          f"network describes no valid network: {exc}") from None
    return made


def _dtype(network: dict[str, Any]) -> str:
    """The dtype a checked ``network`` field builds its Network with."""
    return network["compute_dtype"] or network["dtype"]


def _check_preprocessing(fields: dict[str, Any], n_inputs: int, n_outputs: int) -> None:
    from fastnn.preprocessing import check_fields

    check_fields(fields.get("preprocessing"), n_inputs, n_outputs)


def _build_preprocessing(net: Model, fields: dict[str, Any]) -> None:
    from fastnn.preprocessing import Preprocessing

    net.preprocessing = Preprocessing.from_dict(fields.get("preprocessing"))


class Format1(ModelFormat):
    """Format 1: a fully-connected network. Tensors ``weights.<l>`` (n_in,
    n_out) and ``biases.<l>`` (n_out,) in the network's dtype, and
    ``optimizer.state`` (rows, n_params) when the metadata names an optimizer."""

    version = 1

    def __init__(self) -> None:
        from fastnn.activations import ACTIVATIONS
        from fastnn.schema import Int, ListOf, Text

        self.metadata = _schema(1, {
            "sizes": ListOf(Int(1, MAX_UNITS), 2, MAX_LAYERS + 1),
            "activations": ListOf(Text(choices=ACTIVATIONS), 1, MAX_LAYERS)})

    def architecture(self, plan: "Plan") -> dict[str, Any]:
        return {"sizes": list(plan.sizes), "activations": list(plan.activations)}

    def tensor_names(self, plan: "Plan") -> list[tuple[str, str]]:
        return plan.tensor_names()

    def described(self, fields: dict[str, Any]) -> str:
        return f"sizes {fields['network']['sizes']}"

    def check(self, fields: dict[str, Any]) -> None:
        from fastnn.plan import Plan
        from fastnn.schema import SchemaError

        network, optimizer = fields["network"], fields["optimizer"]
        if optimizer and len(optimizer) != 2:
            raise SchemaError("optimizer", "empty or have both a name and steps", optimizer)
        n_layers = len(network["sizes"]) - 1
        if len(network["activations"]) != n_layers:
            raise SchemaError("network.activations", f"a list of {n_layers} names, one per "
                              f"layer of sizes {network['sizes']}", network["activations"])
        _check_network(network, lambda: Plan.parse(network["sizes"], network["activations"][:-1],
                                                   network["activations"][-1]))
        _check_preprocessing(fields, network["sizes"][0], network["sizes"][-1])

    def tensors(self, fields: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        network = fields["network"]
        sizes, dtype = network["sizes"], DTYPE_NAMES[network["dtype"]]
        needed: dict[str, tuple[tuple[int, ...], str]] = {}
        for l, (i, o) in enumerate(zip(sizes, sizes[1:])):
            needed[f"weights.{l}"] = ((i, o), dtype)
            needed[f"biases.{l}"] = ((o,), dtype)
        needed.update(_run_tensors(fields, sum(i * o + o for i, o in zip(sizes, sizes[1:])),
                                   dtype))
        return needed

    def build(self, fields: dict[str, Any], read: Callable[[str], Array],
              backend: str) -> Model:
        config = fields["network"]
        activations = config["activations"]
        net = _kind("network")(config["sizes"], activation=activations[:-1], output=activations[-1],
                      loss=config["loss"], dtype=_dtype(config), init=config["init"],
                      seed=config["seed"], slope=config["slope"], backend=backend)
        for l in range(len(net.sizes) - 1):
            net.weights[l][...] = read(f"weights.{l}")
            net.biases[l][...] = read(f"biases.{l}")
        _restore(net, fields, read)
        return net


#: The most values per sample a format-2 header may describe, over all the
#: activations and the largest im2col window buffer (2**28: an 8192 x 8192 x 4
#: image; a LeNet has about 10**4), and the largest integer in a layer config.
MAX_WIDTH = 2 ** 28
MAX_LAYER_INT = 2 ** 20
# The layer types of each format version: a type this fastnn does not know
# comes from a newer one.
LAYER_TYPES = {2: ("dense", "conv2d", "maxpool2d", "l2pool2d", "flatten", "dropout")}


class UnknownLayerType(Exception):
    """A format-2 header names a layer type this fastnn does not know."""


class Format2(ModelFormat):
    """Format 2: any network of fastnn.layers. The network's ``input_shape``
    ((n,) or (H, W, C)), ``layers`` (each layer's config, implied Flatten
    layers included) and ``activations`` (one per Dense or Conv2D layer,
    resolved); tensors ``layers.<i>.weights`` and ``layers.<i>.biases`` of
    each Dense or Conv2D layer i (a convolution's weights HWIO), and
    ``optimizer.state`` as in format 1.

    The header is checked whole before anything is allocated: each layer
    config, the architecture they make (shapes that fit, no layer wider than
    MAX_WIDTH values per sample in all), then the tensor table against the
    parameters."""

    version = 2

    def __init__(self) -> None:
        from fastnn.activations import ACTIVATIONS
        from fastnn.schema import AnyJSON, Int, ListOf, Maybe, Record, Text

        layer = Record(required={"type": Text(64)}, extra=Maybe(AnyJSON()))
        self.metadata = _schema(2, {
            "input_shape": ListOf(Int(1, MAX_UNITS), 1, 3),
            "layers": ListOf(layer, 1, MAX_LAYERS),
            "activations": ListOf(Text(choices=ACTIVATIONS), 1, MAX_LAYERS)})

    def architecture(self, plan: "Plan") -> dict[str, Any]:
        params = [s.layer for s in plan.slots]
        return {"input_shape": list(plan.input_shape),
                "layers": [layer.config() for layer in plan.layers],
                "activations": [plan.activations[i] for i in params]}

    def tensor_names(self, plan: "Plan") -> list[tuple[str, str]]:
        # what Plan.tensor_names gives any network written in format 2
        return [(f"layers.{s.layer}.weights", f"layers.{s.layer}.biases") for s in plan.slots]

    def described(self, fields: dict[str, Any]) -> str:
        network = fields["network"]
        return (f"input shape {network['input_shape']} and "
                f"{', '.join(t['type'] for t in network['layers'])}")

    def check(self, fields: dict[str, Any]) -> None:
        from fastnn.layers import LAYERS, from_config
        from fastnn.plan import Plan
        from fastnn.schema import SchemaError, short

        network, optimizer = fields["network"], fields["optimizer"]
        if optimizer and len(optimizer) != 2:
            raise SchemaError("optimizer", "empty or have both a name and steps", optimizer)
        layers = []
        for i, config in enumerate(network["layers"]):
            where = f"network.layers[{i}]"
            for key, value in config.items():
                values = value if isinstance(value, list) else [value]
                # (below 1, the layer's own check names what it must be)
                if any(isinstance(v, int) and v > MAX_LAYER_INT for v in values):
                    raise SchemaError(f"{where}.{key}", f"at most {MAX_LAYER_INT}", value)
            if config["type"] not in LAYERS:
                writer = fields.get("fastnn_version", "a newer fastnn")
                raise UnknownLayerType(
                    f"layer {i} has type {short(config['type'])}, which fastnn {__version__} "
                    f"does not know (it reads format {max(FORMATS)}, layer types "
                    f"{list(LAYER_TYPES[2])}); the file was written by fastnn {writer}: "
                    f"load it with that version or a newer one")
            try:
                layers.append(from_config(config))
            except ConfigError as exc:
                raise SchemaError(where, "a layer config", config, f"{where}: {exc}") from None
        n_params = sum(layer.parametric for layer in layers)
        if len(network["activations"]) != n_params:
            raise SchemaError("network.activations", f"a list of {n_params} names, one "
                              f"per Dense or Conv2D layer", network["activations"])
        plan = _check_network(network, lambda: Plan(tuple(network["input_shape"]), layers,
                                                    activation=network["activations"][:-1],
                                                    output=network["activations"][-1]))
        if len(plan.layers) != len(layers):
            raise SchemaError("network.layers", "a list with every Flatten layer given",
                              network["layers"])
        values = sum(plan.sizes) + plan.window_entries()
        if values > MAX_WIDTH:
            raise SchemaError("network", "a network", None,
                              f"network describes layers of {values:,} values per sample "
                              f"(at most {MAX_WIDTH:,})")
        _check_preprocessing(fields, plan.sizes[0], plan.sizes[-1])
        fields["plan"] = plan

    def tensors(self, fields: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        plan, dtype = fields["plan"], DTYPE_NAMES[fields["network"]["dtype"]]
        needed = {}
        for s, (w_name, b_name) in zip(plan.slots, self.tensor_names(plan)):
            needed[w_name] = (s.w_shape, dtype)
            needed[b_name] = (s.b_shape, dtype)
        needed.update(_run_tensors(fields, plan.n_params, dtype))
        return needed

    def build(self, fields: dict[str, Any], read: Callable[[str], Array],
              backend: str) -> Model:

        config, plan = fields["network"], fields["plan"]
        activations = config["activations"]
        net = _kind("network")([plan.input_shape, *plan.layers], activation=activations[:-1],
                               output=activations[-1], loss=config["loss"],
                               dtype=_dtype(config), init=config["init"], seed=config["seed"],
                               slope=config["slope"], backend=backend)
        for l, (w_name, b_name) in enumerate(self.tensor_names(net.plan)):
            net.weights[l][...] = read(w_name)
            net.biases[l][...] = read(b_name)
        _restore(net, fields, read)
        return net


def _run_tensors(fields: dict[str, Any], n_params: int,
                 dtype: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """The tensors every format keeps beside the parameters: the optimizer's
    state, and an unfinished restore_best run's best weights."""
    from fastnn.optimizers import get_optimizer

    needed: dict[str, tuple[tuple[int, ...], str]] = {}
    if fields["optimizer"]:
        rows = get_optimizer(fields["optimizer"]["name"]).state_rows
        needed["optimizer.state"] = ((rows, n_params), dtype)
    if fields["training"].get("best", {}).get("pending"):
        needed["best.params"] = ((n_params,), dtype)
    return needed


def _restore(net: Model, fields: dict[str, Any], read: Callable[[str], Array]) -> None:
    """What every format keeps beside the parameters: epochs, input dtype,
    optimizer state and training record."""
    config = fields["network"]
    net.epochs_trained = config["epochs_trained"]
    net.input_dtype = config["input_dtype"]
    optimizer = fields["optimizer"]
    if optimizer:
        net.optimizer_state = OptimizerState(optimizer["name"], read("optimizer.state"),
                                             optimizer["steps"])
    net.training_record = fields["training"]
    best = net.training_record.get("best")
    if best is not None and best.pop("pending", False):
        net.best_params = read("best.params")
    _build_preprocessing(net, fields)


class EnsembleFormat(ModelFormat):
    """Format 3: an ensemble (fastnn.ensemble) of K networks. ``ensemble``
    is ``{"members": K}``; ``member.<k>`` is the ``__metadata__`` of member
    k's own file (format 1 or 2), as a JSON text, checked by that format's
    schema; member k's tensors are those its format needs, named
    ``member.<k>.<name>``. fastnn versions before it refuse such a file as
    one written by a newer fastnn."""

    version = 3

    def __init__(self) -> None:
        from fastnn.schema import Int, JSONText, Record, Text

        self.metadata = Record(
            required={"format": Text(choices=(FORMAT,)),
                      "format_version": Text(choices=(str(self.version),)),
                      "ensemble": JSONText(Record(required={"members": Int(2, MAX_MEMBERS)}))},
            optional={"fastnn_version": Text(40, pattern=r"[0-9A-Za-z.+!_-]+",
                                             description="a version number"),
                      "weight_layout": Text(choices=(WEIGHT_LAYOUTS[self.version],))},
            extra=Text(MAX_HEADER))

    def check(self, fields: dict[str, Any]) -> None:
        from fastnn.reading import load_json
        from fastnn.schema import SchemaError, short

        k = fields["ensemble"]["members"]
        expected = {"format", "format_version", "ensemble", "fastnn_version", "weight_layout",
                    *(f"member.{i}" for i in range(k))}
        unexpected = sorted(set(fields) - expected)
        if unexpected:
            raise SchemaError(unexpected[0], f"one of member.0..member.{k - 1}", None,
                              f"{short(unexpected[0], 40)} is not a field of an ensemble of "
                              f"{k} (member.0..member.{k - 1})")
        members = []
        for i in range(k):
            where = f"member.{i}"
            if where not in fields:
                raise SchemaError(where, "a member's header", None,
                                  f"{where} is missing (the ensemble has {k} members)")
            try:
                meta = load_json(fields[where], where, _HeaderText)
            except _HeaderText as exc:
                raise SchemaError(where, "a JSON text", None, str(exc)) from None
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise SchemaError(where, "a JSON object of strings", meta)
            version = meta.get("format_version")
            fmt = FORMATS.get(int(version)) if isinstance(version, str) and \
                re.fullmatch(r"[0-9]{1,9}", version) else None
            if fmt is None or isinstance(fmt, EnsembleFormat):
                raise SchemaError(f"{where}.format_version", "'1' or '2'", version)
            member = fmt.metadata.check(meta, where)
            fmt.check(member)
            members.append((fmt, member))
        fields["members"] = members

    def described(self, fields: dict[str, Any]) -> str:
        return f"an ensemble of {len(fields['members'])} networks"

    def tensors(self, fields: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        return {f"member.{k}.{name}": need
                for k, (fmt, member) in enumerate(fields["members"])
                for name, need in fmt.tensors(member).items()}

    def build(self, fields: dict[str, Any], read: Callable[[str], Array],
              backend: str) -> Model:
        return _kind("ensemble")([fmt.build(member, lambda name, k=k: read(f"member.{k}.{name}"),
                                   backend)
                         for k, (fmt, member) in enumerate(fields["members"])])


class _HeaderText(ModelFileError):
    """A member header that is not JSON (its message becomes a SchemaError's)."""


#: The format versions this fastnn reads, by number.
FORMATS: dict[int, ModelFormat] = {1: Format1(), 2: Format2(), 3: EnsembleFormat()}


def _tensor_table(header: dict[str, Any], data_start: int, size: int,
                  path: str) -> dict[str, Tensor]:
    """{name: Tensor} from a safetensors header, each entry checked: a known
    dtype, a shape whose bytes are its offsets' span, and offsets that tile
    the data section from its first byte to the file's last."""
    from fastnn.schema import Int, ListOf, Record, SchemaError, Text

    entry = Record({"dtype": Text(32), "shape": ListOf(Int(0, MAX_COUNT), 0, 8),
                    "data_offsets": ListOf(Int(0, MAX_COUNT), 2, 2)})
    names = [n for n in header if n != "__metadata__"]
    if len(names) > 4 * MAX_LAYERS:
        raise ModelFileError(f"{path} has a damaged tensor table ({len(names)} tensors)")
    tensors = {}
    for name in names:
        try:
            info = entry.check(header[name], f"tensor {name!r}")
        except SchemaError as exc:
            raise ModelFileError(f"{path} has a damaged tensor table: {exc}") from None
        if info["dtype"] not in TENSOR_DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {info['dtype']!r}; fastnn "
                                 f"model tensors are {sorted(TENSOR_DTYPES)}")
        dtype = TENSOR_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ModelFileError(f"{path} has a damaged tensor table: {name} has shape {shape} "
                                 f"but offsets {begin}..{end}")
        tensors[name] = Tensor(dtype, shape, begin, end)
    position = 0
    for name, t in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if t.begin != position:
            raise ModelFileError(f"{path} has a damaged tensor table: {name} starts at byte "
                                 f"{t.begin} of the data, expected {position}")
        position = t.end
    if data_start + position > size:
        raise ModelFileError(f"{path} is truncated: its tensors need {data_start + position} "
                             f"bytes, the file has {size}")
    if data_start + position < size:
        raise ModelFileError(f"{path} has {size - data_start - position} bytes after its "
                             f"tensors (damaged)")
    return tensors


def _read_header(f: BinaryIO, path: str) -> ModelHeader:
    """The checked ModelHeader of an open model file."""
    from fastnn.reading import file_size, load_json

    size = file_size(f)
    start = f.read(8)
    if len(start) < 8:
        raise ModelFileError(f"{path} is not a fastnn model: {size} bytes is too "
                             f"short for a safetensors file")
    n = int.from_bytes(start, "little")
    if n > MAX_HEADER or n > size - 8:
        if n <= MAX_HEADER and f.read(1) == b"{":
            raise ModelFileError(f"{path} is truncated: its header needs {n} bytes, "
                                 f"the file has {size - 8}")
        raise ModelFileError(f"{path} is not a fastnn model (not a safetensors file)")
    raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{path} is not a fastnn model (not a safetensors file)") from None
    if not text.lstrip().startswith("{"):
        raise ModelFileError(f"{path} is not a fastnn model (not a safetensors file)")
    header = load_json(text, f"{path}'s header", ModelFileError)
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a fastnn model (not a safetensors file)")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is a safetensors file but not a fastnn model "
                             f"(no fastnn metadata in its header)")
    fmt, fields = _check_metadata(meta, path)
    tensors = _tensor_table(header, 8 + n, size, path)
    _match_tensors(tensors, fmt.tensors(fields), fmt.described(fields), path)
    return ModelHeader(path, fmt.version, fmt, meta, fields, tensors, 8 + n)


def _check_metadata(meta: dict[str, Any], path: str) -> tuple["ModelFormat", dict[str, Any]]:
    """(format, checked fields) of the ``__metadata__`` of a model file."""
    from fastnn.schema import SchemaError

    fmt = _format_of(meta, path)
    try:
        fields = fmt.metadata.check(meta, "")
        fmt.check(fields)
    except SchemaError as exc:
        raise ModelFileError(f"{path} has a damaged fastnn header: {exc}") from None
    except UnknownLayerType as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return fmt, fields


def _format_of(meta: dict[str, Any], path: str) -> ModelFormat:
    version = meta.get("format_version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]{1,9}", version):
        raise ModelFileError(f"{path} has an unreadable format_version "
                             f"{version!r}; expected a number such as '{FORMAT_VERSION}'")
    if int(version) > max(FORMATS):
        writer = meta.get("fastnn_version", "?")
        writer = writer if isinstance(writer, str) and writer.isprintable() else "?"
        raise ModelFileError(
            f"{path} was written by a newer fastnn ({writer[:40]}, format version "
            f"{int(version)}); this fastnn {__version__} reads format version "
            f"{max(FORMATS)} at most. Upgrade fastnn to load it.")
    if int(version) not in FORMATS:
        raise ModelFileError(f"{path} has format version {int(version)}, which no fastnn "
                             f"writes; this one reads {sorted(FORMATS)}")
    return FORMATS[int(version)]


def _match_tensors(tensors: dict[str, Tensor], needed: dict[str, tuple[tuple[int, ...], str]],
                   described: str, path: str) -> None:
    """Refuse a tensor table that is not exactly what the metadata needs."""
    if set(tensors) != set(needed):
        missing = sorted(set(needed) - set(tensors))
        extra = sorted(set(tensors) - set(needed))
        raise ModelFileError(f"{path} has inconsistent tensors for {described}: "
                             f"missing {missing}, unexpected {extra}")
    for name, (shape, dtype) in needed.items():
        t = tensors[name]
        if t.shape != shape:
            raise ModelFileError(f"{path} has inconsistent shapes: {name} is {t.shape}, "
                                 f"but {described} need {shape}")
        if TENSOR_DTYPES[dtype] != t.dtype:
            raise ModelFileError(f"{path}: {name} is {t.dtype.name}, but the header says "
                                 f"{TENSOR_DTYPES[dtype].name}")


def read_header(path: PathLike) -> ModelHeader:
    """The header of a model file, checked (see ModelHeader); reads no tensor.

    Raises
    ------
    ModelFileError
        If the file is missing or not a regular file, is not a fastnn model,
        is truncated, has a newer format version, or its header is damaged
        or disagrees with its tensor table.
    """
    from fastnn.reading import open_regular

    path = os.fspath(path)
    with open_regular(path, ModelFileError, "model file") as f:
        return _read_header(f, path)


def read_metadata(path: PathLike) -> dict[str, str]:
    """The fastnn metadata of a model file's header, as the strings in the
    file, after the same checks as `load` (see `read_header`)."""
    return dict(read_header(path).metadata)


def load(path: PathLike, backend: str = "cython") -> Model:
    """The network (or ensemble) of a fastnn model file, built through KINDS:
    what ``fastnn.load`` (fastnn.io.load, which says more) returns. The
    header is checked whole before anything is allocated, then each tensor
    as it is read; nothing in the file is executed."""
    from fastnn.reading import open_regular

    get_backend(backend)
    path = os.fspath(path)
    with open_regular(path, ModelFileError, "model file") as f:
        return _build(f, _read_header(f, path), path, backend)


def _build(f: io.BufferedIOBase, header: ModelHeader, path: str, backend: str) -> Model:
    """The network of the open model file f, whose checked header is `header`."""

    def read(name: str) -> Array:
        t = header.tensors[name]
        array = np.empty(t.shape, t.dtype)
        f.seek(header.data_start + t.begin)
        try:
            got = f.readinto(memoryview(array).cast("B"))  # type: ignore[arg-type]
        except OSError as exc:
            raise ModelFileError(f"cannot read {path}: {exc.strerror}") from None
        if got != t.end - t.begin:
            raise ModelFileError(f"{path} changed while it was read (tensor {name})")
        if not np.isfinite(array).all():
            raise ModelFileError(f"{path}: {name} contains NaN or infinity")
        return array if array.dtype.isnative else array.astype(t.dtype.newbyteorder("="))

    try:
        return header.format.build(header.fields, read, backend)
    except ConfigError as exc:
        raise ModelFileError(f"{path} describes an invalid network ({exc})") from None
    except MemoryError:
        raise ModelFileError(f"not enough memory to load {path} "
                             f"({size_of(header):,} bytes of tensors)") from None


def size_of(header: ModelHeader) -> int:
    """The bytes of all tensors of a checked header."""
    return sum(t.end - t.begin for t in header.tensors.values())
