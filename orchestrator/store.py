"""``runs/<NAME>/`` on disk: the one module that reads and writes an experiment's files.

Layout (docs/architecture.md has the whole picture)::

    runs/<NAME>/
        experiment.json            the plan (orchestrator.config.plan.ExperimentPlan)
        dashboard.html             the local dashboard page
        dashboards.json            the URLs of the published W&B workspace and report
        claims.json                the paper's claims as checks, as last evaluated (``maspo results NAME --claims``)
        command.lock               the command working on the experiment now (pid, host); see ExperimentLock
        local-ray.json             the private local Ray cluster of the command now running (a killed one's, found
                                   by the next command and stopped)
        wandb_synced.json          the offline W&B runs `maspo sync` uploaded (what a second sync leaves out)
        tune/                      Ray Tune's experiment state (what ``maspo resume`` restores)
        trials/<TRIAL>/
            metrics.jsonl          the trial's metric stream: every step once, across retries
            status.json            state, attempts (submission id, start, end, job status), GPUs
            trial.json             the resolved config and the exact verl command of the latest attempt
            attempts/<k>/          one per job submission: verl's own JSONL, the job's log
            checkpoints/           verl checkpoints (local profile; a100: under the profile's checkpoint_root)
            wandb/                 the W&B run

A ``maspo run`` directory is a single trial's directory (``metrics.jsonl`` and ``trial.json`` at its top).

Writes are crash-safe: JSON files are written to a temporary file and renamed over the old one, a metric record
is appended as one newline-terminated line, and every reader skips a line that is not complete JSON (a record
torn by a crash is dropped, not misread). A full disk (``ENOSPC``, or a quota: ``EDQUOT``) leaves the old file as it
was: a temporary file is removed, an append that wrote part of its line is cut back to the file's old length, and
:class:`DiskFull` names the path (one line for the command to print; ``maspo resume`` continues once there is room). verl's ``file`` logger writes the same record format
(``{"step": s, "data": {...}}`` per line); this module reads it too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from orchestrator.config.plan import ExperimentPlan
from orchestrator.errors import UserError

RUNS_ROOT = Path("runs")
EXPERIMENT_FILE = "experiment.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
TRIAL_FILE = "trial.json"
PUBLISHED_FILE = "dashboards.json"  # the URLs of the experiment's published W&B workspace and report
CLAIMS_FILE = "claims.json"  # the claims' verdicts (orchestrator/claims.py)
LOCK_FILE = "command.lock"  # which command works on the experiment now (ExperimentLock)
LOCAL_RAY_FILE = "local-ray.json"  # the private local Ray cluster of the running command (orchestrator.cluster)
SYNCED_FILE = "wandb_synced.json"  # offline W&B run dirs uploaded by `maspo sync`: {relative dir: {...}}
CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"  # verl's: the step of its newest checkpoint
CHECKPOINT_SHARDS = ("model", "optim", "extra_state")  # verl's FSDP checkpoint: one file of each per rank
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(name: str, what: str = "experiment name") -> str:
    """An experiment or trial name is one path component: letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME.fullmatch(name or "") or name in (".", ".."):
        raise UserError(f"{what} {name!r} must be letters, digits, '.', '_' or '-' (one path component)")
    return name


def experiment_dir(name: str, root: Path | None = None) -> Path:
    return (root or RUNS_ROOT) / check_name(name)


# --------------------------------------------------------------------------------------------------------
# crash-safe primitives


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """A write failed because the file system of ``path`` is full (or over quota); nothing was half-written.

    Not the user's mistake, but the user's to fix: the command prints this one line and exits with code 1
    (``exit_code``), never a traceback.
    """

    exit_code = 1

    def __init__(self, path: Path | str):
        self.path = Path(path)
        super().__init__(f"no space left on the device of {self.path}: nothing was half-written; free some space "
                         f"there, then `maspo resume` continues from the last checkpoint")

    def __reduce__(self):  # raised in a Tune trial (a Ray worker), re-raised in the driver: pickles by its path
        return (type(self), (self.path,))


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


