"""``maspo algorithms`` and ``maspo probe``: what the losses are, and how their gradients gate a token."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.common import HyperparameterOpt, console, handles_user_errors, parse_assignments
from orchestrator.errors import UserError

PROBE_RHOS = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0)
MIN_PI_OLD = 1e-12  # below this, rho * pi_old underflows the log


@handles_user_errors
def algorithms_command(
    name: Annotated[Optional[str], typer.Argument(help="Show one algorithm only (default: all).")] = None,
    overrides: Annotated[bool, typer.Option(
        "--overrides", help="Also print the verl Hydra overrides each algorithm renders.")] = False,
) -> None:
    """List the algorithms: name, the verl loss it runs, hyperparameters with defaults, equations."""
    from orchestrator.algorithms import ALGORITHMS, get

    selected = [get(name)] if name else list(ALGORITHMS.values())
    table = Table(title="maspo algorithms (defaults: the paper's Table 4, 1.5B)", show_lines=True)
    for column in ("name", "paper", "verl loss", "hyperparameters (default)", "equations", "notes"):
        table.add_column(column, overflow="fold")
    for algorithm in selected:
        fields = algorithm.params.model_fields
        hyper = "\n".join(f"{k} = {v.default}" for k, v in fields.items())
        table.add_row(algorithm.name, algorithm.title, algorithm.verl_loss, hyper, escape(algorithm.equations),
                      escape(algorithm.notes))
    console.print(table)
    if overrides:
        for algorithm in selected:
            console.print(f"[bold]{algorithm.name}[/]")
            for line in algorithm.verl_overrides():
                console.print(f"  {line}", highlight=False, markup=False)


@handles_user_errors
def probe_command(
    algorithm: Annotated[list[str], typer.Option(
        "--algorithm", "-a", help="An algorithm of `maspo algorithms` (repeat for several).")
    ] = ["grpo", "sapo", "maspo"],  # noqa: B006
    pi_old: Annotated[float, typer.Option(help="pi_old of the probed token, in (0, 1].")] = 0.5,
    advantage: Annotated[float, typer.Option("--advantage", "-A", help="Advantage of the probed token.")] = 1.0,
    hp: HyperparameterOpt = [],  # noqa: B006
) -> None:
    """Print each loss's gradient weight d(loss)/d(log pi) / (-A) against the ratio rho, for one token.

    1 is the plain policy gradient rho*A*grad log pi; a hard clip shows 0, a soft gate a value between. A hyperparameter set with -s applies to every selected algorithm that has it. This calls the very functions verl calls (`orchestrator.algorithms.compute`).
    """
    from orchestrator.algorithms import get

    values = parse_assignments(hp)
    if not 0.0 < pi_old <= 1.0:
        raise UserError(f"--pi-old must be in (0, 1], got {pi_old}")
    if pi_old < MIN_PI_OLD:
        raise UserError(f"--pi-old must be in (0, 1] and at least {MIN_PI_OLD:g} (the log underflows), got {pi_old}")
    if not math.isfinite(advantage):
        raise UserError(f"--advantage must be a finite number, got {advantage}")
    per_algorithm = {}
    for name in algorithm:
        fields = get(name).params.model_fields
        per_algorithm[name] = {k: v for k, v in values.items() if k in fields or k in ("beta", "eps")}
        get(name).parse(per_algorithm[name])
    unused = [k for k in values if not any(k in used for used in per_algorithm.values())]
    if unused:
        raise UserError(f"no selected algorithm has hyperparameter(s) {', '.join(unused)}")

    import torch

    from orchestrator.algorithms import compute

    table = Table(title=f"gradient weight dL/dlog(pi) / (-rho A) against rho  "
                        f"(A = {advantage:+g}, pi_old = {pi_old:g})")
    table.add_column("algorithm \\ rho", no_wrap=True)
    for rho in PROBE_RHOS:
        table.add_column(f"{rho:g}", justify="right")
    for name in algorithm:
        row = []
        for rho in PROBE_RHOS:
            log_prob = torch.tensor([[math.log(rho * pi_old)]], dtype=torch.float64, requires_grad=True)
            old = torch.tensor([[math.log(pi_old)]], dtype=torch.float64)
            adv = torch.tensor([[advantage]], dtype=torch.float64)
            entropy = torch.ones_like(adv) if name == "entropy_adv" else None
            loss, _ = compute(name, old, log_prob, adv, torch.ones_like(adv), entropy=entropy, **per_algorithm[name])
            loss.backward()
            weight = -log_prob.grad.item() / (rho * advantage) if advantage else 0.0
            row.append(f"{weight + 0.0:.2f}")  # + 0.0 turns -0.0 into 0.0
        table.add_row(name, *row)
    console.print(table)
