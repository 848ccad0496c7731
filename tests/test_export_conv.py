"""Exported convolutional networks (ONNX, C, NumPy) against fastnn's forward.

The runners and the comparison are test_export's: each format gets the raw
rows (HWC order, pixels 0..255 for uint8-trained networks) and must give
fastnn's classes exactly and its outputs to 1e-5 (float32) or to the last
bits (float64). The C file is compiled here with -Werror and run under
AddressSanitizer and UndefinedBehaviorSanitizer.
"""
import re
import subprocess

import numpy as np
import pytest
from conftest import compile_c, compile_export, needs, sweep
from test_export import check_against_fastnn, run_numpy, run_onnx, text_rows

import fastnn
from fastnn.export import c_source, export, onnx_model, steps
from fastnn.layers import Conv2D, Dense, Dropout, Flatten, L2Pool2D, MaxPool2D

FORMATS = ["c", "numpy", "onnx"]


def run_c(net, X, tmp_path, text=None, sanitize=True):
    """The C export compiled with the sanitizers: any out-of-bounds access or
    undefined behaviour aborts the program, and check=True fails the test."""
    exe = compile_export(net, tmp_path, sanitize=sanitize)
    text = text_rows(X) if text is None else text
    labels = subprocess.run([exe], input=text, capture_output=True, text=True, check=True)
    outputs = subprocess.run([exe, "--outputs"], input=text, capture_output=True, text=True,
                             check=True)
    assert labels.stderr == outputs.stderr == ""
    A = np.loadtxt(outputs.stdout.splitlines(), ndmin=2)
    return A, np.array(labels.stdout.split(), dtype=np.int64)


RUNNERS = {"onnx": run_onnx, "c": run_c, "numpy": run_numpy}


# ------------------------------------------------------------------ MNIST

@pytest.fixture(scope="module")
def mnist_conv(mnist):
    """conv8:5 (relu), maxpool2, dense 10 (softmax), one epoch on 6,000 images."""
    (X, y), _ = mnist
    net = fastnn.Network([(28, 28, 1), Conv2D(8, 5), MaxPool2D(2), 10], activation="relu",
                         output="softmax", loss="cross_entropy", init="he", seed=0)
    net.fit(X[:6000], y[:6000], epochs=1, batch_size=20, lr=0.1)
    assert net.input_dtype == "uint8"
    return net


# the NumPy module's convolutions over 10,000 images are slow, and so is compiling
# and running the C one: under --runslow only
@pytest.mark.parametrize("fmt", sweep(FORMATS, fast=[FORMATS.index("onnx")]))
def test_mnist_conv_net_matches_fastnn_on_every_test_image(mnist, mnist_conv, tmp_path, fmt):
    X_test, y_test = mnist[1]
    # the C program without the sanitizers here (they make it ten times
    # slower); the random networks below run under them
    kw = dict(sanitize=False) if fmt == "c" else {}
    A, labels = RUNNERS[fmt](mnist_conv, X_test, tmp_path, **kw)
    assert len(labels) == 10000
    diff = check_against_fastnn(mnist_conv, X_test, fmt, A, labels)
    accuracy = np.mean(labels == y_test)
    assert accuracy > 0.85      # a trained net (90.5 % here), so that classes mean something
    print(f"\nMNIST conv {fmt}: max abs diff {diff:.3g}, accuracy {accuracy:.4f}")


# ------------------------------------------------- small random networks

def small(spec, activation="tanh", output="softmax", dtype="float32", input_dtype="uint8",
          **kw):
    net = fastnn.Network(spec, activation=activation, output=output, dtype=dtype, seed=1,
                         loss="cross_entropy" if output == "softmax" else "mse", **kw)
    net.input_dtype = input_dtype   # as fit() records it
    return net


