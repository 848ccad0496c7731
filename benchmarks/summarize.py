"""Summarise several runs of benchmarks/run.py: medians over runs, against issue 13's targets.

    for i in 1 2 3; do env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/run.py --repeat 5 --json run$i.json; done
    python benchmarks/summarize.py run1.json run2.json run3.json

Prints Markdown: the machine and kernels of the runs (and any warning a run
printed: figures measured under a warning are not what users get), each
configuration's samples/second per run, then the targets. A ratio is taken
within a run (both sides measured in the same rounds), then the median over
runs reported, so that a slow moment of the shared machine in one run cannot
decide it. A target whose fastnn side is a feature not built yet is listed
as "not built", not left out.
"""
import json
import statistics
import sys
from collections import defaultdict

# (what, config, fastnn's implementation, the peer, target ratio)
TARGETS = [
    ("nielsen30, one network", "nielsen30", "fastnn", "jax-scan", 3.0),
    ("nielsen100", "nielsen100", "fastnn", "jax-scan", 2.5),
    ("mid", "mid", "fastnn", "jax-scan", 1.5),
    ("wide, float32", "wide", "fastnn", "jax-scan", 1.1),
    ("wide, bfloat16", "wide", "fastnn-bf16", "torch-bf16", 1.4),
    ("inference mid", "infer-mid", "fastnn", "onnxruntime", 1.3),
    ("inference wide", "infer-wide", "fastnn", "onnxruntime", 1.2),
    ("`fit_many` of two nielsen30 networks", "nielsen30", "fit_many", "fastnn", 1.7),
]
NOT_BUILT = {"fastnn-bf16": "`Network(dtype='bfloat16')`", "fit_many": "`fastnn.fit_many`"}
# targets that are not throughput ratios of this suite
ELSEWHERE = [
    ("modern MNIST recipe (`[784,512,256,10]`, Adam, dropout 0.2, 20 epochs)",
     "≥ 98.3 % in float32 and in bfloat16", "a training run on MNIST, not this suite"),
    ("98 % test accuracy", "in under 10 s of training", "a training run on MNIST, not this suite"),
]
COLUMNS = ["fastnn", "fastnn-bf16", "fit_many", "jax-scan", "jax-step", "jax", "torch",
           "torch-bf16", "onnxruntime", "numpy", "nielsen"]


def load(path):
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, list):             # format 1: rows only
        data = {"rows": data}
    return data


def fmt(rate):
    return f"{rate / 1000:,.1f}k" if rate >= 10000 else f"{rate:,.0f}"


def main(paths):
    if not paths:
        raise SystemExit(__doc__.split("\n\n")[1])
    runs = [load(p) for p in paths]
    first = runs[0]
    if "machine" in first:
        m = first["machine"]
        print(f"Machine: {m['description']}; Python {m['python']}.")
        for label, k in m["kernels"].items():
            detail = k.get("architecture") or k.get("mkl") or ""
            extra = f", oneDNN {k['onednn']}" if k.get("onednn") else ""
            print(f"- {label} {k.get('version', '')}{': ' + detail if detail else ''}{extra}")
        if first.get("peak"):
            print("- FMA peak (peak.c), GFLOP/s per core / on all threads: " + "; ".join(
                f"{name} {one:.0f} / {all_:.0f}" for name, (one, all_) in first["peak"].items()))
        if m.get("environment"):
            print("- environment: " + " ".join(f"{k}={v}" for k, v in m["environment"].items()))
    for path, run in zip(paths, runs):
        load_avg = run.get("loadavg_start")
        note = f"load average at start {load_avg[0]:.2f}" if load_avg else ""
        trips = [t for row in run["rows"] for t in row.get("round_trip_ns") or () if t]
        if trips:
            note += (f"; team threads' round trip {min(trips):.0f}-{max(trips):.0f} ns "
                     f"(run.round_trip)")
        print(f"- {path}: {run.get('date', '?')}, {run.get('threads', '?')} thread(s), "
              f"median of {run.get('repeat', '?')} rounds; {note}")
        for w in run.get("machine", {}).get("warnings", []):
            print(f"  - **warning**: {w}")

    rates = defaultdict(list)          # (config, impl) -> [per-run median]
    per_run = []                       # [{(config, impl): median}]
    extra = defaultdict(list)          # (config, key) -> per-run values for fastnn
    for run in runs:
        medians = {}
        for row in run["rows"]:
            key = (row["config"], row["impl"])
            medians[key] = row["median"]
            rates[key].append(row["median"])
            if row["impl"] == "fastnn":
                for name in ("fraction_of_ceiling", "fraction_of_peak", "outside_epoch_fraction"):
                    if row.get(name) is not None:
                        extra[row["config"], name].append(row[name])
        per_run.append(medians)
    configs = list(dict.fromkeys(c for c, _ in rates))
    impls = [i for i in COLUMNS if any(i == j for _, j in rates)]
    impls += [i for i in dict.fromkeys(j for _, j in rates) if i not in impls]

    print(f"\nSamples/second, each run's median (runs separated by /; "
          f"{len(runs)} run(s)):\n")
    print("| config | " + " | ".join(impls) + " |")
    print("|---" * (len(impls) + 1) + "|")
    for config in configs:
        cells = [" / ".join(fmt(v) for v in rates[config, i]) if rates[config, i] else ""
                 for i in impls]
        print(f"| {config} | " + " | ".join(cells) + " |")

    print("\nMedians over the runs; fastnn's ratio to each, taken within each run:\n")
    print("| config | fastnn | " + " | ".join(f"vs {i}" for i in impls if i != "fastnn")
          + " | of GEMM ceiling | of FMA peak | fit outside the epoch |")
    print("|---" * (len(impls) + 4) + "|")
    for config in configs:
        if not rates[config, "fastnn"]:
            continue
        cells = [fmt(statistics.median(rates[config, "fastnn"]))]
        for impl in impls:
            if impl == "fastnn":
                continue
            ratios = [r[config, "fastnn"] / r[config, impl] for r in per_run
                      if (config, impl) in r and (config, "fastnn") in r]
            cells.append(f"{statistics.median(ratios):.2f}×" if ratios else "")
        for name in ("fraction_of_ceiling", "fraction_of_peak", "outside_epoch_fraction"):
            values = extra[config, name]
            digits = 1 if name == "outside_epoch_fraction" else 0
            cells.append(f"{statistics.median(values):.{digits}%}" if values else "")
        print(f"| {config} | " + " | ".join(cells) + " |")

    print("\nIssue 13's targets (ratios within a run, median over runs):\n")
    print("| what | target | measured | runs | status |")
    print("|---|---|---|---|---|")
    for what, config, ours, peer, goal in TARGETS:
        ratios = [r[config, ours] / r[config, peer] for r in per_run
                  if (config, ours) in r and (config, peer) in r]
        target = f"≥ {goal:g}× {'one network' if peer == 'fastnn' else peer}"
        if ratios:
            ratio = statistics.median(ratios)
            status = "met" if ratio >= goal else "**missed**"
            runs_text = " / ".join(f"{r:.2f}" for r in ratios)
            print(f"| {what} | {target} | {ratio:.2f}× | {runs_text} | {status} |")
        elif ours in NOT_BUILT and not rates[config, ours]:
            print(f"| {what} | {target} | | | not built ({NOT_BUILT[ours]}) |")
        else:
            missing = ours if not rates[config, ours] else peer
            print(f"| {what} | {target} | | | not measured ({missing} not in these runs) |")
    for what, target, where in ELSEWHERE:
        print(f"| {what} | {target} | | | measured by {where} |")


if __name__ == "__main__":
    main(sys.argv[1:])
