"""An experiment interrupted with SIGINT and restored runs only its unfinished trials (Tuner.restore).

A stand-in job (tests/standin_job.py) replaces verl so that the test is about orchestration and stays short;
the killed-and-retried real verl job is in tests/test_sweep_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.trial import trial_config
from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
from orchestrator.store import ExperimentDir

pytestmark = pytest.mark.slow

RUN = """
import sys
from pathlib import Path
from rich.console import Console
from orchestrator.store import ExperimentDir
from orchestrator.tune_runner import run_experiment
exp_dir = Path(sys.argv[1])
sys.exit(run_experiment(ExperimentDir(exp_dir).plan(), exp_dir, Console(), restore=sys.argv[2] == "restore",
                        renderer="tests.standin_job:render", poll_s=0.2))
"""


def _status(exp_dir: Path, name: str) -> dict:
    try:
        return json.loads((exp_dir / "trials" / name / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_sigint_then_restore_runs_only_the_unfinished_trials(tmp_path):
    trials = [trial_config("grpo", seed=s, profile={"steps": 4, "test_freq": 1}) for s in range(3)]
    names = [trial_name(t) for t in trials]
    plan = ExperimentPlan(name="interrupted", kind="compare", spec="test", profile="local", scale="1.5b",
                          seeds=[0, 1, 2], steps=4, max_concurrent=1, max_failures=0,
                          trials=[PlannedTrial(name=n, label=n, trial=t) for n, t in zip(names, trials)])
    exp_dir = tmp_path / "interrupted"
    ExperimentDir(exp_dir).save_plan(plan)
    env = {**os.environ, "STANDIN_SECONDS": "4", "PYTHONPATH": str(Path(__file__).parents[1])}

    first = subprocess.Popen([sys.executable, "-c", RUN, str(exp_dir), "start"], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # interrupt while the second trial runs, the first one done
        done = [n for n in names if _status(exp_dir, n).get("state") == "succeeded"]
        running = [n for n in names if _status(exp_dir, n).get("state") == "running"]
        if len(done) == 1 and running:
            break
        time.sleep(0.2)
    else:
        first.kill()
        pytest.fail("the first trial never finished:\n" + first.communicate()[0][-3000:])
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=120)[0]
    finished_first = done[0]
    unfinished = [n for n in names if n != finished_first]
    assert _status(exp_dir, unfinished[-1]) == {}, "the third trial started before the interrupt"

    second = subprocess.run([sys.executable, "-c", RUN, str(exp_dir), "restore"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, output[-2000:] + second.stdout[-3000:] + second.stderr[-3000:]
    assert len(_status(exp_dir, finished_first)["attempts"]) == 1  # not run again
    for name in unfinished:
        status = _status(exp_dir, name)
        assert status["state"] == "succeeded"
        steps = [json.loads(line)["step"] for line in (exp_dir / "trials" / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3, 4]
    assert len(_status(exp_dir, unfinished[0])["attempts"]) == 2  # interrupted, then resumed
    assert len(_status(exp_dir, unfinished[1])["attempts"]) == 1


def _ray_processes() -> set[int]:
    """Pids of Ray's processes on this machine (head, raylet, GCS, workers, job drivers)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and any(m in cmdline for m in ("ray::", "gcs_server", "raylet", "ray start",
                                                               "dashboard", "standin_job")):
            found.add(int(proc.name))
    return found


def test_a_killed_driver_stops_its_local_cluster_and_keeps_the_experiment_resumable(tmp_path):
    """SIGTERM (and SIGHUP: tests/test_cluster_cli.py) acts like Ctrl-C: Tune saves its state, the job and the private Ray cluster are stopped
    (it runs in a session of its own, so nothing else would), and the trial is left for `maspo resume`."""
    trial = trial_config("grpo", seed=0, profile={"steps": 30, "test_freq": 1})
    name = trial_name(trial)
    plan = ExperimentPlan(name="killed", kind="compare", spec="test", profile="local", scale="1.5b", seeds=[0],
                          steps=30, max_concurrent=1, max_failures=0, trials=[PlannedTrial(name=name, label=name, trial=trial)])
    exp_dir = tmp_path / "killed"
    ExperimentDir(exp_dir).save_plan(plan)
    env = {**os.environ, "STANDIN_SECONDS": "600", "PYTHONPATH": str(Path(__file__).parents[1])}
    before, temp_dirs = _ray_processes(), set(Path("/tmp").glob("maspo-ray-*"))
    driver = subprocess.Popen([sys.executable, "-c", RUN, str(exp_dir), "start"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    metrics = exp_dir / "trials" / name / "metrics.jsonl"
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=120)[0]
    leftover = set()
    for _ in range(60):  # the cluster is stopped before the driver exits; give the kernel a moment to reap
        leftover = _ray_processes() - before
        if not leftover:
            break
        time.sleep(0.5)
    assert not leftover, f"still running after the driver exited: {sorted(leftover)}\n{output[-2000:]}"
    assert _status(exp_dir, name).get("state") != "succeeded"
    assert (exp_dir / "tune").exists()  # Tune's state, for `maspo resume`
    assert set(Path("/tmp").glob("maspo-ray-*")) == temp_dirs  # the cluster's temp dir is gone too


def test_asha_stops_weak_trials_early_and_their_jobs_end(tmp_path):
    """ASHA on the mean validation Avg@k, one rung per validation: later (weaker) seeds are cut at a rung."""
    from rich.console import Console

    from orchestrator.tune_runner import run_experiment

    trials = [trial_config("grpo", seed=s, profile={"steps": 6, "test_freq": 1}) for s in range(4)]
    plan = ExperimentPlan(name="asha", kind="compare", spec="test", profile="local", scale="1.5b",
                          seeds=[0, 1, 2, 3], steps=6, max_concurrent=1, max_failures=0, scheduler="asha",
                          grace_validations=2,
                          trials=[PlannedTrial(name=trial_name(t), label=f"s{t.seed}", trial=t) for t in trials])
    exp_dir = tmp_path / "asha"
    ExperimentDir(exp_dir).save_plan(plan)
    os.environ["STANDIN_SECONDS"] = "4"
    try:
        code = run_experiment(plan, exp_dir, Console(file=open(tmp_path / "out.txt", "w")),
                              renderer="tests.standin_job:render", poll_s=0.2)
    finally:
        os.environ.pop("STANDIN_SECONDS")
    assert code == 0, (tmp_path / "out.txt").read_text()
    states = {t.trial.seed: _status(exp_dir, t.name) for t in plan.trials}
    assert states[0]["state"] == "succeeded"  # the best runs to the end
    stopped = [s for s, st in states.items() if st["state"] == "stopped"]
    assert stopped, states
    for seed in stopped:  # cut at a rung, and the controller stopped its job
        steps = [json.loads(line)["step"] for line in
                 (exp_dir / "trials" / plan.trials[seed].name / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) < 6
        assert states[seed]["attempts"][-1]["job_status"] == "STOPPED"
