"""``maspo results NAME --claims``: the paper's qualitative claims (sections 5.2, 5.3, appendix D.2) as checks.

Every claim is one row of :data:`CLAIMS`, the ONE table that says exactly what is tested: the paper's words, and
the comparisons that test them, each naming a per-trial statistic of :data:`STATISTICS`, the two settings (or a
setting and a threshold) it compares and the direction the paper claims. docs/claims.md explains the choices.

How a comparison is decided (:func:`decide`): the statistic is computed on every finished trial (one value per
seed), the effect is a difference of means over seeds (or a ratio, or a distance to a threshold), and its 95%
confidence interval is ``scipy.stats.bootstrap``'s percentile interval, resampling each setting's seeds
independently. A CI that excludes 0 on the claimed side: ``holds``; on the other side: ``fails``; otherwise
``inconclusive``. An equivalence ("behaves like") holds when the CI lies inside the margin and fails when it lies
outside it. A setting with fewer than 2 finished seeds is ``inconclusive``: one seed gives no interval.

A claim is evaluated per context, a group of trials that share their profile (the local profile, or one a100
scale): trials on different models are never compared. The settings a claim needs are found by their
hyperparameters (:class:`Arm`), so compare, sweep and study experiments are read alike; a claim whose settings the
experiment lacks is ``not testable here`` with the missing ones named.

Everything is read through :func:`orchestrator.results.collect`, i.e. :mod:`orchestrator.store`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from orchestrator.errors import UserError

Verdict = Literal["holds", "fails", "inconclusive", "not testable here"]
Test = Literal["greater", "less", "equivalent", "above", "below"]

CONFIDENCE = 0.95  # of every bootstrap interval
N_RESAMPLES = 9999  # bootstrap resamples per interval
BOOTSTRAP_SEED = 0  # the resampling is seeded: the same files give the same table
MIN_SEEDS = 2  # finished seeds a setting needs before any interval is drawn
ENTROPY_KEY = "actor/entropy"
REWARD_KEY = "critic/score/mean"
# the project's reward is +1 / -1 (orchestrator/rewards.py, the paper's eq. 27): a drawdown of 0.2 is a tenth of
# its range, i.e. 10 more wrong answers in every 100 than at the reward's best
COLLAPSE_DRAWDOWN = 0.2
EQUIVALENCE_MARGIN = 0.10  # "behaves like": the ratio of the two means within 1 +- 0.10


# --------------------------------------------------------------------------------------------------------
# the statistics: one number per trial


def _series(history: dict[int, dict], key: str) -> list[float]:
    """The values of ``key`` at every training step (step >= 1), in step order; non-finite values are dropped."""
    out = []
    for step in sorted(history):
        value = history[step].get(key)
        if step >= 1 and isinstance(value, (int, float)) and math.isfinite(value):
            out.append(float(value))
    return out


def _head(values: list[float], fraction: float) -> list[float]:
    return values[:max(1, math.ceil(fraction * len(values)))]


def _tail(values: list[float], fraction: float) -> list[float]:
    return values[-max(1, math.ceil(fraction * len(values))):]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def entropy_mean(history: dict[int, dict], validations: list) -> float | None:
    values = _series(history, ENTROPY_KEY)
    return _mean(values)


def entropy_drop(history: dict[int, dict], validations: list) -> float | None:
    values = _series(history, ENTROPY_KEY)
    if len(values) < 2:
        return None
    return _mean(_head(values, 0.25)) - _mean(_tail(values, 0.25))


def early_entropy(history: dict[int, dict], validations: list) -> float | None:
    return _mean(_head(_series(history, ENTROPY_KEY), 1 / 3))


def entropy_roughness(history: dict[int, dict], validations: list) -> float | None:
    values = _series(history, ENTROPY_KEY)
    if len(values) < 2:
        return None
    return _mean([abs(b - a) for a, b in zip(values, values[1:])])


def reward_drawdown(history: dict[int, dict], validations: list) -> float | None:
    values = _series(history, REWARD_KEY)
    if not values:
        return None
    window = min(len(values), max(2, math.ceil(len(values) / 10)))
    smooth = [_mean(values[max(0, i + 1 - window):i + 1]) for i in range(window - 1, len(values))]
    return max(smooth) - smooth[-1]


def final_avg(history: dict[int, dict], validations: list) -> float | None:
    if not validations:
        return None
    score = validations[-1].score()
    return None if score is None else 100 * score


@dataclass(frozen=True)
class Statistic:
    """A number computed from one trial's metric stream (its ``history`` and parsed ``validations``)."""

    name: str
    definition: str
    unit: str
    compute: Callable[[dict[int, dict], list], float | None] = field(repr=False, compare=False)


