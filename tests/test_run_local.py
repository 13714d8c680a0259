"""`maspo run` on the local profile: bad input stops before Ray, and a real (short) trial end to end."""

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
        (["run", "--profile", "a100"], "profile 'a100' is not available yet"),
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


@pytest.mark.slow
def test_a_short_local_trial_end_to_end(tmp_path):
    """A real verl run as a Ray Job on a private local Ray: JSONL metrics at the right steps, W&B offline run."""
    from orchestrator.local.tiny_model import build_tiny_model

    model = build_tiny_model()
    out = run_cli(["run", "-a", "maspo", "--alpha", "0.3", "--steps", "2", "--model-path", str(model),
                   "--name", "e2e", "--out", str(tmp_path / "trial")], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "SUCCEEDED after 2/2 steps" in out.stdout
    trial_dir = tmp_path / "trial"
    records = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {}
    for record in records:
        by_step.setdefault(record["step"], {}).update(record["data"])
    assert sorted(by_step) == [0, 1, 2]
    for step in (1, 2):
        for key in ("actor/entropy", "critic/score/mean", "actor/pg_loss", "actor/maspo/gated_frac",
                    "actor/maspo/sigma_pos"):
            assert key in by_step[step], (step, key)
    for step in (0, 2):  # validation before training and at the end
        for name, _ in tasks.BENCHMARKS:
            assert f"val-core/local_{name}/acc/mean@8" in by_step[step]
            assert f"val-core/local_{name}/acc/pass@8" in by_step[step]
            assert f"val-core/local_{name}/acc/best@8/mean" in by_step[step]
        assert "val-core/average/acc/mean@8" in by_step[step]
    assert "val-core/average/acc/mean@8" not in by_step[1]
    config = json.loads((trial_dir / "trial.json").read_text())
    assert config["trial"]["hyperparameters"]["alpha"] == 0.3
    assert "+actor_rollout_ref.actor.policy_loss.maspo_alpha=0.3" in config["entrypoint"]
    runs = list(Path(trial_dir, "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert (trial_dir / "job.log").read_text()
