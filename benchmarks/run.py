"""Time training and inference of fastnn against other implementations, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py
    ... python benchmarks/run.py --config nielsen30 --impl fastnn --impl jax-scan
    ... python benchmarks/run.py --repeat 5 --json results.json
    ... python benchmarks/run.py --check          # do the peers compute what fastnn does?

Each implementation trains one epoch of the same random MNIST-shaped data
(60,000 x 784 float32 in [0, 1), 10 classes, seeded) with the same recipe,
from the same initial weights, visiting the rows in the same shuffled order
(fastnn's own), in float32, with the same number of threads, `--repeat`
times; the inference rows time `forward` on 10,000 such images. fastnn is
timed as a user waits: the wall clock around the whole `fit` call (its own
checks and per-epoch work included); the epoch's own clock is shown beside
it. The table shows samples/second (median, min, max), fastnn's median over
each implementation's (the ratio), the achieved GFLOP/s and its fraction of
the GEMM ceiling (the best of many float32 A @ B products of the largest
layer's shape, the training batch by its weights, measured before and after
the configuration's rounds) and of the cores' FMA peak (peak.c, measured in
the same run). FLOPs per training sample are 2 x (forward + weight gradients
+ input gradients of every layer but the first) multiply-adds; per inference
sample, 2 x the forward ones.

Implementations, each run when its package is installed:
  fastnn      Network.fit (compiled kernels)
  fastnn-bf16 the same with Network(dtype="bfloat16"): float32 masters, every
              product's operands rounded to bfloat16 (emulated where the CPU
              lacks AVX512_BF16: fastnn.blas.bf16_speed says so), and its
              inference rows
  numpy       fastnn's NumPy reference backend (the same maths, vectorised)
  nielsen     the textbook per-sample loop of Nielsen's network.py (10,000 rows)
  torch       torch.nn.Sequential + torch.optim.SGD, eager
  torch-bf16  the same under torch.autocast("cpu", dtype=torch.bfloat16)
  jax-step    a jit'd SGD step called once per batch from Python
  jax-scan    the whole epoch in one jit'd lax.scan over the batches
  onnxruntime fastnn's own ONNX export (inference rows only)
JAX's inference rows (a jit'd forward) run when either JAX variant is chosen.

The convolutional configurations (conv*) are Nielsen's chapter-6 nets on
28 x 28 x 1 images: 5 x 5 valid convolutions, 2 x 2 max-pooling, FC100, a
softmax output with cross-entropy. They run fastnn and torch (and numpy when
asked for by --impl: the reference's convolutions are slow); the other peers
are dense only. For them a convolution counts OH*OW*kh*kw*C*F multiply-adds,
and the GEMM ceiling is the largest GEMM of the batch (the first
convolution's im2col product for the whole batch).

The machine, each library's kernels and any warning (a BLAS below the best
kernel for the CPU: OPENBLAS_CORETYPE set, say) are printed first and kept in
the --json file. See benchmarks/README.md.
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastnn  # noqa: E402
import machine  # noqa: E402
import peak  # noqa: E402
from fastnn.blas import get_num_threads, set_num_threads  # noqa: E402
from fastnn.layers import Conv2D, Dense, Flatten, MaxPool2D  # noqa: E402
from fastnn.plan import Plan  # noqa: E402
from nielsen import TextbookNetwork  # noqa: E402


@dataclass(frozen=True)
class Config:
    sizes: tuple          # dense sizes, or an input shape and fastnn.layers objects
    activation: str
    output: str
    loss: str
    batch: int
    lr: float


CONFIGS = {
    "nielsen30": Config((784, 30, 10), "sigmoid", "sigmoid", "mse", 10, 3.0),
    "nielsen100": Config((784, 100, 10), "sigmoid", "sigmoid", "mse", 10, 3.0),
    "mid": Config((784, 256, 128, 10), "relu", "softmax", "cross_entropy", 64, 0.1),
    "wide": Config((784, 1024, 1024, 10), "relu", "softmax", "cross_entropy", 256, 0.1),
    "conv20-sigmoid": Config(((28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Dense(100),
                              Dense(10, activation="softmax")), "sigmoid", "softmax",
                             "cross_entropy", 10, 0.1),
    "conv2-relu": Config(((28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), MaxPool2D(2),
                          Dense(100), Dense(10)), "relu", "softmax", "cross_entropy", 10, 0.03),
    "conv2-relu-64": Config(((28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5),
                             MaxPool2D(2), Dense(100), Dense(10)), "relu", "softmax",
                            "cross_entropy", 64, 0.03),
}
INFERENCE = ["mid", "wide", "conv2-relu"]
# implementations that take convolutional configurations
CONV_IMPLS = {"fastnn", "fastnn-bf16", "numpy", "torch", "torch-bf16"}
N_TRAIN, N_TEST, N_TEXTBOOK, N_CHECK = 60000, 10000, 10000, 2560
SEED = 0


@dataclass(eq=False)
class Data:
    X: np.ndarray          # (n, 784) float32
    y: np.ndarray          # (n,) int64 labels
    Y: np.ndarray          # (n, 10) float32 one-hot
    X_test: np.ndarray     # (N_TEST, 784) float32


@dataclass
class Timed:
    n: int                           # samples processed
    seconds: float                   # wall clock, as the caller waits
    epoch_seconds: float = None      # fastnn's own epoch clock
    weights: list = None             # [(W, b)] after training, for --check
    output: np.ndarray = None        # inference output, for --check


def plan(config):
    return Plan.parse(list(config.sizes), config.activation, config.output)


def is_conv(config):
    return not all(isinstance(s, int) for s in config.sizes)


def _gemms(config):
    """(rows per sample, I, O) of each layer's forward GEMM: a dense layer is
    one row of I x O, a convolution OH*OW rows of kh*kw*C x F."""
    p = plan(config)
    gemms = []
    for layer, shape in zip(p.layers, p.shapes):
        if isinstance(layer, Dense):
            gemms.append((1, shape[0], layer.units))
        elif isinstance(layer, Conv2D):
            OH, OW, F = layer.output_shape(shape)
            gemms.append((OH * OW, layer.kernel[0] * layer.kernel[1] * shape[2], F))
    return gemms


def flops_per_sample(config, training=True):
    macs = [r * i * o for r, i, o in _gemms(config)]
    if not training:
        return 2 * sum(macs)
    return 2 * (2 * sum(macs) + sum(macs[1:]))


def gemm_ceiling(config, batch, seconds=1.0):
    """Best float32 GFLOP/s of (batch*rows x I) @ (I x O) for the largest layer (NumPy's BLAS)."""
    r, i, o = max(_gemms(config), key=lambda g: g[0] * g[1] * g[2])
    batch *= r
    rng = np.random.default_rng(0)
    A = rng.random((batch, i), dtype=np.float32)
    B = rng.random((i, o), dtype=np.float32)
    C = np.empty((batch, o), dtype=np.float32)
    time.sleep(QUIET_SECONDS)
    best, deadline, count = np.inf, time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline or count < 20:
        start = time.perf_counter()
        np.matmul(A, B, out=C)
        best = min(best, time.perf_counter() - start)
        count += 1
    return 2 * batch * i * o / best / 1e9


def network(config, **options):
    return fastnn.Network(list(config.sizes), activation=config.activation, output=config.output,
                          loss=config.loss, seed=SEED, **options)


@functools.lru_cache(maxsize=None)
def initial_weights(config):
    """fastnn's initial [(W (I, O), b (O,))] for this config: every peer starts from them."""
    net = network(config)
    return [(W.copy(), b.copy()) for W, b in zip(net.weights, net.biases)]


def epoch_order(n):
    """The order in which fastnn's fit visits n rows in a new network's first
    epoch (training.Trainer.epoch: one stream per (seed, epoch)). The peers
    use it so that all train on the same batches; --check confirms it."""
    shuffle_seed, _ = np.random.SeedSequence([SEED, 0]).generate_state(2, dtype=np.uint64)
    return np.random.default_rng(shuffle_seed).permutation(n)


# ----------------------------------------------------------- fastnn, numpy

def fastnn_train(backend, **options):
    def run(config, data):
        net = network(config, backend=backend, **options)
        start = time.perf_counter()
        hist = net.fit(data.X, data.y, epochs=1, batch_size=config.batch, lr=config.lr)
        seconds = time.perf_counter() - start
        return Timed(len(data.X), seconds, hist["seconds"][0],
                     [(W.astype(np.float32), b.astype(np.float32))
                      for W, b in zip(net.weights, net.biases)])
    return run


def fastnn_infer(backend, **options):
    def run(config, data):
        net = network(config, backend=backend, **options)
        start = time.perf_counter()
        out = net.forward(data.X_test)
        return Timed(len(data.X_test), time.perf_counter() - start, output=out)
    return run


def fastnn_has_bfloat16():
    try:
        fastnn.Network([2, 2], dtype="bfloat16")
    except fastnn.FastnnError:
        return False
    return True


def fit_many_train(config, data):
    """fastnn.fit_many of two networks (issue 13's API); samples/s counts both."""
    nets = [network(config), network(config)]
    start = time.perf_counter()
    fastnn.fit_many(nets, data.X, data.y, epochs=1, batch_size=config.batch, lr=config.lr)
    return Timed(2 * len(data.X), time.perf_counter() - start)


# ---------------------------------------------------------------- nielsen

def textbook_train(config, data):
    sizes = config.sizes
    net = TextbookNetwork(sizes, [config.activation] * (len(sizes) - 2) + [config.output],
                          config.loss)
    X, Y = data.X[:N_TEXTBOOK], data.Y[:N_TEXTBOOK]   # per-sample Python: a slice will do
    start = time.perf_counter()
    net.epoch(X, Y, config.batch, config.lr, np.random.default_rng(0))
    return Timed(len(X), time.perf_counter() - start)


def textbook_infer(config, data):
    sizes = config.sizes
    net = TextbookNetwork(sizes, [config.activation] * (len(sizes) - 2) + [config.output],
                          config.loss)
    start = time.perf_counter()
    net.predict(data.X_test)
    return Timed(len(data.X_test), time.perf_counter() - start)


# ------------------------------------------------------------------ torch

def _chw_rows(shape):
    """Row order that takes an HWC-flattened (H, W, C) image to PyTorch's CHW flattening."""
    H, W, C = shape
    return np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1).ravel()


