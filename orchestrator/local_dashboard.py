"""``maspo dashboard local NAME``: the experiment's dashboards as one self-contained HTML page.

The panels are those of the W&B workspace (``dashboards/maspo.yaml``), drawn as inline SVG from the local files
(``runs/<NAME>/trials/*/metrics.jsonl`` and ``trial.json``, or a single ``maspo run`` directory): runs grouped by
their label (the algorithm in a comparison, the (alpha, beta) setting in a sweep), the mean over seeds as a line
and the range over seeds as a band. Pass@k-against-k panels and the report's Figure 3 row are the PNG figures of
:mod:`orchestrator.plots` (the same as ``maspo results --plot``), embedded as data URIs. Then the final
validation as the paper's Table 1. No script, no network: the file opens anywhere, tooltips are SVG ``<title>``
elements.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.dashboards import (
    DashboardError, Definition, Panel, Validation, blocks_for, detect_validation, expand, experiment_path,
    load_definition, sections_for,
)
from orchestrator.plots import PALETTE, is_number
from orchestrator.results import (
    ESTIMATOR_NAMES, PAPER_NAMES, Estimator, TrialResult, default_estimator, group_rows, mean_curves, order_rows,
    ordered_sources, paper_applies, paper_passk_rows, ranks, table_columns, trial_result,
)
from orchestrator.store import ExperimentDir, write_text_atomic
WIDTH, HEIGHT = 440, 270
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 30, 40


@dataclass
class Trial:
    name: str
    label: str
    settings: dict  # what the W&B run config holds under ``maspo``
    history: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> metrics
    result: TrialResult | None = None  # its final validation, as ``maspo results`` reads it

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(s, d[key]) for s, d in sorted(self.history.items()) if is_number(d.get(key))]

    def final(self, key: str) -> float | None:
        points = self.series(key)
        return points[-1][1] if points else None

    def best(self, key: str) -> float | None:
        points = self.series(key)
        return max(v for _, v in points) if points else None

    def config(self, key: str):
        """A run-config key such as ``maspo.hyperparameters.alpha``."""
        node = {"maspo": self.settings}
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node



def load_trials(exp_dir: Path) -> list[Trial]:
    experiment = ExperimentDir(exp_dir)
    meta = experiment.meta()
    planned = {t.get("name"): t for t in meta.get("trials", [])}
    order = {name: i for i, name in enumerate(planned)}
    trials = []
    for files in sorted(experiment.trial_dirs(), key=lambda f: (order.get(f.name, len(order)), f.name)):
        info = files.info()
        name = info.get("name") or files.name
        config = info.get("trial") or planned.get(name, {}).get("trial") or {}
        label = info.get("label") or planned.get(name, {}).get("label") or config.get("algorithm") or name
        settings = {**config, "experiment": meta.get("name", exp_dir.name), "trial": name, "label": label}
        result = trial_result(name, label, config.get("algorithm", ""), int(config.get("seed", 0)), files.records(),
                              files.status())
        trials.append(Trial(name, label, settings, result.history, result))
    return trials


def group_trials(trials: list[Trial]) -> dict[str, list[Trial]]:
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.label, []).append(trial)
    return groups


def aggregate(trials: list[Trial], key: str) -> list[tuple[int, float, float, float]]:
    """(step, mean, min, max) over the trials that logged ``key`` at that step."""
    by_step: dict[int, list[float]] = {}
    for trial in trials:
        for step, value in trial.series(key):
            by_step.setdefault(step, []).append(float(value))
    return [(s, sum(v) / len(v), min(v), max(v)) for s, v in sorted(by_step.items())]


# --------------------------------------------------------------------------------------------------------
# SVG


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / max(n - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_label(value: float, step: float) -> str:
    """A tick value with just enough decimals to tell neighbouring ticks ``step`` apart."""
    if abs(value) < step * 1e-6:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-4:
        return f"{value:.3g}"
    decimals = 0
    while decimals < 10 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def _frame(title: str, body: str, tooltip: str = "") -> str:
    tip = f"<title>{html.escape(tooltip)}</title>" if tooltip else ""
    return (f'<svg class="panel" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}">{tip}'
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff" stroke="#d0d0d0"/>'
            f'<text x="{WIDTH / 2}" y="19" text-anchor="middle" class="title">{html.escape(title)}</text>{body}</svg>')


def _empty(title: str, why: str) -> str:
    return _frame(title, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="empty">'
                         f'{html.escape(why)}</text>')


def line_svg(title: str, key: str, x_label: str, groups: list[tuple[str, str, list]]) -> str:
    """One panel: per group (label, colour, [(step, mean, lo, hi)]) a band and a line with markers."""
    points = [p for _, _, series in groups for p in series]
    if not points:
        return _empty(title, f"no data: {key}")
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    if x0 == x1:
        x0, x1 = x0 - 0.5, x1 + 0.5
    y0, y1 = _range([v for p in points for v in p[2:4]])
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x):
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return TOP + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fafafa"/>']
    y_ticks = _ticks(y0, y1)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else abs(y1 - y0)
    for t in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 5}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tick">'
                     f'{_tick_label(t, y_step)}</text>')
    for t in _ticks(x0, x1):
        if float(t).is_integer():
            parts.append(f'<text x="{sx(t):.1f}" y="{TOP + ph + 15}" text-anchor="middle" class="tick">{t:.0f}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 6}" text-anchor="middle" class="axis">'
                 f'{html.escape(x_label)}</text>')
    for label, color, series in groups:
        if not series:
            continue
        if any(lo != hi for _, _, lo, hi in series):
            upper = " ".join(f"{sx(s):.1f},{sy(hi):.1f}" for s, _, _, hi in series)
            lower = " ".join(f"{sx(s):.1f},{sy(lo):.1f}" for s, _, lo, _ in reversed(series))
            parts.append(f'<polygon points="{upper} {lower}" fill="{color}" fill-opacity="0.18" stroke="none"/>')
        line = " ".join(f"{sx(s):.1f},{sy(m):.1f}" for s, m, _, _ in series)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for s, m, lo, hi in series:
            tip = f"{label}, step {s}: {m:.4g}" + (f" (range {lo:.4g} to {hi:.4g})" if lo != hi else "")
            parts.append(f'<circle cx="{sx(s):.1f}" cy="{sy(m):.1f}" r="3.5" fill="{color}">'
                         f'<title>{html.escape(tip)}</title></circle>')
    return _frame(title, "".join(parts), key)


def parallel_svg(title: str, panel: Panel, trials: list[Trial], colors: dict[str, str]) -> str:
    """Parallel coordinates: one polyline per trial over the panel's columns, each axis scaled on its own."""
    def value(trial, column):
        if column.config:
            v = trial.config(column.config)
        else:
            v = trial.final(column.final) if column.final else trial.best(column.best)
        return float(v) if is_number(v) else None

    rows = [(t, [value(t, c) for c in panel.columns]) for t in trials]
    complete = [(t, vs) for t, vs in rows if all(v is not None for v in vs)]
    if not complete:
        return _empty(title, "no run has every axis")
    n = len(panel.columns)
    pw, ph = WIDTH - 2 * LEFT, HEIGHT - TOP - BOTTOM - 10
    xs = [LEFT + i * pw / (n - 1) for i in range(n)] if n > 1 else [WIDTH / 2]
    ranges = [_range([vs[i] for _, vs in complete]) for i in range(n)]

    def sy(i, v):
        lo, hi = ranges[i]
        return TOP + 10 + (1 - (v - lo) / (hi - lo)) * ph

    parts = [f'<rect class="plot" x="{LEFT - 20}" y="{TOP}" width="{pw + 40}" height="{ph + 20}" fill="#fafafa"/>']
    for trial, vs in complete:
        color = colors[trial.label]
        line = " ".join(f"{xs[i]:.1f},{sy(i, v):.1f}" for i, v in enumerate(vs))
        tip = f"{trial.name}: " + ", ".join(f"{c.label} {v:.4g}" for c, v in zip(panel.columns, vs))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2.5" stroke-opacity="0.85">'
                     f'<title>{html.escape(tip)}</title></polyline>')
    for i, column in enumerate(panel.columns):
        lo, hi = min(vs[i] for _, vs in complete), max(vs[i] for _, vs in complete)
        parts.append(f'<line x1="{xs[i]:.1f}" x2="{xs[i]:.1f}" y1="{TOP + 10}" y2="{TOP + 10 + ph}" class="paxis"/>'
                     f'<text x="{xs[i]:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="axis">'
                     f'{html.escape(column.label)}</text>'
                     f'<text x="{xs[i] + 4:.1f}" y="{sy(i, hi) - 3:.1f}" class="tick">{_fmt(hi)}</text>'
                     + (f'<text x="{xs[i] + 4:.1f}" y="{sy(i, lo) + 11:.1f}" class="tick">{_fmt(lo)}</text>'
                        if hi > lo else ""))
    missing = len(rows) - len(complete)
    if missing:
        parts.append(f'<text x="{WIDTH - 6}" y="{HEIGHT - 24}" text-anchor="end" class="tick">'
                     f'{missing} run(s) without every axis not shown</text>')
    return _frame(title, "".join(parts))


