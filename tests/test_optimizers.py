"""AdamW and gradient-norm clipping: against torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_ (float64, dense and convolutional nets, both
backends), the compiled kernel against the NumPy reference, the options'
checks, model files and the CLI."""
import numpy as np
import pytest
from conftest import needs
from click.testing import CliRunner
from numpy.testing import assert_allclose, assert_array_equal

import fastnn
from fastnn import Network, _core, _kernels
from fastnn import _reference as ref
from fastnn.exceptions import ConfigError
from fastnn.layers import Conv2D, Dense, L2Pool2D, MaxPool2D
from fastnn.optimizers import OPTIMIZERS, clip_grad_norm, hyper_array
from fastnn.plan import Plan

BACKENDS = ["cython", "numpy"]
STEPPERS = ["sgd", "momentum", "nesterov", "adam", "adamw"]    # all but the full-batch rprop
LR = {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.1, "adam": 0.01, "adamw": 0.01}


def _torch_optimizer(torch, name, params, lr, weight_decay):
    """torch's twin of fastnn's optimizer `name`; the l2/l1 penalties are in
    the loss, so that clipping sees them, as fastnn's does."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=name == "nesterov")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if weight_decay is None:
        return torch.optim.AdamW(params, lr=lr)          # torch's default decay, 0.01
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=weight_decay)


def _torch_steps(torch, opt, params, weights, batches, loss_of, n, l2, l1, clip):
    """Steps of `opt`, one per batch, on the mean loss plus fastnn's
    penalties, the gradient clipped to `clip` over all parameters; returns
    the gradient norms clip_grad_norm_ saw."""
    norms = []
    for batch in batches:
        cost = loss_of(batch)
        cost = cost + sum(l2 / (2 * n) * (W ** 2).sum() + l1 / n * W.abs().sum()
                          for W in weights)
        opt.zero_grad()
        cost.backward()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip)))
        opt.step()
    return norms


def _fit_kwargs(optimizer, weight_decay, clip):
    kwargs = dict(optimizer=optimizer, lr=LR[optimizer], clip_norm=clip, shuffle=False)
    if optimizer == "adamw" and weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    return kwargs


def _cases():
    """(optimizer, weight_decay, clip): every optimizer with clipping that
    bites (0.05), clipping that does not (100) and none; adamw at torch's
    default decay and at 0.5."""
    cases = [(o, None, c) for o in STEPPERS for c in (None, 0.05, 100.0)]
    return cases + [("adamw", 0.5, None), ("adamw", 0.5, 0.05)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer, weight_decay, clip", _cases())
def test_dense_steps_match_torch(optimizer, weight_decay, clip, backend):
    torch = needs("torch")
    rng = np.random.default_rng(0)
    m, n, l2, l1 = 6, 18, 0.3, 0.2
    X, y = rng.normal(size=(n, 8)), rng.integers(0, 5, n)
    net = Network([8, 7, 6, 5], activation="tanh", output="softmax", loss="cross_entropy",
                  dtype="float64", seed=4, backend=backend)
    weights = [torch.from_numpy(W.T.copy()).requires_grad_() for W in net.weights]
    biases = [torch.from_numpy(b.copy()).requires_grad_() for b in net.biases]
    params = [p for pair in zip(weights, biases) for p in pair]

    def loss_of(rows):
        a = torch.from_numpy(X[rows])
        for l, (W, b) in enumerate(zip(weights, biases)):
            z = torch.nn.functional.linear(a, W, b)
            a = torch.tanh(z)
        return torch.nn.functional.cross_entropy(z, torch.from_numpy(y[rows]))

    opt = _torch_optimizer(torch, optimizer, params, LR[optimizer], weight_decay)
    batches = [slice(k * m, (k + 1) * m) for k in range(n // m)]
    norms = _torch_steps(torch, opt, params, weights, batches, loss_of, n, l2, l1, clip)
    if clip is not None:        # the case tests what it says: clipping bites, or not
        assert (max(norms) > clip) == (clip < 1), norms
    net.fit(X, y, epochs=1, batch_size=m, l2=l2, l1=l1,
            **_fit_kwargs(optimizer, weight_decay, clip))
    for W, b, Wt, bt in zip(net.weights, net.biases, weights, biases):
        assert_allclose(W, Wt.detach().numpy().T, rtol=1e-9, atol=1e-12)
        assert_allclose(b, bt.detach().numpy(), rtol=1e-9, atol=1e-12)


def _conv_net(backend, seed=3):
    spec = [(9, 8, 2), Conv2D(4, 3, padding="same"), MaxPool2D(2), Conv2D(5, 2, stride=2),
            L2Pool2D(2, stride=1), Dense(6, activation="tanh"), Dense(3)]
    return Network(spec, activation="relu", output="softmax", loss="cross_entropy",
                   dtype="float64", seed=seed, init="he", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer, weight_decay, clip", [
    ("sgd", None, 0.05), ("momentum", None, 0.05), ("adam", None, 0.05), ("adamw", None, None),
    ("adamw", 0.5, 0.05), ("adamw", None, 100.0)])
def test_conv_steps_match_torch(optimizer, weight_decay, clip, backend):
    torch = needs("torch")
    from test_conv import _torch_net

    rng = np.random.default_rng(10)
    m, n, l2, l1 = 5, 15, 0.4, 0.2
    net = _conv_net(backend)
    X = rng.uniform(0, 1, (n, net.sizes[0]))
    y = rng.integers(0, 3, n)
    params, forward = _torch_net(torch, net)
    weights, biases = params[0::2], params[1::2]

    def loss_of(rows):
        return torch.nn.functional.cross_entropy(forward(torch.from_numpy(X[rows])),
                                                 torch.from_numpy(y[rows]))

    opt = _torch_optimizer(torch, optimizer, params, LR[optimizer], weight_decay)
    batches = [slice(k * m, (k + 1) * m) for k in range(n // m)]
    norms = _torch_steps(torch, opt, params, weights, batches, loss_of, n, l2, l1, clip)
    if clip is not None:
        assert (max(norms) > clip) == (clip < 1), norms
    net.fit(X, y, epochs=1, batch_size=m, l2=l2, l1=l1,
            **_fit_kwargs(optimizer, weight_decay, clip))
    for W, b, Wt, bt in zip(net.weights, net.biases, weights, biases):
        Wt = Wt.detach().numpy()
        Wt = Wt.transpose(2, 3, 1, 0) if W.ndim == 4 else Wt.T
        assert_allclose(W, Wt, rtol=1e-9, atol=1e-12)
        assert_allclose(b, bt.detach().numpy(), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------ clip_grad_norm itself

def test_clip_grad_norm_by_hand():
    g = np.array([3.0, 4.0])                     # norm 5
    assert clip_grad_norm(g, 1.0) == 5.0
    assert_allclose(g, [3 / (5 + 1e-6), 4 / (5 + 1e-6)], rtol=1e-15)
    g = np.array([3.0, 4.0])
    assert clip_grad_norm(g, 10.0) == 5.0        # shorter than the limit: unchanged
    assert_array_equal(g, [3.0, 4.0])
    g = np.array([3.0, 4.0])
    clip_grad_norm(g, 5.0)                       # at the limit: 5 / (5 + 1e-6) < 1 still scales
    assert g[0] < 3.0


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 50.0])
def test_clip_grad_norm_is_torchs(max_norm):
    torch = needs("torch")
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=s) for s in [(4, 3), (3,), (2, 2, 3, 5), (5,)]]
    tensors = [torch.from_numpy(p.copy()).requires_grad_() for p in parts]
    for t, p in zip(tensors, parts):
        t.grad = torch.from_numpy(p.copy())
    want = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    flat = np.concatenate([p.ravel() for p in parts])
    assert clip_grad_norm(flat, max_norm) == pytest.approx(want, rel=1e-14)
    assert_allclose(flat, np.concatenate([t.grad.numpy().ravel() for t in tensors]), rtol=1e-14)


# ------------------------------------------------- the kernel and the reference

def _dense_args(dtype, optimizer, batch, capacity, clip, n=40):
    from test_core import _epoch_args

    args = _epoch_args([6, 5, 4, 3], ["tanh", "relu", "softmax"], n=n, dtype=dtype,
                       optimizer=optimizer, lr=0.05, batch=batch, capacity=capacity)
    args["hyper"] = hyper_array(0.05, 0.01, 0.02, momentum=0.8, betas=(0.8, 0.99),
                                weight_decay=0.3, clip_norm=clip)
    return args


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", STEPPERS)
@pytest.mark.parametrize("capacity", [7, 3])         # one chunk a batch (sgd: fused off), chunks
def test_clipping_kernel_matches_reference(optimizer, capacity, dtype):
    from test_core import _assert_same, _run_both

    fast, slow = _run_both(_dense_args(dtype, optimizer, 7, capacity, 0.05))
    _assert_same(fast, slow, dtype)
    unclipped = _run_both(_dense_args(dtype, optimizer, 7, capacity, None))[1]
    assert not np.allclose(unclipped["params"], slow["params"], rtol=1e-3)   # it did clip
    loose = _run_both(_dense_args(dtype, optimizer, 7, capacity, 1e6))
    _assert_same(*loose, dtype)
    assert_array_equal(loose[1]["params"], unclipped["params"])             # never scaled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_kernel_matches_reference(dtype):
    from test_core import _assert_same, _run_both

    args = _dense_args(dtype, "adamw", 7, 7, None)
    fast, slow = _run_both(args)
    _assert_same(fast, slow, dtype)
    adam = _run_both({**args, "optimizer": OPTIMIZERS["adam"].code})[1]
    assert not np.allclose(adam["params"], slow["params"], rtol=1e-4)       # it did decay
    args["hyper"][_kernels.H_WEIGHT_DECAY] = 0                              # without: adam's
    assert_allclose(_run_both(args)[1]["params"], adam["params"], rtol=1e-15)


def test_adamw_step_decays_every_parameter_first():
    # one step from a zero gradient moves nothing but the decay: p (1 - lr wd)
    p = np.array([1.0, -2.0, 0.5])
    state = OPTIMIZERS["adamw"].new_state(3, np.float64, 0.1)
    hyper = hyper_array(0.1, weight_decay=0.2)
    for kernels in (_core, ref):
        q = p.copy()
        kernels.optimizer_step(OPTIMIZERS["adamw"].code, q, state.copy(), hyper, 1)
        assert_allclose(q, p * (1 - 0.1 * 0.2), rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_team_clips_as_one_thread_does(optimizer, dtype):
    # the team sums each thread's share of the squares before any scaling
    from test_conv import EPOCH_NET, _data, _epoch, _team

    plan = Plan.parse(EPOCH_NET, activation="relu", output="softmax")
    X, Y = _data(37, (8, 8, 2))
    args = _epoch(plan, X, Y, dtype, batch=7, capacity=3, optimizer=optimizer, lr=0.02,
                  l2=0.3, l1=0.1)
    args["hyper"][_kernels.H_CLIP_NORM] = 0.05
    args["hyper"][_kernels.H_WEIGHT_DECAY] = 0.3
    (status, loss, _), one = _team(args, 1)
    slow = {**args, "params": args["params"].copy(), "state": args["state"].copy(),
            "control": args["control"].copy()}
    ref.train_epoch(**slow)
    tol = {np.float32: 2e-6, np.float64: 1e-13}[dtype]
    assert_allclose(one["params"], slow["params"], rtol=tol * 10, atol=tol)
    for threads in (2, 3):
        (status_t, loss_t, _), team = _team(args, threads)
        assert status_t == status == _kernels.DONE
        assert_allclose(team["params"], one["params"], rtol=tol * 10, atol=tol)
        assert_allclose(team["state"], one["state"], rtol=tol * 10, atol=tol)
    unclipped = {**args, "hyper": args["hyper"].copy()}
    unclipped["hyper"][_kernels.H_CLIP_NORM] = 0
    assert not np.allclose(_team(unclipped, 2)[1]["params"], one["params"], rtol=1e-3)


# ------------------------------------------------------------- the options

@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adam", weight_decay=0.1), "weight_decay applies to optimizer 'adamw', "
                                               "not 'adam'"),
    (dict(optimizer="adamw", weight_decay=-1), "weight_decay must be a finite number >= 0"),
    (dict(optimizer="adamw", weight_decay=float("inf")), "weight_decay must be a finite number"),
    (dict(optimizer="adamw", weight_decay="lots"), "weight_decay must be a number"),
    (dict(optimizer="rprop", clip_norm=1.0), "clip_norm does not apply to optimizer 'rprop'.*"
                                             "use sgd, momentum, nesterov, adam or adamw"),
    (dict(clip_norm=0), "clip_norm must be a finite number > 0"),
    (dict(clip_norm=-1.0), "clip_norm must be a finite number > 0"),
    (dict(clip_norm=float("nan")), "clip_norm must be a finite number > 0"),
    (dict(clip_norm=[1.0]), "clip_norm must be a number"),
    (dict(optimizer="sgd", betas=(0.9, 0.99)), "betas applies to optimizer 'adam' or 'adamw'"),
])
def test_bad_options_are_refused_before_training(kwargs, message):
    rng = np.random.default_rng(0)
    net = Network([4, 3, 2], seed=0)
    before = net._params.copy()
    with pytest.raises(ConfigError, match=message) as info:
        net.fit(rng.normal(size=(10, 4)), rng.integers(0, 2, 10), epochs=1, **kwargs)
    assert "\n" not in str(info.value)
    assert_array_equal(net._params, before)


def test_adamw_takes_betas_and_eps_and_records_its_options():
    rng = np.random.default_rng(0)
    net = Network([4, 3, 2], seed=0)
    net.fit(rng.normal(size=(10, 4)), rng.integers(0, 2, 10), epochs=1, optimizer="adamw",
            betas=(0.8, 0.99), eps=1e-7, clip_norm=2.0)
    t = net.training_record
    assert (t["optimizer"], t["betas"], t["eps"]) == ("adamw", [0.8, 0.99], 1e-7)
    assert (t["weight_decay"], t["clip_norm"]) == (0.01, 2.0)
    net.fit(rng.normal(size=(10, 4)), rng.integers(0, 2, 10), epochs=1, optimizer="adam")
    assert "weight_decay" not in net.training_record and "clip_norm" not in net.training_record


# ------------------------------------------------------- model files, resume

@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_with_clipping_resumes_from_a_file_exactly(tmp_path, backend, one_core):
    rng = np.random.default_rng(2)
    X, y = rng.uniform(0, 1, (30, 144)), rng.integers(0, 3, 30)
    kwargs = dict(batch_size=6, optimizer="adamw", lr=0.01, weight_decay=0.2, clip_norm=0.1)
    straight, first = _conv_net(backend, seed=1), _conv_net(backend, seed=1)
    straight.fit(X, y, epochs=2, **kwargs)
    first.fit(X, y, epochs=1, **kwargs)
    first.save(tmp_path / "m.safetensors")
    loaded = fastnn.load(tmp_path / "m.safetensors", backend=backend)
    assert loaded.optimizer_state.name == "adamw" and loaded.optimizer_state.steps == 5
    assert loaded.optimizer_state.state.shape == (3, loaded.n_params)
    record = loaded.training_record
    assert (record["weight_decay"], record["clip_norm"]) == (0.2, 0.1)
    loaded.fit(X, y, epochs=1, **kwargs)
    for a, b in zip(straight.weights + straight.biases, loaded.weights + loaded.biases):
        assert_array_equal(a, b)


# ------------------------------------------------------------------ the CLI

def _cli(*args, code=0):
    from fastnn.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_cli_trains_and_resumes_with_adamw_and_clipping(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, X=rng.integers(0, 256, (60, 16)).astype(np.uint8), y=rng.integers(0, 3, 60))
    model = tmp_path / "m.safetensors"
    _cli("train", data, "--hidden", "6", "--optimizer", "adamw", "--lr", "0.01",
         "--weight-decay", "0.1", "--clip-norm", "0.5", "--epochs", "2", "--seed", "3",
         "--dtype", "float64", "-o", model)
    net = fastnn.load(model)
    assert net.optimizer_state.name == "adamw"
    assert (net.training_record["weight_decay"], net.training_record["clip_norm"]) == (0.1, 0.5)
    # the run once more in the library: the same weights
    twin = Network([16, 6, 3], seed=3, dtype="float64")
    twin.fit(np.load(data)["X"], np.load(data)["y"], epochs=2, optimizer="adamw", lr=0.01,
             weight_decay=0.1, clip_norm=0.5)
    assert_allclose(net.weights[0], twin.weights[0], rtol=1e-12)
    # a resumed run keeps both options, and may change them
    _cli("train", "--resume", model, "--epochs", "1", "--clip-norm", "0.25")
    resumed = fastnn.load(model)
    assert resumed.epochs_trained == 3
    record = resumed.training_record
    assert (record["weight_decay"], record["clip_norm"]) == (0.1, 0.25)


def test_cli_refuses_what_fit_refuses_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, X=rng.integers(0, 256, (20, 16)).astype(np.uint8), y=rng.integers(0, 3, 20))
    for args, message in [(("--weight-decay", "0.1"), "weight_decay applies to optimizer 'adamw'"),
                          (("--optimizer", "rprop", "--clip-norm", "1"),
                           "clip_norm does not apply to optimizer 'rprop'")]:
        result = _cli("train", data, "--hidden", "4", "--epochs", "1", *args, code=1)
        last = result.output.splitlines()[-1]           # after the network's line
        assert last.startswith("Error: ") and message in last
        assert "Traceback" not in result.output
    result = _cli("train", data, "--clip-norm", "0", code=2)
    assert "--clip-norm" in result.output
    assert "adamw" in _cli("train", "--help").output
