"""Exported models (ONNX, C, NumPy) against fastnn itself, and ``fastnn export``.

Each format gets the raw feature rows (pixels 0..255 for uint8-trained
networks) and must give fastnn's predicted classes exactly and its output
activations to 1e-5 (float32) or to the last bits (float64).
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST_DIR, compile_c, compile_export, needs, sweep

import fastnn
from fastnn.cli.export import export as export_command
from fastnn.exceptions import ConfigError, FastnnError, ModelFileError
from fastnn.export import EXPORTERS, c_source, export, format_from_suffix, numpy_paths

FORMATS = sorted(EXPORTERS)


def labels_of(A):
    """fastnn's rule: argmax, or with one output unit 1 where it exceeds 0.5."""
    return (A[:, 0] > 0.5).astype(np.int64) if A.shape[1] == 1 else A.argmax(axis=1)


def text_rows(X):
    """Rows as the C program reads them: integers as such, floats with 9 digits."""
    if X.dtype.kind in "iu":
        return "\n".join(" ".join(map(str, row)) for row in X.tolist()) + "\n"
    rows = X.astype(np.float32).tolist()
    return "\n".join(" ".join("%.9g" % v for v in row) for row in rows) + "\n"


# ------------------------------------------------------- running exports

def run_onnx(net, X, tmp_path, text=None):
    needs("onnx")
    ort = needs("onnxruntime")
    [path] = export(net, tmp_path / "model.onnx", "onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    A = session.run(["output"], {"input": X.astype(np.float32)})[0]
    return A, labels_of(A)


def run_c(net, X, tmp_path, text=None):
    exe = compile_export(net, tmp_path)
    text = text_rows(X) if text is None else text
    labels = subprocess.run([exe], input=text, capture_output=True, text=True, check=True)
    outputs = subprocess.run([exe, "--outputs"], input=text, capture_output=True, text=True,
                             check=True)
    A = np.loadtxt(outputs.stdout.splitlines(), ndmin=2)
    return A, np.array(labels.stdout.split(), dtype=np.int64)


# Imports the generated module in a fresh interpreter where importing fastnn
# fails, then checks nothing called fastnn was loaded behind its back.
NUMPY_CHILD = """\
import sys
import numpy as np
sys.modules["fastnn"] = None
sys.path.insert(0, sys.argv[1])
import model
X = np.load(sys.argv[2])
np.save(sys.argv[3], model.forward(X))
np.save(sys.argv[4], model.predict(X))
assert not [m for m in sys.modules if m.split(".")[0] == "fastnn" and sys.modules[m] is not None]
"""


def run_numpy(net, X, tmp_path, text=None):
    py, npz = export(net, tmp_path / "model", "numpy")
    assert py == str(tmp_path / "model.py") and npz == str(tmp_path / "model.npz")
    np.save(tmp_path / "X.npy", X)
    subprocess.run([sys.executable, "-c", NUMPY_CHILD, tmp_path, tmp_path / "X.npy",
                    tmp_path / "A.npy", tmp_path / "labels.npy"], check=True)
    return np.load(tmp_path / "A.npy"), np.load(tmp_path / "labels.npy")


RUNNERS = {"onnx": run_onnx, "c": run_c, "numpy": run_numpy}


def check_against_fastnn(net, X, fmt, A, labels):
    """Same classes exactly; outputs to 1e-5 for float32, to rounding for float64."""
    reference = net.forward(X)
    np.testing.assert_array_equal(labels, net.predict(X))
    assert A.shape == reference.shape
    if net.dtype == np.float32:
        assert A.dtype == np.float32 or fmt == "c"
        np.testing.assert_allclose(A, reference, rtol=0, atol=1e-5)
    elif fmt == "c":
        # computed in double, handed out as float
        np.testing.assert_allclose(A, reference, rtol=2.0 ** -23, atol=1e-300)
    else:
        assert A.dtype == np.float64
        np.testing.assert_allclose(A, reference, rtol=1e-12, atol=1e-15)
    return float(np.abs(A - reference).max())


# ------------------------------------------------------------------ MNIST

MNIST_MODELS = {
    # Nielsen's network, one quick epoch
    "sigmoid": dict(sizes=[784, 30, 10], kw={}, fit={}),
    "relu_softmax": dict(sizes=[784, 32, 10],
                         kw=dict(activation="relu", output="softmax", loss="cross_entropy",
                                 init="he"),
                         fit=dict(lr=0.1)),
    "float64_tanh_leaky": dict(sizes=[784, 24, 16, 10],
                               kw=dict(activation=["tanh", "leaky_relu"], output="softmax",
                                       loss="cross_entropy", dtype="float64"),
                               fit=dict(lr=0.1)),
}


@pytest.fixture(scope="module")
def mnist_nets(mnist):
    (X, y), _ = mnist
    nets = {}
    for name, spec in MNIST_MODELS.items():
        net = fastnn.Network(spec["sizes"], seed=0, **spec["kw"])
        net.fit(X[:10000], y[:10000], epochs=1, **spec["fit"])
        assert net.input_dtype == "uint8"
        nets[name] = net
    return nets


@pytest.fixture(scope="module")
def mnist_text(mnist):
    return text_rows(mnist[1][0])


# every model in every format under --runslow; in the fast suite each model in
# one format, the formats in turn
@pytest.mark.parametrize("model, fmt", sweep(
    [(model, fmt) for model in MNIST_MODELS for fmt in FORMATS],
    fast=[i * len(FORMATS) + i % len(FORMATS) for i in range(len(MNIST_MODELS))]))
def test_mnist_predictions_match_fastnn_exactly(mnist, mnist_nets, mnist_text, tmp_path, model,
                                                fmt):
    net = mnist_nets[model]
    X_test, y_test = mnist[1]
    A, labels = RUNNERS[fmt](net, X_test, tmp_path, text=mnist_text)
    assert len(labels) == 10000
    diff = check_against_fastnn(net, X_test, fmt, A, labels)
    print(f"\nMNIST {model} {fmt}: max abs diff {diff:.3g}, "
          f"accuracy {np.mean(labels == y_test):.4f}")


def test_numpy_module_as_a_script(mnist, mnist_nets, tmp_path):
    net = mnist_nets["sigmoid"]
    X = mnist[1][0][:300]
    py, _ = export(net, tmp_path / "digits.py", "numpy")
    np.save(tmp_path / "X.npy", X)
    out = subprocess.run([sys.executable, py, tmp_path / "X.npy"], capture_output=True,
                         text=True, check=True, cwd="/")
    assert [int(line) for line in out.stdout.split()] == net.predict(X).tolist()
    out = subprocess.run([sys.executable, py, tmp_path / "X.npy", "--outputs"],
                         capture_output=True, text=True, check=True)
    np.testing.assert_allclose(np.loadtxt(out.stdout.splitlines()), net.forward(X), atol=1e-5)


# ------------------------------------------------- small random networks

def small(sizes, activation="sigmoid", output=None, dtype="float32", input_dtype="uint8",
          **kw):
    net = fastnn.Network(sizes, activation=activation, output=output, dtype=dtype, seed=1,
                         loss="cross_entropy" if output == "softmax" else "mse", **kw)
    net.input_dtype = input_dtype   # as fit() records it
    return net


CASES = {
    **{f"{act}_{dt}": (lambda act=act, dt=dt: small([7, 6, 4], act, act, dt))
       for act in ["identity", "sigmoid", "tanh", "relu", "leaky_relu"]
       for dt in ["float32", "float64"]},
    **{f"softmax_{dt}": (lambda dt=dt: small([7, 6, 4], "tanh", "softmax", dt))
       for dt in ["float32", "float64"]},
    "leaky_slope_0.3": lambda: small([7, 6, 4], "leaky_relu", "softmax", "float64", slope=0.3),
    "float_inputs_float64": lambda: small([7, 6, 4], "relu", "softmax", "float64", "float64"),
    "float_inputs_none": lambda: small([7, 6, 4], "sigmoid", "sigmoid", "float32", None),
    "one_output_sigmoid": lambda: small([5, 4, 1], "tanh", "sigmoid"),
    "three_hidden_layers": lambda: small([9, 8, 7, 6, 3], ["relu", "tanh", "leaky_relu"],
                                         "softmax", "float64"),
    "no_hidden_layer": lambda: small([5, 3], "identity", "softmax"),
}


def inputs(net, n=64, seed=0):
    rng = np.random.default_rng(seed)
    if net.input_dtype == "uint8":
        return rng.integers(0, 256, (n, net.sizes[0])).astype(np.uint8)
    # float32 values, so the float32 the exports read is exactly fastnn's input
    return rng.normal(0, 1.5, (n, net.sizes[0])).astype(np.float32).astype(net.dtype)


# every case in every format under --runslow; in the fast suite each case in one
# format, the formats in turn
@pytest.mark.parametrize("case, fmt", sweep(
    [(case, fmt) for case in CASES for fmt in FORMATS],
    fast=[i * len(FORMATS) + i % len(FORMATS) for i in range(len(CASES))]))
def test_every_activation_dtype_and_depth(tmp_path, case, fmt):
    net = CASES[case]()
    X = inputs(net)
    A, labels = RUNNERS[fmt](net, X, tmp_path)
    check_against_fastnn(net, X, fmt, A, labels)
    if net.sizes[-1] == 1:
        assert 0 < labels.sum() < len(labels)   # the threshold was exercised both ways


def test_one_output_threshold_is_strict(tmp_path):
    # an output of exactly 0.5 is class 0, as in fastnn: zero weights, zero bias
    net = small([3, 1], "sigmoid", "sigmoid")
    net.weights = [np.zeros((3, 1))]
    net.biases = [np.zeros(1)]
    X = np.full((2, 3), 7, dtype=np.uint8)
    assert net.predict(X).tolist() == [0, 0]
    for fmt in FORMATS:
        # each runner skips (a failure in CI) when its tool is missing
        (tmp_path / fmt).mkdir()
        A, labels = RUNNERS[fmt](net, X, tmp_path / fmt)
        assert labels.tolist() == [0, 0] and np.all(A == 0.5), fmt


# ------------------------------------------------------------------------ C

@pytest.mark.parametrize("dtype, ctype, pattern", [
    ("float32", "float", r"(-?[0-9.]+(?:e[-+][0-9]+)?)f"),
    ("float64", "double", r"(-?[0-9.]+(?:e[-+][0-9]+)?)"),
])
def test_c_weights_read_back_exactly(dtype, ctype, pattern):
    net = small([6, 5, 3], "tanh", "softmax", dtype)
    net.weights[0][0, :3] = [1.0, -0.0, 1e-40 if dtype == "float32" else 5e-320]
    source = c_source(net)
    assert f"typedef {ctype} fastnn_real;" in source
    assert "[6, 5, 3]" in source and "'tanh', 'softmax'" in source and "divided by 255" in source
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        for name, array in [(f"fastnn_W{l}", W), (f"fastnn_b{l}", b)]:
            body = re.search(name + r"\[\d+\] = \{(.*?)\};", source, re.S).group(1)
            values = re.findall(pattern, body)
            read = np.array([float(v) for v in values], dtype=net.dtype)
            assert read.tobytes() == np.ascontiguousarray(array).ravel().tobytes(), name


def test_c_as_a_library_and_its_program(tmp_path):
    net = small([4, 3, 2], "relu", "softmax")
    [path] = export(net, tmp_path / "m.c", "c")
    # without FASTNN_MAIN: a plain translation unit a program links with
    user = tmp_path / "user.c"
    user.write_text('#include <stdio.h>\n'
                    'int fastnn_predict(const float *input, float *output);\n'
                    'int main(void)\n{\n    float x[4] = {0, 64, 128, 255}, y[2];\n'
                    '    int k = fastnn_predict(x, y);\n'
                    '    printf("%d %.9g %.9g\\n", k, y[0], y[1]);\n    return 0;\n}\n')
    compile_c([path, user], tmp_path / "user", main=False)
    out = subprocess.run([tmp_path / "user"], capture_output=True, text=True, check=True)
    k, *y = out.stdout.split()
    X = np.array([[0, 64, 128, 255]], dtype=np.uint8)
    assert int(k) == net.predict(X)[0]
    np.testing.assert_allclose([float(v) for v in y], net.forward(X)[0], atol=1e-6)

    exe = compile_export(net, tmp_path)
    # commas, tabs, CRLF and blank lines are fine; a short row is an error
    ok = subprocess.run([exe], input="0,64,128,255\r\n\n0\t0 0 0", capture_output=True,
                        text=True)
    assert ok.returncode == 0 and ok.stdout.split() == [str(v) for v in net.predict(
        np.array([[0, 64, 128, 255], [0, 0, 0, 0]], dtype=np.uint8))]
    short = subprocess.run([exe], input="1 2 3 4\n1 2 3\n", capture_output=True, text=True)
    assert short.returncode == 1 and short.stderr == "line 2 has 3 values; the model expects 4\n"
    bad = subprocess.run([exe], input="1 2 x 4\n", capture_output=True, text=True)
    assert bad.returncode == 1 and "not a number" in bad.stderr
    usage = subprocess.run([exe, "--bogus"], input="", capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


# --------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_graph_metadata_and_dynamic_batch(tmp_path, dtype):
    onnx = needs("onnx")
    ort = needs("onnxruntime")
    net = small([6, 5, 3], "leaky_relu", "softmax", dtype)
    [path] = export(net, tmp_path / "m.onnx", "onnx", source="some/model.safetensors")
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    [inp], [out] = model.graph.input, model.graph.output
    elem = onnx.TensorProto.DOUBLE if dtype == "float64" else onnx.TensorProto.FLOAT
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 6]
    assert out.name == "output" and out.type.tensor_type.elem_type == elem
    assert {i.data_type for i in model.graph.initializer} == {elem}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 2 and "Div" in ops and ops[-1] == "Softmax"
    assert ("Cast" in ops) == (dtype == "float64")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sizes"] == "[6, 5, 3]" and meta["activations"] == '["leaky_relu", "softmax"]'
    assert '"input_dtype": "uint8"' in meta["input_scaling"] and meta["dtype"] == dtype
    assert meta["source"] == "some/model.safetensors"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (1, 7):
        X = inputs(net, n)
        np.testing.assert_allclose(session.run(None, {"input": X.astype(np.float32)})[0],
                                   net.forward(X), atol=1e-6)


def test_onnx_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(FastnnError, match=r"pip install 'fastnn\[onnx\]'"):
        export(small([3, 2]), tmp_path / "m.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------- NumPy

def test_numpy_paths_and_module(tmp_path):
    assert numpy_paths("a/m") == numpy_paths("a/m.py") == numpy_paths("a/m.npz") == \
        ("a/m.py", "a/m.npz")
    assert numpy_paths("m.v2") == ("m.v2.py", "m.v2.npz")
    assert numpy_paths("M.PY") == ("M.py", "M.npz")   # as format_from_suffix, any case
    net = small([5, 4, 3], "relu", "softmax")
    export(net, tmp_path / "m.py", "numpy")
    namespace = {"__file__": str(tmp_path / "m.py"), "__name__": "m"}
    source = (tmp_path / "m.py").read_text()
    assert "fastnn" not in re.findall(r"^(?:import|from) (\w+)", source, re.M)
    exec(compile(source, "m.py", "exec"), namespace)
    X = inputs(net, 9)
    for X_as in (X, X.astype(np.int64), X.astype(np.float64)):
        assert namespace["forward"](X_as).dtype == np.float32
        np.testing.assert_allclose(namespace["forward"](X_as), net.forward(X), atol=1e-6)
    assert namespace["predict"](X[0]).tolist() == net.predict(X[:1]).tolist()   # one row, 1-d
    with pytest.raises(ValueError, match=r"expected \(n, 5\)"):
        namespace["forward"](np.zeros((2, 4)))


def test_numpy_leaves_nothing_when_the_module_cannot_be_written(tmp_path):
    (tmp_path / "m.py").mkdir()   # the .npz can be written, the .py cannot
    with pytest.raises(FastnnError, match="is a directory"):
        export(small([3, 2]), tmp_path / "m", "numpy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]


# ------------------------------------------------------------------ the API

def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown export format 'tflite'; expected one of "
                                          r"\['c', 'numpy', 'onnx'\]"):
        export(small([3, 2]), tmp_path / "m.tflite", "tflite")
    assert list(tmp_path.iterdir()) == []


def test_export_from_a_model_file_and_errors(tmp_path):
    net = small([4, 3, 2], "tanh", "softmax")
    net.save(tmp_path / "m.safetensors")
    [path] = export(tmp_path / "m.safetensors", tmp_path / "m.c", "c")
    assert "m.safetensors" in open(path).read().splitlines()[0]
    with pytest.raises(ModelFileError, match="no such model file"):
        export(tmp_path / "missing.safetensors", tmp_path / "x.c", "c")
    with pytest.raises(FastnnError, match="does not exist"):
        export(net, tmp_path / "no" / "dir" / "m.c", "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.c", "m.safetensors"]
    assert format_from_suffix("a.ONNX") == "onnx" and format_from_suffix("b.c") == "c"
    assert format_from_suffix("c.py") == "numpy" and format_from_suffix("d.bin") is None


# -------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    small([4, 3, 2], "relu", "softmax").save(path)
    return path


def invoke(*args, code=0):
    result = CliRunner().invoke(export_command, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


@pytest.mark.parametrize("fmt, out, written", [
    ("onnx", "m.onnx", ["m.onnx"]), ("c", "m.c", ["m.c"]),
    ("numpy", "m.py", ["m.npz", "m.py"]), ("numpy", "m", ["m.npz", "m.py"]),
])
def test_cli_writes_each_format(model_file, tmp_path, fmt, out, written):
    if fmt == "onnx":
        needs("onnx")
    result = invoke(model_file, "--format", fmt, "-o", tmp_path / out)
    assert sorted(p.name for p in tmp_path.iterdir()) == written
    assert result.stdout.count("\n") == 1 and result.stdout.startswith(f"Exported {model_file}")
    assert all(str(tmp_path / name) in result.stdout for name in written)


def test_cli_format_from_the_suffix(model_file, tmp_path):
    invoke(model_file, "-o", tmp_path / "m.c")
    assert (tmp_path / "m.c").exists()
    result = invoke(model_file, "-o", tmp_path / "m.bin", code=2)
    assert "cannot tell the format" in result.output and "--format" in result.output


def test_cli_errors(model_file, tmp_path, monkeypatch):
    missing = invoke(tmp_path / "nope.safetensors", "--format", "c", "-o", tmp_path / "m.c",
                     code=1)
    assert missing.output == f"Error: {tmp_path / 'nope.safetensors'}: no such model file\n"
    invoke(model_file, "--format", "tflite", "-o", tmp_path / "m.c", code=2)
    invoke(model_file, "--format", "c", code=2)   # -o is required
    monkeypatch.setitem(sys.modules, "onnx", None)
    no_onnx = invoke(model_file, "--format", "onnx", "-o", tmp_path / "m.onnx", code=1)
    assert no_onnx.output.startswith("Error: ONNX export needs the onnx package: "
                                     "pip install 'fastnn[onnx]'")
    assert no_onnx.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_help_has_an_example_and_every_format():
    assert "fastnn export" in invoke("--help").output
    # the command names the formats itself, to start without importing fastnn.export
    [option] = [p for p in export_command.params if p.name == "format_"]
    assert sorted(option.type.choices) == FORMATS


def test_cli_in_a_real_process(model_file, tmp_path):
    command = [sys.executable, "-c", "from fastnn.cli.export import export; export()"]
    ok = subprocess.run([*command, model_file, "-f", "numpy", "-o", tmp_path / "m"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("Exported") and ok.stderr == ""
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "m.py"]
    bad = subprocess.run([*command, tmp_path / "nope", "-f", "c", "-o", tmp_path / "x.c"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == f"Error: {tmp_path / 'nope'}: no such model file\n"
    usage = subprocess.run([*command, model_file, "-f", "tflite", "-o", tmp_path / "x"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "'tflite' is not one of" in usage.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "m.py"]


@pytest.mark.slow
def test_a_session_through_the_fastnn_command(mnist, tmp_path):
    """train -> export -> cc -O2 -lm, through ``python -m fastnn`` as a user
    runs it: the compiled program labels all 10,000 MNIST test images as
    ``fastnn predict`` does."""
    def fastnn_command(*args):
        out = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)],
                             capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "FASTNN_DATA": str(MNIST_DIR)})
        assert out.returncode == 0 and out.stderr == "", out.stderr
        return out.stdout

    fastnn_command("train", "mnist", "--hidden", "20", "--epochs", "1", "--seed", "3",
                   "--quiet", "-o", "m.safetensors")
    assert fastnn_command("export", "m.safetensors", "-o", "m.c").startswith("Exported")
    # the build line the README gives: no -std, no warnings flags
    compile_c(["m.c"], "m", flags=["-O2"], cwd=tmp_path)
    X_test, _ = mnist[1]
    run = subprocess.run([tmp_path / "m"], input=text_rows(X_test), capture_output=True,
                         text=True, check=True)
    predicted = fastnn_command("predict", "m.safetensors", "mnist").split()
    assert predicted[0] == "label" and len(predicted) == 10001
    assert run.stdout.split() == predicted[1:]


def test_every_format_knows_every_fastnn_activation():
    from fastnn.activations import ACTIVATIONS
    from fastnn.export import C_ACTIVATIONS, NUMPY_ACTIVATIONS, ONNX_ACTIVATIONS

    for known in (C_ACTIVATIONS, NUMPY_ACTIVATIONS, ONNX_ACTIVATIONS):
        assert sorted(known) == sorted(ACTIVATIONS)
