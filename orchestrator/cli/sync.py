"""``maspo sync NAME``: upload an experiment's offline W&B runs (a command function registered by the cli package)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def sync_command(
    name: str = typer.Argument(..., help="Experiment name (runs/NAME) or a path to an experiment directory."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list the runs and the wandb commands."),
    include_synced: bool = typer.Option(False, "--include-synced", help="Upload runs already uploaded, again."),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="Directory holding the experiments."),
) -> None:
    """Upload the experiment's offline W&B runs with `wandb sync` (needs W&B credentials)."""
    from orchestrator.tracking import TrackingError, sync_experiment

    exp_dir = Path(name) if "/" in name and Path(name).is_dir() else runs_root / name
    try:
        results = sync_experiment(exp_dir, dry_run=dry_run, include_synced=include_synced)
    except TrackingError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    if not results:
        console.print(f"nothing to upload under {exp_dir} (no offline runs, or all already synced)")
        return
    failed = 0
    for result in results:
        if result.returncode is None:
            console.print(" ".join(result.command), highlight=False)
        elif result.returncode == 0:
            console.print(f"[green]synced[/] {result.run_id} ({len(result.run_dirs)} offline dir(s))", highlight=False)
        else:
            failed += 1
            last = (result.output.strip().splitlines() or ["(no output)"])[-1]
            console.print(f"[red]failed[/] {result.run_id}: {last}", highlight=False)
    if failed:
        raise typer.Exit(1)
