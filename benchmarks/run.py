"""Time one training epoch of fastnn against other implementations, in one run.

    python benchmarks/run.py                       # every config, every implementation
    python benchmarks/run.py --config nielsen30 --impl fastnn --impl numpy
    python benchmarks/run.py --data mnist          # the real MNIST instead of random data

Each implementation trains one epoch of the same data with the same
recipe, `--repeat` times; the table shows samples/second (median, min,
max) and the ratio of fastnn's median to each other implementation's.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastnn  # noqa: E402

# name: (sizes, hidden activation, output activation, loss, batch size, learning rate)
CONFIGS = {
    "nielsen30": ([784, 30, 10], "sigmoid", "sigmoid", "mse", 10, 3.0),
    "nielsen100": ([784, 100, 10], "sigmoid", "sigmoid", "mse", 10, 3.0),
    "mid": ([784, 256, 128, 10], "relu", "softmax", "cross_entropy", 64, 0.1),
    "wide": ([784, 1024, 1024, 10], "relu", "softmax", "cross_entropy", 256, 0.1),
}


def make_data(source, seed=0):
    if source == "mnist":
        (X, y), _ = fastnn.datasets.load_mnist()
        return X[:50000].astype(np.float32) / np.float32(255), y[:50000]
    rng = np.random.default_rng(seed)
    return rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000)


def train_fastnn(backend):
    def run(config, X, y):
        sizes, act, out, loss, batch, lr = config
        net = fastnn.Network(sizes, activation=act, output=out, loss=loss, seed=0,
                             backend=backend)
        start = time.perf_counter()
        net.fit(X, y, epochs=1, batch_size=batch, lr=lr)
        return len(X), time.perf_counter() - start
    return run


IMPLS = {"fastnn": train_fastnn("cython"), "numpy": train_fastnn("numpy")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS))
    parser.add_argument("--impl", action="append", choices=sorted(IMPLS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", choices=["random", "mnist"], default="random")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    configs = args.config or list(CONFIGS)
    impls = args.impl or list(IMPLS)
    X, y = make_data(args.data)

    results = []
    print(f"{'config':<11} {'impl':<8} {'samples/s median':>17} {'min':>10} {'max':>10} "
          f"{'fastnn is':>10}")
    for name in configs:
        rates = {}
        for impl in impls:
            samples = []
            for _ in range(args.repeat):
                n, seconds = IMPLS[impl](CONFIGS[name], X, y)
                samples.append(n / seconds)
            rates[impl] = samples
        base = statistics.median(rates["fastnn"]) if "fastnn" in rates else None
        for impl, samples in rates.items():
            med = statistics.median(samples)
            ratio = f"{base / med:.2f}x" if base and impl != "fastnn" else ""
            print(f"{name:<11} {impl:<8} {med:>17,.0f} {min(samples):>10,.0f} "
                  f"{max(samples):>10,.0f} {ratio:>10}")
            results.append({"config": name, "impl": impl, "samples_per_s": samples,
                            "median": med})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
