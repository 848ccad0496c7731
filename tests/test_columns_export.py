"""Exports of a model trained on raw tabular rows (issue 20 §5): the NumPy
module takes the rows as a user has them (text, gaps), the C file takes
category indices (fastnn_category finds them), ONNX takes the encoded rows
and carries the encoding table in its metadata; names that try to break out
of the generated code stay data."""
import importlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn.columns import Columns
from fastnn.export import export

pd = pytest.importorskip("pandas")
CC = shutil.which("cc")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
EVIL = 'x"""\n*/ import os; os.system("touch PWNED") #\\'


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"age": rng.normal(40, 10, n).round(1),
                       EVIL: rng.choice(["a", EVIL, 'b*/"\\?'], n),
                       "port": rng.choice(["S", "C", "Q"], n)})
    df.loc[rng.random(n) < 0.1, "age"] = np.nan
    df.loc[rng.random(n) < 0.1, "port"] = None
    y = np.where(df[EVIL] == "a", "yes", "no")
    columns = Columns.learn(df)
    net = fastnn.Network([columns.n_features, 8, 2], activation="relu", output="softmax",
                         loss="cross_entropy", seed=0)
    net.fit(df, y, epochs=5, scale="standard", optimizer="adam", lr=0.01)
    test = df.iloc[:20].copy()
    test.iloc[0, 1] = "never seen"
    test.iloc[1, 0] = np.nan
    return net, test


def test_the_numpy_module_takes_raw_rows(trained, tmp_path, monkeypatch):
    net, test = trained
    export(net, tmp_path / "tab.py", "numpy")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module("tab")
    np.testing.assert_allclose(module.forward(test), net.forward(test), atol=1e-6)
    assert module.predict(test).tolist() == net.predict(test).tolist()
    # rows as a list of lists of text, in the training order
    rows = [[("" if v is None or v != v else str(v)) for v in row]
            for row in test.astype(object).to_numpy().tolist()]
    np.testing.assert_allclose(module.forward(rows), net.forward(test), atol=1e-6)
    test.to_csv(tmp_path / "rows.csv", index=False)
    out = subprocess.run([sys.executable, "tab.py", "rows.csv"], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert out.stdout.split() == net.predict(test).tolist()
    assert not (tmp_path / "PWNED").exists()


def test_onnx_takes_encoded_rows_and_keeps_the_table(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    net, test = trained
    export(net, tmp_path / "tab.onnx", "onnx")
    meta = {p.key: p.value for p in onnx.load(tmp_path / "tab.onnx").metadata_props}
    table = Columns.from_dict(json.loads(meta["columns"].replace("\\\\", "\\")))
    assert table == net.preprocessing.columns
    assert json.loads(meta["input_names"].replace("\\\\", "\\")) == table.unit_names()
    session = ort.InferenceSession(str(tmp_path / "tab.onnx"))
    encoded = table.encode(test).astype(np.float32)
    np.testing.assert_allclose(session.run(["output"], {"input": encoded})[0],
                               net.forward(test), atol=1e-5)


DRIVER = r"""
#include <math.h>
#include <stdio.h>
int fastnn_category(int column, const char *value);
int fastnn_predict_raw(const double *values, const int *codes, float *output);
extern const char *fastnn_column_name(int column);
int main(void)
{
    /* age missing, the evil column's value 'a', port unseen; then port missing */
    double values[3] = {NAN, 0, 0};
    int codes[3] = {0, 0, 0};
    float out[2];
    codes[1] = fastnn_category(1, "a");
    codes[2] = fastnn_category(2, "Z");
    fastnn_predict_raw(values, codes, out);
    printf("%.9g %.9g %d\n", out[0], out[1], codes[2]);
    values[0] = 31.5;
    codes[2] = -2;
    fastnn_predict_raw(values, codes, out);
    printf("%.9g %.9g\n", out[0], out[1]);
    return fastnn_column_name(2) == 0;
}
"""


def test_the_c_file_takes_category_indices(trained, tmp_path):
    if CC is None:
        pytest.skip("no C compiler (cc)")
    net, _ = trained
    export(net, tmp_path / "tab.c", "c")
    (tmp_path / "driver.c").write_text(DRIVER)
    exe = tmp_path / "driver"
    # (without -DFASTNN_MAIN, the unused class-name table is a warning)
    subprocess.run([CC, *STRICT[:-1], "tab.c", "driver.c", "-o", exe, "-lm"], check=True,
                   capture_output=True, text=True, cwd=tmp_path)
    lines = subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split("\n")
    rows = pd.DataFrame({"age": [np.nan, 31.5], EVIL: ["a", "a"], "port": ["Z", None]})
    expected = net.forward(rows)
    first, second = (np.array(line.split()[:2], dtype=float) for line in lines[:2])
    np.testing.assert_allclose(first, expected[0], atol=1e-5)
    np.testing.assert_allclose(second, expected[1], atol=1e-5)
    assert lines[0].split()[2] == "-1"                  # "Z": FASTNN_UNSEEN
    # the generated file also compiles as a program, without a warning
    subprocess.run([CC, *STRICT, "-DFASTNN_MAIN", "tab.c", "-o", tmp_path / "main", "-lm"],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