def two_convs(dtype):
    # same padding with stride 2 (the extra row and column at the bottom and
    # right), L2 pooling with overlapping windows, a rectangular kernel,
    # several channels in and out, a dropout layer that exports as nothing
    return small([(9, 8, 3), Conv2D(4, 3, stride=2, padding="same"), L2Pool2D(2, stride=1),
                  Conv2D(5, (2, 1), activation="leaky_relu"), MaxPool2D(2, stride=1),
                  Dropout(0.3), Dense(6, activation="sigmoid"), 4], dtype=dtype)


CASES = {
    **{f"two_convs_{dt}": (lambda dt=dt: two_convs(dt)) for dt in ["float32", "float64"]},
    # an even kernel with same padding: 1 row above, 2 below
    **{f"same_even_kernel_{dt}": (lambda dt=dt: small(
        [(6, 7, 2), Conv2D(3, 4, padding="same"), L2Pool2D(3, stride=2), 5], "relu",
        dtype=dt)) for dt in ["float32", "float64"]},
    # the output layer is a convolution: outputs are HWC rows
    **{f"conv_output_{dt}": (lambda dt=dt: small(
        [(7, 7, 2), MaxPool2D(2, stride=1), Conv2D(3, 2, stride=(1, 2), padding="same")],
        "relu", "sigmoid", dt)) for dt in ["float32", "float64"]},
    "conv_softmax_output": lambda: small([(5, 5, 1), Conv2D(2, 3), Conv2D(3, 2)], "sigmoid",
                                         "softmax", "float64"),
    "float_inputs_flatten_dense_stack": lambda: small(
        [(4, 4, 2), Conv2D(3, 3, padding="same", stride=2), Flatten(), 6, 3],
        ["tanh", "leaky_relu"], "softmax", "float64", "float64", slope=0.2),
    # an image input whose first layer is Dense: the rows are used as they are
    "image_into_dense": lambda: small([(3, 4, 2), 5, 3], "sigmoid"),
    "one_output_sigmoid": lambda: centred(small([(6, 6, 1), Conv2D(2, 3), MaxPool2D(2), 1],
                                                "tanh", "sigmoid")),
}


def centred(net):
    """net with its one output's bias moved so that half the inputs are class 1."""
    A = net.forward(inputs(net))[:, 0].astype(np.float64)
    biases = list(net.biases)
    biases[-1] = biases[-1] - np.median(np.log(A / (1 - A)))
    net.biases = biases
    return net


def inputs(net, n=64, seed=0):
    rng = np.random.default_rng(seed)
    if net.input_dtype == "uint8":
        return rng.integers(0, 256, (n, net.plan.n_inputs)).astype(np.uint8)
    return rng.normal(0, 1.5, (n, net.plan.n_inputs)).astype(np.float32).astype(net.dtype)


# every case in every format under --runslow; in the fast suite each case in one
# format, the formats in turn
@pytest.mark.parametrize("case, fmt", sweep(
    [(case, fmt) for case in CASES for fmt in FORMATS],
    fast=[i * len(FORMATS) + i % len(FORMATS) for i in range(len(CASES))]))
def test_conv_and_pool_layers_match_fastnn(tmp_path, case, fmt):
    net = CASES[case]()
    X = inputs(net)
    A, labels = RUNNERS[fmt](net, X, tmp_path)
    check_against_fastnn(net, X, fmt, A, labels)
    if net.plan.n_outputs == 1:
        assert 0 < labels.sum() < len(labels)   # the threshold was exercised both ways
    # the outputs depend on the inputs: not a saturated network
    assert np.ptp(A, axis=0).max() > 1e-3


def test_steps_follow_the_layer_objects():
    net = two_convs("float32")
    program = steps(net)
    assert [s.kind for s in program] == ["conv2d", "l2pool2d", "conv2d", "maxpool2d",
                                         "dense", "dense"]
    conv = program[0]
    # 9x8 with stride 2 and same padding: 5x4; 3x3 window needs 2 more rows and 1 more column
    assert conv.shape_in == (9, 8, 3) and conv.shape_out == (5, 4, 4)
    assert conv.pads == (1, 1, 0, 1) and conv.stride == (2, 2) and conv.param_index == 0
    assert [s.activation for s in program] == ["tanh", "identity", "leaky_relu", "identity",
                                               "sigmoid", "softmax"]
    assert [s.param_index for s in program] == [0, None, 1, None, 2, 3]


