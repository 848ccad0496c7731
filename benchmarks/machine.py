"""What the benchmark runs on: the CPU, the kernels each library chose, and
whether those are the best this CPU allows.

    python benchmarks/machine.py        # print the report and any warnings

The CPU comes from /proc/cpuinfo (model, vendor/family/model numbers, flags).
OpenBLAS picks its kernels at load time from the CPU (its "core type"),
unless OPENBLAS_CORETYPE forces one: threadpoolctl reports the choice as
``architecture`` for SciPy's OpenBLAS (the one fastnn's kernels call) and
NumPy's. PyTorch links MKL and oneDNN statically, invisible to threadpoolctl:
a child process with MKL_VERBOSE and ONEDNN_VERBOSE set prints the
instruction set each chose. A kernel below the best one for the CPU makes a
warning: figures measured so are not what users get.
"""
import os
import platform
import re
import subprocess
import sys

# OpenBLAS core types for x86-64, by the widest float instructions they use
# (OpenBLAS's driver/others/dynamic.c picks the highest the CPU supports;
# SapphireRapids adds AMX, Cooperlake AVX512_BF16 to SkylakeX's AVX-512).
# Cooperlake's float32 and float64 kernels are SkylakeX's (it adds only
# sbgemm), so a SkylakeX OpenBLAS on an AVX512_BF16 CPU (AMD's Zen 4 and 5,
# which OpenBLAS 0.3.30 runs so) times the same SGEMM: no warning for it.
OPENBLAS_RANK = {"SapphireRapids": 4, "Cooperlake": 2, "SkylakeX": 2, "Haswell": 1, "Zen": 1}
AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}

# (vendor, family) -> [(models, name)]: enough to name the CPUs this suite
# has run on, not a catalogue. Under a hypervisor the model name is often
# generic ("Intel Xeon Processor"), the numbers are not.
MICROARCHITECTURES = {
    ("GenuineIntel", 6): [({85}, "Skylake-SP / Cascade Lake / Cooper Lake"),
                          ({106, 108}, "Ice Lake-SP"), ({143}, "Sapphire Rapids"),
                          ({207}, "Emerald Rapids"), ({173, 174}, "Granite Rapids")],
    ("AuthenticAMD", 23): [(range(0, 256), "Zen / Zen 2")],
    ("AuthenticAMD", 25): [(set(range(0x10, 0x20)) | set(range(0x60, 0x80))
                            | set(range(0xa0, 0xb0)), "Zen 4"), (range(0, 256), "Zen 3")],
    ("AuthenticAMD", 26): [(range(0, 256), "Zen 5")],
}


def cpu():
    """{'model', 'vendor', 'family', 'model_number', 'microarchitecture', 'flags', 'cores'}."""
    info = {"model": platform.processor() or platform.machine(), "vendor": "", "family": None,
            "model_number": None, "microarchitecture": "", "flags": set(),
            "cores": len(os.sched_getaffinity(0))}
    try:
        text = open("/proc/cpuinfo").read().split("\n\n")[0]
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["model"] = fields.get("model name", info["model"])
    info["vendor"] = fields.get("vendor_id", "")
    info["flags"] = set(fields.get("flags", "").split())
    if fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
        info["family"], info["model_number"] = int(fields["cpu family"]), int(fields["model"])
        for models, name in MICROARCHITECTURES.get((info["vendor"], info["family"]), []):
            if info["model_number"] in models:
                info["microarchitecture"] = name
                break
    return info


def describe_cpu(c):
    """One line: 'Intel(R) Xeon(R) ... (Ice Lake-SP; GenuineIntel family 6 model 106),
    2 cores, under a hypervisor; AVX2 AVX-512 AVX512_VNNI'."""
    where = f"{c['vendor']} family {c['family']} model {c['model_number']}"
    arch = f"{c['microarchitecture']}; {where}" if c["microarchitecture"] else where
    isa = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"),
                                   ("AVX512_VNNI", "avx512_vnni"),
                                   ("AVX512_BF16", "avx512_bf16"), ("AMX", "amx_bf16"))
           if flag in c["flags"]]
    vm = ", under a hypervisor" if "hypervisor" in c["flags"] else ""
    return f"{c['model']} ({arch}), {c['cores']} cores{vm}; {' '.join(isa) or 'no AVX'}"


def best_openblas_kernel(c):
    """The OpenBLAS core type a current OpenBLAS picks for this CPU, or None off x86."""
    flags = c["flags"]
    if not flags or "avx2" not in flags:
        return None
    if "amx_bf16" in flags and c["vendor"] == "GenuineIntel":
        return "SapphireRapids"
    if "avx512_bf16" in flags and "avx512f" in flags:
        return "Cooperlake"
    if AVX512 <= flags:
        return "SkylakeX"
    return "Zen" if c["vendor"] == "AuthenticAMD" else "Haswell"


def blas_libraries():
    """[(label, info)] for the BLAS libraries loaded: SciPy's OpenBLAS (which
    fastnn's kernels call) first, then NumPy's, then any other."""
    import numpy  # noqa: F401
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_info

    found = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        path = lib.get("filepath", "")
        parts = set(re.split(r"[/\\]", path))
        label = ("SciPy's OpenBLAS (fastnn's kernels)" if parts & {"scipy", "scipy.libs"}
                 else "NumPy's OpenBLAS" if parts & {"numpy", "numpy.libs"}
                 else lib.get("prefix", "BLAS"))
        found.append((label, lib))
    return sorted(found, key=lambda item: not item[0].startswith("SciPy"))


