"""Files that fastnn reads, labels it is given and names it exports, as an attacker makes them.

Each hostile case runs as a real ``python -m fastnn`` process under a memory
limit (RLIMIT_AS of 3 GiB) and a time limit, through conftest's harness: it
must be refused with exit status 1 or 2 and at most two lines on stderr, no
traceback, and leave every file in its directory as it was. The same inputs
through the Python API raise only FastnnError subclasses. Then structure-aware
fuzzing: model headers, IDX, CSV and .npy headers, drawn by hypothesis, give
only FastnnError (FASTNN_FUZZ_EXAMPLES sets the number of examples; 300 with
--runslow, 60 without).
"""
import gzip
import io
import json
import os
import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import (assert_refused, compile_c, damage, examples, hypothesis_api, needs,
                      run_fastnn, snapshot, sweep)

import fastnn
from fastnn import DataError, ModelFileError, Network
from fastnn.data import load_data
from fastnn.io import read_header, read_metadata

given, settings, st, HealthCheck = hypothesis_api()

EXAMPLES = int(os.environ.get("FASTNN_FUZZ_EXAMPLES", examples(300)))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------ model files

def trained_model(directory, sizes=(784, 30, 10), **fit):
    """A small network trained for one epoch (so it has optimizer state), as bytes."""
    rng = np.random.default_rng(0)
    net = Network(list(sizes), seed=1)
    X = rng.integers(0, 256, (40, sizes[0])).astype(np.uint8)
    net.fit(X, rng.integers(0, sizes[-1], 40), epochs=1, batch_size=10, lr=0.1, **fit)
    net.save(directory / "good.safetensors")
    return (directory / "good.safetensors").read_bytes()


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    return trained_model(tmp_path_factory.mktemp("model"))


def split(blob):
    """(header dict, the tensors' bytes) of a model file."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header, tensors, raw=None):
    """A model file from a header (or its raw JSON text) and tensor bytes."""
    text = (raw if raw is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + tensors


def edit(blob, field, change):
    """blob with the JSON metadata string `field` parsed, changed and written back."""
    header, tensors = split(blob)
    value = json.loads(header["__metadata__"][field])
    value = change(value) or value
    header["__metadata__"][field] = json.dumps(value)
    return join(header, tensors)


def set_meta(blob, field, text):
    """blob with the metadata string `field` replaced by raw text."""
    header, tensors = split(blob)
    header["__metadata__"][field] = text
    return join(header, tensors)


def retable(blob, sizes):
    """A header whose network and tensor table both claim `sizes`, the tensor
    bytes left as they were (far fewer than the table needs)."""
    header, tensors = split(blob)
    network = json.loads(header["__metadata__"]["network"])
    network["sizes"] = list(sizes)
    header["__metadata__"]["network"] = json.dumps(network)
    table, offset = {}, 0
    shapes = [((i, o), (o,)) for i, o in zip(sizes, sizes[1:])]
    n_params = sum(i * o + o for i, o in zip(sizes, sizes[1:]))
    for l, (w, b) in enumerate(shapes):
        for name, shape in ((f"weights.{l}", w), (f"biases.{l}", b)):
            size = 4 * int(np.prod(shape))
            table[name] = {"dtype": "F32", "shape": list(shape),
                           "data_offsets": [offset, offset + size]}
            offset += size
    table["optimizer.state"] = {"dtype": "F32", "shape": [1, n_params],
                                "data_offsets": [offset, offset + 4 * n_params]}
    return join({"__metadata__": header["__metadata__"], **table}, tensors)


def deep_header(blob, depth=200_000):
    header, tensors = split(blob)
    raw = json.dumps(header)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    return join(None, tensors, raw=raw)


def duplicate_key(blob):
    header, tensors = split(blob)
    raw = json.dumps(header)
    meta = json.dumps(header["__metadata__"])
    twice = meta[:-1] + ', "network": ' + json.dumps(header["__metadata__"]["network"]) + "}"
    return join(None, tensors, raw=raw.replace(meta, twice))


def shift_offsets(blob):
    header, tensors = split(blob)
    header["weights.0"]["data_offsets"][1] += 4
    return join(header, tensors)


def tensor_dtype(blob):
    header, tensors = split(blob)
    header["biases.0"]["dtype"] = "F16"
    return join(header, tensors)


def nan_weights(blob):
    header, tensors = split(blob)
    start = header["biases.1"]["data_offsets"][0]
    data = bytearray(tensors)
    data[start:start + 4] = np.float32(np.nan).tobytes()
    return join(header, bytes(data))


def replace_text(blob, field, old, new):
    header, tensors = split(blob)
    assert old in header["__metadata__"][field], (field, old)
    header["__metadata__"][field] = header["__metadata__"][field].replace(old, new, 1)
    return join(header, tensors)


def with_training(blob, **fields):
    return edit(blob, "training", lambda t: t.update(fields))


# name -> (how the hostile file is made from a good one, what the refusal says);
# all but the NaN case are refused from the header alone
MODEL_CASES = {
    "sizes [20000, 20000, 10]": (
        lambda b: edit(b, "network", lambda n: n.update(sizes=[20000, 20000, 10])),
        r"inconsistent shapes: weights.0 is \(784, 30\), but sizes \[20000, 20000, 10\] need"),
    "sizes [300000, 300000, 10] and a table to match": (
        lambda b: retable(b, (300000, 300000, 10)), r"is truncated: its tensors need \d+ bytes"),
    "header nested 200,000 deep": (deep_header, "nests deeper than 32 levels"),
    "network JSON nested 200,000 deep": (
        lambda b: set_meta(b, "network", "[" * 200_000 + "]" * 200_000), "network nests deeper"),
    "Infinity seed": (lambda b: edit(b, "network", lambda n: n.update(seed=float("inf"))),
                      r"network.seed must be an integer .*not Infinity"),
    "1e400 in sizes": (lambda b: replace_text(b, "network", "[784, 30, 10]", "[784, 1e400, 10]"),
                       r"network.sizes\[1\] must be an integer .*not Infinity"),
    "Infinity epochs_trained": (
        lambda b: edit(b, "network", lambda n: n.update(epochs_trained=float("inf"))),
        "network.epochs_trained must be an integer"),
    "1e400 optimizer steps": (lambda b: set_meta(b, "optimizer", '{"name": "sgd", "steps": 1e400}'),
                              "optimizer.steps must be an integer"),
    "huge optimizer steps": (lambda b: set_meta(b, "optimizer",
                                                '{"name": "sgd", "steps": %d}' % 2 ** 70),
                             r"optimizer.steps must be an integer in 0..2\*\*62"),
    "training.cli a list": (lambda b: with_training(b, cli=["data.csv"]),
                            "training.cli must be a JSON object"),
    "bad lr_schedule_state": (lambda b: with_training(b, lr_schedule_state={"lr": "fast"}),
                              "training.lr_schedule_state.base_lr must be present"),
    "format_version -1": (lambda b: set_meta(b, "format_version", "-1"),
                          "unreadable format_version '-1'"),
    "sizes with 30.5": (lambda b: replace_text(b, "network", "[784, 30, 10]", "[784, 30.5, 10]"),
                        r"network.sizes\[1\] must be an integer in 1..2147483647, not 30.5"),
    "a key given twice": (duplicate_key, "the key 'network' appears twice"),
    "offsets with a gap": (shift_offsets, "damaged tensor table"),
    "a tensor of another dtype": (tensor_dtype, "tensor 'biases.0' has dtype 'F16'"),
    "NaN in the weights": (nan_weights, "biases.1 contains NaN or infinity"),
    "header length 2**63": (lambda b: (2 ** 63).to_bytes(8, "little") + b[8:],
                            r"not a fastnn model \(not a safetensors file\)"),
    "bytes after the tensors": (lambda b: b + b"\0" * 64, "64 bytes after its tensors"),
    "cut in the tensors": (lambda b: b[:-100], "is truncated"),
    "a control character in fastnn_version": (
        lambda b: set_meta(b, "fastnn_version", "0.1\x1b[2J"), "fastnn_version must be a version"),
}


def conv_model(directory):
    """A small convolutional net (model-file format 2) trained for one epoch, as bytes."""
    from fastnn.layers import Conv2D, Dropout, MaxPool2D

    rng = np.random.default_rng(0)
    net = Network([(8, 8, 1), Conv2D(3, 3, padding="same"), MaxPool2D(2), Dropout(0.1), 5, 3],
                  activation="relu", output="softmax", loss="cross_entropy", seed=1)
    net.fit(rng.integers(0, 256, (30, 64)).astype(np.uint8), rng.integers(0, 3, 30), epochs=1,
            batch_size=10, lr=0.1, optimizer="momentum")
    net.save(directory / "conv.safetensors")
    return (directory / "conv.safetensors").read_bytes()


@pytest.fixture(scope="module")
def conv_bytes(tmp_path_factory):
    return conv_model(tmp_path_factory.mktemp("conv"))


def edit_layer(i, **changes):
    """A change to a format-2 file: layer i's config updated with `changes`."""
    return lambda b: edit(b, "network", lambda n: n["layers"][i].update(changes))


