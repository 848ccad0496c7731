"""Build fastnn: the Cython kernels in src_c/ become the extension fastnn._core.

The CLI sources live in cli/ and are installed as the subpackage fastnn.cli
(never as a top-level ``cli`` module).

Set FASTNN_DEBUG=1 to compile with bounds checks and without optimisation.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTNN_DEBUG", "") not in ("", "0")
# OpenMP lets the threads of a team share each batch; FASTNN_NO_OPENMP=1 builds
# without it (every epoch then runs on one thread plus the BLAS's own).
OPENMP = [] if os.environ.get("FASTNN_NO_OPENMP", "") not in ("", "0") else ["-fopenmp"]

extensions = [
    Extension(
        "fastnn._core",
        ["src_c/_core.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # -fno-math-errno and -fno-trapping-math change no result; they let GCC
        # vectorise loops with sqrt, comparisons and selects. -ffp-contract=off
        # keeps a*b + c two roundings on CPUs with FMA too, so the paths
        # compiled for AVX2 / AVX-512 (target_clones) give the baseline's results.
        extra_compile_args=(["-O0", "-g"] if DEBUG else
                            ["-O3", "-fno-math-errno", "-fno-trapping-math",
                             "-ffp-contract=off"]) + OPENMP,
        extra_link_args=OPENMP,
    )
]

setup(
    packages=["fastnn", "fastnn.cli", "fastnn.export"],
    package_dir={"fastnn": "fastnn", "fastnn.cli": "cli"},
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": False,
            "initializedcheck": DEBUG,
            "cdivision": True,
        },
    ),
    # The .pyx/.pxd sources are for building, not for the installed package.
    exclude_package_data={"fastnn": ["*.pyx", "*.pxd", "*.c"]},
)
