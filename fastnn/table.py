"""Rows as a user has them: columns of numbers, text and missing values.

A ``Table`` is what a CSV file with text or missing values reads into (see
``fastnn.data.load_csv``), and what a pandas DataFrame or an array of text
becomes before ``fastnn.columns.Columns`` encodes it for the network. Each
column is a ``RawColumn``:

- ``numbers``: float64, the value of each cell that is a number, NaN elsewhere;
- ``missing``: True where the cell is missing (empty, or one of the missing
  markers, MISSING by default), or None when no cell is;
- ``codes`` and ``vocab``: where the cell is text, its index in ``vocab``
  (else -1); None when no cell is text.

Memory is bounded by the rows: 8 to 13 bytes a cell and each distinct text
once, at most MAX_DISTINCT of them per column. Nothing here runs in the
kernels; encoding (``Columns.encode``) turns a Table into float rows first.
"""
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import numpy as np

from fastnn.exceptions import DataError

#: The cells that mean "missing" (after surrounding spaces are removed): the
#: empty field and the usual markers (pandas' default set, plus "?").
#: ``--missing`` and ``missing=`` replace it.
MISSING = ("", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None", "?", "#N/A", "<NA>")
#: The most distinct text values one column may hold (see README, "Tabular data").
MAX_DISTINCT = 100_000
#: The most missing markers, and the longest one.
MAX_MARKERS, MAX_MARKER = 64, 64


def parse_markers(value: Union[str, Iterable[str], None]) -> Optional[tuple[str, ...]]:
    """Missing markers from ``--missing "NA,?,-"`` (comma-separated; an empty
    field is always missing) or a list; None for the default set."""
    from fastnn._validation import short_text
    from fastnn.exceptions import ConfigError

    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(m, str) for m in items):
        raise ConfigError(f"missing markers must be strings, not {short_text(repr(items))}")
    markers = tuple(dict.fromkeys(["", *(m.strip() for m in items)]))
    if len(markers) > MAX_MARKERS or any(len(m) > MAX_MARKER for m in markers):
        raise ConfigError(f"give at most {MAX_MARKERS} missing markers of at most {MAX_MARKER} "
                          f"characters each")
    return markers


def number_text(x: float) -> str:
    """A number as a category: 3.0 -> '3', 2.5 -> '2.5' (so that '3' and
    '3.0' in a file are one category)."""
    if float(x).is_integer() and abs(x) < 2 ** 53:
        return str(int(x))
    return repr(float(x))


class RawColumn:
    """One column's cells: numbers, missing, text (see the module docstring)."""

    __slots__ = ("numbers", "missing", "codes", "vocab", "forced")

    def __init__(self, numbers: np.ndarray, missing: Optional[np.ndarray] = None,
                 codes: Optional[np.ndarray] = None, vocab: Optional[list[str]] = None,
                 forced: bool = False) -> None:
        self.numbers = numbers
        self.missing = missing if missing is not None and missing.any() else None
        self.codes = codes if codes is not None and vocab else None
        self.vocab: list[str] = vocab if vocab is not None and self.codes is not None else []
        #: True for a column whose type says it is categorical (a DataFrame's
        #: object, string or category column)
        self.forced = forced

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def has_text(self) -> bool:
        return self.codes is not None

    def missing_mask(self) -> np.ndarray:
        return self.missing if self.missing is not None else np.zeros(len(self), bool)

    def text_mask(self) -> np.ndarray:
        return self.codes >= 0 if self.codes is not None else np.zeros(len(self), bool)

    def take(self, rows: Any) -> "RawColumn":
        return RawColumn(self.numbers[rows],
                         None if self.missing is None else self.missing[rows],
                         None if self.codes is None else self.codes[rows], self.vocab, self.forced)

    def values(self) -> np.ndarray:
        """Every present cell as text (numbers as number_text), "" where
        missing: an object array."""
        out = np.empty(len(self), dtype=object)
        numbers = ~np.isnan(self.numbers)
        if numbers.any():
            distinct, inverse = np.unique(self.numbers[numbers], return_inverse=True)
            out[numbers] = np.array([number_text(v) for v in distinct], dtype=object)[inverse]
        if self.codes is not None:
            text = self.codes >= 0
            out[text] = np.array(self.vocab, dtype=object)[self.codes[text]]
        out[~numbers & ~self.text_mask()] = ""
        return out


