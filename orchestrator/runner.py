"""One trial on the local profile: ``maspo run``.

The trial is what a sweep's trial will be: verl's own ``python -m verl.trainer.main_ppo`` submitted as ONE Ray
Job (to a private local Ray started for it), its JSONL metrics tailed while it runs, the job stopped in
``finally``. Outputs land in one directory per trial:

    <out>/trial.json      the resolved TrialConfig and the exact verl command
    <out>/metrics.jsonl   verl's file logger (every step's metrics, validation included)
    <out>/wandb/          the W&B offline run (upload later with ``wandb sync``)
    <out>/job.log         the job's driver log (verl's console)
    <out>/checkpoints/    verl checkpoints
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.specs import LocalProfile, TrialConfig

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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


@dataclass
class TrialJob:
    """The rendered verl command of one trial: overrides and environment."""

    overrides: list[str]
    env: dict[str, str]
    out_dir: Path
    metrics_path: Path

    module: str = "verl.trainer.main_ppo"

    def entrypoint(self, python: str = sys.executable) -> str:
        return " ".join([shlex.quote(python), "-m", self.module, *map(shlex.quote, self.overrides)])


def render_local_trial(trial: TrialConfig, assets: LocalAssets, out_dir: Path, name: str, *,
                       metrics_path: Path | None = None, checkpoint_every: int | None = None) -> TrialJob:
    """verl overrides and job environment for a trial on the local profile.

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
        lr=p.lr, project_name="maspo-local", experiment_name=name, ray_temp_dir="/tmp/unused",
    )
    # the job joins the trial's Ray cluster: no ray.init settings of its own
    overrides = [o for o in overrides if not o.lstrip("+").startswith("ray_kwargs.ray_init.")]
    overrides = [o if not o.startswith("trainer.logger=") else "trainer.logger=['console','file','wandb']"
                 for o in overrides]
    if checkpoint_every:
        overrides = [o for o in overrides if not o.startswith("trainer.save_freq=")]
        overrides += [f"trainer.save_freq={checkpoint_every}", "trainer.resume_mode=auto",
                      "trainer.max_actor_ckpt_to_keep=2"]  # a retry may need the one before the latest
    overrides += get(trial.algorithm).verl_overrides(trial.params)
    env = {k: v for k, v in cpu_trainer_env(out_dir).items() if k != "RAY_ADDRESS"}
    if metrics_path is not None:
        env["VERL_FILE_LOGGER_PATH"] = str(metrics_path)
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(out_dir), "WANDB_SILENT": "true",
                "PYTHONUNBUFFERED": "1"})
    return TrialJob(overrides, env, out_dir, Path(env["VERL_FILE_LOGGER_PATH"]))


@dataclass
class TrialProgress:
    """What the progress display shows, updated from the tailed JSONL records."""

    steps: int
    step: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    validations: dict[int, dict[str, float]] = field(default_factory=dict)
    first_record_s: float | None = None

    def update(self, record: dict, elapsed: float) -> None:
        data = record.get("data", {})
        step = int(record.get("step", 0))
        if self.first_record_s is None:
            self.first_record_s = elapsed
        self.step = max(self.step, step)
        self.latest.update({k: v for k, v in data.items() if isinstance(v, (int, float))})
        validation = {k: v for k, v in data.items() if k.startswith("val-core/")}
        if validation:
            self.validations.setdefault(step, {}).update(validation)

    def avg_key(self) -> str | None:
        return next((k for k in sorted(self.latest) if k.startswith("val-core/average/acc/mean@")), None)

    def summary_line(self) -> str:
        parts = []
        if "actor/entropy" in self.latest:
            parts.append(f"entropy {self.latest['actor/entropy']:.3f}")
        if "critic/score/mean" in self.latest:
            parts.append(f"reward {self.latest['critic/score/mean']:+.3f}")
        key = self.avg_key()
        if key:
            parts.append(f"Avg@{key.rsplit('@', 1)[1]} {100 * self.latest[key]:.1f}%")
        return "  ".join(parts)


