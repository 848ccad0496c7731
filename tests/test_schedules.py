"""Learning-rate schedules and their string forms."""
import pytest
from conftest import make_classification, needs

from fastnn import ConfigError, Network
from fastnn.schedules import Constant, Cosine, OneCycle, Plateau, Step, Warmup, parse


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
    ("exponential", "Unknown lr_schedule 'exponential'"),
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


# ------------------------------------------------ cosine, one-cycle, warm-up
# Each is PyTorch's scheduler stepped once per epoch: the rates of the first
# epochs, from both, agree to 1e-9.

def torch_rates(make, lr, epochs):
    torch = needs("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make(torch.optim.lr_scheduler, opt)
    rates = []
    for _ in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


def fastnn_rates(schedule, lr, epochs, fit_epochs=None):
    schedule.start(lr, fit_epochs or epochs)
    return [schedule.lr] + [schedule.next_lr({"loss": 1.0}) for _ in range(epochs - 1)]


@pytest.mark.parametrize("schedule, make, epochs", [
    (Cosine(total=10), lambda s, o: s.CosineAnnealingLR(o, T_max=10), 10),
    # past T_max PyTorch's cosine rises again: so does fastnn's
    (Cosine(total=7, min_lr=0.01), lambda s, o: s.CosineAnnealingLR(o, T_max=7, eta_min=0.01),
     30),
    (OneCycle(total=20), lambda s, o: s.OneCycleLR(o, max_lr=0.5, total_steps=20), 20),
    (OneCycle(total=9, pct_start=0.5, div_factor=10, final_div_factor=100, anneal="linear"),
     lambda s, o: s.OneCycleLR(o, max_lr=0.5, total_steps=9, pct_start=0.5, div_factor=10,
                               final_div_factor=100, anneal_strategy="linear"), 9),
    (OneCycle(total=2), lambda s, o: s.OneCycleLR(o, max_lr=0.5, total_steps=2), 2),
    (Warmup(), lambda s, o: s.LinearLR(o), 12),
    (Warmup(total=4, start_factor=0.1, end_factor=0.5),
     lambda s, o: s.LinearLR(o, start_factor=0.1, end_factor=0.5, total_iters=4), 9),
], ids=["cosine", "cosine-past-total", "onecycle", "onecycle-linear", "onecycle-short",
        "warmup", "warmup-options"])
def test_schedules_match_pytorch(schedule, make, epochs):
    expected = torch_rates(make, 0.5, epochs)
    got = fastnn_rates(schedule, 0.5, epochs)
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-9, (got, expected)


def test_total_defaults_to_the_fits_epochs_and_is_kept_for_a_resume(tmp_path):
    X, y = make_classification(n=60)
    hist = Network([12, 4], seed=0).fit(X, y, epochs=6, lr=0.5, lr_schedule="cosine")
    expected = fastnn_rates(Cosine(total=6), 0.5, 6)
    assert max(abs(a - b) for a, b in zip(hist["lr"], expected)) < 1e-15
    net = Network([12, 4], seed=0)
    net.fit(X, y, epochs=3, lr=0.5, lr_schedule="onecycle")
    assert net.training_record["lr_schedule_state"]["total"] == 3
    # a run of 6 epochs stopped after 3 and resumed from its state goes on
    # along the same curve
    net = Network([12, 4], seed=0)
    net.fit(X, y, epochs=3, lr=0.5, lr_schedule="onecycle:total=6")
    resumed = OneCycle(total=6)
    resumed.load_state_dict(net.training_record["lr_schedule_state"])
    # through a model file, as --resume reads it (the header's schema knows "total")
    net.save(tmp_path / "m.safetensors")
    from fastnn import load
    assert load(tmp_path / "m.safetensors").training_record["lr_schedule_state"]["total"] == 6
    hist = net.fit(X, y, epochs=3, lr=0.5, lr_schedule=resumed)
    assert hist["lr"] == pytest.approx(fastnn_rates(OneCycle(total=6), 0.5, 6)[3:], abs=1e-15)
    with pytest.raises(ConfigError, match="has total=None"):
        OneCycle().load_state_dict({"base_lr": 0.5, "lr": 0.1, "epochs": 2})


def test_new_schedules_parse_and_refuse():
    for spec in ("cosine", "cosine:total=30,min_lr=0.001", "onecycle:total=20,pct_start=0.4",
                 "onecycle:anneal=linear", "warmup", "warmup:total=3,start_factor=0.5"):
        schedule = parse(spec)
        assert repr(parse(schedule.spec())) == repr(schedule)
    assert repr(parse("cosine:total=30,min_lr=0.001")) == "Cosine(total=30, min_lr=0.001)"
    for spec, message in (("cosine:total=0", "total must be an integer >= 1"),
                          ("onecycle:pct_start=1", r"pct_start must be a number in \(0, 1\)"),
                          ("onecycle:anneal=exp", "anneal must be 'cos' or 'linear'"),
                          ("warmup:start_factor=0", "start_factor must be a number > 0"),
                          ("cosine:min_lr=-1", "min_lr must be a number >= 0")):
        with pytest.raises(ConfigError, match=message):
            parse(spec)
