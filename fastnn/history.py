"""The per-epoch record that ``Network.fit`` returns."""
import re
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from fastnn.files import FileKind

#: A history file (History.to_dict() as JSON, as fastnn train --history
#: writes it), for the output policy (fastnn.files).
HISTORY_FILE = FileKind("fastnn history file (JSON starting with \"epochs\")",
                        lambda head: re.match(rb'\s*\{\s*"epochs"\s*:', head) is not None)


class History(Mapping[str, list]):
    """Per-epoch metrics of a training run, under Keras's names.

    A read-only mapping of series names to lists, one entry per epoch:
    ``hist["loss"]`` (the mean training loss), ``accuracy``, ``val_loss``
    and ``val_accuracy`` (when there is validation data), ``lr`` and
    ``seconds``. ``hist.epochs`` counts the epochs completed and
    ``hist.stopped`` says why training ended early (None if it ran every
    epoch). With early stopping, ``hist.best_epoch`` is the epoch (from 0)
    whose weights the network kept.
    """

    def __init__(self) -> None:
        self._series: dict[str, list] = {}
        self.epochs = 0
        self.stopped: Optional[str] = None
        self.best_epoch: Optional[int] = None

    def append(self, metrics: Mapping[str, Any]) -> None:
        """Record one epoch's metrics (a dict of name -> number)."""
        for name, value in metrics.items():
            self._series.setdefault(name, [None] * self.epochs).append(value)
        self.epochs += 1
        for values in self._series.values():
            if len(values) < self.epochs:
                values.append(None)

    def __getitem__(self, name: str) -> list:
        return self._series[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._series)

    def __len__(self) -> int:
        return len(self._series)

    def last(self) -> dict[str, Any]:
        """The final epoch's metrics as a dict ({} before any epoch)."""
        return {k: v[-1] for k, v in self._series.items() if v and v[-1] is not None}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: each series, plus 'epochs' and 'stopped'."""
        return {"epochs": self.epochs, "stopped": self.stopped, "best_epoch": self.best_epoch,
                **{k: list(v) for k, v in self._series.items()}}

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.last().items()
                         if isinstance(v, float))
        return f"History(epochs={self.epochs}{', ' if last else ''}{last})"