def run_local_trial(trial: TrialConfig, name: str, out_dir: Path, console, poll_s: float = 0.5) -> int:
    """Run one trial end to end on the local profile; returns the job's exit status as a process code."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from orchestrator.cluster import LocalRayCluster
    from orchestrator.metrics import JsonlTail

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False)
    state = TrialProgress(steps=trial.profile.steps)
    with progress:
        task = progress.add_task("preparing model and data", total=trial.profile.steps, info="")

        def warm_progress(step, total, accuracy):
            progress.update(task, info=f"warm start {step}/{total}, sampled accuracy {100 * accuracy:.0f}%")

        assets = prepare_local_assets(trial.profile, trial.seed, progress=warm_progress)
        job = render_local_trial(trial, assets, out_dir, name)
        from orchestrator.tracking import trial_wandb_env

        job.env.update(trial_wandb_env(trial, experiment=name, trial_name=name, tags=["run"]))
        (out_dir / "trial.json").write_text(json.dumps({
            "name": name, "trial": trial.model_dump(mode="json"), "trial_hash": trial.stable_hash(),
            "model_dir": str(assets.model_dir), "entrypoint": job.entrypoint(),
            "env": {k: v for k, v in job.env.items() if "KEY" not in k and "TOKEN" not in k},
        }, indent=1))
        progress.update(task, description="starting Ray", info="")
        with LocalRayCluster(log_dir=out_dir) as cluster:
            client = cluster.job_client()
            submission_id = f"{name}-{int(time.time())}"
            client.submit_job(entrypoint=job.entrypoint(), submission_id=submission_id,
                              runtime_env={"env_vars": job.env})
            progress.update(task, description="starting verl")
            tail = JsonlTail(job.metrics_path)
            status = "PENDING"
            try:
                while True:
                    for record in tail.read():
                        state.update(record, time.monotonic() - started)
                    if state.first_record_s is not None:
                        progress.update(task, description="training", completed=state.step, info=state.summary_line())
                    status = str(client.get_job_status(submission_id).value)
                    if status in TERMINAL:
                        for record in tail.read():
                            state.update(record, time.monotonic() - started)
                        progress.update(task, completed=state.step, info=state.summary_line())
                        break
                    time.sleep(poll_s)
            finally:
                if status not in TERMINAL:
                    client.stop_job(submission_id)
                (out_dir / "job.log").write_text(client.get_job_logs(submission_id))
    elapsed = time.monotonic() - started
    print_summary(console, name, trial, state, status, elapsed, out_dir)
    return 0 if status == "SUCCEEDED" else 1


def print_summary(console, name, trial, state: TrialProgress, status: str, elapsed: float, out_dir: Path) -> None:
    from rich.table import Table

    color = "green" if status == "SUCCEEDED" else "red"
    console.print(f"[bold]{name}[/]: {trial.algorithm} seed {trial.seed}, [{color}]{status}[/] after "
                  f"{state.step}/{state.steps} steps in {elapsed:.0f} s")
    if state.validations:
        table = Table(title="validation (local synthetic benchmarks)")
        last = state.validations[max(state.validations)]
        sources = sorted({k.split("/")[1] for k in last if k.split("/")[1] != "average"})
        n = next((k.rsplit("@", 1)[1] for k in last if "/acc/mean@" in k), "?")
        table.add_column("step", justify="right")
        for source in sources + ["average"]:
            table.add_column(f"{source.removeprefix('local_')}\nAvg@{n} / Pass@{n}", justify="right")
        for step, metrics in sorted(state.validations.items()):
            cells = []
            for source in sources + ["average"]:
                a = metrics.get(f"val-core/{source}/acc/mean@{n}")
                p = metrics.get(f"val-core/{source}/acc/pass@{n}")
                cells.append("-" if a is None else f"{100 * a:.1f} / {100 * p:.1f}" if p is not None else f"{100 * a:.1f}")
            table.add_row(str(step), *cells)
        console.print(table)
    if status != "SUCCEEDED":
        console.print(f"[red]the verl job ended {status}[/]; its log: {out_dir / 'job.log'}")
    console.print(f"outputs: {out_dir}  (metrics.jsonl, wandb/, job.log, trial.json)")
