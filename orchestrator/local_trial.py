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

import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config.trial import TrialConfig
from orchestrator.jobs import JobRun, redacted
from orchestrator.render import prepare_local_assets, render_local_trial
from orchestrator.store import TrialDir


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
        TrialDir(out_dir).write_info({
            "name": name, "trial": trial.model_dump(mode="json"), "trial_hash": trial.stable_hash(),
            "model_dir": str(assets.model_dir), "entrypoint": job.entrypoint(), "env": redacted(job.env),
        })
        progress.update(task, description="starting Ray", info="")
        with LocalRayCluster(log_dir=out_dir, record_dir=out_dir) as cluster:
            run = JobRun(cluster.job_client(), job, f"{name}-{int(time.time())}", log_path=out_dir / "job.log",
                         poll_s=poll_s)
            progress.update(task, description="starting verl")

            def show(records: list[dict]) -> None:
                for record in records:
                    state.update(record, time.monotonic() - started)
                progress.update(task, description="training", completed=state.step, info=state.summary_line())

            status = run.run(show)
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
