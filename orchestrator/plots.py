"""The paper's figures from an experiment's files, as PNG (matplotlib, Agg; no display, no pyplot state).

One plotting path for ``maspo results NAME --plot DIR`` and the local dashboard page:
- :func:`training_figure`: Figure 3's training-dynamics row, policy entropy, Avg@k averaged over benchmarks and
  response length against the training step; one line per row label (algorithm or setting) = the mean over seeds,
  shaded from the lowest to the highest seed;
- :func:`passk_figure`: Figure 3 (a, e) / Table 7, Pass@k against k per validation set, one line per row label,
  the paper's Table 7 values as crosses beside (paper scales).

Each returns the ``matplotlib.figure.Figure`` (its axes' lines are the curves, one per label), so that callers and
tests can inspect it; :func:`write_figures` saves them.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from orchestrator.results import Results

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]
Histories = list[dict[int, dict]]  # one trial's ``store.history``: step -> metrics


def colors_for(labels: Iterable[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def training_panels(k: int | None) -> list[tuple[str, str]]:
    """(metric key, title) of Figure 3's training-dynamics row."""
    return [("actor/entropy", "Policy entropy"),
            (f"val-core/average/acc/mean@{k}", f"Avg@{k}, average over benchmarks"),
            ("response_length/mean", "Response length (mean tokens)")]


def is_number(value) -> bool:
    """A finite int or float (not a bool): a value a curve or a mean can use."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def aggregate(histories: Histories, key: str) -> list[tuple[int, float, float, float]]:
    """(step, mean, min, max) over the trials that logged ``key`` at that step."""
    by_step: dict[int, list[float]] = {}
    for steps in histories:
        for step, data in steps.items():
            if is_number(data.get(key)):
                by_step.setdefault(step, []).append(float(data[key]))
    return [(s, sum(v) / len(v), min(v), max(v)) for s, v in sorted(by_step.items())]


COLUMNS = 3  # panels per figure row


def _figure(panels: int, title: str):
    """A figure with ``panels`` axes, at most three per row; returns (figure, axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(max(panels, 1), COLUMNS)
    rows = math.ceil(max(panels, 1) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.3 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[panels:]:
        fig.delaxes(ax)
    return fig, axes[:max(panels, 1)]


def training_figure(groups: dict[str, Histories], k: int | None, colors: dict[str, str] | None = None,
                    title: str = "Training dynamics (paper Figure 3)") -> Figure:
    """Entropy, average Avg@k and response length against the step: a line per label, a min-max band over seeds."""
    colors = colors or colors_for(groups)
    from matplotlib.ticker import MaxNLocator

    panels = training_panels(k)
    fig, axes = _figure(len(panels), title)
    for ax, (key, panel_title) in zip(axes, panels):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for label, histories in groups.items():
            series = aggregate(histories, key)
            if not series:
                continue
            steps, means, lows, highs = zip(*series)
            if any(lo != hi for lo, hi in zip(lows, highs)):
                ax.fill_between(steps, lows, highs, color=colors[label], alpha=0.18, linewidth=0)
            ax.plot(steps, means, color=colors[label], label=label, linewidth=2,
                    marker="o" if len(steps) <= 30 else None, markersize=3.5)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if not ax.get_lines():
            ax.text(0.5, 0.5, f"no data: {key}", ha="center", va="center", transform=ax.transAxes, color="#999")
    _legend(fig, axes)
    return fig


def passk_figure(curves: dict[str, dict[str, dict[int, float]]], estimator: str,
                 paper: dict[str, dict[str, dict[int, float]]] | None = None, colors: dict[str, str] | None = None,
                 names: dict[str, str] | None = None, title: str | None = None) -> Figure:
    """Pass@k against k, one panel per set: ``curves[source][label][k]`` in [0, 1] as lines (one per label),
    ``paper[source][label][k]`` in % (the paper's Table 7) as crosses in the label's colour."""
    paper = paper or {}
    sources = list(curves) or list(paper)
    labels = list(dict.fromkeys(label for per in [*curves.values(), *paper.values()] for label in per))
    colors = colors or colors_for(labels)
    from orchestrator.results import ESTIMATOR_NAMES

    fig, axes = _figure(len(sources), title or f"Pass@k against k (paper Table 7, Figure 3 a, e); lines: "
                                               f"{ESTIMATOR_NAMES.get(estimator, estimator)}"
                                               + ("; crosses: the paper (bootstrap)" if paper else ""))
    for ax, source in zip(axes, sources):
        ks: set[int] = set()
        for label, curve in curves.get(source, {}).items():
            xs = sorted(curve)
            ks.update(xs)
            ax.plot(xs, [100 * curve[x] for x in xs], color=colors[label], label=label, linewidth=2, marker="o",
                    markersize=3.5)
        for label, curve in paper.get(source, {}).items():
            xs = sorted(curve)
            ks.update(xs)
            ax.scatter(xs, [curve[x] for x in xs], color=colors.get(label, "#444"), marker="x", s=30,
                       label=f"paper {label}", zorder=3)
        ax.set_xscale("log", base=2)
        if ks:
            ax.set_xticks(sorted(ks), [str(x) for x in sorted(ks)])
        ax.set_title((names or {}).get(source, source), fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("Pass@k (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def _legend(fig: Figure, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
                   ncols=min(len(labels), 5), fontsize=8, frameon=False)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def data_uri(fig: Figure) -> str:
    """The figure as an ``<img src=...>`` value that needs no file and no network."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode()


# --------------------------------------------------------------------------------------------------------
# an experiment's figures


def figures(results: Results) -> dict[str, Figure]:
    """``training`` and ``passk`` (the table's estimator, the paper's Table 7 beside at paper scales)."""
    from orchestrator.results import PAPER_NAMES, paper_passk_for, passk_curves

    colors = colors_for(row.label for row in results.rows)
    groups = {row.label: [t.history for t in row.trials] for row in results.rows}
    out = {"training": training_figure(groups, results.k, colors,
                                       title=f"{results.plan.name}: training dynamics (paper Figure 3), mean over "
                                             f"seeds, band: lowest to highest seed")}
    curves = passk_curves(results)
    if curves:
        out["passk"] = passk_figure(curves, results.estimator, paper_passk_for(results), colors, PAPER_NAMES)
    return out


def write_figures(results: Results, out_dir: Path) -> dict[str, Path]:
    """Write ``training.png`` and ``passk.png`` under ``out_dir``; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, fig in figures(results).items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        written[name] = path
    return written
