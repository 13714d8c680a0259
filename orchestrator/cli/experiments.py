"""Sweeps and comparisons: one Ray Tune experiment per command (``sweep``, ``compare``, ``resume``, ``results``,
``demo``), kept under ``--root``/NAME by :mod:`orchestrator.store`.

Everything a user gives is checked before Ray starts and before anything is written: the spec, every option,
the experiment's name (one path component), the profile settings, the cluster file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from orchestrator.cli.common import (AddressOpt, ClusterOpt, DataOpt, DemoOpt, DryRunOpt, Estimator, ExperimentNameOpt,
                                     Grid, MaxConcurrentOpt, MAX_STEPS, NodesOpt, Profile, ProfileOpt, ProfileSetOpt,
                                     RehearseOpt, ResumeOpt, RootOpt, Scale, ScaleOpt, Scheduler, SchedulerOpt, SeedsOpt,
                                     StepsOpt, console, experiment_name, handles_user_errors, parse_assignments)
from orchestrator.errors import UserError

# profile settings a -P may not give: options of their own decide them
RESERVED_PROFILE_SETTINGS = {"name": "--profile", "scale": "--scale"}


# ---------------------------------------------------------------------------------------------------------
# the commands


@handles_user_errors
def sweep_command(
    spec: Annotated[str, typer.Argument(
        help="A spec in sweeps/ (e.g. alpha-beta) or a path to a YAML file.")] = "alpha-beta",
    grid: Annotated[Grid, typer.Option(
        help="`listed`: the spec's points; `full`: every combination of their values.")] = Grid.listed,
    profile: ProfileOpt = Profile.local,
    scale: ScaleOpt = None,
    seeds: SeedsOpt = 1,
    steps: StepsOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    scheduler: SchedulerOpt = Scheduler.fifo,
    name: ExperimentNameOpt = None,
    dry_run: DryRunOpt = False,
    nodes: NodesOpt = None,
    resume: ResumeOpt = False,
    demo: DemoOpt = False,
    address: AddressOpt = None,
    cluster: ClusterOpt = None,
    root: RootOpt = Path("runs"),
    profile_set: ProfileSetOpt = [],  # noqa: B006
    rehearse: RehearseOpt = False,
    data: DataOpt = None,
) -> None:
    """Sweep one algorithm's hyperparameters (default: MASPO's alpha-beta study, paper section 5.3, Table 5), or
    run a study (e.g. `paper`: the paper's whole study, each part at its own scale).

    One Ray Tune experiment; each trial is a full verl training run submitted as a Ray Job. Ends with the results table (also: `maspo results NAME`).
    """
    plan = _plan("sweep", spec, name=name, profile=profile, scale=scale, seeds=seeds, steps=steps,
                 max_concurrent=max_concurrent, scheduler=scheduler, demo=demo, grid=grid, profile_set=profile_set,
                 rehearse=rehearse, data=data, root=root)
    preview = _preview_nodes(plan, nodes, cluster, dry_run)
    _launch(plan, dry_run=dry_run, address=_cluster_address(cluster, address, dry_run), root=root, resume=resume,
            nodes=preview)


@handles_user_errors
def compare_command(
    baselines: Annotated[str, typer.Option(
        help="`all` or a comma list, e.g. grpo,sapo,dac (see `maspo algorithms`); the reference (MASPO) always "
             "runs.")] = "all",
    spec: Annotated[str, typer.Option(help="A spec in sweeps/ or a path to a YAML file.")] = "compare",
    profile: ProfileOpt = Profile.local,
    scale: ScaleOpt = None,
    seeds: SeedsOpt = 1,
    steps: StepsOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    scheduler: SchedulerOpt = Scheduler.fifo,
    name: ExperimentNameOpt = None,
    dry_run: DryRunOpt = False,
    nodes: NodesOpt = None,
    resume: ResumeOpt = False,
    demo: DemoOpt = False,
    address: AddressOpt = None,
    cluster: ClusterOpt = None,
    root: RootOpt = Path("runs"),
    profile_set: ProfileSetOpt = [],  # noqa: B006
    rehearse: RehearseOpt = False,
    data: DataOpt = None,
) -> None:
    """MASPO against baselines with the paper's Table 4 hyperparameters, as one Ray Tune experiment.

    Each trial is a full verl training run submitted as a Ray Job. Ends with the results table in the layout of the paper's Table 1 (also: `maspo results NAME`).
    """
    plan = _plan("compare", spec, name=name, profile=profile, scale=scale, seeds=seeds, steps=steps,
                 max_concurrent=max_concurrent, scheduler=scheduler, demo=demo, baselines=baselines,
                 profile_set=profile_set, rehearse=rehearse, data=data, root=root)
    preview = _preview_nodes(plan, nodes, cluster, dry_run)
    _launch(plan, dry_run=dry_run, address=_cluster_address(cluster, address, dry_run), root=root, resume=resume,
            nodes=preview)


@handles_user_errors
def resume_command(
    name: Annotated[str, typer.Argument(help="The experiment to continue (a directory under --root).")],
    address: Annotated[Optional[str], typer.Option(
        help="Join an existing Ray cluster (host:port) instead of starting one.")] = None,
    root: RootOpt = Path("runs"),
) -> None:
    """Continue an interrupted sweep or comparison: only unfinished trials run, from their last checkpoint."""
    from orchestrator.store import ExperimentDir

    plan = ExperimentDir.named(name, root).plan()
    _launch(plan, dry_run=False, address=address, root=root, resume=True)


@handles_user_errors
def results_command(
    name: Annotated[str, typer.Argument(help="The experiment (a directory under --root).")],
    passk: Annotated[bool, typer.Option(
        "--passk", help="Also Pass@k against k per validation set (Table 7).")] = False,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Write the table as CSV here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Write rows and per-trial results as JSON here.")] = None,
    root: RootOpt = Path("runs"),
    estimator: Annotated[Optional[Estimator], typer.Option(
        help="Pass@k of the main table: `bootstrap` (verl's best@k, the paper's estimator) or `unbiased` "
             "(Chen et al.). Default: bootstrap beside the paper's rows (a100 at a paper scale), else unbiased.")] = None,
    at: Annotated[str, typer.Option(
        help="Which validation: `last` (default), `best` (per row, the step with the best Avg@k averaged over "
             "benchmarks and seeds) or a step number.")] = "last",
    gain: Annotated[bool, typer.Option("--gain", help="Also MASPO's gain over GRPO (Table 2), the paper's beside.")] = False,
    mechanism: Annotated[bool, typer.Option(
        "--mechanism", help="Also what each loss did to the gradient: tokens outside the clip range, zeroed, kept, "
                            "the positive-advantage mass a hard clip discards (docs/algorithms.md#mechanism-metrics)."
    )] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write Figure 3's training dynamics and Pass@k against k as PNG files into this directory.")] = None,
    claims: Annotated[bool, typer.Option(
        "--claims", help="Also check the paper's claims (sections 5.2, 5.3, D.2) the trials can test: holds, fails "
                         "or inconclusive, with a bootstrap CI over seeds (docs/claims.md); saved as claims.json "
                         "in the experiment's directory.")] = False,
    pooled: Annotated[Optional[list[str]], typer.Option(
        "--with", help="With --claims: also the trials of this experiment under --root (repeatable), e.g. a "
                       "comparison's GRPO beside a sweep's alpha settings; a trial both ran counts once.")] = None,
) -> None:
    """The experiment's validation in the layout of the paper's Table 1, best in bold, second underlined; trials' GPU-hours."""
    from orchestrator.results import to_csv, to_json
    from orchestrator.store import ExperimentDir

    experiment = ExperimentDir.named(name, root)
    experiment.plan()  # a clear error when there is no experiment (or not one this maspo can read)
    report = None
    if pooled and not claims:
        raise UserError("--with pools experiments for --claims: give --claims too")
    if claims:
        from orchestrator.claims import evaluate

        others = [ExperimentDir.named(other, root) for other in pooled or []]
        for other in others:
            other.plan()
        # before anything is printed: nothing to test is one line, exit 2
        report = evaluate(experiment.path, [other.path for other in others])
    results = _print_results(experiment.path, passk=passk, at=at, estimator=estimator.value if estimator else None,
                             gain=gain, plot=plot, mechanism=mechanism)
    for path, text, what in ((csv_out, to_csv, "CSV"), (json_out, to_json, "JSON")):
        if path:
            try:
                path.write_text(text(results))
            except OSError as err:
                raise UserError(f"cannot write {path}: {err.strerror or err}") from None
            console.print(f"{what}: {path}", markup=False)
    if report is not None:
        from orchestrator.claims import as_dict, definitions_table, results_table

        for table in (*definitions_table(), results_table(report)):
            console.print(table)
        try:
            experiment.write_claims(as_dict(report))
        except OSError as err:
            raise UserError(f"cannot write {experiment.claims_path}: {err.strerror or err}") from None
        console.print(f"claims: {experiment.claims_path}", markup=False)


@handles_user_errors
def demo_command(
    max_concurrent: MaxConcurrentOpt = 2,
    root: RootOpt = Path("runs"),
) -> None:
    """What `make demo` runs: MASPO's alpha-beta sweep at demo size on the local profile, then its results.

    Two (alpha, beta) settings, each a real verl run on CPU under Ray Tune; at the end the results table, the trials' W&B offline runs and a local HTML dashboard. The first run builds and warm-starts the tiny model (cached afterwards under ~/.cache/maspo). Run again, it resumes an interrupted demo or shows the finished one's results.
    """
    from orchestrator.store import ExperimentDir

    console.print("[bold]maspo demo[/]: `maspo sweep alpha-beta --demo` on the local profile: verl's own trainer "
                  "on CPU, a tiny warm-started Qwen2, synthetic math with graded difficulty, W&B offline.")
    name = "alpha-beta-demo"
    experiment = ExperimentDir.named(name, root)
    if experiment.exists():
        if experiment.unfinished(experiment.plan()):
            console.print(f"{experiment.path} exists, unfinished: resuming it", markup=False)
            resume_command(name=name, address=None, root=root)
        console.print(f"{experiment.path} is done: its results (delete the directory to run the demo again)",
                      markup=False)
        results_command(name=name, passk=False, csv_out=None, json_out=None, root=root, estimator=None, at="last",
                        gain=False, mechanism=True, plot=None, claims=False, pooled=None)
        return
    plan = _plan("sweep", "alpha-beta", name=name, profile=Profile.local, scale=None, seeds=1, steps=None,
                 max_concurrent=max_concurrent, scheduler=Scheduler.fifo, demo=True, grid=Grid.listed, profile_set=[])
    _launch(plan, dry_run=False, address=None, root=root, resume=False)


# ---------------------------------------------------------------------------------------------------------
# from a command's input to a plan, and from a plan to a Ray Tune experiment


def profile_settings(items: list[str]) -> dict[str, object]:
    """``-P NAME=VALUE`` settings of the profile (whole numbers as ints); the ones options decide are refused."""
    settings = {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
                for k, v in parse_assignments(items, "--profile-set").items()}
    for key, option in RESERVED_PROFILE_SETTINGS.items():
        if key in settings:
            raise UserError(f"-P {key}=... is not a profile setting to give; use {option}")
    _check_steps(settings.get("steps"), "-P steps")
    return settings


def _check_steps(steps: object, source: str) -> None:
    """Steps beyond the bound would only hang the planning (validation points are counted step by step)."""
    if isinstance(steps, int) and not 1 <= steps <= MAX_STEPS:
        raise UserError(f"{source} must be 1 to {MAX_STEPS}, got {steps}")


def _plan(kind: str, spec: str, *, name: Optional[str], profile: Profile, scale: Optional[Scale], seeds: int,
          steps: Optional[int], max_concurrent: Optional[int], scheduler: Scheduler, demo: bool, grid: Grid = Grid.listed,
          baselines: str = "all", profile_set: list[str], rehearse: bool = False, data: Optional[Path] = None,
          root: Path = Path("runs")):
    """The experiment a ``sweep``/``compare`` command describes, every input checked (a UserError if not)."""
    from orchestrator.config.experiment import load_spec, plan_experiment, spec_path

    if name is not None:
        experiment_name(name)
    if data is not None and not rehearse:
        raise UserError("--data is the data of a rehearsal: give --rehearse too (a cluster run reads -P data_dir)")
    if rehearse and profile is not Profile.a100:
        raise UserError("--rehearse rehearses the a100 profile on this machine: give --profile a100 too")
    settings = profile_settings(profile_set)
    loaded = load_spec(spec)
    if loaded.kind != kind and not (kind == "sweep" and loaded.kind == "study"):
        use = "sweep" if loaded.kind == "study" else loaded.kind
        raise UserError(f"{spec_path(spec)} is a {loaded.kind} spec; use `maspo {use}`")
    if rehearse:
        from orchestrator.rehearsal import profile_settings as rehearsal_settings

        plan_name = name or (f"{loaded.name}-demo" if demo else loaded.name)
        settings = rehearsal_settings(settings, data_dir=data, experiment_dir=root / plan_name,
                                      steps_given=steps is not None or (demo and loaded.demo.steps is not None))
    plan = plan_experiment(loaded, name=name, profile=profile.value, scale=scale.value if scale else None,
                           seeds=seeds, steps=steps, grid=grid.value, baselines=baselines, demo=demo,
                           max_concurrent=max_concurrent, scheduler=scheduler.value,
                           spec_file=str(spec_path(spec)), profile_settings=settings, rehearse=rehearse)
    experiment_name(plan.name)  # a name from the spec becomes a directory too
    _check_steps(plan.steps, "steps (the spec's demo size)")
    return plan


def _launch(plan, *, dry_run: bool, address: Optional[str], root: Path, resume: bool = False,
            nodes: Optional[int] = None) -> None:
    from orchestrator.store import ExperimentDir

    experiment = ExperimentDir.named(plan.name, root)
    exp_dir = experiment.path
    if dry_run:
        from orchestrator.render import dry_run_lines

        if plan.rehearse:
            from orchestrator.rehearsal import replaced_table

            console.print(replaced_table(plan))
        _print_dry_run(plan, dry_run_lines(plan, root))
        if nodes is not None:
            _print_schedule(plan, nodes)
        return
    if root.exists() and not root.is_dir():
        raise UserError(f"--root {root} is not a directory")
    from orchestrator.tune_runner import check_ready, run_experiment

    check_ready(plan, address)  # a cluster and its data, before anything is written or started
    from orchestrator.store import ExperimentLock

    # one command at a time on an experiment: a second one (a second resume, a sweep --name of a running one)
    # refuses with the running command's pid and host; a dead holder's lock is taken over
    with ExperimentLock(exp_dir, _command_line(plan.name, resume)):
        _launch_locked(plan, experiment, address=address, root=root, resume=resume)


def _command_line(name: str, resume: bool) -> str:
    """How the lock names this command: its own argv, or what it does."""
    import sys

    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    if argv and argv[0] in ("maspo", "__main__.py"):
        return " ".join(["maspo", *argv[1:]])
    return f"maspo resume {name}" if resume else f"maspo sweep/compare --name {name}"


def _launch_locked(plan, experiment, *, address: Optional[str], root: Path, resume: bool) -> None:
    from orchestrator.tune_runner import run_experiment

    exp_dir = experiment.path
    if resume:
        if not experiment.exists():
            raise UserError(f"nothing to resume: {experiment.tune_dir} does not exist")
        plan = experiment.plan()
    else:
        if experiment.exists():
            raise UserError(f"experiment {plan.name!r} exists at {exp_dir}; continue it with --resume "
                            f"(or `maspo resume {plan.name}`), or pick another --name")
    if address is not None and not plan.rehearse:
        from orchestrator.doctor import check_cluster

        # the cheap part of `maspo doctor` (versions, verl_slot, storage, data on every node): one line, exit 2
        with console.status(f"checking the Ray cluster at {address} (maspo doctor's cheap part)"):
            check_cluster(plan, address, root)
    if not resume:
        experiment.save_plan(plan)
    if plan.rehearse:
        from orchestrator.rehearsal import replaced_table

        console.print(replaced_table(plan))
    console.print(f"[bold]{plan.name}[/]: {len(plan.trials)} trial(s) of verl on the {plan.profile} profile"
                  f"{' (REHEARSED on CPU)' if plan.rehearse else ''}, {_concurrency(plan)}, {plan.steps} steps each"
                  f"{', resuming' if resume else ''}. Outputs: {escape(str(exp_dir))}")
    code = run_experiment(plan, exp_dir, console, address=address, restore=resume)
    _print_results(exp_dir, mechanism=None)
    if plan.rehearse:
        from orchestrator.rehearsal import checks_table, rehearsal_checks

        checks = rehearsal_checks(exp_dir)
        console.print(checks_table(checks))
        code = code or int(not all(c.ok for c in checks))
    try:
        from orchestrator.local_dashboard import write_local_dashboard

        page = write_local_dashboard(plan.name, runs_root=root)
        console.print(f"dashboard (open in a browser, works offline): {page.resolve()}", markup=False)
    except Exception as err:  # noqa: BLE001 (the results are printed; a page that fails must not hide them)
        console.print(f"[yellow]no local dashboard: {escape(str(err))}[/]")
    unfinished = experiment.unfinished(plan)
    if unfinished:
        console.print(f"[yellow]{len(unfinished)} trial(s) unfinished[/]; continue with: maspo resume {plan.name}"
                      + (f" --root {escape(str(root))}" if root != Path("runs") else ""))
    raise typer.Exit(code)


def _concurrency(plan) -> str:
    if plan.max_concurrent is None:
        return "as many at a time as the free verl_slots allow"
    return f"at most {plan.max_concurrent} at a time"


def _print_dry_run(plan, lines) -> None:
    from orchestrator.scales import estimate_cost, gpus_of

    console.print(f"[bold]{plan.name}[/] (dry run: nothing starts): {len(plan.trials)} trial(s), profile "
                  f"{plan.profile}, scale {plan.scale}, seeds {plan.seeds}, {plan.steps} steps, scheduler "
                  f"{plan.scheduler}, {_concurrency(plan)}")
    total, widths = 0.0, {}
    for planned, command in lines:
        t = planned.trial
        gpus = gpus_of(t.profile)
        widths[gpus] = widths.get(gpus, 0) + 1
        cost = ""
        if t.profile.name == "a100":
            c = estimate_cost(t.profile)
            total += c.gpu_hours
            cost = (f", est. {c.gpu_hours:,.0f} A100-hours: {c.steps} steps x {c.seconds_per_step:,.0f} s + "
                    f"{c.validations} validations x {c.validation_s:,.0f} s")
        parts = f"; parts: {', '.join(planned.parts)}" if len(planned.parts) > 1 else ""
        where = (f"rehearsed on 1 fake GPU; on the cluster {gpus} GPU(s) on {planned.nodes} node(s){cost}"
                 if plan.rehearse else f"{gpus} GPU(s) on {planned.nodes} node(s), {planned.nodes} slot(s){cost}")
        console.print(f"\n[bold]{planned.name}[/]  ({escape(planned.label)}, seed {t.seed}; {where}{parts})")
        console.print("  hyperparameters: " + ", ".join(f"{k}={v}" for k, v in t.hyperparameters.items()),
                      highlight=False, markup=False)
        console.print(f"  {command}", highlight=False, soft_wrap=True, markup=False)
    if total:
        shape = (f"{len(plan.trials)} trials x {next(iter(widths))} GPUs" if len(widths) == 1 else
                 f"{len(plan.trials)} trials (" + ", ".join(f"{n} x {g} GPUs" for g, n in sorted(widths.items()))
                 + ")")
        of = " of the cluster run (not the rehearsal)" if plan.rehearse else ""
        console.print(f"\n[bold]total{of}[/]: {shape}, est. {total:,.0f} A100-hours (derived from tokens per step "
                      f"and A100 throughput, not measured: docs/orchestration.md#cost)")


def _preview_nodes(plan, nodes: Optional[int], cluster: Optional[Path], dry_run: bool) -> Optional[int]:
    """The node count of a schedule preview: --nodes, else the --cluster file's; only with --dry-run."""
    if nodes is None and (cluster is None or not dry_run):
        return None
    if not dry_run:
        raise UserError("--nodes previews a schedule: use it with --dry-run")
    if plan.profile != "a100":
        if nodes is None:
            return None
        raise UserError("a schedule preview needs the a100 profile's cost estimates: add --profile a100")
    if nodes is None:
        from orchestrator.cluster_config import slot_nodes, validate_cluster_yaml

        nodes = slot_nodes(validate_cluster_yaml(cluster))
    widest = max(plan.trials, key=lambda t: t.nodes)
    if widest.nodes > nodes:
        raise UserError(f"trial {widest.name} spans {widest.nodes} nodes; a cluster of {nodes} can never start it")
    return nodes


def _print_schedule(plan, nodes: int) -> None:
    from orchestrator.schedule import plan_jobs, simulate

    s = simulate(plan_jobs(plan), nodes, plan.max_concurrent)
    node_hours = s.node_hours
    longest = max(p.job.hours for p in s.placements)
    waiting = max(s.placements, key=lambda p: p.start)
    console.print(f"\n[bold]schedule on {nodes} node(s)[/] (preview: estimated run times; widest, then longest "
                  f"first; a trial starts when its nodes are free, nothing overtakes it)")
    console.print(f"  makespan {s.makespan:,.0f} h ({s.makespan / 24:,.1f} days); lower bound {s.lower_bound:,.0f} h "
                  f"(the larger of {node_hours:,.0f} node-hours / {nodes} and the longest trial, {longest:,.0f} h); "
                  f"makespan / lower bound {s.makespan / s.lower_bound:.2f}", highlight=False)
    if s.pigeonhole_bound > s.lower_bound * 1.001:
        console.print(f"  no schedule ends before {s.pigeonhole_bound:,.0f} h either (some node must run several of "
                      f"the longest trials in a row): makespan / that bound {s.makespan / s.pigeonhole_bound:.2f}",
                      highlight=False)
    console.print(f"  mean utilization {s.utilization:.1%}; the last trial starts after {waiting.start:,.0f} h "
                  f"({escape(waiting.job.name)})", highlight=False)


def _print_results(exp_dir: Path, passk: bool = False, *, at: str = "last", estimator: Optional[str] = None,
                   gain: bool = False, plot: Optional[Path] = None, mechanism: Optional[bool] = False):
    """``mechanism``: print the mechanism table (None: when any trial logged mechanism metrics)."""
    from orchestrator.results import (collect, gain_table, mechanism_rows, mechanism_table, passk_table, table,
                                      trials_table)

    results = collect(exp_dir, at=at, estimator=estimator)
    console.print(table(results, paper=True))
    console.print(trials_table(results))
    if passk:
        console.print(passk_table(results))
    if gain:
        console.print(gain_table(results))
    if mechanism or (mechanism is None and any(cells for _, cells in mechanism_rows(results))):
        console.print(mechanism_table(results))
    if plot is not None:
        from orchestrator.plots import write_figures

        for path in write_figures(results, plot).values():
            console.print(f"figure: {path}", markup=False)
    return results


def _cluster_address(cluster: Optional[Path], address: Optional[str], dry_run: bool) -> Optional[str]:
    """``--cluster FILE``: Ray's own validation first (exit 2 on a broken file), then the head's address."""
    if cluster is None:
        return address
    import subprocess

    from orchestrator.cli.cluster import ray_executable
    from orchestrator.cluster_config import validate_cluster_yaml

    if address is not None:
        raise UserError("give --cluster or --address, not both")
    validate_cluster_yaml(cluster)
    if dry_run:
        return None
    found = subprocess.run([ray_executable(), "get-head-ip", str(cluster)], capture_output=True, text=True)
    head = found.stdout.strip().splitlines()[-1] if found.returncode == 0 and found.stdout.strip() else ""
    if not head:
        raise UserError(f"{cluster}: no running head node (start it with `maspo cluster up {cluster}`)")
    return f"{head}:6379"
