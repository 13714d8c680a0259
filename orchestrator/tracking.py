"""W&B run identity of a trial, the offline read-back, and ``maspo sync``.

Identity travels as environment variables into the trial's Ray Job, because verl's ``Tracking`` calls
``wandb.init(project=, name=, entity=, config=)`` and nothing more (docs/orchestration.md#wandb).
``orchestrator.verl_bridge.wandb_hooks`` makes verl's init honour ``WANDB_PROJECT``/``WANDB_NAME``, defines the
step axis and adds ``MASPO_TRIAL_JSON`` to the run config as ``maspo``.

The run id is stable: the experiment name and the trial's stable hash. A retried attempt of a trial logs to the
same W&B run (``WANDB_RESUME=allow``), online. Offline, every attempt writes its own ``offline-run-*`` directory
under ``<trial>/wandb/`` with that same id; ``maspo sync`` hands them to one ``wandb sync``, which uploads them
in order of start time into that run.

W&B has no public reader for offline runs in wandb 0.31, so :func:`read_offline_run` parses the ``.wandb``
transaction log itself: a 7-byte header (``:W&B``, magic 0xBEE1, version), then LevelDB-log records in 32 KiB
blocks (7-byte record header ``<crc32 u32, length u16, type u8>``, type 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST; a
block tail shorter than a header is padding), each payload a ``wandb_internal_pb2.Record``. The format is
internal to wandb: the project pins wandb==0.31.0.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from orchestrator.errors import UserError

TRIAL_JSON_ENV = "MASPO_TRIAL_JSON"
WANDB_FLUSH_ENV = "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"  # wandb's setting x_transaction_log_flush_interval
WANDB_FLUSH_SECONDS = "1"
DEFAULT_PROJECT = "maspo"
_ID_UNSAFE = re.compile(r"[^a-z0-9_-]+")


class TrackingError(UserError):
    """A user-facing problem with W&B (no credentials, no such experiment); the message is one line."""


# --------------------------------------------------------------------------------------------------------
# identity of a trial's run


def wandb_host(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"


def has_credentials(env: dict[str, str] | None = None) -> bool:
    """True when W&B can authenticate: ``WANDB_API_KEY`` set, or a netrc entry for the W&B host.

    Only presence is checked; the key is never returned, printed or copied.
    """
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY", "").strip():
        return True
    path = Path(env.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        return netrc.netrc(str(path)).authenticators(wandb_host(env)) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_id(experiment: str, trial_hash: str) -> str:
    """A W&B run id that is the same for every attempt of a trial: ``<experiment>-<trial hash>``.

    Lower-case letters, digits, ``-`` and ``_`` only, at most 64 characters (W&B's limits for ids).
    """
    slug = _ID_UNSAFE.sub("-", experiment.lower()).strip("-")[:40] or "run"
    tail = _ID_UNSAFE.sub("", trial_hash.lower())
    if not tail:
        raise ValueError(f"trial hash {trial_hash!r} has no id-safe characters")
    return f"{slug}-{tail}"[:64]


def wandb_env(*, project: str, entity: str | None, experiment: str, trial_name: str, algorithm: str, seed: int,
              tags: Iterable[str] = (), run_id: str, settings: dict[str, Any] | None = None,
              environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables that give a trial's verl job its W&B identity.

    ``WANDB_MODE`` is ``offline`` unless W&B credentials are present (or the user set ``WANDB_MODE``).
    ``settings`` (the resolved trial) goes to ``MASPO_TRIAL_JSON``, which the verl hook adds to the run config.
    The API key is never part of the result.
    """
    environ = os.environ if environ is None else environ
    all_tags = [algorithm, f"seed{seed}", *tags]
    clean_tags = list(dict.fromkeys(t.replace(",", " ").strip()[:64] for t in all_tags if t and t.strip()))
    env = {
        "WANDB_PROJECT": project,
        "WANDB_RUN_GROUP": experiment,
        "WANDB_JOB_TYPE": algorithm,
        "WANDB_TAGS": ",".join(clean_tags),
        "WANDB_NAME": trial_name,
        "WANDB_RUN_ID": run_id,
        "WANDB_RESUME": "allow",
        "WANDB_MODE": environ.get("WANDB_MODE") or ("online" if has_credentials(environ) else "offline"),
        # wandb-core writes the run's .wandb log every 15 s by default; a job SIGKILLed (a node lost, OOM) loses
        # what was not written. Every second: a killed attempt loses at most its last second in W&B, and those
        # steps come after its checkpoint, so the retry logs them again (docs/orchestration.md#wandb-offline)
        WANDB_FLUSH_ENV: WANDB_FLUSH_SECONDS,
    }
    if entity:
        env["WANDB_ENTITY"] = entity
    if settings is not None:
        env[TRIAL_JSON_ENV] = json.dumps(settings, sort_keys=True, default=str)
    return env


def trial_settings(trial, *, experiment: str, trial_name: str, label: str | None = None) -> dict[str, Any]:
    """What the run config shows under ``maspo``: the resolved TrialConfig, the trial's names, label and hash.

    ``label`` is the trial's row in tables and its group in the dashboards ("MASPO", "alpha=0.3 beta=0.03");
    default: the algorithm's name.
    """
    return {**trial.model_dump(mode="json"), "experiment": experiment, "trial": trial_name,
            "label": label or trial.algorithm, "trial_hash": trial.stable_hash()}


def trial_wandb_env(trial, *, experiment: str, trial_name: str, label: str | None = None,
                    project: str | None = None, entity: str | None = None,
                    tags: Iterable[str] = ()) -> dict[str, str]:
    """:func:`wandb_env` for a ``TrialConfig``: what the runner adds to the job env of every trial.

    Project and entity default to the user's ``WANDB_PROJECT``/``WANDB_ENTITY``, then ``maspo``/none.
    """
    return wandb_env(
        project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=entity or os.environ.get("WANDB_ENTITY") or None,
        experiment=experiment, trial_name=trial_name, algorithm=trial.algorithm, seed=trial.seed,
        tags=tags, run_id=run_id(experiment, trial.stable_hash()),
        settings=trial_settings(trial, experiment=experiment, trial_name=trial_name, label=label),
    )


# --------------------------------------------------------------------------------------------------------
# reading an offline run


@dataclass
class OfflineRun:
    """What an offline ``.wandb`` file holds, as plain Python values."""

    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # define_metric rules, in order
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def series(self, key: str, x: str = "_step") -> list[tuple[Any, Any]]:
        """``[(x, value), ...]`` of the history rows that have ``key``."""
        return [(row.get(x), row[key]) for row in self.history if key in row]


_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _read_records(data: bytes) -> Iterable[bytes]:
    """The payloads of the LevelDB-log framing; a truncated tail (a run still writing) ends the iteration."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (no ':W&B' header)")
    pos, pending = _HEADER, None
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a preallocated block
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        if len(chunk) < length:
            return
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
        elif kind == _LAST and pending is not None:
            yield pending + chunk
            pending = None


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _value(item) -> Any:
    return json.loads(item.value_json) if item.value_json else None


def _config_updates(config_record) -> dict[str, Any]:
    out = {}
    for item in config_record.update:
        key = item.key or ".".join(item.nested_key)
        out[key] = _value(item)
    return out


def read_offline_run(run_dir: Path | str) -> OfflineRun:
    """Read ``offline-run-*/run-<id>.wandb`` (or the ``.wandb`` file itself): identity, config, history, rules."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_dir)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise TrackingError(f"no run-*.wandb file in {path}")
        path = files[0]
    run = OfflineRun(path=path)
    for raw in _read_records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.entity = r.run_id, r.project, r.entity
            run.name, run.group, run.job_type, run.tags = r.display_name, r.run_group, r.job_type, list(r.tags)
            run.config.update(_config_updates(r.config))
        elif kind == "config":
            run.config.update(_config_updates(record.config))
        elif kind == "history":
            run.history.append({_key(item): _value(item) for item in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(item): _value(item) for item in record.summary.update})
        elif kind == "metric":
            m = record.metric
            rule = {"name": m.name or m.glob_name, "glob": bool(m.glob_name), "step_metric": m.step_metric}
            summary = [op for op in ("min", "max", "mean", "best", "last", "none", "first")
                       if getattr(m.summary, op, False)]
            if summary:
                rule["summary"] = summary
            run.metrics.append(rule)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def find_offline_runs(directory: Path | str) -> list[Path]:
    """Every ``offline-run-*`` directory below ``directory`` (that holds a ``.wandb`` file), oldest first."""
    root = Path(directory)
    runs = {p.parent for p in root.rglob("offline-run-*/run-*.wandb")}
    return sorted(runs, key=lambda p: (p.name, str(p)))


# --------------------------------------------------------------------------------------------------------
# maspo sync


@dataclass
class SyncResult:
    run_id: str
    run_dirs: list[Path]  # the offline directories of one run (one per attempt), oldest first
    command: list[str]
    returncode: int | None = None  # None: not run (dry run)
    output: str = ""


def wandb_cli() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def offline_run_id(run_dir: Path) -> str:
    """``offline-run-20260101_120000-<id>`` -> ``<id>``."""
    return run_dir.name.split("-", 3)[-1]


def sync_experiment(exp_dir: Path | str, dry_run: bool = False, *, include_synced: bool = False,
                    runner=subprocess.run) -> list[SyncResult]:
    """``wandb sync`` the offline runs under an experiment directory (``runs/<NAME>``), one command per run.

    A trial retried after a failure has one offline directory per attempt, all with the trial's run id; they go
    to ``wandb sync`` together, which uploads them in order of start time into one run. ``dry_run`` only returns
    the commands. A run whose ``wandb sync`` succeeded is recorded in the experiment directory
    (``wandb_synced.json``, :meth:`orchestrator.store.ExperimentDir.mark_synced`), and a second sync leaves it out,
    as it leaves out directories ``wandb sync`` itself marked as uploaded, unless ``include_synced``. Needs W&B credentials unless ``dry_run``.
    """
    from orchestrator.store import ExperimentDir

    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise TrackingError(f"no experiment directory {exp_dir}")
    experiment = ExperimentDir(exp_dir)
    runs = find_offline_runs(exp_dir)
    if not include_synced:
        runs = [r for r in runs if not any(r.glob("run-*.wandb.synced")) and not experiment.is_synced(r)]
    if not dry_run and runs and not has_credentials():
        raise TrackingError("no W&B credentials: run `wandb login` or set WANDB_API_KEY, then sync again")
    by_id: dict[str, list[Path]] = {}
    for run_dir in runs:
        by_id.setdefault(offline_run_id(run_dir), []).append(run_dir)
    results = []
    for run_id_, run_dirs in by_id.items():
        command = [*wandb_cli(), "sync", "--yes", *(["--include-synced"] if include_synced else []),
                   *map(str, run_dirs)]
        result = SyncResult(run_id_, run_dirs, command)
        if not dry_run:
            done = runner(command, capture_output=True, text=True)
            result.returncode, result.output = done.returncode, (done.stdout or "") + (done.stderr or "")
            if done.returncode == 0:  # recorded at once: an interrupted sync keeps what it uploaded
                experiment.mark_synced(run_dirs, run_id_, time.time())
        results.append(result)
    return results
