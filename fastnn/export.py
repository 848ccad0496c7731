"""Export a trained network to run without fastnn: ONNX, one C99 file, or NumPy.

Every exported model takes the raw feature rows a fastnn user gives
(e.g. MNIST pixels 0..255, as float32) and applies the network's input
scaling itself: inputs of a network trained on uint8 are divided by 255, as
fastnn's kernels do (a division, not a multiplication by 1/255, so the
results match to the last bit before the first layer); float inputs are
used as given. The maths is then fastnn's, layer by layer:
``a_{l+1} = act_l(a_l @ W_l + b_l)`` in the network's dtype.

>>> import fastnn
>>> from fastnn.export import export
>>> net = fastnn.load("mnist.safetensors")           # doctest: +SKIP
>>> export(net, "mnist.onnx", "onnx")                 # doctest: +SKIP
['mnist.onnx']
>>> export(net, "mnist.c", "c")                       # doctest: +SKIP
['mnist.c']
>>> export(net, "mnist_model.py", "numpy")            # doctest: +SKIP
['mnist_model.py', 'mnist_model.npz']
"""
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastnn._version import __version__
from fastnn.exceptions import ConfigError, DataError, FastnnError, lookup
from fastnn.files import FileKind, atomic_write, check_distinct, check_output, starting_with
from fastnn.layers import Conv2D, Dense, Dropout, Flatten, L2Pool2D, MaxPool2D

# onnxruntime 1.17 and later run opset 17 (Softmax and LeakyRelu as used
# here have not changed since 13); IR version 8 is the one that goes with it,
# so older runtimes that know the opset also accept the file.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8


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


def _description(net, source=None):
    """One line saying which model this is, for headers and metadata."""
    scaling = ("uint8 inputs divided by 255" if net.input_dtype == "uint8"
               else "inputs used as given")
    text = f"fastnn {__version__} {_architecture(net)}, {net.dtype}, {scaling}"
    if source is not None:
        text += f", from {os.fsdecode(source)}"
    return text


def _prepared(net):
    """(the network with its scalings folded into its layers, its class names
    or None, its task or None, the scaling left to apply to raw rows first:
    ``(offset, scale)`` or None): what every exporter writes (see
    fastnn.preprocessing.fold)."""
    from fastnn.preprocessing import fold

    pre = net.preprocessing
    if pre is None:
        return net, None, None, None
    try:
        plain, shift = fold(net)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    except DataError as exc:
        # targets near 1e50 folded into float32 weights: refused, not "NaN parameters"
        raise ExportError(f"cannot export: the model's scaling folded into its weights "
                          f"overflows: {exc}") from None
    return plain, pre.class_names(), pre.task, shift


def _columns(net):
    """The network's raw-column encoding (fastnn.columns.Columns), or None."""
    pre = net.preprocessing
    return None if pre is None else pre.columns


def _metadata(net, source=None, classes=None, task=None, columns=None):
    """fastnn's description of a network as string pairs (ONNX metadata_props)."""
    meta = {
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
        "input_scaling": json.dumps({"input_dtype": net.input_dtype, "scale": net.input_scale,
                                     "divide_by": 255 if net.input_dtype == "uint8" else None}),
        "seed": str(net.seed),
        "epochs_trained": str(net.epochs_trained),
    }
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


def _check_exportable(net, names):
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
    param : int or None
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
    param: object = None
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


# ------------------------------------------------------------------- ONNX

def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'fastnn[onnx]' "
                          "(or pip install onnx)") from None
    return onnx


def _onnx_op(op, **attributes):
    def nodes(net, z, out):
        from onnx import helper

        return [helper.make_node(op, [z], [out], **attributes)], []
    return nodes


def _onnx_leaky_relu(net, z, out):
    from onnx import helper, numpy_helper

    if net.dtype == np.float32:
        return [helper.make_node("LeakyRelu", [z], [out], alpha=float(net.slope))], []
    # LeakyRelu's alpha is a float32 attribute: 0.01 would become
    # 0.009999999776; Where(z > 0, z, z * slope) keeps the float64 slope
    slope, zero = f"{z}_slope", f"{z}_zero"
    consts = [numpy_helper.from_array(np.array(net.slope, dtype=net.dtype), slope),
              numpy_helper.from_array(np.array(0, dtype=net.dtype), zero)]
    nodes = [helper.make_node("Greater", [z, zero], [f"{z}_positive"]),
             helper.make_node("Mul", [z, slope], [f"{z}_scaled"]),
             helper.make_node("Where", [f"{z}_positive", z, f"{z}_scaled"], [out])]
    return nodes, consts


# fastnn activation -> nodes(net, z, out) -> (ONNX nodes computing out from
# z, their constants); identity needs no node except on the output layer,
# where an Identity names the graph output.
ONNX_ACTIVATIONS = {
    "identity": _onnx_op("Identity"),
    "sigmoid": _onnx_op("Sigmoid"),
    "tanh": _onnx_op("Tanh"),
    "relu": _onnx_op("Relu"),
    "leaky_relu": _onnx_leaky_relu,
    "softmax": _onnx_op("Softmax", axis=1),
}


class _Graph:
    """ONNX nodes and initializers under construction."""

    def __init__(self, net):
        from onnx import TensorProto

        self.net = net
        self.elem = TensorProto.DOUBLE if net.dtype == np.float64 else TensorProto.FLOAT
        self.nodes, self.inits = [], []

    def const(self, name, value, dtype=None):
        from onnx import numpy_helper

        value = np.ascontiguousarray(np.asarray(value, dtype=dtype or self.net.dtype))
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op, inputs, out, **attributes):
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), [out], **attributes))
        return out


def _onnx_conv(g, step, x, k):
    """x (N, C, H, W) -> the convolution of step, without its activation.

    Conv in float32; onnxruntime implements Conv in float32 only, so a
    float64 network spells it out: zero padding, the kh * kw strided slices
    of the input concatenated channel-wise (im2col, in fastnn's (i, j, c)
    order), one MatMul with the HWIO weights as (kh*kw*C, F), and the bias.
    """
    W, b = g.net.weights[k], g.net.biases[k]
    (kh, kw), (sh, sw) = step.window, step.stride
    top, bottom, left, right = step.pads
    OH, OW, F = step.shape_out
    name = f"conv{k}"
    if g.net.dtype == np.float32:
        return g.node("Conv", [x, g.const(f"W{k}", W.transpose(3, 2, 0, 1)),
                               g.const(f"b{k}", b)], name,
                      kernel_shape=[kh, kw], strides=[sh, sw], pads=[top, left, bottom, right])
    if any(step.pads):
        x = g.node("Pad", [x, g.const(f"{name}_pads", [0, 0, top, left, 0, 0, bottom, right],
                                      np.int64)], f"{name}_padded")
    cols = _onnx_windows(g, x, step, name)
    col = g.node("Concat", cols, f"{name}_col", axis=1)
    col = g.node("Transpose", [col], f"{name}_col_nhwc", perm=[0, 2, 3, 1])
    z = g.node("MatMul", [col, g.const(f"W{k}", W.reshape(-1, F))], f"{name}_matmul")
    z = g.node("Add", [z, g.const(f"b{k}", b)], f"{name}_nhwc")
    return g.node("Transpose", [z], name, perm=[0, 3, 1, 2])


