"""A/B of the small-batch path against the BLAS path, in one process.

    python benchmarks/small_batches.py 784,30,10 --batch 10 --threads 2 --rounds 3

Each round trains one epoch of 20,000 random MNIST-shaped rows with
``fastnn._core.set_small_rows(0)`` (every product through BLAS) and with the
default limit (smallgemm.h's kernels and train_units_impl), in turn, so a
slow moment of a shared machine falls on both; prints the median, min and
max samples/s of each. Run it through ../shared/tools/quiet-bench. The
figures in benchmarks/README.md ("Small batches") are its output.
"""
import argparse
import time

import numpy as np

import fastnn
from fastnn import _core, blas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", help="layer sizes, e.g. 784,30,10")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--activation", default="sigmoid")
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    blas.set_num_threads(args.threads)
    default = _core.get_small_rows()
    settings = {"BLAS": 0, "small-batch": max(default, args.batch)}
    rng = np.random.default_rng(0)
    X = rng.random((args.rows, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], args.rows)
    rates = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, rows in settings.items():
            _core.set_small_rows(rows)
            net = fastnn.Network(sizes, seed=0, activation=args.activation)
            net.fit(X[:2000], y[:2000], epochs=1, batch_size=args.batch, lr=0.1)  # warm up
            time.sleep(0.3)     # let other libraries' BLAS threads stop spinning
            start = time.perf_counter()
            net.fit(X, y, epochs=1, batch_size=args.batch, lr=0.1)
            rates[name].append(args.rows / (time.perf_counter() - start))
    _core.set_small_rows(default)
    for name, r in rates.items():
        print(f"{name:12s} median {np.median(r):10,.0f} samples/s  (min {min(r):,.0f}, "
              f"max {max(r):,.0f})")


if __name__ == "__main__":
    main()
