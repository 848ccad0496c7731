"""Reading files that may be hostile: regular files only, bounded sizes, bounded JSON.

Everything fastnn reads (model files, data files, history files) comes
through here, so that no file can make fastnn block, read without end,
exhaust memory or overflow the stack:

- only regular files are read (a symlink is followed to its target, which
  must be one): a FIFO, a device such as ``/dev/zero`` or a socket is
  refused before a byte is read, and opening never blocks;
- gzip streams are decompressed in pieces, never beyond a limit: the size
  a file's own header declares (IDX), or a documented maximum;
- JSON is checked for its nesting depth before it is parsed, and an object
  with a key given twice is refused.
"""
import gzip
import io
import json
import os
import re
import stat
import zlib

import numpy as np

from fastnn.exceptions import DataError

GZIP_MAGIC = b"\x1f\x8b"
#: The most bytes a gzip-compressed file whose size no header declares
#: (a CSV, a pickle) may expand to.
MAX_DECOMPRESSED = 1 << 30
#: How deeply JSON read from a file may nest (fastnn's own files need 4).
MAX_JSON_DEPTH = 32
# Decompress and read in pieces of this size.
CHUNK = 1 << 20


def open_regular(path, error=DataError, what="data file"):
    """An open binary file object for path, which must be a regular file.

    The file is opened without blocking (a FIFO with no writer would
    otherwise hang), then refused unless it is a regular file.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a {what}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path} is a directory, not a {what}")
        if not stat.S_ISREG(mode):
            raise error(f"{path} is not a regular file ({_kind(mode)}); fastnn reads a "
                        f"{what} only from a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode):
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def check_regular(path, error=DataError, what="data file"):
    """Raise `error` unless path names a regular file (see `open_regular`)."""
    open_regular(path, error, what).close()


def file_size(f):
    """The size of an open regular file (or in-memory file), in bytes."""
    try:
        return os.fstat(f.fileno()).st_size
    except io.UnsupportedOperation:     # io.BytesIO
        here = f.tell()
        size = f.seek(0, os.SEEK_END)
        f.seek(here)
        return size


def read_file(path, error=DataError, what="data file", limit=-1, max_size=None):
    """The bytes of a regular file (its first `limit` bytes, if given).

    With `max_size`, a larger file is refused with `error` before it is read.
    """
    path = os.fspath(path)
    with open_regular(path, error, what) as f:
        size = file_size(f)
        if max_size is not None and size > max_size:
            raise error(f"{path} is {size:,} bytes; a {what} may have at most "
                        f"{max_size:,}")
        try:
            return f.read(limit)
        except OSError as exc:
            raise error(f"cannot read {path}: {exc.strerror}") from None


def read_into(stream, buffer, name, error=DataError):
    """Fill a writable buffer (a NumPy array's bytes) from a stream; the number
    of bytes read (less than its size only at the end of the stream)."""
    view = memoryview(buffer).cast("B")
    done = 0
    try:
        while done < len(view):
            n = stream.readinto(view[done:done + CHUNK])
            if not n:
                break
            done += n
    except (OSError, EOFError, zlib.error) as exc:
        raise error(f"{name} is a damaged gzip file ({exc})") from None
    return done


def read_stream(stream, limit, name, what, error=DataError):
    """All bytes of a stream, refusing with `error` once it gives more than `limit`."""
    chunks, total = [], 0
    try:
        while True:
            chunk = stream.read(min(CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(f"{name} expands to more than {limit:,} bytes, the most "
                            f"fastnn reads from a {what}")
    except (OSError, EOFError, zlib.error) as exc:
        raise error(f"{name} is a damaged gzip file ({exc})") from None
    return b"".join(chunks)


def gunzip(data, name, limit=MAX_DECOMPRESSED, what="compressed file"):
    """data decompressed (at most `limit` bytes) if it starts with the gzip
    magic, else as it is."""
    import io

    if data[:2] != GZIP_MAGIC:
        return data
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        return read_stream(stream, limit, name, what)


class Budget:
    """A read-only file object over a stream that refuses to give more than
    `limit` bytes in all, or a line longer than `max_line` (for readers that
    pull what they need, such as an unpickler)."""

    def __init__(self, stream, limit, name, what, error=DataError, max_line=1 << 20):
        self.stream, self.left, self.limit, self.max_line = stream, limit, limit, max_line
        self.name, self.what, self.error = name, what, error

    def _refuse(self):
        return self.error(f"{self.name} holds more than {self.limit:,} bytes, the most "
                          f"fastnn reads from a {self.what}")

    def _call(self, method, n):
        try:
            return method(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise self.error(f"{self.name} is a damaged gzip file ({exc})") from None

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.left + 1
        elif n > self.left:
            raise self._refuse()
        chunks, got = [], 0
        while got < n:
            chunk = self._call(self.stream.read, min(CHUNK, n - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > self.left:
            raise self._refuse()
        self.left -= got
        return b"".join(chunks)

    def readline(self):
        line = self._call(self.stream.readline, min(self.left, self.max_line) + 1)
        if len(line) > self.left:
            raise self._refuse()
        if len(line) > self.max_line:
            raise self.error(f"{self.name} has a line longer than {self.max_line:,} bytes")
        self.left -= len(line)
        return line


class _Stream:
    """A file, or its gzip decompression, whose read errors are `error` with
    a one-line message (a damaged gzip stream raises several types)."""

    def __init__(self, raw, compressed, name, error):
        self.raw, self.compressed, self.name, self.error = raw, compressed, name, error
        self.stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw

    def _call(self, method, *args):
        try:
            return method(*args)
        except (OSError, EOFError, zlib.error) as exc:
            if self.compressed:
                raise self.error(f"{self.name} is a damaged gzip file ({exc})") from None
            raise self.error(f"cannot read {self.name}: {exc}") from None

    def read(self, n=-1):
        return self._call(self.stream.read, n)

    def readinto(self, buffer):
        return self._call(self.stream.readinto, buffer)

    def readline(self, n=-1):
        return self._call(self.stream.readline, n)

    def fileno(self):
        return self.raw.fileno()

    def close(self):
        try:
            self.stream.close()
        finally:
            self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_data(path, error=DataError, what="data file"):
    """(stream, compressed): a regular file opened for reading, decompressed
    on the fly if it is gzip-compressed; read errors become `error`. Close
    the stream when done (it is a context manager)."""
    name = os.fspath(path)
    f = open_regular(path, error, what)
    try:
        compressed = f.read(2) == GZIP_MAGIC
        f.seek(0)
    except OSError as exc:
        f.close()
        raise error(f"cannot read {name}: {exc.strerror}") from None
    return _Stream(f, compressed, name, error), compressed


# ------------------------------------------------------------------- JSON

# A JSON string (its escapes included), for measuring nesting without parsing.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


def json_depth(raw):
    """How deeply the arrays and objects of a JSON text nest (without parsing
    it, in linear time; brackets inside strings do not count)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    codes = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {key!r} appears twice")
        obj[key] = value
    return obj


def load_json(raw, name, error=DataError, max_depth=MAX_JSON_DEPTH):
    """A JSON text (str or UTF-8 bytes) parsed, or `error` naming `name`: refused
    when it nests deeper than max_depth, repeats a key in an object, or is not
    JSON. NaN and Infinity are read as floats (the caller checks finiteness)."""
    if json_depth(raw) > max_depth:
        raise error(f"{name} nests deeper than {max_depth} levels (or is not valid JSON)")
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:  # cannot happen below max_depth, but never let it out
        raise error(f"{name} nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise error(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{name} is not valid JSON ({exc})") from None
