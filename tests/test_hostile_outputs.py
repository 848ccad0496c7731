"""Issue 10 §1 and the CLI items of §3, as a user or an attacker would try them: real
`fastnn` processes under a memory and a time limit (conftest's run_fastnn). A refusal
is exit 1 or 2, at most two lines on stderr, no traceback, every file in the directory
byte-identical and no temp file left (assert_refused). Through the Python API the
same mistakes raise FastnnError subclasses only.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import assert_refused, needs, run_fastnn, snapshot, sweep

import fastnn
from fastnn.exceptions import FastnnError, NetworkBusy, ResourceError
from fastnn.files import TEMP_SUFFIX


def blobs(n, seed=0):
    """4x4 uint8 'images' of 3 classes that a small network learns."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = np.clip(np.array([40, 130, 220])[y][:, None] + rng.normal(0, 25, (n, 16)), 0, 255)
    return X.astype(np.uint8), y


def write_csv(path, X, y, label_first=False):
    names = [f"px{i}" for i in range(X.shape[1])]
    if label_first:
        cols, header = np.column_stack([y, X]), ["label"] + names
    else:
        cols, header = np.column_stack([X, y]), names + ["label"]
    np.savetxt(path, cols, fmt="%d", delimiter=",", header=",".join(header), comments="")


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """A dataset in several forms, a trained model and its history."""
    d = tmp_path_factory.mktemp("stock")
    X, y = blobs(300)
    np.savez(d / "data.npz", X=X, y=y)
    write_csv(d / "data.csv", X, y)
    np.save(d / "X_train.npy", X)
    np.save(d / "y_train.npy", y)
    proc = run_fastnn("train", "data.npz", "--hidden", "8", "--epochs", "3", "--seed", "0",
                      "--lr", "1", "--history", "h.json", "-o", "m.safetensors", "-q", cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture
def work(tmp_path, stock):
    """A fresh copy of the stock files."""
    for f in stock.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def refused(work, *args, message, codes=(1, 2)):
    before = snapshot(work)
    proc = run_fastnn(*args, cwd=work)
    assert_refused(proc, before, work, codes)
    assert re.search(message, proc.stderr), proc.stderr
    return proc


TRAIN = ("train", "data.npz", "--hidden", "8", "--epochs", "2", "--seed", "0")


def special(work, kind):
    """A non-regular output: a FIFO, a symlink to a device, a directory, a
    dangling symlink."""
    path = work / "out.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.symlink("/dev/null", path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.symlink(work / "nowhere" / "x.safetensors", path)
    return path


# ------------------------------------------------ outputs that are inputs

# one case of each command in the fast suite, every case under --runslow
@pytest.mark.parametrize("args, message", sweep([
    (("train", "data.csv", "--hidden", "4", "-o", "data.csv"), "same file as DATA data.csv"),
    (TRAIN + ("--history", "h2.json", "-o", "h2.json"), "are the same file"),
    (TRAIN + ("--history", "data.npz", "-o", "new.safetensors"), "same file as DATA"),
    (("predict", "m.safetensors", "data.npz", "-o", "m.safetensors"), "same file as MODEL"),
    (("predict", "m.safetensors", "data.npz", "-o", "data.npz"), "same file as DATA"),
    (("train", "X_train.npy", "--hidden", "4", "-o", "y_train.npy"), "same file as DATA"),
    (TRAIN + ("--val", "data.csv", "-o", "data.csv"), "same file as --val"),
    (TRAIN + ("--test", "data.csv", "-o", "data.csv"), "same file as --test"),
    (("train", "--resume", "m.safetensors", "--history", "m.safetensors"), "same file"),
    (("export", "m.safetensors", "--format", "onnx", "-o", "m.safetensors"), "same file as MODEL"),
    (("export", "m.safetensors", "-o", "data.npz"), "not a weights .npz written by fastnn"),
    (("plot", "h.json", "-o", "h.json"), "cannot tell the picture format|same file"),
    (("eval", "m.safetensors", "data.npz", "--confusion-png", "data.npz"),
     "cannot tell the picture format"),
    (("show", "m.safetensors", "data.npz", "--misclassified", "data.csv"),
     "cannot tell the picture format"),
], fast=[0, 3, 9, 11, 12, 13]))
def test_an_output_that_is_an_input_is_refused(work, args, message):
    refused(work, *args, message=message)


def test_an_output_reached_through_a_link_is_still_the_input(work):
    os.symlink("data.csv", work / "soft.safetensors")
    os.link(work / "data.csv", work / "hard.safetensors")
    for out in ("soft.safetensors", "hard.safetensors"):
        refused(work, "train", "data.csv", "--hidden", "4", "-o", out,
                message="same file as DATA", codes=(1,))


def test_plot_history_onto_itself_by_name(work):
    # the same file under another spelling
    (work / "h.png").write_bytes((work / "h.json").read_bytes())
    refused(work, "plot", "h.png", "-o", "./h.png", message="same file as HISTORY")


# ----------------------------------------------- outputs that are not files

KINDS = {"fifo": "FIFO", "device": "character device", "directory": "a directory",
         "dangling": "symlink to .* which does not exist"}


@pytest.mark.parametrize("kind, command", [
    ("fifo", "train"), ("device", "train"), ("directory", "train"), ("dangling", "train"),
    ("fifo", "predict"), ("device", "export"), ("directory", "predict"), ("fifo", "force"),
    ("device", "force")])
def test_non_regular_outputs_are_refused(work, kind, command):
    message = KINDS[kind]
    out = special(work, kind)
    args = {"train": TRAIN + ("-o", out.name),
            "predict": ("predict", "m.safetensors", "data.npz", "-o", out.name),
            "export": ("export", "m.safetensors", "--format", "c", "-o", out.name),
            "force": TRAIN + ("--force", "-o", out.name)}[command]
    refused(work, *args, message=message)


def test_a_missing_or_unwritable_directory_is_found_before_training(work):
    proc = refused(work, *TRAIN, "--epochs", "100000", "-o", "nodir/m.safetensors",
                   message="directory nodir does not exist")
    assert "epoch" not in proc.stdout
    refused(work, *TRAIN, "-o", "/proc/self/m.safetensors", message="cannot write")


# --------------------------------------------- files of another kind, --force

# a model, a non-model output and a picture in the fast suite, every kind under --runslow
@pytest.mark.parametrize("args, out, kind, package", sweep([
    (TRAIN, "notes.txt", "fastnn model", None),
    (TRAIN + ("--history", "notes.txt", "-o", "m2.safetensors"), None, "fastnn history", None),
    (("predict", "m.safetensors", "data.npz"), "notes.txt", "predictions CSV", None),
    (("export", "m.safetensors", "--format", "c"), "notes.txt", "C file written by fastnn",
     None),
    (("export", "m.safetensors", "--format", "onnx"), "notes.txt", "ONNX model", "onnx"),
    (("plot", "h.json"), "notes.png", "PNG image", "matplotlib"),
    (("eval", "m.safetensors", "data.npz", "--confusion-png", "notes.svg"), None, "SVG image",
     "matplotlib"),
], fast=[0, 2, 5]))
def test_a_file_of_another_kind_is_replaced_only_with_force(work, args, out, kind, package):
    if package:
        needs(package)
    for name in ("notes.txt", "notes.png", "notes.svg"):
        (work / name).write_text("my notes, not a fastnn output\n")
    full = args + (("-o", out) if out else ())
    refused(work, *full, message=f"refusing to replace .*notes.* it is not a {kind}",
            codes=(1,))
    proc = run_fastnn(*full, "--force", cwd=work)
    assert proc.returncode == 0, proc.stderr
    target = work / (out or next(n for n in ("notes.txt", "notes.svg") if n in " ".join(full)))
    assert "my notes" not in target.read_bytes().decode("utf-8", "replace")


@pytest.mark.slow
def test_outputs_of_the_same_kind_are_replaced_and_a_symlink_stays_a_link(work):
    needs("matplotlib")
    (work / "runs").mkdir()
    os.replace(work / "m.safetensors", work / "runs" / "m.safetensors")
    os.symlink("runs/m.safetensors", work / "latest.safetensors")
    proc = run_fastnn(*TRAIN, "-o", "latest.safetensors", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(work / "latest.safetensors") == "runs/m.safetensors"
    assert fastnn.load(work / "runs" / "m.safetensors").epochs_trained == 2
    for args in (("predict", "runs/m.safetensors", "data.npz", "-o", "p.csv"),
                 ("predict", "runs/m.safetensors", "data.npz", "-o", "p.csv", "--proba"),
                 ("plot", "h.json", "-o", "c.png"), ("plot", "h.json", "-o", "c.png")):
        proc = run_fastnn(*args, cwd=work)
        assert proc.returncode == 0, proc.stderr
    assert not [p for p in work.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_download_checks_every_target_before_fetching(work):
    (work / "mnist").mkdir()
    os.mkfifo(work / "mnist" / "t10k-labels-idx1-ubyte.gz")
    (work / "mnist" / "train-images-idx3-ubyte.gz").write_text("my notes")
    # the mirror does not exist: a refusal must come before any fetch
    for args in [(), ("--force",)]:
        refused(work, "download", "mnist", "--dir", "mnist", "--mirror", "http://127.0.0.1:9/",
                *args, message="FIFO|not a gzip file", codes=(1,))


# ----------------------------------------- runs that do not finish keep older files

@pytest.mark.slow
def test_divergence_never_replaces_an_existing_model(work):
    X = np.random.default_rng(0).normal(size=(200, 4))
    np.savez(work / "wild.npz", X=X, y=np.random.default_rng(1).normal(size=(200, 2)) * 100)
    # Nielsen's recipe: the tabular one's l2 and early stopping would calm the run
    args = ("train", "wild.npz", "--layers", "4,16,16,2", "--output", "identity",
            "--optimizer", "momentum", "--lr", "10", "--epochs", "10", "--seed", "0",
            "--recipe", "nielsen")
    first = run_fastnn(*args, "-o", "wild.safetensors", cwd=work)
    assert first.returncode == 1 and "diverged" in first.stderr
    before = (work / "wild.safetensors").read_bytes()   # its last good epoch
    again = run_fastnn(*args, "-o", "wild.safetensors", cwd=work)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert (work / "wild.safetensors").read_bytes() == before
    assert "wild.safetensors, which existed before this run, is unchanged" in again.stderr
    assert fastnn.load(work / "wild.checkpoint.safetensors").epochs_trained >= 1


def start_training(work, *args):
    proc = subprocess.Popen([sys.executable, "-m", "fastnn", *args], cwd=work, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith("Task: "), proc.stderr.read()
    assert proc.stdout.readline().startswith("Network("), proc.stderr.read()
    return proc


@pytest.mark.slow
def test_ctrl_c_never_replaces_an_existing_model_and_says_how_to_resume(work):
    before = (work / "m.safetensors").read_bytes()
    proc = start_training(work, *TRAIN[:-4], "--hidden", "8", "--batch-size", "1", "--epochs",
                          "100000", "--checkpoint-every", "1", "-o", "m.safetensors")
    proc.stdout.readline()
    proc.stdout.readline()                      # two epochs done: two checkpoints
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert (work / "m.safetensors").read_bytes() == before
    saved = fastnn.load(work / "m.checkpoint.safetensors")
    assert saved.epochs_trained >= 2
    command = re.search(r"continue with: fastnn (.*)$", err.strip()).group(1)
    assert command == "train --resume m.checkpoint.safetensors -o m.safetensors"
    done = run_fastnn(*command.split(), "--epochs", "1", cwd=work)
    assert done.returncode == 0, done.stderr
    assert fastnn.load(work / "m.safetensors").epochs_trained == saved.epochs_trained + 1
    assert not (work / "m.checkpoint.safetensors").exists()     # consumed
    assert not [p for p in work.iterdir() if p.name.endswith(TEMP_SUFFIX)]


@pytest.mark.slow
def test_resume_in_place_keeps_the_file_until_the_run_finishes(work):
    before = (work / "m.safetensors").read_bytes()
    proc = start_training(work, "train", "--resume", "m.safetensors", "--batch-size", "1",
                          "--epochs", "100000")
    proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert (work / "m.safetensors").read_bytes() == before
    assert "--resume m.checkpoint.safetensors -o m.safetensors" in err
    fastnn.load(work / "m.checkpoint.safetensors")


@pytest.mark.slow
def test_stale_temp_files_are_removed_by_the_next_write(work):
    # a writer killed with SIGKILL in the middle of a save
    proc = start_training(work, *TRAIN[:-4], "--hidden", "8", "--epochs", "100000",
                          "--checkpoint-every", "1", "-o", "new.safetensors")
    time.sleep(0.5)
    proc.kill()
    proc.communicate()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = work / f".new.safetensors.{dead}.x1y2z3{TEMP_SUFFIX}"
    stale.write_bytes(b"half a model")
    done = run_fastnn(*TRAIN, "-o", "new.safetensors", cwd=work)
    assert done.returncode == 0, done.stderr
    assert not [p.name for p in work.iterdir() if p.name.endswith(TEMP_SUFFIX)]


# --------------------------------------------------- options (issue 10 §3)

# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_absurd_numbers(work):
    # a batch beyond the data is one batch of all of it, up to the largest
    # count a model file can hold (and be read back with)
    ok = run_fastnn(*TRAIN, "--batch-size", 2 ** 62, "-o", "big.safetensors", cwd=work)
    assert ok.returncode == 0, ok.stderr
    assert fastnn.load(work / "big.safetensors").optimizer_state.steps == 2   # one batch an epoch
    for option, value in [("--batch-size", 2 ** 63), ("--epochs", 10 ** 30),
                          ("--limit", 10 ** 30), ("--seed", 2 ** 1024 + 1),
                          ("--early-stopping", 2 ** 64)]:
        extra = ("--val-split", "0.2") if option == "--early-stopping" else ()
        refused(work, *TRAIN, option, value, *extra, "-o", "x.safetensors",
                message="must be an integer >= [01] and <= 2[*][*]", codes=(1,))
    for hidden in ("10000000", "100000,100000"):
        proc = refused(work, "train", "data.npz", "--hidden", hidden, "-o", "x.safetensors",
                       message="needs .* of memory is available", codes=(1,))
        assert "Traceback" not in proc.stderr
    refused(work, "train", "data.npz", "--layers", "16,3000000000,3",
            message="needs .* of memory is available", codes=(1,))
    refused(work, *TRAIN, "--lr", "inf", message="finite", codes=(1, 2))
    refused(work, *TRAIN, "--optimizer", "momentum", "--momentum", "nan", message="finite",
            codes=(1, 2))


# --------------------------------------- a run never writes a model that does not load

def _hostile_csvs(work):
    """CSVs whose runs once wrote models fastnn refused (issue 24 §1)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = np.arange(40) % 3
    huge = X.copy()
    huge[:20, 1], huge[20:, 1] = 1.7e308, -1.7e308
    for name, cols, header in [("huge.csv", np.column_stack([huge, y]), "a,b,c,label"),
                               ("target.csv", np.column_stack([X, rng.normal(size=40)]),
                                "a,b,c," + "t" * 300),
                               ("label.csv", np.column_stack([X, y]), "a,b,c," + "l" * 5000)]:
        np.savetxt(work / name, cols, fmt="%.17g", delimiter=",", header=header, comments="")


@pytest.mark.parametrize("args, message", [
    (("data.npz", "--layers", "16,12000"),
     r"has 3 classes \(0, 1, 2\), but the output layer has 12,000 units.*at most 10,000"),
    (("huge.csv", "--scale", "minmax"), "feature 1 spans more than float64 holds"),
    (("target.csv", "--task", "regression"), "target column's name has 300 characters"),
    (("label.csv", "--label-col", "l" * 5000), "could not be saved .*label_col must be"),
    (("data.npz", "--lr-schedule", "step:every=" + "9" * 30), "every must be an integer"),
])
def test_a_run_whose_model_would_not_load_is_refused_and_the_old_model_kept(work, args,
                                                                           message):
    _hostile_csvs(work)
    for more in ((), ("--checkpoint-every", "1")):
        proc = refused(work, "train", *args, "--epochs", "1", *more, "-o", "m.safetensors",
                       message=message, codes=(1,))
        assert "Epoch" not in proc.stdout        # refused before any training
    fastnn.load(work / "m.safetensors")


def test_a_model_that_would_not_load_is_never_written_over_a_good_one(work):
    # past the run's own checks (set by hand here), the writer itself refuses
    good = (work / "m.safetensors").read_bytes()
    net = fastnn.load(work / "m.safetensors")
    net.preprocessing.classes = ["x" * 300, "b", "c"]
    for path in ("m.safetensors", "m.checkpoint.safetensors"):
        with pytest.raises(fastnn.ModelFileError, match="nothing was written.*classes"):
            net.save(work / path)
    assert (work / "m.safetensors").read_bytes() == good
    assert not (work / "m.checkpoint.safetensors").exists()
    assert not [p for p in work.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def history(work, name):
    return json.loads((work / name).read_text())


@pytest.mark.slow
def test_resume_applies_a_new_rate_and_refuses_what_would_make_another_run(work):
    proc = run_fastnn("train", "--resume", "m.safetensors", "--epochs", "1", "--lr", "0.1",
                      "--history", "more.json", "-o", "more.safetensors", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert history(work, "more.json")["lr"] == [0.1]
    assert fastnn.load(work / "more.safetensors").training_record["lr"] == 0.1
    for args, flag in [(("--optimizer", "adam"), "--optimizer"),
                       (("--lr-schedule", "step:every=2,factor=0.5"), "--lr-schedule"),
                       (("--val-split", "0.2"), "--val-split"),
                       (("--limit", "100"), "--limit"),
                       (("data.csv",), "DATA"),
                       (("--no-shuffle",), "--no-shuffle")]:
        refused(work, "train", "--resume", "m.safetensors", *args,
                message=f"{flag} is fixed by the model file when resuming", codes=(1,))
    # the same values are not a change
    proc = run_fastnn("train", "data.npz", "--resume", "m.safetensors", "--optimizer", "sgd",
                      "--epochs", "1", "-o", "same.safetensors", cwd=work)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_label_col_reaches_val_test_eval_and_predict(work):
    X, y = blobs(300, seed=3)
    write_csv(work / "first.csv", X, y, label_first=True)
    write_csv(work / "val.csv", *blobs(90, seed=4), label_first=True)
    proc = run_fastnn("train", "first.csv", "--label-col", "label", "--val", "val.csv",
                      "--test", "val.csv", "--hidden", "8", "--epochs", "5", "--lr", "1",
                      "--seed", "0", "--history", "lc.json", "-o", "lc.safetensors", cwd=work)
    assert proc.returncode == 0, proc.stderr
    record = history(work, "lc.json")
    assert record["val_accuracy"][-1] > 0.8 and record["test_accuracy"][-1] > 0.8
    # eval and predict take the model's label column: the label is not a feature
    implicit = run_fastnn("eval", "lc.safetensors", "val.csv", "--json", cwd=work)
    explicit = run_fastnn("eval", "lc.safetensors", "val.csv", "--label-col", "1", "--json",
                          cwd=work)
    assert implicit.returncode == explicit.returncode == 0, implicit.stderr
    assert json.loads(implicit.stdout)["accuracy"] == json.loads(explicit.stdout)["accuracy"]
    np.savetxt(work / "features.csv", X, fmt="%d", delimiter=",")
    with_label = run_fastnn("predict", "lc.safetensors", "first.csv", cwd=work)
    features = run_fastnn("predict", "lc.safetensors", "features.csv", cwd=work)
    assert with_label.returncode == features.returncode == 0, with_label.stderr
    assert with_label.stdout == features.stdout


@pytest.mark.slow
def test_plot_writes_the_format_its_suffix_names(work):
    needs("matplotlib")
    for name, magic in [("c.svg", b"<?xml"), ("c.pdf", b"%PDF-"), ("c.png", b"\x89PNG")]:
        proc = run_fastnn("plot", "h.json", "-o", name, cwd=work)
        assert proc.returncode == 0, proc.stderr
        assert (work / name).read_bytes().startswith(magic)
    refused(work, "plot", "h.json", "-o", "c.gif", message="cannot tell the picture format",
            codes=(1,))


# --------------------------------------------------------- the Python API

def test_the_api_raises_only_fastnn_errors(tmp_path, stock):
    from fastnn.datasets import download_mnist
    from fastnn.export import export
    from fastnn.plot import plot_history

    net = fastnn.load(stock / "m.safetensors")
    (tmp_path / "notes.txt").write_text("mine")
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "t10k-labels-idx1-ubyte.gz")
    model = tmp_path / "m.safetensors"
    net.save(model)
    calls = [lambda: net.save(tmp_path / "notes.txt"),
             lambda: net.save(tmp_path / "fifo"),
             lambda: net.save(tmp_path),
             lambda: net.save(tmp_path / "no" / "m.safetensors"),
             lambda: export(model, model, "onnx"),
             lambda: export(net, tmp_path / "notes.txt", "c"),
             lambda: plot_history(stock / "h.json", tmp_path / "x.gif"),
             lambda: plot_history(tmp_path / "h.png", tmp_path / "h.png"),
             lambda: download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"]),
             lambda: fastnn.Network([10, 10 ** 10, 10])]
    (tmp_path / "h.png").write_bytes((stock / "h.json").read_bytes())
    for call in calls:
        with pytest.raises(FastnnError):
            call()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ResourceError, match="needs .* of memory is available"):
        fastnn.Network([10, 10 ** 10, 10])


def test_two_threads_fitting_one_network_get_a_clear_error():
    X, y = blobs(20000)
    net = fastnn.Network([16, 64, 3], seed=0)
    started, errors = threading.Event(), []

    def first():
        net.fit(X, y, epochs=3, batch_size=1, progress=lambda *a: started.set())

    t = threading.Thread(target=first)
    t.start()
    started.wait(60)
    with pytest.raises(NetworkBusy, match="being trained by another fit call"):
        net.fit(X, y, epochs=1)
    t.join()
    assert net.epochs_trained == 3 and not errors
    net.fit(X[:100], y[:100], epochs=1)          # free again afterwards


# ------------------------------------------- pictures and reports (issue 24 §3, §4)
# Names are data, not markup; every picture and report is bounded. Each run is a
# real process under conftest's 3 GiB address-space limit, within 60 s; a run
# that succeeds writes nothing on stderr (no warning, no traceback).

MATH = r"$\frac{$"        # matplotlib's mathtext parser raises on it


def finished(work, *args):
    proc = run_fastnn(*args, cwd=work, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    return proc


def text_csv(path, names, label_first=False, n=60, seed=0):
    """A CSV of 3 features and a text label column with the given class names."""
    rng = np.random.default_rng(seed)
    header = ["a", "b", "c"]
    lines = []
    for i in range(n):
        features = [f"{v:.4f}" for v in rng.normal(size=3) + 3 * (i % len(names))]
        label = '"' + names[i % len(names)].replace('"', '""') + '"'
        lines.append(",".join([label, *features] if label_first else [*features, label]))
    header = ["species", *header] if label_first else [*header, "species"]
    path.write_text(",".join(header) + "\n" + "\n".join(lines) + "\n")


@pytest.fixture
def mpl():
    return needs("matplotlib")


# draws many pictures, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_names_and_titles_with_math_markup_are_drawn_as_text(work, mpl):
    text_csv(work / "math.csv", [MATH, "a#b", "$x$"])
    finished(work, "train", "math.csv", "--label-col", "species", "--epochs", "1",
             "-o", "math.safetensors", "-q")
    finished(work, "eval", "math.safetensors", "math.csv", "--confusion-png", "c.png")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    np.savetxt(work / "reg.csv", np.column_stack([X, X @ [1, 2, 3]]), fmt="%.6f",
               delimiter=",", header="a,b,c," + MATH + "x", comments="")
    finished(work, "train", "reg.csv", "--task", "regression", "--epochs", "1",
             "-o", "reg.safetensors", "-q")
    finished(work, "eval", "reg.safetensors", "reg.csv", "--scatter-png", "s.png")
    run = history(work, "h.json")
    run["stopped"] = MATH
    run[MATH] = [1, 2, 3]
    (work / "hm.json").write_text(json.dumps(run))
    finished(work, "plot", "hm.json", "-o", "hm.png", "--title", MATH)
    for picture in ("c.png", "s.png", "hm.png"):
        assert (work / picture).read_bytes().startswith(b"\x89PNG")


def capture(monkeypatch):
    """The figures fastnn.plot saves, instead of writing them."""
    import fastnn.plot

    figures = []

    def save(fig, canvas_class, *args):
        canvas_class(fig).draw()       # inside fastnn's drawing block, as _save would
        figures.append(fig)

    monkeypatch.setattr(fastnn.plot, "_save", save)
    return figures


def test_every_text_of_a_picture_is_plain(mpl, tmp_path, monkeypatch):
    from matplotlib.text import Text

    from fastnn.plot import plot_confusion, plot_history

    figures = capture(monkeypatch)
    plot_confusion([[3, 1], [0, 2]], tmp_path / "c.png", labels=[MATH, "b\nc"], title=MATH)
    plot_history({"loss": [1.0, 0.5], "stopped": MATH}, tmp_path / "h.png", title=MATH)
    for fig in figures:
        texts = fig.findobj(Text)           # drawn: ticks included
        assert texts and not any(t.get_parse_math() or t.get_usetex() for t in texts)
        assert MATH in {t.get_text() for t in texts}
        assert not any("\n" in t.get_text() for t in texts)       # escaped: b\nc
        # and no tick label is mathtext either (a log colour bar's are by default)
        assert not any("mathdefault" in t.get_text() for t in texts)


def test_a_history_of_huge_losses_and_20000_rate_changes_is_drawn_bounded(work, mpl,
                                                                         monkeypatch):
    from matplotlib.lines import Line2D

    from fastnn.plot import MAX_CURVE_POINTS, MAX_LR_MARKS, plot_history

    n = 20_000
    run = {"epochs": n, "loss": [1e308 if i % 3 == 0 else -1e308 if i % 3 == 1 else 0.5
                                 for i in range(n)],
           "accuracy": [i / n for i in range(n)], "lr": [0.1, 0.2] * (n // 2), "best_epoch": 7}
    (work / "big.json").write_text(json.dumps(run))
    finished(work, "plot", "big.json", "-o", "big.png")
    (work / "huge.json").write_text(json.dumps({"loss": [1e308, -1e308, 0.5]}))
    finished(work, "plot", "huge.json", "-o", "huge.png")
    figures = capture(monkeypatch)
    plot_history(work / "big.json", work / "x.png")
    lines = figures[0].findobj(Line2D)
    assert max(len(line.get_xdata()) for line in lines) <= MAX_CURVE_POINTS
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert len(dashed) <= MAX_LR_MARKS * 2
    assert "19,999 changes, not marked" in figures[0].get_suptitle()
    assert "drawn at the edge" in figures[0].get_suptitle()


def conv_model(path, channels, filters, kernel=3):
    from fastnn.layers import Conv2D

    fastnn.Network([(kernel + 1, kernel + 1, channels), Conv2D(filters, kernel), 2],
                   seed=0).save(path)


# draws many pictures, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_show_filters_draws_a_bounded_number_of_cells(work, mpl, monkeypatch):
    from matplotlib.image import AxesImage

    from fastnn.plot import MAX_CHANNELS, MAX_FILTERS, plot_filters

    conv_model(work / "wide.safetensors", channels=100, filters=100)
    proc = finished(work, "show", "wide.safetensors", "--filters", "f.png")
    assert f"Wrote {MAX_FILTERS} filters" in proc.stdout
    conv_model(work / "big.safetensors", channels=1, filters=3, kernel=200)
    finished(work, "show", "big.safetensors", "--filters", "g.png")
    figures = capture(monkeypatch)
    assert plot_filters(fastnn.load(work / "wide.safetensors"), work / "x.png") == MAX_FILTERS
    plot_filters(fastnn.load(work / "big.safetensors"), work / "y.png")
    wide, big = figures
    assert len(wide.findobj(AxesImage)) == 1         # one image, however many cells
    title = " ".join(wide.get_suptitle().split())     # wrapped
    assert (f"the first {MAX_FILTERS} of 100 filters" in title
            and f"their first {MAX_CHANNELS} of 100 input channels" in title)
    assert "every 7th weight" in " ".join(big.get_suptitle().split())
    refused(work, "show", "m.safetensors", "data.npz", "--misclassified", "m.png",
            "--count", "101", message=r"--count.*<= ?100|100", codes=(2,))


@pytest.fixture(scope="module")
def classes_10000(tmp_path_factory):
    """A 10,000-class model (the most fastnn builds) with names that are markup,
    and 3,000 rows of its data as a CSV."""
    from fastnn.preprocessing import Preprocessing

    d = tmp_path_factory.mktemp("k10000")
    k = 10_000
    names = [f"c{i}{MATH}#" for i in range(k)]
    net = fastnn.Network([4, k], output="softmax", loss="cross_entropy", seed=0)
    net.preprocessing = Preprocessing(task="classification", classes=names)
    net.save(d / "k.safetensors")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4))
    with open(d / "k.csv", "w") as f:
        f.write("a,b,c,d,label\n")
        for row, c in zip(X, rng.integers(0, k, len(X))):
            f.write(",".join(f"{v:.4f}" for v in row) + f",{names[c]}\n")
    return d


@pytest.mark.parametrize("args", [(), ("--json",), ("--confusion-png", "c.png")])
def test_reports_at_10000_classes_stay_small(classes_10000, args):
    from fastnn.metrics import MAX_MATRIX_CLASSES, SUMMARY_CELLS

    proc = finished(classes_10000, "eval", "k.safetensors", "k.csv", *args)
    # per-class rows and the summary: O(classes), never the 10^8 cells
    assert len(proc.stdout) < 3_000_000
    if args == ("--json",):
        report = json.loads(proc.stdout)
        assert "confusion_matrix" not in report and len(report["per_class"]) == 10_000
        summary = report["confusion_summary"]
        assert summary["classes"] == 10_000 and len(summary["largest"]) == SUMMARY_CELLS
        assert summary["misclassified"] == 3000 - round(report["accuracy"] * 3000)
        assert summary["largest"][0]["true_name"].endswith(MATH + "#")
    else:
        assert f"10,000 classes, more than {MAX_MATRIX_CLASSES} to print" in proc.stdout
    if args and args[0] == "--confusion-png":
        assert (classes_10000 / "c.png").read_bytes().startswith(b"\x89PNG")


def test_a_report_is_within_its_memory_bound(classes_10000):
    # 10^8 cells of int64 are 763 MiB: a process limited to 1 GiB of address
    # space (Python, NumPy, OpenBLAS and matplotlib take ~600 MiB of it) must
    # not build them, nor the 3,000 x 10,000 outputs at once
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from fastnn.cli import main; sys.argv = ['fastnn'] + sys.argv[1:]; main()")
    for args in ((), ("--json",), ("--confusion-png", "m.png")):
        # one thread: each thread's stack and malloc arena count in the address space
        proc = subprocess.run([sys.executable, "-c", code, "eval", "k.safetensors", "k.csv",
                               "--threads", "1", *args], cwd=classes_10000, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "OPENBLAS_NUM_THREADS":
                                                          "1", "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]


def test_reports_under_the_bound_keep_the_whole_matrix():
    # scikit-learn is the oracle: its confusion matrix and per-class scores
    metrics = needs("sklearn.metrics")
    from fastnn.metrics import (MAX_MATRIX_CLASSES, class_errors, classification_report,
                                confusion_matrix, largest_errors, most_confused)

    rng = np.random.default_rng(0)
    for k in (3, MAX_MATRIX_CLASSES, MAX_MATRIX_CLASSES + 1):
        truth, predicted = rng.integers(0, k, 5000), rng.integers(0, k, 5000)
        predicted[:2500] = truth[:2500]
        full = metrics.confusion_matrix(truth, predicted, labels=np.arange(k))
        _, _, f1, support = metrics.precision_recall_fscore_support(
            truth, predicted, labels=np.arange(k), zero_division=0)
        report = classification_report(truth, predicted, k)
        assert [row["f1"] for row in report["per_class"]] == pytest.approx(list(f1))
        assert [row["support"] for row in report["per_class"]] == list(support)
        assert report["accuracy"] == metrics.accuracy_score(truth, predicted)
        if k <= MAX_MATRIX_CLASSES:
            assert report["confusion_matrix"] == full.tolist()
            assert "confusion_summary" not in report
            continue
        assert "confusion_matrix" not in report
        off = full - np.diag(np.diag(full))
        cells = largest_errors(truth, predicted)
        assert [c for *_, c in cells] == sorted(off.ravel(), reverse=True)[:len(cells)]
        assert all(full[i, j] == c for i, j, c in cells)
        summary = report["confusion_summary"]
        assert summary["misclassified"] == off.sum()
        assert [(c["true"], c["predicted"], c["samples"]) for c in summary["largest"]] == cells
        # the part of the matrix among the classes with the most errors
        errors = off.sum(axis=0) + off.sum(axis=1)
        assert (class_errors(truth, predicted, k) == errors).all()
        keep = most_confused(errors, 30)
        assert sorted(errors[keep], reverse=True) == sorted(errors, reverse=True)[:30]
        assert (confusion_matrix(truth, predicted, k, classes=keep)
                == full[np.ix_(keep, keep)]).all()


# ----------------------------------------------------- fuzzing the writer (§1)
# Random options and data into `fastnn train`: a run that exits 0 wrote a model
# that fastnn loads; a refusal is one line and leaves the old model as it was.

WRITER_EXAMPLES = int(os.environ.get("FASTNN_WRITER_EXAMPLES", "30"))
# the same examples on every run (a failure in CI repeats), unless
# FASTNN_WRITER_RANDOM=1 asks for new ones (a long fuzzing run)
WRITER_RANDOM = os.environ.get("FASTNN_WRITER_RANDOM") == "1"


def _writer_case(draw):
    from hypothesis import strategies as st

    from fastnn.activations import ACTIVATIONS
    from fastnn.losses import LOSSES
    from fastnn.optimizers import OPTIMIZERS

    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                   min_size=1, max_size=draw(st.sampled_from([8, 40, 300])))
    n, features = draw(st.integers(6, 30)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["ints", "names", "targets"]))
    magnitude = draw(st.sampled_from([1.0, 1e-300, 1e30, 1e39, 1e300]))
    X = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).normal(size=(n, features))
    X = X * magnitude
    if kind == "ints":
        k = draw(st.integers(2, 5))
        y = [str(i % k) for i in range(n)]
    elif kind == "names":
        names = draw(st.lists(text, min_size=2, max_size=4, unique=True))
        y = [names[i % len(names)] for i in range(n)]
    else:
        y = [repr(float(v) * draw(st.sampled_from([1.0, 1e50, 1e300]))) for v in X[:, 0] + 1]
    columns = [draw(text) for _ in range(features)] + [draw(text)]
    position = draw(st.sampled_from(["first", "last"]))
    options = ["--epochs", str(draw(st.integers(1, 2))), "--seed", "0", "-q"]
    options += draw(st.sampled_from([[], ["--hidden", str(draw(st.integers(1, 12)))],
                                     ["--layers", f"{features},{draw(st.integers(1, 9))},"
                                                  f"{draw(st.integers(1, 12000))}"]]))
    for flag, choices in [("--activation", sorted(ACTIVATIONS)), ("--output", sorted(ACTIVATIONS)),
                          ("--loss", sorted(LOSSES)), ("--optimizer", sorted(OPTIMIZERS)),
                          ("--scale", ["standard", "minmax", "none", "auto", "pixels"]),
                          ("--task", ["classification", "regression"]),
                          ("--dtype", ["float32", "float64"]),
                          ("--lr-schedule", ["step:every=1,factor=0.5", "cosine", "plateau",
                                             "step:every=" + "9" * 25]),
                          ("--lr", ["0.1", "1e-300", "1e30"]), ("--batch-size", ["1", "7"]),
                          ("--dropout", ["0.5"]), ("--l2", ["0.1"]), ("--checkpoint-every", ["1"])]:
        if draw(st.booleans()):
            options += [flag, draw(st.sampled_from(choices))]
    if draw(st.booleans()):
        options += ["--val-split", "0.3"] + (["--restore-best"] if draw(st.booleans()) else [])
    if draw(st.booleans()):
        options += ["--label-col", columns[-1]]
    return X, y, columns, position, options


def test_fuzzed_runs_of_train_write_only_models_that_load(tmp_path, stock):
    import csv

    from click.testing import CliRunner

    from fastnn.cli import main

    needs("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = (stock / "m.safetensors").read_bytes()
    codes = []

    @settings(max_examples=WRITER_EXAMPLES, deadline=None, database=None,
              derandomize=not WRITER_RANDOM, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        X, y, columns, position, options = data.draw(st.composite(_writer_case)())
        model = tmp_path / "m.safetensors"
        model.write_bytes(good)
        with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            header = [columns[-1], *columns[:-1]] if position == "first" else columns
            writer.writerow(header)
            for row, label in zip(X, y):
                cells = [repr(float(v)) for v in row]
                writer.writerow([label, *cells] if position == "first" else [*cells, label])
        result = CliRunner().invoke(main, ["train", str(tmp_path / "d.csv"), *options,
                                           "-o", str(model)])
        codes.append(result.exit_code)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            options, result.output[-2000:])
        if os.environ.get("FASTNN_WRITER_LOG"):
            print(result.exit_code, options, result.output.strip()[:150])
        if result.exit_code == 0:
            net = fastnn.load(model)          # what train wrote, load reads
            pre = net.preprocessing
            if pre is None or pre.columns is None:
                # numbers only (a text feature column is one-hot encoded, wider)
                assert net.sizes[0] == X.shape[1]
            for command in (["info", str(model)],
                            ["predict", str(model), str(tmp_path / "d.csv")]):
                used = CliRunner().invoke(main, command)
                assert used.exit_code == 0, (options, command[0], used.output[-2000:])
        else:
            lines = result.output.strip().splitlines()
            assert result.exit_code in (1, 2) and 1 <= len(lines) <= 2, (options, result.output)
            assert model.read_bytes() == good, options
        checkpoint = tmp_path / "m.checkpoint.safetensors"
        if checkpoint.exists():
            fastnn.load(checkpoint)
            checkpoint.unlink()

    run()
    # both kinds of outcome were tried: runs that wrote a model and refusals
    assert 0 in codes and set(codes) - {0}, codes