def _onnx_windows(g, x, step, name):
    """The kh * kw strided slices (N, C, OH, OW) of x, one per window position."""
    (kh, kw), (sh, sw) = step.window, step.stride
    OH, OW, _ = step.shape_out
    out = []
    for i in range(kh):
        for j in range(kw):
            out.append(g.node("Slice", [
                x, g.const(f"{name}_start{i}_{j}", [i, j], np.int64),
                g.const(f"{name}_end{i}_{j}", [i + sh * (OH - 1) + 1, j + sw * (OW - 1) + 1],
                        np.int64),
                g.const(f"{name}_axes{i}_{j}", [2, 3], np.int64),
                g.const(f"{name}_steps{i}_{j}", [sh, sw], np.int64)], f"{name}_slice{i}_{j}"))
    return out


def _onnx_pool(g, step, x, l):
    """x (N, C, H, W) -> the pooling of step: MaxPool, or LpPool with p = 2
    (spelled out as sqrt(sum of squares) in float64, which onnxruntime's
    LpPool does not take)."""
    (kh, kw), (sh, sw) = step.window, step.stride
    name = f"pool{l}"
    if step.kind == "maxpool2d":
        return g.node("MaxPool", [x], name, kernel_shape=[kh, kw], strides=[sh, sw])
    if g.net.dtype == np.float32:
        return g.node("LpPool", [x], name, kernel_shape=[kh, kw], strides=[sh, sw], p=2)
    squares = g.node("Mul", [x, x], f"{name}_squares")
    total = g.node("Sum", _onnx_windows(g, squares, step, name), f"{name}_sum")
    return g.node("Sqrt", [total], name)


def onnx_model(net, source=None):
    """The network as an ``onnx.ModelProto``, checked by ``onnx.checker``
    (``full_check``: with shape inference).

    The graph input ``input`` is float32, shape ``[N, n_inputs]`` (N
    dynamic): raw feature rows, as fastnn takes them (an image's row in HWC
    order). For a network trained on uint8 pixels the graph divides them by
    255. Float64 networks cast the input to double first (then divide, as
    fastnn does) and keep float64 weights, so their ``output`` is float64;
    float32 networks stay float32 throughout.

    Convolutional networks reshape the rows to NHWC and transpose them to
    ONNX's NCHW once; convolution weights are stored OIHW (HWIO transposed),
    and the first Dense layer after the images has its weight rows permuted
    from fastnn's HWC flattening to ONNX's CHW Flatten, so no transpose
    back is needed. A network whose output layer is a convolution has its
    output transposed back to fastnn's HWC rows, ``[N, n_outputs]``.

    Parameters
    ----------
    net : fastnn.Network
    source : str, optional
        Where the network came from, recorded in the metadata.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ExportError
        If the onnx package is not installed.
    """
    onnx = _require_onnx()
    from onnx import TensorProto, helper

    columns = _columns(net)
    net, classes, task, shift = _prepared(net)
    _check_exportable(net, ONNX_ACTIVATIONS)
    g = _Graph(net)
    n_in, n_out = int(net.plan.n_inputs), int(net.plan.n_outputs)
    x = "input"
    if net.dtype == np.float64:
        x = g.node("Cast", [x], "input_double", to=TensorProto.DOUBLE)
    if net.input_dtype == "uint8":
        # one divisor per input, not a scalar: onnxruntime folds a division by
        # a scalar constant into the next MatMul as a float32 factor 1/255,
        # which is not fastnn's rounding (and loses float64 precision)
        x = g.node("Div", [x, g.const("input_divisor", np.full(n_in, 255))], "input_scaled")
    if shift is not None:
        # the stored scaling before a first convolution or pooling layer, as
        # fastnn applies it: (x - offset) / scale in the network's dtype
        x = g.node("Sub", [x, g.const("input_offset", shift[0])], "input_centred")
        x = g.node("Div", [x, g.const("input_scale", shift[1])], "input_standardised")
    program = steps(net)
    image = None        # (H, W, C) while x is an NCHW image, None while it is rows
    if program[0].kind != "dense":
        image = net.input_shape
        x = g.node("Reshape", [x, g.const("image_shape", [-1, *image], np.int64)],
                   "input_nhwc")
        x = g.node("Transpose", [x], "input_nchw", perm=[0, 3, 1, 2])
    for l, step in enumerate(program):
        last = l == len(program) - 1
        k = step.param
        if step.kind == "dense":
            W = net.weights[k]
            if image is not None:
                # fastnn's row is (h, w, c), ONNX's Flatten of NCHW (c, h, w)
                H, W_, C = image
                W = W.reshape(H, W_, C, -1).transpose(2, 0, 1, 3).reshape(W.shape)
                x = g.node("Flatten", [x], f"flat{l}", axis=1)
                image = None
            x = g.node("MatMul", [x, g.const(f"W{k}", W)], f"matmul{k}")
            z = g.node("Add", [x, g.const(f"b{k}", net.biases[k])], f"z{k}")
        elif step.kind == "conv2d":
            z = _onnx_conv(g, step, x, k)
            image = step.shape_out
        else:
            z = _onnx_pool(g, step, x, l)
            image = step.shape_out
        if last and image is not None:
            # back to fastnn's rows: NCHW -> NHWC -> (N, OH*OW*F)
            z = g.node("Transpose", [z], "output_nhwc", perm=[0, 2, 3, 1])
            z = g.node("Reshape", [z, g.const("output_shape", [-1, n_out], np.int64)],
                       "output_rows")
        x = z
        if step.activation != "identity" or last:
            x = "output" if last else f"a{l}"
            more_nodes, consts = ONNX_ACTIVATIONS[step.activation](net, z, x)
            g.nodes += more_nodes
            g.inits += consts
    graph = helper.make_graph(
        g.nodes, "fastnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("output", g.elem, ["N", n_out])],
        initializer=g.inits, doc_string=onnx_text(_description(net, source)))
    model = helper.make_model(graph, producer_name="fastnn", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              doc_string=onnx_text(_description(net, source)))
    model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(model, _metadata(net, source, classes, task, columns))
    onnx.checker.check_model(model, full_check=True)
    return model


# What an existing file must hold to be replaced without force: an ONNX
# model (a protobuf ModelProto starts with field 1, ir_version, a varint),
# or the C or NumPy code and weights that fastnn export writes.
ONNX_FILE = starting_with("ONNX model", b"\x08")
GENERATED_C = FileKind("C file written by fastnn export",
                       lambda head: b"Generated by `fastnn export --format c`" in head)
GENERATED_PY = FileKind("NumPy module written by fastnn export",
                        lambda head: b"Generated by `fastnn export --format numpy`" in head)
# (a zip archive whose first member, named at byte 30, is W0.npy)
NPZ_FILE = FileKind("weights .npz written by fastnn export",
                    lambda head: head[:4] == b"PK\x03\x04" and head[30:36] == b"W0.npy")


def export_onnx(net, path, source=None, force=False):
    """Write the network as an ONNX model (see `onnx_model`) to path, atomically.

    Returns
    -------
    list of str
        ``[path]``.
    """
    data = onnx_model(net, source).SerializeToString()
    atomic_write(path, data, error=ExportError, kind=ONNX_FILE, force=force)
    return [os.fspath(path)]


# ---------------------------------------------------------------------- C

