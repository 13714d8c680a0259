"""Ray clusters the orchestrator talks to. For now: a private local Ray for the local profile.

The local cluster is ``ray start --head --block`` in its own process session with every port chosen
explicitly (free ports on 127.0.0.1) and its own temp dir, so another Ray on the same machine can neither
receive our jobs nor be stopped by us (``ray stop`` would kill every Ray of the user). It declares fake GPU
slots (verl checks for "GPU" resources before it places workers) and 16 logical CPUs (verl and
TransferQueue ask for whole CPUs per actor).

It listens on 127.0.0.1 only, but on a shared login node every local user can reach 127.0.0.1, and a Ray Job
is code run as the experiment's owner. So Ray's token authentication is ON (``RAY_AUTH_MODE=token``): each
cluster gets a fresh random token (256 bits) in a file only its owner can read (mode 0600, in a 0700 directory of
its own under /tmp: Ray makes its temp dir world-writable).
Its processes, and through them the trial controllers and the verl jobs, find it through
``RAY_AUTH_TOKEN_PATH`` (a path: no process environment, ``ray job list`` or log holds the token itself); the
driver's clients (``ray.init``, the job submission client) get the same two variables while the cluster runs
(:meth:`LocalRayCluster.client_env`). GCS, raylet and dashboard refuse a client without the token
(tests/test_local_cluster.py).

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
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.errors import UserError

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


def _reload_ray_auth() -> None:
    """Ray caches the auth mode (its config) and the token (its loader) per process: reload both from the
    environment (what ``ray.init`` itself does when it turns token auth on)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # Ray not installed in this process: nothing cached
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def ray_fixed_ports() -> frozenset[int]:
    """Ports Ray binds at fixed numbers unless told otherwise, read from Ray's own constants: GCS, dashboard,
    dashboard agent, and the Prometheus servers of the dashboard head and the autoscaler; plus the client server's
    10001, which ``ray start`` hard-codes (ray/scripts/scripts.py). A port picked for one of our cluster's listeners
    must be none of them: a runtime-env agent given the dashboard head's metrics port meets its Prometheus server
    there and every job fails with "HTTP 405 ... use OPTIONS or GET" (docs/orchestration.md#local-ray-ports)."""
    from ray._private import ray_constants
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    return frozenset({ray_constants.DEFAULT_PORT, ray_constants.DEFAULT_DASHBOARD_PORT, 10001,
                      ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT, DASHBOARD_METRIC_PORT,
                      AUTOSCALER_METRIC_PORT})


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now, none of them one of :func:`ray_fixed_ports`."""
    fixed = ray_fixed_ports()
    sockets, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        port = s.getsockname()[1]
        if port not in fixed:
            ports.append(port)
    for s in sockets:
        s.close()
    return ports


class LocalRayStartFailed(UserError):
    """``ray start`` of the private cluster failed (its log says why; a machine too loaded for Ray's fixed
    start-up limits is the usual cause). Not the user's mistake: one line naming the log, exit code 1."""

    exit_code = 1


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
        # not in temp_dir: Ray makes that world-writable (0777, no sticky bit), where another user could swap the
        # file; a directory of its own in /tmp (sticky) with mode 0700 is this user's alone
        self.auth_dir = Path(tempfile.mkdtemp(prefix="maspo-ray-auth-", dir="/tmp"))
        self.token_path = self.auth_dir / "token"
        self.env = {**os.environ, **self.client_env(), "RAY_USAGE_STATS_ENABLED": "0",
                    MARKER: str(self.temp_dir)}
        self.env.pop("RAY_AUTH_TOKEN", None)  # a user's token for another cluster would take precedence
        self._pick_ports()
        self._saved_env: dict[str, str | None] | None = None

    def _pick_ports(self) -> None:
        """Every port the cluster listens on, chosen here: the nine ``ray start`` takes as flags and the two
        Prometheus servers Ray would otherwise put on fixed ports (``ray_fixed_ports``), which it reads from the
        environment. Fixed ports would clash with a second cluster on the machine, or with one of our own picks."""
        (self.gcs_port, self.dashboard_port, self.agent_port, self.agent_grpc_port, self.runtime_env_port,
         self.metrics_port, self.client_port, self.node_manager_port, self.object_manager_port,
         self.dashboard_metrics_port, self.autoscaler_metrics_port) = free_ports(11)
        self.env["DASHBOARD_METRIC_PORT"] = str(self.dashboard_metrics_port)
        self.env["AUTOSCALER_METRIC_PORT"] = str(self.autoscaler_metrics_port)

    def client_env(self) -> dict[str, str]:
        """What a client of this cluster needs in its environment: token mode, and where the token is."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def _write_token(self) -> None:
        """A fresh random token, readable by this user only (created 0600, never logged)."""
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def _use_as_client(self) -> None:
        """Make this process a client of this cluster: its token variables in ``os.environ``, and Ray's cached
        config and token reloaded from them (``ray.init`` and Ray's HTTP clients read them there)."""
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in (*self.client_env(), "RAY_AUTH_TOKEN")}
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update(self.client_env())
        _reload_ray_auth()

    def _restore_client_env(self) -> None:
        if self._saved_env is None:
            return
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = None
        _reload_ray_auth()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    STARTS = 3  # ray start tries: Ray gives its raylet a fixed 30 s to register, too short on a loaded machine

    def start(self) -> LocalRayCluster:
        terminate_as_interrupt()  # a killed driver still stops this cluster (see the module docstring)
        self._write_token()
        self._use_as_client()
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
                    "auth_dir": str(self.auth_dir),
                    "address": self.address, "dashboard_url": self.dashboard_url, "driver_pid": os.getpid(),
                    "started": time.time()})
            try:
                self._wait_for_job_agent()
                return self
            except (RuntimeError, TimeoutError) as err:
                if start == self.STARTS or "timed out during startup" not in self.log_path.read_text(errors="replace"):
                    raise LocalRayStartFailed(f"the private local Ray cluster did not start: {err}") from None
            try:  # what is left of the failed start, then again on fresh ports
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._pick_ports()
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
                response = requests.get(f"{self.dashboard_url}/api/jobs/", timeout=2, headers=self.auth_headers())
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

        return JobSubmissionClient(self.dashboard_url, headers=self.auth_headers())

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
        shutil.rmtree(self.auth_dir, ignore_errors=True)
        self._restore_client_env()

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
    if str(record.get("auth_dir", "")).startswith("/tmp/maspo-ray-auth-"):  # its token, which no process uses now
        shutil.rmtree(record["auth_dir"], ignore_errors=True)
    clear_local_ray_record(directory)
    return record


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
