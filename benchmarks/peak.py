"""The CPU's arithmetic peak, measured: compile peak.c and run it.

    python benchmarks/peak.py [--threads N]

peak.c runs independent FMA chains (AVX-512 and AVX2 float32, and AVX512_BF16
dot products where the CPU has them) on one core and on N threads at once,
best of 10 runs of about 0.05 s each (on a shared machine a short quiet
moment is enough); a few seconds in all. run.py calls `measure` for its "of
peak" column: what a configuration achieves as a fraction of what the cores
can do at all.
"""
import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "peak.c"


def measure(threads):
    """{kernel: (GFLOP/s on one core, GFLOP/s on `threads` threads)} for the
    kernels the CPU supports, or None without a C compiler (or off x86)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "peak"
        build = subprocess.run([cc, "-O2", "-pthread", str(SOURCE), "-o", str(exe)],
                               capture_output=True, text=True)
        if build.returncode != 0:
            return None
        out = subprocess.run([str(exe), str(threads)], capture_output=True, text=True,
                             check=True).stdout
    peaks = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and not line.startswith("#"):
            peaks[fields[0]] = (float(fields[1]), float(fields[2]))
    return peaks


def fp32_peak(peaks):
    """(kernel, GFLOP/s per core, GFLOP/s on all threads) of the widest float32 FMA, or None."""
    for name in ("fp32-avx512", "fp32-avx2"):
        if peaks and name in peaks:
            return (name, *peaks[name])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    peaks = measure(args.threads)
    if peaks is None:
        raise SystemExit("no C compiler (cc) to build peak.c")
    print(f"{'kernel':<14} {'1 core':>9} {f'{args.threads} threads':>11}   GFLOP/s")
    for name, (one, all_) in peaks.items():
        print(f"{name:<14} {one:>9.1f} {all_:>11.1f}")


if __name__ == "__main__":
    main()
