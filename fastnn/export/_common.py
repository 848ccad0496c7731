"""What every exporter shares: the error, the format record, the network
in words and as metadata, its computing layers as `Step`s, and the escaping
of every text an exporter writes into generated code or metadata."""
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from fastnn._version import __version__
from fastnn.exceptions import ConfigError, DataError, FastnnError
from fastnn.layers import Conv2D, Dense, Dropout, Flatten, L2Pool2D, MaxPool2D


class ExportError(FastnnError):
    """A network that cannot be exported, or an export that cannot be written."""


@dataclass(frozen=True)
class Exporter:
    """One export format.

    Attributes
    ----------
    name : str
        The name ``--format`` takes.
    title : str
        How messages call it.
    suffixes : tuple of str
        Output file suffixes that imply this format (the first is the usual one).
    write : callable
        ``write(net, path, source, force=False) -> list of paths written``.
    outputs : callable
        ``outputs(path) -> [(path, FileKind), ...]``: the files `write`
        writes, for the output policy (fastnn.files).
    """

    name: str
    title: str
    suffixes: tuple
    write: Callable
    outputs: Callable


# ---------------------------------------------------------------- helpers

def members_of(net):
    """The networks an export computes: an ensemble's members (the export
    then takes the mean of their outputs, as fastnn.ensemble does), or [net]."""
    return list(getattr(net, "members", [net]))


def _architecture(net):
    """The layers in words: "network [784, 30, 10], activations [...]" for a
    dense stack (as fastnn has always said it), else the input shape and the
    layers, each with its activation."""
    if net.plan.plain_dense:
        return f"network {list(net.sizes)}, activations {list(net.activations)}"
    layers = [repr(layer) if act is None or layer.activation else
              f"{repr(layer)[:-1]}, activation={act!r})"
              for layer, act in zip(net.layers, net.activations)]
    return f"network {'x'.join(map(str, net.input_shape))} -> {', '.join(layers)}"


def description(net, source=None):
    """One line saying which model this is, for headers and metadata."""
    scaling = ("uint8 inputs divided by 255" if net.input_scaling.in_kernels
               else "inputs used as given")
    nets = members_of(net)
    if len(nets) > 1:
        architecture = (f"ensemble of {len(nets)} networks, the mean of their outputs: "
                        + "; ".join(_architecture(m) for m in nets))
    else:
        architecture = _architecture(net)
    text = f"fastnn {__version__} {architecture}, {net.dtype}, {scaling}"
    if source is not None:
        text += f", from {os.fsdecode(source)}"
    return text


def prepared(net):
    """(the network with its scalings folded into its layers, its class names
    or None, its task or None, the fastnn.preprocessing.InputScaling left to
    apply to raw rows first: its ``divisor`` and its ``offset`` and
    ``scale``, each None when not): what every exporter writes (see
    fastnn.preprocessing.fold)."""
    from fastnn.preprocessing import fold

    pre = net.preprocessing
    try:
        plain, rest = fold(net)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    except DataError as exc:
        # targets near 1e50 folded into float32 weights: refused, not "NaN parameters"
        raise ExportError(f"cannot export: the model's scaling folded into its weights "
                          f"overflows: {exc}") from None
    if pre is None:
        return plain, None, None, rest
    return plain, pre.class_names(), pre.task, rest


def raw_columns(net):
    """The network's raw-column encoding (fastnn.columns.Columns), or None."""
    pre = net.preprocessing
    return None if pre is None else pre.columns


def metadata(net, source=None, classes=None, task=None, columns=None):
    """fastnn's description of a network as string pairs (ONNX metadata_props).

    An ensemble's: its first member's, with ``ensemble`` (the number of
    members) and ``member_<j>``, each member's architecture, seed and epochs
    as JSON."""
    nets = members_of(net)
    meta = _network_metadata(nets[0])
    if len(nets) > 1:
        meta["ensemble"] = str(len(nets))
        for j, m in enumerate(nets):
            meta[f"member_{j}"] = json.dumps(
                {"sizes": list(m.sizes), "activations": list(m.activations),
                 "layers": m.plan.config()["layers"], "seed": m.seed,
                 "epochs_trained": m.epochs_trained})
    if source is not None:
        meta["source"] = os.fsdecode(source)
    if task is not None:
        meta["task"] = task
    if classes is not None:
        # output unit k is class "class_<k>" (with one unit: 0 and 1), each name
        # a value of its own so that onnx_text's escapes are the only ones
        meta["n_classes"] = str(len(classes))
        meta.update((f"class_{k}", name) for k, name in enumerate(classes))
    if columns is not None:
        # the graph takes encoded rows: the table that encodes raw ones
        # (fastnn.columns; a JSON value, escaped as every other) and the
        # name of each input
        meta["columns"] = json.dumps(columns.to_dict(), ensure_ascii=True)
        meta["input_names"] = json.dumps(columns.unit_names(), ensure_ascii=True)
    return {key: onnx_text(value) for key, value in meta.items()}


def _network_metadata(net):
    return {
        "fastnn_version": __version__,
        "sizes": json.dumps(list(net.sizes)),
        "activations": json.dumps(list(net.activations)),
        # the architecture as fastnn's model files describe it (format 2)
        "input_shape": json.dumps(list(net.input_shape)),
        "layers": json.dumps(net.plan.config()["layers"]),
        "slope": repr(float(net.slope)),
        "dtype": str(net.dtype),
        "loss": net.loss,
        "input_dtype": json.dumps(net.input_dtype),
        "input_scaling": json.dumps({**net.input_scaling.record(),
                                     "divide_by": net.input_scaling.divisor}),
        "seed": str(net.seed),
        "epochs_trained": str(net.epochs_trained),
    }


