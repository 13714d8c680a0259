"""``maspo doctor``: the patches maspo applies to verl, Ray and W&B, and which are active here.

The table comes from the patch manifest (``orchestrator.verl_bridge.patches.manifest_rows``). This module
imports neither verl nor torch; ``--check`` (the default) imports verl and every patch's target module inside
the command, to check each target against the signature it was written for (about 10 s).
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from orchestrator.cli.common import Profile, console, handles_user_errors

PROFILE_ENV = {Profile.local: {"VERL_PLATFORM": "cpu"}, Profile.a100: {}}  # what a verl process of each sees


@handles_user_errors
def doctor_command(
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Import verl and each patch's target to check it (about 10 s)."),
    profile: Optional[Profile] = typer.Option(
        None, "--profile",
        help="Show which patches a verl process of this profile installs (default: this process's environment)."),
) -> None:
    """The patches maspo applies to verl, Ray and W&B, and which are active here."""
    from orchestrator.verl_bridge import patches

    environ = None if profile is None else PROFILE_ENV[profile]
    plugin_error = None
    if check:
        try:
            import verl  # noqa: F401  (loads the plugin: the patches that apply here get installed)
        except patches.PluginLoadError as err:
            plugin_error = str(err)
    rows = patches.manifest_rows(check=check, environ=environ)
    here = f"profile {profile.value}" if profile else "here"
    table = Table(title=f"maspo's patches to verl, TransferQueue, Ray and torch, and which are active {here}",
                  show_lines=True, expand=True)
    table.add_column("patch", no_wrap=True, min_width=max(len(row.name) for row in rows))
    for column, ratio, least in (("target", 4, 20), ("condition", 2, 21), ("active", 3, 16), ("why", 7, 30)):
        table.add_column(column, overflow="fold", ratio=ratio, min_width=least)
    for row in rows:
        active = "[green]yes[/]" if row.active else "[dim]no[/]"
        if profile is None:
            active += f"\n{row.state}"
        if row.acts != "always":
            active += f"\nacts when {row.acts}"
        if row.problem:
            active += f"\n[bold red]{row.problem}[/]"
        target = f"{row.module}\n[bold]{row.attr}[/] ({row.library})"
        table.add_row(row.name, target, row.condition, active, f"{row.why}\n{row.doc}")
    console.print(table)
    version = patches.installed_version("verl")
    problem = patches.verl_version_problem()
    if problem:
        console.print(f"[bold yellow]warning:[/] {problem}", highlight=False)
    else:
        console.print(f"verl {version}: the version the patches were written for.", highlight=False)
    failed = [row.name for row in rows if row.problem]
    if plugin_error:
        console.print(f"[bold red]import verl failed:[/] {plugin_error}", highlight=False)
    if failed:
        console.print(f"[bold red]{len(failed)} patch target(s) not as recorded:[/] {', '.join(failed)}",
                      highlight=False)
    if failed or plugin_error:
        raise typer.Exit(1)
    if check:
        console.print(f"all {len(rows)} patch targets found with the recorded signatures.", highlight=False)
