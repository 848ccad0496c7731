"""Reading data: dataset names, IDX, CSV, .npz, .npy and Nielsen's mnist.pkl.gz.

``load_data(spec)`` returns a ``Data`` (features X, labels or targets y,
where it came from). Every loader refuses bad input with a ``DataError``
that names the file and, where it can, the row and column; nothing here
executes code from a file (``np.load`` runs with ``allow_pickle=False``,
and Nielsen's pickle goes through an unpickler that builds only NumPy
arrays and tuples). Large ``.npy`` files are memory-mapped, and uint8
images stay uint8.
"""
import csv
import gzip
import io
import math
import os
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fastnn.exceptions import DataError

# IDX type codes (the third magic byte) and the big-endian dtypes they mean.
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Data:
    """Features, labels (int) or targets (float), and a name for messages."""

    X: np.ndarray
    y: Optional[np.ndarray]
    source: str

    def __len__(self):
        return len(self.X)


# ------------------------------------------------------------------ files

def read_file(path, error=DataError, what="data file", limit=-1):
    """The bytes of a file (at most `limit` of them, if given); `error` with a
    one-line message if it cannot be read."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a {what}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None


def gunzip(data, name):
    """data decompressed if it starts with the gzip magic, else as it is."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name} is a damaged gzip file ({exc})") from None


def read_bytes(path):
    """The contents of a file, decompressed if it is gzip-compressed.

    Raises DataError for a missing or unreadable file or a damaged gzip stream.
    """
    return gunzip(read_file(path), os.fspath(path))


# -------------------------------------------------------------------- IDX

