"""``maspo results NAME``: an experiment's final validation in the layout of the paper's Table 1 (and Table 7).

Read from the experiment directory (``experiment.json`` and each trial's ``metrics.jsonl``/``status.json``), so
it works while a sweep runs, after it ended, or was interrupted. One row per algorithm (compare) or
(alpha, beta) setting (sweep); a cell is the mean over seeds of the trial's LAST validation, with the
standard deviation when there are several seeds. Columns per validation set: Avg@k and Pass@k (unbiased
estimator), then the plain average over the sets, as the paper's Table 1. The best mean per column is bold.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import resources
from orchestrator.config.plan import ExperimentPlan
from orchestrator.store import ExperimentDir, TrialDir, validations

# the paper's column order; local synthetic benchmarks carry a ``local_`` prefix
PAPER_ORDER = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiad"]
PAPER_NAMES = {"aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23", "math500": "MATH500", "minerva": "Minerva",
               "olympiad": "Olympiad", "average": "Average"}
PAPER_METHOD = {"grpo": "GRPO", "clip_higher": "Clip Higher", "dac": "DAC", "entropy_adv": "Entropy Adv.",
                "bapo": "BAPO", "sapo": "SAPO", "maspo": "MASPO"}
PAPER_RESULTS = resources.paper_file("paper_results.csv")  # the paper's tables, transcribed; package data


@dataclass
class TrialResult:
    name: str
    label: str
    algorithm: str
    seed: int
    state: str
    step: int
    k: int | None
    final: dict[str, float]  # "<source>/avg" and "<source>/pass" -> value in [0, 1]
    passk: dict[str, dict[int, float]] = field(default_factory=dict)  # source -> k -> Pass@k
    wall_s: float = 0.0
    gpus: int = 0
    attempts: int = 0

    @property
    def gpu_hours(self) -> float:
        return self.wall_s * self.gpus / 3600


def _source(data_source: str) -> str:
    return data_source.removeprefix("local_")


def final_validation(records: list[dict]) -> tuple[int | None, dict[str, float], dict[str, dict[int, float]]]:
    """k, the last validation's ``<source>/avg`` and ``<source>/pass`` (Pass@k at k = n), and Pass@k per k."""
    found = validations(records)
    final: dict[str, float] = {}
    passk: dict[str, dict[int, float]] = {}
    k = None
    if found:
        _, last = found[-1]
        for key, value in last.items():
            parts = key.split("/")
            if len(parts) != 4 or parts[2] != "acc":
                continue
            section, source, metric = parts[0], _source(parts[1]), parts[3]
            if section == "val-core" and metric.startswith("mean@"):
                k = int(metric.split("@")[1])
                final[f"{source}/avg"] = float(value)
            elif metric.startswith("pass@"):
                passk.setdefault(source, {})[int(metric.split("@")[1])] = float(value)
        for source, values in passk.items():
            if k in values:
                final[f"{source}/pass"] = values[k]
    return k, final, passk


def read_trial(files: TrialDir, name: str, label: str, algorithm: str, seed: int) -> TrialResult:
    records = files.records()
    status = files.status()
    k, final, passk = final_validation(records)
    return TrialResult(name, label, algorithm, seed, status.get("state", "pending"),
                       max((int(r["step"]) for r in records), default=0), k, final, passk, files.wall_seconds(),
                       int(status.get("gpus", 0)), len(status.get("attempts", [])))


@dataclass
class Row:
    label: str
    algorithm: str
    trials: list[TrialResult]

    def values(self, key: str) -> list[float]:
        return [t.final[key] for t in self.trials if key in t.final]

    def cell(self, key: str) -> tuple[float, float] | None:
        """(mean, standard deviation) over seeds."""
        values = self.values(key)
        if not values:
            return None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_rows(trials: list[TrialResult]) -> list[Row]:
    """One row per label (an algorithm, or an (alpha, beta) setting), in the order labels first appear."""
    by_label: dict[str, Row] = {}
    for trial in trials:
        by_label.setdefault(trial.label, Row(trial.label, trial.algorithm, [])).trials.append(trial)
    return list(by_label.values())


def ordered_sources(trials: list[TrialResult]) -> list[str]:
    """The validation sets the trials logged, in the paper's column order (others after, by name)."""
    found = {key.split("/")[0] for t in trials for key in t.final} - {"average"}
    return [s for s in PAPER_ORDER if s in found] + sorted(found - set(PAPER_ORDER))


def best_labels(rows: list[Row], columns: list[str]) -> dict[str, str]:
    """column -> the label of the row with the highest mean."""
    out = {}
    for column in columns:
        cells = {row.label: row.cell(column) for row in rows}
        cells = {label: c[0] for label, c in cells.items() if c is not None}
        if cells:
            out[column] = max(cells, key=cells.get)
    return out


@dataclass
class Results:
    plan: ExperimentPlan
    rows: list[Row]
    sources: list[str]
    k: int | None

    @property
    def trials(self) -> list[TrialResult]:
        return [t for row in self.rows for t in row.trials]

    def columns(self) -> list[str]:
        return [f"{s}/{m}" for s in [*self.sources, "average"] for m in ("avg", "pass")]

    def best(self) -> dict[str, str]:
        return best_labels(self.rows, self.columns())


