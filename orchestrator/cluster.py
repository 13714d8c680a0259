"""Ray clusters the orchestrator talks to. For now: a private local Ray for the local profile.

The local cluster is ``ray start --head --block`` in its own process session with every port chosen
explicitly (free ports on 127.0.0.1) and its own temp dir, so another Ray on the same machine can neither
receive our jobs nor be stopped by us (``ray stop`` would kill every Ray of the user). It declares fake GPU
slots (verl checks for "GPU" resources before it places workers) and 16 logical CPUs (verl and
TransferQueue ask for whole CPUs per actor). Token authentication is disabled for it: it listens on
127.0.0.1 only and lives as long as the command that started it.

"As long as the command" includes being killed: the cluster runs in a session of its own (a Ctrl-C in the
terminal must reach only our driver, which then stops jobs and cluster in order), so a driver that died of
SIGTERM or SIGHUP without cleaning up would leave it and its verl jobs running. ``terminate_as_interrupt``
makes those two signals a Ctrl-C: Tune stops the experiment and saves its state (``maspo resume`` continues it),
``maspo run`` stops its job, and the cluster is stopped on the way out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _interrupt(signum, frame) -> None:
    """SIGTERM / SIGHUP: do what Ctrl-C does now (Tune's graceful stop while an experiment runs, else
    KeyboardInterrupt), so every ``finally`` runs."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a background job of a non-interactive shell) or default: interrupt anyway
        raise KeyboardInterrupt


def terminate_as_interrupt() -> None:
    """Treat SIGTERM and SIGHUP like SIGINT in this process (main thread only; idempotent)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(sig)
        # replace the default (SIG_DFL, or None: set outside Python) and ray.init's driver handler (``sys.exit``
        # from wherever the main thread is, which Ray's C++ layer turns into an immediate death); leave any other
        # program's handler, and SIG_IGN (``nohup``), alone
        if current in (signal.SIG_DFL, _interrupt, None) or getattr(current, "__module__", "").startswith("ray."):
            signal.signal(sig, _interrupt)


def free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class LocalRayCluster:
    """A private single-node Ray cluster; ``with LocalRayCluster() as ray: ray.job_client()``."""

    def __init__(self, num_cpus: int = 16, num_gpus: int = 1, log_dir: Path | None = None, start_timeout: float = 180,
                 resources: dict[str, float] | None = None):
        self.num_cpus, self.num_gpus, self.start_timeout = num_cpus, num_gpus, start_timeout
        self.resources = dict(resources or {})
        # unix socket paths must stay short: a short temp dir under /tmp
        self.temp_dir = Path(tempfile.mkdtemp(prefix="maspo-ray-", dir="/tmp"))
        self.log_path = (log_dir or self.temp_dir) / "ray-start.log"
        self.process: subprocess.Popen | None = None
        (self.gcs_port, self.dashboard_port, self.agent_port, self.agent_grpc_port, self.runtime_env_port,
         self.metrics_port, self.client_port, self.node_manager_port, self.object_manager_port) = free_ports(9)
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> LocalRayCluster:
        terminate_as_interrupt()  # a killed driver still stops this cluster (see the module docstring)
        ray = str(Path(sys.executable).with_name("ray"))
        command = [
            ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={self.agent_port}", f"--dashboard-agent-grpc-port={self.agent_grpc_port}",
            f"--runtime-env-agent-port={self.runtime_env_port}", f"--metrics-export-port={self.metrics_port}",
            f"--ray-client-server-port={self.client_port}", f"--node-manager-port={self.node_manager_port}",
            f"--object-manager-port={self.object_manager_port}", f"--temp-dir={self.temp_dir}",
            f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}", "--disable-usage-stats",
        ]
        if self.resources:
            command.append(f"--resources={json.dumps(self.resources)}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        self._wait_for_job_agent()
        return self

    def _wait_for_job_agent(self) -> None:
        """Jobs can be submitted once the dashboard's job agent answers (it starts after the head)."""
        import requests

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}; see {self.log_path}")
            try:
                response = requests.get(f"{self.dashboard_url}/api/jobs/", timeout=2)
                if response.status_code == 200 and self._agent_ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the local Ray did not come up in {self.start_timeout:.0f} s; see {self.log_path}")

    def _agent_ready(self) -> bool:
        import requests

        try:
            return requests.get(f"http://127.0.0.1:{self.agent_port}/api/local_raylet_healthz", timeout=2).ok
        except requests.RequestException:
            return False

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url)

    def stop_jobs(self, wait_s: float = 20) -> None:
        """Stop every job still running on this cluster and wait for them to end. A job's entrypoint runs in a
        session of its own (Ray's job supervisor starts it so), so stopping the cluster alone would orphan it."""
        try:
            client = self.job_client()
            running = [j.submission_id for j in client.list_jobs() if not j.status.is_terminal()]
            for submission_id in running:
                client.stop_job(submission_id)
            deadline = time.monotonic() + wait_s
            while running and time.monotonic() < deadline:
                time.sleep(0.5)
                running = [s for s in running if not client.get_job_status(s).is_terminal()]
        except Exception:  # the cluster is already going down: nothing to ask it
            pass

    def stop(self) -> None:
        """Stop the jobs, then the node. SIGTERM goes to ``ray start`` alone: it drains the node through the GCS
        and stops its processes (about 3 s when idle); a SIGTERM to the whole group would kill the GCS first and
        leave ``ray start`` retrying it for a minute. Whatever is left of the group after that is killed."""
        if self.process is not None and self.process.poll() is None:
            self.stop_jobs()
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=45)  # Ray drains for at most 30 s
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # stragglers of the session, if any
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
