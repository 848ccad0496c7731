"""What a network does to raw tabular rows before its scaling: column kinds,
one-hot categories and missing values, learned from the training rows.

``Columns.learn`` reads a ``fastnn.table.Table`` (a CSV with text or missing
values, a pandas DataFrame, an array of text) and decides, for each column:

- **numeric** (every present cell a number): used as it is; a missing value
  is the training median, and when the training rows had any missing value
  in the column, a 0/1 unit says which rows were missing;
- **categorical** (any text, a DataFrame's object, string or category
  column, or named by ``categorical=``): one unit per category, in sorted
  order. A column with more than MAX_CATEGORIES distinct values keeps the
  MAX_CATEGORIES most frequent ones seen at least twice, and an ``(other)``
  unit takes the rest, so the encoding stays bounded. A missing value is a
  category of its own (a unit after the others) when the training rows had
  any; a value not seen in training (nor grouped as other) is all zeros.
- **dropped** (``drop=``): left out.

A ``Columns`` is kept in ``Preprocessing.columns`` and the model file, and
``encode`` applies it to the rows that ``forward``, ``predict``,
``evaluate``, ``--resume`` and every export take: matched by name when the
training rows had names (a CSV header, a DataFrame), else by position.
"""
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from fastnn._validation import listing
from fastnn.exceptions import ConfigError, DataError
from fastnn.table import MISSING, RawColumn, Table, as_table, col, number_text

#: Column kinds.
KINDS = ("numeric", "categorical", "dropped")
#: The most categories one column keeps as units of their own.
MAX_CATEGORIES = 100
#: How often a value must occur to be kept in a column past MAX_CATEGORIES.
MIN_KEPT = 2
#: The longest column name or category value kept in a model file.
MAX_NAME = 256
#: The most columns a table may have.
MAX_COLUMNS = 100_000
#: The most characters all the category values of a model may take.
MAX_ENCODING_CHARS = 4 << 20
#: The share of number cells above which a column with a few text cells is
#: refused as a numeric column with stray text (rather than read as categories).
MOSTLY_NUMBERS = 0.9
#: Rows from which a column of distinct values is noted as looking like an ID.
ID_ROWS = 20


@dataclass
class Column:
    """How one raw column is encoded.

    `fill` is a numeric column's training median (what a missing value
    becomes), `indicator` whether a 0/1 missing unit follows it. A
    categorical column has its sorted `categories`, `other` (a unit for the
    values past MAX_CATEGORIES) and `missing` (a unit for missing values).
    """

    name: str
    kind: str
    fill: Optional[float] = None
    indicator: bool = False
    categories: list[str] = field(default_factory=list)
    other: bool = False
    missing: bool = False

    @property
    def width(self) -> int:
        if self.kind == "numeric":
            return 1 + self.indicator
        if self.kind == "categorical":
            return len(self.categories) + self.other + self.missing
        return 0

    def unit_names(self) -> list[str]:
        if self.kind == "numeric":
            return [self.name] + ([f"{self.name} (missing)"] if self.indicator else [])
        if self.kind == "categorical":
            return ([f"{self.name}={c}" for c in self.categories]
                    + ([f"{self.name} (other)"] if self.other else [])
                    + ([f"{self.name} (missing)"] if self.missing else []))
        return []

    def describe(self) -> str:
        """'sex: 2 values', 'name: 100 of 891 values + other + missing'."""
        n = len(self.categories)
        if self.other:
            text = (f"{self.name}: {n} frequent values + other" if n
                    else f"{self.name}: every value grouped as other")
        else:
            text = f"{self.name}: {n} value{'s' if n != 1 else ''}"
        return text + (" + missing" if self.missing else "")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            d.update(fill=self.fill, indicator=self.indicator)
        elif self.kind == "categorical":
            d.update(categories=list(self.categories), other=self.other, missing=self.missing)
        return d