@dataclass(frozen=True)
class _CType:
    """How one precision is spelled in C."""

    real: str
    exp: str
    tanh: str

    def literal(self, value):
        """A C literal that reads back as exactly `value` in this precision."""
        if self.real == "double":
            return "%.17g" % value
        text = "%.9g" % value
        # "1f" is not a C literal: a float constant needs a point or an exponent
        if not any(c in text for c in ".e"):
            text += ".0"
        return text + "f"


C_TYPES = {
    np.dtype(np.float32): _CType("float", "expf", "tanhf"),
    np.dtype(np.float64): _CType("double", "exp", "tanh"),
}

# fastnn activation -> the C function applying it in place to a[0..n), or
# None for identity. {real}, {exp}, {tanh} and {slope} are filled in per
# network; only the functions a network uses are emitted (-Wall warns about
# unused static functions).
C_ACTIVATIONS = {
    "identity": None,
    "sigmoid": """\
static void fastnn_sigmoid(fastnn_real *a, int n)
{{
    int i;
    for (i = 0; i < n; i++)
        a[i] = 1 / (1 + {exp}(-a[i]));
}}
""",
    "tanh": """\
static void fastnn_tanh(fastnn_real *a, int n)
{{
    int i;
    for (i = 0; i < n; i++)
        a[i] = {tanh}(a[i]);
}}
""",
    "relu": """\
static void fastnn_relu(fastnn_real *a, int n)
{{
    int i;
    for (i = 0; i < n; i++)
        if (!(a[i] > 0))
            a[i] = 0;
}}
""",
    "leaky_relu": """\
static void fastnn_leaky_relu(fastnn_real *a, int n)
{{
    int i;
    for (i = 0; i < n; i++)
        if (!(a[i] > 0))
            a[i] *= {slope};
}}
""",
    "softmax": """\
/* exp(z - max z) / sum: subtracting the maximum keeps exp from overflowing */
static void fastnn_softmax(fastnn_real *a, int n)
{{
    int i;
    fastnn_real max = a[0], sum = 0;
    for (i = 1; i < n; i++)
        if (a[i] > max)
            max = a[i];
    for (i = 0; i < n; i++) {{
        a[i] = {exp}(a[i] - max);
        sum += a[i];
    }}
    for (i = 0; i < n; i++)
        a[i] /= sum;
}}
""",
}

_C_HEADER = """\
/* {description}.
 *
 * Generated by `fastnn export --format c`: the network's forward pass in
 * dependency-free C99, computed in {real} ({dtype}), with its weights below.
 * Layers: {layers}.
 * Inputs: {scaling}.
 *
 * Use it from your program (link with -lm):
 *
 *     int fastnn_predict(const float *input, float *output);
 *     int fastnn_predict_work(const float *input, float *output, {real} *work);
 *
 * input holds one raw feature row ({n_in} values{input_order}), output
 * receives the {n_out} output activations{output_order}; the result is the
 * predicted class: {rule}.
 *
 * Nothing is allocated. fastnn_predict keeps its activations on the stack
 * ({stack} bytes per call); fastnn_predict_work uses the caller's work
 * buffer instead: FASTNN_WORK_SIZE = {work} {real}s ({stack} bytes; a
 * static array will do for calls made one at a time).
 *
 * Built with -DFASTNN_MAIN it is a program: it reads one row per line
 * from stdin (numbers separated by spaces, tabs or commas) and prints the
 * predicted class of each, or with --outputs the output activations:
 *
 *     cc -std=c99 -O2 -DFASTNN_MAIN {name} -o model -lm
 *     ./model < rows.txt
 */
#include <math.h>

typedef {real} fastnn_real;

enum {{
    FASTNN_N_INPUTS = {n_in},
    FASTNN_N_OUTPUTS = {n_out},
    /* the widest activation row, input included */
    FASTNN_MAX_WIDTH = {width},
    /* entries of fastnn_predict_work's work buffer: two rows of MAX_WIDTH */
    FASTNN_WORK_SIZE = 2 * FASTNN_MAX_WIDTH
}};

int fastnn_predict(const float *input, float *output);
int fastnn_predict_work(const float *input, float *output, fastnn_real *work);
"""

# The layer functions of the C file, by Step.kind; only those a network uses
# are emitted (-Wall warns about unused static functions). Rows are HWC, as
# in fastnn: in[(y * W + x) * C + c].
C_LAYERS = {
    "dense": """\
/* out := in @ W + b, with W stored row by row as fastnn keeps it, (n_in, n_out) */
static void fastnn_dense(const fastnn_real *in, int n_in, const fastnn_real *W,
                         const fastnn_real *b, int n_out, fastnn_real *out)
{
    int i, j;
    for (j = 0; j < n_out; j++)
        out[j] = 0;
    for (i = 0; i < n_in; i++) {
        const fastnn_real x = in[i];
        const fastnn_real *row = W + (long)i * n_out;
        for (j = 0; j < n_out; j++)
            out[j] += x * row[j];
    }
    for (j = 0; j < n_out; j++)
        out[j] += b[j];
}
""",
    "conv2d": """\
/* out[oy, ox, f] := b[f] + sum over i, j, c of in[oy*sh + i - pt, ox*sw + j - pl, c]
   * W[i, j, c, f], the cross-correlation; in (H, W, C), W (kh, kw, C, F) as
   fastnn keeps it (HWIO), out (OH, OW, F). Positions outside the input are
   the zero padding of "same" convolutions: they add nothing. */
static void fastnn_conv2d(const fastnn_real *in, int H, int W, int C,
                          const fastnn_real *w, const fastnn_real *b, int kh, int kw,
                          int F, int sh, int sw, int pt, int pl, int OH, int OW,
                          fastnn_real *out)
{
    int oy, ox, i, j, c, f;
    for (oy = 0; oy < OH; oy++)
        for (ox = 0; ox < OW; ox++) {
            fastnn_real *o = out + ((long)oy * OW + ox) * F;
            for (f = 0; f < F; f++)
                o[f] = 0;
            for (i = 0; i < kh; i++) {
                const int y = oy * sh + i - pt;
                if (y < 0 || y >= H)
                    continue;
                for (j = 0; j < kw; j++) {
                    const int x = ox * sw + j - pl;
                    if (x < 0 || x >= W)
                        continue;
                    for (c = 0; c < C; c++) {
                        const fastnn_real v = in[((long)y * W + x) * C + c];
                        const fastnn_real *row = w + ((long)(i * kw + j) * C + c) * F;
                        for (f = 0; f < F; f++)
                            o[f] += v * row[f];
                    }
                }
            }
            for (f = 0; f < F; f++)
                o[f] += b[f];
        }
}
""",
    "maxpool2d": """\
/* out[oy, ox, c] := the maximum of in[oy*sh + i, ox*sw + j, c] over the
   kh x kw window; a NaN in the window gives NaN, as in fastnn.
   in (H, W, C), out (OH, OW, C). */
static void fastnn_maxpool2d(const fastnn_real *in, int W, int C, int kh, int kw,
                             int sh, int sw, int OH, int OW, fastnn_real *out)
{
    int oy, ox, i, j, c;
    for (oy = 0; oy < OH; oy++)
        for (ox = 0; ox < OW; ox++)
            for (c = 0; c < C; c++) {
                fastnn_real m = in[((long)oy * sh * W + (long)ox * sw) * C + c];
                for (i = 0; i < kh; i++)
                    for (j = 0; j < kw; j++) {
                        const fastnn_real v =
                            in[((long)(oy * sh + i) * W + (ox * sw + j)) * C + c];
                        if (v > m || isnan(v))
                            m = v;
                    }
                out[((long)oy * OW + ox) * C + c] = m;
            }
}
""",
    "l2pool2d": """\
/* out[oy, ox, c] := sqrt(sum of in[oy*sh + i, ox*sw + j, c]^2) over the
   kh x kw window.  in (H, W, C), out (OH, OW, C). */
static void fastnn_l2pool2d(const fastnn_real *in, int W, int C, int kh, int kw,
                            int sh, int sw, int OH, int OW, fastnn_real *out)
{
    int oy, ox, i, j, c;
    for (oy = 0; oy < OH; oy++)
        for (ox = 0; ox < OW; ox++)
            for (c = 0; c < C; c++) {
                fastnn_real s = 0;
                for (i = 0; i < kh; i++)
                    for (j = 0; j < kw; j++) {
                        const fastnn_real v =
                            in[((long)(oy * sh + i) * W + (ox * sw + j)) * C + c];
                        s += v * v;
                    }
                out[((long)oy * OW + ox) * C + c] = {sqrt}(s);
            }
}
""",
}

