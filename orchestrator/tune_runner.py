"""Sweeps and comparisons as ONE Ray Tune experiment per command.

Each Tune trial is a CPU-only controller (:func:`trial_controller`) that submits ONE Ray Job running verl's
``main_ppo``, tails the job's JSONL, calls ``tune.report`` after every step, and stops the job in ``finally``
(notes/orchestration.md sections 0-2: verl inside a Tune placement group deadlocks or leaks placement groups).

Concurrency is a counting semaphore in Ray's own scheduler: every GPU node declares the custom resource
``verl_slot`` (one per 8 GPUs on the cluster; one per fake GPU on the local profile) and every trial asks for
the slots its verl run needs, so surplus trials wait in Tune as PENDING instead of holding a Ray Job whose
placement group cannot be placed.

Failure handling is Ray's and verl's: ``FailureConfig(max_failures)`` re-runs a failed controller, which
resubmits the job; the job resumes from the trial's last verl checkpoint (``trainer.resume_mode=auto`` in a
directory named by the trial, checkpoints at every validation). An interrupted experiment is restored with
``Tuner.restore``, which re-runs only the unfinished trials.

Experiment directory (``runs/<NAME>/``)::

    experiment.json            the plan: every trial's resolved TrialConfig, profile, seeds, scheduler
    tune/                      Ray Tune's experiment state (what Tuner.restore reads)
    trials/<TRIAL>/
        metrics.jsonl          the trial's metric stream: every step once, across retries
        status.json            state, attempts, wall time of every attempt, GPUs
        trial.json             the resolved config and the exact verl command of the latest attempt
        attempts/<k>/          one per job submission: verl's own JSONL, the job's log
        checkpoints/           verl checkpoints (resume_mode=auto)
        wandb/                 the W&B run (offline unless credentials are present)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.specs import TrialConfig

SLOT_RESOURCE = "verl_slot"
RUNS_ROOT = Path("runs")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXPERIMENT_FILE = "experiment.json"


class PlannedTrial(BaseModel):
    """One trial of an experiment: a unique directory name, a row label for tables, the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    label: str
    trial: TrialConfig


