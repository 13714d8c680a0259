"""One command at a time on an experiment (``runs/<NAME>/command.lock``, orchestrator.store.ExperimentLock).

A second ``maspo resume NAME`` or ``maspo sweep --name NAME`` while one runs refuses with one line that names the
running command's pid and host (exit 2); a holder that died, of SIGKILL included, does not keep the lock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
from orchestrator.config.trial import trial_config
from orchestrator.store import LOCK_FILE, ExperimentBusy, ExperimentDir, ExperimentLock, process_started

REPO = Path(__file__).parents[1]
HOLD = """
import sys, time
from pathlib import Path
from orchestrator.store import ExperimentLock
lock = ExperimentLock(Path(sys.argv[1]), "maspo resume held-by-test").acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(directory: Path) -> subprocess.Popen:
    """A process that holds ``directory``'s lock until killed (it prints ``held`` once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _plan(name: str) -> ExperimentPlan:
    trial = trial_config("grpo", seed=0, profile={"steps": 2})
    return ExperimentPlan(name=name, kind="compare", spec="test", profile="local", scale="1.5b", seeds=[0], steps=2,
                          max_concurrent=1, max_failures=0,
                          trials=[PlannedTrial(name=trial_name(trial), label="grpo", trial=trial)])


def _maspo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, timeout=300)


def test_a_second_command_refuses_with_the_holders_pid_and_host(tmp_path):
    exp_dir = tmp_path / "busy"
    ExperimentDir(exp_dir).save_plan(_plan("busy"))
    (exp_dir / "tune").mkdir()  # an experiment that started: what resume continues and sweep refuses to redo
    before = sorted(p.name for p in exp_dir.iterdir())
    holder = _holder(exp_dir)
    try:
        for args in (["resume", "busy", "--root", str(tmp_path)],
                     ["compare", "--baselines", "grpo", "--name", "busy", "--steps", "2", "--root", str(tmp_path)]):
            out = _maspo(*args, cwd=tmp_path)
            assert out.returncode == 2, out.stdout + out.stderr
            assert "Traceback" not in out.stdout + out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1, out.stderr
            assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0]
            assert "maspo resume held-by-test" in lines[0]
        assert holder.poll() is None  # the refusals left the holder alone
        assert json.loads((exp_dir / LOCK_FILE).read_text())["pid"] == holder.pid
        assert sorted(p.name for p in exp_dir.iterdir()) == sorted(before + [LOCK_FILE])  # nothing else written
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_killed_by_sigkill_does_not_keep_the_lock(tmp_path):
    holder = _holder(tmp_path / "exp")
    with pytest.raises(ExperimentBusy, match=f"pid {holder.pid} on host"):
        ExperimentLock(tmp_path / "exp", "second").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / "exp" / LOCK_FILE).read_text())["pid"] == holder.pid  # its record stays
    with ExperimentLock(tmp_path / "exp", "second"):  # taken over
        assert json.loads((tmp_path / "exp" / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (tmp_path / "exp" / LOCK_FILE).read_text() == ""  # released: emptied, never deleted under others


def _record(directory: Path, **holder) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_FILE).write_text(json.dumps({"command": "maspo resume x", "host": socket.gethostname(),
                                                   "started": time.time(), **holder}))


def test_a_record_of_a_dead_or_reused_pid_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _record(tmp_path / "dead", pid=gone.pid)  # a file system where flock said nothing: the record alone
    with ExperimentLock(tmp_path / "dead", "next"):
        assert json.loads((tmp_path / "dead" / LOCK_FILE).read_text())["command"] == "next"
    # the pid is alive but is another process now (it started long after the holder did)
    _record(tmp_path / "reused", pid=os.getppid(), pid_started=process_started(os.getppid()) - 3600)
    with ExperimentLock(tmp_path / "reused", "next"):
        pass


def test_a_live_holder_without_flock_still_refuses(tmp_path):
    """A file system that ignores flock: the record of a live process of this host keeps the lock."""
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _record(tmp_path / "exp", pid=alive.pid, pid_started=process_started(alive.pid))
        with pytest.raises(ExperimentBusy, match=f"pid {alive.pid} on host {socket.gethostname()}"):
            ExperimentLock(tmp_path / "exp", "second").acquire()
    finally:
        alive.kill()
        alive.wait()


def test_a_command_that_wrote_nothing_leaves_no_directory(tmp_path):
    with ExperimentLock(tmp_path / "new", "maspo sweep"):
        assert (tmp_path / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()
    # a refused resume of a name that does not exist leaves nothing either
    out = _maspo("sweep", "--name", "ghost", "--steps", "2", "--resume", "--root", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "nothing to resume" in out.stderr, out.stderr
    assert not (tmp_path / "ghost").exists()


def test_commands_in_sequence_each_take_the_lock(tmp_path):
    for command in ("first", "second", "third"):
        with ExperimentLock(tmp_path / "exp", command) as lock:
            assert lock.holder()["command"] == command


# --------------------------------------------------------------------------------------------------------
# a killed command's private cluster, found through its record and stopped (no Ray needed to check the sweep)

ORPHAN = """
import os, subprocess, sys, time
# like `ray start`: a session of its own; a child in it (a raylet), and one in a session of its own (a job's
# entrypoint, which Ray starts so); one child ignores SIGTERM (only SIGKILL ends it)
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True),
        subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)]
kids[2].stdout.readline()
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(600)
"""


def test_a_recorded_orphan_cluster_is_stopped_whole(tmp_path):
    from orchestrator.cluster import MARKER, cluster_processes, stop_orphaned_cluster
    from orchestrator.store import LOCAL_RAY_FILE, local_ray_record, write_local_ray_record

    temp_dir = f"/tmp/maspo-ray-test-{os.getpid()}"
    os.makedirs(temp_dir, exist_ok=True)
    head = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, MARKER: temp_dir})
    kids = [int(p) for p in head.stdout.readline().split()]
    try:
        write_local_ray_record(tmp_path, {"pid": head.pid, "session": head.pid, "host": socket.gethostname(),
                                          "pid_started": process_started(head.pid), "temp_dir": temp_dir})
        assert set(cluster_processes(temp_dir, head.pid)) == {head.pid, *kids}
        found = stop_orphaned_cluster(tmp_path)
        head.wait(timeout=30)
        assert found["processes"] == 4 and found["left"] == 0
        assert cluster_processes(temp_dir, head.pid) == {}
        for pid in kids:  # reaped by init once their parent died; none may run
            assert process_started(pid) is None or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
        assert not Path(temp_dir).exists() and not (tmp_path / LOCAL_RAY_FILE).exists()
        assert local_ray_record(tmp_path) == {} and stop_orphaned_cluster(tmp_path) is None  # nothing recorded now
    finally:
        for pid in [head.pid, *kids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_orphan_record_of_another_host_is_refused_and_kept(tmp_path):
    from orchestrator.cluster import stop_orphaned_cluster
    from orchestrator.errors import UserError
    from orchestrator.store import LOCAL_RAY_FILE, write_local_ray_record

    write_local_ray_record(tmp_path, {"pid": 1, "session": 1, "host": "elsewhere", "temp_dir": "/tmp/maspo-ray-x"})
    with pytest.raises(UserError, match="on host elsewhere"):
        stop_orphaned_cluster(tmp_path)
    assert (tmp_path / LOCAL_RAY_FILE).exists()
