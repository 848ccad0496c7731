"""fastnn._openmp: libgomp's spin count, set only while the core loads it."""
import os
import subprocess
import sys

import pytest

from fastnn import _openmp


def test_the_spin_count_is_set_for_the_load_only():
    env, seen = {"PATH": "/bin"}, {}
    mine = _openmp.load_core(env, loaded=lambda: False,
                             load=lambda: seen.update(env), platform="linux")
    assert mine and seen["GOMP_SPINCOUNT"] == _openmp.SPIN_COUNT
    assert env == {"PATH": "/bin"}


@pytest.mark.parametrize("env, loaded, platform", [
    ({"GOMP_SPINCOUNT": "infinite"}, False, "linux"),     # the user's
    ({"OMP_WAIT_POLICY": "active"}, False, "linux"),       # the user's
    ({}, True, "linux"),                                   # libgomp read its own already
    ({}, False, "darwin"),                                 # not libgomp
])
def test_the_spin_count_is_left_alone(env, loaded, platform):
    before, seen = dict(env), {}
    mine = _openmp.load_core(env, loaded=lambda: loaded,
                             load=lambda: seen.update(env), platform=platform)
    assert not mine and seen == before and env == before


def test_the_environment_is_put_back_when_the_load_fails():
    env = {}

    def load():
        raise ImportError("no compiled core")

    assert _openmp.load_core(env, loaded=lambda: False, load=load, platform="linux")
    assert env == {}


def test_importing_fastnn_leaves_the_environment_as_it_was():
    code = ("import os, sys, fastnn; "
            "print(os.environ.get('GOMP_SPINCOUNT'), 'fastnn._core' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["None", "True"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "7"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["7", "True"]