class ExperimentPlan(BaseModel):
    """Everything a command decided, saved as ``experiment.json`` before anything starts."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["sweep", "compare"]
    spec: str
    profile: str
    scale: str
    seeds: list[int]
    steps: int
    scheduler: Literal["fifo", "asha"] = "fifo"
    grace_validations: int = Field(3, ge=1)
    max_concurrent: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0)
    slots_per_trial: int = Field(1, ge=1)
    trials: list[PlannedTrial]
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def gpus_per_trial(self) -> int:
        from orchestrator.scales import gpus_of

        return gpus_of(self.trials[0].trial.profile)

    @property
    def validations(self) -> int:
        """Validation points of a full trial: before training, every test_freq steps, and the last step."""
        p = self.trials[0].trial.profile
        return 1 + len({s for s in range(1, p.steps + 1) if s % p.test_freq == 0 or s == p.steps})


def experiment_dir(name: str, root: Path | None = None) -> Path:
    return (root or RUNS_ROOT) / name


def save_plan(plan: ExperimentPlan, exp_dir: Path) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / EXPERIMENT_FILE).write_text(plan.model_dump_json(indent=1))


def load_plan(exp_dir: Path) -> ExperimentPlan:
    from orchestrator.algorithms import AlgorithmError

    path = exp_dir / EXPERIMENT_FILE
    if not path.is_file():
        raise AlgorithmError(f"no experiment at {exp_dir} ({EXPERIMENT_FILE} missing)")
    return ExperimentPlan.model_validate_json(path.read_text())


def trial_name(trial: TrialConfig) -> str:
    """Readable and unique: the default name plus a short stable hash of the full config."""
    return f"{trial.default_name()}-{trial.stable_hash()[:6]}"


# --------------------------------------------------------------------------------------------------------
# the metric stream of a trial, across retries


class MetricStream:
    """``trials/<T>/metrics.jsonl``: every step once, even when a retry re-runs steps after its checkpoint.

    Before attempt k starts from checkpoint step c, records after c are dropped (the retry re-runs those
    steps); the attempt's records are then appended, except a step already present (verl validates again at
    the resumed step).
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    continue

    def steps(self) -> set[int]:
        return {int(r["step"]) for r in self.records}

    def truncate_after(self, step: int) -> None:
        self.records = [r for r in self.records if int(r["step"]) <= step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def accept(self, record: dict) -> bool:
        step = int(record.get("step", 0))
        existing = next((r for r in self.records if int(r["step"]) == step), None)
        if existing is not None:
            # verl logs validation before the first step and again at a resume point: merge new keys only
            new = {k: v for k, v in record.get("data", {}).items() if k not in existing["data"]}
            if not new:
                return False
            existing["data"].update(new)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            return True
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return True


def checkpoint_step(checkpoint_dir: Path) -> int:
    """The step of verl's latest checkpoint (``latest_checkpointed_iteration.txt``), 0 if none."""
    try:
        return int((checkpoint_dir / "latest_checkpointed_iteration.txt").read_text().strip())
    except (OSError, ValueError):
        return 0


def resume_point(checkpoint_dir: Path, logged_steps: set[int]) -> int:
    """The checkpoint a retry should resume from, made the one verl's ``resume_mode=auto`` picks.

    verl saves step c's checkpoint BEFORE it logs step c's metrics; a job killed in between would resume
    after c and step c's training metrics would be lost. So the newest checkpoint whose step was logged is
    chosen, and verl's tracker file (``latest_checkpointed_iteration.txt``) points to it; 0 means start over.
    """
    latest = checkpoint_step(checkpoint_dir)
    if latest == 0 or latest in logged_steps:
        return latest
    kept = sorted((int(p.name.removeprefix("global_step_")) for p in checkpoint_dir.glob("global_step_*")
                   if p.name.removeprefix("global_step_").isdigit()), reverse=True)
    usable = next((step for step in kept if step < latest and step in logged_steps), 0)
    tracker = checkpoint_dir / "latest_checkpointed_iteration.txt"
    if usable:
        tracker.write_text(str(usable))
    else:
        tracker.unlink(missing_ok=True)
    return usable


def tune_metrics(records: list[dict]) -> dict[str, Any]:
    """What the controller reports to Tune after a step: the step's numbers and the latest validation."""
    latest: dict[str, float] = {}
    validations = 0
    for r in records:
        data = r.get("data", {})
        if any(k.startswith("val-core/") for k in data):
            validations += 1
        latest.update({k: v for k, v in data.items() if isinstance(v, (int, float))})
    avg = next((k for k in sorted(latest) if k.startswith("val-core/average/acc/mean@")), None)
    out: dict[str, Any] = {
        "global_step": max((int(r["step"]) for r in records), default=0),
        "validations": validations,
        "entropy": latest.get("actor/entropy"),
        "reward": latest.get("critic/score/mean"),
    }
    if avg:
        k = avg.rsplit("@", 1)[1]
        out["val_avg"] = latest[avg]
        out["val_pass"] = latest.get(f"val-core/average/acc/pass@{k}")
        out["k"] = int(k)
    return {key: value for key, value in out.items() if value is not None}


# --------------------------------------------------------------------------------------------------------
# the trial controller (runs inside a Tune trial, on a Ray worker)


class TrialJobFailed(RuntimeError):
    """The verl job of a trial ended FAILED or STOPPED by someone else; Tune's FailureConfig retries it."""


def render_job(planned: PlannedTrial, plan: ExperimentPlan, trial_dir: Path, attempt_dir: Path):
    """The verl command of one attempt, for the trial's profile."""
    from orchestrator.runner import TrialJob, prepare_local_assets, render_local_trial

    trial = planned.trial
    metrics_path = attempt_dir / "metrics.jsonl"
    if trial.profile.name == "a100":
        from orchestrator.scales import a100_job_env, render_a100_overrides

        overrides = render_a100_overrides(trial.algorithm, trial.params, trial.seed, trial.profile,
                                          experiment_name=planned.name, trial_hash=trial.stable_hash())
        job = TrialJob(overrides, a100_job_env(metrics_path), trial_dir, metrics_path)
    else:
        assets = prepare_local_assets(trial.profile, trial.seed)
        job = render_local_trial(trial, assets, trial_dir, planned.name, metrics_path=metrics_path,
                                 checkpoint_every=trial.profile.test_freq)
    from orchestrator.tracking import trial_wandb_env

    job.env.update(trial_wandb_env(trial, experiment=plan.name, trial_name=planned.name, label=planned.label,
                                   tags=[plan.kind, plan.profile, plan.scale]))
    return job


def trial_checkpoint_dir(planned: PlannedTrial, trial_dir: Path) -> Path:
    """Where the trial's verl checkpoints are (``resume_mode=auto`` resumes from there)."""
    if planned.trial.profile.name == "a100":
        from orchestrator.scales import checkpoint_dir

        return checkpoint_dir(planned.trial.profile, planned.trial.stable_hash())
    return trial_dir / "checkpoints"


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def trial_controller(config: dict) -> None:
    """A Tune trial: submit the trial's verl job, stream its metrics to Tune, stop it in ``finally``."""
    from ray import tune
    from ray.job_submission import JobSubmissionClient

    from orchestrator.metrics import JsonlTail

    exp_dir = Path(config["experiment_dir"])
    plan = load_plan(exp_dir)
    planned = next(t for t in plan.trials if t.name == config["trial"])
    trial_dir = exp_dir / "trials" / planned.name
    status_path = trial_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {"attempts": []}
    attempt = len(status["attempts"]) + 1
    attempt_dir = trial_dir / "attempts" / str(attempt)
    attempt_dir.mkdir(parents=True, exist_ok=True)

    stream = MetricStream(trial_dir / "metrics.jsonl")
    resumed_from = resume_point(trial_checkpoint_dir(planned, trial_dir), stream.steps())
    stream.truncate_after(resumed_from)

    render = _import_object(config["renderer"]) if config.get("renderer") else render_job
    job = render(planned, plan, trial_dir, attempt_dir)
    entrypoint = job.entrypoint()
    _write_json(trial_dir / "trial.json", {
        "name": planned.name, "experiment": plan.name, "label": planned.label,
        "trial": planned.trial.model_dump(mode="json"), "trial_hash": planned.trial.stable_hash(),
        "entrypoint": entrypoint,
        "env": {k: v for k, v in job.env.items() if "KEY" not in k and "TOKEN" not in k},
    })

    client = JobSubmissionClient(_dashboard_url())
    _stop_leftover_jobs(client, plan.name, planned.name)
    submission_id = f"{planned.name}-a{attempt}-{uuid.uuid4().hex[:6]}"
    started = time.time()
    status["attempts"].append({"attempt": attempt, "submission_id": submission_id, "started": started,
                               "resumed_from_step": resumed_from, "ended": None, "job_status": "PENDING"})
    status.update(state="running", gpus=plan.gpus_per_trial)
    _write_json(status_path, status)
    client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                      runtime_env={"env_vars": job.env},
                      metadata={"maspo_experiment": plan.name, "maspo_trial": planned.name})

    tail = JsonlTail(job.metrics_path)
    job_status = "PENDING"
    try:
        while True:
            fresh = [r for r in tail.read() if stream.accept(r)]
            if fresh:
                metrics = tune_metrics(stream.records)
                metrics["attempt"] = attempt
                metrics["resumed_from_step"] = resumed_from
                tune.report(metrics)
            job_status = str(client.get_job_status(submission_id).value)
            if job_status in TERMINAL:
                fresh = [r for r in tail.read() if stream.accept(r)]
                if fresh:
                    tune.report({**tune_metrics(stream.records), "attempt": attempt,
                                 "resumed_from_step": resumed_from})
                break
            time.sleep(float(config.get("poll_s", 1.0)))
    finally:
        if job_status not in TERMINAL:  # stopped by Tune (ASHA, Ctrl-C) or an error here: end the job too
            try:
                client.stop_job(submission_id)
                job_status = "STOPPED"
            except Exception:  # noqa: BLE001 (the cluster may be going away with us)
                pass
        try:
            (attempt_dir / "job.log").write_text(client.get_job_logs(submission_id))
        except Exception:  # noqa: BLE001
            pass
        status["attempts"][-1].update(ended=time.time(), job_status=job_status)
        status["state"] = {"SUCCEEDED": "succeeded", "FAILED": "failed"}.get(job_status, "stopped")
        _write_json(status_path, status)
    if job_status != "SUCCEEDED":
        log_tail = _last_lines(attempt_dir / "job.log", 5)
        raise TrialJobFailed(f"verl job {submission_id} ended {job_status}; log: {attempt_dir / 'job.log'}\n{log_tail}")


