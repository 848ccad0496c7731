"""Network.summary (the table fastnn info prints) and Network.predict_proba."""
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_classification

from fastnn import ConfigError, Network
from fastnn.cli import main


def test_summary_is_the_table_fastnn_info_prints(tmp_path):
    X, y = make_classification(n=80)
    net = Network([12, 7, 4], activation="tanh", output="softmax", loss="cross_entropy", seed=3)
    net.fit(X, y, epochs=2, lr=0.5, optimizer="momentum")
    printed = []
    text = net.summary(print_fn=printed.append)
    assert printed == text.splitlines()
    # the parameters of each layer, i*o + o, and their total
    rows = [line.split() for line in printed]
    assert ["1", "12", "7", "tanh", str(12 * 7 + 7)] in rows
    assert ["2", "7", "4", "softmax", str(7 * 4 + 4)] in rows
    assert ["total", str(12 * 7 + 7 + 7 * 4 + 4)] in rows
    assert "epochs trained: 2" in printed and "optimizer: momentum, 16 steps" in printed
    model = tmp_path / "m.safetensors"
    net.save(model)
    out = CliRunner().invoke(main, ["info", str(model)]).output.splitlines()
    # fastnn info: a line about the file, then the library's summary
    assert out[0].startswith(f"{model}: fastnn model, format 1")
    from fastnn import load
    assert out[1:] == load(model).summary(print_fn=None).splitlines()


def test_summary_of_a_conv_net_comes_from_its_layers():
    import json

    from fastnn.layers import Conv2D, Dropout, MaxPool2D
    from fastnn.summary import describe

    net = Network([(12, 12, 1), Conv2D(4, 5), MaxPool2D(2), Dropout(0.25), 10],
                  activation="relu", output="softmax", loss="cross_entropy", seed=0)
    rows = [line.split() for line in net.summary(print_fn=None).splitlines()]
    # conv 5x5x1 -> 4: 5*5*1*4 + 4 = 104; 4x4x4 = 64 inputs to Dense(10): 650
    assert ["0", "input", "12x12x1"] in rows
    assert ["1", "Conv2D(4,", "5)", "8x8x4", "relu", "104"] in rows
    assert ["2", "MaxPool2D(2)", "4x4x4", "0"] in rows
    assert ["4", "Flatten()", "64", "0"] in rows
    assert ["5", "Dense(10)", "10", "softmax", "650"] in rows
    assert ["total", str(104 + 650)] in rows and net.n_params == 104 + 650
    info = json.loads(json.dumps(describe(net)))
    assert [row["parameters"] for row in info["layers"]] == [104, 0, 0, 0, 650]
    assert info["layers"][0]["inputs"] == [12, 12, 1]


def test_summary_says_which_epochs_weights_restore_best_kept():
    X, y = make_classification(n=80)
    net = Network([12, 7, 4], seed=3)

    def stop(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=4, validation_split=0.25, restore_best=True, callback=stop)
    best = net.training_record["best"]
    assert (f"best so far: epoch {best['epoch']}, val_accuracy {best['value']:.4g} "
            f"(restore_best; the weights are the last epoch's)") in net.summary(print)
    net.fit(X, y, epochs=2, validation_split=0.25, restore_best=True)
    best = net.training_record["best"]
    assert (f"weights: epoch {best['epoch']}'s, the best by val_accuracy "
            f"({best['value']:.4g}; restore_best)") in net.summary(print)
    assert "best={" not in net.summary(print)


def test_summary_prints_by_default(capsys):
    text = Network([3, 2], seed=0).summary()
    assert capsys.readouterr().out == text + "\n"
    assert "inputs: not trained yet" in text and "total" in text


def test_predict_proba():
    X, y = make_classification(n=60)
    soft = Network([12, 5, 4], activation="relu", output="softmax", loss="cross_entropy",
                   seed=0, dtype="float64")
    soft.fit(X, y, epochs=2, lr=0.1)
    p = soft.predict_proba(X)
    np.testing.assert_array_equal(p, soft.forward(X))
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(p.argmax(axis=1), soft.predict(X))
    # one sigmoid unit: the two columns [P(0), P(1)], as scikit-learn's
    binary = Network([12, 1], seed=0, dtype="float64")
    a = binary.forward(X)[:, 0]
    p = binary.predict_proba(X)
    assert p.shape == (60, 2)
    np.testing.assert_array_equal(p[:, 1], a)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-15)
    np.testing.assert_array_equal(p.argmax(axis=1), binary.predict(X))
    # several sigmoid units: each unit's probability (multi-label)
    multi = Network([12, 3], seed=0)
    np.testing.assert_array_equal(multi.predict_proba(X), multi.forward(X))
    with pytest.raises(ConfigError, match="'identity' output layer does not give probabilities"):
        Network([12, 2], activation="identity", seed=0).predict_proba(X)
