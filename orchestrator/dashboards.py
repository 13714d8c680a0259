"""Dashboards as code: ``dashboards/maspo.yaml`` -> a W&B workspace and a W&B report per experiment.

The definition ships inside the package and is read through :mod:`orchestrator.resources`.

The definition file names panels by metric key with two placeholders, ``{k}`` (samples per validation problem:
32 on the cluster, 8 locally) and ``{source}`` (each validation set). :func:`expand` fills them for one
experiment; :func:`build_workspace` and :func:`build_report` turn the result into ``wandb_workspaces`` objects,
:mod:`orchestrator.local_dashboard` into an HTML page.

Building is offline. ``wandb_workspaces`` serialises only through the private ``_to_model()`` (pinned version,
docs/orchestration.md#dashboards); :func:`to_json` is that JSON with the random panel and runset ids numbered
in order, so that it can be compared with golden files. :func:`publish` needs network and W&B credentials.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from orchestrator import resources
from orchestrator.store import ExperimentDir, validations
from orchestrator.tracking import TrackingError

LOCAL_SOURCES = ["local_math500", "local_amc23", "local_minerva", "local_olympiad", "local_aime24", "local_aime25"]
CLUSTER_SOURCES = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiad"]  # data_prepare.VALIDATION_NAMES


class DashboardError(TrackingError):
    """A user-facing problem with a dashboard (no such experiment, a broken definition); one line."""


# --------------------------------------------------------------------------------------------------------
# the definition


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Model):
    """A parallel-coordinates axis: a run-config key, or the final or best value of a metric."""

    label: str
    config: Optional[str] = None
    final: Optional[str] = None
    best: Optional[str] = None

    @model_validator(mode="after")
    def _one(self) -> Column:
        if sum(v is not None for v in (self.config, self.final, self.best)) != 1:
            raise ValueError(f"column {self.label!r} needs exactly one of config, final, best")
        return self

    @property
    def metric(self) -> str | None:
        return self.final or self.best


class Panel(_Model):
    title: str
    y: Optional[str] = None
    columns: list[Column] = []
    bars: list[str] = []
    # Pass@j against j = 1, 2, 4, ..., k with this estimator (docs/algorithms.md#pass-at-k); expanded into ``bars``
    passk: Optional[Literal["unbiased", "bootstrap"]] = None
    per_source: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Panel:
        if sum((self.y is not None, bool(self.columns), bool(self.bars) and not self.passk, bool(self.passk))) != 1:
            raise ValueError(f"panel {self.title!r} needs exactly one of y, columns, bars, passk")
        return self

    @property
    def kind(self) -> Literal["line", "parallel", "bars", "passk"]:
        return "line" if self.y else "parallel" if self.columns else "passk" if self.passk else "bars"


class Section(_Model):
    name: str
    panels: list[Panel]
    kinds: Optional[list[str]] = None


class ReportBlock(_Model):
    heading: str
    text: str = ""
    kinds: Optional[list[str]] = None
    panels: list[Panel] = []
    table: bool = False
    # the local page draws this block as the PNG figure of orchestrator.plots (W&B draws its panels)
    figure: Optional[Literal["training"]] = None


class ReportDefinition(_Model):
    title: str
    description: str = ""
    blocks: list[ReportBlock]


class Definition(_Model):
    x: str
    group_by: str
    sections: list[Section]
    report: ReportDefinition


def load_definition(path: Path | None = None) -> Definition:
    """The dashboard definition: ``path``, or the one shipped with maspo (``dashboards/maspo.yaml``)."""
    try:
        if path is None:
            path, text = resources.dashboard_definition(), resources.dashboard_definition_text()
        else:
            text = Path(path).read_text(encoding="utf-8")
        return Definition.model_validate(yaml.safe_load(text))
    except (OSError, yaml.YAMLError) as err:
        raise DashboardError(f"cannot read dashboard definition {path}: {err}") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DashboardError(f"{path}: {where}: {first['msg']}") from None


@dataclass(frozen=True)
class Validation:
    """What the validation keys of an experiment look like: k and the data_sources."""

    k: int
    sources: tuple[str, ...]


def _fill(text: str, **values) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def passk_keys(source: str, k: int, estimator: str) -> list[tuple[int, str]]:
    """(j, metric key) of Pass@j for j = 1, 2, 4, ..., k of one validation set.

    unbiased: the project's ``pass@j`` (``val-core`` at j = k, ``val-aux`` below). bootstrap: verl's
    ``best@j/mean`` (j >= 2) and Avg@k at j = 1 (verl logs no best@1; its expectation is Avg@k, and the paper's
    Table 7 Pass@1 is its Avg@32).
    """
    from orchestrator.metrics import k_values

    out = []
    for j in k_values(k):
        section = "val-core" if j == k else "val-aux"
        if estimator == "unbiased":
            out.append((j, f"{section}/{source}/acc/pass@{j}"))
        elif j == 1:
            out.append((j, f"val-core/{source}/acc/mean@{k}"))
        else:
            out.append((j, f"{section}/{source}/acc/best@{j}/mean"))
    return out


def expand(panels: list[Panel], validation: Validation, experiment: str = "") -> list[Panel]:
    """The panels with ``{k}``, ``{source}`` and ``{experiment}`` filled; ``per_source`` panels once per source;
    a ``passk`` panel's bars are its Pass@j keys."""
    out = []
    for panel in panels:
        for source in (validation.sources if panel.per_source else [None]):
            def fill(text, source=source):
                values = {"k": validation.k, "experiment": experiment}
                if source is not None:
                    values["source"] = source
                return _fill(text, **values)

            bars = [fill(b) for b in panel.bars]
            if panel.passk:
                bars = [key for _, key in passk_keys(source or "average", validation.k, panel.passk)]
            out.append(Panel(
                title=fill(panel.title), y=fill(panel.y) if panel.y else None,
                columns=[Column(label=fill(c.label), config=c.config, final=c.final and fill(c.final),
                                best=c.best and fill(c.best)) for c in panel.columns],
                bars=bars, passk=panel.passk))
    return out


