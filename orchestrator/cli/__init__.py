"""The ``maspo`` command line: the app, and where each command lives.

    common.py       the one handler of a user's mistakes (one line, exit 2), consoles, choices, shared options
    algorithms.py   maspo algorithms, maspo probe
    run.py          maspo run
    experiments.py  maspo sweep, compare, resume, results, demo
    cluster.py      maspo cluster up|down|status|submit
    data.py         maspo data sources|prepare
    dashboard.py    maspo dashboard local|publish
    sync.py         maspo sync
    doctor.py       maspo doctor (the patches maspo applies to verl, Ray and torch, and which are active)

Importing the command line (and checking a user's input) imports neither torch, verl, ray, transformers nor
wandb; a command imports what it needs when it runs.
"""

from __future__ import annotations

import typer

from orchestrator.cli.algorithms import algorithms_command, probe_command
from orchestrator.cli.cluster import cluster_app
from orchestrator.cli.common import console, user_errors
from orchestrator.cli.dashboard import dashboard_app
from orchestrator.cli.data import data_app
from orchestrator.cli.doctor import doctor_command
from orchestrator.cli.experiments import compare_command, demo_command, results_command, resume_command, sweep_command
from orchestrator.cli.run import run_command
from orchestrator.cli.sync import sync_command

__all__ = ["app", "main", "console", "user_errors"]

app = typer.Typer(
    help="maspo: MASPO and its baselines on verl, as sweeps and comparisons on Ray Tune, watched in W&B. "
         "A mistake in the input is one line `error: ...` on stderr and exit code 2; nothing has started then.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

for _name, _command in (("algorithms", algorithms_command), ("probe", probe_command), ("run", run_command),
                        ("sweep", sweep_command), ("compare", compare_command), ("resume", resume_command),
                        ("results", results_command), ("demo", demo_command), ("sync", sync_command),
                        ("doctor", doctor_command)):
    app.command(_name)(_command)
app.add_typer(cluster_app, name="cluster")
app.add_typer(data_app, name="data")
app.add_typer(dashboard_app, name="dashboard")


def main() -> None:
    app()