class ColumnReader:
    """Builds a RawColumn from cells (strings) given a chunk at a time."""

    def __init__(self, markers: Sequence[str], number: Any, name: str, where: str = "") -> None:
        self.markers = frozenset(markers)
        self.number, self.name, self.where = number, name, where
        self.numbers: list[np.ndarray] = []
        self.missing: list[np.ndarray] = []
        self.codes: list[np.ndarray] = []
        self.index: dict[str, int] = {}
        self.any_missing = self.any_text = False
        self.rows = 0

    def add(self, cells: Sequence[str]) -> None:
        n = len(cells)
        numbers = self._fast(cells)
        if numbers is not None:
            self.numbers.append(numbers)
            self.missing.append(np.zeros(n, bool))
            self.codes.append(np.full(n, -1, np.int32))
            self.rows += n
            return
        numbers = np.full(n, np.nan)
        missing = np.zeros(n, bool)
        codes = np.full(n, -1, np.int32)
        markers, index, number = self.markers, self.index, self.number
        for i, cell in enumerate(cells):
            text = cell.strip()
            if text in markers:
                missing[i] = True
                continue
            try:
                value = number(text)
            except ValueError:
                value = None
            if value is not None and value == value:      # NaN not as a marker: text
                numbers[i] = value
                continue
            code = index.get(text)
            if code is None:
                if len(index) >= MAX_DISTINCT:
                    name = col(self.name)
                    raise DataError(f"{self.where}column {name} has more than {MAX_DISTINCT:,} "
                                    f"distinct values; fastnn reads at most that many per column "
                                    f"(an ID or free text? --drop {name} leaves it out)")
                code = index[text] = len(index)
            codes[i] = code
        self.any_missing |= bool(missing.any())
        self.any_text |= bool((codes >= 0).any())
        self.numbers.append(numbers)
        self.missing.append(missing)
        self.codes.append(codes)
        self.rows += n

    def _fast(self, cells):
        """The cells as finite numbers when they all are (one NumPy call)."""
        try:
            if self.number is float:
                numbers = np.array(cells, dtype=np.float64)
            else:
                numbers = np.array([c.replace(",", ".") for c in cells], dtype=np.float64)
        except ValueError:
            return None
        return numbers if np.isfinite(numbers).all() else None

    def finish(self) -> RawColumn:
        def joined(parts, dtype):
            return np.concatenate(parts) if parts else np.empty(0, dtype)

        return RawColumn(joined(self.numbers, np.float64),
                         joined(self.missing, bool) if self.any_missing else None,
                         joined(self.codes, np.int32) if self.any_text else None,
                         list(self.index) if self.any_text else None)


class Table:
    """Rows as columns of raw cells (RawColumn), with the header's names.

    `columns[j]` is None for a column that was not read (left out with
    ``drop``). `lines[i]` is the line of the file row i was on (for
    messages), or None (row numbers from 1). `block` is the rows as one
    numeric array when they came as one (a CSV of numbers), kept so that
    encoding them by name keeps their dtype (uint8 pixels stay uint8).
    """

    ndim = 2

    def __init__(self, columns: list[Optional[RawColumn]], names: Optional[list[str]],
                 n_rows: int, lines: Optional[np.ndarray] = None,
                 block: Optional[np.ndarray] = None, source: str = "X") -> None:
        self.columns, self.names, self.n_rows = columns, names, n_rows
        self.lines, self.block, self.source = lines, block, source

    @classmethod
    def from_array(cls, X: Any, names: Optional[Sequence[str]] = None,
                   markers: Sequence[str] = MISSING, source: str = "X") -> "Table":
        """A Table of a 2-D array: numbers (NaN missing) or cells of text and
        numbers (None, NaN and the markers missing)."""
        X = np.asarray(X)
        if X.ndim != 2:
            hint = " (for one sample use X.reshape(1, -1))" if X.ndim == 1 else ""
            raise DataError(f"{source} must be 2-D (n_samples, n_features); got shape "
                            f"{X.shape}{hint}")
        names = None if names is None else [str(n) for n in names]
        if X.dtype.kind in "biuf":
            block = X
            columns: list[Optional[RawColumn]] = []
            for j in range(X.shape[1]):
                numbers = X[:, j].astype(np.float64)
                columns.append(RawColumn(numbers, np.isnan(numbers)))
            return cls(columns, names, len(X), block=block, source=source)
        return cls([column_of(X[:, j], markers, _name(names, j)) for j in range(X.shape[1])],
                   names, len(X), source=source)

    @classmethod
    def from_frame(cls, frame: Any, markers: Sequence[str] = MISSING,
                   source: str = "X") -> "Table":
        """A Table of a pandas DataFrame: numeric and bool columns are numbers
        (NaN missing), object, string and category columns categorical."""
        columns: list[Optional[RawColumn]] = []
        names = [str(n) for n in frame.columns]
        for j, name in enumerate(names):
            series = frame.iloc[:, j]
            kind = series.dtype.kind if isinstance(series.dtype, np.dtype) else None
            if kind in ("b", "i", "u", "f"):
                numbers = series.to_numpy(dtype=np.float64)
                columns.append(RawColumn(numbers, np.isnan(numbers)))
                continue
            try:                          # nullable Int64, Float64, boolean
                numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
                if kind is None and str(series.dtype) not in ("category", "string", "object"):
                    columns.append(RawColumn(numbers, np.isnan(numbers)))
                    continue
            except (TypeError, ValueError):
                pass
            column = column_of(series.to_numpy(dtype=object), markers, name)
            column.forced = True
            columns.append(column)
        return cls(columns, names, len(frame), source=source)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, len(self.columns)

    def __getitem__(self, rows: Any) -> "Table":
        if isinstance(rows, (int, np.integer)):
            rows = [rows]
        picked = np.arange(self.n_rows)[rows]
        return Table([None if c is None else c.take(picked) for c in self.columns], self.names,
                     len(picked), None if self.lines is None else self.lines[picked],
                     None if self.block is None else self.block[picked], self.source)

    def line(self, row: int) -> int:
        """The file line of row `row` (or its number from 1), for messages."""
        return int(self.lines[row]) if self.lines is not None else row + 1

    def where(self, row: int) -> str:
        """Where a row is, for messages: 'row 5' of a file is its fifth line
        (the header is row 1); 'row 4' of an array counts from 0."""
        return f"row {self.line(row)}" if self.lines is not None else f"row {row}"

    def name(self, j: int) -> str:
        return _name(self.names, j)

    def numeric(self) -> Optional[np.ndarray]:
        """The rows as one numeric array when every column is numbers with
        nothing missing (the block they came as, if any), else None."""
        if any(c is None or c.has_text or c.missing is not None for c in self.columns):
            return None
        if self.block is not None:
            return self.block
        if not self.columns:
            return np.empty((self.n_rows, 0))
        return np.column_stack([c.numbers for c in self.columns if c is not None])