# --------------------------------------------------------------------------------------------------------
# the page


def final_table(trials: list[Trial], estimator: Estimator = "unbiased", kind: str | None = None) -> str:
    """The paper's Table 1 (the rows ``maspo results`` shows, in its order): per label the last validation's
    Avg@k / Pass@k (``estimator``) per set, then the other estimator's average Pass@k; mean over seeds and, with
    several seeds, the range. Best in bold, second best underlined."""
    results = [t.result for t in trials if t.result is not None]
    rows = order_rows(group_rows(results), kind)
    sources = [*ordered_sources(results), "average"]
    k = max((r.k for r in results if r.k), default="k")
    columns = table_columns(sources[:-1], estimator)
    other = "unbiased" if estimator == "bootstrap" else "bootstrap"
    marks = ranks(rows, columns)
    head = "".join(f'<th colspan="2">{html.escape(s.capitalize() if s == "average" else s)}</th>' for s in sources)
    head += f'<th rowspan="2">P@{k}<br>{other}<br>(average)</th>'
    sub = "".join(f"<th>A@{k}</th><th>P@{k}</th>" for _ in sources)
    body = []
    for row in rows:
        n = len(row.trials)
        cells = [f'<th class="label">{html.escape(row.label)}<span class="seeds"> ({n} seed'
                 f'{"s" if n != 1 else ""})</span></th>']
        for column in columns:
            values = row.values(column)
            if not values:
                cells.append("<td>-</td>")
                continue
            text = f"{100 * row.cell(column)[0]:.1f}"
            if max(values) > min(values):
                text += f'<span class="range"> [{100 * min(values):.1f}, {100 * max(values):.1f}]</span>'
            rank = marks[column].get(row.label)
            cells.append(f"<td><b>{text}</b></td>" if rank == 1 else f"<td><u>{text}</u></td>" if rank == 2
                         else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = (f"A@{k} = Avg@{k}; P@{k} = Pass@{k}, {ESTIMATOR_NAMES[estimator]}; each trial's last validation; "
               "best in bold, second best underlined")
    return (f'<table class="final"><caption>{html.escape(caption)}</caption><thead><tr><th rowspan="2">method</th>'
            f'{head}</tr><tr>{sub}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _img(uri: str, alt: str) -> str:
    return f'<img class="figure" src="{uri}" alt="{html.escape(alt)}">'


def passk_png(panel: Panel, trials: list[Trial], colors: dict[str, str], meta: dict, k: int) -> str:
    """A Pass@k-against-k panel as the PNG of :func:`orchestrator.plots.passk_figure`, one set."""
    from orchestrator.plots import data_uri, passk_figure

    source = panel.bars[0].split("/")[1]
    results = [t.result for t in trials if t.result is not None]
    rows = group_rows(results)
    curves = mean_curves(rows, [source.removeprefix("local_")], panel.passk)
    if not curves:
        return _empty(panel.title, f"no Pass@k of {source} yet")
    paper = {}
    if paper_applies(meta.get("profile"), meta.get("scale")):
        paper = {s: v for s, v in paper_passk_rows(rows, meta["scale"], meta.get("kind")).items() if s in curves}
    fig = passk_figure(curves, panel.passk, paper, colors, PAPER_NAMES,
                       title=f"{panel.title}{'; crosses: paper Table 7 (bootstrap)' if paper else ''}")
    fig.set_size_inches(5.2, 3.9)
    return _img(data_uri(fig), panel.title)


def training_png(groups: dict[str, list[Trial]], colors: dict[str, str], k: int, title: str) -> str:
    from orchestrator.plots import data_uri, training_figure

    fig = training_figure({label: [t.history for t in members] for label, members in groups.items()}, k, colors,
                          title=title)
    return _img(data_uri(fig), title)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222;
       background: #f4f5f7; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 17px; margin: 26px 0 8px 0; }
p.meta { color: #555; margin: 0 0 10px 0; font-size: 13px; }
.legend span { display: inline-block; margin-right: 16px; font-size: 13px; }
.legend i { display: inline-block; width: 18px; height: 4px; margin-right: 6px; vertical-align: middle; }
.grid-panels { display: flex; flex-wrap: wrap; gap: 12px; }
svg.panel { font-size: 11px; }
svg .title { font-size: 13px; font-weight: 600; fill: #222; }
svg .tick { fill: #666; font-size: 10px; } svg .axis { fill: #444; font-size: 11px; }
svg .empty { fill: #999; font-size: 12px; } svg .grid { stroke: #e3e3e3; stroke-width: 1; }
svg .paxis { stroke: #888; stroke-width: 1; }
table.final { border-collapse: collapse; background: #fff; font-size: 13px; }
table.final th, table.final td { border: 1px solid #d8d8d8; padding: 4px 8px; text-align: right; white-space: nowrap; }
table.final th.label { text-align: left; } .seeds, .range { color: #888; font-weight: normal; font-size: 11px; }
table.final caption { caption-side: top; text-align: left; color: #555; font-size: 12px; padding: 4px 0; }
img.figure { background: #fff; border: 1px solid #d0d0d0; max-width: 100%; }
"""


def render(exp_dir: Path, definition: Definition, validation: Validation) -> str:
    meta = ExperimentDir(exp_dir).meta()
    name, kind = meta.get("name", exp_dir.name), meta.get("kind")
    trials = load_trials(exp_dir)
    if not trials:
        raise DashboardError(f"no trials under {exp_dir} yet")
    groups = group_trials(trials)
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(groups)}
    legend = "".join(f'<span><i style="background:{c}"></i>{html.escape(label)} ({len(groups[label])})</span>'
                     for label, c in colors.items())
    body = [f"<h1>maspo: {html.escape(name)}</h1>",
            f'<p class="meta">{html.escape(str(kind or "run"))}, {len(trials)} trial(s) in {len(groups)} group(s); '
            f"validation Avg@{validation.k} / Pass@{validation.k} on {len(validation.sources)} set(s). Lines: mean "
            f"over seeds; bands: lowest to highest seed. x axis: {html.escape(definition.x)}.</p>",
            f'<div class="legend">{legend}</div>']
    for section in sections_for(definition, kind):
        body.append(f"<h2>{html.escape(section.name)}</h2><div class=\"grid-panels\">")
        for panel in expand(section.panels, validation, name):
            if panel.kind == "line":
                series = [(label, colors[label], aggregate(members, panel.y)) for label, members in groups.items()]
                body.append(line_svg(panel.title, panel.y, "training step", series))
            elif panel.kind == "parallel":
                body.append(parallel_svg(panel.title, panel, trials, colors))
            elif panel.kind == "passk":
                body.append(passk_png(panel, trials, colors, meta, validation.k))
        body.append("</div>")
    for block in blocks_for(definition, kind):
        if block.figure == "training":
            body.append(f"<h2>{html.escape(block.heading)}</h2>")
            body.append(training_png(groups, colors, validation.k, f"{name}: {block.heading}; mean over seeds, "
                                                                   "band: lowest to highest seed"))
        if block.table:
            body.append(f"<h2>{html.escape(block.heading)}</h2>")
            estimator = default_estimator(profile=meta.get("profile"), scale=meta.get("scale"))
            body.append(final_table(trials, estimator, kind))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>maspo: {html.escape(name)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_local_dashboard(name: str, *, runs_root: Path = Path("runs"), out: Path | None = None,
                          k: int | None = None, sources: list[str] | None = None,
                          definition: Definition | None = None) -> Path:
    """Write ``runs/<NAME>/dashboard.html`` (or ``out``) and return its path."""
    exp_dir = experiment_path(name, runs_root)
    page = render(exp_dir, definition or load_definition(), detect_validation(exp_dir, k, sources))
    path = out or exp_dir / "dashboard.html"
    write_text_atomic(path, page)
    return path
