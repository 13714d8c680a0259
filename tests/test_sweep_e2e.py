"""`maspo sweep` end to end on the local profile: real verl jobs under Ray Tune, a killed job retried from its
checkpoint, the metric stream, W&B offline runs, and `maspo results` from what the trials reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestrator.local import tasks

from tests.conftest import SECRET, SWEEP_STEPS

pytestmark = pytest.mark.slow


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_sweep_succeeds_with_every_trial(local_sweep):
    exp_dir, done, killed = local_sweep
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    plan = json.loads((exp_dir / "experiment.json").read_text())
    assert [t["label"] for t in plan["trials"]] == ["alpha=0.3 beta=0.03", "alpha=0.8 beta=0.03"]
    for trial in plan["trials"]:
        status = json.loads((exp_dir / "trials" / trial["name"] / "status.json").read_text())
        assert status["state"] == "succeeded"
    assert "2/2 trials done" in done.stdout
    # the closing summary shows what each setting's loss did (real trials log the mechanism metrics)
    assert "mechanism metrics" in " ".join(done.stdout.split())


def test_a_killed_job_is_retried_and_resumes_from_its_checkpoint(local_sweep):
    exp_dir, done, killed = local_sweep
    assert len(killed) == 1, "the chaos thread found no job to kill"
    name, ckpt = killed[0]
    trial_dir = exp_dir / "trials" / name
    status = json.loads((trial_dir / "status.json").read_text())
    assert [a["job_status"] for a in status["attempts"]] == ["FAILED", "SUCCEEDED"]
    resumed = status["attempts"][1]["resumed_from_step"]
    assert resumed >= ckpt >= 1
    # verl itself resumed: the retry's own log starts at the checkpoint, not at step 0
    retry_steps = [r["step"] for r in _records(trial_dir / "attempts" / "2" / "metrics.jsonl")]
    assert min(retry_steps) == resumed and max(retry_steps) == SWEEP_STEPS
    # the trial's stream has every step exactly once: nothing lost, nothing repeated
    steps = [r["step"] for r in _records(trial_dir / "metrics.jsonl")]
    assert steps == list(range(SWEEP_STEPS + 1))
    # the retry continues the same W&B run: both attempts' offline runs carry one run id
    from orchestrator.tracking import find_offline_runs, read_offline_run

    runs = [read_offline_run(r) for r in find_offline_runs(trial_dir)]
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id and runs[0].group == "e2e"


def test_each_trial_streams_verl_and_project_metrics_at_the_right_steps(local_sweep):
    exp_dir, _, _ = local_sweep
    for trial_dir in sorted((exp_dir / "trials").iterdir()):
        by_step = {r["step"]: r["data"] for r in _records(trial_dir / "metrics.jsonl")}
        assert sorted(by_step) == list(range(SWEEP_STEPS + 1))
        for step in range(1, SWEEP_STEPS + 1):
            for key in ("actor/entropy", "critic/score/mean", "actor/pg_loss", "actor/maspo/gated_frac",
                        "actor/maspo/sigma_pos", "actor/maspo/gate_mean"):
                assert key in by_step[step], (trial_dir.name, step, key)
        for step in range(0, SWEEP_STEPS + 1):  # test_freq 1: validation before training and after every step
            for name, _ in tasks.BENCHMARKS:
                for metric in ("mean@4", "pass@4", "best@4/mean"):
                    assert f"val-core/local_{name}/acc/{metric}" in by_step[step], (step, name, metric)
            assert 0.0 <= by_step[step]["val-core/average/acc/mean@4"] <= 1.0
        trial = json.loads((trial_dir / "trial.json").read_text())
        assert trial["trial"]["algorithm"] == "maspo" and "trainer.resume_mode=auto" in trial["entrypoint"]
        runs = list((trial_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert runs and all(r.stat().st_size > 0 for r in runs)


def test_results_table_reads_what_the_trials_reported(local_sweep):
    exp_dir, _, _ = local_sweep
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "results", "e2e", "--root", str(exp_dir.parent),
                          "--json", str(exp_dir / "results.json")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    results = json.loads((exp_dir / "results.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["alpha=0.3 beta=0.03", "alpha=0.8 beta=0.03"]
    for row, trial in zip(results["rows"], results["trials"]):
        final = _records(exp_dir / "trials" / trial["name"] / "metrics.jsonl")[-1]["data"]
        assert row["average_avg"] == pytest.approx(100 * final["val-core/average/acc/mean@4"], abs=1e-3)
        assert row["average_pass_unbiased"] == pytest.approx(100 * final["val-core/average/acc/pass@4"], abs=1e-3)
        assert row["average_pass_bootstrap"] == pytest.approx(100 * final["val-core/average/acc/best@4/mean"],
                                                              abs=1e-3)
        assert f"{row['average_avg']:.1f}" in out.stdout
    assert sum(t["attempts"] for t in results["trials"]) == 3 and results["total_gpu_hours"] > 0
    text = " ".join(out.stdout.split())
    assert "A = Avg@4, P = Pass@4 (%), unbiased" in text and "MATH500" in text  # local: no paper rows, unbiased


def test_no_wandb_key_or_ray_token_in_any_file_the_experiment_wrote(local_sweep):
    """The W&B key (in the driver's environment) and the private cluster's Ray token are in no file of the
    experiment (job logs, verl's and Ray's logs under it, Tune's state, the W&B offline runs) nor in Ray's session
    logs (the cluster's temp dir, scanned while it ran), nor in the command's output."""
    from tests.conftest import SWEEP_RAY as ray

    exp_dir, done, _ = local_sweep
    token = ray["token"]
    assert token and len(token) == 64, "the scan never found the cluster's token: it would prove nothing"
    assert len(ray["scanned"]) > 20 and any("/logs/" in p for p in ray["scanned"])  # Ray's session logs were read
    assert ray["leaks"] == set()
    for secret in (SECRET, token):
        assert secret not in done.stdout + done.stderr
    files = [p for p in exp_dir.rglob("*") if p.is_file()]
    assert any(p.name == "job.log" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert any(p.name == "ray-start.log" for p in files)
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes() or token.encode() in p.read_bytes()]
    assert leaked == []
    assert not ray["temp_dir"].exists() and not ray["token_path"].exists()  # gone with the cluster
