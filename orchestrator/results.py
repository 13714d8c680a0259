"""``maspo results NAME``: an experiment's validation in the layout of the paper's Tables 1, 2 and 7.

Read from the experiment directory (``experiment.json`` and each trial's ``metrics.jsonl``/``status.json``), so
it works while a sweep runs, after it ended, or was interrupted. One row per algorithm (compare, in the paper's
Table 1 order) or (alpha, beta) setting (sweep, in the plan's order); a cell is the mean over seeds, with the
standard deviation when there are several seeds. Columns per validation set: Avg@k and Pass@k, then the plain
average over the sets, as the paper's Table 1, then the average Pass@k of the other estimator. Best in bold,
second best underlined.

Two choices decide what a cell means (docs/algorithms.md#paper-results):
- the **estimator** of Pass@k (docs/algorithms.md#pass-at-k): ``bootstrap`` (verl's ``best@k/mean``, the one the
  paper's P@32 fits) or ``unbiased`` (Chen et al. 2021). Default: ``bootstrap`` when the paper's rows are shown
  beside (a100 at a paper scale), so that like is compared with like; ``unbiased`` otherwise.
- the **checkpoint** (``at``): ``last`` (each trial's last validation, the default: nothing is chosen on the
  validation sets), ``best`` (per row, the validation step with the highest Avg@k averaged over benchmarks and over
  the row's seeds, then every seed at that step), or a step number.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from orchestrator import resources
from orchestrator.config.plan import ExperimentPlan
from orchestrator.errors import UserError
from orchestrator.store import ExperimentDir, TrialDir, history, validations

# the paper's column order; local synthetic benchmarks carry a ``local_`` prefix
PAPER_ORDER = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiad"]
PAPER_NAMES = {"aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23", "math500": "MATH500", "minerva": "Minerva",
               "olympiad": "Olympiad", "average": "Average"}
PAPER_METHOD = {"grpo": "GRPO", "clip_higher": "Clip Higher", "dac": "DAC", "entropy_adv": "Entropy Adv.",
                "bapo": "BAPO", "sapo": "SAPO", "maspo": "MASPO"}
PASSK_METHOD = {**PAPER_METHOD, "dac": "DAC (400)", "entropy_adv": "Entropy Adv"}  # Table 7's spelling
# Table 1's row order; algorithms the paper leaves out of Table 1 come after MASPO (Appendix D.1, D.2)
TABLE1_ORDER = ["grpo", "clip_higher", "dac", "entropy_adv", "bapo", "sapo", "maspo", "entropy_reg", "adv_reweight",
                "sapo_unilateral"]
# the paper's tables, transcribed (package data, in every install)
PAPER_RESULTS = resources.paper_file("paper_results.csv")  # Tables 1, 5 and 6
PAPER_PASSK = resources.paper_file("paper_passk.csv")  # Table 7
PAPER_SCALES = {"1.5b": "1.5B", "7b": "7B", "14b": "14B"}

Estimator = Literal["unbiased", "bootstrap"]
ESTIMATORS: tuple[str, ...] = ("unbiased", "bootstrap")
ESTIMATOR_NAMES = {"unbiased": "unbiased (Chen et al. 2021)",
                   "bootstrap": "bootstrap (verl's best@k/mean, the paper's estimator)"}
At = Union[Literal["last", "best"], int]


def _source(data_source: str) -> str:
    return data_source.removeprefix("local_")


# --------------------------------------------------------------------------------------------------------
# one validation


@dataclass
class ValidationPoint:
    """What one validation step logged, per set: Avg@k and Pass@j for every j under both estimators."""

    step: int
    k: int | None
    avg: dict[str, float] = field(default_factory=dict)  # source -> Avg@k
    passk: dict[str, dict[str, dict[int, float]]] = field(
        default_factory=lambda: {e: {} for e in ESTIMATORS})  # estimator -> source -> j -> Pass@j

    def values(self) -> dict[str, float]:
        """``<source>/avg``, ``<source>/pass_unbiased`` and ``<source>/pass_bootstrap`` (Pass@k at j = k)."""
        out = {f"{s}/avg": v for s, v in self.avg.items()}
        for estimator, per_source in self.passk.items():
            for source, curve in per_source.items():
                if self.k in curve:
                    out[f"{source}/pass_{estimator}"] = curve[self.k]
        return out

    def score(self) -> float | None:
        """The average Avg@k over benchmarks (what ``--at best`` and the sweeps rank on)."""
        if "average" in self.avg:
            return self.avg["average"]
        sets = [v for s, v in self.avg.items() if s != "average"]
        return statistics.fmean(sets) if sets else None


def parse_validation(step: int, data: dict) -> ValidationPoint:
    """Read verl's and the project's validation keys (docs/algorithms.md#pass-at-k):

    ``val-core/<src>/acc/mean@n`` (Avg@n), ``val-(core|aux)/<src>/acc/pass@j`` (unbiased Pass@j) and
    ``val-(core|aux)/<src>/acc/best@j/mean`` (verl's bootstrap Pass@j, j >= 2). The bootstrap curve's Pass@1 is
    Avg@n: verl logs no best@1, whose expectation is Avg@n, and the paper's Table 7 Pass@1 is its Avg@32.
    """
    point = ValidationPoint(step, None)
    for key, value in data.items():
        parts = key.split("/")
        if len(parts) not in (4, 5) or parts[0] not in ("val-core", "val-aux") or parts[2] != "acc":
            continue
        if not isinstance(value, (int, float)):
            continue
        source, metric = _source(parts[1]), parts[3]
        if len(parts) == 4 and parts[0] == "val-core" and metric.startswith("mean@"):
            point.k = int(metric.split("@")[1])
            point.avg[source] = float(value)
        elif len(parts) == 4 and metric.startswith("pass@"):
            point.passk["unbiased"].setdefault(source, {})[int(metric.split("@")[1])] = float(value)
        elif len(parts) == 5 and metric.startswith("best@") and parts[4] == "mean":
            point.passk["bootstrap"].setdefault(source, {})[int(metric.split("@")[1])] = float(value)
    for source, curve in point.passk["bootstrap"].items():
        if source in point.avg:
            curve.setdefault(1, point.avg[source])
    return point


def all_validations(records: list[dict]) -> list[ValidationPoint]:
    return [parse_validation(step, data) for step, data in validations(records)]


def _pick(found: list[ValidationPoint], step: int | None) -> ValidationPoint | None:
    if not found:
        return None
    if step is None:
        return found[-1]
    return next((v for v in found if v.step == step), None)


def final_validation(records: list[dict], estimator: Estimator = "unbiased", step: int | None = None
                     ) -> tuple[int | None, dict[str, float], dict[str, dict[int, float]]]:
    """k, the values of the last validation (or the one at ``step``), and its Pass@j curve per set.

    The values are ``<source>/avg``, ``<source>/pass_unbiased`` and ``<source>/pass_bootstrap``; the curve is the
    ``estimator``'s.
    """
    point = _pick(all_validations(records), step)
    if point is None:
        return None, {}, {}
    return point.k, point.values(), point.passk[estimator]


# --------------------------------------------------------------------------------------------------------
# trials and rows


@dataclass
class TrialResult:
    name: str
    label: str
    algorithm: str
    seed: int
    state: str
    step: int
    k: int | None
    final: dict[str, float]  # the selected validation: "<source>/avg", "<source>/pass_<estimator>" in [0, 1]
    passk: dict[str, dict[int, float]] = field(default_factory=dict)  # source -> j -> unbiased Pass@j
    wall_s: float = 0.0
    gpus: int = 0
    attempts: int = 0
    passk_bootstrap: dict[str, dict[int, float]] = field(default_factory=dict)  # source -> j -> bootstrap Pass@j
    validations: list[ValidationPoint] = field(default_factory=list)
    history: dict[int, dict] = field(default_factory=dict)  # step -> every metric logged (the curves)
    at: int | None = None  # the step of the selected validation

    @property
    def gpu_hours(self) -> float:
        return self.wall_s * self.gpus / 3600

    def curve(self, estimator: Estimator) -> dict[str, dict[int, float]]:
        return self.passk if estimator == "unbiased" else self.passk_bootstrap

    def select(self, step: int | None, none: bool = False) -> None:
        """Make the validation at ``step`` (None: the last) the one the cells show; nothing if it has none (or
        ``none``: a row whose seeds share no validation step)."""
        point = None if none else _pick(self.validations, step)
        self.at = point.step if point else None
        self.k = point.k if point else (self.validations[-1].k if self.validations else None)
        self.final = point.values() if point else {}
        self.passk = point.passk["unbiased"] if point else {}
        self.passk_bootstrap = point.passk["bootstrap"] if point else {}


def trial_result(name: str, label: str, algorithm: str, seed: int, records: list[dict], status: dict | None = None,
                 wall_s: float = 0.0) -> TrialResult:
    """A trial's results from its metric records (and ``status.json``), its last validation selected."""
    status = status or {}
    result = TrialResult(name, label, algorithm, seed, status.get("state", "pending"),
                         max((int(r["step"]) for r in records), default=0), None, {}, {}, wall_s,
                         int(status.get("gpus", 0)), len(status.get("attempts", [])),
                         validations=all_validations(records), history=history(records))
    result.select(None)
    return result


def read_trial(files: TrialDir, name: str, label: str, algorithm: str, seed: int) -> TrialResult:
    return trial_result(name, label, algorithm, seed, files.records(), files.status(), files.wall_seconds())


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


def order_rows(rows: list[Row], kind: str | None) -> list[Row]:
    """A comparison in Table 1's order (GRPO, Clip Higher, DAC, Entropy Adv., BAPO, SAPO, MASPO, then the
    algorithms Table 1 leaves out); a sweep or a study (its rows are '<part>: <setting>') in the plan's order."""
    if kind in ("sweep", "study"):
        return list(rows)
    rank = {name: i for i, name in enumerate(TABLE1_ORDER)}
    return sorted(rows, key=lambda row: rank.get(row.algorithm, len(rank)))  # stable: plan order within ties


def ordered_sources(trials: list[TrialResult]) -> list[str]:
    """The validation sets the trials logged, in the paper's column order (others after, by name)."""
    found = {key.split("/")[0] for t in trials for key in t.final} - {"average"}
    return [s for s in PAPER_ORDER if s in found] + sorted(found - set(PAPER_ORDER))


def ranks(rows: list[Row], columns: list[str]) -> dict[str, dict[str, int]]:
    """column -> {label: 1 (best) or 2 (second best)}, on the means as shown (0.1 points; ties share a rank).

    Marked only where it tells something: best with two rows or more, second best with three or more.
    """
    out: dict[str, dict[str, int]] = {}
    for column in columns:
        cells = {row.label: row.cell(column) for row in rows}
        shown = {label: round(100 * c[0], 1) for label, c in cells.items() if c is not None}
        levels = sorted(set(shown.values()), reverse=True)
        marks = {}
        if len(shown) >= 2:
            marks.update({label: 1 for label, v in shown.items() if v == levels[0]})
        if len(shown) >= 3 and len(levels) >= 2:
            marks.update({label: 2 for label, v in shown.items() if v == levels[1]})
        out[column] = marks
    return out


def best_labels(rows: list[Row], columns: list[str]) -> dict[str, str]:
    """column -> the label of the row with the highest mean."""
    out = {}
    for column in columns:
        cells = {row.label: row.cell(column) for row in rows}
        cells = {label: c[0] for label, c in cells.items() if c is not None}
        if cells:
            out[column] = max(cells, key=cells.get)
    return out


def table_columns(sources: list[str], estimator: Estimator) -> list[str]:
    """Per set and the average: Avg@k and Pass@k (``estimator``); then the other estimator's average Pass@k."""
    other = "unbiased" if estimator == "bootstrap" else "bootstrap"
    return [f"{s}/{m}" for s in [*sources, "average"] for m in ("avg", f"pass_{estimator}")] + [
        f"average/pass_{other}"]


# --------------------------------------------------------------------------------------------------------
# the experiment


def paper_applies(profile: str | None, scale: str | None) -> bool:
    """The paper's numbers apply: a cluster run at one of the paper's scales (its tables are all 1.5B, 7B, 14B)."""
    return profile not in (None, "local") and scale in PAPER_SCALES and PAPER_RESULTS.is_file()


def has_paper_rows(plan: ExperimentPlan) -> bool:
    return paper_applies(plan.profile, plan.scale)


def default_estimator(plan: ExperimentPlan | None = None, *, profile: str | None = None,
                      scale: str | None = None) -> Estimator:
    """bootstrap beside the paper's rows (its P@32 is verl's bootstrap best@32), unbiased otherwise."""
    if plan is not None:
        profile, scale = plan.profile, plan.scale
    return "bootstrap" if paper_applies(profile, scale) else "unbiased"


@dataclass
class Results:
    plan: ExperimentPlan
    rows: list[Row]
    sources: list[str]
    k: int | None
    estimator: Estimator = "unbiased"
    at: At = "last"
    chosen: dict[str, int | None] = field(default_factory=dict)  # --at best: label -> the row's step

    @property
    def trials(self) -> list[TrialResult]:
        return [t for row in self.rows for t in row.trials]

    @property
    def paper(self) -> bool:
        return has_paper_rows(self.plan)

    def columns(self) -> list[str]:
        return table_columns(self.sources, self.estimator)

    def best(self) -> dict[str, str]:
        return best_labels(self.rows, self.columns())

    def ranks(self) -> dict[str, dict[str, int]]:
        return ranks(self.rows, self.columns())

    def checkpoint(self) -> str:
        """Which validation the cells are from, in words (the tables' captions)."""
        if self.at == "last":
            steps = sorted({t.at for t in self.trials if t.at is not None})
            where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}" if steps else "none yet"
            return f"each trial's last validation ({where})"
        if self.at == "best":
            chosen = ", ".join(f"{label} {step if step is not None else '-'}" for label, step in self.chosen.items())
            return (f"per row the validation step with the best Avg@{self.k or 'k'} averaged over benchmarks and "
                    f"seeds ({chosen})")
        return f"step {self.at}"


def best_step(row: Row) -> int | None:
    """The step with the highest average Avg@k over the row's seeds (on the mean curve; ties: the earliest).

    Only steps that every seed with validations validated count, so that the means compare like with like.
    """
    curves = [{v.step: v.score() for v in t.validations if v.score() is not None} for t in row.trials]
    curves = [c for c in curves if c]
    if not curves:
        return None
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if not common:
        return None
    return max(common, key=lambda step: (statistics.fmean(c[step] for c in curves), -step))


def parse_at(value: str | int) -> At:
    """``last``, ``best`` or a step number (what ``--at`` takes)."""
    if isinstance(value, int) or value in ("last", "best"):
        return value  # type: ignore[return-value]
    try:
        step = int(value)
    except ValueError:
        raise UserError(f"--at must be last, best or a step number, got {value!r}") from None
    if step < 0:
        raise UserError(f"--at must be last, best or a step number >= 0, got {step}")
    return step


def collect(exp_dir: Path, at: At | str = "last", estimator: Estimator | None = None) -> Results:
    experiment = ExperimentDir(exp_dir)
    plan = experiment.plan()
    at = parse_at(at)
    if estimator is not None and estimator not in ESTIMATORS:
        raise UserError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    trials = [read_trial(experiment.trial(t.name), t.name, t.label, t.trial.algorithm, t.trial.seed)
              for t in plan.trials]
    rows = order_rows(group_rows(trials), plan.kind)
    chosen: dict[str, int | None] = {}
    if at == "best":
        for row in rows:
            chosen[row.label] = step = best_step(row)
            for trial in row.trials:
                trial.select(step, none=step is None)
    elif isinstance(at, int):
        for trial in trials:
            trial.select(at)
        if not any(t.at == at for t in trials):
            steps = sorted({v.step for t in trials for v in t.validations})
            raise UserError(f"no trial of {plan.name} validated at step {at}; validation steps: "
                            f"{', '.join(map(str, steps)) or 'none yet'}")
    ks = {t.k for t in trials if t.k}
    return Results(plan, rows, ordered_sources(trials), max(ks) if ks else None,
                   estimator or default_estimator(plan), at, chosen)


# --------------------------------------------------------------------------------------------------------
# the paper's numbers


def _read_csv(path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def paper_rows(plan: ExperimentPlan) -> dict[str, dict[str, str]]:
    """The paper's Table 1 / 5 / 6 rows for this experiment's scale, in the tables' order, as
    ``"T1 GRPO" -> {"aime24/avg": "33.2", "aime24/pass": "71.8", ..., "average/pass": ...}`` (cluster runs at a
    paper scale only; the paper's P@32 is read as verl's bootstrap, docs/algorithms.md#paper-results)."""
    if not has_paper_rows(plan):
        return {}
    scale = PAPER_SCALES[plan.scale]
    wanted = {PAPER_METHOD.get(t.trial.algorithm) for t in plan.trials}
    out = {}
    for row in _read_csv(PAPER_RESULTS):
        if row["scale"] == scale and (row["method"] in wanted or (plan.kind == "sweep" and row["table"] == "T5")):
            cells = {f"{s}/{m}": row[f"{s if s != 'average' else 'avg'}_{m[0]}"]
                     for s in [*PAPER_ORDER, "average"] for m in ("avg", "pass")}
            out[f"{row['table']} {row['method']}"] = cells
    return out


def paper_passk(scale: str) -> dict[str, dict[str, dict[int, float]]]:
    """The paper's Table 7 at a scale: source (``aime24``, ``aime25``) -> method (Table 1's spelling) -> j -> %.

    Its Pass@32 equals Table 1's P@32, so it is (like Table 1's) verl's bootstrap best@k, with Pass@1 = Avg@32.
    """
    out: dict[str, dict[str, dict[int, float]]] = {}
    names = {v: PAPER_METHOD[k] for k, v in PASSK_METHOD.items()}
    for row in _read_csv(PAPER_PASSK):
        if row["scale"] != PAPER_SCALES.get(scale, scale):
            continue
        curve = {int(col.removeprefix("pass")): float(v) for col, v in row.items() if col.startswith("pass") and v}
        out.setdefault(row["dataset"].lower(), {})[names.get(row["method"], row["method"])] = curve
    return out


def paper_table1(scale: str) -> dict[str, dict[str, float]]:
    """Table 1 (1.5B, 7B) or Table 6 (14B) at a scale: method -> {"average/avg": %, "average/pass": %, ...}."""
    out = {}
    for row in _read_csv(PAPER_RESULTS):
        if row["scale"] == PAPER_SCALES.get(scale, scale) and row["table"] in ("T1", "T6"):
            out[row["method"]] = {f"{s}/{m}": float(row[f"{s if s != 'average' else 'avg'}_{m[0]}"])
                                  for s in [*PAPER_ORDER, "average"] for m in ("avg", "pass")}
    return out


# --------------------------------------------------------------------------------------------------------
# Table 2: MASPO's gain over GRPO


@dataclass
class Gain:
    label: str  # the MASPO row (a setting, in a sweep)
    grpo: tuple[float, float]  # average Avg@k, Pass@k in %
    maspo: tuple[float, float]

    @property
    def absolute(self) -> tuple[float, float]:
        return self.maspo[0] - self.grpo[0], self.maspo[1] - self.grpo[1]

    @property
    def relative(self) -> tuple[float, float]:
        """In % of GRPO's value."""
        return tuple(100 * (m - g) / g if g else float("nan") for m, g in zip(self.maspo, self.grpo))  # type: ignore


def paper_gain(scale: str) -> Gain | None:
    """The paper's Table 2 at a scale, computed from its Table 1 / Table 6 rows (as the paper did)."""
    rows = paper_table1(scale)
    if "GRPO" not in rows or "MASPO" not in rows:
        return None
    pick = lambda r: (r["average/avg"], r["average/pass"])  # noqa: E731
    return Gain("MASPO", pick(rows["GRPO"]), pick(rows["MASPO"]))


def gains(results: Results) -> list[Gain]:
    """Every MASPO row's gain over the GRPO row in average Avg@k and Pass@k (the table's estimator)."""
    grpo = next((row for row in results.rows if row.algorithm == "grpo"), None)
    maspo = [row for row in results.rows if row.algorithm == "maspo"]
    if grpo is None or not maspo:
        raise UserError(f"--gain needs a GRPO and a MASPO row; {results.plan.name} has "
                        f"{', '.join(row.label for row in results.rows) or 'no rows'}")
    columns = ("average/avg", f"average/pass_{results.estimator}")

    def pair(row: Row) -> tuple[float, float] | None:
        cells = [row.cell(c) for c in columns]
        return None if None in cells else (100 * cells[0][0], 100 * cells[1][0])  # type: ignore[index]

    base = pair(grpo)
    return [Gain(row.label, base, mine) for row in maspo if base and (mine := pair(row))]


def gain_table(results: Results):
    """Table 2's layout: GRPO and MASPO's average Avg@k / Pass@k and the gain, absolute and relative."""
    from rich.table import Table

    k = results.k or "k"
    t = Table(title=f"{results.plan.name}: MASPO's gain over GRPO (paper Table 2), average over benchmarks, "
                    f"A = Avg@{k}, P = Pass@{k}, {ESTIMATOR_NAMES[results.estimator]}, %; at "
                    f"{results.checkpoint()}; relative: in % of GRPO's", title_justify="left")
    for column in ("", "GRPO A", "GRPO P", "MASPO A", "MASPO P", "gain A", "gain P", "gain A rel.", "gain P rel."):
        t.add_column(column, justify="left" if not column else "right", no_wrap=not column)

    def add(label: str, gain: Gain, style: str = "") -> None:
        cells = [*gain.grpo, *gain.maspo]
        texts = [f"{v:.1f}" for v in cells] + [f"{v:+.1f}" for v in gain.absolute] + [
            f"{v:+.1f}%" for v in gain.relative]
        t.add_row(f"{style}{label}[/]" if style else label, *[f"{style}{x}[/]" if style else x for x in texts])

    for gain in gains(results):
        add(f"{results.plan.scale} {gain.label}" if results.plan.kind == "sweep" else f"{results.plan.scale}, this run",
            gain)
    if results.paper:
        paper = paper_gain(results.plan.scale)
        if paper:
            add(f"paper {PAPER_SCALES[results.plan.scale]} (Table 2; P = bootstrap)", paper, "[dim]")
    return t


# --------------------------------------------------------------------------------------------------------
# rendering


def _fmt(cell: tuple[float, float] | None, seeds: int) -> str:
    if cell is None:
        return "-"
    mean, std = cell
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 else "")


def _mark(text: str, rank: int | None) -> str:
    if text == "-" or rank is None:
        return text
    return f"[bold]{text}[/]" if rank == 1 else f"[underline]{text}[/]"


def table(results: Results, paper: bool = False):
    from rich.table import Table

    k = results.k or "k"
    plan = results.plan
    estimator = results.estimator
    other = "unbiased" if estimator == "bootstrap" else "bootstrap"
    rehearsal = ("[bold yellow]REHEARSAL[/] on CPU (tiny model, fixture data, a few steps: its numbers mean nothing; "
                 "the paper's rows are the real models') " if plan.rehearse else "")
    t = Table(title=f"{rehearsal}{plan.name}: A = Avg@{k}, P = Pass@{k} (%), {ESTIMATOR_NAMES[estimator]}, per set; "
                    f"mean over {len(plan.seeds)} seed(s) at {results.checkpoint()}; best in bold, second underlined",
              title_justify="left")
    t.add_column({"compare": "method", "study": "part: setting"}.get(plan.kind, plan.trials[0].trial.algorithm),
                 no_wrap=True)
    for source in [*results.sources, "average"]:
        t.add_column(f"{PAPER_NAMES.get(source, source)}\nA / P", justify="right")
    t.add_column(f"Average\nP {other}", justify="right")
    marks = results.ranks()
    seeds = len(plan.seeds)
    for row in results.rows:
        cells = []
        for source in [*results.sources, "average"]:
            cells.append(" / ".join(_mark(_fmt(row.cell(c), seeds), marks[c].get(row.label))
                                    for c in (f"{source}/avg", f"{source}/pass_{estimator}")))
        column = f"average/pass_{other}"
        cells.append(_mark(_fmt(row.cell(column), seeds), marks[column].get(row.label)))
        t.add_row(row.label, *cells)
    shown = paper_rows(plan) if paper else {}
    for method, values in shown.items():
        pairs = [" / ".join(values.get(f"{s}/{m}", "-") for m in ("avg", "pass")) for s in [*results.sources, "average"]]
        t.add_row(f"[dim]paper {method}[/]", *[f"[dim]{p}[/]" for p in pairs], "[dim]n/a[/]")
    if shown:
        note = ("paper rows: its Tables 1, 5, 6; their P@32 fits verl's bootstrap best@32, not the unbiased "
                "estimator (docs/algorithms.md#paper-results)")
        if estimator != "bootstrap":
            note += f"; [yellow]P here is {estimator}: not comparable with the paper's (use --estimator bootstrap)[/]"
        t.caption, t.caption_justify = note, "left"
    return t


def trials_table(results: Results):
    from rich.table import Table

    t = Table(title="trials", title_justify="left")
    for column in ("trial", "seed", "state", "step", "shown", "attempts", "wall time", "GPU-hours"):
        t.add_column(column, justify="left" if column in ("trial", "state") else "right")
    for tr in results.trials:
        t.add_row(tr.name, str(tr.seed), tr.state, str(tr.step), "-" if tr.at is None else str(tr.at),
                  str(tr.attempts), f"{tr.wall_s / 60:.1f} min", f"{tr.gpu_hours:.2f}")
    total_wall = sum(tr.wall_s for tr in results.trials)
    t.add_row("[bold]total[/]", "", "", "", "", "", f"{total_wall / 60:.1f} min",
              f"{sum(tr.gpu_hours for tr in results.trials):.2f}")
    return t


def passk_curves(results: Results, estimator: Estimator | None = None
                 ) -> dict[str, dict[str, dict[int, float]]]:
    """source -> row label -> j -> Pass@j (mean over the row's seeds, in [0, 1])."""
    return mean_curves(results.rows, results.sources, estimator or results.estimator)


def mean_curves(rows: list[Row], sources: list[str], estimator: Estimator) -> dict[str, dict[str, dict[int, float]]]:
    out: dict[str, dict[str, dict[int, float]]] = {}
    for source in sources:
        for row in rows:
            values: dict[int, list[float]] = {}
            for trial in row.trials:
                for j, v in trial.curve(estimator).get(source, {}).items():
                    values.setdefault(j, []).append(v)
            if values:
                out.setdefault(source, {})[row.label] = {j: statistics.fmean(v) for j, v in sorted(values.items())}
    return out


def paper_passk_for(results: Results) -> dict[str, dict[str, dict[int, float]]]:
    """Table 7 for the experiment's rows: source -> row label -> j -> % (paper scales, compared algorithms only)."""
    if not results.paper:
        return {}
    return paper_passk_rows(results.rows, results.plan.scale, results.plan.kind)


def paper_passk_rows(rows: list[Row], scale: str, kind: str | None) -> dict[str, dict[str, dict[int, float]]]:
    table7 = paper_passk(scale)
    out: dict[str, dict[str, dict[int, float]]] = {}
    for row in rows:
        method = PAPER_METHOD.get(row.algorithm)
        if kind == "sweep" or method is None:
            continue
        for source, methods in table7.items():
            if method in methods:
                out.setdefault(source, {})[row.label] = methods[method]
    return out


PAPER_PASSK_NOTE = ("the paper's Table 7: its Pass@32 equals Table 1's P@32, so it is verl's bootstrap best@k "
                    "(Pass@1 = Avg@32), docs/algorithms.md#paper-results")


def passk_table(results: Results, estimator: Estimator | None = None):
    """Pass@k against k per validation set, one row per method (the paper's Table 7 layout), its rows beside."""
    from rich.table import Table

    estimator = estimator or results.estimator
    curves = passk_curves(results, estimator)
    paper = paper_passk_for(results)
    ks = sorted({j for per_row in curves.values() for curve in per_row.values() for j in curve}
                | {j for per_row in paper.values() for curve in per_row.values() for j in curve})
    t = Table(title=f"{results.plan.name}: Pass@k (%) against k, {ESTIMATOR_NAMES[estimator]}, mean over seeds at "
                    f"{results.checkpoint()}", title_justify="left")
    t.add_column("set")
    t.add_column("method")
    for k in ks:
        t.add_column(f"k={k}", justify="right")
    for source in results.sources:
        for row in results.rows:
            curve = curves.get(source, {}).get(row.label, {})
            t.add_row(PAPER_NAMES.get(source, source), row.label,
                      *[f"{100 * curve[k]:.1f}" if k in curve else "-" for k in ks])
            theirs = paper.get(source, {}).get(row.label)
            if theirs:
                t.add_row("", f"[dim]paper {row.label}[/]", *[f"[dim]{theirs[k]:.1f}[/]" if k in theirs else "-"
                                                            for k in ks])
    if paper:
        t.caption, t.caption_justify = f"paper rows: {PAPER_PASSK_NOTE}", "left"
        if estimator != "bootstrap":
            t.caption += "; [yellow]ours here is unbiased: higher than the bootstrap for k < n[/]"
    return t


# ---------------------------------------------------------------------------------------------------------
# what each loss did to the gradient (docs/algorithms.md#mechanism-metrics)

# actor/mechanism/<key>, its column heading; every one a fraction shown in % except the |rho - 1| means
MECHANISM_COLUMNS: list[tuple[str, str]] = [
    ("outside_clip_frac", "|rho-1|>0.2"), ("outside_clip_frac_pos", "... A>0"), ("outside_clip_frac_neg", "... A<0"),
    ("hard_clip_frac", "clip zeroes"), ("kept_frac", "kept"), ("suppressed_frac", "w<0.5"),
    ("pos_clipped_frac", "A>0 tokens clipped"), ("pos_mass_clipped", "A>0 mass clipped"),
    ("ratio_dev_last", "|rho-1| last"),
]
MECHANISM_PREFIX = "actor/mechanism/"


def mechanism_means(trial: TrialResult) -> dict[str, float]:
    """Each mechanism metric's mean over the trial's training steps (the steps that logged it)."""
    from orchestrator.plots import is_number

    out = {}
    for key, _ in MECHANISM_COLUMNS:
        values = [d[MECHANISM_PREFIX + key] for d in trial.history.values()
                  if is_number(d.get(MECHANISM_PREFIX + key))]
        if values:
            out[key] = statistics.fmean(values)
    return out



def mechanism_rows(results: Results) -> list[tuple[Row, dict[str, tuple[float, float | None]]]]:
    """Per row: metric -> (mean, standard deviation) over seeds of the per-trial step means (no deviation from
    one seed)."""
    out = []
    for row in results.rows:
        per_trial = [mechanism_means(t) for t in row.trials]
        cells = {}
        for key, _ in MECHANISM_COLUMNS:
            values = [m[key] for m in per_trial if key in m]
            if values:
                cells[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)
        out.append((row, cells))
    return out


def mechanism_table(results: Results):
    """What each row's loss did to the gradient: the mechanism metrics, mean over training steps and seeds."""
    from rich.table import Table

    t = Table(title=f"{results.plan.name}: mechanism metrics (% per update of the response tokens; the A>0 columns: "
                    f"of the positive-advantage tokens and of their old-policy mass; mean over training steps, then "
                    f"mean ± std over seeds)", title_justify="left")
    t.add_column("method")
    for _, heading in MECHANISM_COLUMNS:
        t.add_column(heading, justify="right")
    for row, cells in mechanism_rows(results):
        shown = []
        for key, _ in MECHANISM_COLUMNS:
            cell = cells.get(key)
            scale, digits = (1.0, 4) if key.startswith("ratio_dev") else (100.0, 2)
            if cell is None:
                shown.append("-")
            else:
                shown.append(f"{scale * cell[0]:.{digits}f}"
                             + (f" ± {scale * cell[1]:.{digits}f}" if cell[1] is not None else ""))
        t.add_row(row.label, *shown)
    t.caption = ("definitions: docs/algorithms.md#mechanism-metrics; the reference clip is eps = 0.2 for every "
                 "method; kept = tokens that clip would zero whose gradient keeps more than half its weight")
    t.caption_justify = "left"
    return t


def as_records(results: Results) -> list[dict]:
    columns = table_columns(results.sources, "bootstrap")[:-1] + [
        f"{s}/pass_unbiased" for s in [*results.sources, "average"]]
    out = []
    for row in results.rows:
        record = {"label": row.label, "algorithm": row.algorithm, "seeds": len(row.trials),
                  "step": results.chosen.get(row.label) if results.at == "best" else
                  (results.at if isinstance(results.at, int) else None)}
        for column in columns:
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
        "scale": results.plan.scale, "k": results.k, "estimator": results.estimator,
        "at": results.at, "checkpoint": results.checkpoint(), "rows": as_records(results),
        "trials": [{"name": t.name, "label": t.label, "algorithm": t.algorithm, "seed": t.seed, "state": t.state,
                    "step": t.step, "at": t.at, "attempts": t.attempts, "wall_s": round(t.wall_s, 1),
                    "mechanism": mechanism_means(t),
                    "gpu_hours": round(t.gpu_hours, 4), "final": t.final,
                    "passk": {e: {s: {str(k): v for k, v in d.items()} for s, d in t.curve(e).items()}
                              for e in ESTIMATORS}}
                   for t in results.trials],
        "total_gpu_hours": round(sum(t.gpu_hours for t in results.trials), 4),
    }, indent=1)
