"""Reading data: dataset names, IDX, CSV, .npz, .npy and Nielsen's mnist.pkl.gz.

``load_data(spec)`` returns a ``Data`` (features X, labels or targets y,
where it came from). Every loader refuses bad input with a ``DataError``
that names the file and, where it can, the row and column; nothing here
executes code from a file (``np.load`` runs with ``allow_pickle=False``,
and Nielsen's pickle goes through an unpickler that builds only NumPy
arrays and tuples). Large ``.npy`` files are memory-mapped, and uint8
images stay uint8.
"""
import math
import os
import pickle
import pickletools
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from fastnn._typing import Array, PathLike
# the bounds on a CSV file's text and its longest line (see README, "Reading files")
from fastnn.csvfile import MAX_CSV_BYTES, MAX_CSV_LINE  # noqa: F401
from fastnn.csvfile import pixels_or_floats  # noqa: F401  (fastnn.data.pixels_or_floats, as before)
from fastnn.exceptions import DataError
from fastnn.idx import IDX_TYPES, read_idx
from fastnn.preprocessing import auto_scale
from fastnn.reading import (GZIP_MAGIC, MAX_DECOMPRESSED, Budget, check_regular, file_size,
                            open_data, read_file, read_stream)

if TYPE_CHECKING:
    from fastnn.csvfile import Dialect
from fastnn.reading import gunzip  # noqa: F401  (fastnn.data.gunzip, as before)

#: (X, y) as a loader returns them: y is None for a file without labels.
XY = tuple[Array, Optional[Array]]


@dataclass
class Data:
    """Features, labels (int or text) or targets (float), and a name for messages.

    `auto_scale` is what ``--scale auto`` means for these rows: ``pixels``
    (divided by 255) for images (IDX files, uint8 image arrays, the named
    data sets), ``none`` for Nielsen's pickle (images already in [0, 1]),
    ``standard`` for other (tabular) data. `label_name` is the label
    column's name in a CSV header. `shape` is the shape of one sample when
    the file says it (IDX images: (H, W) or (H, W, C)), else None.
    `dialect` is a CSV file's (fastnn.csvfile.Dialect), as read. `names`
    are the features' names in a CSV header, and `unlabelled` is True for
    each row whose label is missing (see `drop_unlabelled`), or None.
    X is a fastnn.table.Table for a CSV file with text or missing values.
    `lines` is the line of a CSV file each row was read from (its header is
    line 1; a blank line holds no row), or None.
    """

    X: Any
    y: Optional[np.ndarray]
    source: str
    auto_scale: str = "standard"
    label_name: Optional[str] = None
    shape: Optional[tuple[int, ...]] = None
    dialect: Optional["Dialect"] = None
    names: Optional[list[str]] = None
    unlabelled: Optional[np.ndarray] = None
    lines: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.X)

    def rows(self) -> Any:
        """The features as a model takes them: a fastnn.table.Table when they
        have names (a CSV header) or text, else X."""
        from fastnn.table import Table

        if isinstance(self.X, Table) or self.names is None:
            return self.X
        return Table.from_array(self.X, self.names, source=self.source)

    def drop_unlabelled(self) -> int:
        """Leave out the rows whose label is missing; returns how many. A
        DataError when every label is missing."""
        if self.unlabelled is None or self.y is None:
            return 0
        keep = ~self.unlabelled
        n = int(self.unlabelled.sum())
        if not keep.any():
            column = f"column {self.label_name}" if self.label_name else "column"
            raise DataError(f"{self.source}: the label {column} is missing on every row; name "
                            f"the label column with --label-col")
        self.X, self.y = self.X[keep], as_int_labels(np.asarray(self.y)[keep])
        self.unlabelled = None
        return n


# ------------------------------------------------------------------ files

def read_bytes(path: PathLike, limit: int = MAX_DECOMPRESSED,
               what: str = "compressed file") -> bytes:
    """The contents of a regular file, decompressed (at most `limit` bytes) if
    it is gzip-compressed.

    Raises DataError for a missing, unreadable or non-regular file, a
    damaged gzip stream or one that expands beyond the limit.
    """
    stream, compressed = open_data(path)
    with stream:
        return read_stream(stream, limit, os.fspath(path), what)


# -------------------------------------------------------------------- IDX

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


