"""Where Network.fit's time goes outside the training kernel (issue 13, item 5).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fit_overhead.py
    ... python benchmarks/fit_overhead.py --config mid --epochs 3 --repeat 5
    ... python benchmarks/fit_overhead.py --profile     # cProfile of fit's calling thread

Trains the benchmark's data (run.py's configurations) with fit and times,
inside that very call, each step fit takes: the checks of X and y, the
Trainer's setup, each epoch's own work before and after the kernel (seeds
and shuffle, weight and optimizer snapshots, metrics), the worker thread
that runs the kernel, and the kernel itself (fastnn's `train_epoch`, timed
in the worker). Nothing in fastnn changes: the functions are wrapped by
name for the measurement, so a step that fastnn renames or removes shows as
"n/a" and its time moves to "fit, the rest". The shuffle and snapshot
copies are then timed alone at the same sizes, to split the epoch's own work.

Figures are medians over --repeat fits: of each step's milliseconds, and of
its share of the wall clock around each fit (so that the shares add up).
"""
import argparse
import cProfile
import functools
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CONFIGS, SEED, limit_threads, make_data, network  # noqa: E402

from fastnn import _validation  # noqa: E402
from fastnn import network as network_module  # noqa: E402
from fastnn import training  # noqa: E402

# what to time inside fit: (owner, attribute), fastnn's names today
STEPS = [
    (network_module, "check_X"),              # dtype, shape; starts the check for NaN
    (_validation.BackgroundChecks, "__exit__"),   # waits for that check's pass over X
    (network_module.Network, "kernel_targets"),   # y's checks (labels: no one-hot array)
    (training, "sample_weights"),
    (training, "split_validation"),
    (training, "check_options"),
    (training.Trainer, "__init__"),           # buffers, workspace
    (training.Trainer, "run"),                # all epochs
    (training.Trainer, "epoch"),              # one epoch, before/after the kernel included
    (training, "run_epoch"),                  # worker thread + kernel
]


class Clock:
    """Accumulated seconds per name, from wrapped callables."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.patched = []

    def wrap(self, owner, attribute, name):
        original = getattr(owner, attribute, None)
        if original is None:
            return False

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        setattr(owner, attribute, timed)
        self.patched.append((owner, attribute, original))
        return True

    def restore(self):
        for owner, attribute, original in reversed(self.patched):
            setattr(owner, attribute, original)
        self.patched.clear()


class TimedKernels:
    """The network's kernel module, with train_epoch timed (it runs in the worker thread)."""

    def __init__(self, kernels, clock):
        self._kernels, self._clock = kernels, clock

    def __getattr__(self, name):
        value = getattr(self._kernels, name)
        if name != "train_epoch":
            return value

        def train_epoch(**args):
            start = time.perf_counter()
            try:
                return value(**args)
            finally:
                self._clock.seconds["kernel"] += time.perf_counter() - start
        return train_epoch


def one_fit(config, data, epochs, dtype="float32"):
    """{step: seconds} of one fit of a new network, and its epoch clocks."""
    clock = Clock()
    found = {attribute: clock.wrap(owner, attribute, attribute) for owner, attribute in STEPS}
    try:
        net = network(config, dtype=dtype)
        net._kernels = TimedKernels(net._kernels, clock)
        start = time.perf_counter()
        hist = net.fit(data.X, data.y, epochs=epochs, batch_size=config.batch, lr=config.lr)
        clock.seconds["fit"] = time.perf_counter() - start
    finally:
        clock.restore()
    clock.seconds["epoch clocks"] = sum(hist["seconds"])
    return dict(clock.seconds), found