@contextmanager
def disk_full_as_error(path: Path | str):
    """Turn an ``OSError`` of a full disk inside the block into :class:`DiskFull` naming the file (or ``path``)."""
    try:
        yield
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise DiskFull(err.filename or path) from None


def check_space(directory: Path, probe_bytes: int = 1 << 18) -> None:
    """Raise :class:`DiskFull` naming ``directory`` if a file of ``probe_bytes`` cannot be written there now.

    For a failure seen from outside the write that failed (Tune's own files, a job's process): is it the disk?
    """
    probe = directory / f".space-probe.{os.getpid()}"
    try:
        with disk_full_as_error(directory), open(probe, "wb") as f:
            f.write(b"\0" * probe_bytes)
            f.flush()
            os.fsync(f.fileno())
    except DiskFull:
        raise DiskFull(directory) from None
    except OSError:  # not ours to judge (a directory gone, no permission): the original failure stands
        pass
    finally:
        probe.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def append_record(path: Path, record: dict) -> None:
    """Append one record as one complete line (a torn line from an earlier crash is closed first).

    A write that fails (a full disk) is undone: the file is cut back to its length before, so it never ends
    in part of this record.
    """
    line = json.dumps(record) + "\n"
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line
            data = line.encode()
            try:
                written = 0
                while written < len(data):  # os.write may write part of it
                    written += os.write(fd, data[written:])
            except OSError:
                os.ftruncate(fd, size)  # shrinking needs no space
                raise
        finally:
            os.close(fd)


def parse_records(lines: Iterable[bytes | str]) -> list[dict]:
    """Records of a JSONL stream; lines that are not complete JSON objects are skipped."""
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_records(path: Path) -> list[dict]:
    """Every complete record of a ``metrics.jsonl`` (missing file: none)."""
    try:
        return parse_records(path.read_bytes().splitlines())
    except OSError:
        return []


class JsonlTail:
    """Reads the records verl's ``file`` logger appends as they come.

    verl opens the file with mode "wb" (a restarted run truncates it); a shrinking file restarts the tail.
    A partial last line is kept until its newline arrives.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._offset:  # truncated: the trainer restarted
            self._offset, self._partial = 0, b""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        return parse_records(lines)


# --------------------------------------------------------------------------------------------------------
# what a metric stream says


def history(records: Iterable[dict]) -> dict[int, dict[str, Any]]:
    """step -> every metric logged at that step (records of one step merged)."""
    out: dict[int, dict[str, Any]] = {}
    for record in records:
        out.setdefault(int(record.get("step", 0)), {}).update(record.get("data", {}))
    return out


def is_validation(data: dict) -> bool:
    return any(key.startswith("val-core/") for key in data)


def validations(records: Iterable[dict]) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of every step that logged validation metrics, in step order."""
    return [(step, data) for step, data in sorted(history(records).items()) if is_validation(data)]


def summary(records: list[dict]) -> dict[str, Any]:
    """The numbers a live view shows and a trial reports to Tune: the latest of each, and the validations so far."""
    latest: dict[str, float] = {}
    for record in records:
        latest.update({k: v for k, v in record.get("data", {}).items() if isinstance(v, (int, float))})
    avg = next((k for k in sorted(latest) if k.startswith("val-core/average/acc/mean@")), None)
    out: dict[str, Any] = {
        "global_step": max((int(r["step"]) for r in records), default=0),
        "validations": sum(1 for r in records if is_validation(r.get("data", {}))),
        "entropy": latest.get("actor/entropy"),
        "reward": latest.get("critic/score/mean"),
    }
    if avg:
        k = avg.rsplit("@", 1)[1]
        out["val_avg"] = latest[avg]
        out["val_pass"] = latest.get(f"val-core/average/acc/pass@{k}")
        out["k"] = int(k)
    return {key: value for key, value in out.items() if value is not None}


