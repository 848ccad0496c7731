"""The sdist and the wheel, as a user of PyPI gets them (slow: builds both).

One build serves every check: the sdist from the repository, then the
wheel from that sdist by the documented command (tools/build_wheel.sh:
pip wheel + auditwheel repair), then the repaired wheel installed in a new
virtualenv. CI (.ci/run) builds the same two files first, installs the
wheel in a virtualenv of its own with its dependencies from PyPI, and
passes their directory in FASTNN_DIST so that the extension is not
compiled twice.
"""
import email
import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, needs

elftools = needs("elftools.elf.elffile")


def run(*args, **kwargs):
    """subprocess.run(args), which must succeed: a failure shows the command's stderr."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          errors="backslashreplace", **kwargs)
    assert proc.returncode == 0, (args, proc.returncode, proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist path, repaired wheel path): .ci/run's, or built here."""
    if os.environ.get("FASTNN_DIST"):
        dist = Path(os.environ["FASTNN_DIST"])
        sdist, = dist.glob("fastnn-*.tar.gz")
        wheel, = (dist / "wheelhouse").glob("fastnn-*.whl")
        return sdist, wheel
    tmp = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--sdist", "-o", tmp, REPO, timeout=900)
    sdist, = tmp.glob("fastnn-*.tar.gz")
    run("bash", REPO / "tools" / "build_wheel.sh", sdist, timeout=1800,
        env={**os.environ, "WHEELHOUSE": str(tmp / "wheelhouse")})
    wheel, = (tmp / "wheelhouse").glob("fastnn-*.whl")
    return sdist, wheel


@pytest.mark.slow
def test_sdist_ships_what_building_and_testing_need(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(root + "/") for n in tar.getnames()}
        pkg_info = email.message_from_bytes(tar.extractfile(f"{root}/PKG-INFO").read())
    repo_tests = {f"tests/{p.name}" for p in (REPO / "tests").glob("*.py")}
    needed = {"src_c/_core.pyx", "setup.py", "pyproject.toml", "README.md", "LICENSE",
              "fastnn/py.typed", "cli/__init__.py", "data/mnist/train-images-idx3-ubyte.gz",
              "data/mnist/t10k-labels-idx1-ubyte.gz", "tests/conftest.py",
              "tools/build_wheel.sh"}
    assert needed | repo_tests <= names, sorted((needed | repo_tests) - names)
    # generated or built files stay out: the build makes them from the sources
    assert not [n for n in names if n.endswith((".c", ".so", ".o", ".pyc"))]
    assert pkg_info["License-Expression"] == "BSD-3-Clause"


@pytest.mark.slow
def test_wheel_is_repaired_stripped_and_ships_no_sources(built):
    _, wheel = built
    assert "-manylinux_" in wheel.name, wheel.name
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    top = {n.split("/")[0] for n in names}
    assert "cli" not in top and not any(n.endswith((".pyx", ".pxd", ".c")) for n in names)
    assert "fastnn/cli/__init__.py" in names and "fastnn/py.typed" in names
    modules = ["__init__", "_common", "onnx", "c", "numpy"]
    assert {f"fastnn/export/{m}.py" for m in modules} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fastnn = fastnn.cli:main" in archive.read(entry_points).decode()
    # the OpenMP runtime travels with the wheel, under a name of its own
    gomp = [n for n in names if n.startswith("fastnn.libs/libgomp")]
    assert len(gomp) == 1, names
    core = next(n for n in names if n.startswith("fastnn/_core.") and n.endswith(".so"))
    elf = elftools.ELFFile(archive.open(core))
    sections = {s.name for s in elf.iter_sections()}
    assert not {s for s in sections if s.startswith(".debug")} and ".symtab" not in sections
    needed = [tag.needed for tag in elf.get_section_by_name(".dynamic").iter_tags()
              if tag.entry.d_tag == "DT_NEEDED"]
    assert any(n.startswith("libgomp-") for n in needed), needed
    assert "libgomp.so.1" not in needed
    metadata = email.message_from_bytes(archive.read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))))
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Programming Language :: Cython" in metadata.get_all("Classifier")


@pytest.mark.slow
def test_repaired_wheel_installs_and_runs_in_a_new_venv(built, tmp_path):
    _, wheel = built
    venv = tmp_path / "venv"
    # NumPy, SciPy and the rest from the environment these tests run in (a
    # virtualenv's own site-packages, not its base interpreter's: hence no
    # --system-site-packages), through a .pth file; fastnn only from the
    # wheel, whose site-packages comes first
    run(sys.executable, "-m", "venv", venv, timeout=300)
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (Path(purelib.stdout.strip()) / "tests-environment.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    # without PYTHONPATH: a source tree on it would make pip skip the wheel
    # as "already satisfied"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, env=clean, timeout=300)
    # more rows than one chunk: forward's OpenMP team (the vendored libgomp) runs
    script = ("import numpy as np, fastnn, fastnn._core, fastnn.blas as b\n"
              "b.set_num_threads(2)\n"
              "net = fastnn.Network([4, 8, 3], seed=0)\n"
              "X = np.random.default_rng(0).random((2000, 4))\n"
              "net.fit(X, np.arange(2000) % 3, epochs=1)\n"
              # the NumPy export copies fastnn._reference's source: it is installed
              "from fastnn.export import export\n"
              "export(net, 'model.py', 'numpy')\n"
              "import model\n"
              "assert np.allclose(model.forward(X), net.forward(X), atol=1e-6)\n"
              "print(fastnn._core.__file__, net.forward(X).shape)\n")
    out = run(python, "-c", script, cwd=tmp_path, env=clean, timeout=300).stdout
    path, shape = out.split(" ", 1)
    assert path.startswith(str(venv)), path
    assert shape.strip() == "(2000, 3)"
