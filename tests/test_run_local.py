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


def test_checking_a_users_input_imports_neither_torch_nor_verl():
    """Specs, names and hyperparameters are checked without torch, verl or Ray (each costs seconds of start-up on
    the critical path of every command, and of every mistake's one-line answer)."""
    code = """
import sys
from orchestrator import cli, jobs, local_trial, render, store, tune_runner
from orchestrator.cli import algorithms, cluster, common, dashboard, data, experiments, run, sync
from orchestrator.config.experiment import load_spec
from orchestrator.config.trial import trial_config
trial = trial_config("maspo", {"alpha": 0.3, "beta": 0.03}, seed=1)
spec = load_spec("sweeps/alpha-beta.yaml")
heavy = sorted(m for m in ("torch", "verl", "ray", "transformers", "wandb") if m in sys.modules)
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1], timeout=120)


def test_rendering_a_trials_verl_command_imports_neither_torch_nor_verl(tmp_path):
    """The CLI and every trial controller render the verl overrides of a trial; importing verl there cost ~5 s of CPU
    per trial, on the command's start-up and (in sweeps) competing with the job's own start."""
    code = f"""
import sys
from pathlib import Path
from orchestrator.render import LocalAssets, render_local_trial
from orchestrator.config.trial import trial_config
out = Path({str(tmp_path)!r})
assets = LocalAssets(out / "model", out / "train.parquet", [out / "val.parquet"])
for name, values in (("maspo", {{"alpha": 0.3}}), ("bapo", {{}}), ("grpo", {{}})):
    job = render_local_trial(trial_config(name, values, seed=0), assets, out, name)
    assert any(o.startswith("actor_rollout_ref.actor.policy_loss.loss_mode=") for o in job.overrides)
heavy = sorted(m for m in ("torch", "verl", "transformers") if m in sys.modules)
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1], timeout=120)


def test_the_policy_loss_target_names_the_config_class():
    import hydra.utils

    from orchestrator.algorithms.config import MaspoPolicyLossConfig
    from orchestrator.algorithms.registry import TARGET

    assert hydra.utils.get_class(TARGET) is MaspoPolicyLossConfig
