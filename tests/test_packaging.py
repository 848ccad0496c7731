"""What `pip install .` puts in site-packages (slow: builds a wheel)."""
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_installs_cli_inside_fastnn_and_ships_no_sources(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q",
                    "-w", str(tmp_path)], check=True, timeout=900)
    wheel, = tmp_path.glob("fastnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert "cli" not in top and not any(n.endswith(".pyx") or n.endswith(".c") for n in names)
    assert "fastnn/cli/__init__.py" in names
    assert any(n.startswith("fastnn/_core.") and n.endswith(".so") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fastnn = fastnn.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