def torch_kernels(timeout=120):
    """{'mkl': ..., 'onednn': ..., 'capability': ...} from a child process that
    runs one float32 GEMM (MKL) and one bf16 autocast Linear (oneDNN) with
    MKL_VERBOSE=1 and ONEDNN_VERBOSE=1, or None without torch."""
    code = ("import torch\n"
            "a = torch.ones(64, 64)\n"
            "a @ a\n"
            "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
            "    torch.nn.Linear(64, 64)(a)\n"
            "print('CAPABILITY', torch.backends.cpu.get_cpu_capability())\n")
    env = {**os.environ, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    text = out.stdout + out.stderr
    result = {"mkl": "", "onednn": "", "capability": ""}
    m = re.search(r"^MKL_VERBOSE (oneMKL|Intel\(R\) MKL) (\S+).*?\(Intel\(R\) ([^)]+)\)(.*?), Lnx",
                  text, re.M)
    if m:
        extra = "".join(f" + {name}" for name in ("DL Boost", "AMX", "BF16")
                        if name in m.group(4))
        result["mkl"] = f"MKL {m.group(2)}: {m.group(3)}{extra}"
    m = re.search(r"onednn_verbose,(?:v1,)?info,cpu,isa:(.*)", text)
    if m:
        result["onednn"] = m.group(1).strip()
    m = re.search(r"^CAPABILITY (\S+)", text, re.M)
    if m:
        result["capability"] = m.group(1)
    return result


def installed(name):
    """The installed version of a distribution, or None (without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def report(with_torch=True):
    """(lines, warnings, record): what runs where, what falls short, and both as JSON-ready data."""
    c = cpu()
    lines = [f"CPU: {describe_cpu(c)}"]
    warnings = []
    record = {"cpu": {**c, "flags": sorted(c["flags"] & {
        "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
        "avx512_bf16", "amx_bf16", "hypervisor"})}, "description": describe_cpu(c),
        "python": platform.python_version(), "kernels": {}}
    overrides = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                            "OPENBLAS_VERBOSE", "MKL_ENABLE_INSTRUCTIONS",
                                            "XLA_FLAGS")
                 if k in os.environ}
    record["environment"] = overrides
    if overrides:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in overrides.items()))
    best = best_openblas_kernel(c)
    for label, lib in blas_libraries():
        arch = lib.get("architecture") or "?"
        lines.append(f"{label}: {lib.get('internal_api')} {lib.get('version')}, kernel {arch}, "
                     f"{lib.get('num_threads')} threads")
        record["kernels"][label] = {"library": lib.get("internal_api"),
                                    "version": lib.get("version"), "architecture": arch,
                                    "filepath": lib.get("filepath")}
        if best and lib.get("internal_api") == "openblas" and \
                OPENBLAS_RANK.get(arch, 0) < OPENBLAS_RANK[best]:
            why = ("OPENBLAS_CORETYPE={} forces it".format(os.environ["OPENBLAS_CORETYPE"])
                   if "OPENBLAS_CORETYPE" in os.environ
                   else "this OpenBLAS does not know the CPU")
            warnings.append(f"{label} runs the {arch} kernels, but this CPU takes {best} "
                            f"({why}). Figures measured so are not what users get: run "
                            f"env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
                            f"python benchmarks/run.py")
    if "OPENBLAS_L2_SIZE" in os.environ and not any("OPENBLAS_CORETYPE" in w for w in warnings):
        warnings.append(f"OPENBLAS_L2_SIZE={os.environ['OPENBLAS_L2_SIZE']} overrides "
                        f"OpenBLAS's cache blocking: unset it for timing runs")
    if with_torch:
        torch = installed("torch")
        kernels = torch_kernels() if torch else None
        if kernels:
            lines.append(f"PyTorch {torch}: {kernels['mkl'] or 'MKL ?'}; oneDNN "
                         f"{kernels['onednn'] or '?'}; ATen {kernels['capability'] or '?'}")
            record["kernels"]["PyTorch"] = {"version": torch, **kernels}
            if "avx512f" in c["flags"] and kernels["mkl"] and "512" not in kernels["mkl"]:
                warnings.append(f"PyTorch's MKL runs {kernels['mkl'].split(': ')[-1]} on this "
                                f"AVX-512 CPU (MKL keeps non-Intel CPUs on AVX2): its float32 "
                                f"GEMMs are capped there, as they are for users of this CPU")
        if torch and "avx512_bf16" not in c["flags"]:
            warnings.append("this CPU has no AVX512_BF16: bfloat16 rows (torch-bf16) run "
                            "emulated bf16 kernels and say nothing of bf16 hardware")
    for name, text in (("jax", "JAX {}: XLA compiles for the host CPU; one thread per CPU of "
                                f"the affinity mask ({len(os.sched_getaffinity(0))})"),
                       ("onnxruntime", "onnxruntime {}: MLAS, kernels chosen at run time")):
        version = installed(name)
        if version:
            lines.append(text.format(version))
            record["kernels"][name] = {"version": version}
    record["warnings"] = warnings
    return lines, warnings, record


def shout(warnings, stream=sys.stderr):
    """Print each warning so that it cannot be missed in a log."""
    for w in warnings:
        print(f"!!! WARNING: {w}", file=stream, flush=True)


if __name__ == "__main__":
    lines, warnings, _ = report()
    print("\n".join(lines))
    shout(warnings, sys.stdout)
