"""One verl run as one Ray Job: submit it, tail its JSONL while it runs, stop it if we leave early, keep its log.

Both ``maspo run`` (one trial on a private local Ray) and every Tune trial controller of a sweep or comparison
run their verl job through :class:`JobRun`; docs/orchestration.md says why a trial is a Ray Job and not a
Tune trainable that runs verl in-process.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.store import JsonlTail, write_text_atomic

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_SECRET_WORDS = {"KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS", "NETRC"}


def is_secret(name: str) -> bool:
    """A variable whose name says it holds a secret (``WANDB_API_KEY``, ``RAY_AUTH_TOKEN``, ...)."""
    return bool(_SECRET_WORDS & set(name.upper().split("_")))


def redacted(env: dict[str, str]) -> dict[str, str]:
    """The environment as it may be written to a file: no variable whose name says it holds a secret."""
    return {k: v for k, v in env.items() if not is_secret(k)}


@dataclass
class TrialJob:
    """The rendered verl command of one trial attempt: Hydra overrides and the job's environment."""

    overrides: list[str]
    env: dict[str, str]
    out_dir: Path
    metrics_path: Path  # where verl's ``file`` logger writes (VERL_FILE_LOGGER_PATH)

    module: str = "verl.trainer.main_ppo"
    # custom resources the job's driver must find on a node before it starts (none for verl: its driver runs
    # anywhere and takes GPUs with its own placement groups)
    entrypoint_resources: dict[str, float] | None = None

    def entrypoint(self, python: str = sys.executable) -> str:
        return " ".join([shlex.quote(python), "-m", self.module, *map(shlex.quote, self.overrides)])

    def command_line(self) -> str:
        """As a user would type it (``python -m ...``), for dry runs."""
        return self.entrypoint(python="python")


class JobStartTimeout(RuntimeError):
    """A job still PENDING when its start timeout ran out; :class:`JobRun` stopped it."""


class JobRun:
    """Run one :class:`TrialJob` on a Ray cluster through a ``JobSubmissionClient``.

    ``run(on_records)`` submits the job, calls ``on_records`` with every batch of new JSONL records while the job
    runs (and once more after it ended), and returns the job's final status. If anything interrupts the loop
    (Ctrl-C, a Tune stop, an error in the callback), the job is stopped in ``finally``, so no verl run outlives
    the process that started it; the job's log is saved to ``log_path`` either way.

    A job that is still PENDING ``start_timeout_s`` after its submission (its runtime env cannot be built, or
    the resources its entrypoint asks for do not exist) is stopped, and ``run`` raises :class:`JobStartTimeout`
    naming the job and Ray's reason. (Ray delivers the stop when the job's supervisor starts, so such a job
    never runs, but Ray lists it as PENDING until then: docs/orchestration.md#job-start-timeout.) ``message`` holds Ray's last word on the job (why it failed, say).
    """

    def __init__(self, client, job: TrialJob, submission_id: str, *, log_path: Path,
                 metadata: dict[str, str] | None = None, poll_s: float = 1.0, start_timeout_s: float | None = None):
        self.client, self.job, self.submission_id = client, job, submission_id
        self.log_path, self.metadata, self.poll_s = log_path, metadata or {}, poll_s
        self.start_timeout_s = start_timeout_s
        self.status = "PENDING"
        self.message = ""

    def submit(self) -> None:
        extra = {"entrypoint_resources": self.job.entrypoint_resources} if self.job.entrypoint_resources else {}
        self.client.submit_job(entrypoint=self.job.entrypoint(), submission_id=self.submission_id,
                               runtime_env={"env_vars": self.job.env}, metadata=self.metadata, **extra)

    def run(self, on_records: Callable[[list[dict]], None]) -> str:
        self.submit()
        submitted = time.monotonic()
        tail = JsonlTail(self.job.metrics_path)
        try:
            while True:
                records = tail.read()
                if records:
                    on_records(records)
                self.status = str(self.client.get_job_status(self.submission_id).value)
                if self.status == "PENDING" and self.start_timeout_s is not None \
                        and time.monotonic() - submitted > self.start_timeout_s:
                    raise self._start_timeout()
                if self.status in TERMINAL:
                    records = tail.read()  # what verl wrote between the last read and its end
                    if records:
                        on_records(records)
                    break
                time.sleep(self.poll_s)
        finally:
            if self.status not in TERMINAL:
                try:
                    self.client.stop_job(self.submission_id)
                    self.status = "STOPPED"
                except Exception:  # noqa: BLE001 (the cluster may be going away with us)
                    pass
            if self.status != "SUCCEEDED" and not self.message:
                self.message = self._ray_message()
            self.save_log()
        return self.status

    def _ray_message(self) -> str:
        try:
            return str(self.client.get_job_info(self.submission_id).message or "")
        except Exception:  # noqa: BLE001 (a message is a courtesy; the status is what counts)
            return ""

    def _start_timeout(self) -> JobStartTimeout:
        self.message = self._ray_message() or "Job has not started yet."
        asked = f" (its entrypoint asks for {self.job.entrypoint_resources})" if self.job.entrypoint_resources else ""
        return JobStartTimeout(
            f"Ray job {self.submission_id} did not start within {self.start_timeout_s:g} s and was stopped: "
            f"still PENDING{asked}. Ray says: {self.message} A job stays PENDING while its runtime env is built "
            f"or while no node has the resources its entrypoint asks for.")

    def save_log(self) -> None:
        try:
            write_text_atomic(self.log_path, self.client.get_job_logs(self.submission_id))
        except Exception:  # noqa: BLE001 (a log we cannot fetch must not hide the job's status)
            pass


def stop_jobs(client, metadata: dict[str, str], wait_s: float = 0.0, poll_s: float = 0.5) -> list[str]:
    """Stop every job still running whose metadata has all of ``metadata`` (a killed controller's job); with
    ``wait_s``, wait until each has ended (a TimeoutError names those that did not)."""
    stopped = []
    for info in client.list_jobs():
        meta = info.metadata or {}
        if all(meta.get(k) == v for k, v in metadata.items()) and str(info.status.value) not in TERMINAL \
                and info.submission_id:
            client.stop_job(info.submission_id)
            stopped.append(info.submission_id)
    deadline = time.monotonic() + wait_s
    running = list(stopped) if wait_s > 0 else []
    while running:
        # a stopped job still PENDING never runs its entrypoint (Ray ends it before, if it ever starts), so it
        # cannot write the trial's checkpoints: only a started one is waited for (docs/orchestration.md#job-start-timeout)
        running = [s for s in running if str(client.get_job_status(s).value) not in (*TERMINAL, "PENDING")]
        if running and time.monotonic() > deadline:
            raise TimeoutError(f"job(s) {', '.join(running)} did not end within {wait_s:.0f} s of being stopped")
        if running:
            time.sleep(poll_s)
    return stopped