def _import_object(path: str):
    """``package.module:name`` -> the object (a renderer other than verl's, e.g. a test's stand-in job)."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _dashboard_url() -> str:
    """The job API of the cluster this trial runs in (explicit: another Ray on the machine must not answer)."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    # the GCS of the cluster this worker belongs to knows where its dashboard (the job API) listens
    url = _internal_kv_get(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    if url is None:
        raise RuntimeError("this Ray cluster has no dashboard, so no job API: start it with --include-dashboard")
    url = url.decode()
    return url if url.startswith("http") else f"http://{url}"


def _stop_leftover_jobs(client, experiment: str, trial: str) -> None:
    """A restored trial's previous job may still run (the controller was killed, not the job): stop it."""
    for info in client.list_jobs():
        meta = info.metadata or {}
        if meta.get("maspo_experiment") == experiment and meta.get("maspo_trial") == trial \
                and str(info.status.value) not in TERMINAL and info.submission_id:
            client.stop_job(info.submission_id)


def _last_lines(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------------
# the experiment (runs in the CLI process)


def build_tuner(plan: ExperimentPlan, exp_dir: Path, callbacks=(), poll_s: float = 1.0, restore: bool = False,
                renderer: str | None = None):
    from ray import tune

    trainable = tune.with_resources(trial_controller, {"CPU": 0.01, SLOT_RESOURCE: plan.slots_per_trial})
    if restore:
        return tune.Tuner.restore(str((exp_dir / "tune").resolve()), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    scheduler = None
    if plan.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="validations", metric="val_avg", mode="max", max_t=plan.validations,
            grace_period=min(plan.grace_validations, plan.validations), reduction_factor=2,
            stop_last_trials=False)  # a trial at its last validation ends with its job, not stopped by ASHA
    param_space = {
        "experiment_dir": str(exp_dir.resolve()),
        "trial": tune.grid_search([t.name for t in plan.trials]),
        "poll_s": poll_s,
        "renderer": renderer,
    }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=plan.max_concurrent,
                                    trial_name_creator=lambda t: t.config["trial"],
                                    trial_dirname_creator=lambda t: t.config["trial"]),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(exp_dir.resolve()), verbose=0, callbacks=list(callbacks),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            log_to_file=True,
        ),
    )