class MetricStream:
    """``trials/<T>/metrics.jsonl``: every step once, even when a retry re-runs steps after its checkpoint.

    Before attempt k starts from checkpoint step c, records after c are dropped (the retry re-runs those
    steps); the attempt's records are then appended, except a step already present (verl validates again at
    the resumed step: only its new keys are merged in).
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = read_records(path)

    def steps(self) -> set[int]:
        return {int(r["step"]) for r in self.records}

    def _rewrite(self) -> None:
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def truncate_after(self, step: int) -> None:
        self.records = [r for r in self.records if int(r["step"]) <= step]
        self._rewrite()

    def accept(self, record: dict) -> bool:
        step = int(record.get("step", 0))
        existing = next((r for r in self.records if int(r["step"]) == step), None)
        if existing is not None:
            new = {k: v for k, v in record.get("data", {}).items() if k not in existing["data"]}
            if not new:
                return False
            existing["data"].update(new)
            self._rewrite()
            return True
        self.records.append(record)
        append_record(self.path, record)
        return True


# --------------------------------------------------------------------------------------------------------
# verl's checkpoint directory


def checkpoint_step(checkpoint_dir: Path) -> int:
    """The step of verl's latest checkpoint (its tracker file), 0 if none."""
    return _tracker_step(checkpoint_dir) or 0


def _tracker_step(checkpoint_dir: Path) -> int | None:
    """The step in verl's tracker file; None when it is missing or unreadable (verl writes it in place)."""
    try:
        return int((checkpoint_dir / CHECKPOINT_TRACKER).read_text().strip())
    except (OSError, ValueError):
        return None


def _saved_steps(checkpoint_dir: Path) -> list[int]:
    """The steps of the ``global_step_N`` directories, newest first."""
    try:
        names = [p.name.removeprefix("global_step_") for p in checkpoint_dir.glob("global_step_*") if p.is_dir()]
    except OSError:
        return []
    return sorted((int(n) for n in names if n.isdigit()), reverse=True)


def checkpoint_problem(step_dir: Path) -> str | None:
    """Why verl could not resume from this ``global_step_N`` directory, or None when it is complete.

    verl's FSDP checkpoint (``_save_checkpoint``, in this order): every rank writes ``model_``, ``optim_`` and
    ``extra_state_world_size_W_rank_R.pt`` into ``actor/``, rank 0 writes ``actor/fsdp_config.json`` (W),
    then ``data.pt`` (the dataloader), and last the tracker file. Every ``.pt`` is a zip archive
    (``torch.save``), whose directory is at its end, so a file cut short is not a zip file any more. A
    checkpoint is complete when ``fsdp_config.json`` names W and all 3 W shards and ``data.pt`` are whole
    archives (a ``critic/`` directory, where there is one, is checked the same way). verl's retention removes
    only ``actor/`` of an old checkpoint, so such a leftover is incomplete too. Reads only the ends of the files.
    """
    files = []
    for role in ("actor", "critic"):
        role_dir = step_dir / role
        if role == "critic" and not role_dir.exists():
            continue
        config = read_json(role_dir / "fsdp_config.json", None)
        world = config.get("world_size") if isinstance(config, dict) else None
        if not isinstance(world, int) or world < 1:
            return f"{role}/fsdp_config.json is missing or unreadable"
        files += [role_dir / f"{kind}_world_size_{world}_rank_{rank}.pt"
                     for rank in range(world) for kind in CHECKPOINT_SHARDS]
    for path in [*files, step_dir / "data.pt"]:
        name = path.relative_to(step_dir)
        if not path.is_file():
            return f"{name} is missing"
        if not zipfile.is_zipfile(path):
            return f"{name} is cut off ({path.stat().st_size} bytes, not a whole torch archive)"
    return None


@dataclass(frozen=True)
class ResumeChoice:
    """The checkpoint a retry resumes from (0: from scratch) and the checkpoints passed over, with why."""

    step: int
    skipped: tuple[tuple[int, str], ...] = ()
    tracker_lost: bool = False

    def warning(self) -> str | None:
        """One line for the trial's record and log when the retry does not resume where verl would."""
        if not self.skipped and not self.tracker_lost:
            return None
        why = "; ".join(f"step {step}: {reason}" for step, reason in self.skipped)
        if self.tracker_lost:
            why = f"verl's {CHECKPOINT_TRACKER} is missing or unreadable" + (f"; {why}" if why else "")
        target = f"the checkpoint of step {self.step}" if self.step else "step 0 (no complete checkpoint left)"
        return f"resuming from {target}, not from the newest checkpoint: {why}"


