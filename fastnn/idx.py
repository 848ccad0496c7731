"""The IDX format of MNIST's files: magic 0 0 type ndim, then ndim
big-endian uint32 dimensions, then the values, big-endian.

Parsed from bytes (``parse_idx``) or read from a file, raw or gzipped,
never beyond the size its header declares (``read_idx``).
"""
import math
import os

import numpy as np

from fastnn._typing import Array, PathLike
from fastnn.exceptions import DataError
from fastnn.reading import CHUNK, MAX_DECOMPRESSED, file_size, open_data, read_into

# IDX type codes (the third magic byte) and the big-endian dtypes they mean.
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _idx_header(data, name):
    """(dtype, shape, header length) from the first bytes of an IDX file (magic
    0 0 type ndim, then ndim big-endian uint32 dimensions)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number)")
    kind, ndim = data[2], data[3]
    if kind not in IDX_TYPES:
        raise DataError(f"{name} is not an IDX file (unknown type code 0x{kind:02x})")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{name} is truncated (incomplete IDX header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return IDX_TYPES[kind], shape, header


def _idx_array(buffer, dtype, shape, name):
    """The IDX values in `buffer` (a writable uint8 array) as an array of
    `shape` in native byte order."""
    try:
        array = buffer.view(dtype).reshape(shape)
    except ValueError:
        # an empty array whose other dimensions NumPy cannot address
        raise DataError(f"{name} has an impossible shape {shape}") from None
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _idx_size_problem(name, shape, expected, actual):
    what = "truncated" if actual < expected else "longer than its header says"
    return DataError(f"{name} is {what}: shape {shape} needs {expected} bytes of data, "
                     f"it has {actual}")


def parse_idx(data: bytes, name: str = "IDX data") -> Array:
    """An array from the bytes of an IDX file (magic 0 0 type ndim, then
    ndim big-endian uint32 dimensions, then the values, big-endian)."""
    dtype, shape, header = _idx_header(data, name)
    # exact integers: a damaged header's dimensions can overflow int64
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise _idx_size_problem(name, shape, expected, len(data) - header)
    return _idx_array(np.frombuffer(data, np.uint8, offset=header).copy(), dtype, shape, name)


def read_idx(path: PathLike) -> Array:
    """Read an IDX file (gzip-compressed or raw) into a NumPy array.

    Never reads more than the header declares: a raw file must be exactly
    as long as its shape needs, and a compressed one is decompressed piece
    by piece, refused as soon as it gives more than that size (which may be
    at most MAX_DECOMPRESSED bytes).
    """
    name = os.fspath(path)
    stream, compressed = open_data(path)
    with stream:
        head = stream.read(4)
        if len(head) == 4:
            head += stream.read(4 * head[3])
        dtype, shape, header = _idx_header(head, name)
        expected = math.prod(shape) * dtype.itemsize
        if compressed and expected > MAX_DECOMPRESSED:
            raise DataError(f"{name}: its header declares shape {shape}, {expected:,} bytes; "
                            f"fastnn decompresses at most {MAX_DECOMPRESSED:,} (decompress "
                            f"the file yourself to read more)")
        if not compressed and file_size(stream) - header != expected:
            raise _idx_size_problem(name, shape, expected, file_size(stream) - header)
        if compressed:
            # grown as the data comes: a header alone reserves nothing
            data = bytearray()
            while len(data) <= expected:
                chunk = stream.read(min(CHUNK, expected + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
            if len(data) > expected:
                raise DataError(f"{name} is longer than its header says: shape {shape} "
                                f"needs {expected} bytes of data")
            buffer = np.frombuffer(data, np.uint8)
        else:
            try:
                buffer = np.empty(expected, np.uint8)
            except (MemoryError, ValueError):
                raise DataError(f"{name}: not enough memory for shape {shape} "
                                f"({expected:,} bytes)") from None
            got = read_into(stream, buffer, name)
            buffer = buffer[:got]          # shorter only if the file shrank meanwhile
    if len(buffer) < expected:
        raise _idx_size_problem(name, shape, expected, len(buffer))
    return _idx_array(buffer, dtype, shape, name)