def _quiet_worker_start_warnings() -> None:
    """Drop Ray's "N PYTHON worker processes have been started" warnings from this driver's console.

    Each verl job starts about 15 worker processes and the raylet warns whenever that exceeds the number of
    CPUs; on the local profile that is a screenful per trial above the live table, and says nothing to act on.
    """
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "_maspo_quiet", False):
        return

    def filtered(data, ignore_prefix):
        lines = [line for line in data.get("lines", []) if "PYTHON worker processes have been started" not in line]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    filtered._maspo_quiet = True
    ray_worker.print_to_stdstream = filtered


def slots_available() -> int:
    import ray

    return int(ray.cluster_resources().get(SLOT_RESOURCE, 0))


def run_experiment(plan: ExperimentPlan, exp_dir: Path, console, *, address: str | None = None,
                   restore: bool = False, poll_s: float = 1.0, renderer: str | None = None) -> int:
    """Start (or join) Ray, run the Tune experiment with a live table, return a process exit code."""
    import ray

    from orchestrator.cluster import LocalRayCluster
    from orchestrator.live import LiveTrials

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old reporter honours verbose=0: our table only
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    live = LiveTrials(plan, exp_dir, console)
    if plan.profile == "local" and address is None:
        slots = plan.max_concurrent * plan.slots_per_trial
        cluster = LocalRayCluster(num_cpus=16 * slots, num_gpus=slots, log_dir=exp_dir,
                                  resources={SLOT_RESOURCE: slots})
    else:
        cluster = None
    if plan.profile == "a100":
        check_ready(plan, address)
    if renderer is None:
        _prepare_shared_assets(plan, console)
    try:
        if cluster is not None:
            cluster.start()
            address = cluster.address
        _quiet_worker_start_warnings()
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                     runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}} if cluster else None)
        except ConnectionError as err:
            from orchestrator.algorithms import AlgorithmError

            raise AlgorithmError(f"cannot reach the Ray cluster at {address}: {str(err).splitlines()[0]}") from None
        from orchestrator.cluster import terminate_as_interrupt

        terminate_as_interrupt()  # again: ray.init installs Ray's own SIGTERM handler (which just dies)
        free = slots_available()
        if free < plan.slots_per_trial:
            from orchestrator.algorithms import AlgorithmError

            raise AlgorithmError(f"the Ray cluster at {address} declares {free} '{SLOT_RESOURCE}' resources but "
                                 f"a trial needs {plan.slots_per_trial}; start its GPU nodes with "
                                 f"--resources='{{\"{SLOT_RESOURCE}\": 1}}' per 8 GPUs (see cluster/)")
        tuner = build_tuner(plan, exp_dir, poll_s=poll_s, restore=restore, renderer=renderer)
        with live:
            grid = tuner.fit()
        return 0 if grid.num_errors == 0 else 1
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.stop()