def collect(exp_dir: Path) -> Results:
    experiment = ExperimentDir(exp_dir)
    plan = experiment.plan()
    trials = [read_trial(experiment.trial(t.name), t.name, t.label, t.trial.algorithm, t.trial.seed)
              for t in plan.trials]
    ks = {t.k for t in trials if t.k}
    return Results(plan, group_rows(trials), ordered_sources(trials), max(ks) if ks else None)


def _fmt(cell: tuple[float, float] | None, seeds: int) -> str:
    if cell is None:
        return "-"
    mean, std = cell
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 else "")


def table(results: Results, paper: bool = False):
    from rich.table import Table

    k = results.k or "k"
    plan = results.plan
    t = Table(title=f"{plan.name}: final validation, Avg@{k} / Pass@{k} (%) per set, mean over "
                    f"{len(plan.seeds)} seed(s); best in bold", title_justify="left")
    t.add_column("method" if plan.kind == "compare" else plan.trials[0].trial.algorithm, no_wrap=True)
    for source in [*results.sources, "average"]:
        t.add_column(f"{PAPER_NAMES.get(source, source)}\nAvg / Pass", justify="right")
    best = results.best()
    for row in results.rows:
        cells = []
        for source in [*results.sources, "average"]:
            pair = []
            for metric in ("avg", "pass"):
                column = f"{source}/{metric}"
                text = _fmt(row.cell(column), len(plan.seeds))
                pair.append(f"[bold]{text}[/]" if best.get(column) == row.label and text != "-" else text)
            cells.append(" / ".join(pair))
        t.add_row(row.label, *cells)
    if paper:
        for method, values in paper_rows(plan).items():
            pairs = [f"{values[i]} / {values[i + 1]}" for i in range(0, len(values), 2)]
            t.add_row(f"[dim]paper {method}[/]", *[f"[dim]{p}[/]" for p in pairs])
    return t


def paper_rows(plan: ExperimentPlan) -> dict[str, list[str]]:
    """The paper's Table 1 / 5 / 6 rows for this experiment's scale (cluster runs at a paper scale only)."""
    if plan.profile == "local" or not PAPER_RESULTS.is_file():
        return {}
    scale = plan.scale.upper()
    wanted = {PAPER_METHOD.get(t.trial.algorithm) for t in plan.trials}
    out = {}
    with PAPER_RESULTS.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["scale"] == scale and (row["method"] in wanted or (plan.kind == "sweep" and row["table"] == "T5")):
                cols = [row[f"{s}_{m}"] for s in ["aime24", "aime25", "amc23", "math500", "minerva", "olympiad", "avg"]
                        for m in ("a", "p")]
                out[f"{row['table']} {row['method']}"] = cols
    return out


def trials_table(results: Results):
    from rich.table import Table

    t = Table(title="trials", title_justify="left")
    for column in ("trial", "seed", "state", "step", "attempts", "wall time", "GPU-hours"):
        t.add_column(column, justify="left" if column in ("trial", "state") else "right")
    for tr in results.trials:
        t.add_row(tr.name, str(tr.seed), tr.state, str(tr.step), str(tr.attempts), f"{tr.wall_s / 60:.1f} min",
                  f"{tr.gpu_hours:.2f}")
    total_wall = sum(tr.wall_s for tr in results.trials)
    t.add_row("[bold]total[/]", "", "", "", "", f"{total_wall / 60:.1f} min",
              f"{sum(tr.gpu_hours for tr in results.trials):.2f}")
    return t


def passk_table(results: Results):
    """Pass@k against k per validation set, one row per method (the paper's Table 7 layout)."""
    from rich.table import Table

    ks = sorted({k for tr in results.trials for values in tr.passk.values() for k in values})
    t = Table(title=f"{results.plan.name}: Pass@k (%) against k, unbiased estimator, mean over seeds",
              title_justify="left")
    t.add_column("set")
    t.add_column("method")
    for k in ks:
        t.add_column(f"k={k}", justify="right")
    for source in results.sources:
        for row in results.rows:
            cells = []
            for k in ks:
                values = [tr.passk.get(source, {}).get(k) for tr in row.trials]
                values = [v for v in values if v is not None]
                cells.append(f"{100 * statistics.fmean(values):.1f}" if values else "-")
            t.add_row(PAPER_NAMES.get(source, source), row.label, *cells)
    return t


def as_records(results: Results) -> list[dict]:
    out = []
    for row in results.rows:
        record = {"label": row.label, "algorithm": row.algorithm, "seeds": len(row.trials)}
        for column in results.columns():
            cell = row.cell(column)
            record[column.replace("/", "_")] = None if cell is None else round(100 * cell[0], 3)
            record[column.replace("/", "_") + "_std"] = None if cell is None else round(100 * cell[1], 3)
        out.append(record)
    return out


def to_csv(results: Results) -> str:
    records = as_records(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["label"])
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def to_json(results: Results) -> str:
    return json.dumps({
        "experiment": results.plan.name, "kind": results.plan.kind, "profile": results.plan.profile,
        "scale": results.plan.scale, "k": results.k, "rows": as_records(results),
        "trials": [{"name": t.name, "label": t.label, "algorithm": t.algorithm, "seed": t.seed, "state": t.state,
                    "step": t.step, "attempts": t.attempts, "wall_s": round(t.wall_s, 1),
                    "gpu_hours": round(t.gpu_hours, 4), "final": t.final,
                    "passk": {s: {str(k): v for k, v in d.items()} for s, d in t.passk.items()}}
                   for t in results.trials],
        "total_gpu_hours": round(sum(t.gpu_hours for t in results.trials), 4),
    }, indent=1)