def load_idx(path: PathLike, labels: Optional[PathLike] = None) -> XY:
    """IDX images (any shape (n, ...), flattened to rows) and their labels."""
    images, y = _load_idx(path, labels)
    return images.reshape(len(images), -1), y


def _load_idx(path, labels=None):
    """IDX images as their file shapes them (n, ...), and their labels."""
    images = read_idx(path)
    if images.ndim < 2:
        raise DataError(f"{path} holds a 1-D IDX array; give the images file, not the labels")
    if len(images) == 0:
        raise DataError(f"{path} holds no images (its header says shape {images.shape})")
    labels = Path(labels) if labels else _idx_labels_beside(path)
    y = None if labels is None else read_idx(labels)
    return images, y


# -------------------------------------------------------------------- CSV

def load_csv(path: PathLike, label_col: Union[str, int, None] = None,
             n_features: Optional[int] = None,
             info: Optional[dict[str, Any]] = None, delimiter: Optional[str] = None,
             decimal: Optional[str] = None, missing: Optional[Any] = None,
             drop: Optional[Any] = None, label_optional: bool = False
             ) -> tuple[Any, Optional[Array]]:
    """Rows of a CSV file (see fastnn.csvfile.read_csv): X is an array of
    numbers, or a fastnn.table.Table when a feature column holds text or
    missing values."""
    from fastnn.csvfile import read_csv

    return read_csv(path, label_col, n_features, info, delimiter, decimal, missing, drop,
                    label_optional)


# -------------------------------------------------------------- npz / npy

