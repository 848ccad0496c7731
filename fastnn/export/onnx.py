"""The ONNX exporter: the network as an ``onnx.ModelProto`` (onnx imported
only when used)."""
import os

import numpy as np

from fastnn._version import __version__
from fastnn.export._common import (ExportError, check_exportable, description, members_of,
                                   metadata, onnx_text, prepared, raw_columns, steps)
from fastnn.files import atomic_write, starting_with

# onnxruntime 1.17 and later run opset 17 (Softmax and LeakyRelu as used
# here have not changed since 13); IR version 8 is the one that goes with it,
# so older runtimes that know the opset also accept the file.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8


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
    """ONNX nodes and initializers under construction: those of `net`, their
    names (outputs and constants) prefixed by `prefix` (an ensemble's
    members each have their own)."""

    def __init__(self, net):
        from onnx import TensorProto

        self.net = net
        self.prefix = ""
        self.elem = TensorProto.DOUBLE if net.dtype == np.float64 else TensorProto.FLOAT
        self.nodes, self.inits = [], []

    def name(self, name):
        return self.prefix + name

    def const(self, name, value, dtype=None):
        from onnx import numpy_helper

        value = np.ascontiguousarray(np.asarray(value, dtype=dtype or self.net.dtype))
        self.inits.append(numpy_helper.from_array(value, self.name(name)))
        return self.name(name)

    def node(self, op, inputs, out, **attributes):
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), [self.name(out)], **attributes))
        return self.name(out)


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

    An ensemble (fastnn.ensemble) is one graph: each member's nodes, named
    ``m<j>_...``, from the same ``input``, and the mean of their outputs
    (their sum, in order, divided by their number) as ``output``.

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

    columns = raw_columns(net)
    nets = members_of(net)
    folded = [prepared(m) for m in nets]
    _, classes, task, _ = folded[0]
    g = _Graph(folded[0][0])
    outputs = []
    for j, (plain, _, _, rest) in enumerate(folded):
        check_exportable(plain, ONNX_ACTIVATIONS)
        g.net, g.prefix = plain, (f"m{j}_" if len(nets) > 1 else "")
        outputs.append(_network_nodes(g, plain, rest))
    if len(nets) > 1:
        # the ensemble's prediction: the mean of its members' outputs, summed
        # in order as fastnn.ensemble does (and onnxruntime's Mean has no float64)
        g.prefix, total = "", outputs[0]
        for j, out in enumerate(outputs[1:], 1):
            total = g.node("Add", [total, out], f"members_sum{j}")
        g.node("Div", [total, g.const("members", len(nets))], "output")
    else:
        net = folded[0][0]
    n_in, n_out = int(g.net.plan.n_inputs), int(g.net.plan.n_outputs)
    graph = helper.make_graph(
        g.nodes, "fastnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("output", g.elem, ["N", n_out])],
        initializer=g.inits, doc_string=onnx_text(description(net, source)))
    model = helper.make_model(graph, producer_name="fastnn", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              doc_string=onnx_text(description(net, source)))
    model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(model, metadata(net, source, classes, task, columns))
    onnx.checker.check_model(model, full_check=True)
    return model


def _network_nodes(g, net, rest):
    """The nodes of one network (its scalings folded, `rest` the
    InputScaling left to apply) from the graph's ``input`` to its output,
    in g; returns the output's name (``output``, prefixed in an ensemble)."""
    from onnx import TensorProto

    n_in, n_out = int(net.plan.n_inputs), int(net.plan.n_outputs)
    x = "input"
    if net.dtype == np.float64:
        x = g.node("Cast", [x], "input_double", to=TensorProto.DOUBLE)
    if rest.divisor is not None:
        # one divisor per input, not a scalar: onnxruntime folds a division by
        # a scalar constant into the next MatMul as a float32 factor 1/255,
        # which is not fastnn's rounding (and loses float64 precision)
        x = g.node("Div", [x, g.const("input_divisor", np.full(n_in, rest.divisor))],
                   "input_scaled")
    if rest.offset is not None:
        # the stored scaling before a first convolution or pooling layer, as
        # fastnn applies it: (x - offset) / scale in the network's dtype
        x = g.node("Sub", [x, g.const("input_offset", rest.offset)], "input_centred")
        x = g.node("Div", [x, g.const("input_scale", rest.scale)], "input_standardised")
    program = steps(net)
    image = None        # (H, W, C) while x is an NCHW image, None while it is rows
    if program[0].kind != "dense":
        image = net.input_shape
        x = g.node("Reshape", [x, g.const("image_shape", [-1, *image], np.int64)],
                   "input_nhwc")
        x = g.node("Transpose", [x], "input_nchw", perm=[0, 3, 1, 2])
    for l, step in enumerate(program):
        last = l == len(program) - 1
        k = step.param_index
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
            x = g.name("output" if last else f"a{l}")
            more_nodes, consts = ONNX_ACTIVATIONS[step.activation](net, z, x)
            g.nodes += more_nodes
            g.inits += consts
    return x


# What an existing file must hold to be replaced without force: an ONNX
# model (a protobuf ModelProto starts with field 1, ir_version, a varint).
ONNX_FILE = starting_with("ONNX model", b"\x08")


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

