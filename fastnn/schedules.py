"""Learning-rate schedules: how the rate changes from epoch to epoch.

Give ``fit(lr_schedule=...)`` one of these objects, or the same string the
CLI takes: ``"constant"``, ``"step:every=5,factor=0.5"``,
``"plateau:patience=3,factor=0.1,max_reductions=3"``, ``"cosine"``
(``"cosine:total=30,min_lr=0.001"``), ``"onecycle"`` (``"onecycle:total=30,
pct_start=0.3"``) or ``"warmup:total=5"``. Cosine, one-cycle and warm-up
are PyTorch's CosineAnnealingLR, OneCycleLR and LinearLR stepped once per
epoch; their `total` defaults to the epochs of the fit that starts them.
"""
import copy
import math
import numbers
from collections.abc import Mapping
from typing import Any, Optional, Union

from fastnn._validation import MAX_COUNT, parse_int, positive_int
from fastnn.exceptions import ConfigError, lookup


class Schedule:
    """Base class. ``start(lr)`` begins a run; ``next_lr(metrics)`` is called
    after each epoch with its metrics and returns the rate for the next one.

    A schedule is a hyperparameter: ``fit`` runs a copy of it (``parse``
    makes one), so the object given never changes, and a second ``fit`` or
    a scikit-learn ``clone`` starts from the initial rate again. To go on
    where a run stopped, ``load_state_dict`` the state that run left in
    ``net.training_record["lr_schedule_state"]`` (a resumed run does this through
    the model file): a started schedule's copy continues from its state.
    """

    name = ""
    started = False
    base_lr: float
    lr: float
    epochs: int

    def start(self, lr: float, epochs: Optional[int] = None) -> None:
        """Begin a run at rate lr; `epochs` is how many the fit that starts
        it will run (the default length of the schedules that have one)."""
        self.base_lr = self.lr = lr
        self.epochs = 0
        self.started = True

    def next_lr(self, metrics: Mapping[str, float]) -> float:
        self.epochs += 1
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the schedule (JSON-ready)."""
        return {"base_lr": self.base_lr, "lr": self.lr, "epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a state_dict (marks the schedule started); ConfigError
        if it lacks a value this schedule needs or has one of the wrong kind."""
        self.start(_state_value(self, state, "base_lr", float))
        self.lr = _state_value(self, state, "lr", float)
        self.epochs = _state_value(self, state, "epochs", int)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def spec(self) -> str:
        """The string form, as the CLI takes it."""
        args = ",".join(f"{k}={v}" for k, v in self._params().items())
        return self.name + (":" + args if args else "")

    def _params(self) -> dict[str, Any]:
        return {}


class Constant(Schedule):
    """The same rate every epoch."""

    name = "constant"


class Step(Schedule):
    """Step decay: multiply the rate by `factor` every `every` epochs."""

    name = "step"

    def __init__(self, every: int = 5, factor: float = 0.5) -> None:
        self.every = positive_int(every, "every", 1, MAX_COUNT)
        self.factor = _factor(factor)

    def next_lr(self, metrics: Mapping[str, float]) -> float:
        super().next_lr(metrics)
        if self.epochs % self.every == 0:
            self.lr *= self.factor
        return self.lr

    def _params(self) -> dict[str, Any]:
        return {"every": self.every, "factor": self.factor}


