"""Callback objects (fastnn.callbacks) and the "fastnn" logger."""
import csv
import logging

import numpy as np
import pytest
from conftest import make_classification

import fastnn
from fastnn import ConfigError, Network, OutputError
from fastnn.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint

X, y = make_classification(n=120)
VAL = make_classification(n=60, seed=1)


def net(seed=0):
    return Network([12, 6, 4], activation="tanh", output="softmax", loss="cross_entropy",
                   seed=seed, dtype="float64")


class Record(Callback):
    """Keeps each epoch's metrics and a copy of the weights after it."""

    def on_train_begin(self, net, metrics):
        super().on_train_begin(net, metrics)
        self.names, self.epochs, self.weights, self.ended = list(metrics), [], [], False

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(dict(metrics))
        self.weights.append([W.copy() for W in self.net.weights])

    def on_train_end(self):
        self.ended = True


def test_early_stopping_object_is_the_fit_option():
    # lr 2.0 overshoots, so the validation loss rises and stopping happens
    option, obj = net(), net()
    h1 = option.fit(X, y, epochs=40, lr=2.0, validation_data=VAL, early_stopping=3)
    stopper = EarlyStopping(patience=3)
    h2 = obj.fit(X, y, epochs=40, lr=2.0, validation_data=VAL, callbacks=[stopper])
    assert h1.stopped == h2.stopped == "early_stopping" and h1.epochs < 40
    assert h1.to_dict() == {**h2.to_dict(), "seconds": h1["seconds"]}
    assert stopper.best_epoch == h2.best_epoch and stopper.stopped_epoch == h2.epochs - 1
    for W1, W2 in zip(option.weights, obj.weights):
        np.testing.assert_array_equal(W1, W2)


def test_early_stopping_restores_the_best_epochs_weights_or_not():
    record = Record()
    stopper = EarlyStopping(monitor="val_accuracy", patience=2)  # auto: higher is better
    n = net()
    hist = n.fit(X, y, epochs=30, lr=2.0, validation_data=VAL, callbacks=[stopper, record])
    best = int(np.argmax(hist["val_accuracy"]))      # the first of the highest
    assert stopper.best_epoch == hist.best_epoch == best and record.ended
    for W, W_best in zip(n.weights, record.weights[best]):
        np.testing.assert_array_equal(W, W_best)
    keep_last = net()
    keep_last.fit(X, y, epochs=30, lr=2.0, validation_data=VAL, callbacks=[
        EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=False), record])
    for W, W_last in zip(keep_last.weights, record.weights[-1]):
        np.testing.assert_array_equal(W, W_last)
    # min_delta: an improvement smaller than it does not count
    strict = EarlyStopping(monitor="loss", patience=1, min_delta=1e9)
    assert net().fit(X, y, epochs=10, lr=0.1, callbacks=[strict]).epochs == 2


def test_model_checkpoint_keeps_the_best_epoch(tmp_path):
    path = tmp_path / "best.safetensors"
    record = Record()
    checkpoint = ModelCheckpoint(path)
    hist = net().fit(X, y, epochs=12, lr=2.0, validation_data=VAL,
                     callbacks=[checkpoint, record])
    best = int(np.argmin(hist["val_loss"]))
    assert checkpoint.best_epoch == best
    saved = fastnn.load(path)
    assert saved.epochs_trained == best + 1
    for W, W_best in zip(saved.weights, record.weights[best]):
        np.testing.assert_array_equal(W, W_best)
    assert saved.evaluate(*VAL)["loss"] == pytest.approx(hist["val_loss"][best], rel=1e-12)
    # every epoch
    every = tmp_path / "every.safetensors"
    net().fit(X, y, epochs=3, callbacks=[ModelCheckpoint(every, save_best_only=False)])
    assert fastnn.load(every).epochs_trained == 3


def test_model_checkpoint_checks_before_training(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    n = net()
    with pytest.raises(OutputError, match="not a fastnn model"):
        n.fit(X, y, epochs=2, validation_data=VAL, callbacks=[ModelCheckpoint(notes)])
    assert n.epochs_trained == 0 and notes.read_text() == "not a model"
    with pytest.raises(ConfigError, match="monitors 'val_loss'.*give validation_data"):
        net().fit(X, y, epochs=2, callbacks=[ModelCheckpoint(tmp_path / "m.safetensors")])
    with pytest.raises(ConfigError, match="mode must be one of"):
        ModelCheckpoint(tmp_path / "m.safetensors", mode="best")


def test_csv_logger_writes_the_history(tmp_path):
    path = tmp_path / "log.csv"
    n = net()
    hist = n.fit(X, y, epochs=3, lr=0.5, validation_data=VAL, callbacks=[CSVLogger(path)])
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
                             "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for name in ("loss", "val_accuracy", "lr"):
        assert [float(r[name]) for r in rows] == hist[name]      # repr: exact
    # append: a second fit goes on counting the network's epochs
    n.fit(X, y, epochs=2, lr=0.5, validation_data=VAL, callbacks=[CSVLogger(path, append=True)])
    assert [int(r["epoch"]) for r in csv.DictReader(path.open())] == [1, 2, 3, 4, 5]
    # without append, the log starts afresh; another kind of file needs force
    net().fit(X, y, epochs=1, validation_data=VAL, callbacks=[CSVLogger(path)])
    assert len(path.read_text().splitlines()) == 2
    other = tmp_path / "data.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(OutputError, match="CSV log written by fastnn"):
        net().fit(X, y, epochs=1, callbacks=[CSVLogger(other)])
    assert other.read_text() == "a,b\n1,2\n"
    with pytest.raises(ConfigError, match="has the columns"):
        net().fit(X, y, epochs=1, callbacks=[CSVLogger(path, append=True)])


def test_callbacks_must_be_callback_objects():
    with pytest.raises(ConfigError, match="for a function, use fit\\(callback=...\\)"):
        net().fit(X, y, epochs=1, callbacks=[lambda epoch, metrics: None])
    assert repr(EarlyStopping(patience=2)).startswith("EarlyStopping(monitor='val_loss', patience=2")


def test_callback_stop_and_metric_names():
    class StopAtTwo(Callback):
        def on_epoch_end(self, epoch, metrics):
            return epoch < 1

    record = Record()
    hist = net().fit(X, y, epochs=9, l2=0.1, callbacks=[record, StopAtTwo()])
    assert hist.epochs == 2 and hist.stopped == "callback" and record.ended
    assert record.names == ["loss", "accuracy", "penalty", "lr", "seconds"]
    assert all(list(m) == record.names for m in record.epochs)


def test_epoch_lines_go_to_the_fastnn_logger(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="fastnn"):
        net().fit(X, y, epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "fastnn"]
    assert len(lines) == 2 and lines[0].startswith("epoch 1  loss ")
    assert capsys.readouterr().err == ""      # verbose=0 prints nothing itself
    # verbose=1 shows them on stderr when the application has not configured the logger
    net().fit(X, y, epochs=2, verbose=1)
    assert capsys.readouterr().err.count("epoch ") == 2
    assert not logging.getLogger("fastnn").handlers
