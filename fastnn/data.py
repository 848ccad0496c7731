"""Reading data files: the IDX format of MNIST (gzip-compressed or raw)."""
import gzip
import os
import zlib

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


def read_file(path, error=DataError, what="data file"):
    """The bytes of a file; `error` with a one-line message if it cannot be read."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a {what}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None


def read_bytes(path):
    """The contents of a file, decompressed if it is gzip-compressed.

    Raises DataError for a missing or unreadable file or a damaged gzip stream.
    """
    return gunzip(read_file(path), os.fspath(path))


def gunzip(data, name):
    """data decompressed if it starts with the gzip magic, else as it is."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name} is a damaged gzip file ({exc})") from None


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
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "longer than its header says"
        raise DataError(f"{name} is {what}: shape {shape} needs {expected} bytes of data, "
                        f"it has {len(data) - header}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # a writable copy in native byte order, not a read-only view of the bytes
    return array.astype(dtype.newbyteorder("="))


def read_idx(path):
    """Read an IDX file (gzip-compressed or raw) into a NumPy array."""
    return parse_idx(read_bytes(path), os.fspath(path))
