"""The output policy (fastnn.files): atomic writes, refusals, symlinks, temp files."""
import os
import signal
import stat
import subprocess
import sys

import pytest

from fastnn import Network
from fastnn.exceptions import FastnnError, ModelFileError, OutputError
from fastnn.files import (TEMP_SUFFIX, atomic_write, check_distinct, check_output, same_file,
                          sibling, stale_temps, starting_with)
from fastnn.io import MODEL_FILE

TEXT = starting_with("text starting with 'ok'", b"ok")


def temps(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "new.safetensors"

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b"data")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_a_write_takes_effect_once_the_file_is_complete(tmp_path, monkeypatch):
    path = tmp_path / "m.bin"
    real_fsync = os.fsync

    def fsync_with_a_ctrl_c(fd):
        os.kill(os.getpid(), signal.SIGINT)   # as if the user pressed Ctrl-C now
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_with_a_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b"all of it")
    assert path.read_bytes() == b"all of it" and temps(tmp_path) == []


def test_written_files_get_the_umask_mode_or_keep_their_own(tmp_path):
    # mkstemp's 0600 must not leak out: others may need to read a model or a CSV
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new", b"data")
        assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o640
        (tmp_path / "shared").write_bytes(b"old")
        os.chmod(tmp_path / "shared", 0o664)
        atomic_write(tmp_path / "shared", b"new")
        assert stat.S_IMODE(os.stat(tmp_path / "shared").st_mode) == 0o664
    finally:
        os.umask(old)


def test_non_regular_files_are_refused_and_left_alone(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    device = tmp_path / "null"
    os.symlink("/dev/null", device)
    for path, what in [(fifo, "a FIFO"), (device, "a character device"),
                       (tmp_path, "a directory")]:
        with pytest.raises(OutputError, match=what):
            atomic_write(path, b"data")
        with pytest.raises(OutputError, match=what):
            check_output(path, force=True)       # force never allows these
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and os.readlink(device) == "/dev/null"
    assert temps(tmp_path) == []


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "m.bin"
    target.write_bytes(b"ok old")
    link = tmp_path / "latest.bin"
    os.symlink("real/m.bin", link)
    out = atomic_write(link, b"ok new", kind=TEXT)
    assert out.target == str(target) and out.existed
    assert link.is_symlink() and os.readlink(link) == "real/m.bin"
    assert target.read_bytes() == b"ok new"
    # the kind check applies to the file the link points to
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="not a text"):
        atomic_write(link, b"ok", kind=TEXT)
    assert target.read_bytes() == b"precious"


def test_dangling_and_looping_symlinks_are_refused(tmp_path):
    os.symlink(tmp_path / "nowhere" / "x", tmp_path / "dangling")
    with pytest.raises(OutputError, match="symlink to .* which does not exist"):
        atomic_write(tmp_path / "dangling", b"data")
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write(tmp_path / "a", b"data")
    assert not (tmp_path / "nowhere").exists() and temps(tmp_path) == []


def test_a_file_of_another_kind_needs_force_and_an_empty_one_does_not(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(OutputError, match="refusing to replace .*notes.txt: it is not a text"):
        atomic_write(notes, b"ok", kind=TEXT)
    assert notes.read_text() == "my notes"
    atomic_write(notes, b"ok forced", kind=TEXT, force=True)
    assert notes.read_bytes() == b"ok forced"
    empty = tmp_path / "empty"
    empty.touch()
    atomic_write(empty, b"ok", kind=TEXT)
    assert empty.read_bytes() == b"ok"


def test_network_save_refuses_to_replace_what_is_not_a_model(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("1,2,3\n")
    net = Network([2, 2], seed=0)
    with pytest.raises(ModelFileError, match="not a fastnn model"):
        net.save(data)
    assert data.read_text() == "1,2,3\n"
    net.save(tmp_path / "m.safetensors")
    net.save(tmp_path / "m.safetensors")     # a model replaces a model
    net.save(data, force=True)
    assert MODEL_FILE.test(data.read_bytes())


def test_missing_and_unwritable_directories_are_found_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match="directory .*nodir does not exist"):
        check_output(tmp_path / "nodir" / "m.safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="Not a directory"):
        check_output(tmp_path / "file" / "m.safetensors")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # (the tests may run as root, whom a read-only mode does not stop)
    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(OutputError, match="Permission denied"):
        check_output(tmp_path / "m.safetensors")


def test_the_probe_leaves_no_file(tmp_path):
    out = check_output(tmp_path / "m.safetensors", MODEL_FILE)
    assert not out.existed and list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".m.bin.{dead_pid}.abc123{TEMP_SUFFIX}"
    stale.write_bytes(b"half a model")
    mine = tmp_path / f".m.bin.{os.getpid()}.def456{TEMP_SUFFIX}"   # a write in progress
    mine.write_bytes(b"busy")
    other = tmp_path / f".other.bin.{dead_pid}.abc123{TEMP_SUFFIX}"  # another file's
    other.write_bytes(b"x")
    assert stale_temps(tmp_path / "m.bin") == [str(stale)]
    atomic_write(tmp_path / "m.bin", b"new")
    assert not stale.exists() and mine.exists() and other.exists()
    assert (tmp_path / "m.bin").read_bytes() == b"new"


def test_same_file_sees_through_links(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("1\n")
    os.link(a, tmp_path / "hard.csv")
    os.symlink(a, tmp_path / "soft.csv")
    assert same_file(a, tmp_path / "hard.csv") and same_file(a, tmp_path / "soft.csv")
    assert same_file(tmp_path / "new", tmp_path / "sub" / ".." / "new")
    assert not same_file(a, tmp_path / "new")
    with pytest.raises(OutputError, match="same file as DATA"):
        check_distinct([("-o", tmp_path / "hard.csv")], [("DATA", a)])
    with pytest.raises(OutputError, match="are the same file"):
        check_distinct([("-o", tmp_path / "x"), ("--history", tmp_path / "." / "x")])
    check_distinct([("-o", tmp_path / "x"), ("--history", tmp_path / "y")], [("DATA", a)])


def test_sibling_names():
    assert sibling("runs/m.safetensors", "checkpoint") == "runs/m.checkpoint.safetensors"
    assert sibling("model", "checkpoint") == "model.checkpoint"
    assert sibling(".hidden", "checkpoint") == ".hidden.checkpoint"


def test_every_refusal_is_a_fastnn_error(tmp_path):
    for call in (lambda: atomic_write(tmp_path, b"x"),
                 lambda: atomic_write("", b"x"),
                 lambda: Network([2, 2]).save(tmp_path / "no" / "m")):
        with pytest.raises(FastnnError):
            call()