@dataclass
class Columns:
    """The encoding of a table's columns (see the module docstring).

    `named`: the rows are matched by column name (the training rows had
    names), else by position. `markers`: the cells read as missing.
    """

    columns: list[Column]
    named: bool
    markers: tuple[str, ...] = MISSING

    # ------------------------------------------------------------- learning

    @classmethod
    def learn(cls, X: Any, categorical: Optional[Iterable[Union[str, int]]] = None,
              drop: Optional[Iterable[Union[str, int]]] = None,
              missing: Optional[Sequence[str]] = None, notes: Optional[list[str]] = None,
              ) -> "Columns":
        """Learn the encoding of training rows X (a Table, a DataFrame, an
        array). `categorical` and `drop` name columns (by name or 1-based
        number); `missing` replaces the missing markers (MISSING). `notes`,
        a list, gets a line for each column that looks like an ID.
        """
        from fastnn.table import parse_markers

        markers = parse_markers(missing) or MISSING
        table = as_table(X, markers)
        if len(table) == 0:
            raise DataError(f"{table.source} is empty (0 samples)")
        width = len(table.columns)
        if width > MAX_COLUMNS:
            raise DataError(f"{table.source} has {width:,} columns; fastnn encodes at most "
                            f"{MAX_COLUMNS:,}")
        names = [table.name(j) for j in range(width)]
        _check_names(table, names)
        as_categories = set(resolve(categorical, names, "categorical"))
        dropped = set(resolve(drop, names, "drop"))
        both = as_categories & dropped
        if both:
            raise ConfigError(f"column {names[min(both)]} is given both to --categorical and "
                              f"--drop; give it to one")
        columns = []
        for j, name in enumerate(names):
            raw = table.columns[j]
            if j in dropped:
                columns.append(Column(name, "dropped"))
                continue
            if raw is None:
                raise DataError(f"{table.source}: column {name} was not read")
            columns.append(_learn_column(raw, name, table,
                                         j in as_categories or raw.forced, notes))
        if all(c.kind == "dropped" for c in columns):
            raise ConfigError(f"every column of {table.source} is dropped; keep at least one")
        learned = cls(columns, table.names is not None, markers)
        chars = sum(len(c) for col in columns for c in col.categories)
        if chars > MAX_ENCODING_CHARS:
            widest = max(columns, key=lambda c: sum(map(len, c.categories)))
            raise DataError(f"the categories of {table.source} take {chars:,} characters; a "
                            f"model keeps at most {MAX_ENCODING_CHARS:,} (--drop {widest.name}?)")
        return learned

    # ------------------------------------------------------------- applying

    @property
    def n_features(self) -> int:
        """The network's inputs: the encoded width."""
        return sum(c.width for c in self.columns)

    @property
    def raw_width(self) -> int:
        """The columns a row has, dropped ones included (by position)."""
        return len(self.columns)

    @property
    def identity(self) -> bool:
        """Every column numeric with no missing unit: rows pass unchanged."""
        return all(c.kind == "numeric" and not c.indicator for c in self.columns)

    def unit_names(self) -> list[str]:
        """The name of each encoded input ('age', 'sex=female', ...)."""
        return [name for c in self.columns for name in c.unit_names()]

    def numeric_units(self) -> np.ndarray:
        """True for each encoded input that is a numeric column's value (the
        others are 0/1 units, which scaling leaves as they are)."""
        return np.array([c.kind == "numeric" and k == 0 for c in self.columns
                         for k in range(c.width)], dtype=bool)

    def align(self, X: Any, name: str = "X") -> Table:
        """X as a Table whose columns are this encoding's, in order: by name
        when both have names (other columns are ignored, a missing one is a
        DataError that names it), else by position."""
        table = as_table(X, self.markers, name)
        if self.named and table.names is not None:
            where = {n: j for j, n in reversed(list(enumerate(table.names)))}
            picked: list[Optional[RawColumn]] = []
            for c in self.columns:
                if c.kind == "dropped":
                    picked.append(None)
                    continue
                j = where.get(c.name)
                if j is None:
                    raise DataError(f"{table.source} has no column {col(c.name)}, which "
                                    f"the model takes (it takes {listing(self.kept_names())})")
                picked.append(table.columns[j])
            block = None
            if table.block is not None:
                block = table.block[:, [where[c.name] for c in self.columns]]
            return Table(picked, [c.name for c in self.columns], len(table), table.lines,
                         block, table.source)
        if len(table.columns) != len(self.columns):
            raise DataError(f"{table.source} has {len(table.columns)} columns, but this model "
                            f"takes {len(self.columns)} "
                            f"({listing([c.name for c in self.columns])})")
        return table

    def extra_columns(self, X: Any) -> list[str]:
        """The names of X's columns that the model does not use (by name)."""
        table = as_table(X, self.markers)
        if not (self.named and table.names is not None):
            return []
        known = {c.name for c in self.columns}
        return [n for n in table.names if n not in known]

    def kept_names(self) -> list[str]:
        return [c.name for c in self.columns if c.kind != "dropped"]

    def encode(self, X: Any, name: str = "X") -> np.ndarray:
        """Rows X as the network's inputs (float64, n_features wide; rows of
        numbers only keep their dtype when nothing is to be done)."""
        table = self.align(X, name)
        if self.identity and table.block is not None and not (
                table.block.dtype.kind == "f" and not np.isfinite(table.block).all()):
            return table.block
        out = np.zeros((len(table), self.n_features))
        at = 0
        for c, raw in zip(self.columns, table.columns):
            if c.kind == "numeric":
                assert raw is not None
                out[:, at] = _numbers(raw, c, table)
                if c.indicator:
                    out[:, at + 1] = raw.missing_mask()
            elif c.kind == "categorical":
                assert raw is not None
                unit = self._units(c, raw)
                rows = np.flatnonzero(unit >= 0)
                out[rows, at + unit[rows]] = 1.0
            at += c.width
        return out

    def _units(self, c: Column, raw: RawColumn) -> np.ndarray:
        """The unit (0-based within the column) of each cell, -1 for none."""
        units = _lookup(raw, {v: k for k, v in enumerate(c.categories)},
                        len(c.categories) if c.other else -1)
        units[raw.missing_mask()] = len(c.categories) + c.other if c.missing else -1
        return units

    def unknown(self, X: Any, name: str = "X") -> dict[str, dict[str, int]]:
        """Per categorical column, how many cells of X are a value not seen in
        training ("unseen", encoded as zeros) or missing where training had
        none ("missing", zeros): only the columns with any. (A column past
        MAX_CATEGORIES groups unseen values with the rare ones as other: it
        is not counted.)"""
        table = self.align(X, name)
        report: dict[str, dict[str, int]] = {}
        for c, raw in zip(self.columns, table.columns):
            if c.kind != "categorical" or raw is None:
                continue
            gone = raw.missing_mask()
            outside = int((_lookup(raw, {v: 0 for v in c.categories}, -1)[~gone] < 0).sum())
            counts = {"unseen": 0 if c.other else outside,
                      "missing": 0 if c.missing else int(gone.sum())}
            counts = {k: v for k, v in counts.items() if v}
            if counts:
                report[c.name] = counts
        return report

    # ------------------------------------------------------------- describe

    def summary(self) -> str:
        """'Columns: 12 numeric, 3 categorical (sex: 2 values, ...), 1 dropped
        (id); 19 inputs (matched by name)'."""
        how = "by name" if self.named else "by position"
        return f"Columns: {self.kinds_text()}; {self.n_features:,} inputs (matched {how})"

    def kinds_text(self) -> str:
        """'12 numeric, 3 categorical (sex: 2 values, ...), 1 dropped (id)'."""
        kinds = {k: [c for c in self.columns if c.kind == k] for k in KINDS}
        parts = [f"{len(kinds['numeric'])} numeric"] if kinds["numeric"] else []
        if kinds["categorical"]:
            parts.append(f"{len(kinds['categorical'])} categorical "
                         f"({listing([c.describe() for c in kinds['categorical']], 8)})")
        if kinds["dropped"]:
            parts.append(f"{len(kinds['dropped'])} dropped "
                         f"({listing([c.name for c in kinds['dropped']], 8)})")
        return ", ".join(parts)

    def missing_summary(self) -> Optional[str]:
        """'Missing values: age (filled with the median 28, flagged), embarked
        (a category)', or None."""
        parts = [f"{listing([c.name])} (filled with the median {c.fill:.6g}, flagged)"
                 for c in self.columns if c.kind == "numeric" and c.indicator]
        parts += [f"{listing([c.name])} (a category)" for c in self.columns
                  if c.kind == "categorical" and c.missing]
        if not parts:
            return None
        more = f", ... ({len(parts)} columns in all)" if len(parts) > 8 else ""
        return f"Missing values: {', '.join(parts[:8])}{more}"

    def __repr__(self) -> str:
        return f"Columns({self.kinds_text()}, named={self.named}, markers={list(self.markers)!r})"

    # --------------------------------------------------------------- files

    def to_dict(self) -> dict[str, Any]:
        return {"named": self.named, "missing": list(self.markers),
                "items": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Columns":
        """From the checked header field (see `schema`)."""
        columns = [Column(i["name"], i["kind"], fill=i.get("fill"),
                          indicator=bool(i.get("indicator")),
                          categories=list(i.get("categories") or []),
                          other=bool(i.get("other")), missing=bool(i.get("missing")))
                   for i in d["items"]]
        return cls(columns, d["named"], tuple(d.get("missing") or MISSING))


# ---------------------------------------------------------------- learning

def resolve(refs: Optional[Iterable[Union[str, int]]], names: list[str], option: str,
            lenient: bool = False) -> list[int]:
    """The 0-based columns that names or 1-based numbers refer to (a string
    'a,b,3' is split at commas); ConfigError naming the columns there are
    (with `lenient`, a name not there is passed over)."""
    from fastnn._validation import short_text

    if refs is None:
        return []
    if isinstance(refs, str):
        refs = [r for r in refs.split(",") if r.strip()]
    out = []
    where = {n: j for j, n in reversed(list(enumerate(names)))}
    for ref in refs:
        text = str(ref).strip()
        if text in where:
            out.append(where[text])
        elif isinstance(ref, int) and not isinstance(ref, bool) and 1 <= ref <= len(names):
            out.append(ref - 1)
        elif text.isascii() and text.isdigit() and 1 <= int(text[:12]) <= len(names):
            out.append(int(text) - 1)
        elif not lenient:
            raise ConfigError(f"--{option} names no column {short_text(text)}; the columns are "
                              f"{listing(names, 12)} (or their numbers 1..{len(names)})")
    return out


def _check_names(table: Table, names: list[str]) -> None:
    if table.names is None:
        return
    for name in names:
        if len(name) > MAX_NAME:
            raise DataError(f"{table.source} has a column name of {len(name):,} characters; "
                            f"fastnn keeps names of at most {MAX_NAME} (rename it)")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{table.source} names two columns {col(name)}; give them "
                            f"different names")
        seen.add(name)


