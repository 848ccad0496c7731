"""Model files: a network's weights in safetensors, its description in the header.

A fastnn model file is a plain safetensors file. Its tensors are
``weights.<l>`` and ``biases.<l>``, and after training ``optimizer.state``
(the optimizer's buffers, for resuming); its ``__metadata__`` header holds
``format = "fastnn"``, ``format_version``, ``fastnn_version`` and JSON
strings ``network`` (sizes, activations, loss, dtype, init, seed, slope,
epochs trained, the dtype of the training inputs), ``input_scaling`` (the
factor applied to the inputs: 1/255 for uint8 pixels), ``optimizer``
(name, steps taken) and ``training`` (the options of the last fit, its
final metrics and learning-rate schedule state).

Writing is atomic and follows the output policy of ``fastnn.files``: the
file is written to a temporary name in the same directory, flushed to disk,
and renamed over the target, so a crash never leaves a half-written model,
and an existing file that is not a fastnn model is not replaced unless
asked to. Loading never executes code (no pickle): the
header is JSON and the tensors are raw arrays, checked against the header.
"""
import json
import os

import numpy as np

from fastnn._kernels import get_backend
from fastnn._version import __version__
from fastnn.data import read_file
from fastnn.exceptions import ConfigError, ModelFileError
from fastnn.files import FileKind, atomic_write
from fastnn.optimizers import get_optimizer
from fastnn.training import OptimizerState

FORMAT = "fastnn"
FORMAT_VERSION = 1
# uint8 inputs are divided by 255 by the kernels; other dtypes are used as given.
# The safetensors header is 8 bytes of length, then JSON; refuse absurd lengths.
MAX_HEADER = 100 * 1024 * 1024


def _bytes(net):
    from safetensors.numpy import save as st_save

    tensors = {}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        tensors[f"weights.{l}"] = W
        tensors[f"biases.{l}"] = b
    optimizer = {}
    if net.optimizer_state is not None:
        tensors["optimizer.state"] = net.optimizer_state.state
        optimizer = {"name": net.optimizer_state.name, "steps": net.optimizer_state.steps}
    network = {
        "sizes": list(net.sizes),
        "activations": list(net.activations),
        "loss": net.loss,
        "dtype": str(net.dtype),
        "init": net.init,
        "seed": net.seed,
        "slope": net.slope,
        "epochs_trained": net.epochs_trained,
        "input_dtype": net.input_dtype,
    }
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "fastnn_version": __version__,
        "network": json.dumps(network),
        "input_scaling": json.dumps({"input_dtype": net.input_dtype, "scale": net.input_scale}),
        "optimizer": json.dumps(optimizer),
        "training": json.dumps(net.training, default=float),
    }
    return st_save(tensors, metadata=metadata)


def _looks_like_model(head):
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


def save(net, path, force=False):
    """Write `net` to `path` as a safetensors model file, atomically, under
    the output policy of fastnn.files (an existing file that is not a fastnn
    model is replaced only with force=True)."""
    atomic_write(path, _bytes(net), ModelFileError, kind=MODEL_FILE, force=force)


def _header(data, path):
    if len(data) < 8:
        raise ModelFileError(f"{path} is not a fastnn model: {len(data)} bytes is too "
                             f"short for a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER or n > len(data) - 8:
        if n <= MAX_HEADER and data[8:9] == b"{":
            raise ModelFileError(f"{path} is truncated: its header needs {n} bytes, "
                                 f"the file has {len(data) - 8}")
        raise ModelFileError(f"{path} is not a fastnn model (not a safetensors file)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{path} is not a fastnn model (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a fastnn model (not a safetensors file)")
    return header, 8 + n


def _tensor_end(header):
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            return None
    return end


def _network_config(meta, path):
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ModelFileError(f"{path} has an unreadable format_version "
                             f"{meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer fastnn ({meta.get('fastnn_version', '?')}, "
            f"format version {version}); this fastnn {__version__} reads format "
            f"version {FORMAT_VERSION} at most. Upgrade fastnn to load it.")
    try:
        config = json.loads(meta["network"])
        training = json.loads(meta.get("training", "{}"))
        sizes = [int(s) for s in config["sizes"]]
        activations = [str(a) for a in config["activations"]]
        if len(activations) != len(sizes) - 1:
            raise ValueError("one activation per layer")
        if not isinstance(training, dict):
            raise ValueError("training is not a JSON object")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} has a damaged fastnn header ({exc})") from None
    return config, sizes, activations, training


