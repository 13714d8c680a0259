"""``maspo dashboard publish NAME`` and ``maspo dashboard local NAME`` (a Typer sub-app mounted by the cli package)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import RunsRootOpt, console, experiment_path, handles_user_errors

dashboard_app = typer.Typer(help="The experiment's dashboards: on W&B (publish) or as one HTML file (local).",
                            no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)

ExperimentArg = Annotated[str, typer.Argument(
    help="Experiment name (runs/NAME) or a path to an experiment directory.")]
KOpt = Annotated[Optional[int], typer.Option(
    "--k", min=1, help="k of Avg@k / Pass@k (default: read from the logged metrics: 8 locally, 32 on the cluster).")]
SourceOpt = Annotated[list[str], typer.Option(
    "--source", help="A validation data_source to plot (repeatable; default: those in the logged metrics).")]


@dashboard_app.command("local")
@handles_user_errors
def local_command(
    name: ExperimentArg,
    out: Annotated[Optional[Path], typer.Option(
        help="Where to write the page (default: runs/NAME/dashboard.html).")] = None,
    k: KOpt = None,
    source: SourceOpt = [],  # noqa: B006
    runs_root: RunsRootOpt = Path("runs"),
) -> None:
    """Write the dashboards as one self-contained HTML page (no network needed to build or to view it)."""
    from orchestrator.local_dashboard import write_local_dashboard

    experiment_path(name, runs_root)  # a name is one path component, and the experiment exists
    path = write_local_dashboard(name, runs_root=runs_root, out=out, k=k, sources=source or None)
    console.print(f"dashboard: {path}  (open it in a browser: file://{path.resolve()})", highlight=False,
                  markup=False, soft_wrap=True)


@dashboard_app.command("publish")
@handles_user_errors
def publish_command(
    name: ExperimentArg,
    entity: Annotated[Optional[str], typer.Option(
        help="W&B entity (default: $WANDB_ENTITY, then your default).")] = None,
    project: Annotated[Optional[str], typer.Option(
        help="W&B project (default: $WANDB_PROJECT, then maspo).")] = None,
    k: KOpt = None,
    source: SourceOpt = [],  # noqa: B006
    runs_root: RunsRootOpt = Path("runs"),
) -> None:
    """Create or update the experiment's W&B workspace and report (needs network and W&B credentials).

    Upload the runs first if they ran offline: `maspo sync NAME`.
    """
    from orchestrator.dashboards import publish

    experiment_path(name, runs_root)  # a name is one path component, and the experiment exists
    urls = publish(name, entity, project, runs_root=runs_root, k=k, sources=source or None)
    console.print(f"workspace: {urls['workspace_url']}\nreport:    {urls['report_url']}", highlight=False,
                  markup=False, soft_wrap=True)