def _learn_column(raw: RawColumn, name: str, table: Table, as_categories: bool,
                  notes: Optional[list[str]]) -> Column:
    from fastnn._validation import short_text

    gone = raw.missing_mask()
    present = ~gone
    n_present = int(present.sum())
    if n_present == 0:
        raise DataError(f"{table.source}: column {col(name)} is missing on every row; "
                        f"--drop {col(name)} leaves it out")
    text = raw.text_mask()
    n_text = int(text.sum())
    if not as_categories and n_text and n_text < (1 - MOSTLY_NUMBERS) * n_present:
        row = int(np.argmax(text))
        value = raw.vocab[raw.codes[row]] if raw.codes is not None else ""
        raise DataError(f"{table.source}: {table.where(row)}, column {col(name)} is not a "
                        f"number: {short_text(value)}, where {n_present - n_text:,} of its "
                        f"{n_present:,} values are; mark such values missing with --missing, "
                        f"read the column as categories with --categorical "
                        f"{col(name)}, leave it out with --drop {col(name)}, or "
                        f"name the label column with --label-col")
    if as_categories or n_text:
        found = _value_counts(raw)
        distinct = np.array(sorted(found), dtype=object)
        counts = np.array([found[v] for v in distinct.tolist()], dtype=np.int64)
        long = [v for v in distinct.tolist() if len(v) > MAX_NAME]
        if long:
            raise DataError(f"{table.source}: column {col(name)} has a value of "
                            f"{len(long[0]):,} characters; fastnn keeps category values of at "
                            f"most {MAX_NAME} (--drop {col(name)} leaves it out)")
        categories = distinct.tolist()
        other = False
        if len(categories) > MAX_CATEGORIES:
            order = sorted(range(len(categories)), key=lambda k: (-counts[k], categories[k]))
            kept = [k for k in order[:MAX_CATEGORIES] if counts[k] >= MIN_KEPT]
            categories = sorted(categories[k] for k in kept)
            other = True
        if notes is not None and n_text == n_present >= ID_ROWS and len(distinct) == n_present:
            notes.append(f"Note: column {col(name)} has a different text on every row, "
                         f"like an ID or a name; --drop {col(name)} leaves it out")
        return Column(name, "categorical", categories=categories, other=other,
                      missing=bool(gone.any()))
    numbers = raw.numbers[present]
    if not np.isfinite(numbers).all():
        row = int(np.flatnonzero(present & ~np.isfinite(raw.numbers))[0])
        raise DataError(f"{table.source}: {table.where(row)}, column {col(name)} is "
                        f"{raw.numbers[row]}, not a finite number")
    if notes is not None and _looks_like_row_numbers(numbers):
        notes.append(f"Note: column {col(name)} holds a different whole number on every "
                     f"row, like a row number or an ID; --drop {col(name)} leaves it out")
    return Column(name, "numeric", fill=_median(numbers), indicator=bool(gone.any()))


