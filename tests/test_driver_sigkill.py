"""The driver killed by SIGKILL mid-experiment (the OOM killer, ``kill -9``), then resumed (issue: fault 1).

SIGKILL cannot be caught: the killed driver's private Ray cluster and the trials' jobs keep running. The resumed
command must find that cluster (``local-ray.json``), stop all of it, and start clean; no trial may run twice at
once (two runs would write one checkpoint directory); every step must be in every trial's stream exactly once;
nothing of either run may be left running. Stand-in jobs (tests/standin_job.py) replace verl: they checkpoint like
verl's ``resume_mode=auto`` and hold a lock on the trial's checkpoint directory while they run, so a second run
of a trial that starts while the first lives fails loudly (``overlap-<attempt>``).
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

from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
from orchestrator.config.trial import trial_config
from orchestrator.store import LOCAL_RAY_FILE, LOCK_FILE, ExperimentDir, read_records
from tests.test_tune_resume import SCOPE, _end, _processes_of

pytestmark = pytest.mark.slow

# the driver as `maspo sweep`/`maspo resume` run it (the experiment's lock held), with the stand-in renderer
DRIVER = """
import sys
from pathlib import Path
from rich.console import Console
from orchestrator.store import ExperimentDir, ExperimentLock
from orchestrator.tune_runner import run_experiment
exp_dir = Path(sys.argv[1])
with ExperimentLock(exp_dir, "drill " + sys.argv[2]):
    code = run_experiment(ExperimentDir(exp_dir).plan(), exp_dir, Console(width=160),
                          restore=sys.argv[2] == "restore", renderer="tests.standin_job:render", poll_s=0.2)
