"""``maspo run``: one trial on this machine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import (MAX_SEED, HyperparameterOpt, Profile, StepsOpt, console, experiment_name,
                                     handles_user_errors, parse_assignments)
from orchestrator.errors import UserError


def _finite(option: str, value: Optional[float]) -> None:
    if value is not None and not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, got {value}")


@handles_user_errors
def run_command(
    algorithm: Annotated[str, typer.Option("--algorithm", "-a", help="One of `maspo algorithms`.")] = "maspo",
    alpha: Annotated[Optional[float], typer.Option(
        help="MASPO's alpha (or alpha_E / alpha_A of the baselines).")] = None,
    beta: Annotated[Optional[float], typer.Option(help="MASPO's beta: sets beta_low and beta_high.")] = None,
    hp: HyperparameterOpt = [],  # noqa: B006
    profile: Annotated[Profile, typer.Option(
        help="Where to run: `local` (this machine, CPU); on a cluster use `maspo sweep`/`maspo compare`.")
    ] = Profile.local,
    steps: StepsOpt = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of data order, sampling and the actor.")] = 0,
    name: Annotated[Optional[str], typer.Option(
        help="Trial name: letters, digits, '.', '_', '-' (default: from algorithm, hyperparameters, seed).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: runs/<name>).")] = None,
    model_path: Annotated[Optional[Path], typer.Option(
        help="Use this HF model directory instead of the warm start.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Actor learning rate (default: the profile's).")] = None,
) -> None:
    """Run ONE trial: verl's trainer as a Ray Job, with live progress and a summary at the end.

    Everything is checked before Ray starts or anything is written: a mistake is one line and exit code 2.
    """
    from orchestrator.config.trial import trial_config

    if name is not None:
        experiment_name(name, "trial name")
    values = parse_assignments(hp)
    for option, value in (("--alpha", alpha), ("--beta", beta), ("--lr", lr)):
        _finite(option, value)
    if alpha is not None:
        values["alpha"] = alpha
    if beta is not None:
        values["beta"] = beta
    if profile is not Profile.local:
        raise UserError(f"maspo run uses the local profile; on a cluster use `maspo compare` or "
                        f"`maspo sweep` with --profile {profile.value}")
    trial = trial_config(algorithm, values, seed=seed,
                         profile={"model_path": model_path, **({"steps": steps} if steps is not None else {}),
                                  **({"lr": lr} if lr is not None else {})})
    name = name or trial.default_name()
    out_dir = out or Path("runs") / name
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")

    from orchestrator.local_trial import run_local_trial
    from orchestrator.store import ExperimentLock

    with ExperimentLock(out_dir, f"maspo run --name {name}"):  # two runs would share one checkpoint directory
        code = run_local_trial(trial, name, out_dir, console)
    raise typer.Exit(code)
