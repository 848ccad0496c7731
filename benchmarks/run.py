"""Time training and inference of fastnn against other implementations, in one run.

    python benchmarks/run.py                         # every config, every implementation
    python benchmarks/run.py --config nielsen30 --impl fastnn --impl numpy
    python benchmarks/run.py --repeat 5 --json results.json

Each implementation trains one epoch of the same random MNIST-shaped data
(60,000 x 784 float32 in [0, 1), 10 classes, seeded) with the same recipe and
the same number of threads, `--repeat` times; the inference rows time
`forward` on 10,000 such images. The table shows samples/second (median,
min, max), fastnn's median over each implementation's (the ratio), the
achieved GFLOP/s and its fraction of the GEMM ceiling: the best of many
float32 A @ B products of the largest layer's shape (the training batch by
its weights), measured in the same run. FLOPs per training sample are 2 x (forward + weight gradients + input
gradients of every layer but the first) multiply-adds; per inference
sample, 2 x the forward ones.

Implementations: fastnn (compiled kernels), numpy (fastnn's NumPy reference
backend: the same maths vectorised over the mini-batch), nielsen (the
textbook per-sample loop of Nielsen's network.py, on a 10,000-sample slice;
dense configurations only) and torch (torch.nn.Sequential +
torch.optim.SGD, when installed).

The convolutional configurations (conv*) are Nielsen's chapter-6 nets on
28 x 28 x 1 images: 5 x 5 valid convolutions, 2 x 2 max-pooling, FC100, a
softmax output with cross-entropy. For them a convolution counts
OH*OW*kh*kw*C*F multiply-adds, and the GEMM ceiling is the largest GEMM of
the batch (the first convolution's im2col product for the whole batch).
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastnn  # noqa: E402
from fastnn.blas import get_num_threads, set_num_threads  # noqa: E402
from fastnn.layers import Conv2D, Dense, MaxPool2D  # noqa: E402
from fastnn.plan import Plan  # noqa: E402
from nielsen import TextbookNetwork  # noqa: E402

# name: (sizes or layers, hidden activation, output activation, loss, batch size, learning rate)
CONFIGS = {
    "nielsen30": ([784, 30, 10], "sigmoid", "sigmoid", "mse", 10, 3.0),
    "nielsen100": ([784, 100, 10], "sigmoid", "sigmoid", "mse", 10, 3.0),
    "mid": ([784, 256, 128, 10], "relu", "softmax", "cross_entropy", 64, 0.1),
    "wide": ([784, 1024, 1024, 10], "relu", "softmax", "cross_entropy", 256, 0.1),
    "conv20-sigmoid": ([(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Dense(100),
                        Dense(10, activation="softmax")], "sigmoid", "softmax", "cross_entropy",
                       10, 0.1),
    "conv2-relu": ([(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), MaxPool2D(2),
                    Dense(100), Dense(10)], "relu", "softmax", "cross_entropy", 10, 0.03),
    "conv2-relu-64": ([(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), MaxPool2D(2),
                       Dense(100), Dense(10)], "relu", "softmax", "cross_entropy", 64, 0.03),
}
INFERENCE = ["mid", "wide", "conv2-relu"]
N_TRAIN, N_TEST, N_TEXTBOOK = 60000, 10000, 10000


def _gemms(config):
    """(rows per sample, I, O) of each layer's forward GEMM: a dense layer is
    one row of I x O, a convolution OH*OW rows of kh*kw*C x F."""
    spec, act, out, *_ = config
    plan = Plan.parse(spec, act, out)
    gemms = []
    for layer, shape in zip(plan.layers, plan.shapes):
        if isinstance(layer, Dense):
            gemms.append((1, shape[0], layer.units))
        elif isinstance(layer, Conv2D):
            OH, OW, F = layer.output_shape(shape)
            gemms.append((OH * OW, layer.kernel[0] * layer.kernel[1] * shape[2], F))
    return gemms


def is_conv(config):
    return not all(isinstance(s, int) for s in config[0])


def flops_per_sample(config, training=True):
    macs = [r * i * o for r, i, o in _gemms(config)]
    if not training:
        return 2 * sum(macs)
    return 2 * (2 * sum(macs) + sum(macs[1:]))


def gemm_ceiling(config, batch, seconds=1.0):
    """Best float32 GFLOP/s of (batch*rows x I) @ (I x O) for the largest layer."""
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


# ---------------------------------------------------------------- impls

def fastnn_train(backend):
    def run(config, X, y):
        sizes, act, out, loss, batch, lr = config
        net = fastnn.Network(sizes, activation=act, output=out, loss=loss, seed=0,
                             backend=backend)
        hist = net.fit(X, y, epochs=1, batch_size=batch, lr=lr)
        return len(X), hist["seconds"][0]
    return run


def fastnn_infer(backend):
    def run(config, X):
        sizes, act, out, loss, *_ = config
        net = fastnn.Network(sizes, activation=act, output=out, loss=loss, seed=0,
                             backend=backend)
        start = time.perf_counter()
        net.forward(X)
        return len(X), time.perf_counter() - start
    return run


def textbook_train(config, X, y):
    sizes, act, out, loss, batch, lr = config
    net = TextbookNetwork(sizes, [act] * (len(sizes) - 2) + [out], loss)
    X, Y = X[:N_TEXTBOOK], np.eye(sizes[-1], dtype=np.float32)[y[:N_TEXTBOOK]]
    start = time.perf_counter()
    net.epoch(X, Y, batch, lr, np.random.default_rng(0))
    return len(X), time.perf_counter() - start


def textbook_infer(config, X):
    sizes, act, out, loss, *_ = config
    net = TextbookNetwork(sizes, [act] * (len(sizes) - 2) + [out], loss)
    start = time.perf_counter()
    net.predict(X)
    return len(X), time.perf_counter() - start


def torch_model(config):
    import torch

    spec, act, out, *_ = config
    plan = Plan.parse(spec, act, out)
    layers = []
    if plan.image_shape:
        H, W, C = plan.image_shape
        layers.append(torch.nn.Unflatten(1, (C, H, W)))      # C = 1 here: HWC is CHW
    for layer, shape, name in zip(plan.layers, plan.shapes, plan.activations):
        if isinstance(layer, Dense):
            layers.append(torch.nn.Linear(shape[0], layer.units))
        elif isinstance(layer, Conv2D):
            layers.append(torch.nn.Conv2d(shape[2], layer.filters, layer.kernel, layer.stride))
        elif isinstance(layer, MaxPool2D):
            layers.append(torch.nn.MaxPool2d(layer.size, layer.stride))
        else:
            layers.append(torch.nn.Flatten())
        if name == "sigmoid":
            layers.append(torch.nn.Sigmoid())
        elif name == "relu":
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)   # softmax output: cross_entropy takes the logits


def torch_train(config, X, y):
    import torch
    import torch.nn.functional as F

    spec, act, out, loss, batch, lr = config
    model = torch_model(config)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    Yt = F.one_hot(yt, Plan.parse(spec, act, out).n_outputs).float()
    start = time.perf_counter()
    order = torch.randperm(len(X))
    for k in range(0, len(X), batch):
        idx = order[k:k + batch]
        a = model(Xt[idx])
        if loss == "mse":
            cost = 0.5 * F.mse_loss(a, Yt[idx], reduction="sum") / len(idx)
        else:
            cost = F.cross_entropy(a, yt[idx])
        opt.zero_grad()
        cost.backward()
        opt.step()
    return len(X), time.perf_counter() - start


def torch_infer(config, X):
    import torch

    model = torch_model(config)
    Xt = torch.from_numpy(X)
    start = time.perf_counter()
    with torch.no_grad():
        torch.softmax(model(Xt), dim=1)
    return len(X), time.perf_counter() - start


TRAIN = {"fastnn": fastnn_train("cython"), "numpy": fastnn_train("numpy"),
         "nielsen": textbook_train, "torch": torch_train}
INFER = {"fastnn": fastnn_infer("cython"), "numpy": fastnn_infer("numpy"),
         "nielsen": textbook_infer, "torch": torch_infer}


def have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ run

# NumPy, SciPy and PyTorch each keep a BLAS/OpenMP thread pool whose workers
# spin for a while after a call; timing one library while another's workers
# still spin on the other core would measure their fight, not the library.
QUIET_SECONDS = 0.5


def measure(fn, repeat, *args):
    rates = []
    for _ in range(repeat):
        time.sleep(QUIET_SECONDS)
        n, seconds = fn(*args)
        rates.append(n / seconds)
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append",
                        choices=sorted(CONFIGS) + [f"infer-{c}" for c in INFERENCE])
    parser.add_argument("--impl", action="append", choices=sorted(TRAIN))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads for every implementation "
                        "[default: all cores]")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    configs = args.config or list(CONFIGS) + [f"infer-{c}" for c in INFERENCE]
    impls = [i for i in (args.impl or list(TRAIN)) if i != "torch" or have_torch()]
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    if "torch" in impls:
        import torch

        torch.set_num_threads(threads)

    rng = np.random.default_rng(0)
    X = rng.random((N_TRAIN, 784), dtype=np.float32)
    y = rng.integers(0, 10, N_TRAIN)
    X_test = rng.random((N_TEST, 784), dtype=np.float32)

    print(f"# {platform.processor() or platform.machine()}, {threads} thread(s), numpy "
          f"{np.__version__}, fastnn {fastnn.__version__}, median of {args.repeat}")
    print(f"{'config':<12} {'impl':<8} {'samples/s':>11} {'min':>11} {'max':>11} "
          f"{'fastnn is':>9} {'GFLOP/s':>8} {'of GEMM':>8}")
    results = []
    for name in configs:
        inference = name.startswith("infer-")
        config = CONFIGS[name.removeprefix("infer-")]
        batch = config[4]
        ceiling = gemm_ceiling(config, batch)
        flops = flops_per_sample(config, training=not inference)
        # Nielsen's loop is dense only; the NumPy reference's convolutions
        # are slow, so they run only when asked for by --impl
        mine = [i for i in impls if not is_conv(config) or i == "fastnn" or i == "torch"
                or (i == "numpy" and args.impl)]
        # round-robin over implementations, so that drift in the machine's
        # speed (it is shared) falls on all of them alike
        rows = {impl: [] for impl in mine}
        for _ in range(args.repeat):
            for impl in mine:
                if inference:
                    rows[impl] += measure(INFER[impl], 1, config, X_test)
                else:
                    rows[impl] += measure(TRAIN[impl], 1, config, X, y)
        fast = statistics.median(rows["fastnn"]) if "fastnn" in rows else None
        for impl, rates in rows.items():
            median = statistics.median(rates)
            gflops = median * flops / 1e9
            ratio = fast / median if fast and impl != "fastnn" else None
            print(f"{name:<12} {impl:<8} {median:>11,.0f} {min(rates):>11,.0f} {max(rates):>11,.0f} "
                  f"{(f'{ratio:.2f}x' if ratio else ''):>9} {gflops:>8.1f} "
                  f"{gflops / ceiling:>8.0%}")
            results.append({"config": name, "impl": impl, "samples_per_s": rates,
                            "median": median, "fastnn_ratio": ratio, "gflops": gflops,
                            "gemm_ceiling_gflops": ceiling, "fraction_of_ceiling": gflops / ceiling,
                            "threads": threads})
        print(f"{'':<12} {'ceiling':<8} {'':>11} {'':>11} {'':>11} {'':>9} {ceiling:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
