"""A CSV file's dialect (fastnn.csvfile): the delimiter and the decimal mark
detected from the first lines, overridden by --delimiter and --decimal, and
the files spreadsheets write (BOM, CRLF, quotes, trailing blank lines)."""
import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

from fastnn.cli import main
from fastnn.csvfile import Dialect, parse_delimiter, read_csv, sniff
from fastnn.data import load_data
from fastnn.exceptions import ConfigError

ROWS = [(5.1, 3.5, "setosa"), (6.25, 2.9, "versicolor"), (7.7, 3.0, "virginica"),
        (4.9, 3.0, "setosa"), (5.5, 2.5, "versicolor"), (6.5, 3.0, "virginica")]


def write(path, delimiter=",", decimal=".", header=True, bom=False, crlf=False, quote=False,
          blank_lines=0, rows=ROWS):
    def cell(value):
        text = str(value).replace(".", decimal) if isinstance(value, float) else str(value)
        return f'"{text}"' if quote else text
    lines = [delimiter.join(["sepal length", "sepal width", "species"])] if header else []
    lines += [delimiter.join(cell(v) for v in row) for row in rows]
    end = "\r\n" if crlf else "\n"
    text = end.join(lines) + end + end * blank_lines
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


@pytest.mark.parametrize("text, delimiter, decimal", [
    ("a,b,c\n1.5,2,x\n", ",", "."),
    ("a;b;c\n1,5;2;x\n3,25;4;y\n", ";", ","),      # Excel where the decimal mark is a comma
    ("a;b;c\n1.5;2;x\n", ";", "."),
    ("a\tb\tc\n1,5\t2\tx\n", "\t", ","),
    ("a|b|c\n1.5|2|x\n", "|", "."),
    ("1,5;2,5\n3,5;4,5\n", ";", ","),                 # no header: ',' splits 3 ways, not numbers
    ('name,x\n"Smith; John",1\n"Doe; Jane",2\n', ",", "."),
    ("only\n1\n2\n", ",", "."),                       # one column: the usual dialect
    ("a,b\n1,2\n", ",", "."),                         # comma-separated: never a comma decimal
])
def test_the_dialect_is_detected_from_the_first_lines(text, delimiter, decimal):
    dialect = sniff(text)
    assert (dialect.delimiter, dialect.decimal) == (delimiter, decimal)
    assert dialect.detected == ("delimiter", "decimal")


def test_a_tie_goes_to_tab_for_a_tsv_file_and_overrides_win():
    text = "a\tb,c\nx\ty,z\n"           # tab: 2 fields, comma: 2 fields, no numbers
    assert sniff(text).delimiter == ","
    assert sniff(text, suffix=".tsv").delimiter == "\t"
    given = sniff("a;b\n1,5;2\n", delimiter=";", decimal=".")
    assert given == Dialect(";", ".", ())
    assert "as given" in given.describe()
    assert sniff("a;b\n1,5;2\n", decimal=",").describe() == (
        "delimiter ';' (semicolon), decimal ',' (delimiter detected; --delimiter and "
        "--decimal override)")
    assert parse_delimiter("tab") == "\t" and parse_delimiter("semicolon") == ";"
    with pytest.raises(ConfigError, match=r"delimiter must be one of ',', ';', '\|', tab .*"
                                          r"not ':'"):
        sniff("a:b\n", delimiter=":")
    with pytest.raises(ConfigError, match="cannot both be ','"):
        sniff("a,b\n", delimiter=",", decimal=",")


@pytest.mark.parametrize("delimiter, decimal, suffix", [
    (",", ".", ".csv"), (";", ",", ".csv"), ("\t", ".", ".tsv"), ("\t", ",", ".txt"),
    ("|", ".", ".txt"), (";", ".", ".csv.gz")])
@pytest.mark.parametrize("bom, crlf, quote, blank_lines",
                         [(False, False, False, 0), (True, True, True, 3)])
def test_every_dialect_reads_the_same_rows(tmp_path, delimiter, decimal, suffix, bom, crlf, quote,
                                           blank_lines):
    path = write(tmp_path / ("d" + suffix.replace(".gz", "")), delimiter, decimal, bom=bom,
                 crlf=crlf, quote=quote, blank_lines=blank_lines)
    if suffix.endswith(".gz"):
        gz = tmp_path / ("d" + suffix)
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    data = load_data(path)
    np.testing.assert_array_equal(data.X, [row[:2] for row in ROWS])
    assert data.y.tolist() == [row[2] for row in ROWS] and data.label_name == "species"
    assert (data.dialect.delimiter, data.dialect.decimal) == (delimiter, decimal)


def test_a_given_delimiter_reads_what_detection_would_not(tmp_path):
    # one row per line with a single '|' field: detection keeps the usual comma
    path = tmp_path / "p.txt"
    path.write_text("a|b\n1|0\n2|1\n3|0\n4|1\n")
    assert load_data(path, delimiter="|").X.tolist() == [[1], [2], [3], [4]]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_train_on_a_semicolon_file_says_the_dialect_and_eval_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "eu.csv", ";", ",", rows=ROWS * 5)
    result = run("train", "eu.csv", "--epochs", "2", "--seed", "0", "-o", "m.safetensors")
    assert result.exit_code == 0, result.output
    assert ("Read eu.csv: delimiter ';' (semicolon), decimal ',' (detected; --delimiter and "
            "--decimal override)") in result.output
    result = run("eval", "m.safetensors", "eu.csv", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["n"] == 30
    result = run("predict", "m.safetensors", "eu.csv", "--limit", "2")
    assert result.exit_code == 0 and len(result.output.splitlines()) == 3
    # the overrides, given wrong, reach the reader and stop it in one line
    result = run("eval", "m.safetensors", "eu.csv", "--delimiter", ",")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    result = run("train", "eu.csv", "--delimiter", ":")
    assert result.exit_code == 1
    assert result.output.strip().endswith("not ':'")
    # resumed: the same dialect options, kept in the model file
    write(tmp_path / "t.tsv", "\t", ".", rows=ROWS * 5)
    result = run("train", "t.tsv", "--delimiter", "tab", "--epochs", "1", "-o", "t.safetensors")
    assert result.exit_code == 0, result.output
    result = run("train", "--resume", "t.safetensors", "--epochs", "1", "--delimiter", ";")
    assert result.exit_code == 1 and "--delimiter is fixed by the model file" in result.output
    assert run("train", "--resume", "t.safetensors", "--epochs", "1").exit_code == 0


@pytest.mark.parametrize("label_col", ["label", "7", "1"])
def test_a_file_exactly_as_wide_as_the_features_has_no_label_column(tmp_path, label_col):
    # predict on the features alone: the model's label column (by name or
    # number) is not looked for in a file that has just the model's inputs
    path = tmp_path / "features.csv"
    path.write_text("1,2,3\n4,5,6\n")
    X, y = read_csv(path, label_col=label_col, n_features=3, label_optional=True)
    assert y is None
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 5, 6]])
