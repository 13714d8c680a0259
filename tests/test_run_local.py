"""`maspo run` on the local profile: bad input stops before Ray (the end-to-end run is tests/test_sweep_e2e.py)."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.local import tasks

MAPSO = [sys.executable, "-m", "orchestrator.cli"]


def run_cli(args, cwd, timeout=900):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(MAPSO + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "-a", "ppo2"], "unknown algorithm 'ppo2'"),
        (["run", "-a", "maspo", "--alpha", "3"], "alpha: Input should be less than or equal to 2"),
        (["run", "-a", "dac", "-s", "eps_low=1.5"], "eps_low: Input should be less than 1"),
        (["run", "--model-path", "/nonexistent/model"], "is not a model directory"),
        (["run", "--profile", "a100"], "maspo run uses the local profile"),
    ],
)
def test_bad_input_stops_before_ray_with_one_line_and_exit_2(tmp_path, args, message):
    before = set(glob.glob("/tmp/maspo-ray-*"))
    out = run_cli(args, tmp_path, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "runs").exists()
    assert set(glob.glob("/tmp/maspo-ray-*")) == before  # no Ray was started
