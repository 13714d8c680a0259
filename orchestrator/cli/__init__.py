"""The ``maspo`` command line."""

from __future__ import annotations

import math
import sys
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
# wide enough for the results tables when the output goes to a file or a CI log (Rich assumes 80 there)
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake ends the command with one clear line and exit code 2, never a traceback."""
    from orchestrator.errors import UserError

    try:
        yield
    except UserError as err:
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
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the profile's)."),
    seed: int = typer.Option(0, help="Seed of data order, sampling and the actor."),
    name: Optional[str] = typer.Option(None, help="Trial name (default: from algorithm, hyperparameters, seed)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: runs/<name>)."),
    model_path: Optional[Path] = typer.Option(None, help="Use this HF model directory instead of the warm start."),
    lr: Optional[float] = typer.Option(None, help="Actor learning rate (default: the profile's)."),
) -> None:
    """Run ONE trial: verl's trainer as a Ray Job, with live progress and a summary at the end."""
    from orchestrator.local_trial import run_local_trial
    from orchestrator.config.trial import trial_config

    with user_errors():
        values = parse_assignments(hp)
        if alpha is not None:
            values["alpha"] = alpha
        if beta is not None:
            values["beta"] = beta
        if profile != "local":
            from orchestrator.algorithms import AlgorithmError

            raise AlgorithmError(f"maspo run uses the local profile; on a cluster use `maspo compare` or "
                                 f"`maspo sweep` with --profile {profile}")
        trial = trial_config(algorithm, values, seed=seed,
                             profile={"model_path": model_path, **({"steps": steps} if steps is not None else {}),
                                      **({"lr": lr} if lr is not None else {})})
    name = name or trial.default_name()
    out_dir = out or Path("runs") / name
    raise typer.Exit(run_local_trial(trial, name, out_dir, console))


# ---------------------------------------------------------------------------------------------------------
# sweeps and comparisons: one Ray Tune experiment per command

PROFILE_HELP = "Where trials run: `local` (this machine, CPU, tiny model) or `a100` (a GPU cluster)."
SCALE_HELP = "Model scale of the a100 profile: 1.5b, 7b or 14b (picks Table 4's hyperparameters)."


def _launch(plan, *, dry_run: bool, address: Optional[str], root: Path, resume: bool = False) -> None:
    from orchestrator.render import dry_run_lines
    from orchestrator.store import ExperimentDir
    from orchestrator.tune_runner import check_ready, run_experiment

    experiment = ExperimentDir.named(plan.name, root)
    exp_dir = experiment.path
    if dry_run:
        _print_dry_run(plan, dry_run_lines(plan, root))
        return
    with user_errors():
        check_ready(plan, address)  # a cluster and its data, before anything is written or started
    if resume:
        with user_errors():
            if not (exp_dir / "tune").exists():
                from orchestrator.algorithms import AlgorithmError

                raise AlgorithmError(f"nothing to resume: {exp_dir / 'tune'} does not exist")
            plan = experiment.plan()
    else:
        with user_errors():
            if (exp_dir / "tune").exists():
                from orchestrator.algorithms import AlgorithmError

                raise AlgorithmError(f"experiment {plan.name!r} exists at {exp_dir}; continue it with --resume "
                                     f"(or `maspo resume {plan.name}`), or pick another --name")
        experiment.save_plan(plan)
    console.print(f"[bold]{plan.name}[/]: {len(plan.trials)} trial(s) of verl on the {plan.profile} profile, "
                  f"at most {plan.max_concurrent} at a time, {plan.steps} steps each"
                  f"{', resuming' if resume else ''}. Outputs: {exp_dir}")
    with user_errors():
        code = run_experiment(plan, exp_dir, console, address=address, restore=resume)
    _print_results(exp_dir)
    try:
        from orchestrator.local_dashboard import write_local_dashboard

        page = write_local_dashboard(plan.name, runs_root=root)
        console.print(f"dashboard (open in a browser, works offline): {page.resolve()}")
    except Exception as err:  # noqa: BLE001 (the results are printed; a page that fails must not hide them)
        console.print(f"[yellow]no local dashboard: {err}[/]")
    unfinished = experiment.unfinished(plan)
    if unfinished:
        console.print(f"[yellow]{len(unfinished)} trial(s) unfinished[/]; continue with: maspo resume {plan.name}"
                      + (f" --root {root}" if root != Path("runs") else ""))
    raise typer.Exit(code)