# ------------------------------------------------------------------------ C

def test_c_work_buffer_of_exactly_the_documented_size(tmp_path):
    """fastnn_predict_work with a heap buffer of FASTNN_WORK_SIZE entries, under
    AddressSanitizer: one entry too few would be reported as an overflow."""
    net = two_convs("float64")
    source = c_source(net)
    assert "FASTNN_WORK_SIZE = 2 * FASTNN_MAX_WIDTH" in source
    assert "fastnn_predict_work(const float *input, float *output, double *work)" in source
    # the widest row: the first convolution's input, 9 * 8 * 3
    assert re.search(r"FASTNN_MAX_WIDTH = 216\b", source)
    assert "malloc" not in source and "static fastnn_real" not in source
    (tmp_path / "model.c").write_text(source)
    X = inputs(net, 3)
    rows = ",\n".join("{" + ", ".join(map(str, row)) + "}" for row in X.tolist())
    (tmp_path / "user.c").write_text(
        '#include <stdio.h>\n#include <stdlib.h>\n#include "model.c"\n'
        f"static const float rows[3][FASTNN_N_INPUTS] = {{{rows}}};\n"
        "int main(void)\n{\n"
        "    fastnn_real *work = malloc(FASTNN_WORK_SIZE * sizeof *work);\n"
        "    float out[FASTNN_N_OUTPUTS], again[FASTNN_N_OUTPUTS];\n"
        "    int r, i;\n"
        "    if (!work)\n        return 1;\n"
        "    for (r = 0; r < 3; r++) {\n"
        "        int k = fastnn_predict_work(rows[r], out, work);\n"
        "        if (fastnn_predict(rows[r], again) != k)\n            return 1;\n"
        "        printf(\"%d\", k);\n"
        "        for (i = 0; i < FASTNN_N_OUTPUTS; i++) {\n"
        "            if (out[i] != again[i])\n                return 1;\n"
        "            printf(\" %.9g\", out[i]);\n        }\n"
        "        printf(\"\\n\");\n    }\n"
        "    free(work);\n    return 0;\n}\n")
    compile_c([tmp_path / "user.c"], tmp_path / "user", main=False, sanitize=True, cwd=tmp_path)
    out = subprocess.run([tmp_path / "user"], capture_output=True, text=True, check=True)
    result = np.loadtxt(out.stdout.splitlines(), ndmin=2)
    np.testing.assert_array_equal(result[:, 0], net.predict(X))
    np.testing.assert_allclose(result[:, 1:], net.forward(X), rtol=2.0 ** -23, atol=1e-300)


def test_c_names_the_layers_and_the_input_order():
    source = c_source(two_convs("float32"))
    header = source[:source.index("*/")]
    assert "9x8x3 in HWC order" in header and "FASTNN_WORK_SIZE" in header
    assert "conv2d 3x3, stride 2x2, padding (1, 1, 0, 1), 9x8x3 -> 5x4x4, tanh" in header
    assert "static void fastnn_l2pool2d" in source and "sqrtf(s)" in source
    # only the layer functions the network uses
    small_net = small([(6, 6, 1), Conv2D(2, 3), 3])
    assert "fastnn_maxpool2d" not in c_source(small_net)


