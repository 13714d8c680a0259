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

SIGKILL cannot be caught: a driver killed so (the OOM killer, ``kill -9``) leaves its cluster and the cluster's
verl jobs running. So a cluster started for an experiment directory records itself there (``local-ray.json``,
written by :mod:`orchestrator.store`: the pid and session of ``ray start``, its temp dir, ports, host) and every
process of it carries ``MASPO_LOCAL_RAY=<temp dir>`` in its environment (Ray passes its environment on to GCS,
raylet, workers and the jobs' entrypoints). The next command on that directory, which holds the experiment's
lock and so knows the recorded cluster's driver is dead, stops the orphan before it starts its own
(:func:`stop_orphaned_cluster`): SIGTERM to every process of the cluster's session or with its marker (the jobs'
entrypoints, in sessions of their own, included), then SIGKILL to whatever is left.
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

MARKER = "MASPO_LOCAL_RAY"  # in the environment of every process of a private local cluster: its temp dir


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
                 resources: dict[str, float] | None = None, record_dir: Path | None = None):
        """``record_dir``: the experiment (or ``maspo run``) directory the cluster works for; a cluster a killed
        command left recorded there is stopped first, and this one is recorded there while it runs."""
        self.num_cpus, self.num_gpus, self.start_timeout = num_cpus, num_gpus, start_timeout
        self.record_dir = record_dir
        self.orphan: dict | None = None  # what start() found and stopped of a killed command's cluster
        self.resources = dict(resources or {})
        # unix socket paths must stay short: a short temp dir under /tmp
        self.temp_dir = Path(tempfile.mkdtemp(prefix="maspo-ray-", dir="/tmp"))
        self.log_path = (log_dir or self.temp_dir) / "ray-start.log"
        self.process: subprocess.Popen | None = None
        (self.gcs_port, self.dashboard_port, self.agent_port, self.agent_grpc_port, self.runtime_env_port,
         self.metrics_port, self.client_port, self.node_manager_port, self.object_manager_port) = free_ports(9)
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    MARKER: str(self.temp_dir)}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    STARTS = 3  # ray start tries: Ray gives its raylet a fixed 30 s to register, too short on a loaded machine

    def start(self) -> LocalRayCluster:
        terminate_as_interrupt()  # a killed driver still stops this cluster (see the module docstring)
        if self.record_dir is not None:
            self.orphan = stop_orphaned_cluster(self.record_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for start in range(1, self.STARTS + 1):
            log = open(self.log_path, "w" if start == 1 else "a")
            self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
            if self.record_dir is not None:
                from orchestrator.store import process_started, write_local_ray_record

                write_local_ray_record(self.record_dir, {
                    "pid": self.process.pid, "session": self.process.pid, "host": socket.gethostname(),
                    "pid_started": process_started(self.process.pid), "temp_dir": str(self.temp_dir),
                    "address": self.address, "dashboard_url": self.dashboard_url, "driver_pid": os.getpid(),
                    "started": time.time()})
            try:
                self._wait_for_job_agent()
                return self
            except RuntimeError:
                if start == self.STARTS or "timed out during startup" not in self.log_path.read_text(errors="replace"):
                    raise
            try:  # what is left of the failed start, then again on fresh ports
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            (self.gcs_port, self.dashboard_port, self.agent_port, self.agent_grpc_port, self.runtime_env_port,
             self.metrics_port, self.client_port, self.node_manager_port, self.object_manager_port) = free_ports(9)
        return self

    def _command(self) -> list[str]:
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
        return command

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
        if self.record_dir is not None and self.process is not None:
            from orchestrator.store import clear_local_ray_record, local_ray_record

            if local_ray_record(self.record_dir).get("temp_dir") == str(self.temp_dir):
                clear_local_ray_record(self.record_dir)

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------
# a killed command's cluster


def cluster_processes(temp_dir: str, session: int | None) -> dict[int, str]:
    """The live processes of a private cluster, {pid: command line}: those whose environment carries its marker,
    and those left in the session of its ``ray start`` (Ray's dashboard modules rewrite their environment). Only
    this user's processes are readable; this process and its own session are never counted."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    entry, own_session, found = f"{MARKER}={temp_dir}".encode(), os.getsid(0), {}
    for path in proc.iterdir():
        if not path.name.isdigit() or int(path.name) == os.getpid():
            continue
        try:
            state, _, _, sid = (path / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            try:
                tagged = entry in (path / "environ").read_bytes().split(b"\0")
            except PermissionError:  # another user's
                continue
            cmdline = (path / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):  # gone meanwhile
            continue
        if state != "Z" and (tagged or (session is not None and int(sid) == session != own_session)):
            found[int(path.name)] = cmdline
    return found


def stop_orphaned_cluster(directory: Path, wait_s: float = 10) -> dict | None:
    """Stop the private cluster a killed command recorded in ``directory`` (see the module docstring).

    The caller holds the directory's lock, so a recorded cluster's driver is gone. Returns what was found
    (the record, with ``processes``: how many of its processes still ran), or None when nothing was recorded.
    A cluster recorded on another host cannot be reached from here: its record stays, and a
    :class:`~orchestrator.errors.UserError` says so.
    """
    from orchestrator.errors import UserError
    from orchestrator.store import clear_local_ray_record, local_ray_record

    record = local_ray_record(directory)
    if not record.get("temp_dir"):
        return None
    if record.get("host") != socket.gethostname():
        raise UserError(f"{directory / 'local-ray.json'} records a private Ray cluster on host {record.get('host')}, "
                        f"started by a command that no longer holds the experiment; stop it there (its processes "
                        f"carry {MARKER}={record['temp_dir']}), then delete that file")
    temp_dir, session = str(record["temp_dir"]), record.get("session")
    session = int(session) if isinstance(session, int) else None
    if session is not None and record.get("pid_started") is not None:
        from orchestrator.store import process_started

        leader = process_started(session)  # a live leader must be our ray start, not a process that got its pid
        if leader is not None and abs(leader - float(record["pid_started"])) >= 2.0:
            session = None
    found = cluster_processes(temp_dir, session)
    record["processes"] = len(found)
    # SIGTERM to all of it at once (verl and the stand-in end on it; ray start, GCS and raylet too), then SIGKILL to
    # whatever is left: a graceful stop through the GCS and the job API would only wait on a driver that is gone
    for pid in found:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    left = cluster_processes(temp_dir, session)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = cluster_processes(temp_dir, session)
    for _ in range(3):
        if not left:
            break
        for pid in left:
            _signal(pid, signal.SIGKILL)
        time.sleep(1.0)
        left = cluster_processes(temp_dir, session)
    record["left"] = len(left)
    if temp_dir.startswith("/tmp/maspo-ray-"):
        shutil.rmtree(temp_dir, ignore_errors=True)
    clear_local_ray_record(directory)
    return record


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
