"""The private local Ray cluster: a killed driver does what Ctrl-C does, and stopping leaves nothing behind.

The end-to-end case (SIGTERM to a running experiment) is in tests/test_tune_resume.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

SIGNALLED = """
import os, signal, sys
from orchestrator.cluster import terminate_as_interrupt
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (under nohup, or in CI, it is ignored)
def ray_driver_handler(signum, frame):  # what ray.init installs: sys.exit, which Ray turns into a hard death
    sys.exit(signum)
ray_driver_handler.__module__ = "ray._private.worker"
signal.signal(signal.SIGTERM, ray_driver_handler)
terminate_as_interrupt()
sig = getattr(signal, sys.argv[1])
try:
    os.kill(os.getpid(), sig)
    signal.pause()
except KeyboardInterrupt:
    print("cleaned up after", sys.argv[1])
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_interrupt_like_ctrl_c_even_after_ray_init(sig):
    out = subprocess.run([sys.executable, "-c", SIGNALLED, sig], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and f"cleaned up after {sig}" in out.stdout, out.stdout + out.stderr


def test_another_programs_handler_and_nohup_are_left_alone():
    code = """
import signal
from orchestrator.cluster import terminate_as_interrupt
mine = lambda signum, frame: None
signal.signal(signal.SIGTERM, mine)
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # `nohup maspo sweep ...`: the user asked to survive a hangup
terminate_as_interrupt()
assert signal.getsignal(signal.SIGTERM) is mine
assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def _session_alive(sid: int) -> list[str]:
    alive = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            alive.append(proc.name)
    return alive


@pytest.mark.slow
def test_stop_ends_the_whole_cluster_quickly():
    from orchestrator.cluster import LocalRayCluster

    cluster = LocalRayCluster().start()
    sid = cluster.process.pid  # ray start leads its own session
    assert _session_alive(sid)
    cluster.stop()
    # `ray start` shut the node down itself on SIGTERM (a SIGTERM to the whole group kills the GCS first: then
    # it retries the GCS past stop()'s wait and ends by our SIGKILL)
    assert cluster.process.returncode != -signal.SIGKILL
    assert not cluster.temp_dir.exists()
    for _ in range(40):  # processes of the session that watch the raylet exit on their own, within seconds
        if not _session_alive(sid):
            break
        time.sleep(0.5)
    assert not _session_alive(sid)