def torch_model(config):
    """torch.nn.Sequential of the config, from fastnn's initial weights
    (convolutions OIHW, the first dense layer's rows in CHW order)."""
    import torch

    p = plan(config)
    weights = iter(initial_weights(config))
    layers = []
    if p.image_shape:
        H, W, C = p.image_shape
        layers.append(torch.nn.Unflatten(1, (H, W, C)))
        layers.append(_Permute((0, 3, 1, 2)))                # NHWC to NCHW
    image = None                  # the image a Flatten flattened, until the next Dense
    for layer, shape, name in zip(p.layers, p.shapes, p.activations):
        if isinstance(layer, Dense):
            Wt, b = next(weights)
            if image is not None:
                Wt, image = Wt[_chw_rows(image)], None
            module = torch.nn.Linear(*Wt.shape)
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(Wt.T)))
                module.bias.copy_(torch.from_numpy(b))
        elif isinstance(layer, Conv2D):
            Wt, b = next(weights)
            module = torch.nn.Conv2d(shape[2], layer.filters, layer.kernel, layer.stride)
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(
                    Wt.transpose(3, 2, 0, 1))))
                module.bias.copy_(torch.from_numpy(b))
        elif isinstance(layer, MaxPool2D):
            module = torch.nn.MaxPool2d(layer.size, layer.stride)
        else:
            module = torch.nn.Flatten()
            image = shape
        layers.append(module)
        if isinstance(layer, (Dense, Conv2D)):
            if name == "sigmoid":
                layers.append(torch.nn.Sigmoid())
            elif name == "relu":
                layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)   # softmax output: cross_entropy takes the logits


