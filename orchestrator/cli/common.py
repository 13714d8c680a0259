"""What every ``maspo`` command shares: the one handler of a user's mistakes, the console, the choices and
the options that several commands take (as ``Annotated`` aliases, defined once).

The handler: a :class:`~orchestrator.errors.UserError` (or a subclass: ``AlgorithmError``, ``SpecError``,
``TrackingError``, ``DashboardError``, ``ClusterConfigError``, ``DataPrepareError``) raised anywhere in a
command ends it with ONE line ``error: <message>`` on stderr and exit code 2, never a traceback. Every command
function is decorated with :func:`handles_user_errors`. Values Typer/Click can check themselves (a choice, an
integer range) are declared as such: Click rejects a bad one with exit code 2 and a short usage block.

This module imports neither torch, verl, ray, transformers nor wandb (checking a user's input must be fast).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterator, NoReturn, Optional, TypeVar

import typer
from rich.console import Console

from orchestrator.errors import UserError

# wide enough for the results tables when the output goes to a file or a CI log (Rich assumes 80 there)
console = Console() if sys.stdout.isatty() else Console(width=160)

F = TypeVar("F", bound=Callable)


# ---------------------------------------------------------------------------------------------------------
# the one handler


def fail(message: object, code: int = 2) -> NoReturn:
    """End the command with ``error: <message>`` on ONE line of stderr and exit ``code``.

    Code 2 is a user's mistake (what :func:`user_errors` uses); a command uses 1 for a failure that is not the
    user's (a download or a connection that failed), in the same one-line form.
    """
    line = " ".join(str(message).split()) or "(no message)"
    typer.echo(typer.style("error:", fg="red", bold=True) + " " + line, err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake ends the command with one clear line and exit code 2, never a traceback.

    An error the user must fix but did not cause (``orchestrator.store.DiskFull``) carries its own ``exit_code``.
    """
    try:
        yield
    except UserError as err:
        fail(err, getattr(err, "exit_code", 2))


def handles_user_errors(command: F) -> F:
    """Decorate a command function: it runs inside :func:`user_errors` (whatever Typer app it is mounted on)."""
    wrapped = user_errors()(command)
    wrapped.handles_user_errors = True  # type: ignore[attr-defined]  (checked by the tests, for every command)
    return wrapped  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# input a command checks itself


def parse_assignments(items: list[str], option: str = "--set") -> dict[str, object]:
    """``["alpha=0.3", "reading=abs_sum"]`` -> ``{"alpha": 0.3, "reading": "abs_sum"}`` (numbers as floats)."""
    values: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} expected NAME=VALUE, got {item!r}")
        try:
            values[key.strip()] = float(raw)
        except ValueError:
            values[key.strip()] = raw.strip()
    return values


def experiment_name(name: str, what: str = "experiment name") -> str:
    """A name that becomes ``<root>/<NAME>``: one path component (letters, digits, ``.``, ``_``, ``-``), short
    enough for a file name with room for what is derived from it (W&B run names, Ray job ids)."""
    from orchestrator.store import check_name

    check_name(name, what)
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"{what} {name[:20]}... has {len(name)} characters; at most {MAX_NAME_LENGTH}")
    return name


def experiment_path(name: str, runs_root: Path) -> Path:
    """An existing experiment, given as a NAME (``runs_root/NAME``, the name checked) or as a path to its directory."""
    if "/" in name and Path(name).is_dir():
        return Path(name)
    path = runs_root / experiment_name(name)
    if not path.is_dir():
        raise UserError(f"no experiment {name!r}: {path} does not exist")
    return path


# ---------------------------------------------------------------------------------------------------------
# choices: Typer lists them in --help and rejects anything else; ``.value`` is the string used downstream


class Profile(str, Enum):
    """Where trials run (``orchestrator.config.trial.LocalProfile`` / ``orchestrator.scales.A100Profile``)."""

    local = "local"
    a100 = "a100"


class Scale(str, Enum):
    """Model scale of the a100 profile (``orchestrator.config.experiment.SCALES``)."""

    b1_5 = "1.5b"
    b7 = "7b"
    b14 = "14b"


class Scheduler(str, Enum):
    """Tune's trial scheduler (``ExperimentPlan.scheduler``)."""

    fifo = "fifo"
    asha = "asha"


