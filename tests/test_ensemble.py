"""fastnn.ensemble: K networks whose outputs are averaged, their model file
(format 3), and ``fastnn train --ensemble`` / ``fastnn ensemble``."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST_DIR, damage, examples, make_classification, rewrite_header, sweep
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import blas
from fastnn.cli import main
from fastnn.ensemble import MAX_MEMBERS, Ensemble
from fastnn.exceptions import ConfigError, ModelFileError
from fastnn.io import read_header
from fastnn.layers import Conv2D, Dense, MaxPool2D

ENV = {"FASTNN_DATA": str(MNIST_DIR)}


@pytest.fixture
def threads():
    before = blas.get_num_threads()
    yield blas.set_num_threads
    blas.set_num_threads(before)


def dense(seed=0, **kw):
    return fastnn.Network([12, 9, 4], activation="relu", output="softmax",
                          loss="cross_entropy", seed=seed, **kw)


def trained(k=3, epochs=3, **fit):
    X, y = make_classification(n=240, n_features=12, n_classes=4)
    ens = Ensemble.of(dense(5), k)
    ens.fit(X, y, epochs=epochs, batch_size=16, lr=0.05, task="classification",
            scale="standard", **fit)
    return ens, X, y


def cli(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args], env=ENV)
    assert result.exit_code == code, (result.output, result.exception)
    return result


# ------------------------------------------------------------------ maths

def test_of_gives_k_networks_with_consecutive_seeds_and_their_own_weights():
    ens = Ensemble.of(dense(7), 3)
    assert ens.seeds == [7, 8, 9]
    for k, m in enumerate(ens.members):
        alone = dense(7 + k)
        for a, b in zip(m.weights, alone.weights):
            np.testing.assert_array_equal(a, b)
    assert ens.n_params == 3 * dense().n_params


def test_each_member_is_bit_identical_to_its_own_fit(threads):
    X, y = make_classification(n=240, n_features=12, n_classes=4)
    options = dict(epochs=2, batch_size=16, lr=0.05)
    threads(2)
    ens = Ensemble.of(dense(5), 2)
    histories = ens.fit(X, y, **options)
    threads(1)
    assert len(histories) == 2 and ens.epochs_trained == 2
    for k, m in enumerate(ens.members):
        alone = dense(5 + k)
        alone.fit(X, y, **options)
        for a, b in zip(m.weights + m.biases, alone.weights + alone.biases):
            np.testing.assert_array_equal(a, b)


def test_outputs_are_the_mean_of_the_members_and_predictions_follow_them():
    ens, X, y = trained()
    each = [m.forward(X) for m in ens.members]
    mean = (each[0] + each[1] + each[2]) / 3
    np.testing.assert_array_equal(ens.forward(X), mean)
    np.testing.assert_array_equal(ens.predict_proba(X), mean)
    np.testing.assert_array_equal(ens.predict(X), mean.argmax(1))
    result = ens.evaluate(X, y)
    assert result["accuracy"] == np.mean(mean.argmax(1) == y)
    # the loss of the mean output (cross-entropy of the averaged probabilities)
    expected = -np.mean(np.log(mean[np.arange(len(y)), y].astype(np.float64)))
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_a_regression_ensemble_predicts_the_mean_of_its_members_in_target_units():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = 100 + 30 * X[:, 0] - 7 * X[:, 1]
    ens = Ensemble.of(fastnn.Network([5, 8, 1], activation="tanh", output="identity", seed=1), 2)
    ens.fit(X, y, epochs=5, batch_size=10, lr=0.01, task="regression", scale="standard")
    mean = (ens.members[0].predict(X) + ens.members[1].predict(X)) / 2
    np.testing.assert_allclose(ens.predict(X), mean, rtol=1e-5)
    assert ens.evaluate(X, y)["rmse"] > 0


def test_members_of_a_conv_ensemble_may_differ_in_their_hidden_layers():
    X = np.random.default_rng(0).integers(0, 256, (40, 64)).astype(np.uint8)
    y = np.arange(40) % 3
    a = fastnn.Network([(8, 8, 1), Conv2D(3, 3), MaxPool2D(2), Dense(3)], activation="relu",
                       output="softmax", loss="cross_entropy", seed=0)
    b = fastnn.Network([(8, 8, 1), 16, 3], activation="relu", output="softmax",
                       loss="cross_entropy", seed=1)
    for net in (a, b):
        net.fit(X, y, epochs=1, batch_size=8, lr=0.05)
    ens = Ensemble([a, b])
    np.testing.assert_array_equal(ens.forward(X), (a.forward(X) + b.forward(X)) / 2)


# ------------------------------------------------------------ refusals

def test_members_that_do_not_share_their_inputs_and_outputs_are_refused():
    ens, X, y = trained(k=2, epochs=1)
    other = dense(9)
    other.fit(X, (y + 1) % 4, epochs=1, batch_size=16, task="classification", scale="minmax")
    with pytest.raises(ConfigError, match=r"must share their preprocessing .* network 2 "
                                          r"differs from network 1"):
        Ensemble([ens.members[0], other])
    with pytest.raises(ConfigError, match="must share their outputs"):
        Ensemble([dense(1), fastnn.Network([12, 9, 5], activation="relu", output="softmax",
                                           loss="cross_entropy")])
    with pytest.raises(ConfigError, match="must share their loss"):
        Ensemble([dense(1), fastnn.Network([12, 9, 4], activation="relu", output="softmax")])
    with pytest.raises(ConfigError, match="must share their dtype"):
        Ensemble([dense(1), dense(2, dtype="float64")])


@pytest.mark.parametrize("members, message", [
    (lambda: [dense()], "2 to 64 networks, not 1"),
    (lambda: [dense()] * 2, "distinct networks"),
    (lambda: [dense(), "net"], "list of fastnn.Network"),
    (lambda: [Ensemble.of(dense(), 2), dense()], "not ensembles"),
    (lambda: [dense(i) for i in range(MAX_MEMBERS + 1)], "not 65"),
])
def test_bad_member_lists_get_one_clear_error(members, message):
    with pytest.raises(ConfigError, match=message):
        Ensemble(members())


def test_of_refuses_a_trained_network_and_bad_counts():
    net = dense()
    with pytest.raises(ConfigError, match="2 to 64 networks, not 1"):
        Ensemble.of(net, 1)
    with pytest.raises(ConfigError, match="not True"):
        Ensemble.of(net, True)
    X, y = make_classification(n=40, n_features=12, n_classes=4)
    net.fit(X, y, epochs=1)
    with pytest.raises(ConfigError, match="untrained network"):
        Ensemble.of(net, 2)


def test_an_ensemble_has_no_weights_or_gradient_of_its_own():
    ens = Ensemble.of(dense(), 2)
    for attempt in (lambda: ens.weights, lambda: ens.biases,
                    lambda: ens.gradient(np.zeros((1, 12)), [0])):
        with pytest.raises(ConfigError, match=r"members\[k\]"):
            attempt()
    with pytest.raises(ConfigError, match="an Ensemble's fit trains its members"):
        fastnn.fit_many([ens, dense(3)], np.zeros((4, 12)), [0, 1, 2, 3])


# ------------------------------------------------------------------ files

def test_save_and_load_give_the_same_ensemble_in_format_3(tmp_path):
    ens, X, y = trained()
    path = tmp_path / "e.safetensors"
    ens.save(path)
    again = fastnn.load(path)
    assert isinstance(again, Ensemble) and again.seeds == ens.seeds
    np.testing.assert_array_equal(again.forward(X), ens.forward(X))
    assert again.predict(X[:5]).tolist() == ens.predict(X[:5]).tolist()
    header = read_header(path)
    assert header.version == 3 and json.loads(header.metadata["ensemble"]) == {"members": 3}
    assert "member.2.optimizer.state" in header.tensors
    # the same run writes the same bytes; weights_only leaves the optimizers out
    second = tmp_path / "e2.safetensors"
    trained()[0].save(second)
    assert second.read_bytes() == path.read_bytes()
    again.save(second, force=True, weights_only=True)
    assert not any("optimizer" in name for name in read_header(second).tensors)


def _member(h, k, change):
    meta = json.loads(h["__metadata__"][f"member.{k}"])
    change(meta)
    h["__metadata__"][f"member.{k}"] = json.dumps(meta)


@pytest.mark.parametrize("change, message", [
    (lambda h: h["__metadata__"].update(ensemble='{"members": 3}'), "member.2 is missing"),
    (lambda h: h["__metadata__"].update(ensemble='{"members": 1}'),
     "ensemble.members must be an integer in 2..64"),
    (lambda h: h["__metadata__"].update({"member.0": "{nope"}), "member.0 is not valid JSON"),
    (lambda h: h["__metadata__"].update({"member.9": "{}"}), "\"member.9\" is not a field"),
    (lambda h: _member(h, 1, lambda m: m.update(format_version="3")),
     "member.1.format_version must be '1' or '2'"),
    (lambda h: _member(h, 1, lambda m: m.update(network="{}")), r"member.1.network"),
    (lambda h: h.update({"member.1.other": h.pop("member.1.weights.0")}),
     "inconsistent tensors for an ensemble of 2"),
])
def test_a_damaged_ensemble_file_gets_one_line(tmp_path, change, message):
    ens, _, _ = trained(k=2, epochs=1)
    path = tmp_path / "e.safetensors"
    ens.save(path)
    rewrite_header(path, change)
    with pytest.raises(ModelFileError, match=message) as info:
        fastnn.load(path)
    assert "\n" not in str(info.value)


def test_members_that_do_not_fit_together_make_an_invalid_file(tmp_path):
    ens, _, _ = trained(k=2, epochs=1)
    path = tmp_path / "e.safetensors"
    ens.save(path)
    rewrite_header(path, lambda h: _member(h, 1, lambda m: m.pop("preprocessing")))
    with pytest.raises(ModelFileError, match="describes an invalid network .*must share"):
        fastnn.load(path)


@settings(max_examples=examples(150), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_loader_survives_damaged_ensemble_files(tmp_path, data):
    ens = Ensemble.of(fastnn.Network([4, 3, 2], seed=0), 2)
    path = tmp_path / "fuzz.safetensors"
    ens.save(path, force=True)
    path.write_bytes(damage(data, path.read_bytes()))
    try:
        loaded = fastnn.load(path)
    except ModelFileError:
        return
    assert loaded.forward(np.ones((1, 4))).shape == (1, 2)


# ---------------------------------------------------------------- fit_many

def test_fit_many_takes_options_of_each_network():
    X, y = make_classification(n=120, n_features=12, n_classes=4)
    seen = {0: [], 1: []}
    nets = [dense(1), dense(2)]
    fastnn.fit_many(nets, X, y, epochs=2, batch_size=16,
                    each=[{"callback": lambda e, m: seen[0].append(e), "lr": 0.01},
                          {"callback": lambda e, m: seen[1].append(e), "lr": 0.2}])
    assert seen == {0: [0, 1], 1: [0, 1]}
    assert [n.training_record["lr"] for n in nets] == [0.01, 0.2]
    with pytest.raises(ConfigError, match="each= has 1 entries for 2 networks"):
        fastnn.fit_many([dense(1), dense(2)], X, y, each=[{}])
    with pytest.raises(ConfigError, match="does not take progress="):
        fastnn.fit_many([dense(1), dense(2)], X, y, each=[{}, {"progress": print}])


# ------------------------------------------------------------------- CLI

def test_train_ensemble_saves_one_file_that_eval_predict_and_info_take(tmp_path):
    out = tmp_path / "e.safetensors"
    result = cli("train", "mnist", "--limit", 600, "--hidden", 10, "--epochs", 2, "--ensemble",
                 3, "--seed", 4, "-o", out)
    assert "seeds=[4, 5, 6]" in result.output
    for k in (1, 2, 3):
        assert f"[{k}/3] epoch 2/2" in result.output
        assert f"network {k} (seed {k + 3}): epoch 2" in result.output
    assert "The ensemble of 3 (mean of their outputs): test_loss" in result.output
    ens = fastnn.load(out)
    assert ens.seeds == [4, 5, 6] and ens.epochs_trained == 2
    # each member records the run
    assert all(m.training_record["cli"]["epochs_done"] == 2 for m in ens.members)
    evaluated = json.loads(cli("eval", out, "--json", "--limit", 300).output)
    from fastnn.datasets import load_mnist

    _, (X_test, y_test) = load_mnist(MNIST_DIR)
    assert evaluated["accuracy"] == np.mean(ens.predict(X_test[:300]) == y_test[:300])
    info = json.loads(cli("info", out, "--json").output)
    assert info["format_version"] == "3" and info["ensemble"] == 3
    assert [m["seed"] for m in info["members"]] == [4, 5, 6]
    text = cli("info", out).output
    assert "Ensemble of 3 networks, their outputs averaged" in text
    assert "member 3 of 3:" in text
    cli("predict", out, "mnist", "--limit", 5, "-o", tmp_path / "p.csv")
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 6


def test_train_ensemble_json_reports_each_network_and_the_mean(tmp_path):
    result = json.loads(cli("train", "mnist", "--limit", 300, "--hidden", 8, "--epochs", 1,
                            "--ensemble", 2, "--seed", 0, "--json").output)
    assert [m["seed"] for m in result["members"]] == [0, 1]
    assert set(result["final"]) == {"test_loss", "test_accuracy"}


def test_resume_refuses_a_second_ensemble_count(tmp_path):
    ens, _, _ = trained(k=2, epochs=1)
    ens.save(tmp_path / "e.safetensors")
    result = cli("train", "--resume", tmp_path / "e.safetensors", "--ensemble", 3, code=2)
    assert "--ensemble is fixed by the model file when resuming" in result.output


RUN = ["train", "mnist", "--limit", 300, "--hidden", 8, "--epochs", 3, "--ensemble", 2,
       "--seed", 0, "--threads", 1]


def _same_networks(a, b):
    for m, n in zip(a.members, b.members):
        assert m.epochs_trained == n.epochs_trained
        np.testing.assert_array_equal(m._params, n._params)


@pytest.fixture(scope="module")
def straight_ensemble(tmp_path_factory):
    """The ensemble of RUN, trained straight through."""
    path = tmp_path_factory.mktemp("straight") / "straight.safetensors"
    cli(*RUN, "-o", path)
    return fastnn.load(path)


@pytest.mark.parametrize("stop_after", [1, 2, 4, 5])
def test_an_interrupted_ensemble_run_resumes_to_the_weights_of_a_straight_run(
        tmp_path, monkeypatch, stop_after, straight_ensemble):
    # Ctrl-C after the stop_after-th checkpoint: one thread trains network 1's three
    # epochs, then network 2's; the networks stop at different epochs
    from fastnn.cli import train as train_command

    straight = straight_ensemble
    saves = []
    real = train_command._Snapshots.save

    def save(self, k, write):
        real(self, k, write)
        saves.append(k)
        if len(saves) == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_command._Snapshots, "save", save)
    out = tmp_path / "e.safetensors"
    result = cli(*RUN, "--checkpoint-every", 1, "-o", out, code=130)
    part = fastnn.load(out)
    done = [m.epochs_trained for m in part.members]
    assert done == [min(stop_after, 3), max(stop_after - 3, 0)]
    assert f"after {done[0]}/{done[1]} epoch(s) to {out}; continue with: fastnn train " \
           f"--resume {out}" in result.output
    monkeypatch.undo()
    text = cli("train", "--resume", out, "--threads", 1).output
    assert f"[2/2] epoch {done[1] + 1}/3" in text
    assert ("[1/2] epoch" in text) == (done[0] < 3)
    _same_networks(fastnn.load(out), straight)


def test_ensemble_checkpoints_taken_while_the_networks_train_at_once_resume(tmp_path,
                                                                            monkeypatch):
    # with two threads the networks train side by side; each checkpoint holds every
    # network after one of its own epochs, and the run goes on from any of them
    from fastnn.cli import train as train_command

    copies = []
    real = train_command._Snapshots.save

    def save(self, k, write):
        # the file as each save wrote it, read under the save's lock: read after
        # it, another network's save could come in between (seen under load)
        def write_and_copy(ensemble):
            write(ensemble)
            copies.append((tmp_path / "e.safetensors").read_bytes())

        real(self, k, write_and_copy)

    monkeypatch.setattr(train_command._Snapshots, "save", save)
    run = [*RUN[:-1], 2]                            # --threads 2
    cli(*run, "--checkpoint-every", 1, "-o", tmp_path / "e.safetensors")
    monkeypatch.undo()
    assert len(copies) == 6
    middle = tmp_path / "middle.safetensors"
    middle.write_bytes(copies[2])
    assert sum(m.epochs_trained for m in fastnn.load(middle).members) == 3
    cli("train", "--resume", middle)
    assert [m.epochs_trained for m in fastnn.load(middle).members] == [3, 3]


# a chain of real `fastnn` processes, seconds long: under --runslow (CI) only
@pytest.mark.slow
def test_ensemble_command_joins_model_files(tmp_path):
    paths = []
    for seed in (1, 2, 3):
        paths.append(tmp_path / f"s{seed}.safetensors")
        cli("train", "mnist", "--limit", 300, "--hidden", 8, "--epochs", 1, "--seed", seed,
            "-o", paths[-1])
    out = tmp_path / "vote.safetensors"
    text = cli("ensemble", *paths[:2], "-o", out).output
    assert f"Saved an ensemble of 2 networks" in text
    # an ensemble given as a member adds its members
    cli("ensemble", out, paths[2], "-o", tmp_path / "three.safetensors")
    three = fastnn.load(tmp_path / "three.safetensors")
    assert three.seeds == [1, 2, 3]
    X = np.random.default_rng(0).integers(0, 256, (20, 784)).astype(np.uint8)
    alone = [fastnn.load(p).forward(X) for p in paths]
    np.testing.assert_array_equal(three.forward(X), (alone[0] + alone[1] + alone[2]) / 3)
    # refusals: one model; an input as the output; members that do not match
    assert "give 2 to 64 MODELS, not 1" in cli("ensemble", paths[0], "-o", out,
                                                "--force", code=2).output
    assert "Error" in cli("ensemble", paths[0], paths[1], "-o", paths[0], code=1).output
    cli("train", "mnist", "--limit", 300, "--hidden", 8, "--epochs", 1, "--output", "softmax",
        "--loss", "cross_entropy", "-o", tmp_path / "other.safetensors")
    text = cli("ensemble", paths[0], tmp_path / "other.safetensors", "-o",
               tmp_path / "x.safetensors", code=1).output
    assert "cannot join" in text and "must share their output activation" in text
    assert not (tmp_path / "x.safetensors").exists()


# ----------------------------------------------------------------- exports

def _dense_members(dtype):
    X, y = make_classification(n=120, n_features=12, n_classes=3)
    ens = Ensemble.of(fastnn.Network([12, 7, 3], activation="tanh", output="softmax",
                                     loss="cross_entropy", seed=1, dtype=dtype), 3)
    ens.fit(X, y, epochs=2, batch_size=10, task="classification", scale="standard")
    return ens, X


def _regression_members(dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    y = np.column_stack([200 + 3 * X[:, 0] - X[:, 1], 10 * X[:, 2]])
    ens = Ensemble.of(fastnn.Network([3, 8, 2], output="identity", seed=0, dtype=dtype), 2)
    ens.fit(X, y, epochs=5, lr=0.05, task="regression", scale="minmax")
    return ens, X


def _image_members(dtype, scale=None):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 64)).astype(np.uint8)
    y = np.arange(40) % 3
    a = fastnn.Network([(8, 8, 1), Conv2D(3, 3), MaxPool2D(2), Dense(3)], activation="relu",
                       output="softmax", loss="cross_entropy", seed=0, dtype=dtype)
    b = fastnn.Network([(8, 8, 1), Conv2D(2, 3, padding="same"), Dense(3)], activation="relu",
                       output="softmax", loss="cross_entropy", seed=1, dtype=dtype)
    c = fastnn.Network([(8, 8, 1), 16, 3], activation="relu", output="softmax",
                       loss="cross_entropy", seed=2, dtype=dtype)
    for net in (a, b, c):
        net.fit(X, y, epochs=1, batch_size=8, lr=0.05, task="classification", scale=scale)
    return Ensemble([a, b, c]), X


EXPORTED = {
    "dense, standard scaling": _dense_members,
    "regression, minmax": _regression_members,
    "conv and dense members, uint8 pixels": _image_members,
    # a first convolution keeps the scaling as an input shift of its own
    "conv members, standard scaling": lambda dtype: _image_members(dtype, "standard"),
}


# each kind in one dtype in the fast suite (a sanitized C build each), both under --runslow
@pytest.mark.parametrize("kind, dtype", sweep(
    [(kind, dtype) for kind in EXPORTED for dtype in ("float32", "float64")], fast=[1, 2, 5, 6]))
def test_every_export_computes_the_mean_of_the_members(tmp_path, kind, dtype):
    import subprocess

    from conftest import compile_export
    from test_tabular_export import numpy_module, onnx_outputs, rows

    ens, X = EXPORTED[kind](dtype)
    if X.dtype != np.uint8:
        X = X.astype(np.float32)        # what ONNX and C take
    # the exports give a regression's target values (its outputs restored)
    A = ens.predict(X) if "regression" in kind else ens.forward(X)
    # round-off of the network's dtype, on outputs as large as the targets (200)
    scale = max(1.0, float(np.abs(A).max()))
    tol = (dict(rtol=1e-5, atol=1e-6 * scale) if dtype == "float32"
           else dict(rtol=1e-12, atol=1e-12 * scale))
    module = numpy_module(ens, tmp_path)
    np.testing.assert_allclose(module.forward(X), A, **tol)
    assert len(module.NETWORKS) == len(ens.members)
    predicted = ens.predict(X)
    if "regression" not in kind:
        assert [str(v) for v in module.predict(X)] == [str(v) for v in predicted]
    outputs, meta = onnx_outputs(ens, X, tmp_path)
    np.testing.assert_allclose(outputs, A, **tol)
    assert meta["ensemble"] == str(len(ens.members))
    assert [json.loads(meta[f"member_{j}"])["seed"] for j in range(len(ens.members))] == \
        ens.seeds
    exe = compile_export(ens, tmp_path, sanitize=True)
    out = subprocess.run([exe, "--outputs"], input=rows(X), capture_output=True, text=True,
                         check=True).stdout
    C = np.array([[float(v) for v in line.split()] for line in out.splitlines()])
    # the C program prints %.9g floats
    np.testing.assert_allclose(C, A, **(tol if dtype == "float32"
                                        else dict(rtol=1e-7, atol=1e-7 * scale)))


def test_export_command_says_what_an_ensemble_file_is(tmp_path):
    ens, _ = _dense_members("float32")
    ens.save(tmp_path / "e.safetensors")
    text = cli("export", tmp_path / "e.safetensors", "-o", tmp_path / "e.c").output
    assert "(an ensemble of 3 networks, the mean of their outputs) as C" in text
    result = json.loads(cli("export", tmp_path / "e.safetensors", "-o", tmp_path / "e.py",
                            "--json").output)
    assert result["ensemble"] == 3


def test_show_filters_draws_those_of_the_first_member_with_a_convolution(tmp_path):
    from conftest import needs

    from fastnn.plot import plot_filters

    needs("matplotlib")

    ens, _ = _image_members("float32")
    dense_first = Ensemble([ens.members[2], ens.members[1]])
    assert plot_filters(dense_first, tmp_path / "f.png") == 2


def test_train_ensemble_says_which_epoch_each_network_kept(tmp_path):
    out = tmp_path / "e.safetensors"
    text = cli("train", "mnist", "--limit", 600, "--hidden", 8, "--epochs", 3, "--ensemble", 2,
               "--seed", 0, "--val-split", 0.2, "--restore-best", "-o", out).output
    ens = fastnn.load(out)
    for k, m in enumerate(ens.members):
        best = m.training_record["best"]
        assert (f"network {k + 1} (seed {k}): epoch 3 " in text
                and f"kept epoch {best['epoch']}'s weights (best val_accuracy)" in text)


def test_history_and_json_hold_each_network_and_plot_draws_them(tmp_path):
    from conftest import needs

    from fastnn.exceptions import DataError
    from fastnn.plot import load_history, load_runs, plot_history

    history, out = tmp_path / "h.json", tmp_path / "e.safetensors"
    printed = cli("train", "mnist", "--limit", 300, "--hidden", 8, "--epochs", 2, "--ensemble",
                  3, "--seed", 0, "--val-split", 0.2, "--history", history, "-o", out,
                  "--json").output
    (tmp_path / "run.json").write_text(printed)
    text = history.read_text()
    assert text.startswith('{\n  "epochs": 2')           # a history file, for the output policy
    for source in (history, tmp_path / "run.json"):
        runs = load_runs(source)
        assert len(runs) == 3
        for series, info in runs:
            assert info["epochs"] == 2 and len(series["val_accuracy"]) == 2
    with pytest.raises(DataError, match="an ensemble's run: it holds one history per network"):
        load_history(history)
    needs("matplotlib")
    plot_history(history, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    # a second run may write over the history file: it is a history file
    cli("train", "mnist", "--limit", 300, "--hidden", 8, "--epochs", 1, "--ensemble", 2,
        "--history", history)
    assert len(load_runs(history)) == 2


def test_a_bfloat16_ensemble_keeps_its_compute_dtype_and_does_not_mix(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # this CPU may gain no speed from bfloat16
        ens = Ensemble.of(dense(1, dtype="bfloat16"), 2)
        X, y = make_classification(n=60, n_features=12, n_classes=4)
        ens.fit(X, y, epochs=1, batch_size=16)
        ens.save(tmp_path / "e.safetensors")
        again = fastnn.load(tmp_path / "e.safetensors")
        assert again.compute_dtype == "bfloat16"
        assert all(m.compute_dtype == "bfloat16" for m in again.members)
        np.testing.assert_array_equal(again.forward(X), ens.forward(X))
        with pytest.raises(ConfigError, match="must share their dtype"):
            Ensemble([dense(1), dense(2, dtype="bfloat16")])


def test_ctrl_c_after_the_save_says_the_run_finished(tmp_path, monkeypatch):
    """A Ctrl-C once the finished run is saved (here while the ensemble's
    metrics are computed) is reported as after the run finished, status
    130: the -o file, which existed before, now holds the finished run, and
    the message must not let a user think it was left alone."""
    import fastnn.cli.train as train_command

    out = tmp_path / "e.safetensors"
    cli("train", "mnist", "--limit", 300, "--hidden", 6, "--epochs", 1, "--ensemble", 2,
        "--seed", 0, "-o", out)
    before = out.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "_ensemble_metrics", interrupted)
    result = CliRunner().invoke(main, [str(a) for a in (
        "train", "mnist", "--limit", 300, "--hidden", 6, "--epochs", 2, "--ensemble", 2,
        "--seed", 0, "-o", out)], env=ENV)
    assert result.exit_code == 130, result.output
    assert "Interrupted after the run finished" in result.output
    assert "Saved the model to" not in result.output
    assert out.read_bytes() != before and fastnn.load(out).epochs_trained == 2