class Plateau(Schedule):
    """Reduce on plateau: multiply the rate by `factor` after `patience`
    epochs without improvement of `monitor` (``val_loss``, or ``loss`` when
    there is no validation data), at most `max_reductions` times."""

    name = "plateau"

    def __init__(self, patience: int = 3, factor: float = 0.1, max_reductions: int = 3,
                 monitor: str = "val_loss") -> None:
        self.patience = positive_int(patience, "patience", 1, MAX_COUNT)
        self.factor = _factor(factor)
        self.max_reductions = positive_int(max_reductions, "max_reductions", 0, MAX_COUNT)
        if monitor not in ("val_loss", "loss"):
            raise ConfigError(f"monitor must be 'val_loss' or 'loss', not {monitor!r}")
        self.monitor = monitor

    def start(self, lr: float, epochs: Optional[int] = None) -> None:
        super().start(lr, epochs)
        self.best = math.inf
        self.waited = 0
        self.reductions = 0

    def next_lr(self, metrics: Mapping[str, float]) -> float:
        super().next_lr(metrics)
        value = metrics[self.monitor] if self.monitor in metrics else metrics["loss"]
        if value < self.best:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
            if self.waited >= self.patience and self.reductions < self.max_reductions:
                self.lr *= self.factor
                self.reductions += 1
                self.waited = 0
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best": self.best, "waited": self.waited,
                "reductions": self.reductions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.best = _state_value(self, state, "best", float)
        self.waited = _state_value(self, state, "waited", int)
        self.reductions = _state_value(self, state, "reductions", int)

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"patience": self.patience, "factor": self.factor,
                  "max_reductions": self.max_reductions}
        if self.monitor != "val_loss":
            params["monitor"] = self.monitor
        return params


class _ClosedForm(Schedule):
    """A schedule whose rate is a function of the epochs done: ``rate(t)``,
    t counting the epochs from 0, over `total` epochs (default: those of the
    fit that starts it)."""

    total: Optional[int]

    def start(self, lr: float, epochs: Optional[int] = None) -> None:
        super().start(lr, epochs)
        if self.total is None:
            # the fit's length, kept in the state: a resumed run goes on with it
            self.total = max(epochs or 1, 1)
        self.lr = self.rate(0)

    def next_lr(self, metrics: Mapping[str, float]) -> float:
        super().next_lr(metrics)
        self.lr = self.rate(self.epochs)
        return self.lr

    def rate(self, t: int) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "total": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        total = _state_value(self, state, "total", int)
        if total < 1:
            raise ConfigError(f"the saved state of lr_schedule {self.spec()!r} has "
                              f"total={total}; expected a count >= 1")
        self.total = total
        super().load_state_dict(state)
        self.lr = self.rate(self.epochs)


class Cosine(_ClosedForm):
    """Cosine annealing from the rate given to `min_lr` over `total` epochs:
    ``min_lr + (lr - min_lr) (1 + cos(pi t / total)) / 2`` (PyTorch's
    CosineAnnealingLR, stepped once per epoch, T_max = total: past `total`
    it rises again along the same cosine, as PyTorch's does)."""

    name = "cosine"

    def __init__(self, total: Optional[int] = None, min_lr: float = 0.0) -> None:
        self.total = _total(total)
        self.min_lr = _nonnegative(min_lr, "min_lr")

    def rate(self, t: int) -> float:
        assert self.total is not None
        return self.min_lr + (self.base_lr - self.min_lr) * (
            1 + math.cos(math.pi * t / self.total)) / 2

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {} if self.total is None else {"total": self.total}
        return {**params, "min_lr": self.min_lr}


