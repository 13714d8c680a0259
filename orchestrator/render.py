"""A trial's verl command: Hydra overrides and job environment, for either profile. Rendering has no side effects.

- local profile: :func:`render_local_trial` (verl on CPU: ``orchestrator.verl_bridge.local_run``), with the
  assets :func:`prepare_local_assets` builds and caches (warm-started tiny model, synthetic data);
- a100 profile: ``orchestrator.scales.render_a100_overrides`` (Table 4 hyperparameters, the scale's preset);
- an a100 experiment rehearsed on CPU (``--rehearse``): the a100 overrides with the device-bound ones replaced by
  the local profile's (``orchestrator.rehearsal``).

:func:`render_job` picks one for a planned trial and adds the W&B identity; :func:`dry_run_lines` renders every
trial of a plan without preparing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.plan import ExperimentPlan, PlannedTrial
from orchestrator.config.trial import LocalProfile, TrialConfig
from orchestrator.jobs import TrialJob
from orchestrator.store import METRICS_FILE


@dataclass(frozen=True)
class LocalAssets:
    model_dir: Path
    train_file: Path
    val_files: list[Path]


def prepare_local_assets(profile: LocalProfile, seed: int, progress=None) -> LocalAssets:
    """The warm-started tiny model (or the profile's model) and the synthetic data set, both cached."""
    from orchestrator.local import tasks
    from orchestrator.local.tiny_model import cache_root
    from orchestrator.local.warm_start import warm_start_model

    model_dir = Path(profile.model_path) if profile.model_path else warm_start_model(progress=progress)
    data_dir = cache_root() / f"data-s{seed}-v{profile.n_val_problems}-r{tasks.RECIPE_VERSION}"
    train = data_dir / "train.parquet"
    vals = [data_dir / f"val_{name}.parquet" for name, _ in tasks.BENCHMARKS]
    if not (train.exists() and all(v.exists() for v in vals)):
        tasks.write_dataset(data_dir, n_val=profile.n_val_problems, seed=seed)
    return LocalAssets(model_dir, train, vals)


def placeholder_assets() -> LocalAssets:
    """What a dry run shows instead of the cached model and data (nothing is built for a dry run)."""
    return LocalAssets(Path("<warm-started tiny model>"), Path("<data>/train.parquet"), [Path("<data>/val.parquet")])


def render_local_trial(trial: TrialConfig, assets: LocalAssets, out_dir: Path, name: str, *,
                       metrics_path: Path | None = None, checkpoint_every: int | None = None) -> TrialJob:
    """verl overrides and job environment for a trial on the local profile, as a job on an existing Ray.

    ``metrics_path`` is where verl's file logger writes (default ``<out_dir>/metrics.jsonl``; verl truncates it
    at start, so a retried attempt gets a file of its own). ``checkpoint_every`` saves a checkpoint every that
    many steps under ``<out_dir>/checkpoints`` and makes the run resume from the latest one (verl's
    ``resume_mode=auto``); None keeps no checkpoints.
    """
    from orchestrator.algorithms import get
    from orchestrator.verl_bridge.local_run import cpu_trainer_env, cpu_trainer_overrides

    p = trial.profile
    overrides = cpu_trainer_overrides(
        assets.model_dir, assets.train_file, assets.val_files, out_dir=out_dir, n_samples=p.n_samples,
        val_n=p.val_n, train_batch_size=p.train_batch_size, ppo_mini_batch_size=p.ppo_mini_batch_size,
        max_response_length=p.max_response_length, total_steps=p.steps, test_freq=p.test_freq, seed=trial.seed,
        lr=p.lr, project_name="maspo-local", experiment_name=name, loggers=("console", "file", "wandb"),
    )
    if checkpoint_every:
        overrides = [o for o in overrides if not o.startswith("trainer.save_freq=")]
        overrides += [f"trainer.save_freq={checkpoint_every}", "trainer.resume_mode=auto",
                      "trainer.max_actor_ckpt_to_keep=2"]  # a retry may need the one before the latest
    overrides += get(trial.algorithm).verl_overrides(trial.params)
    env = {k: v for k, v in cpu_trainer_env(out_dir).items() if k != "RAY_ADDRESS"}  # the job joins our Ray
    if metrics_path is not None:
        env["VERL_FILE_LOGGER_PATH"] = str(metrics_path)
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(out_dir), "WANDB_SILENT": "true",
                "PYTHONUNBUFFERED": "1"})
    return TrialJob(overrides, env, out_dir, Path(env["VERL_FILE_LOGGER_PATH"]))


def render_job(planned: PlannedTrial, plan: ExperimentPlan, trial_dir: Path, attempt_dir: Path,
               assets: LocalAssets | None = None) -> TrialJob:
    """The verl command of one attempt of a planned trial, for its profile, with its W&B identity.

    On the local profile (and in a rehearsal, for its model) ``assets`` defaults to the prepared (cached) ones.
    """
    from orchestrator.tracking import trial_wandb_env

    trial = planned.trial
    metrics_path = attempt_dir / METRICS_FILE
    if plan.rehearse:
        from orchestrator.rehearsal import render_rehearsal_job, tiny_model

        model_dir = assets.model_dir if assets is not None else tiny_model()
        job = render_rehearsal_job(planned, trial_dir, metrics_path, model_dir)
    elif trial.profile.name == "a100":
        from orchestrator.scales import a100_job_env, render_a100_overrides

        overrides = render_a100_overrides(trial.algorithm, trial.params, trial.seed, trial.profile,
                                          experiment_name=planned.name, trial_hash=trial.stable_hash())
        job = TrialJob(overrides, a100_job_env(metrics_path), trial_dir, metrics_path)
        # W&B's files (and its offline runs, when a node has no credentials) in the trial's directory on shared
        # storage, where `maspo sync` finds them (docs/orchestration.md#wandb-on-a-cluster)
        job.env["WANDB_DIR"] = str(trial_dir)
    else:
        assets = assets or prepare_local_assets(trial.profile, trial.seed)
        job = render_local_trial(trial, assets, trial_dir, planned.name, metrics_path=metrics_path,
                                 checkpoint_every=trial.profile.test_freq)
    mode = job.env.get("WANDB_MODE")
    job.env.update(trial_wandb_env(trial, experiment=plan.name, trial_name=planned.name, label=planned.label,
                                   tags=[plan.kind, plan.profile, plan.scale, *(["rehearsal"] if plan.rehearse else [])]))
    if plan.rehearse:
        job.env["WANDB_MODE"] = mode  # offline unless the user set WANDB_MODE (orchestrator.rehearsal.job_env)
    return job


def trial_checkpoint_dir(planned: PlannedTrial, trial_dir: Path) -> Path:
    """Where the trial's verl checkpoints are (``resume_mode=auto`` resumes from there)."""
    if planned.trial.profile.name == "a100":
        from orchestrator.scales import checkpoint_dir

        return checkpoint_dir(planned.trial.profile, planned.trial.stable_hash())
    return trial_dir / "checkpoints"


def dry_run_lines(plan: ExperimentPlan, root: Path = Path("runs")) -> list[tuple[PlannedTrial, str]]:
    """Every trial's exact verl command, without preparing anything or starting Ray."""
    out = []
    for planned in plan.trials:
        trial_dir = root / plan.name / "trials" / planned.name
        job = render_job(planned, plan, trial_dir, trial_dir / "attempts" / "1", assets=placeholder_assets())
        out.append((planned, job.command_line()))
    return out
