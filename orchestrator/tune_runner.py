"""Sweeps and comparisons as ONE Ray Tune experiment per command.

Each Tune trial is a CPU-only controller (:func:`trial_controller`) that submits ONE Ray Job running verl's
``main_ppo``, tails the job's JSONL, calls ``tune.report`` after every step, and stops the job in ``finally``
(docs/orchestration.md: verl inside a Tune placement group deadlocks or leaks placement groups).

Concurrency is a counting semaphore in Ray's own scheduler: every GPU node declares the custom resource
``verl_slot`` (one per 8 GPUs on the cluster; one per fake GPU on the local profile) and a trial of N nodes holds
one slot on each of N different nodes (a STRICT_SPREAD placement group of N ``{verl_slot: 1}`` bundles, the
controller's CPU share in the first), so surplus trials wait in Tune instead of holding a Ray Job whose placement
groups cannot be placed. The slots are only a reservation: the verl job is a Ray Job outside that group and
takes the GPUs with its own placement groups (one STRICT_PACK group per node); as every node has one slot and
8 GPUs, the slots held never exceed the nodes whose GPUs are free for the jobs that hold them.

By default an experiment fills the cluster: trials start in :func:`orchestrator.schedule.start_order` (widest,
then longest first) as long as they fit the free slots (:class:`orchestrator.admission.SlotAdmission`); ``--max-concurrent`` caps it.

Failure handling is Ray's and verl's: ``FailureConfig(max_failures)`` re-runs a failed controller, which
resubmits the job; the job resumes from the trial's last verl checkpoint (``trainer.resume_mode=auto`` in a
directory named by the trial, checkpoints at every validation); before each attempt the controller passes over a
checkpoint cut off by a crash (:func:`orchestrator.store.choose_resume`), and a job still PENDING after the
plan's ``job_start_timeout_s`` is stopped and fails the attempt (docs/orchestration.md#faults). An interrupted
experiment is restored with ``Tuner.restore``, which re-runs only the unfinished trials.

The experiment directory (``runs/<NAME>/``) is read and written by :mod:`orchestrator.store` only.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
import time
import uuid
from pathlib import Path

from orchestrator.config.plan import ExperimentPlan, PlannedTrial
from orchestrator.errors import UserError
from orchestrator.jobs import JobRun, JobStartTimeout, redacted, stop_jobs
from orchestrator.rehearsal import drill, drill_step, quiet_resume_drills, should_drill
from orchestrator.render import render_job, trial_checkpoint_dir
from orchestrator.store import (DiskFull, ExperimentDir, TrialDir, check_space, choose_resume, is_disk_full,
                                read_records, summary)
from orchestrator.verl_bridge.patches import install_driver_patches

SLOT_RESOURCE = "verl_slot"
CONTROLLER_CPU = 0.01  # a trial controller polls a job and tails a file
LOCAL_TRIAL_MEMORY_GIB = 5.0  # peak of one local-profile trial (verl on CPU with the tiny model), measured
LOCAL_TRIAL_CORES = 1.0


# --------------------------------------------------------------------------------------------------------
# the trial controller (runs inside a Tune trial, on a Ray worker)


class TrialJobFailed(RuntimeError):
    """The verl job of a trial ended FAILED or STOPPED by someone else; Tune's FailureConfig retries it."""


