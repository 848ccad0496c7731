"""Model files, the public face: `load` and `save` a Network or an Ensemble.

The formats themselves (the header schema of each version, reading,
checking and writing) are fastnn.modelfile's; Network.save writes through
it directly, and it builds the networks a file describes through the
classes that fastnn.network and fastnn.ensemble register there, so that no
import runs from the model files back to the network. This module sits
above all three, and gives `load` its type.
"""
from fastnn._typing import PathLike
from fastnn.ensemble import Ensemble  # noqa: F401 (registered: format-3 files load as it)
from fastnn.modelfile import (FORMAT_VERSION, FORMATS, MAX_HEADER, MODEL_FILE, WEIGHT_LAYOUT,
                              ModelHeader, check_header, read_header, read_metadata,
                              safetensors_bytes)
from fastnn.modelfile import load as _load
from fastnn.modelfile import save as _save
from fastnn.network import Network

__all__ = ["load", "save", "read_header", "read_metadata", "check_header", "safetensors_bytes",
           "ModelHeader", "MODEL_FILE", "FORMATS", "FORMAT_VERSION", "MAX_HEADER",
           "WEIGHT_LAYOUT"]


def load(path: PathLike, backend: str = "cython") -> Network:
    """Read a network (or an Ensemble, from a format-3 file) from a fastnn
    model file.

    The whole header is checked (see `read_header`) before anything is
    allocated for the network; each tensor is then read and checked for
    NaN and infinity. Nothing in the file is ever executed.

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
    net: Network = _load(path, backend)
    return net


def save(net: Network, path: PathLike, force: bool = False, weights_only: bool = False) -> None:
    """Write `net` to `path` as a safetensors model file, atomically (see
    Network.save, which this is)."""
    _save(net, path, force=force, weights_only=weights_only)