# the same for format 2 (convolutional nets): all refused from the header alone
CONV_CASES = {
    "an unknown layer type": (
        lambda b: set_meta(edit_layer(1, type="attention")(b), "fastnn_version", "9.1"),
        r"layer 1 has type \"attention\", which fastnn .* does not know .* written by fastnn "
        r"9.1: load it with that version or a newer one"),
    "a layer type that is a number": (edit_layer(0, type=7),
                                      r"network.layers\[0\].type must be a string"),
    "10**6 filters": (edit_layer(0, filters=10 ** 6),
                      r"inconsistent shapes: layers.0.weights is \(3, 3, 1, 3\), but input "
                      r"shape \[8, 8, 1\] and conv2d, maxpool2d, .* need \(3, 3, 1, 1000000\)"),
    "a kernel of 2**40": (edit_layer(0, kernel=[2 ** 40, 3]),
                          r"network.layers\[0\].kernel must be at most 1048576"),
    "an image of 16384 x 16384 x 4": (
        lambda b: edit(b, "network", lambda n: n.update(input_shape=[16384, 16384, 4])),
        r"network describes layers of [\d,]+ values per sample \(at most 268,435,456\)"),
    "padding 'full'": (edit_layer(0, padding="full"),
                       r"network.layers\[0\]: Conv2D: padding must be one of"),
    "a field no layer has": (edit_layer(1, dilation=2),
                             r"network.layers\[1\]: MaxPool2D takes \['size', 'stride'\]"),
    "a Flatten left out": (lambda b: edit(b, "network", lambda n: n["layers"].pop(3) and None),
                           "network.layers must be a list with every Flatten layer given"),
    "a hidden softmax": (lambda b: edit(b, "network", lambda n: n.update(
        activations=["softmax", "relu", "softmax"])), "can only be the output activation"),
    "one activation too few": (lambda b: edit(b, "network", lambda n: n["activations"].pop() and None),
                               "network.activations must be a list of 3 names"),
    "a pool too big for its input": (
        edit_layer(1, size=[9, 9]),
        r"no valid network: MaxPool2D\(9, stride=2\) needs an input of at least 9x9"),
    "format 2 claimed to be format 1": (lambda b: set_meta(b, "format_version", "1"),
                                        "network.sizes must be present"),
}


@pytest.mark.parametrize("case", sweep(CONV_CASES, fast=[
    "an unknown layer type", "a kernel of 2**40", "an image of 16384 x 16384 x 4",
    "a pool too big for its input"]))
def test_hostile_conv_model_files_are_refused_by_info_and_the_api(tmp_path, conv_bytes, case,
                                                                   monkeypatch):
    make, message = CONV_CASES[case]
    path = tmp_path / "m.safetensors"
    path.write_bytes(make(conv_bytes))
    before = snapshot(tmp_path)
    proc = run_fastnn("info", path, cwd=tmp_path)
    assert_refused(proc, before, tmp_path, codes=(1,))
    assert re.search(message, proc.stderr), proc.stderr

    def no_network(*args, **kwargs):
        raise AssertionError("a Network was built from an unchecked header")

    monkeypatch.setattr(fastnn.network.Network, "__init__", no_network)
    for reader in (fastnn.load, read_metadata, read_header):
        with pytest.raises(ModelFileError, match=message):
            reader(path)


@pytest.mark.parametrize("case", sweep(MODEL_CASES, fast=[
    "sizes [300000, 300000, 10] and a table to match", "header nested 200,000 deep",
    "NaN in the weights", "cut in the tensors", "a control character in fastnn_version"]))
def test_hostile_model_files_are_refused_by_info_and_the_api(tmp_path, model_bytes, case):
    make, message = MODEL_CASES[case]
    path = tmp_path / "m.safetensors"
    path.write_bytes(make(model_bytes))
    before = snapshot(tmp_path)
    proc = run_fastnn("info", path, cwd=tmp_path)
    assert_refused(proc, before, tmp_path, codes=(1,))
    assert re.search(message, proc.stderr), proc.stderr
    for reader in (fastnn.load, read_metadata, read_header):
        if case == "NaN in the weights" and reader is not fastnn.load:
            assert read_header(path).fields["network"]["sizes"] == [784, 30, 10]
            continue
        with pytest.raises(ModelFileError, match=message):
            reader(path)


@pytest.mark.parametrize("command", [
    ["eval", "{model}", "d.csv"], ["predict", "{model}", "d.csv", "-o", "p.csv"],
    ["export", "{model}", "-o", "m.c"], ["train", "--resume", "{model}", "--epochs", "1"],
    ["show", "{model}", "d.csv", "--misclassified", "g.png"]])
def test_every_command_refuses_an_oversized_header_at_once(tmp_path, model_bytes, command):
    # the 192 KB file that costs 4.6 GB and 15 s when the network is built first
    model = tmp_path / "m.safetensors"
    make = MODEL_CASES["sizes [300000, 300000, 10] and a table to match"][0]
    model.write_bytes(make(model_bytes))
    (tmp_path / "d.csv").write_text("".join(f"{i % 7}," * 784 + f"{i % 10}\n" for i in range(5)))
    before = snapshot(tmp_path)
    proc = run_fastnn(*[a.format(model=model) for a in command], cwd=tmp_path, timeout=60)
    assert_refused(proc, before, tmp_path, codes=(1,))
    assert "is truncated: its tensors need" in proc.stderr


def test_a_tensor_table_that_disagrees_is_refused_before_the_network_is_built(
        tmp_path, model_bytes, monkeypatch):
    path = tmp_path / "m.safetensors"
    path.write_bytes(MODEL_CASES["sizes [20000, 20000, 10]"][0](model_bytes))

    def no_network(*args, **kwargs):
        raise AssertionError("a Network was built from an unchecked header")

    monkeypatch.setattr(fastnn.network.Network, "__init__", no_network)
    with pytest.raises(ModelFileError, match="inconsistent shapes"):
        fastnn.load(path)


def test_resume_with_a_schedule_state_that_lacks_a_field_is_one_line(tmp_path):
    # a plateau run whose saved state lost "best": KeyError before
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    y = rng.integers(0, 3, 30)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%.5f")
    net = Network([4, 5, 3], seed=0)
    net.fit(X, y, epochs=1, lr_schedule="plateau:patience=2")
    del net.training_record["lr_schedule_state"]["best"]
    net.training_record.update(cli={"data": "d.csv", "epochs": 3, "epochs_done": 1},
                        cli_options={"lr_schedule": "plateau:patience=2"})
    net.save(tmp_path / "m.safetensors")
    before = snapshot(tmp_path)
    proc = run_fastnn("train", "--resume", "m.safetensors", cwd=tmp_path)
    assert_refused(proc, before, tmp_path, codes=(1,))
    assert "saved state of lr_schedule 'plateau:patience=2" in proc.stderr
    assert "best=None" in proc.stderr


