"""Faults of the disk: a full file system never leaves a run file half-written, and the command says so in one line.

The fast tests inject ``OSError(ENOSPC)`` into the system calls the store makes (a write that stops part way, as
a full disk does); ``test_a_full_disk_stops_the_experiment_and_resume_continues`` fills a real tmpfs under a
real Tune experiment (root only: it mounts one).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store import DiskFull, ExperimentDir, MetricStream, append_record, read_records, write_json


def _full_after(monkeypatch, budget: int):
    """``os.write`` accepts ``budget`` more bytes in all, then fails with ENOSPC (a short write first, like the kernel)."""
    real = os.write
    left = [budget]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), left[0])
        left[0] -= n
        return real(fd, bytes(data[:n]))

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("budget", [0, 1, 7, 30])
def test_an_append_that_meets_a_full_disk_leaves_no_torn_line(tmp_path, monkeypatch, budget):
    path = tmp_path / "metrics.jsonl"
    for step in range(3):
        append_record(path, {"step": step, "data": {"x": step}})
    before = path.read_bytes()
    _full_after(monkeypatch, budget)
    with pytest.raises(DiskFull) as caught:
        append_record(path, {"step": 3, "data": {"x": 3, "long": "y" * 100}})
    assert caught.value.path == path and str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == before  # cut back: the file ends with the last complete record
    monkeypatch.undo()  # space freed
    append_record(path, {"step": 3, "data": {"x": 3}})
    assert [r["step"] for r in read_records(path)] == [0, 1, 2, 3]
    assert path.read_bytes().count(b"\n") == 4  # every record on a line of its own, nothing skipped


def test_a_metric_stream_rewrite_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    stream = MetricStream(path)
    for step in range(4):
        stream.accept({"step": step, "data": {"x": step}})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the new content is in the temp file, not yet on disk
    with pytest.raises(DiskFull):
        stream.truncate_after(1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left


@pytest.mark.parametrize("name", ["status.json", "experiment.json", "trial.json"])
def test_json_files_are_old_or_new_never_part(tmp_path, monkeypatch, name):
    path = tmp_path / name
    write_json(path, {"state": "running", "attempts": [1]})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(
        OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path))))
    with pytest.raises(DiskFull) as caught:
        write_json(path, {"state": "succeeded", "attempts": [1, 2], "pad": "z" * 10_000})
    assert caught.value.path == path
    assert json.loads(path.read_text()) == {"state": "running", "attempts": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_other_os_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(os, "fsync", denied)
    with pytest.raises(PermissionError):
        write_json(tmp_path / "status.json", {})


def test_a_trial_error_tune_kept_as_a_string_is_a_full_disk_only_if_it_says_so():
    """ResultGrid.errors holds strings for errors Tune could not unpickle (a RuntimeEnvSetupError): the disk-full
    check reads them instead of crashing the command with an AttributeError."""
    from orchestrator.tune_runner import _disk_full_in

    assert _disk_full_in("RuntimeEnvSetupError: Failed to set up runtime environment.\nHTTP 405") is None
    full = _disk_full_in("Traceback ...\nOSError: [Errno 28] No space left on device: '/runs/x'\n")
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert _disk_full_in(RuntimeError("boom")) is None


def test_disk_full_survives_the_trip_from_a_ray_worker(tmp_path):
    """Tune pickles a trial's error in the worker and unpickles it in the driver."""
    import pickle

    err = pickle.loads(pickle.dumps(DiskFull(tmp_path / "x" / "status.json")))
    assert isinstance(err, DiskFull) and err.path == tmp_path / "x" / "status.json"


def test_the_command_prints_one_line_naming_the_path_and_exits_1(tmp_path, monkeypatch):
    """`maspo sweep` saves its plan first: on a full disk that write fails, and nothing is left half-written."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "experiment.json" in os.readlink(
                f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr("orchestrator.tune_runner.check_ready", lambda plan, address: None)
    out = CliRunner().invoke(app, ["sweep", "alpha-beta", "--demo", "--steps", "1", "--root", str(tmp_path),
                                   "--name", "full"])
    lines = out.output.strip().splitlines()
    assert out.exit_code == 1, out.output
    assert len(lines) == 1 and lines[0].startswith("error: no space left on the device of ")
    assert str(tmp_path / "full" / "experiment.json") in lines[0] and "Traceback" not in out.output
    assert not list((tmp_path / "full").glob("*"))  # no plan, no temp file


# --------------------------------------------------------------------------------------------------------
# a real full disk under a real experiment (a tmpfs; root only)

RUN = """
import sys
from pathlib import Path
from rich.console import Console
from orchestrator.cli.common import user_errors
from orchestrator.store import ExperimentDir
from orchestrator.tune_runner import run_experiment
exp_dir = Path(sys.argv[1])
import typer
try:
    with user_errors():  # what every maspo command runs in
        code = run_experiment(ExperimentDir(exp_dir).plan(), exp_dir, Console(), restore=sys.argv[2] == "restore",
                              renderer="tests.standin_job:render", poll_s=0.2)