def _median(numbers):
    """The median of finite float64 numbers, finite itself: of an even count
    it is the mean of the middle two, which overflows for two near 1.7e308
    unless halved first (exact, but in the subnormal range)."""
    with np.errstate(over="ignore", invalid="ignore"):
        middle = float(np.median(numbers))
    return middle if np.isfinite(middle) else 2 * float(np.median(numbers / 2))


def _value_counts(raw: RawColumn) -> dict[str, int]:
    """{value: count} of a column's present cells, numbers as number_text."""
    found: dict[str, int] = {}
    numbers = ~np.isnan(raw.numbers)
    if numbers.any():
        distinct, counts = np.unique(raw.numbers[numbers], return_counts=True)
        found.update(zip((number_text(v) for v in distinct.tolist()), counts.tolist()))
    if raw.codes is not None:
        counts = np.bincount(raw.codes[raw.codes >= 0], minlength=len(raw.vocab))
        found.update((v, n) for v, n in zip(raw.vocab, counts.tolist()) if n)
    return found


def _lookup(raw: RawColumn, index: dict[str, int], default: int) -> np.ndarray:
    """index[value] of each present cell of a column (numbers as
    number_text), `default` for a value not in index and for missing cells:
    a lookup per distinct value, not per cell."""
    units = np.full(len(raw), default, dtype=np.int64)
    numbers = ~np.isnan(raw.numbers)
    if numbers.any():
        distinct, inverse = np.unique(raw.numbers[numbers], return_inverse=True)
        table = np.array([index.get(number_text(v), default) for v in distinct.tolist()],
                         dtype=np.int64)
        units[numbers] = table[inverse]
    if raw.codes is not None:
        text = raw.codes >= 0
        table = np.array([index.get(v, default) for v in raw.vocab], dtype=np.int64)
        units[text] = table[raw.codes[text]]
    return units


