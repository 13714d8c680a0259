"""An experiment interrupted with SIGINT and restored runs only its unfinished trials (Tuner.restore).

A stand-in job (tests/standin_job.py) replaces verl so that the test is about orchestration and stays short;
the killed-and-retried real verl job is in tests/test_sweep_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
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


def _end(proc: subprocess.Popen) -> str:
    """Stop a driver that a wait gave up on (SIGTERM stops its private Ray cluster too) and return its output."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


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
        if first.poll() is not None:
            pytest.fail("the experiment ended before it could be interrupted:\n" + first.communicate()[0][-3000:])
        done = [n for n in names if _status(exp_dir, n).get("state") == "succeeded"]
        running = [n for n in names if _status(exp_dir, n).get("state") == "running"]
        if len(done) == 1 and running:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the first trial never finished:\n" + _end(first)[-3000:])
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=120)[0]
    finished_first = done[0]
    unfinished = [n for n in names if n != finished_first]
    assert _status(exp_dir, unfinished[-1]) == {}, "the third trial started before the interrupt"

    second = subprocess.run([sys.executable, "-c", RUN, str(exp_dir), "restore"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, output[-2000:] + second.stdout[-3000:] + second.stderr[-3000:]
    # Tuner.restore read Tune's own state: no fall-back to a fresh experiment (a search state checked as JSON,
    # when Tune pickles it, once sent every resume there)
    assert "unreadable" not in second.stdout + second.stderr
    assert not list(exp_dir.glob("tune.unreadable-*"))
    assert len(_status(exp_dir, finished_first)["attempts"]) == 1  # not run again
    for name in unfinished:
        status = _status(exp_dir, name)
        assert status["state"] == "succeeded"
        steps = [json.loads(line)["step"] for line in (exp_dir / "trials" / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3, 4]
    assert len(_status(exp_dir, unfinished[0])["attempts"]) == 2  # interrupted, then resumed
    assert len(_status(exp_dir, unfinished[1])["attempts"]) == 1


SCOPE = "MASPO_TEST_SCOPE"  # set in a driver's environment: its processes, and only they, carry it


def _processes_of(tag: str, sessions: set[int]) -> dict[int, tuple[int, str]]:
    """This test's live processes, {pid: (session id, command line)}, and no other test's or user's.

    A process is this test's if its environment holds ``MASPO_TEST_SCOPE=<tag>`` (the driver, ``ray start``,
    GCS, raylet, Ray's workers and the job, which all inherit it) or if it is in one of ``sessions`` (the sessions
    that such processes led: a process that rewrote its environment, like Ray's dashboard modules, stays in
    the session of ``ray start``, even once orphaned).
    """
    entry, own_session = f"{SCOPE}={tag}".encode(), os.getsid(0)
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, _, _, session = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                tagged = entry in (proc / "environ").read_bytes().split(b"\0")
            except PermissionError:  # another user's process
                tagged = False
        except (OSError, ValueError):  # gone meanwhile
            continue
        if state != "Z" and (tagged or (int(session) in sessions and int(session) != own_session)):
            found[int(proc.name)] = (int(session), cmdline)
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
    tag = str(tmp_path)
    env = {**os.environ, "STANDIN_SECONDS": "600", "PYTHONPATH": str(Path(__file__).parents[1]), SCOPE: tag}
    driver = subprocess.Popen([sys.executable, "-c", RUN, str(exp_dir), "start"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    metrics = exp_dir / "trials" / name / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # the job runs: it logged two steps
        if driver.poll() is not None:
            pytest.fail("the driver exited before its job ran:\n" + driver.communicate()[0][-3000:])
        if time.monotonic() > deadline:
            pytest.fail("no job ever started (no two steps logged within 300 s):\n" + _end(driver)[-3000:])
        time.sleep(0.2)
    # what this test started, while it runs; the scope must see the whole cluster and the job, or it proves nothing
    running = _processes_of(tag, set())
    sessions = {session for session, _ in running.values()}
    cmdlines = " ".join(cmdline for _, cmdline in running.values())
    for part in ("ray start", "gcs_server", "raylet", "ray::", "standin_job"):
        if part not in cmdlines:
            _end(driver)
            pytest.fail(f"the test's scope misses the cluster's {part!r}: {sorted(running)}")
    temp_dirs = set(re.findall(r"--temp-dir=(/tmp/maspo-ray-[^\s/]+)", cmdlines))
    assert len(temp_dirs) == 1, temp_dirs  # the private cluster's
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=120)[0]
    leftover = {}
    for _ in range(60):  # the cluster is stopped before the driver exits; give the kernel a moment to reap
        leftover = _processes_of(tag, sessions)
        if not leftover:
            break
        time.sleep(0.5)
    assert not leftover, f"still running after the driver exited: {leftover}\n{output[-2000:]}"
    assert _status(exp_dir, name).get("state") != "succeeded"
    assert (exp_dir / "tune").exists()  # Tune's state, for `maspo resume`
    assert not Path(temp_dirs.pop()).exists()  # the cluster's temp dir is gone too


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