_C_PREDICT = """\
int fastnn_predict_work(const float *input, float *output, fastnn_real *work)
{{
    /* the activations alternate between the two halves of work */
    fastnn_real *a = work, *z = work + FASTNN_MAX_WIDTH;
    int i, best = 0;

    for (i = 0; i < FASTNN_N_INPUTS; i++)
        a[i] = {scale_input};
{layers}
    for (i = 0; i < FASTNN_N_OUTPUTS; i++)
        output[i] = (float){result}[i];
{decide}
    return best;
}}

int fastnn_predict(const float *input, float *output)
{{
    fastnn_real work[FASTNN_WORK_SIZE];
    return fastnn_predict_work(input, output, work);
}}
"""

_C_MAIN = """\
#ifdef FASTNN_MAIN
#include <stdio.h>
#include <string.h>

/* One number of the current line into *value: 1 if read, 0 at the end of
   the line, -1 at the end of the input, -2 if the next word is not a number. */
static int fastnn_read_value(float *value)
{
    int c;
    do
        c = getchar();
    while (c == ' ' || c == '\\t' || c == '\\r' || c == ',');
    if (c == EOF)
        return -1;
    if (c == '\\n')
        return 0;
    ungetc(c, stdin);
    return scanf("%f", value) == 1 ? 1 : -2;
}

int main(int argc, char **argv)
{
    static float input[FASTNN_N_INPUTS];
    float output[FASTNN_N_OUTPUTS], value;
    int outputs = 0, n, r, i, label;
    long line = 0;

    if (argc > 2 || (argc == 2 && strcmp(argv[1], "--outputs") != 0)) {
        fprintf(stderr, "usage: %s [--outputs] < rows\\n", argv[0]);
        return 2;
    }
    outputs = argc == 2;
    for (;;) {
        line++;
        n = 0;
        while ((r = fastnn_read_value(&value)) == 1) {
            if (n < FASTNN_N_INPUTS)
                input[n] = value;
            n++;
        }
        if (r == -2) {
            fprintf(stderr, "line %ld: not a number\\n", line);
            return 1;
        }
        if (n == 0) {           /* a blank line, or the end */
            if (r == -1)
                break;
            continue;
        }
        if (n != FASTNN_N_INPUTS) {
            fprintf(stderr, "line %ld has %d values; the model expects %d\\n",
                    line, n, (int)FASTNN_N_INPUTS);
            return 1;
        }
        label = fastnn_predict(input, output);
#ifdef FASTNN_REGRESSION
        outputs = 1;            /* a regression's outputs are its predictions */
#endif
        if (outputs) {
            for (i = 0; i < FASTNN_N_OUTPUTS; i++)
                printf(i ? " %.9g" : "%.9g", output[i]);
            printf("\\n");
        } else {
#ifdef FASTNN_CLASS_NAME
            printf("%s\\n", FASTNN_CLASS_NAME(label));
#else
            printf("%d\\n", label);
#endif
        }
        if (r == -1)
            break;
    }
    return ferror(stdout) ? 1 : 0;
}
#endif
"""


def _c_array(name, values, ctype, per_line):
    flat = np.asarray(values).ravel().tolist()
    lines = []
    for start in range(0, len(flat), per_line):
        lines.append("    " + ", ".join(ctype.literal(v) for v in flat[start:start + per_line]))
    return (f"static const fastnn_real {name}[{len(flat)}] = {{\n" + ",\n".join(lines)
            + "\n};\n")


def _c_call(step, src, dst):
    """The C statement computing `step` from the row src into the row dst."""
    k = step.param
    if step.kind == "dense":
        return (f"fastnn_dense({src}, {step.n_in}, fastnn_W{k}, fastnn_b{k}, {step.n_out}, "
                f"{dst});")
    (kh, kw), (sh, sw) = step.window, step.stride
    OH, OW, F = step.shape_out
    H, W, C = step.shape_in
    if step.kind == "conv2d":
        top, _, left, _ = step.pads
        return (f"fastnn_conv2d({src}, {H}, {W}, {C}, fastnn_W{k}, fastnn_b{k}, {kh}, {kw}, "
                f"{F}, {sh}, {sw}, {top}, {left}, {OH}, {OW}, {dst});")
    return f"fastnn_{step.kind}({src}, {W}, {C}, {kh}, {kw}, {sh}, {sw}, {OH}, {OW}, {dst});"


def _c_layer_comment(step):
    shapes = f"{'x'.join(map(str, step.shape_in))} -> {'x'.join(map(str, step.shape_out))}"
    if step.kind == "dense":
        return f"{shapes}, {step.activation}"
    return (f"{step.kind} {step.window[0]}x{step.window[1]}, stride {step.stride[0]}x"
            f"{step.stride[1]}, padding {step.pads}, {shapes}, {step.activation}")