STATISTICS: dict[str, Statistic] = {s.name: s for s in (
    Statistic("entropy_mean", f"mean of `{ENTROPY_KEY}` over all training steps (the area under the entropy curve "
              "divided by the number of steps)", "nats", entropy_mean),
    Statistic("entropy_drop", f"entropy decay: mean `{ENTROPY_KEY}` over the first quarter of the training steps "
              "minus its mean over the last quarter (at least one step each)", "nats", entropy_drop),
    Statistic("early_entropy", f"mean `{ENTROPY_KEY}` over the first third of the training steps (every setting "
              "starts from the same model, so a lower value is entropy lost early)", "nats", early_entropy),
    Statistic("entropy_roughness", f"entropy instability: mean |change of `{ENTROPY_KEY}` from one training step "
              "to the next|", "nats/step", entropy_roughness),
    Statistic("reward_drawdown", f"collapse size: the highest value of the mean reward `{REWARD_KEY}` (+1/-1), "
              "smoothed by a trailing mean over max(2, steps/10) steps, minus the smoothed reward at the last step",
              "reward", reward_drawdown),
    Statistic("final_avg", "Avg@k at the trial's last validation, averaged over the validation sets (the "
              "results table's Average A column)", "points (%)", final_avg),
)}


# --------------------------------------------------------------------------------------------------------
# the claims


@dataclass(frozen=True)
class Arm:
    """A setting a claim names. ``setting=None``: the algorithm at the paper's Table 4 values for the context's
    scale (the local profile: the scale its plan names, 1.5b by default), or the experiment's only setting of it."""

    algorithm: str
    setting: tuple[tuple[str, float], ...] | None = None
    title: str = ""

    @property
    def name(self) -> str:
        if self.title:
            return self.title
        from orchestrator.algorithms.registry import get

        return get(self.algorithm).title


def _maspo(alpha: float, beta: float) -> Arm:
    return Arm("maspo", (("sigma_base", 1.0), ("alpha", alpha), ("beta", beta)), f"MASPO a={alpha:g} b={beta:g}")


GRPO, MASPO = Arm("grpo"), Arm("maspo")
MASPO_BASE = _maspo(0.3, 0.03)  # section 5.3's baseline configuration