def sections_for(definition: Definition, kind: str | None) -> list[Section]:
    return [s for s in definition.sections if s.kinds is None or kind is None or kind in s.kinds]


def blocks_for(definition: Definition, kind: str | None) -> list[ReportBlock]:
    return [b for b in definition.report.blocks if b.kinds is None or kind is None or kind in b.kinds]


def plotted_metrics(definition: Definition, validation: Validation) -> set[str]:
    """Every logged metric key a dashboard reads (line plots, bars, final/best axes); config keys excluded."""
    panels = [p for s in definition.sections for p in s.panels] + [p for b in definition.report.blocks
                                                                     for p in b.panels]
    keys = {definition.x}
    for panel in expand(panels, validation):
        keys.update([panel.y] if panel.y else panel.bars)
        keys.update(c.metric for c in panel.columns if c.metric)
    return keys


def config_keys(definition: Definition) -> set[str]:
    """Every run-config key a dashboard reads (grouping, parallel-coordinates axes)."""
    panels = [p for s in definition.sections for p in s.panels] + [p for b in definition.report.blocks
                                                                     for p in b.panels]
    return {definition.group_by} | {c.config for p in panels for c in p.columns if c.config}


# --------------------------------------------------------------------------------------------------------
# W&B objects


def _summary_key(column: Column) -> str:
    return f"{column.final}.last" if column.final else f"{column.best}.max"