def _name(names, j):
    return names[j] if names is not None and j < len(names) else str(j + 1)


def column_of(cells: np.ndarray, markers: Sequence[str], name: str) -> RawColumn:
    """A RawColumn of an object array of cells: None and NaN are missing,
    numbers are numbers, strings are read as a CSV cell is."""
    reader = ColumnReader(markers, float, name)
    n = len(cells)
    texts = []
    numbers = np.full(n, np.nan)
    missing = np.zeros(n, bool)
    kinds = np.zeros(n, np.int8)          # 0 number/missing done, 1 text to read
    for i, cell in enumerate(cells.tolist()):
        if cell is None or (isinstance(cell, float) and cell != cell):
            missing[i] = True
        elif isinstance(cell, (bool, int, float, np.number)) and not isinstance(cell, np.bool_):
            numbers[i] = float(cell)
        elif type(cell).__name__ in ("NAType", "NaTType"):
            missing[i] = True
        else:
            kinds[i] = 1
            texts.append(cell if isinstance(cell, str) else str(cell))
    codes = None
    if texts:
        reader.add(texts)
        read = reader.finish()
        at = np.flatnonzero(kinds == 1)
        numbers[at] = read.numbers
        missing[at] = read.missing_mask()
        if read.codes is not None:
            codes = np.full(n, -1, np.int32)
            codes[at] = read.codes
        return RawColumn(numbers, missing, codes, read.vocab)
    return RawColumn(numbers, missing)


def is_table_like(X: Any) -> bool:
    """Whether X holds columns that need encoding: a Table, a DataFrame, or an
    array of text or objects."""
    if isinstance(X, Table) or _is_frame(X):
        return True
    return isinstance(X, np.ndarray) and X.dtype.kind in "OUS"


def _is_frame(X: Any) -> bool:
    return hasattr(X, "iloc") and hasattr(X, "dtypes") and hasattr(X, "columns")


def as_table(X: Any, markers: Sequence[str] = MISSING, source: str = "X") -> Table:
    """X (a Table, a DataFrame, a 2-D array or nested lists) as a Table."""
    if isinstance(X, Table):
        return X
    if _is_frame(X):
        return Table.from_frame(X, markers, source)
    return Table.from_array(np.asarray(X, dtype=None if _numeric_like(X) else object),
                            markers=markers, source=source)


def _numeric_like(X):
    return isinstance(X, np.ndarray) and X.dtype.kind in "biuf"


def col(name: str) -> str:
    """A column's name as a message shows it, as one would type it after
    --drop: as it is when it is a plain word, else shell-quoted (and escaped
    and cut to about 60 characters when it is long or not printable)."""
    import re
    import shlex

    if re.fullmatch(r"[A-Za-z0-9_.:+-]{1,60}", name):
        return name
    if not name.isprintable() or len(name) > 60:
        from fastnn._validation import short_text

        return short_text(name)
    return shlex.quote(name)