def alone(fn, repeat=20):
    """Median seconds of fn()."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="nielsen30", choices=sorted(CONFIGS))
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per fit [default: 1, as run.py times]")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--rows", type=int,
                        help="training rows [default: run.py's; run.py --rows 20000 times 20,000]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                        help="the networks' dtype (bfloat16: run.py's fastnn-bf16 rows)")
    parser.add_argument("--profile", action="store_true",
                        help="also print cProfile's top functions of one fit (calling thread)")
    args = parser.parse_args(argv)
    threads = limit_threads(args.threads)
    config = CONFIGS[args.config]
    data = make_data() if args.rows is None else make_data(args.rows)
    n = len(data.X)

    one_fit(config, data, 1)                            # warm caches and thread pools
    runs = []
    for _ in range(args.repeat):
        time.sleep(0.5)
        seconds, found = one_fit(config, data, args.epochs, args.dtype)
        runs.append(seconds)
    per_call = ["check_X", "__exit__", "kernel_targets", "sample_weights", "split_validation",
                "check_options", "__init__"]
    for r in runs:
        # derived per fit, then the median: medians of parts need not add up
        r["thread"] = r.get("run_epoch", 0.0) - r["kernel"]
        r["epoch work"] = r.get("epoch", 0.0) - r.get("run_epoch", 0.0)
        r["between epochs"] = r.get("run", 0.0) - r.get("epoch", 0.0)
        r["options"] = sum(r.get(k, 0.0) for k in ("sample_weights", "split_validation",
                                                  "check_options"))
        r["rest"] = r["fit"] - sum(r.get(k, 0.0) for k in per_call) - r.get("run", 0.0)
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    fit, e = med["fit"], args.epochs

    # the epoch's own work, alone at the same sizes
    net = network(config, dtype=args.dtype)
    params = net._params
    snapshot = np.empty_like(params)
    state = np.zeros((1, len(params)), dtype=params.dtype)   # plain SGD: one state row
    shuffle = alone(lambda: np.random.default_rng(
        np.random.SeedSequence([SEED, 0]).generate_state(2, dtype=np.uint64)[0]).permutation(n))
    copies = alone(lambda: (snapshot.__setitem__(Ellipsis, params), state.copy()))

    def row(label, seconds, per, share=None):
        if share is None and seconds is not None:
            share = seconds / fit
        share = f"{share:6.1%}" if seconds is not None else "   n/a"
        ms = f"{seconds * 1e3:9.2f}" if seconds is not None else "      n/a"
        print(f"  {label:<50} {ms} ms {share}   {per}")

    def part(label, name, per, *needs):
        """A step timed inside the fits: its median time, and the median of its
        share of each fit (shares of the same fit add up; medians of times need not)."""
        if not all(found.get(k, True) for k in needs or (name,)):
            row(label, None, per)
            return
        row(label, med[name], per, statistics.median(r.get(name, 0.0) / r["fit"] for r in runs))

    print(f"# {args.config} {list(config.sizes)} batch {config.batch}, {n:,} rows, "
          f"{e} epoch(s) per fit, {threads} thread(s), {args.dtype}, median of {args.repeat} fits")
    print(f"# fit: {fit * 1e3:.1f} ms = {e * n / fit:,.0f} samples/s as a user waits; "
          f"by the epochs' own clocks {e * n / med['epoch clocks']:,.0f}; kernel alone "
          f"{e * n / med['kernel']:,.0f}")
    print(f"  {'where':<50} {'time':>12} {'of fit':>6}")
    part("kernel (train_epoch, in the worker thread)", "kernel", f"{e} epochs")
    part("worker thread: start, hand-over, join", "thread", f"{e} epochs", "run_epoch")
    part("each epoch's own work before/after the kernel", "epoch work", f"{e} epochs",
         "epoch", "run_epoch")
    row("    of which shuffle (SeedSequence + permutation)", shuffle * e, "timed alone")
    row("    of which weight + optimizer snapshots", copies * e, "timed alone")
    part("Trainer.run between epochs (history, schedule)", "between epochs", f"{e} epochs",
         "run", "epoch")
    part("check_X (dtype, shape; the NaN check starts)", "check_X", "once per fit")
    part("the wait for the NaN check's pass over X", "__exit__", "once per fit")
    part("targets (y's checks; labels stay labels)", "kernel_targets", "once per fit")
    part("sample weights, validation split, options", "options", "once per fit")
    part("Trainer setup (buffers, workspace)", "__init__", "once per fit")
    part("fit, the rest", "rest", "once per fit")

    if args.profile:
        net = network(config, dtype=args.dtype)
        profiler = cProfile.Profile()
        profiler.enable()
        net.fit(data.X, data.y, epochs=args.epochs, batch_size=config.batch, lr=config.lr)
        profiler.disable()
        print("\n# cProfile of fit, calling thread only (the kernel runs in the worker: "
              "its time shows as waiting)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
