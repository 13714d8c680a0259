"""``maspo data ...``: the a100 profile's data (DAPO-Math-17k and six benchmarks as verl parquet files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import fail, handles_user_errors
from orchestrator.errors import UserError

data_app = typer.Typer(
    help="The a100 profile's data: DAPO-Math-17k (training) and six benchmarks (validation) as verl parquet "
         "files, downloaded from the Hugging Face Hub at pinned revisions.",
    no_args_is_help=True,
)


@data_app.command("sources")
@handles_user_errors
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
@handles_user_errors
def prepare_command(
    out: Annotated[Optional[Path], typer.Option(
        help="Where to write the parquet files (shared storage on a cluster: the a100 profile's data_dir). "
             "Default: ~/maspo-data; with --fixtures, the rehearsal's default data directory.")] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated sources (see `maspo data sources`); "
                                                     "default: all seven.")] = None,
    fixtures: Annotated[bool, typer.Option(
        "--fixtures", help="Convert the few rows per source shipped with maspo instead of downloading (no network): "
                           "the data of a rehearsal (`maspo compare --profile a100 --rehearse --data DIR`).")] = False,
) -> None:
    """Download DAPO-Math-17k and the six benchmarks and write train.parquet and val_<name>.parquet.

    Needs Hugging Face Hub access (not with --fixtures). Writes sources.json beside them with each source's id, resolved revision and row count. DAPO-Math-17k's ~1.8M hub rows (each problem about 100 times) become ~17k unique problems.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from orchestrator.data_prepare import (DEFAULT_OUT, DataPrepareError, load_rows, prepare_source, select_sources,
                                           update_manifest)

    console = Console()
    sources = select_sources(only)
    if fixtures:
        from orchestrator.data_prepare import prepare_fixtures
        from orchestrator.rehearsal import default_data_dir

        out_dir = (out or default_data_dir()).expanduser()
        entries = prepare_fixtures(out_dir, [s.name for s in sources])
        table = Table(title=f"written to {out_dir} (from maspo's fixtures: a rehearsal's data, not the benchmarks)")
        for column in ("source", "rows", "file"):
            table.add_column(column, overflow="fold")
        for name, entry in entries.items():
            table.add_row(name, str(entry["rows"]), entry["file"])
        console.print(table)
        console.print(f"manifest: {out_dir / 'sources.json'}")
        return
    try:
        import datasets  # noqa: F401 - fail before any download if it is missing
    except ImportError:
        raise UserError("the `datasets` package is not installed (verl normally brings it): "
                        "pip install datasets") from None
    out_dir = (out or Path(DEFAULT_OUT)).expanduser()
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
    except DataPrepareError as err:  # a download or a conversion that failed: not the user's mistake, exit 1
        if entries:
            update_manifest(out_dir, entries)
        fail(err, code=1)
    manifest = update_manifest(out_dir, entries)
    table = Table(title=f"written to {out_dir}")
    for column in ("source", "rows", "file", "hub id @ revision"):
        table.add_column(column, overflow="fold")
    for name, entry in entries.items():
        table.add_row(name, str(entry["rows"]), entry["file"], f"{entry['hf_id']}@{entry['revision']}")
    console.print(table)
    console.print(f"manifest: {manifest}")
