"""Learning-rate schedules and their string forms."""
import pytest
from conftest import make_classification

from fastnn import ConfigError, Network
from fastnn.schedules import Constant, Plateau, Step, parse


def run(schedule, lr, metrics):
    schedule.start(lr)
    return [schedule.next_lr(m) for m in metrics]


def test_constant_and_step():
    assert run(Constant(), 0.5, [{}] * 3) == [0.5, 0.5, 0.5]
    assert run(Step(every=2, factor=0.5), 1.0, [{}] * 5) == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_plateau_watches_val_loss_then_loss():
    p = Plateau(patience=1, factor=0.5, max_reductions=5)
    assert run(p, 1.0, [{"val_loss": 1, "loss": 9}, {"val_loss": 2, "loss": 0}]) == [1.0, 0.5]
    q = Plateau(patience=1, factor=0.5, monitor="loss")
    assert run(q, 1.0, [{"val_loss": 1, "loss": 2}, {"val_loss": 0, "loss": 3}]) == [1.0, 0.5]
    assert run(Plateau(patience=1), 1.0, [{"loss": 2}, {"loss": 3}]) == [1.0, 0.1]


def test_plateau_state_round_trips():
    p = Plateau(patience=2, factor=0.5)
    run(p, 1.0, [{"loss": 1}, {"loss": 2}, {"loss": 3}])
    q = Plateau(patience=2, factor=0.5)
    q.start(1.0)
    q.load_state_dict(p.state_dict())
    assert q.next_lr({"loss": 4}) == p.next_lr({"loss": 4})
    s = Step(every=2, factor=0.5)
    run(s, 1.0, [{}] * 3)
    t = Step(every=2, factor=0.5)
    t.load_state_dict(s.state_dict())
    assert t.started and [t.next_lr({}) for _ in range(2)] == [s.next_lr({}) for _ in range(2)]


@pytest.mark.parametrize("spec, expected", [
    (None, Constant()), ("constant", Constant()), ("step", Step()),
    # options other than the defaults, so a parser that ignored them would fail
    ("step:every=7,factor=0.25", Step(7, 0.25)), (" step : every = 3 ", Step(3)),
    ("plateau:patience=4,factor=0.3,max_reductions=1", Plateau(4, 0.3, 1)),
    ("plateau:monitor=loss", Plateau(monitor="loss")),
])
def test_parse(spec, expected):
    schedule = parse(spec)
    if spec and ":" in spec:
        assert repr(schedule) != repr(parse(spec.split(":")[0]))   # the options took effect
    assert repr(schedule) == repr(expected)
    assert repr(parse(schedule.spec())) == repr(schedule)      # the string form round-trips


@pytest.mark.parametrize("spec, message", [
    ("warmup", "Unknown lr_schedule 'warmup'"),
    ("step:every=2.5", "every must be an integer >= 1"),
    ("plateau:factor=0", r"factor must be a number in \(0, 1\]"),
    ("plateau:max_reductions=-1", "max_reductions must be an integer >= 0"),
    ("plateau:monitor=acc", "monitor must be 'val_loss' or 'loss'"),
    ("constant:x=1", "has no option 'x'"),
])
def test_parse_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse(spec)


def test_fit_runs_a_copy_and_never_changes_the_schedule_object():
    X, y = make_classification(n=60)
    schedule = Step(every=1, factor=0.5)
    first = Network([12, 4], seed=0).fit(X, y, epochs=3, lr=1.0, lr_schedule=schedule)
    assert not schedule.started and repr(schedule) == "Step(every=1, factor=0.5)"
    second = Network([12, 4], seed=0).fit(X, y, epochs=3, lr=1.0, lr_schedule=schedule)
    assert first["lr"] == second["lr"] == [1.0, 0.5, 0.25]
    # a started schedule (as a resumed run loads it) goes on from its state,
    # and stays as it was given too
    started = Step(every=1, factor=0.5)
    started.load_state_dict({"base_lr": 1.0, "lr": 0.25, "epochs": 2})
    hist = Network([12, 4], seed=0).fit(X, y, epochs=2, lr=1.0, lr_schedule=started)
    assert hist["lr"] == [0.25, 0.125] and (started.lr, started.epochs) == (0.25, 2)
