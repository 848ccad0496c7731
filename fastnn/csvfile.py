"""A CSV file's dialect: which delimiter separates its fields and which mark
its decimals.

Files exported by spreadsheets and other tools differ: a comma-separated
file with ``1.5`` decimals, the usual Excel export where the decimal mark is
a comma (``1,5``, fields separated by ``;``), tab-separated ``.tsv`` files,
``|``-separated dumps. ``sniff`` finds the dialect from the first lines (the
header and up to SNIFF_LINES rows), as Python's ``csv.Sniffer`` and pandas'
``sep=None`` do, but only among the four delimiters of DELIMITERS and with
one rule that can be stated: the delimiter that splits every sampled line
into the same number (two or more) of fields, the most of them numbers, then
the most fields; the decimal mark is a comma when the fields are not split
by commas, some sampled cells are numbers written ``1,5`` and none ``1.5``.
``--delimiter`` and ``--decimal`` (``delimiter=``, ``decimal=``) override
either part.

``read_csv`` then reads the file: a header if its first row is one (see
``is_header``), the label column, and the features, as one array of numbers
when they all are, else as a ``fastnn.table.Table`` of numbers, text and
missing cells (which ``fastnn.columns.Columns`` encodes).
"""
import csv
import io
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from fastnn._typing import Array
from fastnn.exceptions import ConfigError, DataError

# Bounds on what is read (see README, "Reading files"): a CSV file's text
# (after decompression) and its longest line.
MAX_CSV_BYTES = 256 << 20
MAX_CSV_LINE = 1 << 20
#: Rows parsed at a time (each column's cells are then read in one go).
CHUNK_ROWS = 8192

#: The delimiters fastnn detects, in the order a tie is broken, with their names.
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
#: What ``--delimiter`` takes for each delimiter (besides the character itself).
DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|"}
#: Decimal marks.
DECIMALS = (".", ",")
#: Lines (the header included) that the dialect is judged from.
SNIFF_LINES = 50

_COMMA_DECIMAL = re.compile(r"\s*[+-]?[0-9]*,[0-9]+(?:[eE][+-]?[0-9]+)?\s*")
_DOT_DECIMAL = re.compile(r"\s*[+-]?[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?\s*")


@dataclass(frozen=True)
class Dialect:
    """How a CSV file's fields are separated and its decimals written, and
    which of the two were found in the file rather than given."""

    delimiter: str = ","
    decimal: str = "."
    detected: tuple[str, ...] = ()

    def number(self, cell: str) -> float:
        """The number a cell holds (ValueError if none): a comma decimal mark
        is read as a point."""
        return float(cell.replace(",", ".") if self.decimal == "," else cell)

    def describe(self) -> str:
        """'delimiter ';' (semicolon), decimal ',' (detected; --delimiter and
        --decimal override)', for train to say which dialect was read."""
        parts = [f"delimiter {self.delimiter!r} ({DELIMITERS.get(self.delimiter, 'given')})",
                 f"decimal {self.decimal!r}"]
        how = ("detected" if set(self.detected) == {"delimiter", "decimal"}
               else f"{' and '.join(self.detected)} detected" if self.detected else "as given")
        return f"{', '.join(parts)} ({how}; --delimiter and --decimal override)"

    @property
    def usual(self) -> bool:
        """Commas between fields and points in decimals (nothing to say)."""
        return self.delimiter == "," and self.decimal == "."


def parse_delimiter(value: Optional[str]) -> Optional[str]:
    """A --delimiter value as the character: one of DELIMITERS, or its name
    (comma, semicolon, tab, pipe, \\t). ConfigError names the choices."""
    if value is None:
        return None
    if value in DELIMITERS:
        return value
    if value.lower() in DELIMITER_NAMES:
        return DELIMITER_NAMES[value.lower()]
    from fastnn._validation import short_text

    raise ConfigError(f"delimiter must be one of ',', ';', '|', tab (or comma, semicolon, "
                      f"tab, pipe), not {short_text(value)}")


def parse_decimal(value: Optional[str]) -> Optional[str]:
    if value is None or value in DECIMALS:
        return value
    from fastnn._validation import short_text

    raise ConfigError(f"decimal must be '.' or ',', not {short_text(value)}")


def sniff(text: str, delimiter: Optional[str] = None, decimal: Optional[str] = None,
          suffix: str = "") -> Dialect:
    """The dialect of CSV text (decoded, BOM removed), from its first
    SNIFF_LINES non-blank lines; `delimiter` and `decimal`, when given, are
    kept as they are. `suffix` (".tsv") breaks a tie toward tab."""
    delimiter, decimal = parse_delimiter(delimiter), parse_decimal(decimal)
    detected = []
    head = _head(text)
    if delimiter is None:
        delimiter = _best_delimiter(head, suffix)
        detected.append("delimiter")
    if decimal is None:
        decimal = "," if delimiter != "," and _comma_decimals(head, delimiter) else "."
        detected.append("decimal")
    if delimiter == decimal:
        raise ConfigError(f"the delimiter and the decimal mark cannot both be {delimiter!r}")
    return Dialect(delimiter, decimal, tuple(detected))


