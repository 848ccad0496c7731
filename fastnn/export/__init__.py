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
import os

from fastnn.exceptions import ConfigError, lookup
from fastnn.export._common import (Exporter, ExportError, Step, c_text, onnx_text,
                                   python_literal, python_text, steps)
from fastnn.export.c import C_ACTIVATIONS, C_LAYERS, C_TYPES, GENERATED_C, c_source, export_c
from fastnn.export.numpy import (GENERATED_PY, NPZ_FILE, NUMPY_ACTIVATIONS, export_numpy,
                                 numpy_module, numpy_paths, numpy_weights)
from fastnn.export.onnx import (ONNX_ACTIVATIONS, ONNX_FILE, ONNX_IR_VERSION, ONNX_OPSET,
                                export_onnx, onnx_model)
from fastnn.files import check_distinct, check_output

__all__ = ["EXPORTERS", "Exporter", "ExportError", "Step", "export", "export_c", "export_numpy",
           "export_onnx", "format_from_suffix", "c_source", "numpy_module", "numpy_paths",
           "numpy_weights", "onnx_model", "steps", "c_text", "onnx_text", "python_literal",
           "python_text", "C_ACTIVATIONS", "C_LAYERS", "C_TYPES", "NUMPY_ACTIVATIONS",
           "ONNX_ACTIVATIONS", "ONNX_IR_VERSION", "ONNX_OPSET", "GENERATED_C", "GENERATED_PY",
           "NPZ_FILE", "ONNX_FILE"]

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


def format_from_suffix(path):
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
        The network (an Ensemble too: the export computes the mean of its
        members' outputs), or a model file to load it from.
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
    from fastnn.network import Network

    if not isinstance(net, Network):
        raise ConfigError(f"export needs a fastnn Network or a model file, not "
                          f"{type(net).__name__}")
    return exporter.write(net, path, source, force)