def c_source(net, source=None, name="model.c"):
    """The network as one dependency-free C99 source file (a str).

    The file defines ``int fastnn_predict(const float *input, float *output)``,
    ``int fastnn_predict_work(const float *input, float *output, fastnn_real
    *work)`` (the same with a caller's work buffer of ``FASTNN_WORK_SIZE``
    entries, for convolutional networks whose activations are too large for
    a small stack), for a classifier with class names
    ``const char *fastnn_class_name(int k)``, and, when compiled with
    ``-DFASTNN_MAIN``, a ``main`` that reads rows from stdin. Weights are
    ``static const`` arrays in the network's dtype (``float`` or
    ``double``), printed with enough digits to read back exactly, and the
    arithmetic is done in that precision.
    Convolution and pooling are direct loops over HWC rows, as fastnn
    stores them; convolution weights stay HWIO.

    Parameters
    ----------
    net : fastnn.Network
    source : str, optional
        Where the network came from, named in the header comment.
    name : str, default "model.c"
        The file's name, for the build line in the header comment.

    Returns
    -------
    str
    """
    columns = _columns(net)
    net, classes, task, shift = _prepared(net)
    _check_exportable(net, C_ACTIVATIONS)
    ctype = C_TYPES[np.dtype(net.dtype)]
    program = steps(net)
    width = max([int(net.plan.n_inputs)] + [s.n_out for s in program])
    fill = {"real": ctype.real, "exp": ctype.exp, "tanh": ctype.tanh,
            "slope": ctype.literal(float(net.dtype.type(net.slope)))}
    uint8 = net.input_dtype == "uint8"
    n_in, n_out = int(net.plan.n_inputs), int(net.plan.n_outputs)
    image_in, image_out = len(net.input_shape) == 3, len(net.plan.shapes[-1]) == 3
    header = _C_HEADER.format(
        description=c_text(_description(net, source)),
        real=ctype.real, dtype=c_text(net.dtype),
        layers=c_text(", ".join(f"{int(s.n_in)} -> {int(s.n_out)} {s.activation}"
                                for s in program) if net.plan.plain_dense
                      else "; ".join(_c_layer_comment(s) for s in program)),
        scaling=c_text("raw uint8 pixel values 0..255, divided by 255 here as in training"
                       if uint8 else "raw features, scaled here as in training: (x - "
                                     "fastnn_input_offset[i]) / fastnn_input_scale[i]"
                       if shift is not None else
                       f"used as given (trained on {net.input_dtype or 'unknown'} inputs)"),
        n_in=n_in, n_out=n_out, width=int(width), work=2 * int(width),
        input_order=(", an image {} in HWC order: (y * W + x) * C + c".format(
            "x".join(map(str, net.input_shape))) if image_in else ""),
        output_order=(" in HWC order" if image_out else ""),
        rule=("1 if the output exceeds 0.5, else 0" if n_out == 1
              else "the index of the largest output")
        + ("; fastnn_class_name(k) names class k" if classes is not None else ""),
        stack=2 * width * np.dtype(net.dtype).itemsize,
        name=c_text(os.path.basename(os.fsdecode(name))))
    parts = [header, "\n"]
    if shift is not None:
        # the stored scaling, before a first convolution or pooling layer
        parts.append("/* input scaling learned in training: (x - offset) / scale */\n")
        parts.append(_c_array("fastnn_input_offset", shift[0].astype(net.dtype), ctype, 8))
        parts.append(_c_array("fastnn_input_scale", shift[1].astype(net.dtype), ctype, 8))
        parts.append("\n")
    for l, step in enumerate(program):
        if step.param is None:
            continue
        k = step.param
        W, b = net.weights[k], net.biases[k]
        parts.append(f"/* layer {l + 1}: {c_text(_c_layer_comment(step))}"
                     f"{'; weights (kh, kw, C, F)' if step.kind == 'conv2d' else ''} */\n")
        parts.append(_c_array(f"fastnn_W{k}", W, ctype, max(1, min(8, W.shape[-1]))))
        parts.append(_c_array(f"fastnn_b{k}", b, ctype, 8))
        parts.append("\n")
    for kind in sorted({s.kind for s in program}):
        parts.append(C_LAYERS[kind].replace("{sqrt}", "sqrtf" if ctype.real == "float"
                                             else "sqrt") + "\n")
    for activation in sorted({s.activation for s in program} - {"identity"}):
        parts.append(C_ACTIVATIONS[activation].format(**fill) + "\n")

    # the activations alternate between the two buffers a and z
    layers, current = [], "a"
    for l, step in enumerate(program):
        other = "z" if current == "a" else "a"
        layers.append("    " + _c_call(step, current, other))
        if step.activation != "identity":
            layers.append(f"    fastnn_{step.activation}({other}, {step.n_out});")
        current = other
    if n_out == 1:
        decide = f"    best = {current}[0] > 0.5;"
    else:
        # the first of equal maxima, as numpy.argmax; decided in the network's precision
        decide = (f"    for (i = 1; i < FASTNN_N_OUTPUTS; i++)\n"
                  f"        if ({current}[i] > {current}[best])\n"
                  f"            best = i;")
    scale_input = ("(fastnn_real)input[i] / 255" if uint8 else
                   "((fastnn_real)input[i] - fastnn_input_offset[i]) / fastnn_input_scale[i]"
                   if shift is not None else "(fastnn_real)input[i]")
    parts.append(_C_PREDICT.format(scale_input=scale_input, layers="\n".join(layers),
                                   result=current, decide=decide))
    if classes is not None:
        names = ",\n".join(f'    "{c_text(name)}"' for name in classes)
        # fastnn_class_name uses the table, so that a build without
        # FASTNN_MAIN has no unused static (-Wall -Wextra stay quiet)
        parts.append(f"\n/* The class of each result of fastnn_predict: fastnn_class_names[best] */\n"
                     f"static const char *const fastnn_class_names[{len(classes)}] = {{\n"
                     f"{names}\n}};\n#define FASTNN_CLASS_NAME(k) (fastnn_class_names[k])\n"
                     f"\n/* The name of class k, or 0 (NULL) if k is not a class */\n"
                     f"const char *fastnn_class_name(int k);\n"
                     f"const char *fastnn_class_name(int k)\n{{\n"
                     f"    return k >= 0 && k < {len(classes)} ? fastnn_class_names[k] : 0;\n}}\n")
    elif task == "regression":
        parts.append("\n/* A regression: output holds the predicted target values */\n"
                     "#define FASTNN_REGRESSION 1\n")
    if columns is not None:
        parts.append(_c_columns(columns))
    parts.append("\n" + _C_MAIN)
    return "".join(parts)


