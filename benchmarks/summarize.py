"""Summarise several runs of benchmarks/run.py: medians over runs, against the targets.

    for i in 1 2 3; do python benchmarks/run.py --json run$i.json; done
    python benchmarks/summarize.py run1.json run2.json run3.json

For each configuration and implementation it takes each run's median
samples/second, then the median over the runs; ratios and the fraction of
the GEMM ceiling are computed per run and their median reported, so a slow
moment of the (shared) machine in one run cannot decide a ratio.
"""
import json
import statistics
import sys
from collections import defaultdict

# config: (vs numpy, vs torch, of GEMM ceiling); None where the issue sets no target
TARGETS = {
    "nielsen30": (3.0, 15.0, None),
    "nielsen100": (2.5, 10.0, None),
    "mid": (1.5, 2.0, 0.60),
    "wide": (1.15, 1.15, 0.80),
    "infer-mid": (1.2, 1.0, None),
    "infer-wide": (1.2, 1.0, None),
}


def main(paths):
    rates = defaultdict(list)            # (config, impl) -> per-run medians
    ratios = defaultdict(list)           # (config, impl) -> per-run fastnn ratios
    fractions = defaultdict(list)        # config -> fastnn's per-run fraction of ceiling
    for path in paths:
        with open(path) as f:
            for row in json.load(f):
                key = (row["config"], row["impl"])
                rates[key].append(row["median"])
                if row["fastnn_ratio"]:
                    ratios[key].append(row["fastnn_ratio"])
                if row["impl"] == "fastnn":
                    fractions[row["config"]].append(row["fraction_of_ceiling"])
    configs = list(dict.fromkeys(c for c, _ in rates))
    print(f"median over {len(paths)} runs")
    print(f"{'config':<12} {'impl':<8} {'samples/s':>11} {'fastnn is':>10} {'target':>7}")
    for config in configs:
        target = TARGETS.get(config, (None, None, None))
        for (c, impl), values in rates.items():
            if c != config:
                continue
            ratio = statistics.median(ratios[c, impl]) if ratios[c, impl] else None
            goal = {"numpy": target[0], "torch": target[1]}.get(impl)
            mark = "" if goal is None or ratio is None else ("met" if ratio >= goal else "MISSED")
            text = f"{ratio:.2f}x" if ratio else ""
            print(f"{config:<12} {impl:<8} {statistics.median(values):>11,.0f} {text:>10} "
                  f"{(f'>={goal:g}x ' + mark) if goal else '':>7}")
        if fractions[config]:
            frac = statistics.median(fractions[config])
            goal = target[2]
            mark = "" if goal is None else (f"  target >={goal:.0%} " + ("met" if frac >= goal else "MISSED"))
            print(f"{config:<12} {'fastnn at':<8} {frac:>11.0%} of the GEMM ceiling{mark}")


if __name__ == "__main__":
    main(sys.argv[1:])
