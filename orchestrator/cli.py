"""The ``maspo`` command line."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="maspo: MASPO and its baselines on verl, as sweeps and comparisons on Ray Tune, watched in W&B.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake ends the command with one clear line and exit code 2, never a traceback."""
    from orchestrator.algorithms import AlgorithmError

    try:
        yield
    except AlgorithmError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None


def parse_assignments(items: list[str]) -> dict[str, object]:
    """``["alpha=0.3", "reading=abs_sum"]`` -> ``{"alpha": 0.3, "reading": "abs_sum"}``."""
    from orchestrator.algorithms import AlgorithmError

    values: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise AlgorithmError(f"expected NAME=VALUE, got {item!r}")
        try:
            values[key.strip()] = float(raw)
        except ValueError:
            values[key.strip()] = raw.strip()
    return values


@app.command("algorithms")
def algorithms_command(
    name: Optional[str] = typer.Argument(None, help="Show one algorithm only."),
    overrides: bool = typer.Option(False, "--overrides", help="Also print the verl Hydra overrides it renders."),
) -> None:
    """List the algorithms: name, the verl loss it runs, hyperparameters with defaults, equations."""
    from orchestrator.algorithms import ALGORITHMS, get

    with user_errors():
        selected = [get(name)] if name else list(ALGORITHMS.values())
    table = Table(title="maspo algorithms (defaults: the paper's Table 4, 1.5B)", show_lines=True)
    for column in ("name", "paper", "verl loss", "hyperparameters (default)", "equations", "notes"):
        table.add_column(column, overflow="fold")
    for algorithm in selected:
        fields = algorithm.params.model_fields
        hyper = "\n".join(f"{k} = {v.default}" for k, v in fields.items())
        table.add_row(algorithm.name, algorithm.title, algorithm.verl_loss, hyper, algorithm.equations, algorithm.notes)
    console.print(table)
    if overrides:
        for algorithm in selected:
            console.print(f"[bold]{algorithm.name}[/]")
            for line in algorithm.verl_overrides():
                console.print(f"  {line}", highlight=False)


@app.command("probe")
def probe_command(
    algorithm: list[str] = typer.Option(["grpo", "sapo", "maspo"], "--algorithm", "-a", help="Repeat for several."),
    pi_old: float = typer.Option(0.5, help="pi_old of the probed token."),
    advantage: float = typer.Option(1.0, "--advantage", "-A", help="Advantage of the probed token."),
    hp: list[str] = typer.Option([], "--set", "-s", help="Hyperparameter NAME=VALUE (applies to every algorithm)."),
) -> None:
    """Print each loss's gradient weight d(loss)/d(log pi) / (-A) against the ratio rho, for one token.

    1 is the plain policy gradient rho*A*grad log pi; a hard clip shows 0, a soft gate a value between. This calls the very functions verl calls (``orchestrator.algorithms.compute``).
    """
    import torch

    from orchestrator.algorithms import AlgorithmError, compute, get

    with user_errors():
        values = parse_assignments(hp)
        if not 0.0 < pi_old <= 1.0:
            raise AlgorithmError(f"--pi-old must be in (0, 1], got {pi_old}")
        per_algorithm = {}
        for name in algorithm:
            fields = get(name).params.model_fields
            per_algorithm[name] = {k: v for k, v in values.items() if k in fields or k in ("beta", "eps")}
            get(name).parse(per_algorithm[name])
        unused = [k for k in values if not any(k in used for used in per_algorithm.values())]
        if unused:
            raise AlgorithmError(f"no selected algorithm has hyperparameter(s) {', '.join(unused)}")
    rhos = [0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0]
    table = Table(title=f"gradient weight dL/dlog(pi) / (-rho A) against rho  (A = {advantage:+g}, pi_old = {pi_old:g})")
    table.add_column("algorithm \\ rho", no_wrap=True)
    for rho in rhos:
        table.add_column(f"{rho:g}", justify="right")
    for name in algorithm:
        row = []
        for rho in rhos:
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


@app.command("run")
def run_command(
    algorithm: str = typer.Option("maspo", "--algorithm", "-a", help="One of `maspo algorithms`."),
    alpha: Optional[float] = typer.Option(None, help="MASPO's alpha (or alpha_E / alpha_A of the baselines)."),
    beta: Optional[float] = typer.Option(None, help="MASPO's beta: sets beta_low and beta_high."),
    hp: list[str] = typer.Option([], "--set", "-s", help="Any hyperparameter NAME=VALUE (repeatable)."),
    profile: str = typer.Option("local", help="Where to run: `local` (this machine, CPU)."),
    steps: int = typer.Option(12, help="Training steps."),
    seed: int = typer.Option(0, help="Seed of data order, sampling and the actor."),
    name: Optional[str] = typer.Option(None, help="Trial name (default: from algorithm, hyperparameters, seed)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: runs/<name>)."),
    model_path: Optional[Path] = typer.Option(None, help="Use this HF model directory instead of the warm start."),
    lr: Optional[float] = typer.Option(None, help="Actor learning rate (default: the profile's)."),
) -> None:
    """Run ONE trial: verl's trainer as a Ray Job, with live progress and a summary at the end."""
    from orchestrator.runner import run_local_trial
    from orchestrator.specs import trial_config

    with user_errors():
        values = parse_assignments(hp)
        if alpha is not None:
            values["alpha"] = alpha
        if beta is not None:
            values["beta"] = beta
        if profile != "local":
            from orchestrator.algorithms import AlgorithmError

            raise AlgorithmError(f"profile {profile!r} is not available yet; use --profile local")
        trial = trial_config(algorithm, values, seed=seed,
                             profile={"steps": steps, "model_path": model_path,
                                      **({"lr": lr} if lr is not None else {})})
    name = name or trial.default_name()
    out_dir = out or Path("runs") / name
    raise typer.Exit(run_local_trial(trial, name, out_dir, console))


@app.command("demo")
def demo_command(
    algorithm: str = typer.Option("maspo", "--algorithm", "-a", help="One of `maspo algorithms`."),
    steps: int = typer.Option(12, help="Training steps."),
) -> None:
    """What `make demo` runs: one real MASPO trial on the local profile (verl on CPU), live, then its results.

    The first run builds and warm-starts the tiny model (cached afterwards under ~/.cache/maspo).
    """
    console.print(f"[bold]maspo demo[/]: one {algorithm} trial on the local profile: verl's own trainer on CPU, "
                  "a tiny warm-started Qwen2, synthetic math with graded difficulty, W&B offline.")
    run_command(algorithm=algorithm, alpha=None, beta=None, hp=[], profile="local", steps=steps, seed=0, name=None,
                out=None, model_path=None, lr=None)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