def _print_dry_run(plan, lines) -> None:
    from orchestrator.scales import estimate_cost, gpus_of

    console.print(f"[bold]{plan.name}[/] (dry run: nothing starts): {len(plan.trials)} trial(s), profile "
                  f"{plan.profile}, scale {plan.scale}, seeds {plan.seeds}, {plan.steps} steps, scheduler "
                  f"{plan.scheduler}, at most {plan.max_concurrent} at a time")
    total = 0.0
    for planned, command in lines:
        t = planned.trial
        gpus = gpus_of(t.profile)
        cost = ""
        if t.profile.name == "a100":
            c = estimate_cost(t.profile)
            total += c.gpu_hours
            cost = (f", est. {c.gpu_hours:,.0f} A100-hours: {c.steps} steps x {c.seconds_per_step:,.0f} s + "
                    f"{c.validations} validations x {c.validation_s:,.0f} s, derived")
        console.print(f"\n[bold]{planned.name}[/]  ({planned.label}, seed {t.seed}; {gpus} GPU(s), "
                      f"{plan.slots_per_trial} slot(s){cost})")
        console.print("  hyperparameters: " + ", ".join(f"{k}={v}" for k, v in t.hyperparameters.items()),
                      highlight=False)
        console.print(f"  {command}", highlight=False, soft_wrap=True)
    if total:
        console.print(f"\n[bold]total[/]: {len(plan.trials)} trials x {gpus_of(plan.trials[0].trial.profile)} GPUs, "
                      f"est. {total:,.0f} A100-hours (derived from tokens per step and A100 throughput, "
                      f"not measured: docs/orchestration.md#cost)")


def _print_results(exp_dir: Path, passk: bool = False, *, at: str = "last", estimator: Optional[str] = None,
                   gain: bool = False, plot: Optional[Path] = None):
    from orchestrator.results import collect, gain_table, passk_table, table, trials_table

    with user_errors():
        results = collect(exp_dir, at=at, estimator=estimator)
    console.print(table(results, paper=True))
    console.print(trials_table(results))
    if passk:
        console.print(passk_table(results))
    if gain:
        with user_errors():
            console.print(gain_table(results))
    if plot is not None:
        from orchestrator.plots import write_figures

        for path in write_figures(results, plot).values():
            console.print(f"figure: {path}")
    return results


def _experiment_options(spec, *, name, profile, scale, seeds, steps, max_concurrent, scheduler, demo, grid="listed",
                        baselines="all", spec_file="", profile_set=()):
    from orchestrator.config.experiment import plan_experiment

    settings = {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
                for k, v in parse_assignments(list(profile_set)).items()}
    return plan_experiment(spec, name=name, profile=profile, scale=scale, seeds=seeds, steps=steps, grid=grid,
                           baselines=baselines, demo=demo, max_concurrent=max_concurrent, scheduler=scheduler,
                           spec_file=spec_file, profile_settings=settings)


@app.command("sweep")
def sweep_command(
    spec: str = typer.Argument("alpha-beta", help="A spec in sweeps/ (e.g. alpha-beta) or a path to a YAML file."),
    grid: str = typer.Option("listed", help="`listed`: the spec's points; `full`: every combination of their values."),
    profile: str = typer.Option("local", help=PROFILE_HELP),
    scale: Optional[str] = typer.Option(None, help=SCALE_HELP + " Default: the spec's (local: 1.5b)."),
    seeds: int = typer.Option(1, help="Seeds per setting (0..N-1); results show mean and spread."),
    steps: Optional[int] = typer.Option(None, help="Training steps per trial (default: the profile's)."),
    max_concurrent: int = typer.Option(1, help="Trials at a time (never more than the free GPU slots)."),
    scheduler: str = typer.Option("fifo", help="`fifo` runs every trial to the end; `asha` stops weak ones early."),
    name: Optional[str] = typer.Option(None, help="Experiment name (default: the spec's name)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every trial's verl command; start nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted experiment of this name."),
    demo: bool = typer.Option(False, "--demo", help="The spec's demo size (what `make demo` runs)."),
    address: Optional[str] = typer.Option(None, help="Join an existing Ray cluster (host:port, or auto on its head)."),
    cluster: Optional[Path] = typer.Option(None, help="A Ray cluster YAML (cluster/); validated, then its head joined."),
    root: Path = typer.Option(Path("runs"), help="Where experiments live."),
    profile_set: list[str] = typer.Option([], "--profile-set", "-P",
                                          help="A profile setting NAME=VALUE, e.g. -P train_batch_size=8 (repeatable)."),
) -> None:
    """Sweep one algorithm's hyperparameters (default: MASPO's alpha-beta study, paper section 5.3, Table 5).

    One Ray Tune experiment; each trial is a full verl training run submitted as a Ray Job. Ends with the
    results table (also: `maspo results NAME`).
    """
    from orchestrator.config.experiment import SweepSpec, load_spec, spec_path

    with user_errors():
        loaded = load_spec(spec)
        if not isinstance(loaded, SweepSpec):
            from orchestrator.algorithms import AlgorithmError

            raise AlgorithmError(f"{spec_path(spec)} is a {loaded.kind} spec; use `maspo {loaded.kind}`")
        _check_choice("--grid", grid, ("listed", "full"))
        _check_choice("--scheduler", scheduler, ("fifo", "asha"))
        plan = _experiment_options(loaded, name=name, profile=profile, scale=scale, seeds=seeds, steps=steps,
                                   max_concurrent=max_concurrent, scheduler=scheduler, demo=demo, grid=grid,
                                   spec_file=str(spec_path(spec)), profile_set=profile_set)
    _launch(plan, dry_run=dry_run, address=_cluster_address(cluster, address, dry_run), root=root, resume=resume)


