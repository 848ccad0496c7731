"""The README's worked example on a CSV with text categories and missing
values (issue 20 §9), written by this file and checked against it.

The data are made here (`write_files`: numpy's seeded generator, the same on
every machine). The test runs the README's commands and compares their
output with the README's block line by line; lines whose numbers come from
training (epochs, losses, accuracies) are compared with their numbers
masked, and the epoch lines between the first and the last are the README's
``...``.

    python tests/test_readme_example.py DIR        # write the example's CSV files to DIR
    python tests/test_readme_example.py --readme   # rewrite the README's block from a run
"""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- worked example: written by tests/test_readme_example.py -->"
END = "<!-- end of the worked example -->"

#: The commands of the example, as the README shows them (run in the files' directory).
COMMANDS = [
    "fastnn train passengers_train.csv --label-col survived --categorical class --drop id "
    "--seed 0 -o passengers.safetensors",
    "fastnn eval passengers.safetensors passengers_test.csv",
    "cat new.csv",
    "fastnn predict passengers.safetensors new.csv",
]
#: Output lines whose numbers come from training, compared with them masked.
MEASURED = re.compile(r"^(epoch |Stopped early|Kept the weights|passengers\.safetensors on |"
                      r"accuracy |\s*class |\s+(no|yes) |\s*\d|confusion|  [0-9 ]+$)")


def passengers(n, rng):
    """n rows of a passenger list: an ID, age (15 % missing), sex, class
    1/2/3, port S/C/Q (10 % missing) and fare; survived is yes for women,
    children under 12 and first-class passengers under 50, else no."""
    age = rng.normal(35, 14, n).clip(1, 80).round(0)
    sex = rng.choice(["female", "male"], n)
    klass = rng.choice([1, 2, 3], n, p=[0.25, 0.25, 0.5])
    port = rng.choice(["S", "C", "Q"], n, p=[0.7, 0.2, 0.1]).astype(object)
    fare = (rng.gamma(2, 8, n) * (4 - klass)).round(2)
    survived = np.where((sex == "female") | (age < 12) | ((klass == 1) & (age < 50)),
                        "yes", "no")
    age_text = age.astype(int).astype(str).astype(object)
    age_text[rng.random(n) < 0.15] = ""
    port[rng.random(n) < 0.10] = "NA"
    rows = zip(range(1, n + 1), age_text, sex, klass, port, fare, survived)
    return ["id,age,sex,class,port,fare,survived"] + [
        f"{i},{a},{s},{k},{p},{f:.2f},{y}" for i, a, s, k, p, f, y in rows]


def write_files(directory):
    """passengers_train.csv (400 rows), passengers_test.csv (100) and
    new.csv (3 rows without a label or an ID: an unseen sex, a missing age
    and a missing port)."""
    directory = Path(directory)
    rng = np.random.default_rng(20)
    lines = passengers(500, rng)
    (directory / "passengers_train.csv").write_text("\n".join(lines[:401]) + "\n")
    (directory / "passengers_test.csv").write_text("\n".join(lines[:1] + lines[401:]) + "\n")
    (directory / "new.csv").write_text("age,sex,class,port,fare\n"
                                       "8,unknown,2,S,20.00\n"
                                       ",female,3,C,9.50\n"
                                       "62,male,3,NA,7.25\n")


def transcript(directory):
    """The example's commands run in `directory`, as the README shows them:
    each command after a ``$``, its output (stdout and stderr as a terminal
    shows them), the epoch lines between the first and the last as ``...``."""
    from click.testing import CliRunner

    from fastnn.cli import main

    out = []
    for command in COMMANDS:
        out.append(f"$ {command}")
        words = command.split()
        if words[0] == "cat":
            out += (Path(directory) / words[1]).read_text().splitlines() + [""]
            continue
        result = CliRunner().invoke(main, words[1:], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
        if len(epochs) > 2:
            lines = lines[:epochs[0] + 1] + ["..."] + lines[epochs[-1]:]
        out += lines
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def readme_block(text):
    start, end = text.index(BEGIN), text.index(END)
    block = text[start + len(BEGIN):end].strip("\n")
    assert block.startswith("```text\n") and block.endswith("\n```"), block[:40]
    return block[len("```text\n"):-len("```")]


def masked(line):
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", line) if MEASURED.match(line) else line


def test_the_readme_worked_example_is_what_the_commands_print(tmp_path, monkeypatch):
    pytest.importorskip("click")
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path)
    ran = transcript(tmp_path).splitlines()
    shown = readme_block(README.read_text()).splitlines()
    assert [masked(line) for line in shown] == [masked(line) for line in ran]
    # what the example is there to show
    text = "\n".join(ran)
    assert "Columns: 2 numeric, 3 categorical (sex: 2 values, class: 3 values, port: 3 values " \
           "+ missing), 1 dropped (id); 12 inputs (matched by name)" in text
    assert "Missing values: age (filled with the median" in text
    assert "Recipe: tabular" in text
    predicted = ran[ran.index("$ " + COMMANDS[-1]) + 1:]
    assert predicted == ["Note: values not seen in training, encoded as zeros: sex 1",
                         "label", "yes", "yes", "no"]


def _rewrite_readme():
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        import os

        here = os.getcwd()
        os.chdir(directory)
        try:
            write_files(directory)
            text = transcript(directory)
        finally:
            os.chdir(here)
    old = README.read_text()
    start, end = old.index(BEGIN) + len(BEGIN), old.index(END)
    README.write_text(old[:start] + "\n```text\n" + text + "```\n" + old[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        _rewrite_readme()
    elif len(sys.argv) == 2:
        write_files(sys.argv[1])
    else:
        sys.exit(__doc__.split("\n\n")[-1])