def _Permute(dims):
    import torch

    class Permute(torch.nn.Module):
        def forward(self, x):
            return x.permute(*dims)
    return Permute()


def torch_weights(model, config):
    """The model's [(W, b)] in fastnn's layouts (HWIO, rows in HWC order)."""
    import torch

    p = plan(config)
    flattened = []                # per parametric layer: the image flattened before it
    for i, layer in enumerate(p.layers):
        if layer.parametric:
            before = p.layers[i - 1] if i else None
            flattened.append(p.shapes[i - 1] if isinstance(before, Flatten) else None)
    out = []
    modules = [m for m in model if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    for m, image in zip(modules, flattened):
        W = m.weight.detach().float().numpy()
        b = m.bias.detach().float().numpy().copy()
        if isinstance(m, torch.nn.Conv2d):
            W = W.transpose(2, 3, 1, 0)
        else:
            W = W.T
            if image is not None:
                W = W[np.argsort(_chw_rows(image))]
        out.append((np.ascontiguousarray(W), b))
    return out


def torch_train(bf16):
    def run(config, data):
        import contextlib

        import torch
        import torch.nn.functional as F

        model = torch_model(config)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        Xt, yt, Yt = torch.from_numpy(data.X), torch.from_numpy(data.y), torch.from_numpy(data.Y)
        autocast = (functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16) if bf16
                    else contextlib.nullcontext)
        batch = config.batch
        start = time.perf_counter()
        order = torch.from_numpy(epoch_order(len(data.X)))
        for k in range(0, len(order), batch):
            idx = order[k:k + batch]
            with autocast():
                a = model(Xt[idx])
                if config.loss == "mse":
                    cost = 0.5 * F.mse_loss(a, Yt[idx], reduction="sum") / len(idx)
                else:
                    cost = F.cross_entropy(a, yt[idx])
            opt.zero_grad()
            cost.backward()
            opt.step()
        seconds = time.perf_counter() - start
        return Timed(len(data.X), seconds, weights=torch_weights(model, config))
    return run