def trial_controller(config: dict) -> None:
    """A Tune trial: submit the trial's verl job, stream its metrics to Tune, stop it in ``finally``."""
    from ray import tune
    from ray.job_submission import JobSubmissionClient

    experiment = ExperimentDir(Path(config["experiment_dir"]))
    plan = experiment.plan()
    planned = next(t for t in plan.trials if t.name == config["trial"])
    files = experiment.trial(planned.name)
    status = files.status()
    if status.get("state") == "succeeded":  # its job ended before a killed driver's Tune state could say so
        tune.report({**summary(files.records()), "attempt": len(status["attempts"]), "resumed_from_step": 0})
        return

    client = JobSubmissionClient(_dashboard_url())
    identity = {"maspo_experiment": plan.name, "maspo_trial": planned.name}
    # a restored trial's previous job may still run (a driver killed by SIGKILL cannot stop it): it must have
    # ended before the checkpoint is read and a new job writes the same checkpoint directory
    lost = _end_previous_jobs(client, identity, status, files)
    stream = files.stream()
    if lost is not None and lost.get("metrics_path"):
        # what the lost attempt's job logged after its controller died counts, as if it had been tailed
        for record in read_records(Path(lost["metrics_path"])):
            stream.accept(record)
        if lost["job_status"] != "FAILED" and stream.steps() >= set(range(planned.trial.profile.steps + 1)):
            # it logged its last step while no driver ran (verl logs a step, its validation included, once the
            # step is done; a local profile's killed cluster cannot say the job's status): nothing left to do
            status["state"] = "succeeded"
            files.write_status(status)
            tune.report({**summary(stream.records), "attempt": len(status["attempts"]), "resumed_from_step": 0})
            return
    files.write_status(status)
    attempt = len(status["attempts"]) + 1
    attempt_dir = files.attempt_dir(attempt)
    attempt_dir.mkdir(parents=True, exist_ok=True)

    # the newest checkpoint that is complete and logged; a cut-off one is passed over, with a warning
    resume = choose_resume(trial_checkpoint_dir(planned, files.path), stream.steps())
    resumed_from = resume.step
    stream.truncate_after(resumed_from)
    if resume.warning():
        print(f"maspo: trial {planned.name}, attempt {attempt}: {resume.warning()}", file=sys.stderr, flush=True)

    render = _import_object(config["renderer"]) if config.get("renderer") else render_job
    job = render(planned, plan, files.path, attempt_dir)
    files.write_info({
        "name": planned.name, "experiment": plan.name, "label": planned.label,
        "trial": planned.trial.model_dump(mode="json"), "trial_hash": planned.trial.stable_hash(),
        "entrypoint": job.entrypoint(), "env": redacted(job.env),
    })

    submission_id = f"{planned.name}-a{attempt}-{uuid.uuid4().hex[:6]}"
    status["attempts"].append({"attempt": attempt, "submission_id": submission_id, "started": time.time(),
                               "resumed_from_step": resumed_from, "ended": None, "job_status": "PENDING",
                               "slot_nodes": _slot_nodes(), "metrics_path": str(job.metrics_path)})
    if resume.warning():
        status["attempts"][-1]["checkpoint_warning"] = resume.warning()
    from orchestrator.scales import gpus_of

    status.update(state="running", gpus=1 if plan.rehearse else gpus_of(planned.trial.profile))
    files.write_status(status)

    drilled = should_drill(plan, planned, attempt)  # a rehearsal stops its first trial once, after a checkpoint
    checkpoints = trial_checkpoint_dir(planned, files.path)

    def report(records: list[dict]) -> None:
        if [r for r in records if stream.accept(r)]:
            tune.report({**summary(stream.records), "attempt": attempt, "resumed_from_step": resumed_from})
        step = drill_step(checkpoints, stream.steps(), planned.trial.profile.steps) if drilled else None
        if step is not None:
            status["attempts"][-1]["resume_drill"] = step
            raise drill(step)  # JobRun stops the job on the way out; Tune's FailureConfig retries

    run = JobRun(client, job, submission_id, log_path=attempt_dir / "job.log", metadata=identity,
                 poll_s=float(config.get("poll_s", 1.0)), start_timeout_s=plan.job_start_timeout_s)
    error = None
    try:
        job_status = run.run(report)
    except JobStartTimeout as err:  # stopped by JobRun; a failed attempt, which Tune's FailureConfig retries
        error = f"trial {planned.name}, attempt {attempt}: {err}"
        raise TrialJobFailed(error) from None
    finally:
        status["attempts"][-1].update(ended=time.time(), job_status=run.status)
        if error:
            status["attempts"][-1]["error"] = error
        status["state"] = "failed" if error else {"SUCCEEDED": "succeeded", "FAILED": "failed"}.get(run.status,
                                                                                                    "stopped")
        files.write_status(status)
    if job_status != "SUCCEEDED":
        log_tail = _last_lines(attempt_dir / "job.log", 5)
        said = f" ({run.message})" if run.message else ""
        raise TrialJobFailed(f"verl job {submission_id} ended {job_status}{said}; log: {attempt_dir / 'job.log'}"
                             f"\n{log_tail}")


