"""Writing files without destroying anything: the output policy of fastnn.

Every file fastnn writes (model files, checkpoints, histories, predictions,
exports, pictures, downloads) goes through this module:

- `check_output` resolves an output path and refuses what must not be
  written: a directory, a FIFO, a device or any other file that is not a
  regular file; a symlink that points nowhere; a missing or unwritable
  directory (proved by creating and removing a temporary file there); and
  an existing file that does not hold the kind of data being written (a
  `FileKind`: a text file where a model goes), unless ``force``. An empty
  file holds nothing and may always be replaced.
- `check_distinct` refuses an output that is the same file as an input or
  as another output (through symlinks and hard links too).
- `atomic_write` writes through a temporary file in the target's directory,
  fsync and a rename, so that readers see the old file or the new one and
  never half of one; Ctrl-C is held back until the file is complete.

A symlink is followed: the file it points to is replaced (the checks apply
to that file, the temporary file goes beside it) and the link stays a link.

Temporary files are named ``.NAME.PID.RANDOM.fastnn-tmp`` beside NAME. One
left behind by a process that died (SIGKILL, power loss) is removed by the
next write to NAME.
"""
import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

from fastnn.exceptions import OutputError
from fastnn.interrupts import Deferred

TEMP_SUFFIX = ".fastnn-tmp"
# How much of an existing file a FileKind test may read.
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class FileKind:
    """A kind of file fastnn writes.

    Attributes
    ----------
    name : str
        How messages call it ("fastnn model", "PNG image").
    test : callable
        ``test(head) -> bool``: whether an existing file whose first bytes
        (up to SNIFF_BYTES) are `head` holds this kind of data.
    """

    name: str
    test: Callable[[bytes], bool]


def starting_with(name, *prefixes):
    """A FileKind recognised by the first bytes of the file."""
    return FileKind(name, lambda head: head.startswith(tuple(prefixes)))


GZIP_FILE = starting_with("gzip file", b"\x1f\x8b")


@dataclass
class Output:
    """An output path, resolved and checked by `check_output`."""

    path: str             # as given
    target: str           # the file that will be replaced or created (symlinks resolved)
    kind: Optional[FileKind]
    existed: bool         # a file was there when it was checked


def _message(path, what):
    return f"cannot write {path}: {what}"