def _wandb_panel(panel: Panel, definition: Definition, index: int):
    import wandb_workspaces.reports.v2 as wr

    layout = wr.Layout(x=(index % 3) * 8, y=(index // 3) * 6, w=8, h=6)
    group = wr.Config(definition.group_by)
    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=definition.x, y=[panel.y], groupby=group, groupby_aggfunc="mean",
                           groupby_rangefunc="minmax", title_x="training step", layout=layout)
    if panel.kind in ("bars", "passk"):
        return wr.BarPlot(title=panel.title, metrics=[f"{b}.last" for b in panel.bars], groupby=group,
                          groupby_aggfunc="mean", groupby_rangefunc="minmax", orientation="v", layout=layout)
    columns = [wr.ParallelCoordinatesPlotColumn(
        metric=wr.Config(c.config) if c.config else wr.SummaryMetric(_summary_key(c)), display_name=c.label)
        for c in panel.columns]
    return wr.ParallelCoordinatesPlot(title=panel.title, columns=columns, layout=layout)


def build_workspace(definition: Definition, *, experiment: str, entity: str, project: str,
                    validation: Validation, kind: str | None = None):
    """The experiment's W&B workspace view: its runs only (W&B group = experiment), grouped by ``group_by``."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = [ws.Section(name=s.name, is_open=True,
                           panels=[_wandb_panel(p, definition, i)
                                   for i, p in enumerate(expand(s.panels, validation, experiment))])
                for s in sections_for(definition, kind)]
    return ws.Workspace(
        entity=entity, project=project, name=f"maspo: {experiment}", sections=sections,
        settings=ws.WorkspaceSettings(x_axis=definition.x),
        runset_settings=ws.RunsetSettings(filters=expr.And(expr.Metric("Group") == experiment),
                                          groupby=[ws.Config(definition.group_by)]))


def build_report(definition: Definition, *, experiment: str, entity: str, project: str, validation: Validation,
                 kind: str | None = None):
    """The W&B report mirroring the paper's Figure 3, Table 7, Figure 4 (top, sweeps) and Table 1."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    report = definition.report
    blocks: list[Any] = []
    for block in blocks_for(definition, kind):
        blocks.append(wr.H2(text=block.heading))
        if block.text:
            blocks.append(wr.P(text=_fill(block.text, k=validation.k, experiment=experiment)))
        columns = []
        if block.table:
            columns = [f"summary:val-core/{s}/acc/{m}.last" for s in [*validation.sources, "average"]
                       for m in (f"mean@{validation.k}", f"best@{validation.k}/mean", f"pass@{validation.k}")]
        runset = wr.Runset(name=experiment, filters=expr.And(expr.Metric("Group") == experiment),
                           groupby=[f"config.{definition.group_by}"], pinned_columns=columns)
        panels = [_wandb_panel(p, definition, i) for i, p in enumerate(expand(block.panels, validation, experiment))]
        blocks.append(wr.PanelGrid(runsets=[runset], panels=panels))
    return wr.Report(entity=entity, project=project, title=_fill(report.title, experiment=experiment),
                     description=_fill(report.description, experiment=experiment), blocks=blocks, width="fluid")


def to_json(view) -> dict:
    """The ``_to_model()`` JSON of a Workspace or Report, random ids replaced by ``id-<n>`` in order."""
    model = view._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    counter = iter(range(1_000_000))

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "__id__" or (key == "id" and "runFeed" in node and value):
                    node[key] = f"id-{next(counter)}"
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(model)
    return model


# --------------------------------------------------------------------------------------------------------
# an experiment on disk


def experiment_path(name: str, runs_root: Path = Path("runs")) -> Path:
    exp_dir = Path(name) if "/" in name and Path(name).is_dir() else runs_root / name
    if not exp_dir.is_dir():
        raise DashboardError(f"no experiment {name!r}: {exp_dir} does not exist")
    return exp_dir


def detect_validation(exp_dir: Path, k: int | None = None, sources: list[str] | None = None) -> Validation:
    """k and the validation sets, from the first validation record of any trial (else the planned profile)."""
    found_k, found_sources = None, []
    experiment = ExperimentDir(exp_dir)
    for files in experiment.trial_dirs():
        for _, data in validations(files.records())[:1]:
            for key in data:
                parts = key.split("/")
                if len(parts) == 4 and parts[0] == "val-core" and parts[2] == "acc" and parts[3].startswith("mean@"):
                    found_k = found_k or int(parts[3].split("@")[1])
                    if parts[1] != "average" and parts[1] not in found_sources:
                        found_sources.append(parts[1])
        if found_sources:
            break
    if not found_sources:
        meta = experiment.meta()
        profiles = [t.get("trial", {}).get("profile", {}) for t in meta.get("trials", [])]
        names = {p.get("name") for p in profiles}
        found_k = found_k or next((p.get("val_n") for p in profiles if p.get("val_n")), None)
        found_sources = LOCAL_SOURCES if "local" in names else CLUSTER_SOURCES if "a100" in names else []
    # verl logs the sets in no fixed order: show them in the benchmarks' own order (easiest first locally)
    canonical = [*LOCAL_SOURCES, *CLUSTER_SOURCES]
    found_sources = sorted(found_sources, key=lambda s: (canonical.index(s) if s in canonical else len(canonical), s))
    k, sources = k or found_k, list(sources or found_sources)
    if not k or not sources:
        raise DashboardError(f"cannot tell the validation sets of {exp_dir} yet (no validation logged); "
                             "pass --k and --source")
    return Validation(int(k), tuple(sources))


# --------------------------------------------------------------------------------------------------------
# publishing


def publish(name: str, entity: str | None = None, project: str | None = None, *, runs_root: Path = Path("runs"),
            k: int | None = None, sources: list[str] | None = None, definition_path: Path | None = None) -> dict:
    """Create or update the experiment's W&B workspace and report; returns their URLs.

    The URLs are kept in ``runs/<NAME>/dashboards.json``; publishing again updates those views in place.
    """
    from orchestrator.tracking import DEFAULT_PROJECT, has_credentials

    exp_dir = experiment_path(name, runs_root)
    definition = load_definition(definition_path)
    validation = detect_validation(exp_dir, k, sources)
    if not has_credentials():
        raise DashboardError("publishing needs W&B credentials: run `wandb login` or set WANDB_API_KEY")
    store = ExperimentDir(exp_dir)
    meta = store.meta()
    experiment = meta.get("name", exp_dir.name)
    project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    published = store.published()
    try:
        import wandb
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws

        entity = entity or os.environ.get("WANDB_ENTITY") or wandb.Api().default_entity
        kind = meta.get("kind")
        workspace = build_workspace(definition, experiment=experiment, entity=entity, project=project,
                                    validation=validation, kind=kind)
        report = build_report(definition, experiment=experiment, entity=entity, project=project,
                              validation=validation, kind=kind)
        if published.get("entity") == entity and published.get("project") == project:
            if published.get("workspace_url"):
                old = ws.Workspace.from_url(published["workspace_url"])
                workspace._internal_name, workspace._internal_id = old._internal_name, old._internal_id
            if published.get("report_url"):
                report.id = wr.Report.from_url(published["report_url"]).id
        workspace.save()
        report.save()
        published = {"entity": entity, "project": project, "workspace_url": workspace.url, "report_url": report.url}
    except DashboardError:
        raise
    except Exception as err:  # noqa: BLE001 (network, permissions, API changes: one line for the user)
        first_line = (str(err).splitlines() or [""])[0]
        raise DashboardError(f"publishing to W&B failed: {type(err).__name__}: {first_line}") from None
    store.write_published(published)
    return published