sys.exit(code)
"""
# the same against an existing cluster (`--address`): argv[3]
DRIVER_AT = DRIVER.replace('restore=sys.argv[2] == "restore",', 'restore=sys.argv[2] == "restore", address=sys.argv[3],')
assert DRIVER_AT != DRIVER
STEPS, EVERY = 12, 2


def _steps(path: Path) -> list[int]:
    return [int(r["step"]) for r in read_records(path)]


def _check_trial(trial_dir: Path, streamed_at_kill: int) -> dict:
    """A trial after the resume: every step once in its stream, never two runs at once; what it cost."""
    stream = _steps(trial_dir / "metrics.jsonl")
    assert not list(trial_dir.glob("overlap-*")), f"{trial_dir.name}: a second run started while the first ran"
    assert stream == list(range(STEPS + 1)), f"{trial_dir.name}: {stream}"  # every step exactly once
    status = json.loads((trial_dir / "status.json").read_text())
    assert status["state"] == "succeeded", status
    first = status["attempts"][0]
    assert first["ended"] and first["ended_by"], first  # the killed controller's attempt, closed by the resume
    ran_first = _steps(Path(first["metrics_path"]))
    figure = {"streamed_at_kill": streamed_at_kill, "orphan_ran_to": max(ran_first), "attempts": len(status["attempts"]),
              "first_ended_by": first["ended_by"], "duplicated_in_stream": 0}
    if len(status["attempts"]) == 1:  # the orphaned job logged its last step before the resume stopped it
        assert max(ran_first) == STEPS and first["job_status"] != "FAILED", first
        return {**figure, "path": "finished while orphaned", "resumed_from": None, "rerun": 0}
    assert len(status["attempts"]) == 2, status  # the killed run's, then the resumed one (never a third)
    last = status["attempts"][1]
    assert first["job_status"] == "STOPPED", first
    ran_last = _steps(Path(last["metrics_path"]))
    resumed_from = last["resumed_from_step"]
    # the resumed job started from the newest checkpoint whose step the stream holds: what the orphan logged after
    # the kill counts too (its attempt's JSONL is read in), so it resumed at or after the kill's last checkpoint
    assert resumed_from % EVERY == 0 and resumed_from >= streamed_at_kill - streamed_at_kill % EVERY, \
        (resumed_from, streamed_at_kill)
    assert ran_last and ran_last[0] == resumed_from, ran_last  # verl validates the step it resumed from again
    rerun = {step for step in ran_first if step > resumed_from} & set(ran_last)  # trained by both runs
    return {**figure, "path": "resumed", "resumed_from": resumed_from, "rerun": len(rerun)}


def test_sigkill_of_the_driver_then_resume_stops_the_orphans_and_keeps_every_step_once(tmp_path):
    trials = [trial_config("grpo", seed=s, profile={"steps": STEPS, "test_freq": EVERY}) for s in range(2)]
    names = [trial_name(t) for t in trials]
    plan = ExperimentPlan(name="sigkilled", kind="compare", spec="test", profile="local", scale="1.5b", seeds=[0, 1],
                          steps=STEPS, max_concurrent=2, max_failures=1,
                          trials=[PlannedTrial(name=n, label=n, trial=t) for n, t in zip(names, trials)])
    exp_dir = tmp_path / "sigkilled"
    ExperimentDir(exp_dir).save_plan(plan)
    tag = str(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), SCOPE: tag, "STANDIN_SECONDS": "36",
           "STANDIN_CHECKPOINTS": "1", "STANDIN_EXCLUSIVE": "1",
           "STANDIN_GPU_WAIT_S": "300"}  # a loaded machine places a GPU group slowly: no retry for that
    streams = {n: exp_dir / "trials" / n / "metrics.jsonl" for n in names}

    t0 = time.monotonic()
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(exp_dir), "start"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not all(len(_steps(p)) > EVERY for p in streams.values()):  # both trials past their first checkpoint
        if driver.poll() is not None:
            pytest.fail("the driver ended before it could be killed:\n" + driver.communicate()[0][-3000:])
        if time.monotonic() > deadline:
            pytest.fail("the trials never got past their first checkpoint in 300 s:\n" + _end(driver)[-3000:])
        time.sleep(0.2)
    print(f"kill at {time.monotonic() - t0:.0f} s")
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    at_kill = {n: max(_steps(p)) for n, p in streams.items()}

    # the fault is real: the killed driver's cluster and its jobs live on, recorded in the experiment
    orphans = _processes_of(tag, set())
    cmdlines = " ".join(c for _, c in orphans.values())
    assert "gcs_server" in cmdlines and "raylet" in cmdlines and "standin_job" in cmdlines, cmdlines[-2000:]
    record = json.loads((exp_dir / LOCAL_RAY_FILE).read_text())
    sessions = {s for s, _ in orphans.values()}
    time.sleep(3)  # the orphaned jobs go on logging and checkpointing with nobody tailing them

    resumed = subprocess.run([sys.executable, "-c", DRIVER, str(exp_dir), "restore"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=400)
    output = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    print(f"resumed at {time.monotonic() - t0:.0f} s")
    assert resumed.returncode == 0, output
    assert "stopped the private Ray cluster a killed command" in resumed.stdout, output

    leftover = {}
    for _ in range(60):  # nothing of the killed run nor of the resumed one is left
        leftover = _processes_of(tag, sessions)
        if not leftover:
            break
        time.sleep(0.5)
    assert not leftover, f"still running after the resume ended: {leftover}"
    print(f"no leftover at {time.monotonic() - t0:.0f} s")
    assert not Path(record["temp_dir"]).exists()
    assert not (exp_dir / LOCAL_RAY_FILE).exists()
    assert (exp_dir / LOCK_FILE).read_text() == ""  # the killed driver's lock was taken over, then released

    figures = {n: _check_trial(exp_dir / "trials" / n, at_kill[n]) for n in names}
    print("driver SIGKILL figures:", json.dumps(figures))


def test_sigkill_of_the_driver_on_an_existing_cluster_then_resume_stops_the_old_jobs_first(tmp_path, monkeypatch):
    """``--address``: the cluster outlives the driver, and so do the trials' jobs. The restored controllers stop
    their trial's previous job and wait until it ended before they read the checkpoint or submit a new job."""
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    from orchestrator.cluster import free_ports

    trials = [trial_config("grpo", seed=s, profile={"steps": STEPS, "test_freq": EVERY}) for s in range(2)]
    names = [trial_name(t) for t in trials]
    plan = ExperimentPlan(name="sigkilled-addr", kind="compare", spec="test", profile="local", scale="1.5b",
                          seeds=[0, 1], steps=STEPS, max_concurrent=2, max_failures=1,
                          trials=[PlannedTrial(name=n, label=n, trial=t) for n, t in zip(names, trials)])
    exp_dir = tmp_path / "sigkilled-addr"
    ExperimentDir(exp_dir).save_plan(plan)
    (exp_dir / "standin.json").write_text(json.dumps({"STANDIN_SECONDS": 36, "STANDIN_CHECKPOINTS": 1,
                                                      "STANDIN_EXCLUSIVE": 1, "STANDIN_GPU_WAIT_S": 300}))
    streams = {n: exp_dir / "trials" / n / "metrics.jsonl" for n in names}
    dashboard, agent = free_ports(2)
    # the nodes' workers (the trial controllers) import the stand-in renderer from this checkout: verl and
    # transferqueue install a top-level `tests` package of their own into site-packages, which would win
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                    os.environ.get("PYTHONPATH")])))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "num_gpus": 2, "resources": {"verl_slot": 2}, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard, "dashboard_agent_listen_port": agent})
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        driver = subprocess.Popen([sys.executable, "-c", DRIVER_AT, str(exp_dir), "start", cluster.address], env=env,
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not all(len(_steps(p)) > EVERY for p in streams.values()):
            if driver.poll() is not None:
                pytest.fail("the driver ended before it could be killed:\n" + driver.communicate()[0][-3000:])
            if time.monotonic() > deadline:
                pytest.fail("the trials never got past their first checkpoint in 300 s:\n" + _end(driver)[-3000:])
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=60)
        at_kill = {n: max(_steps(p)) for n, p in streams.items()}
        client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}")
        running = [j.submission_id for j in client.list_jobs() if not j.status.is_terminal()]
        assert len(running) == 2, running  # the fault is real: both jobs outlived the driver

        resumed = subprocess.run([sys.executable, "-c", DRIVER_AT, str(exp_dir), "restore", cluster.address],
                                 env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        jobs = client.list_jobs()
        assert all(j.status.is_terminal() for j in jobs), [(j.submission_id, j.status) for j in jobs]
        figures = {n: _check_trial(exp_dir / "trials" / n, at_kill[n]) for n in names}
        for name, figure in figures.items():
            assert figure["path"] != "resumed" or figure["first_ended_by"] == "stopped by resume", figure
            figure["submissions"] = sum(1 for j in jobs if (j.metadata or {}).get("maspo_trial") == name)
            assert figure["submissions"] == figure["attempts"]
        print("driver SIGKILL --address figures:", json.dumps(figures))
    finally:
        cluster.shutdown()