PREVIOUS_JOB_STOP_S = 120.0  # verl gets SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default)


def _end_previous_jobs(client, identity: dict[str, str], status: dict, files: TrialDir) -> dict | None:
    """Stop every job of this trial still running on the cluster and wait until each has ended. If the last
    attempt's controller could not record its end (it died with a killed driver), record it and return it.

    A job stopped here ended now. A job found already ended ended when the cluster says (its job info), or, when
    the cluster that ran it is gone (a local profile's killed cluster), when it last wrote a file of the trial
    (``TrialDir.last_written``): not now, which would count the hours between the kill and the resume as the
    trial's wall time and GPU-hours."""
    stopped = stop_jobs(client, identity, wait_s=PREVIOUS_JOB_STOP_S)
    if stopped:
        status["state"] = "stopped"
    last = status["attempts"][-1] if status["attempts"] else None
    if last is None or last.get("ended") is not None:
        return None
    if last["submission_id"] in stopped:
        ended, ended_by = time.time(), "stopped by resume"
    else:
        ended, ended_by = None, "found ended by resume"
    try:
        info = client.get_job_info(last["submission_id"])
        job_status = str(info.status.value)
        if ended is None and info.end_time:
            ended = info.end_time / 1000  # ms
    except Exception:  # noqa: BLE001 (a job of another cluster: a local profile's killed cluster was stopped)
        job_status = "STOPPED"
    if ended is None:
        ended = files.last_written(since=last["started"])
    last.update(ended=ended, job_status=job_status, ended_by=ended_by)
    return last


def _slot_nodes() -> list[str]:
    """The nodes whose ``verl_slot`` this trial holds (its placement group's bundles), for the record."""
    try:
        import ray

        pg = ray.util.get_current_placement_group()
        if pg is None:
            return []
        return list(ray.util.placement_group_table(pg)["bundles_to_node_id"].values())
    except Exception:  # noqa: BLE001 (a record, never a reason to fail a trial)
        return []


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


def _last_lines(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------------
# the experiment (runs in the CLI process)


def trial_placement(nodes: int):
    """What a trial of ``nodes`` nodes reserves: one ``verl_slot`` on each of that many different nodes."""
    from ray.tune import PlacementGroupFactory

    bundles = [{"CPU": CONTROLLER_CPU, SLOT_RESOURCE: 1}] + [{SLOT_RESOURCE: 1} for _ in range(nodes - 1)]
    return PlacementGroupFactory(bundles, strategy="STRICT_SPREAD")


class TrialResources:
    """Tune's per-trial resource callable: the trial's placement (:func:`trial_placement`), by trial name."""

    def __init__(self, nodes_of: dict[str, int]):
        self.nodes_of = dict(nodes_of)

    def __call__(self, config: dict):
        return trial_placement(self.nodes_of.get(config["trial"], 1))


def build_tuner(plan: ExperimentPlan, exp_dir: Path, callbacks=(), poll_s: float = 1.0, restore: bool = False,
                renderer: str | None = None):
    from ray import tune

    from orchestrator.admission import SlotAdmission
    from orchestrator.schedule import start_order

    nodes_of = {t.name: plan.nodes_of(t) for t in plan.trials}
    trainable = tune.with_resources(trial_controller, TrialResources(nodes_of))
    trials = start_order(plan)
    if restore:
        tune_dir = (exp_dir / "tune").resolve()
        try:
            _check_tune_state(tune_dir)
            return tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True,
                                      resume_errored=True)
        except Exception as err:  # noqa: BLE001 (Tune's own state is unreadable: rebuilt from ours below)
            trials = _rebuild_from_store(plan, exp_dir, tune_dir, err)
    scheduler = None
    if plan.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="validations", metric="val_avg", mode="max", max_t=plan.validations,
            grace_period=min(plan.grace_validations, plan.validations), reduction_factor=2,
            stop_last_trials=False)  # a trial at its last validation ends with its job, not stopped by ASHA
    param_space = {
        "experiment_dir": str(exp_dir.resolve()),
        "trial": tune.grid_search([t.name for t in trials]),
        "poll_s": poll_s,
        "renderer": renderer,
    }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(scheduler=scheduler,
                                    search_alg=SlotAdmission(nodes_of, max_concurrent=plan.max_concurrent or 0),
                                    trial_name_creator=lambda t: t.config["trial"],
                                    trial_dirname_creator=lambda t: t.config["trial"]),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(exp_dir.resolve()), verbose=0, callbacks=list(callbacks),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            log_to_file=True,
        ),
    )