# --------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_graph_of_a_conv_net(dtype):
    onnx = needs("onnx")
    net = two_convs(dtype)
    model = onnx_model(net)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    # the rows become NCHW once; the Dense layer after the images takes
    # permuted weights instead of a transpose back
    assert ops[:ops.index("Transpose") + 1][-2:] == ["Reshape", "Transpose"]
    assert "Dropout" not in ops and "Flatten" in ops and ops[-1] == "Softmax"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    if dtype == "float32":
        assert ops.count("Transpose") == 1
        assert ops.count("Conv") == 2 and "LpPool" in ops and "MaxPool" in ops
        np.testing.assert_array_equal(inits["W0"], net.weights[0].transpose(3, 2, 0, 1))
    else:
        # onnxruntime runs neither Conv nor LpPool in double: spelled out
        assert "Conv" not in ops and "LpPool" not in ops and "MaxPool" in ops
        assert inits["W0"].dtype == np.float64
    H, W, C = program_shape = steps(net)[3].shape_out
    dense = net.weights[2]
    assert program_shape == (2, 2, 5)
    np.testing.assert_array_equal(
        inits["W2"], dense.reshape(H, W, C, -1).transpose(2, 0, 1, 3).reshape(dense.shape))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["input_shape"] == "[9, 8, 3]" and '"type": "conv2d"' in meta["layers"]


def test_onnx_conv_net_with_dynamic_batch(tmp_path):
    needs("onnx")
    ort = needs("onnxruntime")
    net = CASES["conv_output_float32"]()
    [path] = export(net, tmp_path / "m.onnx", "onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (1, 5):
        X = inputs(net, n)
        out = session.run(None, {"input": X.astype(np.float32)})[0]
        assert out.shape == (n, 6 * 3 * 3)
        np.testing.assert_allclose(out, net.forward(X), atol=1e-6)


# -------------------------------------------------------------------- NumPy

def test_numpy_module_chunks_rows_and_checks_shapes(tmp_path):
    net = two_convs("float32")
    export(net, tmp_path / "m.py", "numpy")
    namespace = {"__file__": str(tmp_path / "m.py"), "__name__": "m"}
    exec(compile((tmp_path / "m.py").read_text(), "m.py", "exec"), namespace)
    namespace["CHUNK"] = 7          # several chunks, the last one short
    X = inputs(net, 30)
    np.testing.assert_allclose(namespace["forward"](X), net.forward(X), atol=1e-6)
    assert namespace["INPUT_SHAPE"] == (9, 8, 3)
    [(prefix, _, param_shapes, _)] = namespace["NETWORKS"]
    assert prefix == "" and param_shapes[0] == ((3, 3, 3, 4), (4,))
    with pytest.raises(ValueError, match=r"expected \(n, 216\)"):
        namespace["forward"](np.zeros((2, 215)))


def test_numpy_module_shares_the_references_conv_and_pooling(tmp_path):
    """The module's convolution and pooling are fastnn._reference's functions,
    copied as source: one implementation, and the module needs no fastnn."""
    import inspect

    from fastnn import _reference

    net = two_convs("float64")
    export(net, tmp_path / "m.py", "numpy")
    text = (tmp_path / "m.py").read_text()
    for f in (_reference.conv2d_forward, _reference.maxpool_forward,
              _reference.l2pool_forward):
        assert inspect.getsource(f) in text
    assert "fastnn" not in "".join(line for line in text.splitlines()
                                   if line.startswith(("import", "from")))


def test_every_format_knows_every_fastnn_layer():
    """Each layer type becomes a step every format computes, or moves nothing
    at inference (Flatten, Dropout)."""
    from fastnn.export import C_LAYERS
    from fastnn.layers import LAYERS

    net = small([(6, 6, 2), Conv2D(2, 3), MaxPool2D(2), Conv2D(2, 1), L2Pool2D(2, stride=1),
                 Dropout(0.5), Flatten(), Dense(3)])
    assert {type(layer).type for layer in net.layers} == set(LAYERS)
    kinds = {s.kind for s in steps(net)}
    assert kinds == set(C_LAYERS) == set(LAYERS) - {"flatten", "dropout"}
    source = c_source(net)
    assert all(f"static void fastnn_{kind}(" in source for kind in kinds)