def _c_columns(columns):
    """The C of a raw-column encoding: its tables, fastnn_category (a text to
    its index among a column's categories), fastnn_encode (a raw row to the
    network's input row) and fastnn_predict_raw (both, then fastnn_predict).
    Every name and category is a string literal through c_text."""
    items = columns.columns
    kinds = {"numeric": 0, "categorical": 1, "dropped": 2}
    first, categories = [], []
    for c in items:
        first.append(len(categories))
        categories.extend(c.categories)

    def ints(values):
        return ", ".join(str(int(v)) for v in values)

    def strings(values):
        return ",\n".join(f'    "{c_text(v)}"' for v in values) or '    ""'

    fills = ", ".join(repr(float(c.fill)) if c.fill is not None else "0.0" for c in items)
    return f"""
/* The encoding of raw rows (fastnn.columns; README, "Exporting models"). Column j of a
   raw row, in the training file's order, is numeric (kind 0: values[j], NAN when missing),
   categorical (kind 1: codes[j], the index of its value among the column's categories as
   fastnn_category gives it, FASTNN_UNSEEN for a value not seen in training, FASTNN_MISSING
   when missing) or dropped (kind 2: not read). */
#include <string.h>

#define FASTNN_N_COLUMNS {len(items)}
#define FASTNN_UNSEEN (-1)
#define FASTNN_MISSING (-2)
static const char *const fastnn_column_names[{len(items)}] = {{
{strings([c.name for c in items])}
}};
static const int fastnn_column_kind[{len(items)}] = {{{ints(kinds[c.kind] for c in items)}}};
static const double fastnn_column_fill[{len(items)}] = {{{fills}}};
static const int fastnn_column_indicator[{len(items)}] = {{{ints(c.indicator for c in items)}}};
static const int fastnn_column_other[{len(items)}] = {{{ints(c.other for c in items)}}};
static const int fastnn_column_missing[{len(items)}] = {{{ints(c.missing for c in items)}}};
static const int fastnn_column_n_categories[{len(items)}] = {{{ints(len(c.categories) for c in items)}}};
static const int fastnn_column_first[{len(items)}] = {{{ints(first)}}};
static const char *const fastnn_categories[{max(len(categories), 1)}] = {{
{strings(categories)}
}};

/* The name of raw column `column` (as in the training file's header, escaped). */
const char *fastnn_column_name(int column)
{{
    return column >= 0 && column < FASTNN_N_COLUMNS ? fastnn_column_names[column] : 0;
}}

/* The index of `value` among column `column`'s categories, or FASTNN_UNSEEN. */
int fastnn_category(int column, const char *value)
{{
    int k;
    if (column < 0 || column >= FASTNN_N_COLUMNS || fastnn_column_kind[column] != 1)
        return FASTNN_UNSEEN;
    for (k = 0; k < fastnn_column_n_categories[column]; k++)
        if (strcmp(fastnn_categories[fastnn_column_first[column] + k], value) == 0)
            return k;
    return FASTNN_UNSEEN;
}}

/* A raw row (values and codes, FASTNN_N_COLUMNS each; see above) as the network's
   input row (FASTNN_N_INPUTS): a missing number is the training median (and its 0/1
   unit 1), a category one-hot, an unseen one zeros (or its column's other unit). */
void fastnn_encode(const double *values, const int *codes, float *input)
{{
    int j, k, at = 0;
    for (j = 0; j < FASTNN_N_COLUMNS; j++) {{
        if (fastnn_column_kind[j] == 0) {{
            int gone = values[j] != values[j];
            input[at++] = (float)(gone ? fastnn_column_fill[j] : values[j]);
            if (fastnn_column_indicator[j])
                input[at++] = (float)gone;
        }} else if (fastnn_column_kind[j] == 1) {{
            int n = fastnn_column_n_categories[j], units = n + fastnn_column_other[j]
                                                          + fastnn_column_missing[j];
            int code = codes[j], unit = -1;
            for (k = 0; k < units; k++)
                input[at + k] = 0;
            if (code >= 0 && code < n)
                unit = code;
            else if (code == FASTNN_MISSING && fastnn_column_missing[j])
                unit = n + fastnn_column_other[j];
            else if (code != FASTNN_MISSING && fastnn_column_other[j])
                unit = n;
            if (unit >= 0)
                input[at + unit] = 1;
            at += units;
        }}
    }}
}}

/* fastnn_encode, then fastnn_predict: the predicted class (see fastnn_predict). */
int fastnn_predict_raw(const double *values, const int *codes, float *output)
{{
    float input[FASTNN_N_INPUTS];
    fastnn_encode(values, codes, input);
    return fastnn_predict(input, output);
}}
"""


def export_c(net, path, source=None, force=False):
    """Write the network as one C99 source file (see `c_source`) to path, atomically.

    Returns
    -------
    list of str
        ``[path]``.
    """
    atomic_write(path, c_source(net, source, name=os.fspath(path)), error=ExportError,
                 kind=GENERATED_C, force=force)
    return [os.fspath(path)]


# ------------------------------------------------------------------ NumPy

