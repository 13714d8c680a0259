"""``maspo cluster ...``: Ray's cluster launcher, the cluster file checked first.

Every ``cluster`` command validates the YAML with :func:`orchestrator.cluster_config.validate_cluster_yaml`
before it runs anything: a broken file ends the command with Ray's message on one line and exit code 2, and
nothing is launched. The commands then call Ray's own tools, so what happens is what Ray documents:

    maspo cluster up FILE       ray up -y FILE
    maspo cluster down FILE     ray down -y FILE
    maspo cluster status FILE   ray get-head-ip FILE, then ray exec FILE "ray status"
    maspo cluster submit FILE -- COMMAND...   a Ray Job on the cluster (JobSubmissionClient)

Ray's executable is the one next to this Python (the venv's), so the launcher's version is the cluster's.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import fail, handles_user_errors
from orchestrator.errors import UserError

cluster_app = typer.Typer(
    help="A Ray cluster of 8x A100 nodes from a launcher YAML in cluster/ (validated offline before every "
         "command): start it, stop it, look at it, run maspo on it.",
    no_args_is_help=True,
)

ClusterFileArg = Annotated[Path, typer.Argument(help="A Ray cluster-launcher YAML, e.g. cluster/a100-onprem.yaml.")]
DEFAULT_JOB_ADDRESS = "http://127.0.0.1:8265"


def ray_executable() -> str:
    """The venv's ``ray`` (same version as the installed package), else whatever ``ray`` is on PATH."""
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.is_file() else "ray"


def validated(file: Path) -> dict:
    """The cluster YAML, validated by Ray's schema and maspo's slot rules (a ClusterConfigError: exit 2)."""
    from orchestrator.cluster_config import validate_cluster_yaml

    return validate_cluster_yaml(file)


def run_ray(*args: str) -> int:
    """Run ``ray ARGS...`` in the foreground (its output is the user's); returns its exit status."""
    argv = [ray_executable(), *args]
    typer.echo("$ " + shlex.join(argv), err=True)
    return subprocess.run(argv).returncode


def _slots_line(config: dict) -> str:
    from orchestrator.cluster_config import gpu_slots

    slots = gpu_slots(config)
    name = config.get("cluster_name", "?")
    return f"cluster {name}: {slots} verl_slot(s), i.e. at most {slots} trial(s) of 8 GPUs at once"


@cluster_app.command("up")
@handles_user_errors
def up_command(file: ClusterFileArg) -> None:
    """Start (or update) the cluster: `ray up -y FILE`, after checking FILE offline.

    Needs ssh access to the nodes (on-prem) or cloud credentials (AWS, GCP). Then run maspo on the head with `maspo cluster submit FILE -- maspo sweep ...`, or `ray attach FILE`.
    """
    config = validated(file)
    typer.echo(_slots_line(config), err=True)
    raise typer.Exit(run_ray("up", "-y", str(file)))


@cluster_app.command("down")
@handles_user_errors
def down_command(file: ClusterFileArg) -> None:
    """Stop the cluster and release its nodes: `ray down -y FILE` (running trials are killed)."""
    validated(file)
    raise typer.Exit(run_ray("down", "-y", str(file)))


@cluster_app.command("status")
@handles_user_errors
def status_command(file: ClusterFileArg) -> None:
    """The head's address and Ray's view of nodes and resources (`ray status` on the head, via `ray exec`)."""
    config = validated(file)
    typer.echo(_slots_line(config))
    code = run_ray("get-head-ip", str(file))
    if code != 0:
        raise typer.Exit(code)
    raise typer.Exit(run_ray("exec", str(file), "ray status"))


def job_client(address: str):
    """Ray's job API client for ``address`` (separate so tests can replace it)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


@cluster_app.command("submit")
@handles_user_errors
def submit_command(
    file: ClusterFileArg,
    command: Annotated[list[str], typer.Argument(help="What to run on the head, after `--`, e.g. "
                                                      "`-- maspo sweep alpha-beta --profile a100 --scale 7b`.")],
    address: Annotated[str, typer.Option(help="The head's job API. `ray dashboard FILE` forwards it to this "
                                              "default address over ssh.")] = DEFAULT_JOB_ADDRESS,
    submission_id: Annotated[Optional[str], typer.Option(help="Job id (default: maspo-<time>).")] = None,
    env: Annotated[list[str], typer.Option(
        "--env", "-e", help="KEY=VALUE for the job's environment (repeatable).")] = [],  # noqa: B006
) -> None:
    """Run a command on the cluster's head as a Ray Job (e.g. a whole sweep), and print how to follow it.

    The job runs where Ray runs it, with the cluster's own installation of maspo; this machine may go away.
    """
    validated(file)
    env_vars = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--env expects KEY=VALUE, got {item!r}")
        env_vars[key] = value
    job_id = submission_id or f"maspo-{int(time.time())}"
    entrypoint = shlex.join(command)
    try:
        client = job_client(address)
        client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                          runtime_env={"env_vars": env_vars} if env_vars else None)
    except Exception as err:  # noqa: BLE001 - connection refused, auth, duplicate id: one line either way
        fail(f"cannot submit to {address}: {err} (is `ray dashboard {file}` forwarding the job API?)", code=1)
    typer.echo(f"submitted {job_id}: {entrypoint}")
    typer.echo(f"follow it:  ray job logs --address {address} -f {job_id}")
    typer.echo(f"stop it:    ray job stop --address {address} {job_id}")
