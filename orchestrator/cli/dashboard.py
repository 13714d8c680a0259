"""``maspo dashboard publish NAME`` and ``maspo dashboard local NAME`` (a Typer sub-app mounted by the cli package)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

dashboard_app = typer.Typer(help="The experiment's dashboards: on W&B (publish) or as one HTML file (local).",
                            no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

K_HELP = "k of Avg@k / Pass@k (default: read from the logged metrics: 8 locally, 32 on the cluster)."
SOURCE_HELP = "A validation data_source to plot (repeatable; default: those in the logged metrics)."


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}", highlight=False)
    raise typer.Exit(2)


@dashboard_app.command("local")
def local_command(
    name: str = typer.Argument(..., help="Experiment name (runs/NAME) or a path to an experiment directory."),
    out: Optional[Path] = typer.Option(None, help="Where to write the page (default: runs/NAME/dashboard.html)."),
    k: Optional[int] = typer.Option(None, "--k", help=K_HELP),
    source: list[str] = typer.Option([], "--source", help=SOURCE_HELP),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="Directory holding the experiments."),
) -> None:
    """Write the dashboards as one self-contained HTML page (no network needed to build or to view it)."""
    from orchestrator.local_dashboard import write_local_dashboard
    from orchestrator.tracking import TrackingError

    try:
        path = write_local_dashboard(name, runs_root=runs_root, out=out, k=k, sources=source or None)
    except TrackingError as err:
        _fail(err)
    console.print(f"dashboard: {path}  (open it in a browser: file://{path.resolve()})", highlight=False)


@dashboard_app.command("publish")
def publish_command(
    name: str = typer.Argument(..., help="Experiment name (runs/NAME)."),
    entity: Optional[str] = typer.Option(None, help="W&B entity (default: $WANDB_ENTITY, then your default)."),
    project: Optional[str] = typer.Option(None, help="W&B project (default: $WANDB_PROJECT, then maspo)."),
    k: Optional[int] = typer.Option(None, "--k", help=K_HELP),
    source: list[str] = typer.Option([], "--source", help=SOURCE_HELP),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="Directory holding the experiments."),
) -> None:
    """Create or update the experiment's W&B workspace and report (needs network and W&B credentials).

    Upload the runs first if they ran offline: `maspo sync NAME`.
    """
    from orchestrator.dashboards import publish
    from orchestrator.tracking import TrackingError

    try:
        urls = publish(name, entity, project, runs_root=runs_root, k=k, sources=source or None)
    except TrackingError as err:
        _fail(err)
    console.print(f"workspace: {urls['workspace_url']}\nreport:    {urls['report_url']}", highlight=False)