def test_info_shows_the_names_a_header_holds_escaped(tmp_path, model_bytes):
    blob = with_training(model_bytes, cli={"data": "x\n\x1b[31mred.csv", "epochs": 1})
    (tmp_path / "m.safetensors").write_bytes(blob)
    proc = run_fastnn("info", "m.safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "data: 'x\\n\\x1b[31mred.csv'" in proc.stdout


def test_model_files_that_are_not_regular_files_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.safetensors")
    os.symlink("/dev/zero", tmp_path / "zero.safetensors")
    for name in ("fifo.safetensors", "zero.safetensors"):
        before = snapshot(tmp_path)
        proc = run_fastnn("info", name, cwd=tmp_path, timeout=60)
        assert_refused(proc, before, tmp_path, codes=(1,))
        assert "is not a regular file" in proc.stderr
        with pytest.raises(ModelFileError, match="is not a regular file"):
            fastnn.load(tmp_path / name)


def test_what_fastnn_writes_passes_its_own_schema(tmp_path):
    # every option fit records, the CLI's records and an interrupted plateau
    # schedule (best = inf) read back as they were written
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 6)), rng.integers(0, 3, 50)
    net = Network([6, 5, 4, 3], activation=["tanh", "relu"], output="softmax",
                  loss="cross_entropy", init="he", seed=2 ** 100, slope=0.2)
    net.fit(X, y, epochs=2, optimizer="adam", betas=(0.8, 0.99), eps=1e-7, l2=0.1, l1=0.01,
            dropout=[0.1, 0.2], lr_schedule="plateau:patience=3", validation_split=0.2,
            early_stopping=3, class_weight={0: 2.0}, batch_size=7)
    net.training_record.update(cli={"data": "x.csv", "label_col": "label", "limit": None},
                        cli_options={"dropout": [0.1, 0.2], "betas": [0.8, 0.99]})
    net.save(tmp_path / "m.safetensors")
    loaded = fastnn.load(tmp_path / "m.safetensors")
    assert loaded.training_record == json.loads(json.dumps(net.training_record, default=float))
    assert loaded.seed == 2 ** 100 and loaded.training_record["lr_schedule_state"]["best"] < np.inf


# ------------------------------------------------------------ data files