class OneCycle(_ClosedForm):
    """The one-cycle policy over `total` epochs, the rate given being the
    peak: from ``lr / div_factor`` up to ``lr`` over the first `pct_start`
    of the epochs, then down to ``lr / (div_factor * final_div_factor)``,
    along a cosine (or a line, ``anneal="linear"``). PyTorch's OneCycleLR
    (two phases), stepped once per epoch, total_steps = total; after `total`
    epochs the rate stays at its last value."""

    name = "onecycle"

    def __init__(self, total: Optional[int] = None, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 anneal: str = "cos") -> None:
        self.total = _total(total)
        self.pct_start = _nonnegative(pct_start, "pct_start")
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"pct_start must be a number in (0, 1), not {pct_start!r}")
        self.div_factor = _nonnegative(div_factor, "div_factor", positive=True)
        self.final_div_factor = _nonnegative(final_div_factor, "final_div_factor", positive=True)
        if anneal not in ("cos", "linear"):
            raise ConfigError(f"anneal must be 'cos' or 'linear', not {anneal!r}")
        self.anneal = anneal

    def rate(self, t: int) -> float:
        assert self.total is not None
        initial = self.base_lr / self.div_factor
        final = initial / self.final_div_factor
        peak_at = float(self.pct_start * self.total) - 1
        end = float(self.total - 1)
        t = min(t, self.total - 1)
        if t <= peak_at or peak_at >= end:
            start, stop, pct = initial, self.base_lr, t / peak_at if peak_at > 0 else 1.0
        else:
            start, stop, pct = self.base_lr, final, (t - peak_at) / (end - peak_at)
        if self.anneal == "linear":
            return (stop - start) * pct + start
        return stop + (start - stop) / 2.0 * (math.cos(math.pi * pct) + 1)

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {} if self.total is None else {"total": self.total}
        return {**params, "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor, "anneal": self.anneal}


class Warmup(_ClosedForm):
    """Linear warm-up: the rate given times a factor that goes in a line
    from `start_factor` to `end_factor` over `total` epochs (default 5),
    then stays (PyTorch's LinearLR, stepped once per epoch,
    total_iters = total)."""

    name = "warmup"

    def __init__(self, total: Optional[int] = 5, start_factor: float = 1 / 3,
                 end_factor: float = 1.0) -> None:
        self.total = _total(total)
        self.start_factor = _nonnegative(start_factor, "start_factor", positive=True)
        self.end_factor = _nonnegative(end_factor, "end_factor")
        if self.start_factor > 1 or self.end_factor > 1:
            raise ConfigError(f"start_factor and end_factor must be in (0, 1] and [0, 1], not "
                              f"{start_factor!r} and {end_factor!r}")

    def rate(self, t: int) -> float:
        assert self.total is not None
        done = min(t, self.total)
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                               * done / self.total)

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {} if self.total is None else {"total": self.total}
        return {**params, "start_factor": self.start_factor, "end_factor": self.end_factor}


SCHEDULES = {cls.name: cls for cls in (Constant, Step, Plateau, Cosine, OneCycle, Warmup)}


def _total(value: object) -> Optional[int]:
    return None if value is None else positive_int(value, "total", 1, MAX_COUNT)


def _nonnegative(value: object, name: str, positive: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value)) or float(value) < 0
            or (positive and float(value) == 0)):
        raise ConfigError(f"{name} must be a number {'>' if positive else '>='} 0, "
                          f"not {value!r}")
    return float(value)


def _state_value(schedule: Schedule, state: Mapping[str, Any], key: str, kind: type) -> Any:
    """state[key] as a number of `kind` (float: not NaN, int: >= 0), or ConfigError."""
    value = state.get(key) if isinstance(state, dict) else None
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (not math.isnan(value) if kind is float else
               isinstance(value, int) and value >= 0))
    if not ok:
        raise ConfigError(f"the saved state of lr_schedule {schedule.spec()!r} has "
                          f"{key}={value!r}; expected a {'number' if kind is float else 'count'}"
                          f" (was the run saved with another schedule?)")
    return kind(value)


def _factor(value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0 < float(value) <= 1):
        raise ConfigError(f"factor must be a number in (0, 1], not {value!r}")
    return float(value)


def _value(key: str, text: str) -> Union[int, float, str]:
    """An option's value from its text: an int, a float, or the text itself."""
    if text.lstrip("+-").isdigit() and text.isascii():
        return parse_int(text, f"lr_schedule option {key}")
    try:
        return float(text)
    except ValueError:
        return text


def parse(spec: Union[str, "Schedule", None]) -> Schedule:
    """A new Schedule from an object (a copy, with its state), None
    (constant) or a string such as ``"step:every=5,factor=0.5"``."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return copy.deepcopy(spec)
    if not isinstance(spec, str):
        raise ConfigError(f"lr_schedule must be a string or a fastnn.schedules object, not {spec!r}")
    name, _, args = spec.partition(":")
    cls = lookup(SCHEDULES, "lr_schedule", name.strip())
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"lr_schedule {spec!r}: expected key=value, not {part!r}")
        kwargs[key.strip()] = _value(key.strip(), value.strip())
    valid = set(cls().__dict__) if cls is not Constant else set()
    for key in kwargs:
        if key not in valid:
            raise ConfigError(f"lr_schedule {name!r} has no option {key!r}; "
                              f"expected some of {sorted(valid)}")
    return cls(**kwargs)