def _np_load(path, **kwargs):
    check_regular(path)
    try:
        return np.load(path, allow_pickle=False, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except Exception as exc:  # ValueError, OSError, zipfile errors...: they vary by NumPy version
        raise DataError(f"{path} is not a readable NumPy file ({exc})") from None


def _npz_member_size(archive, key, limit, path):
    """Check the .npy header of archive member `key` before it is read: the
    bytes its shape needs must be what the zip entry holds and at most `limit`."""
    import zipfile

    fmt = np.lib.format
    try:
        info = archive.zip.getinfo(key + ".npy")
        with archive.zip.open(info) as member:
            version = fmt.read_magic(member)
            read_header = (fmt.read_array_header_1_0 if version == (1, 0)
                           else fmt.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            header = member.tell() if hasattr(member, "tell") else None
    except Exception as exc:  # zipfile, format and decompression errors vary
        raise DataError(f"{path} has a damaged array {key!r} ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: array {key!r} holds Python objects; fastnn reads only numbers")
    needed = math.prod(shape) * dtype.itemsize
    stored = info.compress_type == zipfile.ZIP_STORED
    bound = min(limit, info.compress_size) if stored else MAX_DECOMPRESSED
    if needed > bound or (header is not None and header + needed != info.file_size):
        raise DataError(f"{path}: array {key!r} declares shape {shape} ({needed:,} bytes), "
                        f"which its archive entry does not hold")


def load_npz(path: PathLike, labels: Optional[PathLike] = None) -> XY:
    """X and y from a .npz archive (each array's header is checked against
    its archive entry before the array is read)."""
    limit = os.path.getsize(path) if os.path.exists(path) else 0
    with _np_load(path) as archive:
        keys = list(archive.files)
        if "X" not in keys:
            raise DataError(f"{path} has no array 'X'; it has {keys}")
        for key in ("X", "y") if "y" in keys else ("X",):
            _npz_member_size(archive, key, limit, path)
        try:
            X = archive["X"]
            y = archive["y"] if "y" in keys else None
        except Exception as exc:
            raise DataError(f"{path} has a damaged array ({exc})") from None
    if labels:
        y = load_array(labels)
    return X, y


def load_array(path: PathLike) -> Array:
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


def load_npy(path: PathLike, labels: Optional[PathLike] = None) -> XY:
    """X from a .npy file (memory-mapped) and y from `labels` or a file beside
    it (X_train.npy -> y_train.npy, images.npy -> labels.npy)."""
    X = load_array(path)
    labels = Path(labels) if labels else _npy_labels_beside(path)
    return X, None if labels is None else load_array(labels)


# ------------------------------------------------------- Nielsen's pickle
#
# A pickle is a program; this one is run by an unpickler that knows only the
# opcodes that push plain values (numbers, strings, bytes, tuples, lists) and
# the three callables NumPy's own pickles use, each replaced by a function
# that builds an array from the data in the pickle and checks that the data
# is exactly as long as the shape needs. Nothing can allocate memory the
# pickle does not hold, construct another object, or run code.

#: The most opcodes a pickle may run (Nielsen's file needs about a hundred).
MAX_PICKLE_OPS = 100_000
# The dtypes an array in a pickle may have.
_PICKLE_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
# Opcodes that only push values or build tuples and lists, plus REDUCE and
# BUILD (which reach only the functions below) and the framing.
_PICKLE_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "BYTEARRAY8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND",
    "APPENDS",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
}


def _pickle_dtype(name, align=False, copy=True):
    """numpy.dtype as a pickle may call it: a plain numeric type code only."""
    if not isinstance(name, str) or name not in _PICKLE_DTYPES:
        raise pickle.UnpicklingError(f"refusing dtype {name!r}: only numeric arrays are allowed")
    return _PendingDtype(name)


class _PendingDtype:
    """A dtype being unpickled: its type code, then its byte order (BUILD)."""

    def __init__(self, name):
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        if (not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "=")
                or any(v is not None for v in state[2:5])):
            raise pickle.UnpicklingError("refusing a dtype state other than a byte order")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _NdarrayClass:
    """What the name numpy.ndarray stands for in a pickle: a marker that only
    _reconstruct accepts (calling it would allocate uninitialised memory)."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray: arrays are rebuilt "
                                     "only from the data in the pickle")


_NDARRAY = _NdarrayClass()


def _from_data(data, dtype, shape, fortran=False):
    """An array built from the pickle's own bytes, which must be exactly as
    many as the shape needs."""
    if isinstance(data, str):
        try:
            data = data.encode("latin-1")   # a Python 2 str, read with encoding="latin1"
        except UnicodeEncodeError:
            raise pickle.UnpicklingError("array data is not bytes") from None
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("array data is not bytes")
    if not isinstance(dtype, _PendingDtype):
        raise pickle.UnpicklingError("array dtype is not a numpy dtype")
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"bad array shape {shape!r}")
    dtype = dtype.dtype
    if math.prod(shape) * dtype.itemsize != len(data):
        raise pickle.UnpicklingError(f"an array of shape {shape} needs "
                                     f"{math.prod(shape) * dtype.itemsize} bytes, the pickle "
                                     f"holds {len(data)}")
    array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


class _PendingArray:
    """What numpy's _reconstruct(ndarray, (0,), b'b') gives: an array that its
    BUILD state (version, shape, dtype, fortran, data) then makes."""

    array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5 or self.array is not None:
            raise pickle.UnpicklingError("refusing an array state not written by NumPy")
        _, shape, dtype, fortran, data = state
        self.array = _from_data(data, dtype, shape, bool(fortran))


def _pickle_reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError("refusing _reconstruct of anything but an empty ndarray")
    return _PendingArray()


def _pickle_frombuffer(data, dtype, shape, order):
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"bad array order {order!r}")
    return _from_data(data, dtype, shape, order == "F")


def _pickle_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than of a str to latin1")
    return text.encode("latin-1")


class _ArraysOnly(pickle._Unpickler):
    """An unpickler that builds NumPy arrays from their data, tuples, lists and
    plain values, and nothing else (see above)."""

    FUNCTIONS = {
        ("_codecs", "encode"): _pickle_encode,
        ("numpy", "dtype"): _pickle_dtype,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy.core.multiarray", "_reconstruct"): _pickle_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _pickle_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _pickle_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _pickle_frombuffer,
    }

    def __init__(self, file):
        super().__init__(file, encoding="latin1")
        self.ops = 0
        dispatch = {}
        for code, handler in pickle._Unpickler.dispatch.items():
            op = _OPCODE_NAMES.get(code)
            if op in _PICKLE_OPCODES:
                dispatch[code] = self._counted(handler)
        self.dispatch = dispatch

    def _counted(self, handler):
        def run(unpickler):
            self.ops += 1
            if self.ops > MAX_PICKLE_OPS:
                raise pickle.UnpicklingError(f"more than {MAX_PICKLE_OPS:,} pickle operations")
            handler(unpickler)
        return run

    def find_class(self, module, name):
        try:
            return self.FUNCTIONS[module, name]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy "
                                         f"arrays and tuples are allowed") from None


def _finish(value, depth=0):
    """The unpickled value with every pending array replaced by the array."""
    if isinstance(value, _PendingArray):
        if value.array is None:
            raise pickle.UnpicklingError("an array without data")
        return value.array
    if isinstance(value, (tuple, list)) and depth < 8:
        return tuple(_finish(v, depth + 1) for v in value)
    if isinstance(value, (_PendingDtype, _NdarrayClass)):
        raise pickle.UnpicklingError("a dtype outside an array")
    return value


def load_nielsen_pickle(path: PathLike, split: str = "train") -> tuple[Array, Array]:
    """Nielsen's mnist.pkl.gz: ((train), (validation), (test)) pairs of
    float32 images in [0, 1] and int labels; returns the chosen split.

    The pickle is read by an unpickler that only rebuilds arrays from the
    data they hold (see `_ArraysOnly`), from at most MAX_DECOMPRESSED bytes.
    """
    name = os.fspath(path)
    stream, _ = open_data(path)
    with stream:
        source = Budget(stream, MAX_DECOMPRESSED, name, "pickle")
        try:
            content = _finish(_ArraysOnly(source).load())
        except DataError:
            raise
        except pickle.UnpicklingError as exc:
            raise DataError(f"{path}: {exc}") from None
        except KeyError as exc:
            raise DataError(f"{path}: refusing pickle opcode {exc}: only NumPy arrays and "
                            f"tuples are allowed") from None
        except Exception as exc:  # truncated or corrupt pickles raise many types
            raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: "
                            f"{exc})") from None
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


def detect_format(path: Path) -> Optional[str]:
    """The format of a data file, from its name, then its first bytes."""
    name = path.name.lower()
    for suffix, kind in ((".csv", "csv"), (".csv.gz", "csv"), (".tsv", "csv"), (".tsv.gz", "csv"),
                         (".txt", "csv"), (".txt.gz", "csv"), (".npz", "npz"), (".npy", "npy"),
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


def load_data(spec: PathLike, split: str = "train", labels: Optional[PathLike] = None,
              label_col: Union[str, int, None] = None, n_features: Optional[int] = None,
              delimiter: Optional[str] = None, decimal: Optional[str] = None,
              missing: Optional[Any] = None, drop: Optional[Any] = None,
              label_optional: bool = False) -> Data:
    """Features and labels from a dataset name or a data file.

    Parameters
    ----------
    spec : str or Path
        A dataset name (``mnist``), or a file: IDX images (.gz or raw; labels
        found beside or given by `labels`), CSV (.csv, .tsv or .txt, maybe
        gzip-compressed; `label_col`, default the last column), .npz with
        arrays X and y, .npy (labels beside or given by `labels`), or
        Nielsen's mnist.pkl.gz.
    split : {"train", "test"}
        Which split of a named dataset or of Nielsen's pickle.
    labels : str or Path, optional
        The labels file of IDX or .npy images.
    label_col : str or int, optional
        The label column of a CSV file, by name or 1-based number.
    n_features : int, optional
        The features a model takes, to tell a label-less CSV.
    delimiter, decimal : str, optional
        A CSV file's field delimiter (``,`` ``;`` tab ``|``) and decimal mark
        (``.`` or ``,``); detected when not given (see fastnn.csvfile).
    missing : str or list of str, optional
        The cells of a CSV file that are missing values (fastnn.table.MISSING
        by default).
    drop : list of names or 1-based numbers, optional
        CSV feature columns not to read.
    label_optional : bool, default False
        A CSV `label_col` that the header does not name means no labels
        (rows to predict), rather than an error.

    Returns
    -------
    Data
        X is 2-D (images are flattened to rows), or a fastnn.table.Table
        for a CSV file whose features hold text or missing values; y is
        None when there are no labels.
    """
    from fastnn.datasets import DATASETS, IMAGE_SHAPES

    X: Array
    y: Optional[Array]
    spec = os.fspath(spec)
    if spec in DATASETS and not os.path.exists(spec):
        (X_train, y_train), (X_test, y_test) = DATASETS[spec]()
        X, y = (X_train, y_train) if split == "train" else (X_test, y_test)
        # the named data sets are IDX files
        return Data(X, y, f"{spec} ({split})", auto_scale=auto_scale(X.dtype, "idx"),
                    shape=IMAGE_SHAPES.get(spec))
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file, and not a known dataset ({', '.join(DATASETS)})")
    if path.is_dir():
        raise DataError(f"{spec} is a directory; give a data file or a dataset name")
    check_regular(path)
    kind = detect_format(path)
    if kind is None:
        raise DataError(f"{spec}: unknown data format; expected a dataset name "
                        f"({', '.join(DATASETS)}), IDX, CSV, .npz, .npy or Nielsen's mnist.pkl.gz")
    info: dict[str, Any] = {}
    try:
        if kind == "csv":
            X, y = load_csv(path, label_col, n_features, info, delimiter, decimal, missing,
                            drop, label_optional)
        elif kind == "npz":
            X, y = load_npz(path, labels)
        elif kind == "npy":
            X, y = load_npy(path, labels)
        elif kind == "pickle":
            X, y = load_nielsen_pickle(path, "test" if split == "test" else "train")
        else:
            X, y = _load_idx(path, labels)
        shape = tuple(X.shape[1:]) if kind == "idx" and 3 <= X.ndim <= 4 else None
        unlabelled = info.get("label_missing")
        if unlabelled is not None and y is not None:
            y = _missing_labels(y, unlabelled)
        X, y = _check_data(X, y, spec)
        return Data(X, y, spec, auto_scale=auto_scale(getattr(X, "dtype", None), kind),
                    label_name=info.get("label_name"), shape=shape,
                    dialect=info.get("dialect"), names=info.get("names"),
                    unlabelled=unlabelled, lines=info.get("lines"))
    except MemoryError:
        raise DataError(f"{spec}: not enough memory to read it") from None


def source_files(spec: PathLike, labels: Optional[PathLike] = None) -> list[Path]:
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


def _missing_labels(y: Array, unlabelled: Array) -> Array:
    """Labels with the missing ones set apart: NaN among numbers, the text
    of the others among class names (the rows are dropped before use)."""
    if y.dtype.kind == "U":
        present = y[~unlabelled]
        y = y.copy()
        y[unlabelled] = present[0] if len(present) else ""
    return y


def _check_data(X: Any, y: Optional[Array], spec: str) -> tuple[Any, Optional[Array]]:
    """X as 2-D numeric rows (images flattened) and y as matching labels or targets."""
    from fastnn.table import Table

    if isinstance(X, Table):
        if len(X) == 0:
            raise DataError(f"{spec} has no samples")
        if y is not None and y.ndim == 1 and y.dtype.kind != "U":
            y = as_int_labels(y)
        return X, y
    if X.dtype.kind not in "biuf":
        raise DataError(f"{spec}: features must be numbers, not {X.dtype}")
    if X.ndim == 1 or X.ndim == 0:
        raise DataError(f"{spec}: features must have one row per sample, got shape {X.shape}")
    if len(X) == 0:
        raise DataError(f"{spec} has no samples")
    if X.ndim > 2:
        X = X.reshape(len(X), -1)
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind not in "biuf" and not (y.dtype.kind == "U" and y.ndim == 1):
            raise DataError(f"{spec}: labels must be numbers or class names, not {y.dtype}")
        if y.ndim == 0 or y.ndim > 2:
            raise DataError(f"{spec}: labels must be one per sample (or one row of targets "
                            f"per sample), got shape {y.shape}")
        if len(y) != len(X):
            raise DataError(f"{spec} has {len(X)} samples but {len(y)} labels")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim == 1 and y.dtype.kind != "U":
            y = as_int_labels(y)
    return X, y


def as_int_labels(y: Array) -> Optional[Array]:
    """1-D y as int64 when its values are whole numbers that int64 holds
    exactly, else y unchanged (the label checks then report what is wrong)."""
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind not in "iuf" or not len(y):
        return y
    with np.errstate(invalid="ignore"):
        low, high = y.min(), y.max()
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            return y
    if -2 ** 53 <= low and high <= 2 ** 53:
        return y.astype(np.int64)
    return y