def _check_tune_state(tune_dir: Path) -> None:
    """Raise if the state ``Tuner.restore`` and ``fit`` will read is torn. Tune writes its experiment state
    (``experiment_state-*.json``, JSON) in place, so a full disk or a crash mid-write leaves it cut off, and Tune
    then fails inside ``fit`` (JSONDecodeError, or a trial restored without its config: KeyError). The search
    algorithm's state (``basic-variant-state-*.json``) is a pickle despite its name, written to a temporary file and
    renamed; it is checked by walking its opcodes to the end (``pickletools``: unpickling it would need Tune's
    registry of trainables)."""
    import json
    import pickletools

    found = sorted(tune_dir.glob("experiment_state-*.json"))
    if not found:
        raise FileNotFoundError(f"no experiment_state-*.json in {tune_dir}")
    try:
        json.loads(found[-1].read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{found[-1].name} is not whole JSON ({err})") from None
    found = sorted(tune_dir.glob("basic-variant-state-*.json"))
    if found:
        try:
            *_, (last, _, _) = pickletools.genops(found[-1].read_bytes())
            if last.name != "STOP":
                raise ValueError("no STOP opcode")
        except (OSError, ValueError) as err:
            raise ValueError(f"{found[-1].name} is not a whole pickle ({err})") from None


def _rebuild_from_store(plan: ExperimentPlan, exp_dir: Path, tune_dir: Path, err: BaseException) -> list:
    """Tune's experiment state could not be restored (a full disk or a crash tore it: Tune writes it in place). Our
    own files hold what a restore needs (each trial's status, stream and checkpoints; docs/orchestration.md#disk-full),
    so a fresh Tune experiment runs the trials that have not succeeded, in the start order; each controller resumes
    its trial from its newest complete checkpoint as on any retry. Tune's unreadable state is kept aside."""
    from orchestrator.schedule import start_order

    aside = tune_dir.with_name(f"tune.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    if tune_dir.exists():
        tune_dir.rename(aside)
    experiment = ExperimentDir(exp_dir)
    todo = [t for t in start_order(plan) if experiment.trial(t.name).status().get("state") != "succeeded"]
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    print(f"maspo: warning: Tune's saved state of {plan.name} is unreadable ({reason[:200]}); it is kept in {aside} "
          f"and the {len(todo)} unfinished trial(s) resume from their own checkpoints in a fresh Tune experiment"
          + (" (ASHA's decisions so far are not kept)" if plan.scheduler == "asha" else ""),
          file=sys.stderr, flush=True)
    if not todo:
        raise UserError(f"every trial of {plan.name} has succeeded: nothing to resume") from None
    return todo


def slots_available() -> int:
    import ray

    return int(ray.cluster_resources().get(SLOT_RESOURCE, 0))


def slot_nodes() -> list[int]:
    """``verl_slot``s declared by each live node of the cluster (nodes without one left out)."""
    import ray

    return [int(n["Resources"].get(SLOT_RESOURCE, 0)) for n in ray.nodes()
            if n.get("Alive") and n["Resources"].get(SLOT_RESOURCE, 0) >= 1]


def check_slots(plan: ExperimentPlan, per_node: list[int], address: str | None) -> None:
    """Refuse a cluster on which the widest trial can never start: it needs a slot on each of N different nodes."""
    total = sum(per_node)
    widest = max(plan.trials, key=plan.nodes_of)
    nodes = plan.nodes_of(widest)
    if total < 1:
        raise UserError(f"the Ray cluster at {address} declares no '{SLOT_RESOURCE}' resource, so no trial can "
                        f"start; start its GPU nodes with --resources='{{\"{SLOT_RESOURCE}\": 1}}' per 8 GPUs "
                        f"(see cluster/)")
    if len(per_node) < nodes:
        raise UserError(f"the Ray cluster at {address} has {total} '{SLOT_RESOURCE}'(s) in total but only "
                        f"{len(per_node)} node(s) with one; trial {widest.name} spans {nodes} nodes and needs "
                        f"a slot on each of {nodes} different nodes (one slot per 8-GPU node, see cluster/)")


def local_slots(cpus: int | None = None, available_bytes: int | None = None) -> int:
    """How many local-profile trials this machine runs at once: one per core and per 5 GiB free, at least 1."""
    if cpus is None:
        cpus = os.cpu_count() or 1
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    by_memory = int(available_bytes / (LOCAL_TRIAL_MEMORY_GIB * 2**30))
    return max(1, min(int(cpus / LOCAL_TRIAL_CORES), by_memory))


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
    if (plan.profile == "local" or plan.rehearse) and address is None:
        slots = (plan.max_concurrent or local_slots()) * plan.slots_per_trial
        cluster = LocalRayCluster(num_cpus=16 * slots, num_gpus=slots, log_dir=exp_dir,
                                  resources={SLOT_RESOURCE: slots}, record_dir=exp_dir)
    else:
        cluster = None
    if plan.profile == "a100":
        check_ready(plan, address)
    if renderer is None:
        _prepare_shared_assets(plan, console)
    try:
        if cluster is not None:
            cluster.start()  # stops a killed command's cluster first (cluster.stop_orphaned_cluster)
            address, orphan = cluster.address, cluster.orphan
        else:  # a killed local run resumed against a cluster: its private Ray must not go on writing checkpoints
            from orchestrator.cluster import stop_orphaned_cluster

            orphan = stop_orphaned_cluster(exp_dir)
        if orphan and orphan.get("processes"):
            console.print(f"stopped the private Ray cluster a killed command (pid {orphan.get('driver_pid')}) left "
                          f"running: {orphan['processes']} processes, its jobs included", markup=False)
        install_driver_patches()  # the driver's console: Ray's worker-start warnings dropped (docs/patches.md)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")  # the private one: its token
        except ConnectionError as err:
            raise UserError(f"cannot reach the Ray cluster at {address}: {str(err).splitlines()[0]}") from None
        from orchestrator.cluster import terminate_as_interrupt

        terminate_as_interrupt()  # again: ray.init installs Ray's own SIGTERM handler (which just dies)
        check_slots(plan, slot_nodes(), address)
        if plan.rehearse:
            quiet_resume_drills()
        quiet_disk_full()
        tuner = build_tuner(plan, exp_dir, poll_s=poll_s, restore=restore, renderer=renderer)
        with live:
            try:
                grid = tuner.fit()
            except Exception as err:
                # Tune's own writes (its state, a trial's error file) met a full disk, or it read back one of
                # its files that a full disk had cut off (an empty error pickle: EOFError)
                full = _disk_full_in(err)
                if full is not None:
                    raise DiskFull(getattr(full, "filename", None) or exp_dir) from None
                check_space(exp_dir)
                raise
        full = next((e for e in map(_disk_full_in, grid.errors) if e is not None), None)
        if full is not None:  # a trial controller could not write its files: the same one line, not "1 failed"
            raise DiskFull(getattr(full, "path", None) or getattr(full, "filename", None) or exp_dir)
        if grid.num_errors:
            check_space(exp_dir)  # a job that died of a full disk (verl's checkpoint, its log) says so here
        return 0 if grid.num_errors == 0 else 1
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.stop()


class _DiskFullFilter:
    """Drops Ray's log records about a full disk (Tune's "Trial task failed" and its syncer's, with tracebacks):
    the command ends with one line that names the path instead (:class:`DiskFull`)."""

    def filter(self, record) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if _disk_full_in(error) is not None:
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a record that cannot format is not ours to drop)
            return True
        return "No space left on device" not in message and "DiskFull" not in message


def quiet_disk_full() -> None:
    """Install :class:`_DiskFullFilter` on the handlers of Ray's loggers (records of every ``ray.*`` logger)."""
    import logging

    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _DiskFullFilter) for f in handler.filters):
            handler.addFilter(_DiskFullFilter())


