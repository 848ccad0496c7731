"""The IDX reader: round trips, compression, and damaged files."""
import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from fastnn.data import parse_idx, read_idx
from fastnn.exceptions import DataError

CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
         np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array):
    dtype = array.dtype if array.dtype.itemsize == 1 else array.dtype.newbyteorder(">")
    head = bytes([0, 0, CODES[dtype], array.ndim])
    head += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(dtype).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_reads_images_and_labels(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if compress else "x")
    raw = idx_bytes(images)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert_array_equal(out, images)
    assert out.flags.writeable and out.dtype == np.uint8


@settings(max_examples=50, deadline=None)
@given(dtype=st.sampled_from(["u1", "i1", "i2", "i4", "f4", "f8"]),
       shape=st.lists(st.integers(0, 5), min_size=1, max_size=3))
def test_round_trips_every_idx_type(dtype, shape):
    array = (np.arange(int(np.prod(shape))) % 100 - 50).astype(dtype).reshape(shape)
    if dtype == "u1":
        array = np.abs(array.astype(int)).astype(np.uint8)
    out = parse_idx(idx_bytes(array))
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.dtype.isnative
    assert_array_equal(out, array)


@pytest.mark.parametrize("blob, message", [
    (b"", "bad magic"),
    (b"\x01\x00\x08\x01", "bad magic"),
    (b"\x00\x00\x07\x01", "unknown type code 0x07"),
    (b"\x00\x00\x08\x02\x00\x00", "incomplete IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "truncated: shape \\(5,\\) needs 5 bytes of data, it has 3"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01ab", "longer than its header says"),
])
def test_refuses_damaged_idx(blob, message):
    with pytest.raises(DataError, match=message):
        parse_idx(blob)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_idx(tmp_path / "missing")
    with pytest.raises(DataError, match="is a directory"):
        read_idx(tmp_path)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-10])
    with pytest.raises(DataError, match="damaged gzip"):
        read_idx(bad)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=64))
def test_random_bytes_give_only_data_errors(blob):
    try:
        parse_idx(blob)
    except DataError:
        pass