def _looks_like_row_numbers(numbers: np.ndarray) -> bool:
    n = len(numbers)
    if n < ID_ROWS or not (numbers == np.round(numbers)).all():
        return False
    return len(np.unique(numbers)) == n and numbers.max() - numbers.min() < 2 * n


def _numbers(raw: RawColumn, c: Column, table: Table) -> np.ndarray:
    """A numeric column's values, missing ones filled; DataError for text."""
    from fastnn._validation import short_text

    if raw.has_text:
        row = int(np.argmax(raw.text_mask()))
        assert raw.codes is not None
        raise DataError(f"{table.source}: {table.where(row)}, column {col(c.name)} is not a "
                        f"number: {short_text(raw.vocab[raw.codes[row]])}, and the model was "
                        f"trained with the column as numbers (retrain with --categorical "
                        f"{col(c.name)}, or --missing to read such values as missing)")
    values = raw.numbers.copy()
    gone = raw.missing_mask()
    if not np.isfinite(values[~gone]).all():
        row = int(np.flatnonzero(~gone & ~np.isfinite(values))[0])
        raise DataError(f"{table.source}: {table.where(row)}, column {col(c.name)} is "
                        f"{values[row]}, not a finite number")
    values[gone] = c.fill
    return values


# ------------------------------------------------------------------ schema