@dataclass(frozen=True)
class Comparison:
    """One test: ``statistic`` of ``a`` against ``b`` (or against ``threshold``).

    ``greater``/``less``: effect = mean(a) - mean(b), claimed > 0 / < 0. ``equivalent``: effect = mean(a) / mean(b)
    - 1, claimed inside +-``margin``. ``above``/``below``: effect = mean(a) - ``threshold``, claimed > 0 / < 0.
    """

    statistic: str
    a: Arm
    test: Test
    b: Arm | None = None
    threshold: float = 0.0
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}")
        if (self.b is None) != (self.test in ("above", "below")):
            raise ValueError(f"a {self.test} comparison {'needs' if self.b is None else 'takes no'} second setting")
        if self.test == "equivalent" and self.margin <= 0:
            raise ValueError("an equivalence needs a margin > 0")

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.a,) if self.b is None else (self.a, self.b)

    def describe(self) -> str:
        s = self.statistic
        if self.test == "greater":
            return f"{s}({self.a.name}) - {s}({self.b.name}) > 0"
        if self.test == "less":
            return f"{s}({self.a.name}) - {s}({self.b.name}) < 0"
        if self.test == "equivalent":
            return f"{s}({self.a.name}) / {s}({self.b.name}) - 1 within +-{self.margin:g}"
        op = ">" if self.test == "above" else "<"
        return f"{s}({self.a.name}) - {self.threshold:g} {op} 0"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and the comparisons that test it.

    Its verdict: ``fails`` if any testable comparison fails, ``holds`` if every testable one holds, otherwise
    ``inconclusive``. ``needs_all``: the claim means nothing unless every setting it names is present (otherwise
    a claim over a list of baselines is judged on those present, and says which were absent).
    """

    id: str
    section: str
    paper: str
    comparisons: tuple[Comparison, ...]
    needs_all: bool = False


_DECAY_PEERS = (Arm("clip_higher"), Arm("dac"), Arm("bapo"))
_ABOVE_GRPO = (Arm("clip_higher"), Arm("dac"), Arm("bapo"), Arm("sapo"))

CLAIMS: tuple[Claim, ...] = (
    Claim("grpo-fastest-decay", "5.2",
          "GRPO's entropy decays fastest among the clipped baselines (Clip Higher, DAC, BAPO; Entropy Adv. has its "
          "own claim, SAPO has no clip)",
          tuple(Comparison("entropy_drop", GRPO, "greater", peer) for peer in _DECAY_PEERS)),
    Claim("entropy-adv-faster", "5.2", "Entropy Adv. shows an even faster entropy drop than GRPO",
          (Comparison("entropy_drop", Arm("entropy_adv"), "greater", GRPO),), needs_all=True),
    Claim("entropy-above-grpo", "5.2", "Clip Higher, DAC, BAPO and SAPO maintain higher entropy than GRPO",
          tuple(Comparison("entropy_mean", peer, "greater", GRPO) for peer in _ABOVE_GRPO)),
    Claim("maspo-healthy-entropy", "5.2",
          "MASPO maintains an entropy level higher than GRPO's without instability (no collapse)",
          (Comparison("entropy_mean", MASPO, "greater", GRPO),
           Comparison("reward_drawdown", MASPO, "below", threshold=COLLAPSE_DRAWDOWN)), needs_all=True),
    Claim("sapo-bilateral-collapse", "5.2, D.2",
          "SAPO (bilateral gate) collapses; the unilateral gate (as MASPO's) avoids the collapse",
          (Comparison("reward_drawdown", Arm("sapo"), "above", threshold=COLLAPSE_DRAWDOWN),
           Comparison("reward_drawdown", Arm("sapo_unilateral"), "below", threshold=COLLAPSE_DRAWDOWN)),
          needs_all=True),
    Claim("alpha-0.1-like-grpo", "5.3", "alpha = 0.1 gives low entropy levels similar to GRPO",
          (Comparison("entropy_mean", _maspo(0.1, 0.03), "equivalent", GRPO, margin=EQUIVALENCE_MARGIN),),
          needs_all=True),
    Claim("alpha-0.8-unstable", "5.3", "alpha = 0.8 over-relaxes the constraint: entropy instability",
          (Comparison("entropy_roughness", _maspo(0.8, 0.03), "greater", MASPO_BASE),), needs_all=True),
    Claim("beta-0-early-loss", "5.3", "beta = 0 (no risk control) makes entropy drop too rapidly early on",
          (Comparison("early_entropy", _maspo(0.3, 0.0), "less", MASPO_BASE),), needs_all=True),
    Claim("maspo-beats-grpo", "5.2", "MASPO's final Avg@k is above GRPO's",
          (Comparison("final_avg", MASPO, "greater", GRPO),), needs_all=True),
)


# --------------------------------------------------------------------------------------------------------
# deciding one comparison


@dataclass(frozen=True)
class Outcome:
    comparison: Comparison
    verdict: Verdict
    effect: float | None = None
    ci: tuple[float, float] | None = None
    seeds: tuple[int, ...] = ()  # finished seeds per arm
    labels: tuple[str, ...] = ()  # the trials' row labels of each arm
    reason: str = ""


def _effect_function(test: Test, threshold: float):
    import numpy as np

    if test in ("greater", "less"):
        return lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis)
    if test == "equivalent":
        return lambda a, b, axis=-1: np.mean(a, axis=axis) / np.mean(b, axis=axis) - 1
    return lambda a, axis=-1: np.mean(a, axis=axis) - threshold


def decide(comparison: Comparison, samples: tuple[list[float], ...]) -> Outcome:
    """The effect, its bootstrap CI over seeds and the verdict, from each arm's per-seed values."""
    import numpy as np
    from scipy.stats import bootstrap

    seeds = tuple(len(s) for s in samples)
    if min(seeds) < MIN_SEEDS:
        short = ", ".join(f"{arm.name}: {n}" for arm, n in zip(comparison.arms, seeds) if n < MIN_SEEDS)
        return Outcome(comparison, "inconclusive", seeds=seeds,
                       reason=f"needs >= {MIN_SEEDS} finished seeds per setting ({short})")
    data = tuple(np.asarray(s, dtype=float) for s in samples)
    if comparison.test == "equivalent" and not np.mean(data[1]) > 0:
        return Outcome(comparison, "inconclusive", seeds=seeds, reason="the reference's mean is not > 0")
    fn = _effect_function(comparison.test, comparison.threshold)
    effect = float(fn(*data))
    result = bootstrap(data, fn, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                       paired=False, vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
    lo, hi = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return Outcome(comparison, "inconclusive", effect, seeds=seeds, reason="no finite interval")
    if comparison.test == "equivalent":
        m = comparison.margin
        verdict = "holds" if -m < lo and hi < m else "fails" if lo > m or hi < -m else "inconclusive"
    else:
        sign = 1 if comparison.test in ("greater", "above") else -1
        low, high = sorted((sign * lo, sign * hi))
        verdict = "holds" if low > 0 else "fails" if high < 0 else "inconclusive"
    return Outcome(comparison, verdict, effect, (lo, hi), seeds)


# --------------------------------------------------------------------------------------------------------
# an experiment's trials, by context and setting


@dataclass
class TrialValues:
    """One finished trial, its statistics computed."""

    name: str
    label: str
    algorithm: str
    hyperparameters: dict
    seed: int
    values: dict[str, float | None]


@dataclass
class Context:
    """Trials that share their profile: comparable with each other."""

    name: str
    scale: str
    trials: list[TrialValues] = field(default_factory=list)
    unfinished: int = 0

    def find(self, arm: Arm) -> tuple[list[TrialValues] | None, str]:
        """The trials of ``arm`` here, or None and why not."""
        from orchestrator.algorithms.registry import get

        mine = [t for t in self.trials if t.algorithm == arm.algorithm]
        if not mine:
            return None, f"no {arm.name} trial"
        if arm.setting is not None:
            wanted = get(arm.algorithm).parse(dict(arm.setting)).model_dump()
            chosen = [t for t in mine if t.hyperparameters == wanted]
            return (chosen, "") if chosen else (None, f"no {arm.name} trial")
        wanted = table4(arm.algorithm, self.scale)
        chosen = [t for t in mine if t.hyperparameters == wanted]
        if chosen:
            return chosen, ""
        settings = {json.dumps(t.hyperparameters, sort_keys=True) for t in mine}
        if len(settings) == 1:
            return mine, ""  # the experiment's one setting of it (Table 4 has none, or the user chose another)
        return None, f"{len(settings)} settings of {arm.name}, none of them Table 4's at {self.scale}"


def table4(algorithm: str, scale: str) -> dict | None:
    """The paper's Table 4 hyperparameters of ``algorithm`` at ``scale`` (every field), from sweeps/compare.yaml;
    unilateral SAPO takes SAPO's (appendix D.2 changes the gate only)."""
    from orchestrator.algorithms.registry import get
    from orchestrator.config.experiment import load_spec

    table = load_spec("compare").hyperparameters.get(scale, {})
    values = table.get("sapo" if algorithm == "sapo_unilateral" else algorithm)
    return None if values is None else get(algorithm).parse(values).model_dump()


def contexts(*experiments) -> list[Context]:
    """The finished trials of one or more experiments (:class:`orchestrator.results.Results`), grouped by profile,
    with every statistic computed. A trial that two experiments share (the same config and seed, so the same
    trial name) counts once; the trials of the second and later experiments are labelled with its name."""
    from orchestrator.config.experiment import SCALES

    by_profile: dict[str, Context] = {}
    seen: set[str] = set()
    for i, results in enumerate(experiments):
        plan = results.plan
        planned = {t.name: t for t in plan.trials}
        for trial in results.trials:
            if trial.name in seen:
                continue
            seen.add(trial.name)
            config = planned[trial.name].trial
            profile = config.profile
            key = profile.model_dump_json()
            if key not in by_profile:
                scale = getattr(profile, "scale", None) or (plan.scale if plan.scale in SCALES else "1.5b")
                name = f"{profile.name} {scale}" if profile.name != "local" else "local"
                taken = {c.name for c in by_profile.values()}
                by_profile[key] = Context(name if name not in taken else f"{name} ({len(taken) + 1})", scale)
            context = by_profile[key]
            last = max((s for s, d in trial.history.items() if s >= 1 and ENTROPY_KEY in d), default=0)
            if last < profile.steps:
                context.unfinished += 1
                continue
            values = {name: s.compute(trial.history, trial.validations) for name, s in STATISTICS.items()}
            label = trial.label if i == 0 else f"{plan.name}: {trial.label}"
            context.trials.append(TrialValues(trial.name, label, trial.algorithm, dict(config.hyperparameters),
                                              trial.seed, values))
    return list(by_profile.values())


# --------------------------------------------------------------------------------------------------------
# evaluating the claims


@dataclass(frozen=True)
class ClaimOutcome:
    claim: Claim
    context: str
    verdict: Verdict
    outcomes: tuple[Outcome, ...]
    note: str = ""


def _outcome(comparison: Comparison, context: Context) -> Outcome:
    found, missing = [], []
    for arm in comparison.arms:
        trials, why = context.find(arm)
        if trials is None:
            missing.append(why)
        found.append(trials or [])
    if missing:
        return Outcome(comparison, "not testable here", reason="; ".join(missing))
    samples = tuple([v for t in trials if (v := t.values[comparison.statistic]) is not None] for trials in found)
    labels = tuple(", ".join(dict.fromkeys(t.label for t in trials)) for trials in found)
    outcome = decide(comparison, samples)
    return Outcome(outcome.comparison, outcome.verdict, outcome.effect, outcome.ci, outcome.seeds, labels,
                   outcome.reason)


def evaluate_claim(claim: Claim, context: Context) -> ClaimOutcome:
    outcomes = tuple(_outcome(c, context) for c in claim.comparisons)
    tested = [o for o in outcomes if o.verdict != "not testable here"]
    absent = [o for o in outcomes if o.verdict == "not testable here"]
    if not tested or (claim.needs_all and absent):
        return ClaimOutcome(claim, context.name, "not testable here", outcomes,
                            "; ".join(dict.fromkeys(o.reason for o in absent)))
    verdicts = {o.verdict for o in tested}
    verdict: Verdict = "fails" if "fails" in verdicts else "holds" if verdicts == {"holds"} else "inconclusive"
    note = ""
    if absent:
        note = f"judged on {len(tested)} of {len(outcomes)} comparisons: " + "; ".join(
            dict.fromkeys(o.reason for o in absent))
    return ClaimOutcome(claim, context.name, verdict, outcomes, note)


@dataclass
class ClaimsReport:
    experiment: str
    seeds: list[int]
    contexts: list[Context]
    outcomes: list[ClaimOutcome]

    @property
    def notes(self) -> list[str]:
        notes = []
        if len(self.seeds) < MIN_SEEDS:
            notes.append(f"{self.experiment} ran {len(self.seeds)} seed(s): every claim is inconclusive, an interval "
                         f"over seeds needs >= {MIN_SEEDS} (run it with --seeds 3)")
        for context in self.contexts:
            if context.unfinished:
                notes.append(f"{context.name}: {context.unfinished} unfinished trial(s) left out (a trial counts "
                             "once it logged its last training step)")
        notes.append("Avg@k: the interval is over seeds only; the run files keep each validation set's mean, not "
                     "per-problem results, so problems cannot be resampled")
        return notes


def evaluate(exp_dir: Path, pooled: list[Path] | tuple[Path, ...] = ()) -> ClaimsReport:
    """Every claim in every context of the experiment at ``exp_dir`` (with the trials of the ``pooled``
    experiments, e.g. a comparison's GRPO beside a sweep's MASPO settings); a UserError when there is nothing to
    test."""
    from orchestrator.results import collect

    everything = [collect(exp_dir), *(collect(path) for path in pooled)]
    names = [results.plan.name for results in everything]
    if len(set(names)) < len(names):
        raise UserError(f"an experiment is given twice: {', '.join(names)}")
    seeds = sorted({seed for results in everything for seed in results.plan.seeds})
    if not seeds:
        raise UserError(f"{names[0]} has no seeds: nothing to test")
    groups = contexts(*everything)
    if not any(c.trials for c in groups):
        raise UserError(f"no trial of {' + '.join(names)} has finished (logged training metrics up to its last "
                        "step): no claim to test yet")
    outcomes = [evaluate_claim(claim, context) for context in groups if context.trials for claim in CLAIMS]
    return ClaimsReport(" + ".join(names), seeds, groups, outcomes)


# --------------------------------------------------------------------------------------------------------
# what is printed and saved


VERDICT_STYLE = {"holds": "green", "fails": "red", "inconclusive": "yellow", "not testable here": "dim"}


def definitions_table():
    """The claim table as a user reads it: each claim, each comparison, each statistic, the decision rule."""
    from rich.table import Table

    t = Table(title=f"the paper's claims as checks: what is tested (effect: difference of means over seeds unless "
                    f"said; {CONFIDENCE:.0%} percentile bootstrap CI over seeds, {N_RESAMPLES} resamples; CI beyond 0 on "
                    f"the claimed side: holds, on the other: fails, else inconclusive; docs/claims.md)",
              title_justify="left")
    for column in ("claim", "§", "the paper says", "tested as"):
        t.add_column(column, overflow="fold")
    for claim in CLAIMS:
        t.add_row(claim.id, claim.section, claim.paper, "\n".join(c.describe() for c in claim.comparisons))
    s = Table(title="statistics (one value per finished trial)", title_justify="left")
    for column in ("statistic", "unit", "definition"):
        s.add_column(column, overflow="fold")
    for stat in STATISTICS.values():
        s.add_row(stat.name, stat.unit, stat.definition)
    return t, s


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3g}"


