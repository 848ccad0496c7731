"""History: the per-epoch record fit() returns."""
from fastnn import History


def test_history_series_and_gaps():
    h = History()
    h.append({"loss": 1.0, "lr": 0.1})
    h.append({"loss": 0.5, "lr": 0.1, "val_loss": 0.7})
    assert h["loss"] == [1.0, 0.5] and h["val_loss"] == [None, 0.7]
    assert h.epochs == 2 and set(h) == {"loss", "lr", "val_loss"} and len(h) == 3
    assert h.last() == {"loss": 0.5, "lr": 0.1, "val_loss": 0.7}
    assert h.to_dict() == {"epochs": 2, "stopped": None, "best_epoch": None, "loss": [1.0, 0.5], "lr": [0.1, 0.1],
                           "val_loss": [None, 0.7]}
    assert repr(h) == "History(epochs=2, loss=0.5, lr=0.1, val_loss=0.7)"
