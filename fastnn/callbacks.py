"""Callback objects for ``Network.fit(..., callbacks=[...])``, as Keras has them.

A callback sees the run begin (``on_train_begin``, before the first epoch,
with the names of the metrics each epoch will have), each epoch end
(``on_epoch_end(epoch, metrics)``, epoch counting from 0 in this fit;
returning False stops training) and the run end (``on_train_end``, after
the last epoch of a run that was not interrupted and did not diverge).

- `EarlyStopping`: stop when a metric stops improving and keep the best
  epoch's weights; ``fit(early_stopping=N)`` is ``EarlyStopping(patience=N)``.
- `ModelCheckpoint`: save the model whenever a monitored metric improves
  (or after every epoch), through the output policy of fastnn.files.
- `CSVLogger`: one CSV row per epoch, the file rewritten atomically.

Library messages (the per-epoch lines of ``verbose``, the checkpoints
written) go to the ``logging`` logger "fastnn" (`logger`).
"""
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Optional

from fastnn._typing import Array, PathLike
from fastnn.exceptions import ConfigError, OutputError
from fastnn.files import FileKind, atomic_write, check_output
# the network is a Model: Network imports this module (fit's callbacks=)
from fastnn.modelfile import MODEL_FILE, Model, check_header

#: fastnn's logger: fit's epoch lines (INFO), the checkpoints written (INFO).
logger = logging.getLogger("fastnn")

MODES = ("auto", "min", "max")


class Callback:
    """Base class: every method does nothing. ``self.net`` is the network
    being trained, from on_train_begin on."""

    #: What History.stopped says when this callback stops training.
    stop_reason = "callback"
    net: Model

    def on_train_begin(self, net: Model, metrics: Sequence[str]) -> None:
        """Before the first epoch; `metrics` names what each epoch will report."""
        self.net = net

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> Optional[bool]:
        """After each epoch; return False to stop training."""
        return None

    def on_train_end(self) -> None:
        """After the last epoch (not after a Ctrl-C, an error or a divergence)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def _params(self) -> dict[str, Any]:
        return {}


class _Monitor:
    """Whether a monitored metric improved: lower for "min", higher for
    "max"; "auto" is "max" for accuracies and "min" otherwise."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"{owner}: monitor must be a metric name such as 'val_loss', "
                              f"not {monitor!r}")
        if mode not in MODES:
            raise ConfigError(f"{owner}: mode must be one of {list(MODES)}, not {mode!r}")
        if (isinstance(min_delta, bool) or not isinstance(min_delta, (int, float))
                or not math.isfinite(min_delta) or min_delta < 0):
            raise ConfigError(f"{owner}: min_delta must be a number >= 0, not {min_delta!r}")
        self.owner, self.monitor, self.mode, self.min_delta = owner, monitor, mode, min_delta
        self.sign = -1.0 if mode == "max" or (mode == "auto" and "acc" in monitor) else 1.0
        self.best = math.inf

    def check(self, metrics: Sequence[str]) -> None:
        if self.monitor not in metrics:
            hint = (" (give validation_data or validation_split)"
                    if self.monitor.startswith("val_") else "")
            raise ConfigError(f"{self.owner} monitors {self.monitor!r}, which this fit does not "
                              f"report{hint}; it reports {list(metrics)}")

    def improved(self, metrics: Mapping[str, float]) -> bool:
        """Whether metrics[monitor] beats the best so far by min_delta (and
        if so, it becomes the best)."""
        value = self.sign * metrics[self.monitor]
        if value < self.best - self.min_delta:
            self.best = value
            return True
        return False


class EarlyStopping(Callback):
    """Stop after `patience` epochs in which `monitor` did not improve by
    more than `min_delta`, and (with `restore_best_weights`) give the
    network back the weights of its best epoch when training ends.

    ``fit(early_stopping=N)`` is ``EarlyStopping(patience=N)``: it watches
    ``val_loss`` and restores the best weights. After the run,
    ``net.history.best_epoch`` is the best epoch (from 0) and
    ``stopped_epoch`` the epoch it stopped after (None if it did not stop).
    """

    stop_reason = "early_stopping"

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = True) -> None:
        from fastnn._validation import MAX_COUNT, positive_int

        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.patience = positive_int(patience, "patience", maximum=MAX_COUNT)
        self.restore_best_weights = bool(restore_best_weights)
        self.stopped_epoch: Optional[int] = None
        self.best_epoch: Optional[int] = None

    def on_train_begin(self, net: Model, metrics: Sequence[str]) -> None:
        super().on_train_begin(net, metrics)
        self._monitor.check(metrics)
        self._monitor.best = math.inf
        self.waited = 0
        self.stopped_epoch = self.best_epoch = None
        self._best: Optional[tuple[list[Array], list[Array]]] = None

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> Optional[bool]:
        if self._monitor.improved(metrics):
            self.waited, self.best_epoch = 0, epoch
            if self.net.history is not None:
                self.net.history.best_epoch = epoch
            if self.restore_best_weights:
                self._best = ([W.copy() for W in self.net.weights],
                              [b.copy() for b in self.net.biases])
            return None
        self.waited += 1
        if self.waited >= self.patience:
            self.stopped_epoch = epoch
            return False
        return None

    def on_train_end(self) -> None:
        if self._best is not None:
            self.net.weights, self.net.biases = self._best
            self._best = None

    def _params(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "patience": self.patience,
                "min_delta": self.min_delta, "mode": self.mode,
                "restore_best_weights": self.restore_best_weights}