def schema(max_units: int) -> Any:
    """The spec of ``preprocessing.columns`` in the model file."""
    from fastnn.schema import Bool, ListOf, Record, Real, Text

    from fastnn.table import MAX_MARKER, MAX_MARKERS

    item = Record(required={"name": Text(MAX_NAME), "kind": Text(choices=KINDS)},
                  optional={"fill": Real(), "indicator": Bool(),
                            "categories": ListOf(Text(MAX_NAME), 0, MAX_CATEGORIES),
                            "other": Bool(), "missing": Bool()})
    return Record(required={"named": Bool(), "items": ListOf(item, 1, min(max_units, MAX_COLUMNS))},
                  optional={"missing": ListOf(Text(MAX_MARKER), 1, MAX_MARKERS)})


def check_field(columns: Optional[dict[str, Any]], n_inputs: int) -> None:
    """Checks of a checked ``preprocessing.columns`` field against the
    network's inputs (raises SchemaError)."""
    from fastnn.schema import SchemaError

    if columns is None:
        return
    width = 0
    names = set()
    for k, item in enumerate(columns["items"]):
        where = f"preprocessing.columns.items[{k}]"
        kind = item["kind"]
        allowed = {"numeric": {"fill", "indicator"},
                   "categorical": {"categories", "other", "missing"}}.get(kind, set())
        extra = set(item) - {"name", "kind"} - allowed
        if extra:
            raise SchemaError(f"{where}.{sorted(extra)[0]}", f"absent for a {kind} column",
                              item[sorted(extra)[0]])
        if kind == "numeric":
            if "fill" not in item:
                raise SchemaError(f"{where}.fill", "present for a numeric column", None)
            width += 1 + bool(item.get("indicator"))
        elif kind == "categorical":
            categories = item.get("categories") or []
            if categories != sorted(set(categories)):
                raise SchemaError(f"{where}.categories", "distinct values in sorted order",
                                  categories)
            units = len(categories) + bool(item.get("other")) + bool(item.get("missing"))
            if units == 0:
                raise SchemaError(f"{where}", "a column of at least one unit", item)
            width += units
        if columns["named"]:
            if item["name"] in names:
                raise SchemaError(f"{where}.name", "a name no other column has", item["name"])
            names.add(item["name"])
    if width != n_inputs:
        raise SchemaError("preprocessing.columns", f"columns that encode to the network's "
                          f"{n_inputs} inputs", None,
                          f"preprocessing.columns encodes to {width} inputs, but the network "
                          f"takes {n_inputs}")
