"""Classification metrics: the confusion matrix and per-class precision, recall, F1.

Memory is O(samples + classes) whatever the number of classes: the per-class
counts come from the labels themselves, and a report holds the whole
confusion matrix only up to MAX_MATRIX_CLASSES classes (10,000 cells). Above,
it holds a summary instead: the SUMMARY_CELLS largest off-diagonal cells.
"""
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from fastnn._typing import Array, ArrayLike

#: A report holds the whole confusion matrix up to this many classes, else a summary.
MAX_MATRIX_CLASSES = 100
#: The off-diagonal cells (true class, predicted class, samples) a summary lists.
SUMMARY_CELLS = 20
#: Output activations computed at a time where only the predicted class (or
#: one activation) of each row is kept: 4M entries, 16 MiB in float32.
OUTPUT_BUDGET = 1 << 22


def output_chunks(net: Any, X: Array) -> Iterator[tuple[slice, Array]]:
    """(rows, net.forward(X[rows])) for consecutive chunks of X's rows, each of
    at most OUTPUT_BUDGET activations: memory bounded however many classes."""
    step = max(1, OUTPUT_BUDGET // net.sizes[-1])
    n = len(X)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        yield rows, net.forward(X[rows])


def predicted_classes(net: Any, X: Array) -> Array:
    """predicted_labels(net.forward(X)), computed a chunk of rows at a time."""
    out = np.empty(len(X), dtype=np.int64)
    for rows, A in output_chunks(net, X):
        out[rows] = predicted_labels(A)
    return out


def predicted_labels(outputs: Array) -> Array:
    """The class each row of output activations stands for: the argmax, or
    with one output unit, 1 where it exceeds 0.5."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(np.int64)
    return outputs.argmax(axis=1)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int,
                     classes: Optional[ArrayLike] = None) -> Array:
    """counts[i, j] = samples of true class i predicted as class j.

    With `classes` (class numbers), only the part of the matrix among them:
    counts[a, b] = samples of class classes[a] predicted as classes[b], a
    (len(classes), len(classes)) array however large n_classes is.
    """
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if classes is None:
        counts = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(counts, (true, pred), 1)
        return counts
    classes = np.asarray(classes, dtype=np.int64)
    position = np.full(n_classes, -1, dtype=np.int64)
    position[classes] = np.arange(len(classes))
    keep = (position[true] >= 0) & (position[pred] >= 0)
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (position[true[keep]], position[pred[keep]]), 1)
    return counts


def per_class(counts: Array) -> dict[str, Array]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    A class never predicted has precision 0 (and one never present, recall 0),
    as scikit-learn reports them with zero_division=0.
    """
    return _scores(np.diag(counts), counts.sum(axis=0), counts.sum(axis=1))


def _scores(tp: Array, predicted: Array, support: Array) -> dict[str, Array]:
    tp = np.asarray(tp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def class_errors(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> Array:
    """Samples each class is part of an error in: misclassified as it was,
    plus other classes' samples predicted as it."""
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    wrong = true != pred
    return (np.bincount(true[wrong], minlength=n_classes)
            + np.bincount(pred[wrong], minlength=n_classes))


def most_confused(errors: ArrayLike, m: int) -> Array:
    """The (at most) m classes with the most errors (see class_errors), in
    class order; of equal counts, the lower class numbers."""
    order = np.argsort(-np.asarray(errors), kind="stable")[:m]
    return np.sort(order)


def largest_errors(y_true: ArrayLike, y_pred: ArrayLike,
                   n: int = SUMMARY_CELLS) -> list[tuple[int, int, int]]:
    """The n largest off-diagonal cells of the confusion matrix, as
    (true class, predicted class, samples), largest first (of equal counts,
    in class order)."""
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    wrong = true != pred
    if not wrong.any():
        return []
    width = int(max(true.max(), pred.max())) + 1
    cells, counts = np.unique(true[wrong] * width + pred[wrong], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:n]
    return [(int(cells[k] // width), int(cells[k] % width), int(counts[k])) for k in order]


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int,
                          max_matrix: int = MAX_MATRIX_CLASSES) -> dict[str, Any]:
    """Accuracy, macro averages, per-class metrics and the confusion matrix, JSON-ready.

    Up to `max_matrix` classes the report holds ``confusion_matrix`` (k lists
    of k counts); above, ``confusion_summary``: the number of classes and of
    misclassified samples, and the SUMMARY_CELLS largest off-diagonal cells
    (``{"true": i, "predicted": j, "samples": c}``, largest first).
    """
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    right = true == pred
    stats = _scores(np.bincount(true[right], minlength=n_classes),
                    np.bincount(pred, minlength=n_classes),
                    np.bincount(true, minlength=n_classes))
    report: dict[str, Any] = {
        "accuracy": float(np.count_nonzero(right) / max(len(true), 1)),
        "macro_precision": float(stats["precision"].mean()),
        "macro_recall": float(stats["recall"].mean()),
        "macro_f1": float(stats["f1"].mean()),
        "per_class": [{"class": k, "precision": float(stats["precision"][k]),
                       "recall": float(stats["recall"][k]), "f1": float(stats["f1"][k]),
                       "support": int(stats["support"][k])} for k in range(n_classes)],
    }
    if n_classes <= max_matrix:
        report["confusion_matrix"] = confusion_matrix(true, pred, n_classes).tolist()
    else:
        report["confusion_summary"] = {
            "classes": n_classes, "misclassified": int(len(true) - np.count_nonzero(right)),
            "largest": [{"true": i, "predicted": j, "samples": c}
                        for i, j, c in largest_errors(true, pred)]}
    return report