def parse_idx(data, name="IDX data"):
    """An array from the bytes of an IDX file (magic 0 0 type ndim, then
    ndim big-endian uint32 dimensions, then the values, big-endian)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number)")
    kind, ndim = data[2], data[3]
    if kind not in IDX_TYPES:
        raise DataError(f"{name} is not an IDX file (unknown type code 0x{kind:02x})")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{name} is truncated (incomplete IDX header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[kind]
    # exact integers: a damaged header's dimensions can overflow int64
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "longer than its header says"
        raise DataError(f"{name} is {what}: shape {shape} needs {expected} bytes of data, "
                        f"it has {len(data) - header}")
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    except ValueError:
        # an empty array whose other dimensions NumPy cannot address
        raise DataError(f"{name} has an impossible shape {shape}") from None
    # a writable copy in native byte order, not a read-only view of the bytes
    return array.astype(dtype.newbyteorder("="))


def read_idx(path):
    """Read an IDX file (gzip-compressed or raw) into a NumPy array."""
    return parse_idx(read_bytes(path), os.fspath(path))


def _idx_labels_beside(path):
    """The labels file that goes with an IDX images file, if it exists."""
    name = path.name
    if "images-idx3" not in name:
        return None
    base = name.replace("images-idx3", "labels-idx1")
    for candidate in (base, base[:-3] if base.endswith(".gz") else base + ".gz"):
        if (path.parent / candidate).is_file():
            return path.parent / candidate
    return None


def load_idx(path, labels=None):
    """IDX images (any shape (n, ...), flattened to rows) and their labels."""
    images = read_idx(path)
    if images.ndim < 2:
        raise DataError(f"{path} holds a 1-D IDX array; give the images file, not the labels")
    X = images.reshape(len(images), -1)
    labels = Path(labels) if labels else _idx_labels_beside(path)
    y = None if labels is None else read_idx(labels)
    return X, y


# -------------------------------------------------------------------- CSV

def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_problem(text, names, path, first_line):
    """The DataError for the first malformed row or non-numeric cell."""
    width = None
    for r, row in enumerate(csv.reader(io.StringIO(text))):
        if not row:
            continue
        if width is None:
            width = len(row)
        elif len(row) != width:
            return DataError(f"{path}: row {first_line + r} has {len(row)} columns, "
                             f"the first row has {width}")
        for c, cell in enumerate(row):
            if not _is_number(cell):
                column = names[c] if names and c < len(names) else str(c + 1)
                return DataError(f"{path}: row {first_line + r}, column {column} is not a "
                                 f"number: {cell!r}")
    return None


def load_csv(path, label_col=None, n_features=None):
    """Rows of a CSV file; a header row, if any, is detected.

    The label column is `label_col` (a name or a 1-based number), by default
    the last column; with `n_features` given and the file exactly that wide,
    the file has no label column (whatever `label_col` says). Features that are all whole numbers in
    0..255 are read as uint8 pixels (scaled by 1/255 like IDX images).
    """
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text CSV file") from None
    try:
        first = next(csv.reader(io.StringIO(text[:text.find("\n") + 1 or None])), None)
    except csv.Error as exc:
        # e.g. a lone carriage return inside a field
        raise DataError(f"{path} is not a valid CSV file ({exc})") from None
    if not first:
        raise DataError(f"{path} is empty")
    names = None
    if not all(_is_number(cell) for cell in first):
        names = [cell.strip() for cell in first]
        text = text[text.find("\n") + 1:] if "\n" in text else ""
    first_line = 2 if names else 1
    if not text.strip():
        raise DataError(f"{path} has a header but no rows")
    try:
        values = np.loadtxt(io.StringIO(text), delimiter=",", quotechar='"', dtype=np.float64,
                            ndmin=2)
    except ValueError as exc:
        try:
            problem = _csv_problem(text, names, path, first_line)
        except csv.Error:
            problem = None
        raise (problem or DataError(f"{path} is not a valid CSV file ({exc})")) from None
    width = values.shape[1]
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        column = names[c] if names and c < len(names) else str(c + 1)
        raise DataError(f"{path}: row {first_line + r}, column {column} is {values[r, c]}, "
                        f"not a finite number")
    if n_features is not None and width == n_features:
        # exactly the features the model takes: no label column, even where
        # one is named (a model's training label column, given to predict)
        return pixels_or_floats(values), None
    col = _label_column(label_col, names, width, path)
    X = np.delete(values, col, axis=1)
    return pixels_or_floats(X), values[:, col]


def _label_column(label_col, names, width, path):
    if label_col is None:
        return width - 1
    label_col = str(label_col)
    if names and label_col in names:
        return names.index(label_col)
    if label_col.isdigit() and 1 <= int(label_col) <= width:
        return int(label_col) - 1
    known = f"; its columns are {names}" if names else f"; it has {width} columns (1..{width})"
    raise DataError(f"{path} has no label column {label_col!r}{known}")


def pixels_or_floats(X):
    """X as uint8 pixels if every value is a whole number in 0..255, else X."""
    if X.size and (X >= 0).all() and (X <= 255).all() and (X == np.round(X)).all():
        return X.astype(np.uint8)
    return X


# -------------------------------------------------------------- npz / npy

def _np_load(path, **kwargs):
    try:
        return np.load(path, allow_pickle=False, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except Exception as exc:  # ValueError, OSError, zipfile errors...: they vary by NumPy version
        raise DataError(f"{path} is not a readable NumPy file ({exc})") from None


def load_npz(path, labels=None):
    """X and y from a .npz archive."""
    with _np_load(path) as archive:
        keys = list(archive.files)
        if "X" not in keys:
            raise DataError(f"{path} has no array 'X'; it has {keys}")
        try:
            X = archive["X"]
            y = archive["y"] if "y" in keys else None
        except Exception as exc:
            raise DataError(f"{path} has a damaged array ({exc})") from None
    if labels:
        y = load_array(labels)
    return X, y


def load_array(path):
    """One array from a .npy file, memory-mapped (it is never copied whole)."""
    array = _np_load(path, mmap_mode="r")
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} is not a .npy array file")
    return array


def _npy_labels_beside(path):
    stem, suffix = path.stem, path.suffix
    for old, new in (("X", "y"), ("x", "y"), ("images", "labels"), ("features", "labels"),
                     ("features", "targets")):
        if old in stem:
            candidate = path.with_name(stem.replace(old, new) + suffix)
            if candidate != path and candidate.is_file():
                return candidate
    return None


def load_npy(path, labels=None):
    """X from a .npy file (memory-mapped) and y from `labels` or a file beside
    it (X_train.npy -> y_train.npy, images.npy -> labels.npy)."""
    X = load_array(path)
    labels = Path(labels) if labels else _npy_labels_beside(path)
    return X, None if labels is None else load_array(labels)


# ------------------------------------------------------- Nielsen's pickle

class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds NumPy arrays, dtypes and tuples and nothing else.

    (``_codecs.encode`` turns a str into bytes: Python 3 writes bytes that way
    in protocol-2 pickles.)
    """

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy.core"):
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays "
                                     f"and tuples are allowed")


def load_nielsen_pickle(path, split="train"):
    """Nielsen's mnist.pkl.gz: ((train), (validation), (test)) pairs of
    float32 images in [0, 1] and int labels; returns the chosen split."""
    data = read_bytes(path)
    try:
        content = _ArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None
    splits = {"train": 0, "validation": 1, "test": 2}
    try:
        X, y = content[splits[split]]
    except (TypeError, ValueError, IndexError, KeyError):
        raise DataError(f"{path} is not Nielsen's mnist.pkl.gz layout "
                        f"((X, y) for train, validation and test)") from None
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{path} is not Nielsen's mnist.pkl.gz layout (arrays expected)")
    return X, y