class ModelCheckpoint(Callback):
    """Save the network to `path` whenever `monitor` improves (with
    `save_best_only`, the default), or after every epoch.

    The file is a model file as ``net.save`` writes it (atomically, under
    the output policy of fastnn.files): its path is checked before the first
    epoch, and an existing file that is not a fastnn model is replaced only
    with ``force=True``. ``best_epoch`` is the last epoch saved (from 0).
    """

    def __init__(self, path: PathLike, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = True, force: bool = False) -> None:
        self.path = os.fspath(path)
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode)
        self.monitor, self.mode = monitor, mode
        self.save_best_only = bool(save_best_only)
        self.force = bool(force)
        self.best_epoch: Optional[int] = None

    def on_train_begin(self, net: Model, metrics: Sequence[str]) -> None:
        super().on_train_begin(net, metrics)
        if self.save_best_only:
            self._monitor.check(metrics)
        self._monitor.best = math.inf
        self.best_epoch = None
        check_output(self.path, MODEL_FILE, self.force, OutputError)
        check_header(net)     # a model that could not be saved is refused now

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> Optional[bool]:
        if self._monitor.improved(metrics) if self.save_best_only else True:
            self.net.save(self.path, force=self.force)
            self.best_epoch = epoch
            logger.info("epoch %d: saved the model to %s%s", epoch + 1, self.path,
                        f" ({self.monitor} {metrics[self.monitor]:.4g})"
                        if self.save_best_only else "")
        return None

    def _params(self) -> dict[str, Any]:
        return {"path": self.path, "monitor": self.monitor, "mode": self.mode,
                "save_best_only": self.save_best_only}


#: What CSVLogger writes, for the output policy: a CSV whose header starts
#: with "epoch".
CSV_LOG = FileKind("CSV log written by fastnn (a header starting with 'epoch')",
                   lambda head: head.startswith(b"epoch"))


class CSVLogger(Callback):
    """One CSV row per epoch: ``epoch`` (counting from 1, over all the
    network's epochs) and each metric of the epoch.

    The whole file is rewritten atomically after each epoch (it is small),
    under the output policy of fastnn.files; with `append`, the rows of an
    existing log (of the same columns) are kept before the new ones.
    """

    def __init__(self, path: PathLike, separator: str = ",", append: bool = False,
                 force: bool = False) -> None:
        if not isinstance(separator, str) or len(separator) != 1 or separator in "\r\n\"":
            raise ConfigError(f"CSVLogger: separator must be one character (not a quote or "
                              f"a newline), not {separator!r}")
        self.path = os.fspath(path)
        self.separator, self.append, self.force = separator, bool(append), bool(force)

    def on_train_begin(self, net: Model, metrics: Sequence[str]) -> None:
        super().on_train_begin(net, metrics)
        out = check_output(self.path, CSV_LOG, self.force, OutputError)
        self.columns = ["epoch", *metrics]
        self.lines = [self.separator.join(self.columns)]
        if self.append and out.existed:
            with open(self.path, encoding="utf-8") as f:
                old = f.read().splitlines()
            if old and old[0] != self.lines[0]:
                raise ConfigError(f"CSVLogger: {self.path} has the columns {old[0]!r}, and "
                                  f"this fit reports {self.lines[0]!r}; log to another file")
            self.lines += old[1:]

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> Optional[bool]:
        row = [str(self.net.epochs_trained)]
        for name in self.columns[1:]:
            value = metrics.get(name)
            row.append("" if value is None else repr(float(value)))
        self.lines.append(self.separator.join(row))
        atomic_write(self.path, "\n".join(self.lines) + "\n", OutputError, kind=CSV_LOG,
                     force=True)
        return None

    def _params(self) -> dict[str, Any]:
        return {"path": self.path, "separator": self.separator, "append": self.append}


def check_callbacks(callbacks: Optional[Sequence[Callback]]) -> list[Callback]:
    """callbacks as a list, or ConfigError if one is not a Callback."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    found = list(callbacks)
    for c in found:
        if not isinstance(c, Callback):
            raise ConfigError(f"callbacks must be fastnn.callbacks.Callback objects "
                              f"(EarlyStopping, ModelCheckpoint, CSVLogger, ...), not {c!r}; "
                              f"for a function, use fit(callback=...)")
    return found


@contextmanager
def verbose_logging(verbose: int) -> Iterator[None]:
    """With verbose, show the "fastnn" logger's INFO messages on stderr for
    the duration, unless that logger has handlers of its own (then the
    application's logging configuration decides)."""
    if not verbose or logger.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
