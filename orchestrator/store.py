"""``runs/<NAME>/`` on disk: the one module that reads and writes an experiment's files.

Layout (docs/architecture.md has the whole picture)::

    runs/<NAME>/
        experiment.json            the plan (orchestrator.config.plan.ExperimentPlan)
        dashboard.html             the local dashboard page
        dashboards.json            the URLs of the published W&B workspace and report
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
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from orchestrator.config.plan import ExperimentPlan
from orchestrator.errors import UserError

RUNS_ROOT = Path("runs")
EXPERIMENT_FILE = "experiment.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
TRIAL_FILE = "trial.json"
PUBLISHED_FILE = "dashboards.json"  # the URLs of the experiment's published W&B workspace and report
SYNCED_FILE = "wandb_synced.json"  # offline W&B run dirs uploaded by `maspo sync`: {relative dir: {...}}
CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"  # verl's: the step of its newest checkpoint
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
    try:
        return int((checkpoint_dir / CHECKPOINT_TRACKER).read_text().strip())
    except (OSError, ValueError):
        return 0


def resume_point(checkpoint_dir: Path, logged_steps: set[int]) -> int:
    """The checkpoint a retry should resume from, made the one verl's ``resume_mode=auto`` picks.

    verl saves step c's checkpoint BEFORE it logs step c's metrics; a job killed in between would resume
    after c and step c's training metrics would be lost. So the newest checkpoint whose step was logged is
    chosen, and verl's tracker file points to it; 0 means start over.
    """
    latest = checkpoint_step(checkpoint_dir)
    if latest == 0 or latest in logged_steps:
        return latest
    kept = sorted((int(p.name.removeprefix("global_step_")) for p in checkpoint_dir.glob("global_step_*")
                   if p.name.removeprefix("global_step_").isdigit()), reverse=True)
    usable = next((step for step in kept if step < latest and step in logged_steps), 0)
    tracker = checkpoint_dir / CHECKPOINT_TRACKER
    if usable:
        write_text_atomic(tracker, str(usable))
    else:
        tracker.unlink(missing_ok=True)
    return usable


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


def _wandb_bytes(run_dir: Path) -> int:
    """The size of an offline run's ``run-*.wandb`` transaction log(s)."""
    return sum(p.stat().st_size for p in Path(run_dir).glob("run-*.wandb"))