def check_exportable(net, names):
    """Raise ExportError unless every activation of net has an entry in `names`
    and the parameters are finite (a NaN would not survive the C literals)."""
    for name in net.activations:
        if name is not None and name not in names:
            raise ExportError(f"cannot export activation {name!r}; this format knows "
                              f"{sorted(names)}")
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise ExportError(f"layer {l + 1} has NaN or infinite parameters; "
                              f"nothing sensible to export")


@dataclass(frozen=True)
class Step:
    """One computing layer of an exported network, as the exporters see it.

    Flatten and Dropout are not steps: a row of an image is already its
    HWC-order vector, and dropout is the identity at inference.

    Attributes
    ----------
    kind : {"dense", "conv2d", "maxpool2d", "l2pool2d"}
    shape_in, shape_out : tuple
        ``(n,)`` or an image ``(H, W, C)``.
    activation : str
        "identity" for pooling.
    param_index : int or None
        Index into ``net.weights`` / ``net.biases`` of a dense or conv2d step.
    window, stride : (int, int)
        The kernel or pooling window (kh, kw) and its strides (sh, sw).
    pads : (int, int, int, int)
        Zero rows and columns (top, bottom, left, right) around a
        convolution's input.
    """

    kind: str
    shape_in: tuple
    shape_out: tuple
    activation: str
    param_index: Optional[int] = None
    window: tuple = (1, 1)
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)

    @property
    def n_in(self):
        return math.prod(self.shape_in)

    @property
    def n_out(self):
        return math.prod(self.shape_out)


def steps(net):
    """The network's layers as a list of `Step`, from its Plan and layer objects."""
    plan = net.plan
    param_of = {slot.layer: k for k, slot in enumerate(plan.slots)}
    out = []
    for i, layer in enumerate(plan.layers):
        shape_in, shape_out = tuple(plan.shapes[i]), tuple(plan.shapes[i + 1])
        if isinstance(layer, (Flatten, Dropout)):
            continue
        if isinstance(layer, Dense):
            out.append(Step("dense", shape_in, shape_out, plan.activations[i], param_of[i]))
        elif isinstance(layer, Conv2D):
            out.append(Step("conv2d", shape_in, shape_out, plan.activations[i], param_of[i],
                            layer.kernel, layer.stride, layer.padding_amounts(shape_in)))
        elif isinstance(layer, (MaxPool2D, L2Pool2D)):
            out.append(Step(layer.type, shape_in, shape_out, "identity", None, layer.size,
                            layer.stride))
        else:
            raise ExportError(f"cannot export a {type(layer).__name__} layer")
    return out


# ------------------------------------------------------------- escaping
#
# Every string an exporter writes into generated code or metadata (a file
# name, a description, an option) goes through the one function for its
# language and context below. Their results are printable ASCII (printable
# Unicode too for ONNX), on one line, with the language's quote and comment
# delimiters escaped, so no name can end a docstring, a string or a comment,
# start a line of code, or stop a compiler.

def _escaped(c):
    r"""One character as a Python-style escape: \n, \x00, \xe9, \udcff, \U0001f600."""
    return ascii(c)[1:-1]


def python_text(text):
    r"""text safe inside a Python docstring (\"\"\"...\"\"\") or comment: backslashes
    and double quotes escaped, everything else outside printable ASCII as an
    escape, so the docstring reads back as the original text."""
    out = []
    for c in os.fsdecode(text) if isinstance(text, bytes) else str(text):
        if c in '\\"':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append(_escaped(c))
    return "".join(out)


def python_literal(value):
    """The Python literal of a str, int, float, None or tuple of them (maybe
    nested), in ASCII."""
    if isinstance(value, tuple):
        for v in value:
            python_literal(v)
    elif not isinstance(value, (str, int, float, type(None))):
        raise TypeError(f"no literal for {value!r}")
    return ascii(value)


# Characters a C comment or string literal takes as they are: no backslash,
# quote, '?' (trigraphs), '*' (so no '*/' or '/*' can form).
_C_PLAIN = frozenset(c for c in map(chr, range(32, 127)) if c not in '\\"?*')


def c_text(text):
    r"""text safe inside a C comment (/* ... */) and a C string literal: every
    character outside plain printable ASCII as octal escapes of its UTF-8
    bytes (\052 for '*', \042 for a quote, \012 for a newline)."""
    out = []
    for c in os.fsdecode(text) if isinstance(text, bytes) else str(text):
        if c in _C_PLAIN:
            out.append(c)
        else:
            out.extend(f"\\{b:03o}" for b in c.encode("utf-8", "surrogatepass"))
    return "".join(out)


def onnx_text(text):
    """text as an ONNX (protobuf) string: valid UTF-8, one line, printable;
    backslashes, control characters and undecodable bytes (surrogates from
    a non-UTF-8 file name) as Python-style escapes."""
    out = []
    for c in os.fsdecode(text) if isinstance(text, bytes) else str(text):
        if c == "\\":
            out.append("\\\\")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(_escaped(c))
    return "".join(out)