def _head(text):
    """The first SNIFF_LINES non-blank lines of text."""
    lines = []
    for line in io.StringIO(text):
        if line.strip():
            lines.append(line)
            if len(lines) >= SNIFF_LINES:
                break
    return "".join(lines)


def _rows(head, delimiter):
    try:
        return [row for row in csv.reader(io.StringIO(head), delimiter=delimiter) if row]
    except csv.Error:
        return []


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _best_delimiter(head, suffix):
    order = list(DELIMITERS)
    if suffix == ".tsv":
        order.remove("\t")
        order.insert(0, "\t")
    best, best_score = order[0], None
    for rank, candidate in enumerate(order):
        rows = _rows(head, candidate)
        widths = {len(row) for row in rows}
        if len(widths) != 1 or min(widths) < 2:
            continue
        cells = [cell for row in rows[1:] or rows for cell in row]
        numbers = sum(_is_number(c) or bool(_COMMA_DECIMAL.fullmatch(c)) for c in cells)
        score = (numbers / max(len(cells), 1), min(widths), -rank)
        if best_score is None or score > best_score:
            best, best_score = candidate, score
    return best


def _comma_decimals(head, delimiter):
    cells = [cell for row in _rows(head, delimiter) for cell in row]
    return (any(_COMMA_DECIMAL.fullmatch(c) for c in cells)
            and not any(_DOT_DECIMAL.fullmatch(c) for c in cells))


# ----------------------------------------------------------------- reading

def read_csv(path: Any, label_col: Union[str, int, None] = None,
             n_features: Optional[int] = None, info: Optional[dict[str, Any]] = None,
             delimiter: Optional[str] = None, decimal: Optional[str] = None,
             missing: Any = None, drop: Any = None,
             label_optional: bool = False) -> tuple[Any, Optional[np.ndarray]]:
    """(X, y) of a CSV file; its dialect and header are detected.

    The label column is `label_col` (a name or a 1-based number), by default
    the last column; with `n_features` given and the file exactly that wide,
    or with `label_optional` and `label_col` a name the header does not
    have, the file has no label column. X is a float array (uint8 when every value is a whole number in
    0..255) when the features are all numbers, else a fastnn.table.Table
    (cells in `missing`, fastnn.table.MISSING by default, are missing; the
    columns in `drop` are not read). Labels are numbers (NaN where missing)
    or, when any is not a number, class names (str, "" where missing).

    A dict `info` gets "dialect", "names" (the features' names, or None
    without a header), "label_name" and "label_missing" (True for each row
    whose label is missing, or None).
    """
    from fastnn.table import MISSING, ColumnReader, Table, parse_markers

    info = {} if info is None else info
    name = os.fspath(path)
    try:
        text = _read_csv_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{name} is not a text CSV file") from None
    dialect = sniff(text, delimiter, decimal, _suffix(name))
    info["dialect"] = dialect
    markers = parse_markers(missing) or MISSING
    reader = csv.reader(io.StringIO(text), delimiter=dialect.delimiter)
    try:
        first = next((row for row in reader if row), None)
        first_end = reader.line_num
        sample = [row for _, row in zip(range(SNIFF_LINES), (r for r in reader if r))]
    except csv.Error as exc:
        # e.g. a lone carriage return inside a field
        raise DataError(f"{name} is not a valid CSV file ({exc})") from None
    if not first:
        raise DataError(f"{name} is empty")
    width = len(first)
    names = None
    if is_header(first, sample, dialect, markers):
        names = [cell.strip() or f"column{j + 1}" for j, cell in enumerate(first)]
        if not sample:
            raise DataError(f"{name} has a header but no rows")
    if n_features is not None and width == n_features:
        col = None                 # exactly the features a model takes: no label column
    else:
        col = _label_column(label_col, names, width, name, optional=label_optional)
    if col is not None and names is not None:
        info["label_name"] = names[col]
    features = [j for j in range(width) if j != col]
    info["names"] = None if names is None else [names[j] for j in features]
    skipped = set()
    if drop is not None:
        from fastnn.columns import resolve

        known = info["names"] or [str(k + 1) for k in range(len(features))]
        skipped = {features[k] for k in resolve(drop, known, "drop",
                                                 lenient=n_features is not None)}
    body = _body(text, first_end) if names is not None else text
    if not body.strip():
        raise DataError(f"{name} has a header but no rows")
    values = _numbers(body, dialect)
    if values is not None and values.shape[1] == width:
        return _from_numbers(values, col, features, names, name, info,
                             _row_lines(body, first_end + 1 if names is not None else 1,
                                        len(values)))
    if values is not None:
        raise DataError(f"{name}: the header names {width} columns, the rows have "
                        f"{values.shape[1]}")
    readers = {j: ColumnReader(markers, dialect.number if dialect.decimal == "," else float,
                               names[j] if names else str(j + 1), f"{name}: ")
               for j in range(width) if j not in skipped}
    lines = _read_columns(body, dialect, width, readers, name,
                          first_end if names is not None else 0)
    columns = {j: r.finish() for j, r in readers.items()}
    y = None
    info["label_missing"] = None
    if col is not None:
        label = columns.pop(col)
        gone = label.missing_mask()
        if label.has_text:
            y = label.values().astype(str)
        else:
            y = label.numbers
        info["label_missing"] = gone if gone.any() else None
    table = Table([columns.get(j) for j in features], info["names"], len(lines), lines,
                  source=name)
    info["lines"] = table.lines
    block = table.numeric()
    if block is not None and not skipped:
        return _finite(pixels_or_floats(block), table, name), y
    return table, y