def choose_resume(checkpoint_dir: Path, logged_steps: set[int]) -> ResumeChoice:
    """The checkpoint a retry should resume from, made the one verl's ``resume_mode=auto`` picks.

    verl loads whatever its tracker file names and fails on a checkpoint cut off by a crash, on every retry.
    So before each attempt the newest checkpoint is chosen that is (a) not newer than the tracker (verl writes
    the tracker last: a newer directory is a save that never finished), (b) logged: verl saves step c's
    checkpoint BEFORE it logs step c's metrics, and a job killed in between would lose them, and (c) complete
    (:func:`checkpoint_problem`). The tracker is rewritten to point at it, or removed (start over) when none is
    left (``0``: verl finds no ``global_step_0`` and starts from scratch). A tracker that is missing or unreadable
    while checkpoints exist is not trusted for (a): the files decide.
    """
    tracker = _tracker_step(checkpoint_dir)
    saved = _saved_steps(checkpoint_dir)
    lost = tracker is None and bool(saved)
    skipped, chosen = [], 0
    for step in saved:
        if tracker is not None and step > tracker:
            continue  # verl ignores it too; its next save of that step overwrites it
        if step not in logged_steps:
            skipped.append((step, "saved but its metrics were never logged"))
            continue
        problem = checkpoint_problem(checkpoint_dir / f"global_step_{step}")
        if problem is not None:
            skipped.append((step, problem))
            continue
        chosen = step
        break
    if tracker != chosen and (saved or tracker is not None):
        write_text_atomic(checkpoint_dir / CHECKPOINT_TRACKER, str(chosen))
    return ResumeChoice(chosen, tuple(skipped), lost)


def resume_point(checkpoint_dir: Path, logged_steps: set[int]) -> int:
    """The step :func:`choose_resume` picks (and points verl's tracker at)."""
    return choose_resume(checkpoint_dir, logged_steps).step


# --------------------------------------------------------------------------------------------------------
# one trial's directory


