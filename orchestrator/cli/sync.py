"""``maspo sync NAME``: upload an experiment's offline W&B runs (a command function registered by the cli package)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from orchestrator.cli.common import RunsRootOpt, console, experiment_path, handles_user_errors


@handles_user_errors
def sync_command(
    name: Annotated[str, typer.Argument(help="Experiment name (runs/NAME) or a path to an experiment directory.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the runs and the wandb commands.")] = False,
    include_synced: Annotated[bool, typer.Option(
        "--include-synced", help="Upload runs already uploaded, again.")] = False,
    runs_root: RunsRootOpt = Path("runs"),
) -> None:
    """Upload the experiment's offline W&B runs with `wandb sync` (needs W&B credentials)."""
    from orchestrator.tracking import sync_experiment

    exp_dir = experiment_path(name, runs_root)
    results = sync_experiment(exp_dir, dry_run=dry_run, include_synced=include_synced)
    if not results:
        console.print(f"nothing to upload under {exp_dir} (no offline runs, or all already synced)", markup=False,
                      soft_wrap=True)
        return
    failed = 0
    for result in results:
        if result.returncode is None:
            console.print(" ".join(result.command), highlight=False, markup=False, soft_wrap=True)
        elif result.returncode == 0:
            console.print(f"[green]synced[/] {escape(result.run_id)} ({len(result.run_dirs)} offline dir(s))",
                          highlight=False, soft_wrap=True)
        else:
            failed += 1
            last = (result.output.strip().splitlines() or ["(no output)"])[-1]
            console.print(f"[red]failed[/] {escape(result.run_id)}: {escape(last)}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