except typer.Exit as end:
    code = end.exit_code
sys.exit(code)
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs at ``tmp_path/disk`` (skipped where this process may not mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(disk)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests above still run")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError as err:
            assert err.errno == errno.ENOSPC
    for block in (4096, 1):  # the last partial pages too
        with open(filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError:
                pass
    return filler


@pytest.mark.slow
def test_a_full_disk_stops_the_experiment_and_resume_continues(small_disk):
    from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
    from orchestrator.config.trial import trial_config

    steps = 8
    trials = [trial_config("grpo", seed=s, profile={"steps": steps, "test_freq": 1}) for s in range(2)]
    names = [trial_name(t) for t in trials]
    plan = ExperimentPlan(name="full", kind="compare", spec="test", profile="local", scale="1.5b", seeds=[0, 1],
                          steps=steps, max_concurrent=1, max_failures=2,
                          trials=[PlannedTrial(name=n, label=n, trial=t) for n, t in zip(names, trials)])
    exp_dir = small_disk / "full"
    ExperimentDir(exp_dir).save_plan(plan)
    env = {**os.environ, "STANDIN_SECONDS": "8", "PYTHONPATH": str(Path(__file__).parents[1])}
    first = subprocess.Popen([sys.executable, "-c", RUN, str(exp_dir), "start"], env=env, cwd=small_disk.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = exp_dir / "trials" / names[0] / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(read_records(metrics)) >= 3):  # the first trial is mid-run
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            log = exp_dir / "ray-start.log"
            pytest.fail("the first trial never logged 3 steps:\n" + first.communicate()[1][-3000:]
                        + (log.read_text()[-2000:] if log.exists() else ""))
        time.sleep(0.1)
    filler = _fill(small_disk)
    stdout, stderr = first.communicate(timeout=300)
    logged_at_fill = {r["step"] for r in read_records(metrics)}

    # one line on stderr naming a path on the full disk, exit 1, no traceback
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert first.returncode == 1 and "Traceback" not in stderr, stdout[-2000:] + stderr[-6000:]
    assert len(errors) == 1 and "no space left on the device of " + str(small_disk) in errors[0], stderr[-6000:]

    # nothing half-written: every JSON file parses, every stream line is a complete record
    for path in [exp_dir / "experiment.json", *exp_dir.glob("trials/*/status.json"), *exp_dir.glob("trials/*/trial.json")]:
        json.loads(path.read_text())
    for path in exp_dir.glob("trials/*/metrics.jsonl"):
        lines = path.read_bytes().splitlines(keepends=True)
        assert all(line.endswith(b"\n") and json.loads(line) for line in lines), path
    ExperimentDir(exp_dir).plan()

    status = json.loads((exp_dir / "trials" / names[0] / "status.json").read_text())
    print(f"\nFIGURES disk-full: trial 1 had logged steps {sorted(logged_at_fill)} when the disk filled; "
          f"attempts {[(a['attempt'], a['job_status']) for a in status['attempts']]}; error line: {errors[0]}")

    filler.unlink()  # space freed: resume continues
    second = subprocess.run([sys.executable, "-c", RUN, str(exp_dir), "restore"], env=env, cwd=small_disk.parent,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for name in names:
        status = json.loads((exp_dir / "trials" / name / "status.json").read_text())
        assert status["state"] == "succeeded"
        steps_logged = [r["step"] for r in read_records(exp_dir / "trials" / name / "metrics.jsonl")]
        assert steps_logged == list(range(steps + 1)), (name, steps_logged)  # every step once
    first_status = json.loads((exp_dir / "trials" / names[0] / "status.json").read_text())
    resumed = first_status["attempts"][-1]["resumed_from_step"]
    print(f"\nFIGURES disk-full: logged at fill {sorted(logged_at_fill)}, attempts "
          f"{[(a['attempt'], a['job_status'], a['resumed_from_step']) for a in first_status['attempts']]}, "
          f"resumed from {resumed}")


def test_a_torn_tune_state_is_rebuilt_from_our_own_files(tmp_path, capsys):
    """Tune writes its experiment state in place: a full disk (or a crash) tears it, and Tune would fail inside
    ``fit``. ``maspo resume`` then keeps the torn state aside and runs the trials that have not succeeded in a
    fresh Tune experiment; each controller resumes its trial from its own checkpoint (docs/orchestration.md)."""
    from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
    from orchestrator.config.trial import trial_config
    from orchestrator.tune_runner import build_tuner

    trials = [trial_config("grpo", seed=s, profile={"steps": 4, "test_freq": 1}) for s in range(3)]
    names = [trial_name(t) for t in trials]
    plan = ExperimentPlan(name="torn", kind="compare", spec="test", profile="local", scale="1.5b", seeds=[0, 1, 2],
                          steps=4, max_concurrent=1,
                          trials=[PlannedTrial(name=n, label=n, trial=t) for n, t in zip(names, trials)])
    exp_dir = tmp_path / "torn"
    experiment = ExperimentDir(exp_dir)
    experiment.save_plan(plan)
    experiment.trial(names[1]).write_status({"state": "succeeded", "attempts": []})
    tune_dir = exp_dir / "tune"
    tune_dir.mkdir()
    (tune_dir / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{\\"config')  # cut off

    tuner = build_tuner(plan, exp_dir, restore=True)

    aside = list(exp_dir.glob("tune.unreadable-*"))
    assert len(aside) == 1 and (aside[0] / "experiment_state-2026-01-01_00-00-00.json").is_file()
    assert tuner._local_tuner._param_space["trial"] == {"grid_search": [names[0], names[2]]}
    err = capsys.readouterr().err
    assert "unreadable" in err and "2 unfinished trial(s)" in err and "not whole JSON" in err


def test_tunes_pickled_search_state_is_whole_or_torn_never_called_json(tmp_path):
    """Tune pickles its search state into ``basic-variant-state-*.json``: a whole one passes the check (a JSON
    reading of it once sent every ``maspo resume`` to a fresh experiment), a cut-off one does not."""
    import pickle

    from orchestrator.tune_runner import _check_tune_state

    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    state = tmp_path / "basic-variant-state-2026-01-01_00-00-00.json"
    whole = pickle.dumps({"_iterators": [], "_trial_generator": list(range(50)), "_finished": False}, protocol=5)
    state.write_bytes(whole)
    _check_tune_state(tmp_path)
    for torn in (whole[: len(whole) // 2], b""):
        state.write_bytes(torn)
        with pytest.raises(ValueError, match="not a whole pickle"):
            _check_tune_state(tmp_path)


class _GoneJobs:
    """A job client of a cluster that lists no job of the trial; ``info`` is what it says of the last job."""

    def __init__(self, info=None):
        self.info = info

    def list_jobs(self):
        return []

    def get_job_info(self, submission_id):
        if self.info is None:
            raise RuntimeError(f"job {submission_id} not found")  # a killed local cluster's job: gone with it
        return self.info


def _lost_attempt(tmp_path, started: float):
    files = ExperimentDir(tmp_path / "exp").trial("t")
    attempt = files.attempt_dir(1)
    attempt.mkdir(parents=True)
    status = {"state": "running", "attempts": [{"attempt": 1, "submission_id": "t-a1", "started": started,
                                                "metrics_path": str(attempt / "metrics.jsonl")}]}
    return files, attempt, status


def test_a_job_found_ended_by_resume_ends_when_it_last_wrote_not_when_found(tmp_path):
    """A driver killed at 04:20 and resumed at 05:08 once gave its trial 49 minutes of wall time and GPU-hours
    for nothing: the lost attempt now ends at the job's last write (or the cluster's own end time)."""
    from types import SimpleNamespace

    from orchestrator.tune_runner import _end_previous_jobs

    now = time.time()
    files, attempt, status = _lost_attempt(tmp_path, started=now - 3000)
    (attempt / "metrics.jsonl").write_text('{"step": 0}\n')
    os.utime(attempt / "metrics.jsonl", (now - 2900, now - 2900))  # the job's last sign of life
    files.write_status(status)  # the controller's own file, rewritten now: not the job's
    lost = _end_previous_jobs(_GoneJobs(), {"maspo_trial": "t"}, status, files)
    assert lost["ended_by"] == "found ended by resume" and lost["job_status"] == "STOPPED"
    assert lost["ended"] == pytest.approx(now - 2900, abs=1)
    files.write_status(status)
    assert files.wall_seconds() == pytest.approx(100, abs=1)

    files, attempt, status = _lost_attempt(tmp_path / "b", started=now - 3000)
    info = SimpleNamespace(status=SimpleNamespace(value="SUCCEEDED"), end_time=(now - 2500) * 1000)
    lost = _end_previous_jobs(_GoneJobs(info), {"maspo_trial": "t"}, status, files)
    assert lost["job_status"] == "SUCCEEDED" and lost["ended"] == pytest.approx(now - 2500, abs=1)

    files, attempt, status = _lost_attempt(tmp_path / "c", started=now - 3000)  # wrote nothing at all
    assert _end_previous_jobs(_GoneJobs(), {"maspo_trial": "t"}, status, files)["ended"] == now - 3000