@app.command("compare")
def compare_command(
    baselines: str = typer.Option("all", help="`all` or a comma list, e.g. grpo,sapo,dac (see `maspo algorithms`)."),
    spec: str = typer.Option("compare", help="A spec in sweeps/ or a path to a YAML file."),
    profile: str = typer.Option("local", help=PROFILE_HELP),
    scale: Optional[str] = typer.Option(None, help=SCALE_HELP + " Default: 1.5b."),
    seeds: int = typer.Option(1, help="Seeds per algorithm (0..N-1); results show mean and spread."),
    steps: Optional[int] = typer.Option(None, help="Training steps per trial (default: the profile's)."),
    max_concurrent: int = typer.Option(1, help="Trials at a time (never more than the free GPU slots)."),
    scheduler: str = typer.Option("fifo", help="`fifo` or `asha` (early stopping on the mean validation Avg@k)."),
    name: Optional[str] = typer.Option(None, help="Experiment name (default: compare)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every trial's verl command; start nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted experiment of this name."),
    demo: bool = typer.Option(False, "--demo", help="The spec's demo size."),
    address: Optional[str] = typer.Option(None, help="Join an existing Ray cluster (host:port, or auto on its head)."),
    cluster: Optional[Path] = typer.Option(None, help="A Ray cluster YAML (cluster/); validated, then its head joined."),
    root: Path = typer.Option(Path("runs"), help="Where experiments live."),
    profile_set: list[str] = typer.Option([], "--profile-set", "-P",
                                          help="A profile setting NAME=VALUE, e.g. -P test_freq=2 (repeatable)."),
) -> None:
    """MASPO against baselines with the paper's Table 4 hyperparameters, as one Ray Tune experiment."""
    from orchestrator.config.experiment import CompareSpec, load_spec, spec_path

    with user_errors():
        loaded = load_spec(spec)
        if not isinstance(loaded, CompareSpec):
            from orchestrator.algorithms import AlgorithmError

            raise AlgorithmError(f"{spec_path(spec)} is a {loaded.kind} spec; use `maspo {loaded.kind}`")
        _check_choice("--scheduler", scheduler, ("fifo", "asha"))
        plan = _experiment_options(loaded, name=name, profile=profile, scale=scale, seeds=seeds, steps=steps,
                                   max_concurrent=max_concurrent, scheduler=scheduler, demo=demo,
                                   baselines=baselines, spec_file=str(spec_path(spec)), profile_set=profile_set)
    _launch(plan, dry_run=dry_run, address=_cluster_address(cluster, address, dry_run), root=root, resume=resume)


@app.command("resume")
def resume_command(
    name: str = typer.Argument(..., help="The experiment to continue (a directory under --root)."),
    address: Optional[str] = typer.Option(None, help="Join an existing Ray cluster (host:port) instead."),
    root: Path = typer.Option(Path("runs"), help="Where experiments live."),
) -> None:
    """Continue an interrupted sweep or comparison: only unfinished trials run, from their last checkpoint."""
    from orchestrator.store import ExperimentDir

    with user_errors():
        plan = ExperimentDir.named(name, root).plan()
    _launch(plan, dry_run=False, address=address, root=root, resume=True)


