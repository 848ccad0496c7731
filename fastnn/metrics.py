"""Classification metrics: the confusion matrix and per-class precision, recall, F1."""
from typing import Any

import numpy as np

from fastnn._typing import Array, ArrayLike


def predicted_labels(outputs: Array) -> Array:
    """The class each row of output activations stands for: the argmax, or
    with one output unit, 1 where it exceeds 0.5."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(np.int64)
    return outputs.argmax(axis=1)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> Array:
    """counts[i, j] = samples of true class i predicted as class j."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def per_class(counts: Array) -> dict[str, Array]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    A class never predicted has precision 0 (and one never present, recall 0),
    as scikit-learn reports them with zero_division=0.
    """
    tp = np.diag(counts).astype(np.float64)
    predicted = counts.sum(axis=0)
    support = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_report(y_true: ArrayLike, y_pred: ArrayLike,
                          n_classes: int) -> dict[str, Any]:
    """Accuracy, macro averages, per-class metrics and the confusion matrix, JSON-ready."""
    counts = confusion_matrix(y_true, y_pred, n_classes)
    stats = per_class(counts)
    return {
        "accuracy": float(np.trace(counts) / max(counts.sum(), 1)),
        "macro_precision": float(stats["precision"].mean()),
        "macro_recall": float(stats["recall"].mean()),
        "macro_f1": float(stats["f1"].mean()),
        "per_class": [{"class": k, "precision": float(stats["precision"][k]),
                       "recall": float(stats["recall"][k]), "f1": float(stats["f1"][k]),
                       "support": int(stats["support"][k])} for k in range(n_classes)],
        "confusion_matrix": counts.tolist(),
    }