def _disk_full_in(err: BaseException | None) -> BaseException | None:
    """The :class:`DiskFull` or ``OSError(ENOSPC)`` in an error's chain (Tune and Ray wrap a trial's error).

    ``ResultGrid.errors`` holds a string, not an exception, for a trial whose error Tune could not unpickle (a
    RuntimeEnvSetupError, for one): such a string is a full disk only if it says so."""
    if isinstance(err, str):
        return OSError(errno.ENOSPC, err.strip().splitlines()[-1]) if "No space left on device" in err else None
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFull) or is_disk_full(err):
            return err
        cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError
        err = cause if isinstance(cause, BaseException) else (err.__cause__ or err.__context__)
    return None


def check_ready(plan: ExperimentPlan, address: str | None) -> None:
    """A cluster run needs a cluster and the prepared data; say so before anything starts.

    A rehearsal (``--rehearse``) runs on a private local Ray with the rehearsal's data (``--data`` or the default
    directory, prepared from the fixtures); a cluster run refuses data written from the fixtures.
    """
    if plan.profile != "a100":
        return
    from orchestrator.rehearsal import default_data_dir, is_fixture_data
    from orchestrator.scales import missing_data_files

    profile = plan.trials[0].trial.profile
    if plan.rehearse:
        if address is not None:
            raise UserError("a rehearsal runs on a private local Ray on this machine: leave out --address/--cluster")
        if Path(profile.data_dir).expanduser().resolve() != default_data_dir().resolve():
            missing = missing_data_files(profile)
            if missing:
                raise UserError(f"{len(missing)} data file(s) missing in {missing[0].parent}, e.g. {missing[0].name}; "
                                f"write them with `maspo data prepare --fixtures --out {missing[0].parent}` (or leave "
                                f"out --data for the default rehearsal data)")
        return
    if is_fixture_data(profile.data_dir):
        raise UserError(f"{profile.data_dir} holds the fixtures' rehearsal data (`maspo data prepare --fixtures`), "
                        f"not the benchmarks: point -P data_dir / $MASPO_DATA_DIR at `maspo data prepare`'s output")
    if address is None:
        raise UserError("the a100 profile runs on a Ray cluster: give --address HOST:PORT (or 'auto' on the "
                             "head node) or --cluster cluster/<file>.yaml")
    missing = missing_data_files(profile)
    if missing:
        raise UserError(f"{len(missing)} data file(s) missing, e.g. {missing[0]}; run `maspo data prepare "
                             f"--out {missing[0].parent}` on a machine with Hugging Face access (shared storage)")


def _prepare_shared_assets(plan: ExperimentPlan, console) -> None:
    """Build the local profile's cached model and data once, in the CLI, before trials race for them."""
    if plan.rehearse:
        from orchestrator.rehearsal import ensure_data, tiny_model

        with console.status("preparing the warm-started tiny model and the rehearsal data (cached)") as status:
            tiny_model(progress=lambda step, total, accuracy: status.update(
                f"warm start {step}/{total}, sampled accuracy {100 * accuracy:.0f}%"))
            ensure_data(plan.trials[0].trial.profile.data_dir)
        return
    if plan.profile != "local":
        return
    from orchestrator.render import prepare_local_assets

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