_NUMPY_MODULE = '''\
"""{description}.

Generated by `fastnn export --format numpy`: the network's forward pass in
plain NumPy (no fastnn needed). The weights are in {npz} beside this file.

    import {module}
    outputs = {module}.forward(X)   # X: raw feature rows, shape (n, {n_in})
    labels = {module}.predict(X)

    python {py} rows.npy [--outputs]

Inputs: {scaling}.
"""
import os
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

INPUT_SHAPE = {input_shape}
N_INPUTS = {n_in}
N_OUTPUTS = {n_out}
# One entry per computing layer (Flatten and Dropout move nothing at
# inference): (kind, activation, parameters or None, input shape, output
# shape, window (kh, kw), stride (sh, sw), zero padding (top, bottom, left,
# right)). Shapes are (n,) or images (H, W, C): rows hold images in HWC order.
LAYERS = {layers}
# the shapes of W<k> and b<k> in the .npz; convolution weights are (kh, kw, C, F)
PARAM_SHAPES = {param_shapes}
DTYPE = np.dtype({dtype})
SLOPE = {slope}
# fastnn divides uint8 pixels by 255 before the first layer (a division, not
# a multiplication by 1/255: the same rounding); None: inputs used as given
INPUT_DIVISOR = {divisor}
# True: the rows are scaled as in training, (x - input_offset) / input_scale
# (arrays in the .npz), before a first convolution or pooling layer
INPUT_SCALING = {input_scaling}
# rows computed at a time, so that a convolution's im2col stays small; None: all
CHUNK = {chunk}
# predict's result for output unit k: CLASSES[k] (None: the unit's number);
# a regression's predict gives the outputs, which are the target values
CLASSES = {classes}
REGRESSION = {regression}
# The encoding of raw rows, or None (see encode): one entry per column of the
# training rows, (name, kind, fill, indicator, categories, other, missing).
COLUMNS = {columns}
MISSING = {markers}
IDENTITY = {identity}
WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), {npz_literal})


def _identity(z):
    return z


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _tanh(z):
    return np.tanh(z)


def _relu(z):
    return np.maximum(z, 0)


def _leaky_relu(z):
    return np.where(z > 0, z, z * DTYPE.type(SLOPE))


def _softmax(z):
    # subtract the row maximum so exp cannot overflow
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


_FUNCTIONS = {{"identity": _identity, "sigmoid": _sigmoid, "tanh": _tanh, "relu": _relu,
              "leaky_relu": _leaky_relu, "softmax": _softmax}}
_params = None
_shift = None


def _load():
    """[(W, b)] per layer with parameters, read once from the .npz and checked."""
    global _params, _shift
    if _params is None:
        params = []
        with np.load(WEIGHTS, allow_pickle=False) as f:
            if INPUT_SCALING:
                shift = tuple(f[name] for name in ("input_offset", "input_scale"))
                if any(v.shape != (N_INPUTS,) for v in shift):
                    raise ValueError("%s does not match this module: input_offset and "
                                     "input_scale must have shape (%d,)" % (WEIGHTS, N_INPUTS))
                _shift = tuple(v.astype(DTYPE) for v in shift)
            for k, (w_shape, b_shape) in enumerate(PARAM_SHAPES):
                W, b = f["W%d" % k], f["b%d" % k]
                if W.shape != w_shape or b.shape != b_shape:
                    raise ValueError("%s does not match this module: W%d and b%d have shapes "
                                     "%s and %s, not %s and %s"
                                     % (WEIGHTS, k, k, W.shape, b.shape, w_shape, b_shape))
                params.append((W.astype(DTYPE), b.astype(DTYPE)))
        _params = params
    return _params


def _windows(a, window, stride, shape_out):
    """The kh * kw strided views (n, OH, OW, C) of images a (n, H, W, C), one
    per position (i, j) in the window, row-major."""
    (kh, kw), (sh, sw), (OH, OW) = window, stride, shape_out[:2]
    return [a[:, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]


def _conv2d(a, W, b, window, stride, padding, shape_out):
    """The cross-correlation of images a (n, H, W, C) with W (kh, kw, C, F),
    plus b: im2col (columns in (i, j, c) order) and one matrix product."""
    top, bottom, left, right = padding
    if top or bottom or left or right:
        a = np.pad(a, ((0, 0), (top, bottom), (left, right), (0, 0)))
    (kh, kw), (sh, sw), (OH, OW) = window, stride, shape_out[:2]
    windows = sliding_window_view(a, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :OH, :OW]
    col = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * a.shape[3])
    # one 2-d product (a 4-d operand would be a stack of small ones)
    z = col @ W.reshape(-1, W.shape[3]) + b
    return z.reshape(len(a), OH, OW, W.shape[3])


def _maxpool2d(a, window, stride, shape_out):
    """The maximum of each window (NaN if the window holds one)."""
    views = _windows(a, window, stride, shape_out)
    out = views[0].copy()
    for v in views[1:]:
        np.maximum(out, v, out=out)
    return out


def _l2pool2d(a, window, stride, shape_out):
    """sqrt(sum of squares) over each window."""
    views = _windows(a, window, stride, shape_out)
    total = views[0] * views[0]
    for v in views[1:]:
        total += v * v
    return np.sqrt(total)


def _forward(a):
    params = _load()
    n = len(a)
    for kind, activation, k, shape_in, shape_out, window, stride, padding in LAYERS:
        if kind == "dense":
            W, b = params[k]
            z = a.reshape(n, -1) @ W + b
        elif kind == "conv2d":
            W, b = params[k]
            z = _conv2d(a.reshape(n, *shape_in), W, b, window, stride, padding, shape_out)
        elif kind == "maxpool2d":
            z = _maxpool2d(a.reshape(n, *shape_in), window, stride, shape_out)
        else:
            z = _l2pool2d(a.reshape(n, *shape_in), window, stride, shape_out)
        a = _FUNCTIONS[activation](z.reshape(n, -1))
    return a


def _number_text(x):
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x)


def _cell(value):
    """("missing", None), ("number", x) or ("text", s) of one raw cell."""
    if value is None:
        return "missing", None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return ("missing", None) if value != value else ("number", float(value))
    text = str(value).strip()
    if text in MISSING:
        return "missing", None
    try:
        number = float(text)
    except ValueError:
        return "text", text
    return ("number", number) if number == number else ("text", text)


def encode(rows):
    """Raw rows as the network's inputs, float64 (n, N_INPUTS): a mapping of
    columns by name (a dict, a pandas DataFrame) or a sequence of rows in the
    training columns' order, cells as text or numbers (None, NaN and MISSING
    missing). A missing number is the training median (and its 0/1 unit 1),
    a category one-hot, an unseen one zeros (or its column's other unit)."""
    if hasattr(rows, "keys"):
        cells = []
        for name, kind, _, _, _, _, _ in COLUMNS:
            if kind != "dropped" and name not in rows:
                raise ValueError("the rows have no column %r, which the model takes" % (name,))
            cells.append(None if kind == "dropped" else list(rows[name]))
        n = len(next(c for c in cells if c is not None))
    else:
        rows = [list(row) for row in rows]
        for i, row in enumerate(rows):
            if len(row) != len(COLUMNS):
                raise ValueError("row %d has %d columns; the model takes %d"
                                 % (i, len(row), len(COLUMNS)))
        cells = [[row[j] for row in rows] for j in range(len(COLUMNS))]
        n = len(rows)
    out = np.zeros((n, N_INPUTS))
    at = 0
    for (name, kind, fill, indicator, categories, other, missing), column in zip(COLUMNS, cells):
        if kind == "numeric":
            for i, value in enumerate(column):
                what, x = _cell(value)
                if what == "text":
                    raise ValueError("column %r, row %d is not a number: %r" % (name, i, x))
                out[i, at] = fill if what == "missing" else x
                if indicator:
                    out[i, at + 1] = what == "missing"
            at += 1 + indicator
        elif kind == "categorical":
            index = dict((c, k) for k, c in enumerate(categories))
            for i, value in enumerate(column):
                what, x = _cell(value)
                if what == "missing":
                    unit = len(categories) + other if missing else -1
                else:
                    unit = index.get(_number_text(x) if what == "number" else x,
                                     len(categories) if other else -1)
                if unit >= 0:
                    out[i, at + unit] = 1.0
            at += len(categories) + other + missing
    return out


def forward(X):
    """Output activations, shape (n, {n_out}), for raw feature rows X of shape
    (n, {n_in}) (one row may be given as a 1-d array), in the network's dtype;
    with COLUMNS, the raw rows that encode() takes."""
    if COLUMNS is not None:
        numbers = isinstance(X, np.ndarray) and X.dtype.kind in "biuf"
        if not (IDENTITY and numbers):
            X = encode(X[None, :] if isinstance(X, np.ndarray) and X.ndim == 1 else X)
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != N_INPUTS:
        raise ValueError("X has shape %s; expected (n, %d)" % (X.shape, N_INPUTS))
    chunk = CHUNK or max(len(X), 1)
    out = np.empty((len(X), N_OUTPUTS), dtype=DTYPE)
    # exp overflows to inf for very negative inputs, and sigmoid is then 0 as it should be
    with np.errstate(over="ignore"):
        for start in range(0, len(X), chunk):
            a = X[start:start + chunk].astype(DTYPE)
            if INPUT_DIVISOR is not None:
                a = a / DTYPE.type(INPUT_DIVISOR)
            if INPUT_SCALING:
                _load()
                a = (a - _shift[0]) / _shift[1]
            out[start:start + chunk] = _forward(a)
    return out


def predict(X):
    """Predicted class of each row of X: the argmax of the outputs (with one
    output unit, 1 where it exceeds 0.5), as its name in CLASSES if any; for
    a regression, the predicted values."""
    A = forward(X)
    if REGRESSION:
        return A[:, 0] if A.shape[1] == 1 else A
    if A.shape[1] == 1:
        labels = (A[:, 0] > 0.5).astype(np.int64)
    else:
        labels = A.argmax(axis=1)
    return labels if CLASSES is None else np.array(CLASSES)[labels]


def main(argv):
    args = [a for a in argv if a != "--outputs"]
    if len(args) != 1:
        sys.stderr.write("usage: python %s ROWS.npy|ROWS.csv [--outputs]\\n"
                         % os.path.basename(__file__))
        return 2
    if args[0].lower().endswith(".csv"):
        import csv

        # comma-separated, a header naming the columns
        with open(args[0], newline="", encoding="utf-8-sig") as f:
            lines = [row for row in csv.reader(f) if row]
        X = dict((name, [row[j] for row in lines[1:]]) for j, name in enumerate(lines[0]))
    else:
        X = np.load(args[0], allow_pickle=False)
    if "--outputs" in argv or REGRESSION:
        np.savetxt(sys.stdout, forward(X), fmt="%.9g")
    elif CLASSES is not None:
        for name in predict(X).tolist():
            sys.stdout.write("%s\\n" % (name,))
    else:
        np.savetxt(sys.stdout, predict(X), fmt="%d")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''

# Entries of im2col the NumPy module builds at a time at most (rows are
# chunked to fit), so that forward(X) on all of MNIST stays a few tens of MB.
NUMPY_COL_ENTRIES = 1 << 22


# The activations _NUMPY_MODULE's _FUNCTIONS defines (a new fastnn
# activation needs its NumPy form there before it can be exported).
NUMPY_ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")


def numpy_paths(path):
    """(the .py path, the .npz path) for an output path with or without a suffix."""
    path = os.fspath(path)
    stem, suffix = os.path.splitext(path)
    if suffix.lower() not in (".py", ".npz"):
        stem = path
    return stem + ".py", stem + ".npz"


def _python_nested(value):
    """The Python literal of nested tuples of str, int, float and None: the
    leaves through python_literal."""
    if isinstance(value, tuple):
        items = [_python_nested(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return python_literal(value)


def _python_lines(values):
    """A tuple literal with one item per line."""
    return "(\n" + "".join(f"    {_python_nested(v)},\n" for v in values) + ")"


def numpy_module(net, npz_name, source=None, module="model"):
    """The source of a NumPy-only module computing the network (a str); its
    weights are read from `npz_name`, relative to the module's own file.
    Convolution is im2col plus a matrix product, pooling a reduction over
    strided views, on images (n, H, W, C) as fastnn keeps them."""
    columns = _columns(net)
    net, classes, task, shift = _prepared(net)
    _check_exportable(net, NUMPY_ACTIVATIONS)
    uint8 = net.input_dtype == "uint8"
    program = steps(net)
    layers = tuple((str(s.kind), str(s.activation), s.param,
                    tuple(map(int, s.shape_in)), tuple(map(int, s.shape_out)),
                    tuple(map(int, s.window)), tuple(map(int, s.stride)),
                    tuple(map(int, s.pads))) for s in program)
    param_shapes = tuple((tuple(map(int, W.shape)), tuple(map(int, b.shape)))
                         for W, b in zip(net.weights, net.biases))
    # per sample, a convolution's im2col is (OH * OW, kh * kw * C)
    cols = [s.shape_out[0] * s.shape_out[1] * s.window[0] * s.window[1] * s.shape_in[2]
            for s in program if s.kind == "conv2d"]
    chunk = max(1, NUMPY_COL_ENTRIES // max(cols)) if cols else None
    return _NUMPY_MODULE.format(
        description=python_text(_description(net, source)), npz=python_text(npz_name),
        module=python_text(module if module.isidentifier() else "model"),
        py=python_text(module + ".py"), n_in=int(net.plan.n_inputs),
        n_out=int(net.plan.n_outputs),
        scaling=("raw uint8 pixel values 0..255 (any numeric dtype), divided by 255 as in "
                 "training" if uint8 else "raw features, scaled as in training: (x - "
                 "input_offset) / input_scale" if shift is not None else "used as given"),
        input_shape=_python_nested(tuple(map(int, net.input_shape))),
        layers=_python_lines(layers), param_shapes=_python_lines(param_shapes),
        dtype=python_literal(str(net.dtype)), slope=python_literal(float(net.slope)),
        divisor=python_literal(255 if uint8 else None), chunk=python_literal(chunk),
        input_scaling=python_literal(shift is not None),
        npz_literal=python_literal(npz_name),
        classes=python_literal(None if classes is None else tuple(classes)),
        regression=python_literal(task == "regression"),
        columns=_python_columns(columns),
        markers=python_literal(None if columns is None else tuple(columns.markers)),
        identity=python_literal(columns is not None and columns.identity))


def _python_columns(columns):
    """COLUMNS of the NumPy module: one literal line per column (every string
    through python_literal, in ASCII), or None."""
    if columns is None:
        return "None"
    lines = [python_literal((c.name, c.kind, None if c.fill is None else float(c.fill),
                             int(c.indicator), tuple(c.categories), int(c.other),
                             int(c.missing))) for c in columns.columns]
    return "(\n" + "".join(f"    {line},\n" for line in lines) + ")"


def numpy_weights(net, shift=None):
    """The .npz bytes of the network's weights: arrays W0, b0, W1, b1, ...,
    then input_offset and input_scale when `shift` gives them (the input
    scaling left to apply, see `_prepared`)."""
    arrays = {}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"] = np.ascontiguousarray(W)
        arrays[f"b{l}"] = np.ascontiguousarray(b)
    if shift is not None:
        arrays["input_offset"] = shift[0].astype(net.dtype)
        arrays["input_scale"] = shift[1].astype(net.dtype)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def export_numpy(net, path, source=None, force=False):
    """Write the network as a NumPy module OUT.py and its weights OUT.npz.

    `path` may end in .py, .npz or neither; both files get its stem. The
    module defines ``forward(X)`` and ``predict(X)`` and, run as a script,
    prints the labels of the rows of an .npy file.

    Returns
    -------
    list of str
        ``[OUT.py, OUT.npz]``.
    """
    py, npz = numpy_paths(path)
    module = os.path.splitext(os.path.basename(py))[0]
    text = numpy_module(net, os.path.basename(npz), source, module)
    plain, _, _, shift = _prepared(net)
    weights = numpy_weights(plain, shift)
    existed = os.path.exists(npz)
    # the weights first: a module whose .npz is missing would be worse than
    # an .npz without its module; and if the module cannot be written, a
    # new .npz is taken away again
    atomic_write(npz, weights, error=ExportError, kind=NPZ_FILE, force=force)
    try:
        atomic_write(py, text, error=ExportError, kind=GENERATED_PY, force=force)
    except BaseException:
        if not existed:
            try:
                os.unlink(npz)
            except OSError:
                pass
        raise
    return [py, npz]


# --------------------------------------------------------------- registry

EXPORTERS = {
    e.name: e
    for e in [
        Exporter("onnx", "ONNX", (".onnx",), export_onnx,
                 lambda path: [(os.fspath(path), ONNX_FILE)]),
        Exporter("c", "C", (".c",), export_c, lambda path: [(os.fspath(path), GENERATED_C)]),
        Exporter("numpy", "NumPy", (".py", ".npz"), export_numpy,
                 lambda path: list(zip(numpy_paths(path), (GENERATED_PY, NPZ_FILE)))),
    ]
}


def format_for(path):
    """The export format an output path's suffix implies, or None."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    for exporter in EXPORTERS.values():
        if suffix in exporter.suffixes:
            return exporter.name
    return None


def export(net, path, format, source=None, force=False):
    """Export a network to run without fastnn.

    Parameters
    ----------
    net : fastnn.Network or str or os.PathLike
        The network, or a model file to load it from.
    path : str or os.PathLike
        Where to write. For "numpy", the stem of OUT.py and OUT.npz.
    format : {"onnx", "c", "numpy"}
        One of ``EXPORTERS``.
    source : str, optional
        Where the network came from, recorded in the exported file
        (defaults to the model file when `net` is a path).
    force : bool, default False
        Replace existing files that are not of the kind being written (by
        default only an earlier export of the same format is replaced).

    Returns
    -------
    list of str
        The files written.

    Raises
    ------
    ConfigError
        If the format is unknown.
    ExportError
        If the format's package is missing (onnx), or a file cannot or must
        not be written (the output policy of fastnn.files: the model file
        itself, a non-regular file, or without force a file of another kind).
    ModelFileError
        If `net` is a path that is not a readable model file.
    """
    exporter = lookup(EXPORTERS, "export format", format)
    outputs = exporter.outputs(path)
    for out, kind in outputs:
        check_output(out, kind, force, ExportError)
    check_distinct([("the export", out) for out, _ in outputs],
                   [("the model", net)] if isinstance(net, (str, os.PathLike)) else [],
                   ExportError)
    if isinstance(net, (str, os.PathLike)):
        from fastnn.io import load

        source = net if source is None else source
        net = load(net)
    if not hasattr(net, "sizes") or not hasattr(net, "weights"):
        raise ConfigError(f"export needs a fastnn Network or a model file, not "
                          f"{type(net).__name__}")
    return exporter.write(net, path, source, force)
