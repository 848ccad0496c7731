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
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastnn._version import __version__
from fastnn.exceptions import ConfigError, FastnnError, lookup
from fastnn.files import FileKind, atomic_write, check_distinct, check_output, starting_with

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

def _description(net, source=None):
    """One line saying which model this is, for headers and metadata."""
    scaling = ("uint8 inputs divided by 255" if net.input_dtype == "uint8"
               else "inputs used as given")
    text = (f"fastnn {__version__} network {list(net.sizes)}, activations "
            f"{list(net.activations)}, {net.dtype}, {scaling}")
    if source is not None:
        text += f", from {os.fsdecode(source)}"
    return text


def _prepared(net):
    """(the network with its scalings folded into its layers, its class names
    or None, its task or None): what every exporter writes (see
    fastnn.preprocessing.folded)."""
    from fastnn.preprocessing import folded

    pre = net.preprocessing
    if pre is None:
        return net, None, None
    try:
        plain = folded(net)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    return plain, pre.class_names(), pre.task


def _metadata(net, source=None, classes=None, task=None):
    """fastnn's description of a network as string pairs (ONNX metadata_props)."""
    meta = {
        "fastnn_version": __version__,
        "sizes": json.dumps(list(net.sizes)),
        "activations": json.dumps(list(net.activations)),
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
    return {key: onnx_text(value) for key, value in meta.items()}


def _check_exportable(net, names):
    """Raise ExportError unless every activation of net has an entry in `names`
    and the parameters are finite (a NaN would not survive the C literals)."""
    for name in net.activations:
        if name not in names:
            raise ExportError(f"cannot export activation {name!r}; this format knows "
                              f"{sorted(names)}")
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise ExportError(f"layer {l + 1} has NaN or infinite parameters; "
                              f"nothing sensible to export")


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
    """The Python literal of a str, int, float, None or tuple of them, in ASCII."""
    if isinstance(value, tuple):
        if not all(isinstance(v, (str, int, float, type(None))) for v in value):
            raise TypeError(f"no literal for {value!r}")
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


def onnx_model(net, source=None):
    """The network as an ``onnx.ModelProto``, checked by ``onnx.checker``.

    The graph input ``input`` is float32, shape ``[N, sizes[0]]`` (N
    dynamic): raw feature rows. For a network trained on uint8 pixels the
    graph divides them by 255. Float64 networks cast the input to double
    first (then divide, as fastnn does) and keep float64 weights, so their
    ``output`` is float64; float32 networks stay float32 throughout.

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
    from onnx import TensorProto, helper, numpy_helper

    net, classes, task = _prepared(net)
    _check_exportable(net, ONNX_ACTIVATIONS)
    elem = TensorProto.DOUBLE if net.dtype == np.float64 else TensorProto.FLOAT
    nodes, inits = [], []
    x = "input"
    if net.dtype == np.float64:
        nodes.append(helper.make_node("Cast", [x], ["input_double"], to=TensorProto.DOUBLE))
        x = "input_double"
    if net.input_dtype == "uint8":
        # one divisor per input, not a scalar: onnxruntime folds a division by
        # a scalar constant into the next MatMul as a float32 factor 1/255,
        # which is not fastnn's rounding (and loses float64 precision)
        divisor = np.full(net.sizes[0], 255, dtype=net.dtype)
        inits.append(numpy_helper.from_array(divisor, "input_divisor"))
        nodes.append(helper.make_node("Div", [x, "input_divisor"], ["input_scaled"]))
        x = "input_scaled"
    last = len(net.sizes) - 2
    for l, (W, b, name) in enumerate(zip(net.weights, net.biases, net.activations)):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(W), f"W{l}"))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b), f"b{l}"))
        nodes.append(helper.make_node("MatMul", [x, f"W{l}"], [f"matmul{l}"]))
        nodes.append(helper.make_node("Add", [f"matmul{l}", f"b{l}"], [f"z{l}"]))
        x = f"z{l}"
        if name != "identity" or l == last:
            x = "output" if l == last else f"a{l}"
            more_nodes, consts = ONNX_ACTIVATIONS[name](net, f"z{l}", x)
            nodes += more_nodes
            inits += consts
    graph = helper.make_graph(
        nodes, "fastnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", net.sizes[0]])],
        [helper.make_tensor_value_info("output", elem, ["N", net.sizes[-1]])],
        initializer=inits, doc_string=onnx_text(_description(net, source)))
    model = helper.make_model(graph, producer_name="fastnn", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              doc_string=onnx_text(_description(net, source)))
    model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(model, _metadata(net, source, classes, task))
    onnx.checker.check_model(model)
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
 *
 * input holds one raw feature row ({n_in} values), output receives the
 * {n_out} output activations; the result is the predicted class:
 * {rule}.
 * Nothing is allocated: {stack} bytes of stack per call.
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

enum {{ FASTNN_N_INPUTS = {n_in}, FASTNN_N_OUTPUTS = {n_out}, FASTNN_MAX_WIDTH = {width} }};

int fastnn_predict(const float *input, float *output);
"""

_C_DENSE = """\
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
"""

_C_PREDICT = """\
int fastnn_predict(const float *input, float *output)
{{
    fastnn_real a[FASTNN_MAX_WIDTH], z[FASTNN_MAX_WIDTH];
    int i, best = 0;

    for (i = 0; i < FASTNN_N_INPUTS; i++)
        a[i] = {scale_input};
{layers}
    for (i = 0; i < FASTNN_N_OUTPUTS; i++)
        output[i] = (float){result}[i];
{decide}
    return best;
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


def c_source(net, source=None, name="model.c"):
    """The network as one dependency-free C99 source file (a str).

    The file defines ``int fastnn_predict(const float *input, float *output)``
    and, when compiled with ``-DFASTNN_MAIN``, a ``main`` that reads rows
    from stdin. Weights are ``static const`` arrays in the network's dtype
    (``float`` or ``double``), printed with enough digits to read back
    exactly, and the arithmetic is done in that precision.

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
    net, classes, task = _prepared(net)
    _check_exportable(net, C_ACTIVATIONS)
    ctype = C_TYPES[np.dtype(net.dtype)]
    sizes = net.sizes
    width = max(sizes)
    fill = {"real": ctype.real, "exp": ctype.exp, "tanh": ctype.tanh,
            "slope": ctype.literal(float(net.dtype.type(net.slope)))}
    uint8 = net.input_dtype == "uint8"
    header = _C_HEADER.format(
        description=c_text(_description(net, source)),
        real=ctype.real, dtype=c_text(net.dtype),
        layers=c_text(", ".join(f"{i} -> {o} {a}"
                                for i, o, a in zip(sizes, sizes[1:], net.activations))),
        scaling=c_text("raw uint8 pixel values 0..255, divided by 255 here as in training"
                       if uint8 else f"used as given (trained on {net.input_dtype or 'unknown'} "
                                     f"inputs)"),
        n_in=int(sizes[0]), n_out=int(sizes[-1]), width=int(width),
        rule=("1 if the output exceeds 0.5, else 0" if sizes[-1] == 1
              else "the index of the largest output"),
        stack=2 * width * np.dtype(net.dtype).itemsize,
        name=c_text(os.path.basename(os.fsdecode(name))))
    parts = [header, "\n"]
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        parts.append(f"/* layer {l + 1}: {int(sizes[l])} -> {int(sizes[l + 1])}, "
                     f"{c_text(net.activations[l])} */\n")
        parts.append(_c_array(f"fastnn_W{l}", W, ctype, max(1, min(8, sizes[l + 1]))))
        parts.append(_c_array(f"fastnn_b{l}", b, ctype, 8))
        parts.append("\n")
    parts.append(_C_DENSE + "\n")
    for activation in sorted(set(net.activations) - {"identity"}):
        parts.append(C_ACTIVATIONS[activation].format(**fill) + "\n")

    # the activations alternate between the two buffers a and z
    layers, current = [], "a"
    for l, activation in enumerate(net.activations):
        other = "z" if current == "a" else "a"
        layers.append(f"    fastnn_dense({current}, {sizes[l]}, fastnn_W{l}, fastnn_b{l}, "
                      f"{sizes[l + 1]}, {other});")
        if activation != "identity":
            layers.append(f"    fastnn_{activation}({other}, {sizes[l + 1]});")
        current = other
    if sizes[-1] == 1:
        decide = f"    best = {current}[0] > 0.5;"
    else:
        # the first of equal maxima, as numpy.argmax; decided in the network's precision
        decide = (f"    for (i = 1; i < FASTNN_N_OUTPUTS; i++)\n"
                  f"        if ({current}[i] > {current}[best])\n"
                  f"            best = i;")
    scale_input = ("(fastnn_real)input[i] / 255" if uint8 else "(fastnn_real)input[i]")
    parts.append(_C_PREDICT.format(scale_input=scale_input, layers="\n".join(layers),
                                   result=current, decide=decide))
    if classes is not None:
        names = ",\n".join(f'    "{c_text(name)}"' for name in classes)
        parts.append(f"\n/* The class of each result of fastnn_predict: fastnn_class_names[best] */\n"
                     f"static const char *const fastnn_class_names[{len(classes)}] = {{\n"
                     f"{names}\n}};\n#define FASTNN_CLASS_NAME(k) (fastnn_class_names[k])\n")
    elif task == "regression":
        parts.append("\n/* A regression: output holds the predicted target values */\n"
                     "#define FASTNN_REGRESSION 1\n")
    parts.append("\n" + _C_MAIN)
    return "".join(parts)


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

SIZES = {sizes}
ACTIVATIONS = {activations}
DTYPE = np.dtype({dtype})
SLOPE = {slope}
# fastnn divides uint8 pixels by 255 before the first layer (a division, not
# a multiplication by 1/255: the same rounding); None: inputs used as given
INPUT_DIVISOR = {divisor}
# predict's result for output unit k: CLASSES[k] (None: the unit's number);
# a regression's predict gives the outputs, which are the target values
CLASSES = {classes}
REGRESSION = {regression}
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
_layers = None


def _load():
    """[(W, b, activation)] per layer, read once from the .npz and checked."""
    global _layers
    if _layers is None:
        layers = []
        with np.load(WEIGHTS, allow_pickle=False) as f:
            for l, activation in enumerate(ACTIVATIONS):
                W, b = f["W%d" % l], f["b%d" % l]
                if W.shape != (SIZES[l], SIZES[l + 1]) or b.shape != (SIZES[l + 1],):
                    raise ValueError("%s does not match this module: layer %d has shapes "
                                     "%s and %s" % (WEIGHTS, l + 1, W.shape, b.shape))
                layers.append((W.astype(DTYPE), b.astype(DTYPE), _FUNCTIONS[activation]))
        _layers = layers
    return _layers


def forward(X):
    """Output activations, shape (n, {n_out}), for raw feature rows X of shape
    (n, {n_in}) (one row may be given as a 1-d array), in the network's dtype."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != SIZES[0]:
        raise ValueError("X has shape %s; expected (n, %d)" % (X.shape, SIZES[0]))
    a = X.astype(DTYPE)
    if INPUT_DIVISOR is not None:
        a = a / DTYPE.type(INPUT_DIVISOR)
    # exp overflows to inf for very negative inputs, and sigmoid is then 0 as it should be
    with np.errstate(over="ignore"):
        for W, b, f in _load():
            a = f(a @ W + b)
    return a


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
        sys.stderr.write("usage: python %s ROWS.npy [--outputs]\\n" % os.path.basename(__file__))
        return 2
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


def numpy_module(net, npz_name, source=None, module="model"):
    """The source of a NumPy-only module computing the network (a str); its
    weights are read from `npz_name`, relative to the module's own file."""
    net, classes, task = _prepared(net)
    _check_exportable(net, NUMPY_ACTIVATIONS)
    uint8 = net.input_dtype == "uint8"
    return _NUMPY_MODULE.format(
        description=python_text(_description(net, source)), npz=python_text(npz_name),
        module=python_text(module if module.isidentifier() else "model"),
        py=python_text(module + ".py"), n_in=int(net.sizes[0]), n_out=int(net.sizes[-1]),
        scaling=("raw uint8 pixel values 0..255 (any numeric dtype), divided by 255 as in "
                 "training" if uint8 else "used as given"),
        sizes=python_literal(tuple(int(s) for s in net.sizes)),
        activations=python_literal(tuple(str(a) for a in net.activations)),
        dtype=python_literal(str(net.dtype)), slope=python_literal(float(net.slope)),
        divisor=python_literal(255 if uint8 else None), npz_literal=python_literal(npz_name),
        classes=python_literal(None if classes is None else tuple(classes)),
        regression=python_literal(task == "regression"))


def numpy_weights(net):
    """The .npz bytes of the network's weights: arrays W0, b0, W1, b1, ..."""
    arrays = {}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"] = np.ascontiguousarray(W)
        arrays[f"b{l}"] = np.ascontiguousarray(b)
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
    weights = numpy_weights(_prepared(net)[0])
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