@dataclass(frozen=True)
class TrialDir:
    """The files of one trial (of an experiment, or a ``maspo run`` directory)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def attempt_dir(self, attempt: int) -> Path:
        return self.path / "attempts" / str(attempt)

    def records(self) -> list[dict]:
        return read_records(self.metrics_path)

    def stream(self) -> MetricStream:
        return MetricStream(self.metrics_path)

    def status(self) -> dict:
        """``status.json``: ``{"state": ..., "attempts": [...], "gpus": ...}``; a trial not started is pending."""
        status = read_json(self.path / STATUS_FILE, None)
        return status if isinstance(status, dict) else {"state": "pending", "attempts": []}

    def write_status(self, status: dict) -> None:
        write_json(self.path / STATUS_FILE, status)

    def info(self) -> dict:
        """``trial.json``: the resolved config and the exact verl command (empty before the first attempt)."""
        info = read_json(self.path / TRIAL_FILE, {})
        return info if isinstance(info, dict) else {}

    def write_info(self, info: dict) -> None:
        write_json(self.path / TRIAL_FILE, info)

    def last_written(self, since: float) -> float:
        """When the trial's job last wrote a file here (its metrics, checkpoints, W&B run, logs), and ``since``
        if it wrote none later: the end of an attempt whose job nobody saw end (its driver was killed), so that
        the hours until the next command found it are not counted as the trial's (docs/orchestration.md#sigkill).
        The status and config files are the controller's, not the job's, and do not count."""
        newest = since
        for path in self.path.rglob("*"):
            if path.name in (STATUS_FILE, TRIAL_FILE):
                continue
            try:
                if path.is_file():
                    newest = max(newest, path.stat().st_mtime)
            except OSError:  # removed while we looked (a checkpoint being replaced)
                continue
        return newest

    def wall_seconds(self) -> float:
        """The summed wall time of every attempt (one still running counts to its start)."""
        return sum((a.get("ended") or a["started"]) - a["started"] for a in self.status().get("attempts", [])
                   if a.get("started"))


# --------------------------------------------------------------------------------------------------------
# an experiment's directory


@dataclass(frozen=True)
class ExperimentDir:
    path: Path

    @classmethod
    def named(cls, name: str, root: Path | None = None) -> ExperimentDir:
        return cls(experiment_dir(name, root))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def tune_dir(self) -> Path:
        return self.path / "tune"

    def exists(self) -> bool:
        """An experiment was started here (Tune has state to restore)."""
        return self.tune_dir.exists()

    def save_plan(self, plan: ExperimentPlan) -> None:
        write_text_atomic(self.path / EXPERIMENT_FILE, plan.model_dump_json(indent=1))

    def plan(self) -> ExperimentPlan:
        path = self.path / EXPERIMENT_FILE
        if not path.is_file():
            raise UserError(f"no experiment at {self.path} ({EXPERIMENT_FILE} missing)")
        try:
            return ExperimentPlan.model_validate_json(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not a plan this maspo can read: {str(err).splitlines()[0]}") from None

    def meta(self) -> dict:
        """The raw plan, or for a ``maspo run`` directory a plan-like stub (``kind: run``, no trials)."""
        meta = read_json(self.path / EXPERIMENT_FILE, None)
        return meta if isinstance(meta, dict) else {"name": self.path.name, "kind": "run", "trials": []}

    def trial(self, name: str) -> TrialDir:
        return TrialDir(self.path / "trials" / name)

    def trial_dirs(self) -> list[TrialDir]:
        """``trials/*``; a ``maspo run`` directory (metrics.jsonl at its top) is its own only trial."""
        trials = self.path / "trials"
        if trials.is_dir():
            return [TrialDir(p) for p in sorted(trials.iterdir()) if p.is_dir()]
        single = TrialDir(self.path)
        return [single] if single.metrics_path.exists() or (self.path / TRIAL_FILE).exists() else []

    def published(self) -> dict:
        published = read_json(self.path / PUBLISHED_FILE, {})
        return published if isinstance(published, dict) else {}

    def write_published(self, published: dict) -> None:
        write_json(self.path / PUBLISHED_FILE, published)

    @property
    def claims_path(self) -> Path:
        return self.path / CLAIMS_FILE

    def write_claims(self, claims: dict) -> None:
        write_json(self.claims_path, claims)

    def claims(self) -> dict:
        claims = read_json(self.claims_path, {})
        return claims if isinstance(claims, dict) else {}
    def synced(self) -> dict[str, dict]:
        """The offline W&B runs ``maspo sync`` uploaded: {directory relative to the experiment: record}."""
        synced = read_json(self.path / SYNCED_FILE, {})
        return synced if isinstance(synced, dict) else {}

    def is_synced(self, run_dir: Path) -> bool:
        """``run_dir`` (an ``offline-run-*`` directory) was uploaded by ``maspo sync``."""
        return self._relative(run_dir) in self.synced()

    def mark_synced(self, run_dirs: Iterable[Path], run_id: str, when: float) -> None:
        """Record that ``wandb sync`` uploaded these offline directories (of one run) completely."""
        synced = self.synced()
        for run_dir in run_dirs:
            synced[self._relative(run_dir)] = {"run_id": run_id, "bytes": _wandb_bytes(run_dir), "synced": when}
        write_json(self.path / SYNCED_FILE, synced)

    def _relative(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.path.resolve()))
        except ValueError:
            return str(Path(path).resolve())

    def unfinished(self, plan: ExperimentPlan) -> list[str]:
        return [t.name for t in plan.trials if self.trial(t.name).status().get("state") != "succeeded"]


# --------------------------------------------------------------------------------------------------------
# one command at a time on an experiment


def process_started(pid: int) -> float | None:
    """When process ``pid`` of this host started (seconds since the epoch), None if there is none."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 (psutil.NoSuchProcess, AccessDenied, ...: no process we can vouch for)
        return None


def holder_alive(holder: dict) -> bool:
    """Whether the process a lock or cluster record names still runs: same host, same pid, same start time (a
    pid the kernel gave to another process since is not the holder). A holder on another host counts as alive."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = process_started(pid)
    if started is None:
        return False
    recorded = holder.get("pid_started")
    return recorded is None or abs(float(recorded) - started) < 2.0


class ExperimentBusy(UserError):
    """Another live command works on the experiment."""


class ExperimentLock:
    """``runs/<NAME>/command.lock``: the one command (sweep, compare, resume, demo, run) working on an experiment.

    The lock is an exclusive ``flock`` on the file, which the kernel drops when its holder dies, even of SIGKILL;
    the file's content names the holder (command, pid, host, start) for the message a second command prints. A
    record of a holder on this host whose process still runs refuses too, so a file system that ignores
    ``flock`` still keeps two commands apart; a record whose process is dead (or whose pid now belongs to another
    process) is taken over. The file is never deleted (deleting a locked file would let two commands lock two
    different files), only emptied when its holder ends.
    """

    def __init__(self, directory: Path, command: str):
        self.directory, self.command = directory, command
        self.path = directory / LOCK_FILE
        self._fd: int | None = None
        self._created_dir = False
        self._created_top = directory

    def holder(self) -> dict:
        holder = read_json(self.path, {})
        return holder if isinstance(holder, dict) else {}

    def _refuse(self, holder: dict) -> ExperimentBusy:
        since = holder.get("started")
        when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
        return ExperimentBusy(
            f"experiment {self.directory.name!r} is in use: `{holder.get('command', 'a maspo command')}` runs as "
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}; wait for it to end, or stop it "
            f"and run `maspo resume {self.directory.name}` (lock: {self.path})")

    def acquire(self) -> ExperimentLock:
        self._created_dir = not self.directory.exists()
        # the outermost directory this command creates (a new runs root too): removed again if nothing is written
        self._created_top = self.directory
        while not self._created_top.parent.exists():
            self._created_top = self._created_top.parent
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self._refuse(self.holder()) from None
            holder = self.holder()
            if holder.get("pid") and holder.get("pid") != os.getpid() and holder.get("host") == socket.gethostname() \
                    and holder_alive(holder):  # alive but not holding the flock: a file system without flock
                raise self._refuse(holder)
            me = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                  "pid_started": process_started(os.getpid()), "started": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self._remove_if_only_lock()
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # empty: nobody holds it (the flock goes with the descriptor)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_if_only_lock()

    def _remove_if_only_lock(self) -> None:
        """A command that made the directory and wrote nothing else leaves nothing behind."""
        if self._created_dir:
            try:
                if [p.name for p in self.directory.iterdir()] == [LOCK_FILE]:
                    self.path.unlink()
                    self.directory.rmdir()
                    parent = self.directory
                    while parent != self._created_top and not any(parent.parent.iterdir()):
                        parent = parent.parent
                        parent.rmdir()
            except OSError:
                pass

    def __enter__(self) -> ExperimentLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def locked(directory: Path, command: str) -> Iterator[ExperimentLock]:
    """Hold ``directory``'s :class:`ExperimentLock` for the block (a live holder: :class:`ExperimentBusy`)."""
    with ExperimentLock(directory, command) as lock:
        yield lock


# --------------------------------------------------------------------------------------------------------
# the private local Ray cluster of the command working on the experiment


def local_ray_record(directory: Path) -> dict:
    """``local-ray.json``: the private Ray cluster a command started for ``directory`` (empty: none recorded)."""
    record = read_json(directory / LOCAL_RAY_FILE, {})
    return record if isinstance(record, dict) else {}


def write_local_ray_record(directory: Path, record: dict) -> None:
    write_json(directory / LOCAL_RAY_FILE, record)


def clear_local_ray_record(directory: Path) -> None:
    (directory / LOCAL_RAY_FILE).unlink(missing_ok=True)


def _wandb_bytes(run_dir: Path) -> int:
    """The size of an offline run's ``run-*.wandb`` transaction log(s)."""
    return sum(p.stat().st_size for p in Path(run_dir).glob("run-*.wandb"))