def _resolve(path, error):
    """The file `path` names, symlinks followed; refuses dangling links and loops."""
    target = os.path.realpath(path)
    if os.path.islink(path) and not os.path.lexists(target):
        raise error(_message(path, f"it is a symlink to {os.readlink(path)}, which does not "
                                   f"exist"))
    try:
        os.stat(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise error(_message(path, exc.strerror)) from None
    return target


def _head(target, path, error):
    """The first bytes of the regular file target, read without blocking."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(_message(path, f"cannot read the existing file ({exc.strerror})")) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(_message(path, "it is not a regular file"))
        return os.read(fd, SNIFF_BYTES)
    finally:
        os.close(fd)


def _describe_mode(mode):
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output(path, kind=None, force=False, error=OutputError, probe=True):
    """Resolve an output path and check that it may be written.

    Parameters
    ----------
    path : str or os.PathLike
    kind : FileKind, optional
        What will be written: an existing file that is not of this kind is
        refused unless `force`.
    force : bool, default False
    error : type, default OutputError
        The FastnnError subclass to raise.
    probe : bool, default True
        Prove the directory writable by creating and removing a temporary
        file there.

    Returns
    -------
    Output
    """
    path = os.fspath(path)
    if not path:
        raise error("cannot write to an empty file name")
    target = _resolve(path, error)
    existed = False
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise error(_message(path, f"it is {_describe_mode(st.st_mode)}, not a regular "
                                       f"file"))
        existed = True
        if kind is not None and not force and st.st_size > 0:
            if not kind.test(_head(target, path, error)):
                raise error(f"refusing to replace {path}: it is not a {kind.name} (give "
                            f"--force, or force=True, to replace it anyway)")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise error(_message(path, f"directory {os.path.dirname(path) or directory} does not "
                                   f"exist"))
    if probe:
        _probe(directory, os.path.basename(target), path, error)
    return Output(path, target, kind, existed)


def _temp_prefix(name):
    return f".{name}."


def _new_temp(directory, name, path, error):
    """(fd, path) of a new temporary file for `name` in directory."""
    try:
        return tempfile.mkstemp(dir=directory, prefix=f"{_temp_prefix(name)}{os.getpid()}.",
                                suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise error(_message(path, exc.strerror)) from None


def _probe(directory, name, path, error):
    fd, tmp = _new_temp(directory, name, path, error)
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _writer_alive(pid):
    if pid == os.getpid():
        return True  # another write of this process, perhaps in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def stale_temps(target):
    """Temporary files left beside target by writers that no longer run."""
    directory, name = os.path.split(target)
    prefix = _temp_prefix(name)
    found = []
    try:
        entries = list(os.scandir(directory or "."))
    except OSError:
        return found
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX)):
            continue
        pid = entry.name[len(prefix):-len(TEMP_SUFFIX)].split(".", 1)[0]
        if pid.isdigit() and not _writer_alive(int(pid)):
            found.append(entry.path)
    return found


def remove_stale_temps(target):
    """Remove the temporary files that died writers left beside target."""
    for tmp in stale_temps(target):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def same_file(a, b):
    """Whether paths a and b name the same file (symlinks and hard links
    followed; paths that do not exist yet are compared resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_distinct(outputs, inputs=(), error=OutputError):
    """Refuse an output that is the same file as an input or another output.

    outputs and inputs are (label, path) pairs; labels name the options in
    messages ("-o", "--history", "DATA").
    """
    outputs = [(label, os.fspath(p)) for label, p in outputs if p is not None]
    inputs = [(label, os.fspath(p)) for label, p in inputs if p is not None]
    for i, (label, path) in enumerate(outputs):
        for in_label, in_path in inputs:
            if os.path.exists(in_path) and same_file(path, in_path):
                raise error(f"refusing to write {label} {path}: it is the same file as "
                            f"{in_label} {in_path}, which this command reads")
        for other_label, other in outputs[:i]:
            if same_file(path, other):
                raise error(f"{label} {path} and {other_label} {other} are the same file; "
                            f"give each output its own name")


def _mode_for(path):
    """The permission bits a file written at path should get."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path, data, error=OutputError, kind=None, force=False):
    """Write bytes (or str, as UTF-8) to path atomically, under the policy.

    The checks of `check_output` come first (a non-regular file, a dangling
    symlink, a missing directory or, unless `force`, an existing file that is
    not a `kind` is refused); stale temporary files beside the target are
    removed; then the data goes to a new temporary file in the target's
    directory, is flushed to disk and renamed over the target. A Ctrl-C
    meanwhile takes effect once the file is complete. Failures raise `error`
    with a one-line message and leave no temporary file.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    out = check_output(path, kind, force, error, probe=False)
    target, directory = out.target, os.path.dirname(out.target)
    remove_stale_temps(target)
    with Deferred() as interrupt:
        fd, tmp = _new_temp(directory, os.path.basename(target), out.path, error)
        try:
            # mkstemp makes the file 0600; give it the mode any new file gets
            # (0666 less the umask), or keep the mode of the file it replaces
            os.fchmod(fd, _mode_for(target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc))
                raise error(_message(out.path, reason)) from None
            raise
    _sync_directory(directory)
    interrupt.deliver()
    return out


def _sync_directory(directory):
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename is done


def remove(path):
    """Remove a file if it is there (no error if it is not)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sibling(path, tag):
    """path with `tag` before its suffix: m.safetensors -> m.TAG.safetensors."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    stem, dot, suffix = name.rpartition(".")
    new = f"{stem}.{tag}.{suffix}" if dot and stem else f"{name}.{tag}"
    return os.path.join(directory, new)