class Grid(str, Enum):
    """Which points of a sweep spec run (``SweepSpec.grid_points``)."""

    listed = "listed"
    full = "full"


class Estimator(str, Enum):
    """Which Pass@k estimator (``orchestrator.results.ESTIMATORS``; docs/algorithms.md#pass-at-k)."""

    bootstrap = "bootstrap"
    unbiased = "unbiased"


# ---------------------------------------------------------------------------------------------------------
# bounds (what would hang, overflow or fail deep inside a run is refused at the edge)

MAX_SEEDS = 100  # seeds per setting; each is a full training run
MAX_STEPS = 1_000_000
MAX_CONCURRENT = 1024
MAX_NODES = 10_000  # nodes of a previewed schedule
MAX_SEED = 2**32 - 1  # numpy's and vLLM's seed range
MAX_NAME_LENGTH = 128  # an experiment's or trial's name (a directory; file names stop at 255 bytes)


# ---------------------------------------------------------------------------------------------------------
# options shared by several commands (defaults in the signature: ``seeds: SeedsOpt = 1``)

ProfileOpt = Annotated[Profile, typer.Option(
    help="Where trials run: `local` (this machine, CPU, tiny model) or `a100` (a GPU cluster).")]
ScaleOpt = Annotated[Optional[Scale], typer.Option(
    help="Model scale of the a100 profile (picks Table 4's hyperparameters and the a100 preset). "
         "Default: 1.5b; a sweep on a100: its spec's scale.")]
SeedsOpt = Annotated[int, typer.Option(
    min=1, max=MAX_SEEDS, help="Seeds per setting (0..N-1): every point or algorithm runs N times; results show "
                               "mean and spread.")]
StepsOpt = Annotated[Optional[int], typer.Option(
    min=1, max=MAX_STEPS, help="Training steps per trial (default: the profile's).")]
MaxConcurrentOpt = Annotated[Optional[int], typer.Option(
    min=1, max=MAX_CONCURRENT, help="Trials at a time. Default: fill the cluster, as many as its free verl_slots "
                                    "allow (local profile: one per core and per 5 GiB of free memory).")]
NodesOpt = Annotated[Optional[int], typer.Option(
    min=1, max=MAX_NODES, help="With --dry-run: preview the schedule on this many 8-GPU nodes (makespan, lower "
                               "bound, utilization); --cluster FILE gives its own node count.")]
SchedulerOpt = Annotated[Scheduler, typer.Option(
    help="`fifo` runs every trial to the end; `asha` stops weak ones early (on the mean validation Avg@k).")]
ExperimentNameOpt = Annotated[Optional[str], typer.Option(
    "--name", help="Experiment name, the directory under --root: letters, digits, '.', '_', '-' "
                   "(default: the spec's name; with --demo, NAME-demo).")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print every trial's verl command; start nothing, write nothing.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted experiment of this name.")]
DemoOpt = Annotated[bool, typer.Option(
    "--demo", help="The spec's demo size (what `make demo` runs).")]
AddressOpt = Annotated[Optional[str], typer.Option(
    help="Join an existing Ray cluster (host:port, or auto on its head).")]
ClusterOpt = Annotated[Optional[Path], typer.Option(
    help="A Ray cluster YAML (cluster/); validated, then its head joined.")]
RootOpt = Annotated[Path, typer.Option(
    "--root", help="Where experiments live.")]
RehearseOpt = Annotated[bool, typer.Option(
    "--rehearse", help="With --profile a100: rehearse the cluster run on this machine (CPU, tiny model, private local "
                       "Ray, 2 steps by default): every a100 override as rendered except the device-bound ones, "
                       "which are listed at start. Ends with checks of what ran.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="With --rehearse: the data directory (`maspo data prepare --fixtures --out DIR`); default: "
                   "prepared from maspo's fixtures into the cache.")]
ProfileSetOpt = Annotated[list[str], typer.Option(
    "--profile-set", "-P", help="A profile setting NAME=VALUE, e.g. -P train_batch_size=8 or -P test_freq=2 "
                                "(repeatable; see the profile's fields).")]
HyperparameterOpt = Annotated[list[str], typer.Option(
    "--set", "-s", help="A hyperparameter NAME=VALUE (repeatable).")]
RunsRootOpt = Annotated[Path, typer.Option(
    "--runs-root", "--root", help="Directory holding the experiments.")]