def check_ready(plan: ExperimentPlan, address: str | None) -> None:
    """A cluster run needs a cluster and the prepared data; say so before anything starts."""
    if plan.profile != "a100":
        return
    from orchestrator.algorithms import AlgorithmError
    from orchestrator.scales import missing_data_files

    if address is None:
        raise AlgorithmError("the a100 profile runs on a Ray cluster: give --address HOST:PORT (or 'auto' on the "
                             "head node) or --cluster cluster/<file>.yaml")
    missing = missing_data_files(plan.trials[0].trial.profile)
    if missing:
        raise AlgorithmError(f"{len(missing)} data file(s) missing, e.g. {missing[0]}; run `maspo data prepare "
                             f"--out {missing[0].parent}` on a machine with Hugging Face access (shared storage)")


def _prepare_shared_assets(plan: ExperimentPlan, console) -> None:
    """Build the local profile's cached model and data once, in the CLI, before trials race for them."""
    if plan.profile != "local":
        return
    from orchestrator.runner import prepare_local_assets

    seen = set()
    with console.status("preparing the warm-started tiny model and the synthetic data (cached)") as status:
        for planned in plan.trials:
            key = (planned.trial.profile, planned.trial.seed)
            if key in seen:
                continue
            seen.add(key)

            def warm(step, total, accuracy):
                status.update(f"warm start {step}/{total}, sampled accuracy {100 * accuracy:.0f}%")

            prepare_local_assets(planned.trial.profile, planned.trial.seed, progress=warm)


def dry_run_lines(plan: ExperimentPlan) -> list[tuple[PlannedTrial, str]]:
    """Every trial's exact verl command, without preparing anything or starting Ray."""
    from orchestrator.runner import LocalAssets, render_local_trial

    out = []
    for planned in plan.trials:
        t = planned.trial
        trial_dir = Path("runs") / plan.name / "trials" / planned.name
        if t.profile.name == "a100":
            job = render_job(planned, plan, trial_dir, trial_dir / "attempts" / "1")
        else:
            assets = LocalAssets(Path("<warm-started tiny model>"), Path("<data>/train.parquet"),
                                 [Path("<data>/val.parquet")])
            job = render_local_trial(t, assets, trial_dir, planned.name,
                                     metrics_path=trial_dir / "attempts/1/metrics.jsonl",
                                     checkpoint_every=t.profile.test_freq)
        out.append((planned, " ".join(["python", "-m", "verl.trainer.main_ppo",
                                       *map(shlex.quote, job.overrides)])))
    return out


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def python() -> str:
    return sys.executable