def _read(path):
    """(bytes, header, where the tensors start, fastnn metadata) of a model file."""
    data = read_file(path, ModelFileError, "model file")
    header, data_start = _header(data, path)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is a safetensors file but not a fastnn model "
                             f"(no fastnn metadata in its header)")
    return data, header, data_start, meta


def read_metadata(path):
    """The fastnn metadata of a model file's header, as strings (JSON values parsed)."""
    _, _, _, meta = _read(os.fspath(path))
    return meta


def load(path, backend="cython"):
    """Read a network from a fastnn model file.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"}, default "cython"

    Raises
    ------
    ModelFileError
        If the file is missing, is not a fastnn model, is truncated, has a
        newer format version, or its tensors do not match its header.
    """
    from fastnn.network import Network
    from safetensors.numpy import load as st_load

    get_backend(backend)
    path = os.fspath(path)
    data, header, data_start, meta = _read(path)
    config, sizes, activations, training = _network_config(meta, path)
    end = _tensor_end(header)
    if end is None:
        raise ModelFileError(f"{path} has a damaged safetensors header")
    if data_start + end > len(data):
        raise ModelFileError(f"{path} is truncated: its tensors need {data_start + end} "
                             f"bytes, the file has {len(data)}")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{path} has damaged tensors ({exc})") from None
    try:
        net = Network(sizes, activation=activations[:-1], output=activations[-1],
                      loss=config["loss"], dtype=config["dtype"], init=config.get("init", "nielsen"),
                      seed=int(config["seed"]), slope=float(config.get("slope", 0.01)),
                      backend=backend)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} describes an invalid network ({exc})") from None
    expected = {}
    for l in range(len(sizes) - 1):
        expected[f"weights.{l}"] = (sizes[l], sizes[l + 1])
        expected[f"biases.{l}"] = (sizes[l + 1],)
    optimizer = _optimizer_config(meta, path)
    if optimizer:
        expected["optimizer.state"] = (get_optimizer(optimizer["name"]).state_rows, net.n_params)
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        raise ModelFileError(f"{path} has inconsistent tensors for sizes {sizes}: "
                             f"missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        t = tensors[name]
        if t.shape != shape:
            raise ModelFileError(f"{path} has inconsistent shapes: {name} is {t.shape}, "
                                 f"but sizes {sizes} need {shape}")
        if t.dtype != net.dtype:
            raise ModelFileError(f"{path}: {name} is {t.dtype}, but the header says {net.dtype}")
        if not np.isfinite(t).all():
            raise ModelFileError(f"{path}: {name} contains NaN or infinity")
    for l in range(len(sizes) - 1):
        net.weights[l][...] = tensors[f"weights.{l}"]
        net.biases[l][...] = tensors[f"biases.{l}"]
    try:
        net.epochs_trained = int(config.get("epochs_trained", 0))
        input_dtype = config.get("input_dtype")
        if input_dtype not in (None, "uint8", "float32", "float64"):
            raise ValueError(input_dtype)
        net.input_dtype = input_dtype
    except (TypeError, ValueError):
        raise ModelFileError(f"{path} has a damaged fastnn header (epochs_trained, "
                             f"input_dtype)") from None
    if optimizer:
        state = np.array(tensors["optimizer.state"])
        net.optimizer_state = OptimizerState(optimizer["name"], state, optimizer["steps"])
    net.training = training
    return net


def _optimizer_config(meta, path):
    """{"name", "steps"} of the saved optimizer state, or {} if none."""
    try:
        optimizer = json.loads(meta.get("optimizer", "{}"))
        if not optimizer:
            return {}
        get_optimizer(optimizer["name"])
        optimizer["steps"] = int(optimizer["steps"])
        if optimizer["steps"] < 0:
            raise ValueError("negative steps")
        return optimizer
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path} has a damaged optimizer header ({exc})") from None