def idx_head(*dims):
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def zeros_members(total, line=b""):
    """Gzip members that expand to `total` bytes (zeros or `line` repeated)
    while costing a few KB: one compressed MiB, repeated."""
    unit = (line * (2 ** 20 // len(line))) if line else bytes(2 ** 20)
    member = gzip.compress(unit, compresslevel=9)
    return member * (total // len(unit))


def pickle_of(value):
    return gzip.compress(pickle.dumps(value, protocol=2))


class Call:
    """Pickles as a call of f(*args): what a hostile pickle can ask for."""

    def __init__(self, f, *args):
        self.f, self.args = f, args

    def __reduce__(self):
        return self.f, self.args


def nielsen_ndarray_call():
    # the 96-byte pickle: numpy.ndarray((3000000, 784), 'u1'), 2.3 GB uninitialised
    X = Call(np.ndarray, (3_000_000, 784), "u1")
    y = Call(np.ndarray, (3_000_000,), "i8")
    return pickle_of(((X, y), (X, y), (X, y)))


def reconstruct_without_data():
    from numpy._core.multiarray import _reconstruct

    class Lying:
        def __reduce__(self):
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, (3_000_000, 784), np.dtype("u1"),
                                                             False, b"\0" * 10)
    return pickle_of(((Lying(), Lying()),) * 3)


def csv_rows(n=30, features=4, labels=None):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n) if labels is None else labels
    return "".join(",".join(f"{v:.3f}" for v in rng.normal(size=features)) + f",{lab}\n"
                   for lab in labels)


def wine_like():
    """178 rows: a class column first (1..3), 12 features, and a proline-like
    last column (whole numbers 278..1680, about a hundred distinct)."""
    rng = np.random.default_rng(1)
    classes = rng.integers(1, 4, 178)
    proline = rng.choice(np.arange(278, 1681), 100)[rng.integers(0, 100, 178)]
    proline[0] = 1680
    rows = [",".join([str(c), *(f"{v:.2f}" for v in rng.normal(size=12)), str(p)])
            for c, p in zip(classes, proline)]
    return "class," + ",".join(f"f{i}" for i in range(12)) + ",proline\n" + "\n".join(rows) + "\n"


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def make_fifo(path):
    os.mkfifo(path)


def make_link(target):
    return lambda path: os.symlink(target, path)


# name -> (file name, how to make it (bytes, or a function of its path), what the refusal says)
DATA_CASES = {
    "IDX gzip declaring 3 GB": (
        "x-images-idx3-ubyte.gz", gzip.compress(idx_head(3_000_000, 1000, 1) + bytes(100)),
        r"declares shape \(3000000, 1000, 1\), 3,000,000,000 bytes; fastnn decompresses at most"),
    "IDX gzip expanding far beyond its header": (
        "x-images-idx3-ubyte.gz",
        gzip.compress(idx_head(10, 2, 2) + bytes(40)) + zeros_members(300 * 2 ** 20),
        "longer than its header says"),
    "raw IDX shorter than its header": (
        "x-images-idx3-ubyte", idx_head(3_000_000, 28, 28) + bytes(1000), "is truncated"),
    "IDX with 0 images": ("x-images-idx3-ubyte", idx_head(0, 28, 28), "holds no images"),
    "CSV gzip bomb": ("x.csv.gz", zeros_members(300 * 2 ** 20, b"0,0,0,0,0,0,0,1\n"),
                      "expands to more than 268,435,456 bytes"),
    "CSV with a 112 MB line": (
        "x.csv.gz", zeros_members(112 * 2 ** 20, b"0,") + gzip.compress(b"1\n"),
        "line 1 is 117,440,513 bytes long; fastnn reads CSV lines of at most 1,048,576"),
    "CSV symlinked to /dev/zero": ("x.csv", make_link("/dev/zero"),
                                   r"is not a regular file \(a character device\)"),
    "CSV that is a FIFO": ("x.csv", make_fifo, r"is not a regular file \(a FIFO\)"),
    "npy symlinked to /dev/zero": ("X.npy", make_link("/dev/zero"), "is not a regular file"),
    "pickle calling numpy.ndarray(shape, dtype)": (
        "mnist.pkl.gz", nielsen_ndarray_call(), "refusing to call numpy.ndarray"),
    "pickle whose array state lacks its data": (
        "mnist.pkl.gz", reconstruct_without_data(), r"an array of shape \(3000000, 784\) needs"),
    "pickle calling os.system": (
        "mnist.pkl.gz", pickle_of(((Call(os.system, "touch PWN"),) * 2,) * 3),
        "refusing to load posix.system"),
    "pickle of 200,000 opcodes": (
        "mnist.pkl.gz", pickle_of(tuple(range(200_000))), "more than 100,000 pickle operations"),
}


def _npz_lying(path):
    # a stored .npz whose X.npy header claims (3000000, 784) over 16 bytes of data
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (3_000_000, 784)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", header.getvalue() + bytes(16))
        z.writestr("y.npy", header.getvalue() + bytes(16))


DATA_CASES["npz member larger than its entry"] = ("x.npz", _npz_lying,
                                                  r"declares shape \(3000000, 784\)")


@pytest.mark.parametrize("case", sweep(DATA_CASES, fast=[
    "IDX gzip declaring 3 GB", "CSV gzip bomb", "CSV that is a FIFO", "pickle calling os.system",
    "npz member larger than its entry"]))
def test_hostile_data_files_are_refused_by_train_and_load_data(tmp_path, case):
    name, content, message = DATA_CASES[case]
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        write(path, content)
    before = snapshot(tmp_path)
    proc = run_fastnn("train", name, "-o", "out.safetensors", "--epochs", "1", cwd=tmp_path,
                      timeout=60)
    assert_refused(proc, before, tmp_path, codes=(1,))
    assert re.search(message, proc.stderr), proc.stderr
    with pytest.raises(DataError, match=message):
        load_data(path)
    assert not (tmp_path / "PWN").exists() and not os.path.exists("PWN")


def test_a_python_2_pickle_like_nielsens_still_loads(tmp_path):
    # the allow-list rebuilds arrays from their data: Nielsen's file (Python 2,
    # protocol 2, str data, numpy.core names) must still load and train
    import struct

    class Py2Pickler(pickle._Pickler):
        dispatch = dict(pickle._Pickler.dispatch)

        def save_bytes(self, obj):          # a Python 2 str: BINSTRING
            head = (pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256
                    else pickle.BINSTRING + struct.pack("<i", len(obj)))
            self.write(head + obj)

        def save_str(self, obj):
            self.save_bytes(obj.encode("latin-1"))

        dispatch[bytes], dispatch[str] = save_bytes, save_str

    rng = np.random.default_rng(0)
    X = rng.random((40, 16), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(((X, y), (X[:5], y[:5]), (X[:8], y[:8])))
    blob = buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in blob and pickle.BINSTRING in blob
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(blob))
    train, test = load_data(tmp_path / "mnist.pkl.gz"), load_data(tmp_path / "mnist.pkl.gz",
                                                                   split="test")
    np.testing.assert_array_equal(train.X, X)
    np.testing.assert_array_equal(train.y, y)
    assert len(test) == 8
    proc = run_fastnn("train", "mnist.pkl.gz", "--epochs", "1", "-q", "-o", "m.safetensors",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_history_nested_100000_deep_is_refused_by_plot(tmp_path):
    needs("matplotlib")
    (tmp_path / "run.json").write_text('{"loss": ' + "[" * 100_000 + "]" * 100_000 + "}")
    os.mkfifo(tmp_path / "fifo.json")
    for name, message in (("run.json", "nests deeper than 6 levels"),
                          ("fifo.json", "is not a regular file")):
        before = snapshot(tmp_path)
        proc = run_fastnn("plot", name, "-o", "curves.png", cwd=tmp_path, timeout=60)
        assert_refused(proc, before, tmp_path, codes=(1,))
        assert message in proc.stderr


# ---------------------------------------------------------------- labels

LABEL_CASES = {
    "label 2,000,000,000": (
        "x.csv", csv_rows(labels=[0, 1, 2] * 9 + [2_000_000_000, 1, 0]),
        r"label 2000000000 at row ROW27, which would need an output layer of 2000000001 units"),
    "a feature as the last column (wine's proline)": (
        "wine.csv", wine_like(), r"labels up to 1680, but only \d+ of those 1681 classes occur"),
    "label 1e30": ("x.csv", csv_rows(labels=["0", "1e30", "2"] * 10), "label 1e\\+30 at row ROW1"),
    "negative labels among many": (
        "x.csv", csv_rows(labels=list(range(-3, 27)) * 2), "label -3 at row ROW0 among 30 distinct"),
    "a label 3.5 among whole numbers": (
        "x.csv", csv_rows(labels=["0", "1", "2"] * 9 + ["3.5", "1", "0"]),
        r"mixes whole numbers with non-integer values such as 3.5 at row ROW27"),
    "fewer than two rows per class": (
        "x.csv", csv_rows(labels=list(range(30))), r"30 classes \(labels 0..29\) in 30 rows"),
}


def at_row(message, first):
    """message with each ROWi as row i + first: a CSV's rows are named by their
    line in the file (first = 1 without a header), an array's by their index."""
    return re.sub(r"ROW(\d+)", lambda m: str(int(m[1]) + first), message)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_implausible_labels_are_refused_naming_label_col(tmp_path, case):
    name, text, message = LABEL_CASES[case]
    (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    proc = run_fastnn("train", name, "-o", "out.safetensors", "--epochs", "1", cwd=tmp_path)
    assert_refused(proc, before, tmp_path, codes=(1,))
    assert re.search(at_row(message, 1), proc.stderr), proc.stderr   # no header: line 1
    assert "--label-col" in proc.stderr and "Warning" not in proc.stderr
    assert "state the task with --task classification or --task regression" in proc.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=at_row(message, 0)):
            fastnn._validation.n_outputs_for(load_data(tmp_path / name).y, name)


def test_the_right_label_column_trains_where_the_last_one_is_refused(tmp_path):
    (tmp_path / "wine.csv").write_text(wine_like())
    proc = run_fastnn("train", "wine.csv", "--label-col", "class", "--epochs", "1", "-q",
                      "-o", "wine.safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert fastnn.load(tmp_path / "wine.safetensors").sizes[-1] == 4     # labels 1..3


def test_npy_label_2_to_the_62_is_refused(tmp_path):
    np.save(tmp_path / "X.npy", np.zeros((20, 4), np.float32))
    y = np.arange(20) % 3
    y[5] = 2 ** 62
    np.save(tmp_path / "y.npy", y)
    before = snapshot(tmp_path)
    proc = run_fastnn("train", "X.npy", "-o", "out.safetensors", cwd=tmp_path)
    assert_refused(proc, before, tmp_path, codes=(1,))
    assert "label 4611686018427387904 at row 5" in proc.stderr and "--labels" in proc.stderr


@pytest.mark.parametrize("y, shown", [
    (np.array([0, 1e30, 2]), "label 1e+30 at row 1"),
    (np.array([0, 2 ** 64 - 1, 1], dtype=np.uint64), "label 18446744073709551615 at row 1"),
    (np.array([0, 2 ** 62, 1]), "label 4611686018427387904 at row 1"),
    (np.array([0.0, 7.0, 1.0]), "label 7 at row 1")])
def test_the_api_reports_labels_as_they_are_without_warnings(y, shown):
    net = Network([2, 3, 3], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=re.escape(shown)):
            net.fit(np.zeros((3, 2)), y, epochs=1)
        if y[1] > 10:
            with pytest.raises(DataError, match=re.escape(shown) + ", which would need an "
                                                "output layer of"):
                fastnn._validation.n_outputs_for(y)


def test_plausible_labels_give_their_class_count():
    from fastnn._validation import n_outputs_for

    assert n_outputs_for(np.array([5, 0, 4, 1, 9])) == 10         # five MNIST rows
    assert n_outputs_for(np.array([3, 7, 9] * 4)) == 3             # mapped to three classes
    assert n_outputs_for(np.array([-1, 1] * 4)) == 2               # -1/1 labels
    assert n_outputs_for(np.arange(40) % 20) == 20                 # two rows per class
    assert n_outputs_for(np.array([0.5, 1.5])) == 1                # a regression target
    assert n_outputs_for(np.zeros((4, 3))) == 3                    # target rows


# --------------------------------------------------------------- exports

# File names cannot hold '/' (so no '*/' to end a C comment) or NUL: those
# reach the exporters as `source` through the API, in the test after this one.
HOSTILE_NAMES = {
    "triple quotes": 'a"""+__import__("os").system("touch PWN")+""".safetensors',
    "single quotes": "a'''+__import__('os').system('touch PWN')+'''.safetensors",
    "newlines and a C preprocessor line": (
        'x*\n#include <stdlib.h>\n__attribute__((constructor)) static void p(void) '
        '{ system("touch PWN"); }\n.safetensors'),
    "backslashes and trigraphs": "a\\N{x}\\u??=??(\\.safetensors",
    "not UTF-8, a terminal escape": os.fsdecode(b"bad-\xff\xfe\x1b[31m.safetensors"),
}
OUTPUT_NAMES = {
    "numpy": 'o"""+__import__("os").system("touch PWN")+""".py',
    "c": "o*\n#error stop.c",
    "onnx": 'o"\n\x1b[2J.onnx',
}
# What `source` may carry through the API: comment ends, NUL, line breaks.
HOSTILE_SOURCE = ('x */ __attribute__((constructor)) static void p(void) { system("touch PWN"); '
                  '} /* \0 ??/\n"""+__import__("os").system("touch PWN")+"""\r\u2028'
                  + os.fsdecode(b"\xff"))


def _import_and_predict(tmp_path, py, expected_doc):
    """Import the generated module in a fresh process (in tmp_path), run it,
    and check that its docstring reads back `expected_doc`."""
    code = ("import importlib.util, sys, numpy as np\n"
            "spec = importlib.util.spec_from_file_location('m', sys.argv[1])\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(m.predict(np.zeros((2, 4))).tolist(), sys.argv[2] in m.__doc__)\n")
    # argv cannot hold NUL: the docstring check takes the text up to it
    proc = subprocess.run([sys.executable, "-c", code, str(py), expected_doc.split("\0")[0]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("]")[1].strip() == "True", proc.stdout


def _check_export(tmp_path, fmt, out, source):
    """The exported file works, carries `source` escaped, and ran nothing."""
    from fastnn.export import onnx_text

    if fmt == "numpy":
        _import_and_predict(tmp_path, out, source)
    elif fmt == "c":
        exe = compile_c([out], tmp_path / "model")
        text = out.read_bytes().decode("ascii")       # ASCII only: no NUL, no stray byte
        assert text.count("*/") == text.count("/*") and "\0" not in text
        run = subprocess.run([exe], input="1 2 3 4\n", capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
        assert run.returncode == 0 and run.stdout.strip() in ("0", "1")
    else:
        onnx = needs("onnx")
        ort = needs("onnxruntime")
        model = onnx.load(str(out))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["source"] == onnx_text(source) and meta["source"].isprintable()
        assert model.doc_string.isprintable() and model.graph.doc_string.isprintable()
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert session.run(["output"], {"input": np.zeros((2, 4), np.float32)})[0].shape == (2, 2)
    assert not (tmp_path / "PWN").exists()


@pytest.mark.parametrize("fmt", ["numpy", "c", "onnx"])
@pytest.mark.parametrize("case", sweep(HOSTILE_NAMES, fast=["triple quotes",
                                                           "not UTF-8, a terminal escape"]))
def test_exports_of_hostile_file_names_never_run_anything(tmp_path, fmt, case):
    name = HOSTILE_NAMES[case]
    Network([4, 3, 2], seed=0).save(tmp_path / name)
    out = OUTPUT_NAMES[fmt]
    proc = run_fastnn("export", name, "-o", out, "--format", fmt, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_export(tmp_path, fmt, tmp_path / out, name)


@pytest.mark.parametrize("fmt", ["numpy", "c", "onnx"])
def test_exports_of_a_hostile_source_never_run_anything(tmp_path, fmt):
    from fastnn.export import export

    suffix = {"numpy": ".py", "c": ".c", "onnx": ".onnx"}[fmt]
    if fmt == "onnx":
        needs("onnx")
    [out, *_] = export(Network([4, 3, 2], seed=0), tmp_path / ("m" + suffix), fmt,
                       source=HOSTILE_SOURCE)
    _check_export(tmp_path, fmt, tmp_path / os.path.basename(out), HOSTILE_SOURCE)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text())
def test_escaping_functions_hold_for_any_text(text):
    import ast

    from fastnn.export import c_text, onnx_text, python_literal, python_text

    assert ast.literal_eval('"""' + python_text(text) + ' """') == text + " "
    assert ast.literal_eval(python_literal(text)) == text
    c = c_text(text)
    assert c.isascii() and c.isprintable() and not any(s in c for s in ("*/", "/*", '"', "??"))
    o = onnx_text(text)
    o.encode("utf-8")                               # never a lone surrogate
    assert o.isprintable()


# ----------------------------------------------------------------- fuzzing
# Structure-aware: a valid file, then one part of its structure replaced by
# values of the wrong type, huge, negative and non-finite numbers, deep
# nesting, or a tensor table that disagrees.

HOSTILE_NUMBERS = st.sampled_from([0, -1, 1, 30.5, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 30,
                                   float("inf"), -float("inf"), float("nan"), 1e308, -0.0,
                                   True, False, None, "7", "", [], {}])
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
VALUES = st.one_of(HOSTILE_NUMBERS, JSON_VALUES)


def _paths(value, prefix=()):
    """Every path to a value inside nested dicts and lists."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _mutate(data, value):
    """value with one part replaced, removed or added (drawn from data)."""
    paths = list(_paths(value))
    path = data.draw(st.sampled_from(paths))
    how = data.draw(st.sampled_from(["replace", "delete", "add", "nest"]))
    if not path:
        return data.draw(VALUES)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "replace":
        parent[key] = data.draw(VALUES)
    elif how == "delete":
        del parent[key]
    elif how == "add" and isinstance(parent[key], dict):
        parent[key][data.draw(st.text(max_size=10))] = data.draw(VALUES)
    elif how == "add" and isinstance(parent[key], list):
        parent[key].append(data.draw(VALUES))
    else:
        depth = data.draw(st.sampled_from([2, 31, 33, 200]))
        nested = parent[key]
        for _ in range(depth):
            nested = [nested]
        parent[key] = nested
    return value


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return trained_model(tmp_path_factory.mktemp("small"), (5, 4, 3), optimizer="adam",
                         lr_schedule="plateau:patience=2", validation_split=0.25)


@FUZZ
@given(data=st.data())
def test_fuzzed_model_headers_give_only_model_file_errors(tmp_path, small_model, conv_bytes,
                                                          data):
    # format 1 (a dense stack) and format 2 (a conv net)
    header, tensors = split(data.draw(st.sampled_from([small_model, conv_bytes])))
    meta = header["__metadata__"]
    target = data.draw(st.sampled_from(["network", "optimizer", "training", "input_scaling",
                                        "metadata", "table", "raw", "bytes"]))
    raw = None
    if target in ("network", "optimizer", "training", "input_scaling"):
        meta[target] = json.dumps(_mutate(data, json.loads(meta[target])))
    elif target == "metadata":
        meta = header["__metadata__"] = _mutate(data, meta)
        if isinstance(meta, dict) and data.draw(st.booleans()):
            for k, v in list(meta.items()):
                if not isinstance(v, str):
                    meta[k] = json.dumps(v)
    elif target == "table":
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        header[name] = _mutate(data, header[name])
    elif target == "raw":
        field = data.draw(st.sampled_from(["network", "optimizer", "training"]))
        meta[field] = data.draw(st.sampled_from([
            "[" * 100_000 + "]" * 100_000, '{"sizes": [5, 1e400, 3]}', "Infinity", "{",
            '{"a": 1, "a": 2}', "9" * 5000, json.dumps(meta[field])]))
    else:
        tensors = damage(data, tensors, max_random=64, max_flips=4)
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(join(header, tensors, raw))
    for reader in (read_metadata, fastnn.load):
        try:
            result = reader(path)
        except ModelFileError:
            continue
        if reader is fastnn.load:
            assert result.forward(np.zeros((1, result.sizes[0]))).shape == (1, result.sizes[-1])


IDX_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x0A, 0xFF]


@FUZZ
@given(data=st.data())
def test_fuzzed_idx_files_give_only_data_errors(tmp_path, data):
    kind = data.draw(st.sampled_from(IDX_CODES))
    dims = data.draw(st.lists(st.one_of(st.integers(0, 5), st.integers(0, 2 ** 32 - 1)),
                              max_size=5))
    ndim = data.draw(st.one_of(st.just(len(dims)), st.integers(0, 255)))
    blob = bytes([0, 0, kind, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    blob += data.draw(st.binary(max_size=200))
    if data.draw(st.booleans()):
        blob = damage(data, blob, max_random=64, max_flips=4)
    compressed = data.draw(st.booleans())
    name = "f-images-idx3-ubyte" + (".gz" if compressed else "")
    (tmp_path / name).write_bytes(gzip.compress(blob) if compressed else blob)
    try:
        loaded = load_data(tmp_path / name)
    except DataError:
        return
    assert loaded.X.ndim == 2 and len(loaded.X) > 0


def test_a_csv_header_wider_than_its_rows_is_a_data_error(tmp_path):
    # found by the CSV fuzzing below: --label-col naming a column past the rows' end
    (tmp_path / "x.csv").write_text("a,b,c,label\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="the header names 4 columns, the rows have 3"):
        load_data(tmp_path / "x.csv", label_col="label")


CSV_CELLS = st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str),
                      st.floats(allow_nan=True, allow_infinity=True).map(repr),
                      st.sampled_from(["", " ", "1e400", "-0", "0x10", "nan", "1,2", '"3"', "\r",
                                       "\x00", "é", "1e30", "2000000000"]),
                      st.text(max_size=6))


@FUZZ
@given(data=st.data())
def test_fuzzed_csv_files_give_only_data_errors(tmp_path, data):
    width = data.draw(st.integers(1, 6))
    names = data.draw(st.one_of(st.none(), st.lists(st.text(max_size=6), min_size=width,
                                                    max_size=width)))
    rows = data.draw(st.lists(st.lists(CSV_CELLS, min_size=width, max_size=width), max_size=8))
    sep = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = sep.join(",".join(row) for row in ([names] if names else []) + rows)
    blob = text.encode("utf-8", "surrogatepass")
    if blob and data.draw(st.booleans()):
        blob = damage(data, blob, max_random=64, max_flips=4)
    compressed = data.draw(st.booleans())
    name = "f.csv" + (".gz" if compressed else "")
    (tmp_path / name).write_bytes(gzip.compress(blob) if compressed else blob)
    label_col = data.draw(st.one_of(st.none(), st.integers(0, 7).map(str), st.text(max_size=4)))
    try:
        loaded = load_data(tmp_path / name, label_col=label_col)
    except DataError:
        return
    assert loaded.X.ndim == 2 and len(loaded.X) > 0
    if loaded.y is not None:
        try:
            fastnn._validation.n_outputs_for(loaded.y)
        except DataError:
            pass


NPY_DESCRS = st.sampled_from(["<f8", "<f4", "|u1", "<i8", ">i4", "|O", "<U3", "|V4", "<c16",
                              "[('a', '<f4')]", "'<f8'", "x", "", "<f8\x00"])
NPY_SHAPES = st.one_of(st.lists(st.one_of(st.integers(-2, 6), st.integers(0, 2 ** 63)),
                                max_size=4).map(tuple), st.sampled_from(["()", "None", "'x'",
                                                                          "(1.5,)", "[3]"]))


@FUZZ
@given(data=st.data())
def test_fuzzed_npy_headers_give_only_data_errors(tmp_path, data):
    descr = data.draw(NPY_DESCRS)
    shape = data.draw(NPY_SHAPES)
    fortran = data.draw(st.sampled_from(["False", "True", "0", "'no'"]))
    descr_text = descr if descr.startswith(("[", "'")) else repr(descr)
    text = "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (descr_text, fortran, shape)
    if data.draw(st.booleans()):
        text = text.replace("}", "{" * data.draw(st.integers(1, 400)))
    text = text.ljust(data.draw(st.integers(0, 200)) + len(text)) + "\n"
    version = data.draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    length = len(text) if data.draw(st.booleans()) else data.draw(st.integers(0, 2 ** 16 - 1))
    size = 2 if version == b"\x01\x00" else 4
    head = b"\x93NUMPY" + version + length.to_bytes(size, "little") + text.encode("latin-1")
    blob = head + data.draw(st.binary(max_size=128))
    if data.draw(st.booleans()):
        blob = damage(data, blob, max_random=64, max_flips=4)
    target = data.draw(st.sampled_from(["X", "y"]))
    good = io.BytesIO()
    np.save(good, np.arange(12, dtype=np.float64).reshape(6, 2) if target == "y"
            else np.arange(6) % 2)
    (tmp_path / "X.npy").write_bytes(blob if target == "X" else good.getvalue())
    (tmp_path / "y.npy").write_bytes(blob if target == "y" else good.getvalue())
    try:
        loaded = load_data(tmp_path / "X.npy")
    except DataError:
        return
    assert loaded.X.ndim == 2
    if loaded.y is not None:
        try:
            fastnn._validation.n_outputs_for(loaded.y)
        except DataError:
            pass


# ------------------------------------------- integers a user types (issue 24 §2)

HUGE = "9" * 5000


@pytest.mark.parametrize("args, message", sweep(fast=[0, 4, 9, 11, 15], cases=[
    (("train", "data.csv", "--layers", f"16,{HUGE}"), "Dense layer's width .*5,000"),
    (("train", "data.csv", "--layers", f"4x4,conv{HUGE}:3"), "filters .*5,000"),
    (("train", "data.csv", "--layers", f"4x4,conv4:{HUGE}"), "kernel size .*5,000"),
    (("train", "data.csv", "--layers", f"4x4,conv4:3:s{HUGE}"), "stride .*5,000"),
    (("train", "data.csv", "--layers", f"4x4,maxpool{HUGE}"), "pool size .*5,000"),
    (("train", "data.csv", "--layers", f"{HUGE}x4,3"), "input shape's side .*5,000"),
    (("train", "data.csv", "--input-shape", f"4x{HUGE}", "--layers", "conv2:2,3"),
     "input shape's side .*5,000"),
    (("train", "data.csv", "--hidden", f"4,{HUGE}"), "layer size .*5,000"),
    (("train", "data.csv", "--label-col", HUGE), "no label column '9{50}.*its columns are"),
    # column 17 indeed, but a name too long for the model file to keep
    (("train", "data.csv", "--label-col", "0" * 5000 + "17"), "could not be saved.*label_col"),
    (("train", "data.csv", "--lr-schedule", f"step:every={HUGE}"), "option every .*400 digits, not one of 5,000"),
    (("train", "data.csv", "--seed", HUGE), "at most 400 digits, not one of 5,000"),
    (("train", "data.csv", "--epochs", HUGE), "at most 400 digits"),
    (("train", "data.csv", "--limit", "-" + HUGE), "at most 400 digits"),
    (("train", "data.csv", "--threads", HUGE), "at most 400 digits"),
    (("eval", "m.safetensors", "data.csv", "--label-col", HUGE), "no label column"),
    (("show", "m.safetensors", "data.csv", "--image-shape", f"{HUGE}x4"), "side .*5,000"),
    (("show", "m.safetensors", "data.csv", "--count", HUGE), "at most 400 digits"),
]))
def test_integers_of_thousands_of_digits_are_refused_in_one_line(tmp_path, args, message):
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, (30, 16)), rng.integers(0, 3, 30)
    names = [f"px{i}" for i in range(16)] + ["label"]
    np.savetxt(tmp_path / "data.csv", np.column_stack([X, y]), fmt="%d", delimiter=",",
               header=",".join(names), comments="")
    net = Network([16, 4, 3], seed=0)
    net.fit(X.astype(np.uint8), y, epochs=1)
    net.save(tmp_path / "m.safetensors")
    before = snapshot(tmp_path)
    proc = run_fastnn(*args, "-o", "out.safetensors", cwd=tmp_path) if args[0] == "train" \
        else run_fastnn(*args, cwd=tmp_path)
    assert_refused(proc, before, tmp_path)
    assert "4300" not in proc.stderr and len(proc.stderr) < 400, proc.stderr[:400]
    assert re.search(message, proc.stderr), proc.stderr


def test_every_cli_integer_goes_through_parse_int():
    # click's own IntRange converts with int(), which has a 4300-digit limit
    from pathlib import Path

    cli = Path(fastnn.__file__).parent / "cli"
    for path in cli.glob("*.py"):
        assert "IntRange(" not in path.read_text(), path


@settings(max_examples=examples(300), deadline=None)
@given(st.one_of(st.integers(-10 ** 450, 10 ** 450).map(str),
                 st.text("0123456789+- x_.e", max_size=30)))
def test_parse_int_agrees_with_int_where_int_is_defined(text):
    from fastnn._validation import MAX_DIGITS, parse_int
    from fastnn.exceptions import ConfigError

    try:
        got = parse_int(text, "n")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 200
        digits = text.strip().lstrip("+-").lstrip("0")
        assert not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text) or len(digits) > MAX_DIGITS
        return
    assert got == int(text)


# ------------------------------------------------ messages that name the cause (§5)

@pytest.mark.parametrize("stride, message", [
    ([-1, -1], r"Conv2D: stride must be an integer >= 1, not -1"),
    ([0, 2], r"Conv2D: stride must be an integer >= 1, not 0"),
    ([2 ** 21, 1], r"stride must be at most 1048576"),
])
def test_a_header_stride_out_of_range_is_named_by_its_bound(tmp_path, stride, message):
    from fastnn.layers import Conv2D

    path = tmp_path / "c.safetensors"
    Network([(6, 6, 1), Conv2D(2, 3, stride=2), 3], seed=0).save(path)
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    network = json.loads(header["__metadata__"]["network"])
    network["layers"][0]["stride"] = stride
    header["__metadata__"]["network"] = json.dumps(network)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n:])
    with pytest.raises(ModelFileError, match=message) as info:
        fastnn.load(path)
    assert "at most" not in str(info.value) or stride[0] > 1


@pytest.mark.parametrize("label_first", [False, True])
def test_a_label_col_that_is_not_there_is_named_with_text_labels(tmp_path, label_first):
    rows = ["5.1,3.5,setosa", "6.2,2.9,versicolor", "7.7,3.0,virginica"] * 4
    if label_first:
        rows = [",".join([r.split(",")[2], *r.split(",")[:2]]) for r in rows]
        header = "species,a,b"
    else:
        header = "a,b,species"
    (tmp_path / "iris.csv").write_text("\n".join([header, *rows]) + "\n")
    for col in ("nosuch", "9"):
        before = snapshot(tmp_path)
        proc = run_fastnn("train", "iris.csv", "--label-col", col, "--epochs", "1", cwd=tmp_path)
        assert_refused(proc, before, tmp_path, codes=(1,))
        columns = str(header.split(","))
        assert f"iris.csv has no label column '{col}'; its columns are {columns}" in proc.stderr
    with pytest.raises(DataError, match="no label column 'nosuch'"):
        load_data(tmp_path / "iris.csv", label_col="nosuch")
    data = load_data(tmp_path / "iris.csv", label_col="species")
    assert data.X.shape == (12, 2) and set(data.y) == {"setosa", "versicolor", "virginica"}


def test_readme_says_export_takes_conv_nets(tmp_path):
    from pathlib import Path

    from fastnn.layers import Conv2D

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    command_line = readme[readme.index("## Command line"):readme.index("## Safety")]
    assert "refuses them" not in command_line
    assert re.search(r"`export`[^.]*work with them", command_line.replace("\n", " "))
    Network([(6, 6, 1), Conv2D(2, 3), 3], seed=0).save(tmp_path / "c.safetensors")
    proc = run_fastnn("export", "c.safetensors", "-o", "c.onnx", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "c.onnx").stat().st_size > 0, proc.stderr


# --------------------------------- numbers past float32, names with '#', C, rows (§5)

def csv_of(path, X, y, header):
    np.savetxt(path, np.column_stack([X, y]), fmt="%.17g", delimiter=",", header=header,
               comments="")


def refused_in_one_line(directory, *args, message, codes=(1,)):
    before = snapshot(directory)
    proc = run_fastnn(*args, cwd=directory, timeout=60)
    assert_refused(proc, before, directory, codes)
    assert "Warning" not in proc.stderr and re.search(message, proc.stderr), proc.stderr
    return proc


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_features_past_float32_are_scaled_in_float64_or_named_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.arange(60) % 3
    big = X.copy()
    big[:, 1] = 1e39 * (3 + np.abs(X[:, 1]))   # finite in float64, inf in float32
    csv_of(tmp_path / "big.csv", big, y, "a,b,c,label")
    # standard scaling brings the column back into float32's range: it trains
    for scale in ("standard", "minmax"):
        proc = run_fastnn("train", "big.csv", "--scale", scale, "--epochs", "1", "-o",
                          f"{scale}.safetensors", "-q", cwd=tmp_path, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # unscaled it cannot be float32: one line naming the value, its line, the dtype
    refused_in_one_line(tmp_path, "train", "big.csv", "--scale", "none", "--epochs", "1",
                        message=r"big.csv holds [0-9.]+e\+39 at row 2, column 1, which "
                                r"overflows float32 \(largest 3.4e\+38\); train in float64")
    assert "scale the inputs" not in refused_in_one_line(
        tmp_path, "train", "big.csv", "--scale", "none", "--epochs", "1",
        message="overflows float32").stderr
    ok = run_fastnn("train", "big.csv", "--scale", "none", "--dtype", "float64", "--epochs",
                    "1", "-o", "f64.safetensors", "-q", cwd=tmp_path, timeout=60)
    assert ok.returncode == 0, ok.stderr
    # one value far outside what a model was scaled for: "even after" its scaling
    one = X.copy()
    one[4, 2] = 1e39
    csv_of(tmp_path / "one.csv", one, y, "a,b,c,label")
    csv_of(tmp_path / "x.csv", X, y, "a,b,c,label")
    assert run_fastnn("train", "x.csv", "--epochs", "1", "-o", "m.safetensors", "-q",
                      cwd=tmp_path).returncode == 0
    for command in ("eval", "predict"):
        refused_in_one_line(tmp_path, command, "m.safetensors", "one.csv",
                            message=r"one.csv holds 1e\+39 at row 6, column 2, which overflows "
                                    r"float32 .* even after standard scaling")
    net = fastnn.load(tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"X holds 1e\+39 at row 4, column 2"):
            net.predict(one)
        with pytest.raises(DataError, match=r"weights\[0\] holds 1e\+39 .* overflows float32"):
            net.weights[0] = np.full(net.weights[0].shape, 1e39)


def test_a_value_past_float32_is_found_without_the_compiled_core(monkeypatch):
    # backend='numpy' works where the core is not built: check_fits too
    from fastnn._validation import check_fits

    X = np.ones((3000, 700), np.float32)
    X[2500, 5] = np.inf                          # 1e39 rounded to float32
    monkeypatch.setitem(sys.modules, "fastnn._core", None)    # import fails
    with pytest.raises(DataError, match=r"X holds inf at row 2500, column 5, which overflows "
                                        r"float32"):
        check_fits(X, np.float32, "X")
    X[2500, 5] = 1
    check_fits(X, np.float32, "X")
    big = X.astype(np.float64)
    big[7, 3] = 1e39
    with pytest.raises(DataError, match=r"X holds 1e\+39 at row 7, column 3"):
        check_fits(big, np.float32, "X")


def test_targets_past_float32_are_not_called_nan(tmp_path):
    rng = np.random.default_rng(0)
    X, t = rng.normal(size=(60, 3)), rng.normal(size=60)
    t[3], t[4] = 1e308, -1e308
    net = Network([3, 4, 1], output="identity", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"y holds 1e\+308 at row 3, column 0, which "
                                            r"overflows float32") as info:
            net.fit(X, t, epochs=1)
        assert "NaN" not in str(info.value)
        net.fit(X, t, epochs=1, task="regression")      # standardised: it trains
    csv_of(tmp_path / "t.csv", X, t, "a,b,c,t")
    out = {}
    for args in (("train", "t.csv", "--task", "regression", "--epochs", "1", "-o",
                  "r.safetensors", "-q"), ("eval", "r.safetensors", "t.csv"),
                 ("eval", "r.safetensors", "t.csv", "--json")):
        proc = run_fastnn(*args, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr     # no warnings
        out[args[-1]] = proc.stdout
    # the squared errors overflow float64: said as they are, inf (null in JSON)
    assert "MSE inf" in out["t.csv"]
    assert json.loads(out["--json"])["mse"] is None


def test_values_near_the_ends_of_float64_are_standardised_without_overflow(tmp_path):
    # -1.7e308 and +1.7e308 have a finite mean, spread and median, but
    # -1.7e308 - mean (and the sum of the middle two) is -inf in float64
    from fractions import Fraction

    from fastnn.columns import _median
    from fastnn.preprocessing import standardised

    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 2))
    t = np.clip(X[:, 0] + 1, -1.7, 1.7) * 1e308
    assert t.min() == -1.7e308 and t.max() == 1.7e308
    csv_of(tmp_path / "t.csv", X, t, "a,b,t")
    wide = X.copy()
    wide[:, 1] = 1.7e308
    wide[::5, 1] = -1.7e308
    csv_of(tmp_path / "f.csv", wide, np.arange(20) % 2, "a,b,label")
    for args in (("train", "t.csv", "--task", "regression", "-o", "t.safetensors"),
                 ("train", "f.csv", "-o", "f.safetensors"),
                 ("eval", "t.safetensors", "t.csv"), ("eval", "f.safetensors", "f.csv")):
        proc = run_fastnn(*args, *(("--epochs", "1", "-q") if args[0] == "train" else ()),
                          cwd=tmp_path, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # against exact rational arithmetic
    mean, scale = np.array([1.5e308]), np.array([1.2e308])
    Y = np.array([[-1.7e308], [1.7e308], [0.0]])
    exact = [float((Fraction(y) - Fraction(mean[0])) / Fraction(scale[0])) for y in Y[:, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert standardised(Y, mean, scale)[:, 0].tolist() == pytest.approx(exact, rel=1e-15)
        numbers = np.array([1.7e308, 1.6e308, -1.0, 1.75e308])
        assert _median(numbers) == float((Fraction(1.6e308) + Fraction(1.7e308)) / 2)
        assert _median(np.array([1.0, 2.0, 4.0, 8.0])) == 3.0


@pytest.mark.parametrize("fmt", ["numpy", "c", "onnx"])
def test_export_of_targets_near_1e50_is_refused_by_its_cause_or_exact(tmp_path, fmt):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    csv_of(tmp_path / "t.csv", X, (X @ [1, 2, 3]) * 1e50, "a,b,c,t")
    for dtype in ("float32", "float64"):
        proc = run_fastnn("train", "t.csv", "--task", "regression", "--dtype", dtype,
                          "--epochs", "1", "-o", f"{dtype}.safetensors", "-q", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    refused_in_one_line(tmp_path, "export", "float32.safetensors", "--format", fmt, "-o",
                        "out", message=r"cannot export: the model's scaling folded into its "
                                       r"weights overflows: (weights|biases)\[1\] holds "
                                       r".*e\+[45]\d.* "
                                       r"overflows float32")
    fastnn.load(tmp_path / "float32.safetensors")           # the model itself is intact
    if fmt == "numpy":
        from fastnn.export import export

        net = fastnn.load(tmp_path / "float64.safetensors")
        export(net, tmp_path / "m64.py", "numpy")
        import importlib.util

        spec = importlib.util.spec_from_file_location("m64", tmp_path / "m64.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        np.testing.assert_allclose(np.ravel(module.predict(X)), net.predict(X), rtol=1e-9)


@pytest.mark.parametrize("label_first", [False, True])
def test_text_labels_with_hash_signs_train_wherever_their_column_is(tmp_path, label_first):
    names = ["a#b", "#c", "d # e"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        features = [f"{v:.4f}" for v in rng.normal(size=3) + 4 * (i % 3)]
        rows.append(",".join([names[i % 3], *features] if label_first else
                             [*features, names[i % 3]]))
    header = "species,a,b,c" if label_first else "a,b,c,species"
    (tmp_path / "h.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    data = load_data(tmp_path / "h.csv", label_col="species")
    assert data.X.shape == (60, 3) and sorted(set(data.y)) == sorted(names)
    proc = run_fastnn("train", "h.csv", "--label-col", "species", "--epochs", "20", "--lr",
                      "1", "-o", "h.safetensors", "-q", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert fastnn.load(tmp_path / "h.safetensors").preprocessing.classes == sorted(names)


def test_the_c_export_of_a_classifier_compiles_without_warnings_as_a_library(tmp_path):
    rows = ["5.1,3.5,setosa", "6.2,2.9,versicolor", "7.7,3.0,virginica"] * 6
    (tmp_path / "iris.csv").write_text("a,b,species\n" + "\n".join(rows) + "\n")
    assert run_fastnn("train", "iris.csv", "--epochs", "1", "-o", "i.safetensors", "-q",
                      cwd=tmp_path).returncode == 0
    assert run_fastnn("export", "i.safetensors", "-o", "i.c", cwd=tmp_path).returncode == 0
    # a program of its own (no -DFASTNN_MAIN): fastnn_class_names is used, no warning
    (tmp_path / "use.c").write_text(
        '#include <stdio.h>\nconst char *fastnn_class_name(int k);\n'
        'int main(void) { printf("%s|%s\\n", fastnn_class_name(2), '
        'fastnn_class_name(3) ? "?" : "none"); return 0; }\n')
    use = compile_c([tmp_path / "use.c", tmp_path / "i.c"], tmp_path / "use", main=False)
    compile_c([tmp_path / "i.c"], tmp_path / "model")            # with FASTNN_MAIN too
    out = subprocess.run([str(use)], capture_output=True, text=True).stdout
    assert out == "virginica|none\n"


def test_a_network_that_does_not_fit_the_file_names_the_file_not_x_and_y(tmp_path):
    # `fastnn train` has no X or y: its messages name DATA
    (tmp_path / "iris.csv").write_text("a,b,species\n" + "\n".join(
        ["5.1,3.5,setosa", "6.2,2.9,versicolor", "7.7,3.0,virginica"] * 4) + "\n")
    (tmp_path / "reg.csv").write_text("a,b,t\n" + "\n".join(
        f"{i},{i % 3},{i / 2}" for i in range(12)) + "\n")
    (tmp_path / "cat.csv").write_text("a,b,label\n" + "\n".join(
        f"{'xy'[i % 2]},{i},{i % 3 % 2}" for i in range(12)) + "\n")
    for args, message in [
            (("iris.csv", "--layers", "2,5,4"),
             r"^Error: iris.csv has 3 classes \(setosa, versicolor, virginica\), but the output "
             r"layer has 4 unit"),
            (("reg.csv", "--task", "regression", "--layers", "2,5,3"),
             r"^Error: reg.csv has 1 target\(s\) per row, but the output layer has 3 unit"),
            (("cat.csv", "--layers", "2,5,2"),
             r"^Error: cat.csv encodes to 3 inputs \(1 numeric, 1 categorical")]:
        refused_in_one_line(tmp_path, "train", *args, "--epochs", "1", "-o", "m.safetensors",
                            message=message)


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_rows_of_a_csv_are_named_by_their_line_in_every_message(tmp_path):
    # the header is line 1, so the n-th row (from 0) is line n + 2, whoever reports it
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = np.arange(40) % 4
    csv_of(tmp_path / "train.csv", X, y, "a,b,c,label")
    assert run_fastnn("train", "train.csv", "--epochs", "1", "-o", "m.safetensors", "-q",
                      cwd=tmp_path).returncode == 0
    bad = y.copy()
    bad[5] = 7                                   # not a class of the model: line 7
    csv_of(tmp_path / "bad.csv", X, bad, "a,b,c,label")
    inf = X.copy().astype(object)
    inf[8, 1] = "inf"                             # line 10
    (tmp_path / "inf.csv").write_text("a,b,c,label\n" + "\n".join(
        ",".join(map(str, [*r, c])) for r, c in zip(inf, y)) + "\n")
    noheader = X.copy()
    noheader[3, 0] = 1e39                        # no header: line 4
    np.savetxt(tmp_path / "nh.csv", np.column_stack([noheader, y]), fmt="%.17g",
               delimiter=",")
    cases = [(("eval", "m.safetensors", "bad.csv"), r"bad.csv has label 7 at row 7,"),
             (("predict", "m.safetensors", "inf.csv"), r"inf.csv: row 10, column b"),
             (("train", "train.csv", "--val", "inf.csv", "--epochs", "1"),
              r"inf.csv: row 10, column b"),
             (("train", "nh.csv", "--scale", "none", "--epochs", "1"),
              r"nh.csv holds 1e\+39 at row 4, column 0"),
             (("train", "train.csv", "--test", "bad.csv", "--layers", "3,4", "--epochs", "1"),
              r"bad.csv has label 7 at row 7, but the output layer"),
             # a label that is not finite is named as a label, not "column 0"
             (("train", "nanlabel.csv", "--epochs", "1"),
              r"nanlabel.csv has label inf at row 5; labels must be finite numbers"),
             (("train", "nanlabel.csv", "--task", "regression", "--epochs", "1"),
              r"nanlabel.csv has target inf at row 5; targets must be finite numbers"),
             (("eval", "m.safetensors", "nanlabel.csv"),
              r"nanlabel.csv has label inf at row 5; labels must be finite numbers")]
    # blank lines hold no row, but count as lines (LF and CRLF): 7 is on line 6
    for name, end in (("blank.csv", "\n"), ("crlf.csv", "\r\n")):
        (tmp_path / name).write_bytes(end.join(
            ["a,b,c,label", "1,2,3,0", "", "1,2,3,1", "", "1,2,3,7", "1,2,3,0", "", ""]
        ).encode())
        cases.append((("eval", "m.safetensors", name), name + r" has label 7 at row 6,"))
    (tmp_path / "blankinf.csv").write_text("a,b,c,label\n1,2,3,0\n\n1,inf,3,1\n")
    cases.append((("predict", "m.safetensors", "blankinf.csv"), r"row 4, column b is inf"))
    nan_label = y.astype(object)
    nan_label[3] = "inf"                          # line 5
    (tmp_path / "nanlabel.csv").write_text("a,b,c,label\n" + "\n".join(
        ",".join(map(str, [*r, c])) for r, c in zip(X, nan_label)) + "\n")
    for args, message in cases:
        refused_in_one_line(tmp_path, *args, message=message)
    # arrays have no lines: their rows are counted from 0, as NumPy indexes them
    np.savez(tmp_path / "bad.npz", X=X, y=bad)
    refused_in_one_line(tmp_path, "eval", "m.safetensors", "bad.npz",
                        message=r"bad.npz has label 7 at row 5,")