def results_table(report: ClaimsReport):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"{report.experiment}: the paper's claims ({len(report.seeds)} seed(s))", title_justify="left")
    for column in ("context", "claim", "verdict", "comparison", "effect", f"{CONFIDENCE:.0%} CI", "seeds",
                   "result / reason"):
        t.add_column(column, overflow="fold", justify="right" if column in ("effect", "seeds") else "left")
    for claim in report.outcomes:
        style = VERDICT_STYLE[claim.verdict]
        first = True
        for o in claim.outcomes:
            ci = "-" if o.ci is None else f"[{o.ci[0]:+.3g}, {o.ci[1]:+.3g}]"
            reason = o.reason or o.verdict
            t.add_row(claim.context if first else "", claim.claim.id if first else "",
                      f"[{style}]{claim.verdict}[/]" if first else "", escape(o.comparison.describe()), _num(o.effect),
                      ci, "/".join(map(str, o.seeds)) or "-",
                      f"[{VERDICT_STYLE[o.verdict]}]{escape(reason)}[/]")
            first = False
        if claim.note and claim.verdict != "not testable here":  # (its comparisons' reasons say why)
            t.add_row("", "", "", f"[dim]{escape(claim.note)}[/]", "", "", "", "")
    t.caption = "\n".join(escape(n) for n in report.notes)
    t.caption_justify = "left"
    return t


def as_dict(report: ClaimsReport) -> dict:
    """The claims and their outcomes, machine-readable (``claims.json``)."""
    return {
        "experiment": report.experiment, "seeds": report.seeds, "confidence": CONFIDENCE,
        "n_resamples": N_RESAMPLES, "method": "percentile bootstrap over seeds (scipy.stats.bootstrap)",
        "statistics": {s.name: {"unit": s.unit, "definition": s.definition} for s in STATISTICS.values()},
        "notes": report.notes,
        "claims": [{
            "id": c.claim.id, "section": c.claim.section, "paper": c.claim.paper, "context": c.context,
            "verdict": c.verdict, "note": c.note,
            "comparisons": [{
                "tested": o.comparison.describe(), "statistic": o.comparison.statistic, "test": o.comparison.test,
                "settings": [a.name for a in o.comparison.arms], "labels": list(o.labels),
                "threshold": o.comparison.threshold if o.comparison.b is None else None,
                "margin": o.comparison.margin or None, "verdict": o.verdict, "effect": o.effect,
                "ci": list(o.ci) if o.ci else None, "seeds": list(o.seeds), "reason": o.reason,
            } for o in c.outcomes],
        } for c in report.outcomes],
    }
