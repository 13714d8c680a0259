"""``maspo doctor``: the patches maspo applies to verl, Ray and W&B, and which are active here; with
``--address``/``--cluster``, a preflight of that Ray cluster instead.

The patch table comes from the patch manifest (``orchestrator.verl_bridge.patches.manifest_rows``). This module
imports neither verl nor torch; ``--check`` (the default) imports verl and every patch's target module inside
the command, to check each target against the signature it was written for (about 10 s).

The cluster preflight (:mod:`orchestrator.doctor`) checks every node through Ray tasks pinned to it: versions,
verl_slot, shared storage, data, model, W&B credentials, CUDA/NCCL/vLLM. It prints a table of the checks, their
results and the fix of each failure, and exits 1 on any failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from orchestrator.cli.common import (AddressOpt, ClusterOpt, Profile, ProfileSetOpt, RootOpt, ScaleOpt, console,
                                     handles_user_errors)

PROFILE_ENV = {Profile.local: {"VERL_PLATFORM": "cpu"}, Profile.a100: {}}  # what a verl process of each sees


@handles_user_errors
def doctor_command(
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Import verl and each patch's target to check it (about 10 s)."),
    profile: Optional[Profile] = typer.Option(
        None, "--profile",
        help="Show which patches a verl process of this profile installs (default: this process's environment)."),
    address: AddressOpt = None,
    cluster: ClusterOpt = None,
    root: RootOpt = Path("runs"),
    scale: ScaleOpt = None,
    profile_set: ProfileSetOpt = [],  # noqa: B006
    gpus: bool = typer.Option(True, "--gpus/--no-gpus",
                              help="With --address/--cluster: also check CUDA, NCCL and vLLM on every GPU node (a "
                                   "task holds each node's GPUs for a moment)."),
    wandb_auth: bool = typer.Option(True, "--wandb-auth/--no-wandb-auth",
                                    help="With --address/--cluster: ask W&B's API, from every node with credentials, "
                                         "whether it accepts them (network)."),
    timeout: float = typer.Option(120.0, min=1.0, max=3600.0,
                                  help="Seconds a node's checks may take before they count as failed."),
) -> None:
    """The patches maspo applies to verl, Ray and W&B, and which are active here. With --address or --cluster:
    a preflight of that Ray cluster (every node: versions, verl_slot, shared storage, data, model, W&B, CUDA/NCCL)."""
    if address is not None or cluster is not None:
        _cluster_doctor(address, cluster, root=root, scale=scale, profile_set=profile_set, gpus=gpus,
                        wandb_auth=wandb_auth, timeout=timeout)
        return
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


def _cluster_doctor(address: Optional[str], cluster: Optional[Path], *, root: Path, scale, profile_set: list[str],
                    gpus: bool, wandb_auth: bool, timeout: float) -> None:
    """The preflight of the a100 profile on a Ray cluster: a table of checks; exit 1 on any failure."""
    from rich.markup import escape

    from orchestrator.cli.experiments import _cluster_address, profile_settings
    from orchestrator.config.trial import trial_config
    from orchestrator.doctor import Targets, doctor, grouped

    settings = profile_settings(profile_set)
    profile = trial_config("grpo", profile={"name": "a100", **({"scale": scale.value} if scale else {}),
                                            **settings}).profile
    address = _cluster_address(cluster, address, dry_run=False)
    targets = Targets.of_profile(profile, root, nodes_per_trial=profile.nodes_per_trial)
    with console.status(f"checking every node of the Ray cluster at {address}"):
        checks = doctor(address, targets, gpus=gpus, timeout_s=timeout, wandb_auth=wandb_auth)
    table = Table(title=f"maspo doctor: the Ray cluster at {escape(address)} for the a100 profile ({profile.scale})",
                  show_lines=True, expand=True)
    table.add_column("check", no_wrap=True)
    table.add_column("where", overflow="fold", ratio=2)
    table.add_column("result", overflow="fold", ratio=5)
    table.add_column("fix", overflow="fold", ratio=4)
    for check, where in grouped(checks):
        if check.check == "took":
            continue
        mark = {True: "[green]ok[/]", False: "[bold red]FAIL[/]", None: "[dim]skip[/]"}[check.ok]
        places = where[0] if len(where) == 1 else f"{len(where)} nodes:\n" + "\n".join(where)
        table.add_row(check.check, escape(places), f"{mark} {escape(check.result)}", escape(check.fix))
    console.print(table)
    failed = [c for c in checks if c.failed]
    took = next((c.result for c in checks if c.check == "took"), "")
    if failed:
        console.print(f"[bold red]{len(failed)} check(s) failed[/] ({took}); fix them before the study starts.",
                      highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]all {len(checks) - 1} checks passed[/] ({took}).", highlight=False)
