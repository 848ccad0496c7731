"""Column kinds, one-hot categories and missing values (fastnn.columns,
fastnn.table; issue 20 §1-§4, §8): compared with scikit-learn's
ColumnTransformer, through the API, the model file and the CLI."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import fastnn
from fastnn.cli import main
from fastnn.columns import MAX_CATEGORIES, Columns
from fastnn.exceptions import ConfigError, DataError, ModelFileError
from fastnn.table import MAX_DISTINCT, Table

pd = pytest.importorskip("pandas")


def frame(n=120, seed=0):
    """A small table of every kind: numbers with gaps, text with gaps,
    whole-number classes, an ID; a label that depends on sex and age."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "id": np.arange(1, n + 1),
        "age": rng.normal(40, 12, n).round(1),
        "sex": rng.choice(["male", "female"], n),
        "class": rng.choice([1, 2, 3], n),
        "port": rng.choice(["S", "C", "Q"], n),
        "fare": rng.gamma(2, 10, n).round(2),
    })
    df.loc[rng.random(n) < 0.15, "age"] = np.nan
    df.loc[rng.random(n) < 0.1, "port"] = None
    y = np.where((df["sex"] == "female") | (df["age"].fillna(40) < 30), "yes", "no")
    return df, y


def sklearn_encoding(df, categorical):
    """The oracle: SimpleImputer(median, add_indicator) on the numbers and
    OneHotEncoder(handle_unknown='ignore') on the text, missing text as a
    category of its own, in fastnn's column order."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    parts = []
    for name in df.columns:
        column = df[[name]]
        if name in categorical:
            text = column.astype(object).where(column.notna(), "\0missing").astype(str)
            encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(text)
            out = encoder.transform(text)
            if "\0missing" in encoder.categories_[0]:
                # OneHotEncoder sorts "\0missing" first; fastnn puts it last
                out = np.hstack([out[:, 1:], out[:, :1]])
            parts.append(out)
        else:
            imputer = SimpleImputer(strategy="median", add_indicator=True).fit(column)
            parts.append(imputer.transform(column))
    return np.hstack(parts)


def test_the_encoding_is_scikit_learns_column_transformer():
    df, _ = frame()
    notes = []
    columns = Columns.learn(df.drop(columns="id"), categorical=["class"], notes=notes)
    expected = sklearn_encoding(df.drop(columns="id"), {"sex", "class", "port"})
    np.testing.assert_array_equal(columns.encode(df.drop(columns="id")), expected)
    assert columns.unit_names() == [
        "age", "age (missing)", "sex=female", "sex=male", "class=1", "class=2", "class=3",
        "port=C", "port=Q", "port=S", "port (missing)", "fare"]
    assert columns.summary() == ("Columns: 2 numeric, 3 categorical (sex: 2 values, class: 3 "
                                 "values, port: 3 values + missing); 12 inputs (matched by name)")
    assert columns.missing_summary() == (
        f"Missing values: age (filled with the median {np.nanmedian(df['age']):.6g}, flagged), "
        f"port (a category)")
    assert notes == []


def test_ids_are_noted_and_drop_leaves_them_out():
    df, _ = frame()
    df["name"] = [f"Person {i}" for i in range(len(df))]
    notes = []
    columns = Columns.learn(df, notes=notes)
    assert notes == [
        "Note: column id holds a different whole number on every row, like a row number or an "
        "ID; --drop id leaves it out",
        "Note: column name has a different text on every row, like an ID or a name; --drop name "
        "leaves it out"]
    # 120 distinct names: past the cap, each seen once, all grouped as other
    name = columns.columns[-1]
    assert name.categories == [] and name.other and name.width == 1
    dropped = Columns.learn(df, drop="id,name")
    assert dropped.kept_names() == ["age", "sex", "class", "port", "fare"]
    assert dropped.summary() == ("Columns: 3 numeric, 2 categorical (sex: 2 values, port: 3 "
                                 "values + missing), 2 dropped (id, name); 10 inputs (matched "
                                 "by name)")
    with pytest.raises(ConfigError, match=r"--drop names no column 'nope'; the columns are id, "
                                          r"age, .* \(or their numbers 1..7\)"):
        Columns.learn(df, drop=["nope"])
    with pytest.raises(ConfigError, match="column age is given both to --categorical and --drop"):
        Columns.learn(df, drop=["age"], categorical=[2])


def test_unseen_and_missing_values_encode_as_zeros_and_are_counted():
    df, _ = frame()
    columns = Columns.learn(df.drop(columns="id"), categorical=["class"])
    new = df.drop(columns="id").iloc[:4].copy()
    new["sex"] = ["other", None, "male", "female"]       # sex had no missing in training
    new["class"] = [4, 1, 1, 1]
    new["age"] = [np.nan, 1.0, 2.0, 3.0]
    X = columns.encode(new)
    names = columns.unit_names()
    sex = [names.index("sex=female"), names.index("sex=male")]
    assert (X[:2, sex] == 0).all() and X[2, sex].tolist() == [0, 1]
    assert X[0, names.index("class=1"):names.index("class=3") + 1].tolist() == [0, 0, 0]
    assert X[0, 0] == columns.columns[0].fill and X[0, 1] == 1
    assert columns.unknown(new) == {"sex": {"unseen": 1, "missing": 1}, "class": {"unseen": 1}}


def test_a_column_past_the_cap_keeps_its_frequent_values():
    values = [f"v{i:03d}" for i in range(300)]
    cells = values + values[:150] + values[:50]           # v000..v049 thrice, to v149 twice
    table = pd.DataFrame({"c": cells})
    column = Columns.learn(table).columns[0]
    assert column.other and len(column.categories) == MAX_CATEGORIES
    assert column.categories == values[:MAX_CATEGORIES]   # the most frequent, ties sorted
    assert Columns.learn(table).encode(pd.DataFrame({"c": ["v299", "v000"]}))[:, -1].tolist() \
        == [1, 0]


@pytest.mark.parametrize("make, message", [
    (lambda: pd.DataFrame({"a": [1.0, 2.0], "b": [None, None]}),
     "column b is missing on every row; --drop b leaves it out"),
    (lambda: pd.DataFrame({"a": [1.0, 2.0], "b": ["x" * 10_000_000, "y"]}),
     "column b has a value of 10,000,000 characters; fastnn keeps category values of at most "
     "256 \\(--drop b leaves it out\\)"),
    (lambda: pd.DataFrame({"a": [1.0, 2.0], "x" * 300: ["a", "b"]}),
     "a column name of 300 characters"),
    (lambda: pd.DataFrame([[1, 2]], columns=["a", "a"]), "names two columns a"),
    (lambda: pd.DataFrame({"a": [1.0, np.inf]}), "row 1, column a is inf, not a finite number"),
])
def test_hostile_tables_are_refused_in_one_line(make, message):
    with pytest.raises((DataError, ConfigError), match=message) as info:
        Columns.learn(make())
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_a_table_is_matched_by_name_and_a_missing_column_is_named():
    df, y = frame()
    columns = Columns.learn(df.drop(columns="id"))
    shuffled = df[["fare", "port", "id", "class", "sex", "age"]]
    np.testing.assert_array_equal(columns.encode(shuffled), columns.encode(df))
    assert columns.extra_columns(shuffled) == ["id"]
    with pytest.raises(DataError, match="X has no column sex, which the model takes "
                                        r"\(it takes age, sex, class, port, fare\)"):
        columns.encode(df.drop(columns="sex"))
    # without names, position: the same width, or a DataError
    positional = Columns.learn(df.drop(columns="id").to_numpy(dtype=object))
    assert not positional.named and positional.n_features == columns.n_features
    with pytest.raises(DataError, match="X has 4 columns, but this model takes 5"):
        positional.encode(df.drop(columns=["id", "fare"]).to_numpy(dtype=object))


def test_the_api_trains_on_a_data_frame_and_the_model_file_keeps_the_encoding(tmp_path):
    df, y = frame(400)
    columns = Columns.learn(df, drop=["id"])
    net = fastnn.Network([columns.n_features, 16, 2], activation="relu", output="softmax",
                         loss="cross_entropy", init="he", seed=0)
    net.fit(df, y, epochs=30, optimizer="adam", lr=0.01, batch_size=16, drop=["id"],
            scale="standard")
    assert net.evaluate(df, y)["accuracy"] > 0.9
    # the 0/1 units are left unscaled, the numbers standardised
    scaling = net.preprocessing.scaling
    units = ~net.preprocessing.columns.numeric_units()
    assert (scaling.offset[units] == 0).all() and (scaling.scale[units] == 1).all()
    assert abs(scaling.offset[0] - df["age"].median()) < 5      # the mean of the filled ages
    net.save(tmp_path / "m.safetensors")
    again = fastnn.load(tmp_path / "m.safetensors")
    assert again.preprocessing.columns == net.preprocessing.columns
    np.testing.assert_array_equal(again.predict(df), net.predict(df))
    with pytest.raises(DataError, match=r"X encodes to 10 inputs \(3 numeric, 2 categorical "
                                        r"\(sex: 2 values, port: 3 values \+ missing\), 1 "
                                        r"dropped \(id\)\), but this network's first layer "
                                        r"takes 5; build it with 10 inputs"):
        fastnn.Network([5, 3, 2], seed=0).fit(df, y, drop=["id"], epochs=1)


def damaged(path, edit):
    """The model file at path with its preprocessing field edited."""
    from fastnn.io import safetensors_bytes

    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    pre = json.loads(meta["preprocessing"])
    edit(pre["columns"])
    meta["preprocessing"] = json.dumps(pre)
    tensors = {}
    data = raw[8 + n:]
    for name, t in header.items():
        begin, end = t["data_offsets"]
        dtype = {"F32": "<f4", "F64": "<f8"}[t["dtype"]]
        tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(t["shape"])
    out = path.with_name("damaged.safetensors")
    out.write_bytes(safetensors_bytes(tensors, meta))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["items"][2].update(categories=["male", "female"]),
     "categories must be distinct values in sorted order"),
    (lambda c: c["items"][2].update(categories=["female", "male", "x"]),
     "encodes to 11 inputs, but the network takes 10"),
    (lambda c: c["items"][1].update(kind="text"), r"kind must be one of"),
    (lambda c: c["items"][1].pop("fill"), "fill must be present for a numeric column"),
    (lambda c: c["items"][1].update(categories=["a"]), "categories must be absent for a numeric"),
    (lambda c: c["items"][3].update(name="age"), "name must be a name no other column has"),
    (lambda c: c["items"][2].update(categories=["x" * 300, "y"]), "at most 256 characters"),
])
def test_a_damaged_encoding_is_refused_when_the_model_is_read(tmp_path, edit, message):
    df, y = frame(60)
    columns = Columns.learn(df, drop=["id"])
    net = fastnn.Network([columns.n_features, 4, 2], seed=0)
    net.prepare(df, y, task="classification", scale="standard", columns=columns)
    net.save(tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=message):
        fastnn.load(damaged(tmp_path / "m.safetensors", edit))


# ---------------------------------------------------------------- the CLI

def run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_train_eval_predict_on_a_csv_with_text_and_gaps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df, y = frame(300)
    data = df.copy()
    data.insert(2, "survived", y)                       # the label in the middle
    data.loc[[5, 17], "survived"] = None                # two rows without a label
    data.to_csv("train.csv", index=False)
    out = run("train", "train.csv", "--label-col", "survived", "--seed", "0", "--epochs", "5",
              "--categorical", "class", "-o", "m.safetensors").output
    lines = [line for line in out.splitlines() if not line.startswith("Note: ")]
    assert lines[0].startswith("Task: classification, 2 classes (no, yes)")
    assert "Columns: 3 numeric, 3 categorical (sex: 2 values, class: 3 values, port: 3 values "\
           "+ missing); 13 inputs (matched by name)" in lines
    assert any(line.startswith("Missing values: age (filled with the median") for line in lines)
    assert "Note: left out 2 rows of train.csv whose label is missing" in out
    assert "Note: column id holds a different whole number on every row" in out
    assert "training on 268 samples of train.csv (30 more held out for validation)" in out
    info = run("info", "m.safetensors").output
    assert "columns: 3 numeric, 3 categorical" in info
    # the rows to predict: other order, an extra column, no label, an unseen
    # category and a missing number
    new = df.iloc[:3][["fare", "port", "class", "sex", "age", "id"]].copy()
    new["sex"] = ["other", "male", "female"]
    new["age"] = [np.nan, 30, 50]
    new["comment"] = "x"
    new.to_csv("new.csv", index=False)
    result = run("predict", "m.safetensors", "new.csv")
    assert result.stdout.splitlines()[0] == "label" and len(result.stdout.splitlines()) == 4
    assert result.stderr.splitlines() == [
        "Note: new.csv's column comment is not used by the model",
        "Note: values not seen in training, encoded as zeros: sex 1"]
    net = fastnn.load(tmp_path / "m.safetensors")
    assert result.stdout.splitlines()[1:4] == net.predict(new).tolist()
    as_json = json.loads(run("predict", "m.safetensors", "new.csv", "--json").stdout)
    assert as_json["unknown_values"] == {"sex": {"unseen": 1}}
    report = json.loads(run("eval", "m.safetensors", "train.csv", "--json").stdout)
    assert report["n"] == 298
    # a column the model takes, missing: one line that names it
    new.drop(columns="sex").to_csv("nosex.csv", index=False)
    result = run("predict", "m.safetensors", "nosex.csv", code=1)
    assert result.output == ("Error: nosex.csv has no column sex, which the model takes (it "
                             "takes id, age, sex, class, port, fare)\n")
    # resumed: the same encoding, read from the model file
    out = run("train", "--resume", "m.safetensors", "--epochs", "1").output
    assert "training on 268 samples of train.csv (30 more held out for validation)" in out
    with pytest.raises(AssertionError, match="--drop is fixed by the model file"):
        run("train", "--resume", "m.safetensors", "--drop", "id")


def test_a_label_column_that_is_all_missing_and_a_million_categories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nolabel.csv").write_text("a,b,label\n" + "1,2,\n3,4,NA\n" * 5)
    result = run("train", "nolabel.csv", "-o", "m.safetensors", code=1)
    assert result.output == ("Error: nolabel.csv: the label column label is missing on every "
                             "row; name the label column with --label-col\n")
    rows = "".join(f"id{i},{i % 7},{i % 2}\n" for i in range(MAX_DISTINCT + 10))
    (tmp_path / "ids.csv").write_text("key,x,label\n" + rows)
    result = run("train", "ids.csv", "-o", "m.safetensors", code=1)
    assert result.output == (f"Error: ids.csv: column key has more than {MAX_DISTINCT:,} "
                             f"distinct values; fastnn reads at most that many per column (an "
                             f"ID or free text? --drop key leaves it out)\n")
    assert not (tmp_path / "m.safetensors").exists()
    # dropped, the column is not even read
    run("train", "ids.csv", "--drop", "key", "--epochs", "1", "-o", "m.safetensors")
    assert fastnn.load(tmp_path / "m.safetensors").sizes[0] == 1


def test_a_table_reads_what_a_csv_holds(tmp_path):
    from fastnn.data import load_data

    (tmp_path / "t.csv").write_text("n,c,y\n1,a,0\n,b,1\n2.5,NA,0\n?,a,1\n")
    data = load_data(tmp_path / "t.csv")
    assert isinstance(data.X, Table) and data.names == ["n", "c"]
    n, c = data.X.columns
    assert np.isnan(n.numbers[[1, 3]]).all() and n.missing.tolist() == [False, True, False, True]
    assert c.vocab == ["a", "b"] and c.codes.tolist() == [0, 1, -1, 0]
    assert data.X.where(2) == "row 4"
    # a custom set of markers: "?" is then a text
    data = load_data(tmp_path / "t.csv", missing=["NA"])
    assert data.X.columns[0].vocab == ["?"]
