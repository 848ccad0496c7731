"""Exports of tabular models take raw rows and agree with fastnn (issue 12):
the stored scaling, the class names and the restored regression targets
survive ONNX, C and NumPy."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import compile_export, needs

import fastnn
from fastnn import Network
from fastnn.export import export

def classifier(dtype="float32"):
    rng = np.random.default_rng(0)
    X = rng.normal(50, 20, size=(120, 4))
    X[:, 3] = 2.5                                     # a constant column
    names = np.array(["setosa", 'ver"si*/color', "virgínica"])
    y = names[np.argmax(X[:, :3] + rng.normal(0, 5, (120, 3)), axis=1)]
    net = Network([4, 8, 3], seed=0, dtype=dtype)
    net.fit(X, y, epochs=10, lr=1.0, scale="standard")
    return net, X


def regression():
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 100, size=(150, 3))
    y = np.column_stack([200 + 3 * X[:, 0] - X[:, 1], 10 * X[:, 2]])
    net = Network([3, 8, 2], output="identity", seed=0, dtype="float64")
    net.fit(X, y, epochs=20, lr=0.05, task="regression", scale="minmax")
    return net, X


def onnx_outputs(net, X, tmp_path):
    needs("onnx")
    ort = needs("onnxruntime")
    import onnx

    [path] = export(net, tmp_path / "m.onnx", "onnx")
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": X.astype(np.float32)})[0], meta


def numpy_module(net, tmp_path):
    export(net, tmp_path / "tabular_model.py", "numpy")
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        module = importlib.import_module("tabular_model")
        return importlib.reload(module)
    finally:
        sys.path.remove(str(tmp_path))


def rows(X):
    return "\n".join(" ".join("%.9g" % v for v in row) for row in X.tolist()) + "\n"


def test_classifier_exports_scale_raw_rows_and_name_the_classes(tmp_path):
    net, X = classifier()
    A = net.forward(X)
    names = net.predict(X)
    outputs, meta = onnx_outputs(net, X, tmp_path)
    np.testing.assert_allclose(outputs, A, rtol=1e-4, atol=1e-5)
    assert meta["n_classes"] == "3"
    assert [meta[f"class_{k}"] for k in range(3)] == ["setosa", 'ver"si*/color', "virgínica"]
    assert meta["task"] == "classification"

    module = numpy_module(net, tmp_path)
    np.testing.assert_allclose(module.forward(X), A, rtol=1e-4, atol=1e-5)
    assert (module.predict(X) == names).all()

    exe = compile_export(net, tmp_path)
    out = subprocess.run([exe], input=rows(X), capture_output=True, text=True, check=True)
    # the C file escapes the names (octal UTF-8): printed, they are the bytes again
    assert out.stdout.splitlines() == names.tolist()
    values = subprocess.run([exe, "--outputs"], input=rows(X), capture_output=True, text=True,
                            check=True)
    np.testing.assert_allclose(np.loadtxt(values.stdout.splitlines()), A, rtol=1e-4, atol=1e-5)


def test_regression_exports_give_target_values(tmp_path):
    net, X = regression()
    predicted = net.predict(X)
    assert predicted.shape == (150, 2) and predicted[:, 0].mean() > 100
    outputs, meta = onnx_outputs(net, X, tmp_path)
    np.testing.assert_allclose(outputs, predicted, rtol=1e-6, atol=1e-6)
    assert meta["task"] == "regression" and "n_classes" not in meta
    module = numpy_module(net, tmp_path)
    np.testing.assert_allclose(module.predict(X), predicted, rtol=1e-9, atol=1e-9)
    exe = compile_export(net, tmp_path)
    out = subprocess.run([exe], input=rows(X), capture_output=True, text=True, check=True)
    np.testing.assert_allclose(np.loadtxt(out.stdout.splitlines()), predicted, rtol=1e-6,
                               atol=1e-6)


def test_exports_after_save_and_load_and_resume(tmp_path):
    net, X = classifier("float64")
    net.save(tmp_path / "m.safetensors")
    loaded = fastnn.load(tmp_path / "m.safetensors")
    loaded.fit(X, net.predict(X), epochs=1)          # resumed: the same scaling and classes
    assert loaded.preprocessing.to_dict() == net.preprocessing.to_dict()
    module = numpy_module(loaded, tmp_path)
    assert (module.predict(X) == loaded.predict(X)).all()


def test_a_regression_with_a_sigmoid_output_is_refused_in_one_line(tmp_path):
    from fastnn.export import ExportError

    rng = np.random.default_rng(2)
    net = Network([2, 3, 1], seed=0)
    net.fit(rng.normal(size=(20, 2)), rng.normal(size=20), epochs=1, task="regression")
    # every format refuses it (ONNX once onnx is there: its exporter asks for it first)
    for fmt in ("numpy", "c", "onnx"):
        if fmt == "onnx":
            needs("onnx")
        with pytest.raises(ExportError, match="cannot be exported"):
            export(net, tmp_path / f"m.{fmt}", fmt)


# ------------------------------------------- conv nets (issue 11 with 12)

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("first", ["conv", "pool", "dense"])
@pytest.mark.parametrize("scale", ["standard", "minmax"])
def test_conv_net_exports_apply_the_scaling_before_the_first_layer(tmp_path, first, scale,
                                                                   dtype):
    # a per-feature scaling cannot fold into a convolution (its weights are
    # shared between positions, and it pads with zeros) nor into pooling:
    # each format applies (x - offset) / scale itself, as fastnn does, and
    # a Dense first layer after images still takes it folded
    from fastnn.layers import Conv2D, Dense, MaxPool2D

    rng = np.random.default_rng(3)
    # float32 values: every format takes float32 rows
    X = rng.normal(30, 10, size=(90, 6, 6, 2)).astype(np.float32)
    X[:, 0, 0, 1] = 4.0                                 # a constant feature
    y = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 90)]
    layers = {"conv": [Conv2D(3, 3, padding="same"), MaxPool2D(2)], "pool": [MaxPool2D(2)],
              "dense": [Dense(5)]}[first]
    net = Network([(6, 6, 2), *layers, Dense(3)], activation="tanh", output="softmax",
                  loss="cross_entropy", seed=0, dtype=dtype)
    net.fit(X, y, epochs=3, batch_size=10, lr=0.1, scale=scale)
    R = X.reshape(len(X), -1)
    A, names = net.forward(R), net.predict(R)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)

    outputs, meta = onnx_outputs(net, R, tmp_path)
    np.testing.assert_allclose(outputs, A, **tol)
    assert [meta[f"class_{k}"] for k in range(3)] == ["cat", "dog", "emu"]
    module = numpy_module(net, tmp_path)
    np.testing.assert_allclose(module.forward(R), A, **tol)
    assert (module.predict(R) == names).all()
    assert module.NETWORKS[0][3] == (first != "dense")
    exe = compile_export(net, tmp_path)
    out = subprocess.run([exe], input=rows(R), capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == names.tolist()
    values = subprocess.run([exe, "--outputs"], input=rows(R), capture_output=True, text=True,
                            check=True)
    # the C program reads its rows as float text: float32 precision
    np.testing.assert_allclose(np.loadtxt(values.stdout.splitlines()), A, rtol=1e-5,
                               atol=1e-6)


def test_a_regression_with_a_conv_output_layer_is_refused_in_one_line(tmp_path):
    from fastnn.export import ExportError
    from fastnn.layers import Conv2D

    rng = np.random.default_rng(4)
    net = Network([(4, 4, 1), Conv2D(1, 3)], output="identity", seed=0)
    net.fit(rng.normal(size=(20, 16)), rng.normal(size=(20, 4)), epochs=1, task="regression")
    for fmt in ("c", "numpy", "onnx"):
        if fmt == "onnx":
            needs("onnx")
        with pytest.raises(ExportError, match="cannot be exported yet"):
            export(net, tmp_path / f"m.{fmt}", fmt)
    assert not list(tmp_path.iterdir())