def torch_infer(config, data):
    import torch

    model = torch_model(config)
    start = time.perf_counter()
    with torch.no_grad():
        a = model(torch.from_numpy(data.X_test))
        out = torch.softmax(a, dim=1) if config.output == "softmax" else a
        out = out.numpy()
    return Timed(len(data.X_test), time.perf_counter() - start, output=out)


# -------------------------------------------------------------------- JAX
# Compilation happens once per shape, ahead of the timed calls (lower +
# compile), as a JAX user's first epoch pays it and later ones do not. The
# gather of each batch's rows runs inside the compiled code, from the whole
# training set held as one device array, as fastnn gathers them in its kernel.

def _jax_model(config):
    import jax
    import jax.numpy as jnp

    def forward(params, x):
        for l, (W, b) in enumerate(params):
            x = x @ W + b
            name = config.activation if l < len(params) - 1 else config.output
            if name == "sigmoid":
                x = jax.nn.sigmoid(x)
            elif name == "relu":
                x = jax.nn.relu(x)
        return x                          # softmax output: the logits

    def cost(params, x, y):
        a = forward(params, x)
        if config.loss == "mse":
            return 0.5 * jnp.sum((a - y) ** 2) / x.shape[0]
        return -jnp.sum(y * jax.nn.log_softmax(a)) / x.shape[0]

    def step(params, X, Y, idx):
        grads = jax.grad(cost)(params, X[idx], Y[idx])
        return jax.tree.map(lambda p, g: p - config.lr * g, params, grads)

    def epoch(params, X, Y, batches):
        params, _ = jax.lax.scan(lambda p, idx: (step(p, X, Y, idx), None), params, batches)
        return params

    def predict(params, x):
        a = forward(params, x)
        return jax.nn.softmax(a) if config.output == "softmax" else a

    return step, epoch, predict


@functools.lru_cache(maxsize=None)
def _jax_device_data(data):
    import jax.numpy as jnp

    return jnp.asarray(data.X), jnp.asarray(data.Y)


def _jax_params(config):
    import jax.numpy as jnp

    return [(jnp.asarray(W), jnp.asarray(b)) for W, b in initial_weights(config)]