# ------------------------------------------------------------- dispatch

IDX_NAME = re.compile(r"idx\d-ubyte")


def detect_format(path):
    """The format of a data file, from its name, then its first bytes."""
    name = path.name.lower()
    for suffix, kind in ((".csv", "csv"), (".csv.gz", "csv"), (".npz", "npz"), (".npy", "npy"),
                         (".pkl", "pickle"), (".pkl.gz", "pickle")):
        if name.endswith(suffix):
            return kind
    if IDX_NAME.search(name):
        return "idx"
    head = read_file(path, limit=64 * 1024)
    if head[:2] == GZIP_MAGIC:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 8)
        except zlib.error:
            head = b""
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] in IDX_TYPES:
        return "idx"
    return None


def load_data(spec, split="train", labels=None, label_col=None, n_features=None):
    """Features and labels from a dataset name or a data file.

    Parameters
    ----------
    spec : str or Path
        A dataset name (``mnist``), or a file: IDX images (.gz or raw; labels
        found beside or given by `labels`), CSV (`label_col`, default the
        last column), .npz with arrays X and y, .npy (labels beside or given
        by `labels`), or Nielsen's mnist.pkl.gz.
    split : {"train", "test"}
        Which split of a named dataset or of Nielsen's pickle.
    labels : str or Path, optional
        The labels file of IDX or .npy images.
    label_col : str or int, optional
        The label column of a CSV file, by name or 1-based number.
    n_features : int, optional
        The features a model takes, to tell a label-less CSV.

    Returns
    -------
    Data
        X is 2-D (images are flattened to rows); y is None when there are
        no labels.
    """
    from fastnn.datasets import DATASETS

    spec = os.fspath(spec)
    if spec in DATASETS and not os.path.exists(spec):
        (X_train, y_train), (X_test, y_test) = DATASETS[spec]()
        X, y = (X_train, y_train) if split == "train" else (X_test, y_test)
        return Data(X, y, f"{spec} ({split})")
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file, and not a known dataset ({', '.join(DATASETS)})")
    if path.is_dir():
        raise DataError(f"{spec} is a directory; give a data file or a dataset name")
    kind = detect_format(path)
    if kind is None:
        raise DataError(f"{spec}: unknown data format; expected a dataset name "
                        f"({', '.join(DATASETS)}), IDX, CSV, .npz, .npy or Nielsen's mnist.pkl.gz")
    if kind == "csv":
        X, y = load_csv(path, label_col, n_features)
    elif kind == "npz":
        X, y = load_npz(path, labels)
    elif kind == "npy":
        X, y = load_npy(path, labels)
    elif kind == "pickle":
        X, y = load_nielsen_pickle(path, "test" if split == "test" else "train")
    else:
        X, y = load_idx(path, labels)
    return Data(*_check_data(X, y, spec), spec)


def source_files(spec, labels=None):
    """The files `load_data(spec, labels=labels)` would read, as far as they
    exist (for the check that no output overwrites an input)."""
    from fastnn.datasets import DATASETS, MNIST_FILES, find_mnist
    from fastnn.exceptions import DatasetNotFound

    spec = os.fspath(spec)
    if spec in DATASETS and not os.path.exists(spec):
        try:
            place = find_mnist()
        except DatasetNotFound:
            return []
        return [place / name for name, _ in MNIST_FILES.values()]
    path = Path(spec)
    beside = Path(labels) if labels else None
    if beside is None and path.is_file():
        beside = _idx_labels_beside(path) or (_npy_labels_beside(path)
                                               if path.suffix.lower() == ".npy" else None)
    return [p for p in (path, beside) if p is not None and p.exists()]


def _check_data(X, y, spec):
    """X as 2-D numeric rows (images flattened) and y as matching labels or targets."""
    if X.dtype.kind not in "biuf":
        raise DataError(f"{spec}: features must be numbers, not {X.dtype}")
    if X.ndim == 1 or X.ndim == 0:
        raise DataError(f"{spec}: features must have one row per sample, got shape {X.shape}")
    if X.ndim > 2:
        X = X.reshape(len(X), -1)
    if len(X) == 0:
        raise DataError(f"{spec} has no samples")
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise DataError(f"{spec}: labels must be numbers, not {y.dtype}")
        if len(y) != len(X):
            raise DataError(f"{spec} has {len(X)} samples but {len(y)} labels")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim == 1 and y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
            y = y.astype(np.int64)
        elif y.dtype.kind in "biu":
            y = y.astype(np.int64)
    return X, y