def is_header(first: list[str], rows: list[list[str]], dialect: Dialect,
              markers: Any) -> bool:
    """Whether a CSV file's first row names its columns, judged with the
    rows after it: not when its cells are all numbers, nor when one of
    them is found again in its column below (a value, not a name); a row
    with no number is a header, and so is one with numbers when it has text
    over a column of numbers."""
    cells = [c.strip() for c in first]
    if not any(cells):
        return False

    def number(cell):
        try:
            dialect.number(cell)
        except ValueError:
            return False
        return True

    kinds = [number(c) for c in cells]
    if all(k or not c for k, c in zip(kinds, cells)):
        return False
    for row in rows:
        for c, cell in zip(cells, row):
            if c and cell.strip() == c:
                return False
    if not any(kinds):
        return True
    for j, (c, k) in enumerate(zip(cells, kinds)):
        below = [row[j].strip() for row in rows if j < len(row)]
        if c and not k and below and all(number(v) or v in markers for v in below):
            return True
    return False


def _body(text, first_end):
    """The text after the header (its first `first_end` lines)."""
    at = 0
    for _ in range(first_end):
        at = _line_end(text, at)
    return text[at:]


def _line_end(text, at):
    """Where the line starting at `at` ends (after \n, \r\n or \r)."""
    n = text.find("\n", at)
    r = text.find("\r", at)
    if r >= 0 and (n < 0 or r < n):
        return r + 2 if text.startswith("\r\n", r) else r + 1
    return len(text) if n < 0 else n + 1


def _numbers(body, dialect):
    """The rows as a float array when every cell is a number (a present,
    non-NaN one), else None; one NumPy call."""
    import warnings

    converters = {} if dialect.decimal == "." else {"converters": dialect.number}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # blank lines, which NumPy reports
            values = np.loadtxt(io.StringIO(body), delimiter=dialect.delimiter, quotechar='"',
                                dtype=np.float64, ndmin=2, comments=None, **converters)
    except ValueError:
        return None
    if np.isnan(values).any() or len(values) == 0:
        return None                # "nan" cells are missing values: the Table reads them
    return values


#: A blank line (np.loadtxt skips it) before the last row of a body.
_BLANK_LINE = re.compile(r"(?:^|\n)[ \t]*(?:\r\n|\n)|(?:^|\r)[ \t]*\r(?!\n)")


def _row_lines(body, first_line, n):
    """The line of the file each of the n rows np.loadtxt read from `body`
    is on (body starts at line `first_line`): consecutive lines, unless a
    blank line (which holds no row) comes before the last row."""
    end = len(body)
    while end and body[end - 1] in " \t\r\n":
        end -= 1                    # trailing blank lines move no row
    if not _BLANK_LINE.search(body, 0, end):
        return np.arange(first_line, first_line + n)
    full = [i for i, line in enumerate(body[:end].splitlines()) if line.strip()]
    return np.asarray(full[:n], dtype=np.int64) + first_line


def _from_numbers(values, col, features, names, name, info, lines):
    from fastnn.table import Table

    info["label_missing"] = None
    info["lines"] = lines
    y = None if col is None else values[:, col]
    X = values if col is None else values[:, features]
    table = Table([], info["names"], len(values), lines, source=name)
    X = _finite(X, table, name, [names[j] for j in features] if names else None)
    return pixels_or_floats(X), y