@functools.lru_cache(maxsize=None)
def _jax_compiled(config, data, kind):
    """{'step': {batch rows: compiled}, 'epoch': compiled or None} for this config and data."""
    import jax
    import jax.numpy as jnp

    step, epoch, predict = _jax_model(config)
    params = _jax_params(config)
    if kind == "predict":
        return jax.jit(predict).lower(params, data.X_test).compile()
    X, Y = _jax_device_data(data)
    n, batch = len(data.X), config.batch
    sizes = {batch, n % batch} - {0} if kind == "step" else {n % batch} - {0}
    compiled = {"step": {m: jax.jit(step, donate_argnums=0).lower(
        params, X, Y, jnp.zeros(m, jnp.int32)).compile() for m in sizes}}
    if kind == "scan":
        batches = jnp.zeros((n // batch, batch), jnp.int32)
        compiled["epoch"] = jax.jit(epoch, donate_argnums=0).lower(params, X, Y, batches).compile()
    return compiled


def jax_train(kind):
    def run(config, data):
        import jax

        compiled = _jax_compiled(config, data, kind)
        X, Y = _jax_device_data(data)
        params = _jax_params(config)
        n, batch = len(data.X), config.batch
        full = n // batch * batch
        start = time.perf_counter()
        order = epoch_order(n).astype(np.int32)
        if kind == "scan":
            params = compiled["epoch"](params, X, Y, order[:full].reshape(-1, batch))
        else:
            step = compiled["step"][batch]
            for k in range(0, full, batch):
                params = step(params, X, Y, order[k:k + batch])
        if full < n:
            params = compiled["step"][n - full](params, X, Y, order[full:])
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        return Timed(n, seconds, weights=[(np.asarray(W), np.asarray(b)) for W, b in params])
    return run


def jax_infer(config, data):
    compiled = _jax_compiled(config, data, "predict")
    params = _jax_params(config)
    start = time.perf_counter()
    out = np.asarray(compiled(params, data.X_test))
    return Timed(len(data.X_test), time.perf_counter() - start, output=out)


# ------------------------------------------------------------ onnxruntime

@functools.lru_cache(maxsize=None)
def _onnx_session(config, threads):
    import onnxruntime as ort

    from fastnn.export import onnx_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = onnx_model(network(config)).SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnxruntime_infer(config, data):
    session = _onnx_session(config, get_num_threads())
    start = time.perf_counter()
    out = session.run(["output"], {"input": data.X_test})[0]
    return Timed(len(data.X_test), time.perf_counter() - start, output=out)


# ------------------------------------------------------------------ impls

def installed(name):
    return machine.installed(name) is not None


# name: (train function or None, inference function or None, available?)
IMPLS = {
    "fastnn": (fastnn_train("cython"), fastnn_infer("cython"), lambda: True),
    "fastnn-bf16": (fastnn_train("cython", dtype="bfloat16"),
                    fastnn_infer("cython", dtype="bfloat16"), fastnn_has_bfloat16),
    "fit_many": (fit_many_train, None, lambda: hasattr(fastnn, "fit_many")),
    "numpy": (fastnn_train("numpy"), fastnn_infer("numpy"), lambda: True),
    "nielsen": (textbook_train, textbook_infer, lambda: True),
    "torch": (torch_train(bf16=False), torch_infer, lambda: installed("torch")),
    "torch-bf16": (torch_train(bf16=True), None, lambda: installed("torch")),
    "jax-step": (jax_train("step"), None, lambda: installed("jax")),
    "jax-scan": (jax_train("scan"), None, lambda: installed("jax")),
    "jax": (None, jax_infer, lambda: installed("jax")),
    "onnxruntime": (None, onnxruntime_infer,
                    lambda: installed("onnxruntime") and installed("onnx")),
}
# features of fastnn that later work adds: their rows appear once built
NOT_BUILT = {"fastnn-bf16": "Network(dtype='bfloat16')", "fit_many": "fastnn.fit_many"}
DEFAULT_IMPLS = [name for name in IMPLS if name != "jax"]


def chosen_impls(names):
    """The implementations to run: the names given (or all), those not
    available dropped with a note, and JAX's inference with either JAX variant."""
    names = list(dict.fromkeys(names or DEFAULT_IMPLS))
    if {"jax-step", "jax-scan"} & set(names) and "jax" not in names:
        names.append("jax")
    runnable = []
    for name in names:
        if IMPLS[name][2]():
            runnable.append(name)
        else:
            print(f"# {name}: " + (f"not built ({NOT_BUILT[name]})" if name in NOT_BUILT
                                   else "not installed"))
    return runnable


def runnable_impls(impls, config, inference, explicit):
    """The implementations that take this config: the dense-only peers skip
    convolutional nets, and the NumPy reference runs them only when asked for."""
    fn = 1 if inference else 0
    return [i for i in impls if IMPLS[i][fn] is not None
            and (not is_conv(config) or i in CONV_IMPLS and (i != "numpy" or explicit))]


# ------------------------------------------------------------------- run

# NumPy, SciPy, PyTorch, XLA and onnxruntime each keep a thread pool whose
# workers spin for a while after a call; timing one library while another's
# workers still spin on the other core would measure their fight, not the
# library.
QUIET_SECONDS = 0.5


def make_data(n_train=N_TRAIN):
    rng = np.random.default_rng(0)
    X = rng.random((N_TRAIN, 784), dtype=np.float32)
    y = rng.integers(0, 10, N_TRAIN)
    X_test = rng.random((N_TEST, 784), dtype=np.float32)
    X, y = X[:n_train], y[:n_train]
    return Data(X, y, np.eye(10, dtype=np.float32)[y], X_test)


def limit_threads(threads):
    """Every library to `threads` threads; returns the count. XLA sizes its
    pool by the CPUs the process may run on, so a count below the CPUs
    available narrows the process's affinity to the first `threads` of them
    (for every implementation alike), before any XLA client exists."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads:
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])
        set_num_threads(threads)
    threads = get_num_threads()
    if installed("torch"):
        import torch

        torch.set_num_threads(threads)
    return threads


def check(configs, impls):
    """Train each implementation for one epoch of N_CHECK rows and compare its
    weights with fastnn's, relative to how far fastnn's weights moved; compare
    inference outputs. Returns the number of mismatches."""
    data = make_data(N_CHECK)
    bad = 0
    for name in configs:
        inference = name.startswith("infer-")
        config = CONFIGS[name.removeprefix("infer-")]
        results = {}
        for impl in runnable_impls(impls, config, inference, explicit=True):
            if impl != "nielsen" and impl != "fit_many":
                results[impl] = IMPLS[impl][1 if inference else 0](config, data)
        ref = results["fastnn"]
        for impl, r in results.items():
            if impl == "fastnn":
                continue
            if inference:
                diff = float(np.max(np.abs(r.output - ref.output)))
                scale, what = 1.0, "max |output difference|"
            else:
                init = initial_weights(config)
                diff = max(float(np.max(np.abs(np.concatenate([W.ravel(), b])
                                               - np.concatenate([W0.ravel(), b0]))))
                           for (W, b), (W0, b0) in zip(r.weights, ref.weights))
                scale = max(float(np.max(np.abs(np.concatenate([W.ravel(), b])
                                                - np.concatenate([W0.ravel(), b0]))))
                            for (W, b), (W0, b0) in zip(ref.weights, init))
                what = "max |weight difference| / max |fastnn's weight change|"
            # bf16 rounds every product to 8 bits: after a few hundred steps its
            # weights drift by a tenth of the change; a wrong recipe (rate, loss
            # scale) would drift by the whole change
            tolerance = 0.3 if "bf16" in impl else 1e-3
            ok = diff / scale <= tolerance
            bad += not ok
            print(f"check {name:<11} {impl:<12} {what}: {diff / scale:.2e} "
                  f"(tolerance {tolerance:g}) {'ok' if ok else 'MISMATCH'}")
    return bad


def round_trip(threads):
    """The round trip between the threads of a fastnn team of `threads` now,
    in ns (_core.team_round_trip), or None (one thread, or no compiled core).
    On a VM it says where the hypervisor has put the vCPUs: on the 2-vCPU
    AMD EPYC of benchmarks/README.md about 50 ns on one die and 200 ns or
    more across two, a placement that changed minute by minute, and with it
    every team's speed."""
    if threads < 2:
        return None
    try:
        from fastnn import _core
        return _core.team_round_trip(threads)
    except (ImportError, AttributeError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append",
                        choices=sorted(CONFIGS) + [f"infer-{c}" for c in INFERENCE])
    parser.add_argument("--impl", action="append", choices=list(IMPLS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads for every implementation "
                        "[default: all cores]")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--rows", type=int, default=N_TRAIN,
                        help=f"training rows (a quick smoke run; default {N_TRAIN:,})")
    parser.add_argument("--check", action="store_true",
                        help="compare every implementation's weights after one epoch of "
                        f"{N_CHECK} rows with fastnn's instead of timing")
    args = parser.parse_args(argv)
    load_start, date = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M")
    configs = args.config or list(CONFIGS) + [f"infer-{c}" for c in INFERENCE]
    threads = limit_threads(args.threads)
    impls = chosen_impls(["fastnn"] + (args.impl or []) if args.impl else None)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

    lines, alarms, record = machine.report(with_torch=bool({"torch", "torch-bf16"} & set(impls)))
    print("\n".join(f"# {line}" for line in lines))
    machine.shout(alarms)
    if args.check:
        bad = check(configs, impls)
        sys.exit(1 if bad else 0)
    peaks = peak.measure(threads)
    fp32 = peak.fp32_peak(peaks)
    if fp32:
        print(f"# FMA peak ({fp32[0]}): {fp32[1]:.0f} GFLOP/s per core, {fp32[2]:.0f} on "
              f"{threads} thread(s)" + "".join(f"; {k} {v[1]:.0f}" for k, v in peaks.items()
                                               if k != fp32[0]))
    print(f"# load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"(others' work on these cores makes every figure noisy)")
    print(f"# {threads} thread(s), numpy {np.__version__}, fastnn {fastnn.__version__}, "
          f"median of {args.repeat}; fastnn timed around fit (wall), 'epoch clk' by its "
          f"epoch clock, 'outside' = share of the wall time outside the epoch clock")

    data = make_data(args.rows)
    print(f"{'config':<11} {'impl':<11} {'samples/s':>10} {'min':>10} {'max':>10} "
          f"{'fastnn is':>9} {'GFLOP/s':>7} {'of GEMM':>7} {'of peak':>7} "
          f"{'epoch clk':>10} {'outside':>7}")
    results = []
    for name in configs:
        inference = name.startswith("infer-")
        config = CONFIGS[name.removeprefix("infer-")]
        runnable = runnable_impls(impls, config, inference, explicit=bool(args.impl))
        ceiling = gemm_ceiling(config, config.batch)
        flops = flops_per_sample(config, training=not inference)
        # compile (JAX) and build sessions (onnxruntime) before timing
        for impl in runnable:
            if impl.startswith("jax"):
                _jax_compiled(config, data, "predict" if inference else impl.split("-")[1])
            elif impl == "onnxruntime":
                _onnx_session(config, threads)
        # round-robin over implementations, so that drift in the machine's
        # speed (it is shared) falls on all of them alike
        rows = {impl: [] for impl in runnable}
        trips = [round_trip(threads)]
        for _ in range(args.repeat):
            for impl in runnable:
                time.sleep(QUIET_SECONDS)
                rows[impl].append(IMPLS[impl][1 if inference else 0](config, data))
        # once more after the rounds: one second of GEMMs can fall on a busy moment
        ceiling = max(ceiling, gemm_ceiling(config, config.batch))
        trips.append(round_trip(threads))
        fast = statistics.median(r.n / r.seconds for r in rows["fastnn"])
        for impl, timings in rows.items():
            rates = [r.n / r.seconds for r in timings]
            median = statistics.median(rates)
            gflops = median * flops / 1e9
            ratio = fast / median if impl != "fastnn" else None
            of_peak = gflops / fp32[2] if fp32 else None
            epoch_rates = [r.n / r.epoch_seconds for r in timings if r.epoch_seconds]
            epoch_rate = statistics.median(epoch_rates) if epoch_rates else None
            outside = (statistics.median(1 - r.epoch_seconds / r.seconds for r in timings)
                       if epoch_rates else None)
            print(f"{name:<11} {impl:<11} {median:>10,.0f} {min(rates):>10,.0f} "
                  f"{max(rates):>10,.0f} {(f'{ratio:.2f}x' if ratio else ''):>9} "
                  f"{gflops:>7.1f} {gflops / ceiling:>7.0%} "
                  f"{(f'{of_peak:.0%}' if of_peak else ''):>7} "
                  f"{(f'{epoch_rate:,.0f}' if epoch_rate else ''):>10} "
                  f"{(f'{outside:.1%}' if outside is not None else ''):>7}", flush=True)
            results.append({"config": name, "impl": impl, "samples_per_s": rates,
                            "median": median, "fastnn_ratio": ratio, "gflops": gflops,
                            "gemm_ceiling_gflops": ceiling, "fraction_of_ceiling": gflops / ceiling,
                            "fraction_of_peak": of_peak,
                            "epoch_clock_samples_per_s": epoch_rates or None,
                            "outside_epoch_fraction": outside, "threads": threads,
                            "round_trip_ns": trips})
        placed = ("; threads' round trip before and after: "
                  + " / ".join(f"{t:.0f} ns" for t in trips) if None not in trips else "")
        print(f"{'':<11} {'ceiling':<11} {'':>10} {'':>10} {'':>10} {'':>9} {ceiling:>7.1f}"
              + placed, flush=True)
    machine.shout(alarms)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "format": 2, "machine": record, "peak": peaks, "threads": threads,
            "repeat": args.repeat, "rows_trained": args.rows,
            "date": date, "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(), "rows": results}, indent=2))


if __name__ == "__main__":
    main()