@app.command("results")
def results_command(
    name: str = typer.Argument(..., help="The experiment (a directory under --root)."),
    passk: bool = typer.Option(False, "--passk", help="Also Pass@k against k per validation set (Table 7)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the table as CSV here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write rows and per-trial results as JSON here."),
    root: Path = typer.Option(Path("runs"), help="Where experiments live."),
    estimator: Optional[str] = typer.Option(
        None, help="Pass@k of the main table: `bootstrap` (verl's best@k, the paper's) or `unbiased`. Default: "
                   "bootstrap beside the paper's rows (a100 at a paper scale), unbiased otherwise."),
    at: str = typer.Option("last", help="Which validation: `last` (default), `best` (per row, the step with the "
                                        "best Avg@k averaged over benchmarks and seeds) or a step number."),
    gain: bool = typer.Option(False, "--gain", help="Also MASPO's gain over GRPO (Table 2), the paper's beside."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write Figure 3's training dynamics and Pass@k "
                                                             "against k as PNG files into this directory."),
) -> None:
    """The experiment's validation in the layout of the paper's Table 1, best in bold, second underlined."""
    from orchestrator.results import ESTIMATORS, to_csv, to_json
    from orchestrator.store import ExperimentDir

    with user_errors():
        exp_dir = ExperimentDir.named(name, root).path
        ExperimentDir(exp_dir).plan()
        if estimator is not None:
            _check_choice("--estimator", estimator, ESTIMATORS)
    results = _print_results(exp_dir, passk=passk, at=at, estimator=estimator, gain=gain, plot=plot)
    if csv_out:
        csv_out.write_text(to_csv(results))
        console.print(f"CSV: {csv_out}")
    if json_out:
        json_out.write_text(to_json(results))
        console.print(f"JSON: {json_out}")


def _cluster_address(cluster: Optional[Path], address: Optional[str], dry_run: bool) -> Optional[str]:
    """``--cluster FILE``: Ray's own validation first (exit 2 on a broken file), then the head's address."""
    if cluster is None:
        return address
    import subprocess

    from orchestrator.algorithms import AlgorithmError
    from orchestrator.cli.cluster import ray_executable
    from orchestrator.cluster_config import ClusterConfigError, validate_cluster_yaml

    with user_errors():
        if address is not None:
            raise AlgorithmError("give --cluster or --address, not both")
        try:
            validate_cluster_yaml(cluster)
        except ClusterConfigError as err:
            raise AlgorithmError(str(err)) from None
        if dry_run:
            return None
        found = subprocess.run([ray_executable(), "get-head-ip", str(cluster)], capture_output=True, text=True)
        head = found.stdout.strip().splitlines()[-1] if found.returncode == 0 and found.stdout.strip() else ""
        if not head:
            raise AlgorithmError(f"{cluster}: no running head node (start it with `maspo cluster up {cluster}`)")
    return f"{head}:6379"


def _check_choice(option: str, value: str, valid: tuple[str, ...]) -> None:
    from orchestrator.algorithms import AlgorithmError

    if value not in valid:
        raise AlgorithmError(f"{option} must be one of {', '.join(valid)}, got {value!r}")


@app.command("demo")
def demo_command(
    max_concurrent: int = typer.Option(2, help="Trials at a time on this machine."),
    root: Path = typer.Option(Path("runs"), help="Where experiments live."),
) -> None:
    """What `make demo` runs: MASPO's alpha-beta sweep at demo size on the local profile, then its results.

    Two (alpha, beta) settings, each a real verl run on CPU under Ray Tune; at the end the results table, the trials' W&B offline runs and a local HTML dashboard. The first run builds and warm-starts the tiny model (cached afterwards under ~/.cache/maspo). Run again, it resumes an interrupted demo or shows the finished one's results.
    """
    from orchestrator.store import ExperimentDir

    console.print("[bold]maspo demo[/]: `maspo sweep alpha-beta --demo` on the local profile: verl's own trainer "
                  "on CPU, a tiny warm-started Qwen2, synthetic math with graded difficulty, W&B offline.")
    name = "alpha-beta-demo"
    experiment = ExperimentDir.named(name, root)
    exp_dir = experiment.path
    if experiment.exists():
        if experiment.unfinished(experiment.plan()):
            console.print(f"{exp_dir} exists, unfinished: resuming it")
            resume_command(name=name, address=None, root=root)
        console.print(f"{exp_dir} is done: its results (delete the directory to run the demo again)")
        results_command(name=name, passk=False, csv_out=None, json_out=None, root=root, estimator=None, at="last",
                        gain=False, plot=None)
        return
    sweep_command(spec="alpha-beta", grid="listed", profile="local", scale=None, seeds=1, steps=None,
                  max_concurrent=max_concurrent, scheduler="fifo", name=name, dry_run=False, resume=False,
                  demo=True, address=None, cluster=None, root=root, profile_set=[])


def _mount_subcommands() -> None:
    from orchestrator.cli.cluster import cluster_app, data_app
    from orchestrator.cli.dashboard import dashboard_app
    from orchestrator.cli.sync import sync_command

    app.add_typer(cluster_app, name="cluster")
    app.add_typer(data_app, name="data")
    app.add_typer(dashboard_app, name="dashboard")
    app.command("sync")(sync_command)


_mount_subcommands()


def main() -> None:
    app()

