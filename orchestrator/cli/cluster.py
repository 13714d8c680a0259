"""``maspo cluster ...`` (Ray's cluster launcher, checked first) and ``maspo data ...`` (the a100 profile's data).

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
from typing import Optional

import typer

cluster_app = typer.Typer(
    help="A Ray cluster of 8x A100 nodes from a launcher YAML in cluster/ (validated offline before every "
         "command): start it, stop it, look at it, run maspo on it.",
    no_args_is_help=True,
)
data_app = typer.Typer(
    help="The a100 profile's data: DAPO-Math-17k (training) and six benchmarks (validation) as verl parquet "
         "files, downloaded from the Hugging Face Hub at pinned revisions.",
    no_args_is_help=True,
)

FILE_ARG = typer.Argument(..., help="A Ray cluster-launcher YAML, e.g. cluster/a100-onprem.yaml.")
DEFAULT_JOB_ADDRESS = "http://127.0.0.1:8265"


def fail(message: str, code: int = 2) -> None:
    """End the command with ``error: <message>`` on ONE line of stderr."""
    typer.echo("error: " + " ".join(str(message).split()), err=True)
    raise typer.Exit(code)


def ray_executable() -> str:
    """The venv's ``ray`` (same version as the installed package), else whatever ``ray`` is on PATH."""
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.is_file() else "ray"


def validated(file: Path) -> dict:
    """The cluster YAML, validated by Ray's schema and maspo's slot rules; exit 2 with Ray's message if not."""
    from orchestrator.cluster_config import ClusterConfigError, validate_cluster_yaml

    try:
        return validate_cluster_yaml(file)
    except ClusterConfigError as err:
        fail(str(err))


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
def up_command(file: Path = FILE_ARG) -> None:
    """Start (or update) the cluster: `ray up -y FILE`, after checking FILE offline.

    Needs ssh access to the nodes (on-prem) or cloud credentials (AWS, GCP). Then run maspo on the head with
    `maspo cluster submit FILE -- maspo sweep ...`, or `ray attach FILE`.
    """
    config = validated(file)
    typer.echo(_slots_line(config), err=True)
    raise typer.Exit(run_ray("up", "-y", str(file)))


@cluster_app.command("down")
def down_command(file: Path = FILE_ARG) -> None:
    """Stop the cluster and release its nodes: `ray down -y FILE` (running trials are killed)."""
    validated(file)
    raise typer.Exit(run_ray("down", "-y", str(file)))


@cluster_app.command("status")
def status_command(file: Path = FILE_ARG) -> None:
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
def submit_command(
    file: Path = FILE_ARG,
    command: list[str] = typer.Argument(..., help="What to run on the head, after `--`, e.g. "
                                                 "`-- maspo sweep alpha-beta --profile a100 --scale 7b`."),
    address: str = typer.Option(DEFAULT_JOB_ADDRESS, help="The head's job API. `ray dashboard FILE` forwards "
                                                          "it to this default address over ssh."),
    submission_id: Optional[str] = typer.Option(None, help="Job id (default: maspo-<time>)."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for the job's environment (repeatable)."),
) -> None:
    """Run a command on the cluster's head as a Ray Job (e.g. a whole sweep), and print how to follow it.

    The job runs where Ray runs it, with the cluster's own installation of maspo; this machine may go away.
    """
    validated(file)
    env_vars = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env expects KEY=VALUE, got {item!r}")
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


# --- data ------------------------------------------------------------------------------------------------


@data_app.command("sources")
def sources_command() -> None:
    """List the data sources: name, hub dataset id, pinned revision, split."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.data_prepare import sources_table

    table = Table(title="maspo data sources (a100 profile)")
    for column in ("name", "dataset", "hub id", "revision", "split"):
        table.add_column(column, overflow="fold")
    for row in sources_table():
        table.add_row(*row)
    Console().print(table)


@data_app.command("prepare")
def prepare_command(
    out: Path = typer.Option(Path("~/maspo-data"), help="Where to write the parquet files (shared storage "
                                                        "on a cluster: the a100 profile's data_dir)."),
    only: Optional[str] = typer.Option(None, help="Comma-separated sources (see `maspo data sources`); "
                                                  "default: all seven."),
) -> None:
    """Download DAPO-Math-17k and the six benchmarks and write train.parquet and val_<name>.parquet.

    Needs Hugging Face Hub access. Writes sources.json beside them with each source's id, resolved revision
    and row count. DAPO-Math-17k's ~1.8M hub rows (each problem about 100 times) become ~17k unique problems.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from orchestrator.data_prepare import DataPrepareError, load_rows, prepare_source, select_sources, update_manifest

    console = Console()
    try:
        sources = select_sources(only)
        import datasets  # noqa: F401 - fail before any download if it is missing
    except DataPrepareError as err:
        fail(str(err))
    except ImportError:
        fail("the `datasets` package is not installed (verl normally brings it): pip install datasets")
    out_dir = out.expanduser()
    entries: dict[str, dict] = {}
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            for source in sources:
                task = progress.add_task(f"{source.name}: loading {source.hf_id}", total=None)
                rows, total, revision = load_rows(source)
                progress.update(task, description=f"{source.name}: converting", total=total)
                entry = prepare_source(source, out_dir, rows=rows, revision=revision,
                                       on_row=lambda i, t=task: progress.update(t, completed=i))
                progress.update(task, description=f"{source.name}: {entry['rows']} rows", completed=total)
                entries[source.name] = entry
    except DataPrepareError as err:
        if entries:
            update_manifest(out_dir, entries)
        fail(str(err), code=1)
    manifest = update_manifest(out_dir, entries)
    table = Table(title=f"written to {out_dir}")
    for column in ("source", "rows", "file", "hub id @ revision"):
        table.add_column(column, overflow="fold")
    for name, entry in entries.items():
        table.add_row(name, str(entry["rows"]), entry["file"], f"{entry['hf_id']}@{entry['revision']}")
    console.print(table)
    console.print(f"manifest: {manifest}")
