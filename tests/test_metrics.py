"""Confusion matrix and per-class scores, against a hand-worked example."""
import numpy as np
from numpy.testing import assert_allclose

from fastnn.metrics import classification_report, confusion_matrix, per_class


def test_hand_worked_report():
    # truth 0 0 1 1 1 2, predicted 0 1 1 1 0 1: class 2 is never predicted
    truth, predicted = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 1]
    counts = confusion_matrix(truth, predicted, 3)
    assert counts.tolist() == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    stats = per_class(counts)
    assert_allclose(stats["precision"], [1 / 2, 2 / 4, 0])
    assert_allclose(stats["recall"], [1 / 2, 2 / 3, 0])
    assert_allclose(stats["f1"], [0.5, 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), 0])
    report = classification_report(truth, predicted, 3)
    assert report["accuracy"] == 0.5 and report["per_class"][1]["support"] == 3
    assert report["macro_f1"] == np.mean(stats["f1"])