def _finite(X, table, name, names=None):
    """X, or a DataError naming the first cell that is not finite."""
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        r, c = np.argwhere(~np.isfinite(X))[0]
        names = names or table.names
        column = names[c] if names and c < len(names) else str(c + 1)
        raise DataError(f"{name}: {table.where(int(r))}, column {column} is {X[r, c]}, "
                        f"not a finite number")
    return X


def _read_columns(body: str, dialect: Dialect, width: int, readers: dict[int, Any], name: str,
                  first_line: int) -> np.ndarray:
    """Read every row of `body` into `readers` ({column: ColumnReader}), a
    chunk of rows at a time; returns the line each row ends on."""
    reader = csv.reader(io.StringIO(body), delimiter=dialect.delimiter)
    lines: list[int] = []
    chunk: list[list[str]] = []

    def flush():
        if chunk:
            cells = list(zip(*chunk))
            for j, column in readers.items():
                column.add(cells[j])
            chunk.clear()

    try:
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise DataError(f"{name}: row {first_line + reader.line_num} has {len(row)} "
                                f"columns, the first row has {width}")
            chunk.append(row)
            lines.append(first_line + reader.line_num)
            if len(chunk) >= CHUNK_ROWS:
                flush()
        flush()
    except csv.Error as exc:
        raise DataError(f"{name} is not a valid CSV file ({exc})") from None
    if not lines:
        raise DataError(f"{name} has a header but no rows")
    return np.array(lines, dtype=np.int64)


def _label_column(label_col, names, width, path, optional=False):
    """The 0-based label column, or None when `optional` and a name that the
    header does not have is given (a model's label column, absent from the
    rows to predict)."""
    if label_col is None:
        return width - 1
    label_col = str(label_col)
    if names and label_col in names:
        return names.index(label_col)
    from fastnn._validation import parse_int, short_text

    # isdigit alone takes '¹' and other digits that int() refuses
    if label_col.isascii() and label_col.isdigit():
        try:
            return parse_int(label_col, "a column number", 1, width) - 1
        except ConfigError:
            pass
    if optional and names:
        return None
    known = f"; its columns are {names}" if names else f"; it has {width} columns (1..{width})"
    raise DataError(f"{path} has no label column {short_text(label_col)}{known}")


def _suffix(name):
    """The suffix of a CSV file's name that says its kind (".tsv"), past .gz."""
    name = name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return os.path.splitext(name)[1]


def _read_csv_bytes(path):
    """A CSV file's bytes (decompressed), refused beyond MAX_CSV_BYTES or with
    a line longer than MAX_CSV_LINE."""
    from fastnn.reading import file_size, open_data, read_stream

    name = os.fspath(path)
    stream, compressed = open_data(path)
    with stream:
        if not compressed and file_size(stream) > MAX_CSV_BYTES:
            raise DataError(f"{name} is {file_size(stream):,} bytes; fastnn reads CSV files of "
                            f"at most {MAX_CSV_BYTES:,} (use .npy for larger data)")
        raw = read_stream(stream, MAX_CSV_BYTES, name, "CSV file (use .npy for larger data)")
    long_line = _first_long_line(raw, MAX_CSV_LINE)
    if long_line is not None:
        start, length = long_line
        line = raw.count(b"\n", 0, start) + 1
        raise DataError(f"{name}: line {line} is {length:,} bytes long; fastnn reads CSV "
                        f"lines of at most {MAX_CSV_LINE:,} (use .npy for wider data)")
    return raw


def _first_long_line(raw, limit):
    """(start, length) of the first line of raw longer than limit bytes (lines
    end at \\n or \\r), or None; a chunk at a time, so that a file of short
    lines needs no array of all its line ends."""
    from fastnn.reading import CHUNK

    a = np.frombuffer(raw, np.uint8)
    line_start = 0
    for start in range(0, len(a), CHUNK):
        part = a[start:start + CHUNK]
        ends = np.flatnonzero((part == 10) | (part == 13)) + start
        if len(ends):
            starts = np.concatenate(([line_start], ends[:-1] + 1))
            bad = np.flatnonzero(ends - starts > limit)
            if len(bad):
                return int(starts[bad[0]]), int(ends[bad[0]] - starts[bad[0]])
            line_start = int(ends[-1]) + 1
        if start + len(part) - line_start > limit:
            ends = [e for e in (raw.find(b"\n", line_start), raw.find(b"\r", line_start))
                    if e >= 0]
            return line_start, min(ends, default=len(raw)) - line_start
    return None


def pixels_or_floats(X: Array) -> Array:
    """X as uint8 pixels if every value is a whole number in 0..255, else X."""
    if X.size and (X >= 0).all() and (X <= 255).all() and (X == np.round(X)).all():
        return X.astype(np.uint8)
    return X
