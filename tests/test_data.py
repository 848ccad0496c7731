"""The IDX reader: round trips, compression, and damaged files."""
import gzip

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from conftest import damage, examples, hypothesis_api

from fastnn.idx import parse_idx, read_idx
from fastnn.exceptions import DataError

given, settings, st, _ = hypothesis_api()

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


@settings(max_examples=examples(50), deadline=None)
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


def test_an_empty_idx_array_with_enormous_dimensions_is_refused():
    # found by the fuzz test below: NumPy cannot reshape to it (0 x 4e9 x 4e9)
    head = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (0, 2**32 - 1, 2**32 - 1))
    with pytest.raises(DataError, match="impossible shape"):
        parse_idx(head)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.data())
def test_damaged_idx_bytes_give_only_data_errors(data):
    # headers that get past the magic number: known and unknown type codes,
    # any rank, small and enormous dimensions, payloads of any length
    kind = data.draw(st.sampled_from([*CODES.values(), 0x00, 0x0A, 0xFF]))
    dims = data.draw(st.lists(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),
                              max_size=5))
    head = bytes([0, 0, kind, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    blob = damage(data, head + data.draw(st.binary(max_size=64)), max_random=64)
    try:
        array = parse_idx(blob)
    except DataError:
        return
    assert array.ndim == blob[3] and array.dtype.isnative
    assert array.shape == tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big")
                                for i in range(array.ndim))


# Every format through load_data.

def _valid_files(tmp_path):
    """name -> bytes of a small valid file of each format."""
    import io
    import pickle

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (6, 4)).astype(np.uint8)
    y = rng.integers(0, 3, 6)
    out = {}
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y)
    out["data.npz"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, X)
    out["X.npy"] = buf.getvalue()
    out["data.csv"] = b"a,b,c,d,label\n" + b"".join(
        (",".join(map(str, row)) + f",{label}\n").encode() for row, label in zip(X, y))
    split = ((X / 255).astype(np.float32), y)
    out["mnist.pkl.gz"] = gzip.compress(pickle.dumps((split, split, split), protocol=2))
    out["x-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(X.reshape(6, 2, 2)))
    out["x-images-idx3-ubyte"] = idx_bytes(X.reshape(6, 2, 2))
    return out


def test_formats_load_as_expected(tmp_path):
    from fastnn.data import load_data

    files = _valid_files(tmp_path)
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    (tmp_path / "x-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(6, dtype=np.uint8) % 3)))
    npy = load_data(tmp_path / "X.npy")
    assert isinstance(npy.X, np.memmap) and npy.X.dtype == np.uint8     # memory-mapped, uint8
    assert npy.y.tolist() == [0, 1, 2, 0, 1, 2]
    idx = load_data(tmp_path / "x-images-idx3-ubyte.gz")
    assert idx.X.shape == (6, 4) and idx.X.dtype == np.uint8 and idx.y.tolist() == npy.y.tolist()
    # raw images find their labels beside them, compressed or not
    assert load_data(tmp_path / "x-images-idx3-ubyte").y.tolist() == npy.y.tolist()
    (tmp_path / "x-labels-idx1-ubyte.gz").unlink()
    assert load_data(tmp_path / "x-images-idx3-ubyte").y is None
    csv_data = load_data(tmp_path / "data.csv")
    assert csv_data.X.dtype == np.uint8 and csv_data.y.dtype == np.int64   # pixels stay pixels
    np.testing.assert_array_equal(csv_data.X, load_data(tmp_path / "data.npz").X)
    assert load_data(tmp_path / "mnist.pkl.gz").X.dtype == np.float32
    (tmp_path / "f.csv").write_text("0.5,1.5,0\n2.5,3.5,1\n")
    assert load_data(tmp_path / "f.csv").X.dtype == np.float64
    assert load_data("mnist", split="test").X.shape == (10000, 784)


@pytest.mark.parametrize("text", [b"1,2\r3,4\n5,6,7\n", b"a,b,c\n1,2\r3,4\n5,6,7\n"])
def test_a_carriage_return_inside_a_csv_row_is_a_data_error(tmp_path, text):
    # found by the fuzz test: the csv module raised its own csv.Error
    from fastnn.data import load_data

    (tmp_path / "cr.csv").write_bytes(text)
    with pytest.raises(DataError, match="cr.csv is not a valid CSV file"):
        load_data(tmp_path / "cr.csv")


@settings(max_examples=examples(300), deadline=None)
@given(data=st.data())
def test_every_loader_survives_damaged_files(tmp_path_factory, data):
    from fastnn.data import load_data

    tmp_path = tmp_path_factory.mktemp("fuzz")
    files = _valid_files(tmp_path)
    name = data.draw(st.sampled_from(sorted(files)))
    blob = damage(data, files[name], max_random=200, max_flips=6)
    (tmp_path / name).write_bytes(blob)
    try:
        loaded = load_data(tmp_path / name)
    except DataError:
        return
    assert loaded.X.ndim == 2 and len(loaded.X) > 0
