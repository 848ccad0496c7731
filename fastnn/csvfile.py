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
"""
import csv
import io
import re
from dataclasses import dataclass
from typing import Optional

from fastnn.exceptions import ConfigError

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
