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


def _answers_prometheus(port: int, wait_s: float = 60) -> bool:
    """Whether a Prometheus exporter answers on 127.0.0.1:port within ``wait_s`` (the dashboard head starts its
    own a few seconds after the job agent answers)."""
    import requests

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            if response.ok and "# HELP" in response.text:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


def test_free_ports_are_distinct_and_never_one_of_rays_fixed_ports(monkeypatch):
    from orchestrator import cluster

    assert {6379, 8265, 10001, 52365, 44217, 44227} <= cluster.ray_fixed_ports()  # Ray 2.60's defaults
    offered = iter([44227, 6379, 40001, 44217, 40002, 8265, 40003])

    class FakeSocket:  # the OS hands out Ray's fixed ports first; free_ports must skip them
        def __init__(self):
            self.port = next(offered)

        def bind(self, address):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            pass

    monkeypatch.setattr(cluster.socket, "socket", FakeSocket)
    assert cluster.free_ports(3) == [40001, 40002, 40003]
    monkeypatch.undo()
    ports = cluster.free_ports(11)
    assert len(set(ports)) == 11 and not set(ports) & cluster.ray_fixed_ports()


@pytest.mark.slow
def test_stop_ends_the_whole_cluster_quickly():
    from orchestrator.cluster import LocalRayCluster, ray_fixed_ports

    cluster = LocalRayCluster().start()
    sid = cluster.process.pid  # ray start leads its own session
    assert _session_alive(sid)
    # the dashboard head's Prometheus server is on the port we chose, not on Ray's fixed 44227 (where it once met
    # our runtime-env agent: every job then failed with "HTTP 405 ... use OPTIONS or GET")
    assert ray_fixed_ports().isdisjoint(cluster.env[k] for k in ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT"))
    assert _answers_prometheus(cluster.dashboard_metrics_port), "the dashboard's metrics are not on our port"
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


def client_jobs(cluster) -> list:
    return cluster.job_client().list_jobs()


UNAUTHENTICATED_INIT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
except Exception as err:
    print("REFUSED", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    sys.exit(0)
print("ACCEPTED", ray.cluster_resources())
sys.exit(1)
"""

JOB_ENTRYPOINT = f"{sys.executable} -c \"import os, ray; ray.init(); print('JOB-OK', ray.cluster_resources()['CPU']); " \
                 "print(sorted(os.environ.items()))\""


@pytest.mark.slow
def test_the_private_cluster_refuses_clients_without_its_token(tmp_path):
    """Token auth stays on: a random token per cluster in a 0600 file, clients given its path (never the token),
    jobs run, and a local user without the token can neither submit a job nor connect a driver."""
    import os
    import stat

    import requests
    from ray.job_submission import JobStatus

    from orchestrator.cluster import LocalRayCluster

    cluster = LocalRayCluster(num_cpus=2, num_gpus=0, log_dir=tmp_path)
    try:
        cluster.start()
        token = cluster.token_path.read_text().strip()
        assert len(token) == 64 and stat.S_IMODE(cluster.token_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(cluster.token_path.parent.stat().st_mode) == 0o700
        assert cluster.token_path.parent != cluster.temp_dir and cluster.token_path.parent.parent == Path("/tmp")
        assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(cluster.token_path)  # this process is its client
        # the job API: refused without the token (401) or with a wrong one (403)
        jobs = f"{cluster.dashboard_url}/api/jobs/"
        assert requests.get(jobs, timeout=30).status_code == 401
        assert requests.get(jobs, timeout=30, headers={"Authorization": "Bearer " + "0" * 64}).status_code == 403
        assert requests.get(jobs, timeout=30, headers=cluster.auth_headers()).status_code == 200
        # Ray's own job client, as another local user would run it (no token in its env or home): refused
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        out = subprocess.run([sys.executable, "-c", "import sys; from ray.job_submission import "
                              "JobSubmissionClient as C; print('SUBMITTED', C(sys.argv[1]).submit_job(entrypoint='id'))",
                              cluster.dashboard_url], env={**env, "HOME": str(tmp_path)},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and "SUBMITTED" not in out.stdout, out.stdout
        assert client_jobs(cluster) == []
        # a driver without the token is refused by the GCS
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        out = subprocess.run([sys.executable, "-c", UNAUTHENTICATED_INIT, cluster.address],
                             env={**env, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"},
                             capture_output=True, text=True, timeout=300)
        assert "REFUSED" in out.stdout and out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        # with it, a job runs and its own ray.init connects; its environment holds the path, not the token
        client = cluster.job_client()
        job = client.submit_job(entrypoint=JOB_ENTRYPOINT)
        deadline = time.monotonic() + 300
        while not client.get_job_status(job).is_terminal():
            assert time.monotonic() < deadline, "the job did not end in 300 s"
            time.sleep(0.5)
        logs = client.get_job_logs(job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED and "JOB-OK" in logs, logs[-2000:]
        assert str(cluster.token_path) in logs and token not in logs
        assert token not in (tmp_path / "ray-start.log").read_text()
        session_logs = [p for p in cluster.temp_dir.rglob("*") if p.is_file()]
        assert session_logs and not [p for p in session_logs if token.encode() in p.read_bytes()]
    finally:
        cluster.stop()
    assert os.environ.get("RAY_AUTH_TOKEN_PATH") != str(cluster.token_path)  # the client env is restored
    assert not cluster.token_path.parent.exists()


def test_a_cluster_token_is_private_random_and_reaches_rays_clients_by_path(monkeypatch):
    """Without starting Ray: the token file and its directory are the user's alone, the cluster's processes get its
    path (not the token, and not a user's own RAY_AUTH_TOKEN), and Ray's HTTP client in this process sends it."""
    import os
    import shutil
    import stat

    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    from orchestrator.cluster import LocalRayCluster

    monkeypatch.setenv("RAY_AUTH_TOKEN", "a-users-own-token-for-another-cluster")
    clusters = [LocalRayCluster(num_cpus=1, num_gpus=0) for _ in range(2)]
    try:
        for cluster in clusters:
            cluster._write_token()
        tokens = [c.token_path.read_text() for c in clusters]
        assert tokens[0] != tokens[1] and all(len(t) == 64 and int(t, 16) for t in tokens)
        for cluster in clusters:
            assert stat.S_IMODE(cluster.token_path.stat().st_mode) == 0o600
            assert stat.S_IMODE(cluster.auth_dir.stat().st_mode) == 0o700
            assert cluster.env["RAY_AUTH_MODE"] == "token" and cluster.env["RAY_AUTH_TOKEN_PATH"] == str(cluster.token_path)
            assert "RAY_AUTH_TOKEN" not in cluster.env and not any(t in v for v in cluster.env.values() for t in tokens)
        first = clusters[0]
        first._use_as_client()
        assert "RAY_AUTH_TOKEN" not in os.environ
        sent = get_auth_headers_if_auth_enabled({})
        assert {k.lower(): v for k, v in sent.items()} == {"authorization": f"Bearer {tokens[0]}"}
        assert first.auth_headers() == {"Authorization": f"Bearer {tokens[0]}"}
        first._restore_client_env()
        assert os.environ["RAY_AUTH_TOKEN"] == "a-users-own-token-for-another-cluster"
        assert "RAY_AUTH_TOKEN_PATH" not in os.environ or os.environ["RAY_AUTH_TOKEN_PATH"] != str(first.token_path)
    finally:
        for cluster in clusters:
            shutil.rmtree(cluster.auth_dir, ignore_errors=True)
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        from orchestrator.cluster import _reload_ray_auth

        monkeypatch.undo()
        _reload_ray_auth()


def test_a_private_cluster_that_does_not_start_is_one_line_naming_its_log(tmp_path, monkeypatch):
    """``ray start`` failing (a machine too loaded for Ray's fixed start-up limits, a broken install) ends the
    command with one line that names the log and exit code 1, not a traceback; nothing of the try is left."""
    from orchestrator.cluster import LocalRayCluster, LocalRayStartFailed

    cluster = LocalRayCluster(num_cpus=1, num_gpus=0, log_dir=tmp_path)
    monkeypatch.setattr(cluster, "_command", lambda: [sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    try:
        with pytest.raises(LocalRayStartFailed) as failed:
            cluster.start()
    finally:
        cluster.stop()
    message = str(failed.value)
    assert "\n" not in message and "exited with 3" in message and str(tmp_path / "ray-start.log") in message
    assert failed.value.exit_code == 1 and "boom" in (tmp_path / "ray-start.log").read_text()
    assert not cluster.auth_dir.exists() and not cluster.temp_dir.exists()
