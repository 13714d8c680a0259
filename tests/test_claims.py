"""``maspo results NAME --claims``: each claim's statistic and verdict on synthetic experiments whose answer is known.

Experiments are written with the store's own helpers (plan, status, metric records), as tests/test_results.py
does, then read back through ``orchestrator.claims.evaluate`` and the command line.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import claims as C
from orchestrator.config.experiment import load_spec, plan_experiment
from orchestrator.store import ExperimentDir, append_record

STEPS = 8


def arm_key(planned) -> str:
    """A name for a trial's setting: the algorithm, and MASPO's (alpha, beta_low, beta_high)."""
    t = planned.trial
    if t.algorithm == "maspo":
        h = t.hyperparameters
        return f"maspo {h['alpha']:g} {h['beta_low']:g} {h['beta_high']:g}"
    return t.algorithm


def write(tmp_path, plan, entropy, reward=None, avg=None, steps=STEPS, finished=None) -> ExperimentDir:
    """``entropy(key, seed, step)``, ``reward(key, seed, step)`` (default: rising), ``avg(key, seed)`` (the last
    validation's Avg@k, default 0.4); ``finished(planned)`` False: the trial stops at half its steps."""
    experiment = ExperimentDir(tmp_path / plan.name)
    experiment.save_plan(plan)
    for planned in plan.trials:
        key, seed = arm_key(planned), planned.trial.seed
        files = experiment.trial(planned.name)
        files.write_status({"state": "succeeded", "attempts": [{"started": 0.0, "ended": 60.0}]})
        last = steps if finished is None or finished(planned) else steps // 2
        append_record(files.metrics_path, {"step": 0, "data": {"val-core/local_aime24/acc/mean@8": 0.3,
                                                               "val-core/average/acc/mean@8": 0.3}})
        for step in range(1, last + 1):
            data = {"actor/entropy": entropy(key, seed, step),
                    "critic/score/mean": reward(key, seed, step) if reward else -0.5 + 0.05 * step}
            if step == steps:
                value = avg(key, seed) if avg else 0.4
                data.update({"val-core/local_aime24/acc/mean@8": value, "val-core/average/acc/mean@8": value})
            append_record(files.metrics_path, {"step": step, "data": data})
    return experiment


# --------------------------------------------------------------------------------------------------------
# the statistics on hand-built curves


def hist(key: str, values) -> dict[int, dict]:
    return {step: {key: v} for step, v in enumerate(values, start=1)}


def test_statistics_on_known_curves():
    linear = hist(C.ENTROPY_KEY, [2.0 - 0.1 * t for t in range(1, 9)])
    assert C.entropy_mean(linear, []) == pytest.approx(2.0 - 0.45)  # the mean of steps 1..8
    assert C.entropy_drop(linear, []) == pytest.approx(0.6)  # steps 1-2 against 7-8: 6 steps of 0.1
    assert C.early_entropy(linear, []) == pytest.approx(2.0 - 0.2)  # steps 1-3
    assert C.entropy_roughness(linear, []) == pytest.approx(0.1)
    zigzag = hist(C.ENTROPY_KEY, [1.0, 1.3, 1.0, 1.3, 1.0])
    assert C.entropy_roughness(zigzag, []) == pytest.approx(0.3) and C.entropy_drop(zigzag, []) == 0.0
    # a validation-only step 0 and a non-finite value are not training steps
    assert C.entropy_mean({0: {C.ENTROPY_KEY: 9.0}, 1: {C.ENTROPY_KEY: 1.0}, 2: {C.ENTROPY_KEY: math.nan}}, []) == 1.0
    # the reward rises to 0.5 then falls back to -0.3 over 20 steps: smoothed over 2 steps, peak 0.45, last -0.25
    rise_fall = [-0.5 + 0.1 * t for t in range(11)] + [0.5 - 0.1 * t for t in range(1, 9)]
    assert C.reward_drawdown(hist(C.REWARD_KEY, rise_fall), []) == pytest.approx(0.45 + 0.25)
    assert C.reward_drawdown(hist(C.REWARD_KEY, [0.1 * t for t in range(10)]), []) == 0.0  # rising: none
    assert C.entropy_drop(hist(C.ENTROPY_KEY, [1.0]), []) is None  # one step has no decay


def test_decide_holds_fails_inconclusive_and_one_seed():
    greater = C.Comparison("entropy_mean", C.Arm("clip_higher"), "greater", C.GRPO)
    assert C.decide(greater, ([2.0, 2.1, 2.2], [1.0, 1.1, 1.2])).verdict == "holds"
    assert C.decide(greater, ([1.0, 1.1, 1.2], [2.0, 2.1, 2.2])).verdict == "fails"
    overlap = C.decide(greater, ([1.1, 1.3, 0.9], [1.0, 1.2, 1.4]))
    assert overlap.verdict == "inconclusive" and overlap.effect == pytest.approx(-0.1)
    assert overlap.ci[0] < 0 < overlap.ci[1]
    one = C.decide(greater, ([2.0], [1.0, 1.1]))
    assert one.verdict == "inconclusive" and one.ci is None and "needs >= 2 finished seeds" in one.reason
    equivalent = C.Comparison("entropy_mean", C.MASPO, "equivalent", C.GRPO, margin=0.1)
    assert C.decide(equivalent, ([1.01, 1.0, 0.99], [1.0, 1.01, 0.99])).verdict == "holds"
    assert C.decide(equivalent, ([1.5, 1.6, 1.55], [1.0, 1.01, 0.99])).verdict == "fails"
    assert C.decide(equivalent, ([0.9, 1.2, 1.05], [1.0, 1.01, 0.99])).verdict == "inconclusive"  # CI past the margin
    below = C.Comparison("reward_drawdown", C.MASPO, "below", threshold=0.2)
    assert C.decide(below, ([0.0, 0.05, 0.02],)).verdict == "holds"
    assert C.decide(below, ([0.5, 0.6, 0.7],)).verdict == "fails"
    # the same files give the same interval (the resampling is seeded)
    assert C.decide(greater, ([1.1, 1.3, 0.9], [1.0, 1.2, 1.4])).ci == overlap.ci


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6), st.lists(st.floats(-5, 5), min_size=2, max_size=6),
       st.floats(0.01, 3))
def test_seeds_that_all_agree_decide_the_claim(low, high, gap):
    """Every seed of A above every seed of B: every resampled mean difference is above 0, so the claim holds; the
    other way round it fails, whatever the number of seeds."""
    top = max(low) + gap
    above = [top + (h - min(high)) for h in high]
    greater = C.Comparison("entropy_mean", C.Arm("clip_higher"), "greater", C.GRPO)
    assert C.decide(greater, (above, low)).verdict == "holds"
    assert C.decide(greater, (low, above)).verdict == "fails"
    less = C.Comparison("early_entropy", C.Arm("clip_higher"), "less", C.GRPO)
    assert C.decide(less, (low, above)).verdict == "holds"


def test_the_claim_table_is_well_formed():
    ids = [claim.id for claim in C.CLAIMS]
    assert len(ids) == len(set(ids)) == 9
    for claim in C.CLAIMS:
        assert claim.comparisons and claim.paper
        for comparison in claim.comparisons:
            assert comparison.statistic in C.STATISTICS
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "claims.md").read_text()
    for name in [*ids, *C.STATISTICS]:  # the page documents every claim and statistic the code tests
        assert f"| `{name}` |" in docs, name
    with pytest.raises(ValueError, match="unknown statistic"):
        C.Comparison("entropy_median", C.MASPO, "greater", C.GRPO)
    with pytest.raises(ValueError, match="takes no second setting"):
        C.Comparison("entropy_mean", C.MASPO, "above", C.GRPO)


# --------------------------------------------------------------------------------------------------------
# every claim on a whole study (on the local profile: every setting in one context)

# entropy falls linearly from 2 at rate r per step; the seed shifts a curve by 0.01 per seed
PAPER_LIKE = {"grpo": 0.10, "clip_higher": 0.05, "dac": 0.05, "bapo": 0.05, "sapo": 0.04, "entropy_adv": 0.15,
              "maspo 0.5 0.03 0.03": 0.03, "maspo 0.1 0.03 0.03": 0.10, "maspo 0.3 0.03 0.03": 0.03,
              "maspo 0.8 0.03 0.03": 0.03, "maspo 0.3 0 0": 0.12}
OPPOSITE = {"grpo": 0.03, "clip_higher": 0.08, "dac": 0.08, "bapo": 0.08, "sapo": 0.08, "entropy_adv": 0.01,
            "maspo 0.5 0.03 0.03": 0.10, "maspo 0.1 0.03 0.03": 0.15, "maspo 0.3 0.03 0.03": 0.10,
            "maspo 0.8 0.03 0.03": 0.10, "maspo 0.3 0 0": 0.01}


def study(tmp_path, rates, zigzag: str, collapsing: set[str], best: str, seeds: int = 3):
    plan = plan_experiment(load_spec("paper"), seeds=seeds, steps=STEPS, name="study")

    def entropy(key, seed, step):
        wiggle = 0.2 * (step % 2) if key == zigzag else 0.0
        return 2.0 - rates.get(key, 0.05) * step + 0.01 * seed + wiggle

    def reward(key, seed, step):  # collapsing: up to 0.3 at step 4, then down to -0.5 at step 8
        if key in collapsing:
            return -0.5 + 0.2 * step + 0.01 * seed if step <= 4 else 0.3 - 0.2 * (step - 4) + 0.01 * seed
        return -0.5 + 0.05 * step + 0.01 * seed

    def avg(key, seed):
        return (0.5 if key == best else 0.4) + 0.01 * seed

    return C.evaluate(write(tmp_path, plan, entropy, reward, avg).path)


def verdicts(report) -> dict[str, str]:
    return {o.claim.id: o.verdict for o in report.outcomes}


def test_every_claim_holds_where_the_curves_behave_as_the_paper_says(tmp_path):
    report = study(tmp_path, PAPER_LIKE, zigzag="maspo 0.8 0.03 0.03", collapsing={"sapo"},
                   best="maspo 0.5 0.03 0.03")
    assert [c.name for c in report.contexts] == ["local"]
    assert verdicts(report) == {claim.id: "holds" for claim in C.CLAIMS}
    by_id = {o.claim.id: o for o in report.outcomes}
    # the effects are the ones the curves were built with (the seed shifts cancel in differences)
    decay = by_id["grpo-fastest-decay"].outcomes
    assert [o.effect for o in decay] == pytest.approx([6 * 0.05] * 3)  # 6 steps between the quarters' centres
    above = by_id["entropy-above-grpo"].outcomes
    assert [o.effect for o in above] == pytest.approx([4.5 * 0.05] * 3 + [4.5 * 0.06])
    assert [o.labels[0] for o in above] == ["main-1.5b: Clip Higher", "main-1.5b: DAC", "main-1.5b: BAPO",
                                            "main-1.5b: SAPO"]  # Table 4's Clip Higher, not D.1's eps_high 0.28
    assert all(o.seeds == (3, 3) for o in above)
    like = by_id["alpha-0.1-like-grpo"].outcomes[0]
    assert like.effect == pytest.approx(0.0, abs=1e-12) and -0.1 < like.ci[0] <= like.ci[1] < 0.1
    sapo = by_id["sapo-bilateral-collapse"].outcomes
    assert sapo[0].effect == pytest.approx(0.6 - C.COLLAPSE_DRAWDOWN)  # smoothed over 2 steps: peak 0.2, last -0.4
    assert by_id["maspo-beats-grpo"].outcomes[0].effect == pytest.approx(10.0)  # points of Avg@8
    assert by_id["maspo-beats-grpo"].outcomes[0].labels == ("main-1.5b: MASPO", "main-1.5b: GRPO")


def test_every_claim_fails_where_the_curves_say_the_opposite(tmp_path):
    report = study(tmp_path, OPPOSITE, zigzag="maspo 0.3 0.03 0.03", collapsing={"maspo 0.5 0.03 0.03",
                                                                               "sapo_unilateral"}, best="grpo")
    assert verdicts(report) == {claim.id: "fails" for claim in C.CLAIMS}
    payload = C.as_dict(report)
    assert {c["verdict"] for c in payload["claims"]} == {"fails"}
    assert all(cmp["ci"][1] < 0 or cmp["ci"][0] > 0 for c in payload["claims"] for cmp in c["comparisons"])


def test_one_seed_makes_every_claim_inconclusive(tmp_path):
    report = study(tmp_path, PAPER_LIKE, zigzag="maspo 0.8 0.03 0.03", collapsing={"sapo"},
                   best="maspo 0.5 0.03 0.03", seeds=1)
    assert set(verdicts(report).values()) == {"inconclusive"}
    assert all("needs >= 2 finished seeds" in o.reason for c in report.outcomes for o in c.outcomes)
    assert any("ran 1 seed(s): every claim is inconclusive" in note for note in report.notes)


def test_overlapping_seeds_are_inconclusive(tmp_path):
    """GRPO's flat entropy per seed 1.0, 1.2, 1.4 against Clip Higher's 1.1, 1.3, 0.9: neither is higher."""
    plan = plan_experiment(load_spec("compare"), baselines="grpo,clip_higher", seeds=3, name="noisy")
    level = {("grpo", 0): 1.0, ("grpo", 1): 1.2, ("grpo", 2): 1.4,
             ("clip_higher", 0): 1.1, ("clip_higher", 1): 1.3, ("clip_higher", 2): 0.9}
    report = C.evaluate(write(tmp_path, plan, lambda key, seed, step: level.get((key, seed), 1.0)).path)
    by_id = {o.claim.id: o for o in report.outcomes}
    above = by_id["entropy-above-grpo"]
    assert above.verdict == "inconclusive"
    [clip] = [o for o in above.outcomes if o.verdict != "not testable here"]
    assert clip.effect == pytest.approx(-0.1) and clip.ci[0] < 0 < clip.ci[1]
    assert "judged on 1 of 4 comparisons" in above.note and "no DAC trial" in above.note
    # flat curves decay by exactly 0 in both: an interval [0, 0] is on neither side
    assert by_id["grpo-fastest-decay"].verdict == "inconclusive"
    # settings the experiment lacks: not testable, the missing ones named
    assert by_id["sapo-bilateral-collapse"].verdict == "not testable here"
    assert "no SAPO trial" in by_id["sapo-bilateral-collapse"].note
    assert "no MASPO a=0.1 b=0.03 trial" in by_id["alpha-0.1-like-grpo"].note


def test_unfinished_trials_are_left_out(tmp_path):
    plan = plan_experiment(load_spec("compare"), baselines="grpo", seeds=3, name="partial")
    report = C.evaluate(write(tmp_path, plan, lambda key, seed, step: 2.0 - (0.05 if key.startswith("maspo") else 0.1) * step,
                              finished=lambda planned: planned.trial.seed != 2).path)
    [context] = report.contexts
    assert context.unfinished == 2 and len(context.trials) == 4
    healthy = next(o for o in report.outcomes if o.claim.id == "maspo-healthy-entropy")
    assert healthy.outcomes[0].seeds == (2, 2) and healthy.outcomes[0].verdict == "holds"
    assert any("2 unfinished trial(s) left out" in note for note in report.notes)


# --------------------------------------------------------------------------------------------------------
# the command


def test_results_claims_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.cli.common import console

    monkeypatch.setattr(console, "width", 400)  # a table row on one line

    plan = plan_experiment(load_spec("compare"), baselines="grpo,sapo", seeds=2, name="cmd")
    rates = {"grpo": 0.1, "sapo": 0.05, "maspo 0.5 0.03 0.03": 0.04}
    write(tmp_path, plan, lambda key, seed, step: 2.0 - rates[key] * step + 0.01 * seed,
          avg=lambda key, seed: (0.5 if key.startswith("maspo") else 0.4) + 0.01 * seed)
    runner = CliRunner()
    out = runner.invoke(app, ["results", "cmd", "--root", str(tmp_path), "--claims"], terminal_width=400)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "Avg@8" in text  # the results table comes first
    assert "the paper's claims as checks: what is tested" in text  # the definitions
    assert "entropy_mean(SAPO) - entropy_mean(GRPO) > 0" in text
    assert "mean of `actor/entropy` over all training steps" in text  # a statistic's definition
    assert "cmd: the paper's claims (2 seed(s))" in text
    for line in out.output.splitlines():  # the results table's rows (the definitions name the claims too)
        if "│ local" not in line:
            continue
        if "maspo-beats-grpo" in line:
            assert "holds" in line and "+10" in line
        if "alpha-0.1-like-grpo" in line:
            assert "not testable here" in line
    assert sum("│ local" in line for line in out.output.splitlines()) == len(C.CLAIMS)
    saved = ExperimentDir(tmp_path / "cmd").claims()
    assert saved["experiment"] == "cmd" and saved["seeds"] == [0, 1]
    assert {c["id"]: c["verdict"] for c in saved["claims"]}["maspo-healthy-entropy"] == "holds"
    json.dumps(saved)  # plain JSON

    # a user's mistakes: one line, exit 2, nothing written
    for args, message in ((["results", "nope", "--root", str(tmp_path), "--claims"], "no experiment at"),
                          (["results", "../x", "--root", str(tmp_path), "--claims"], "must be letters")):
        out = runner.invoke(app, args, terminal_width=400)
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output, out.output
    empty = plan_experiment(load_spec("compare"), baselines="grpo", seeds=2, name="empty")
    ExperimentDir(tmp_path / "empty").save_plan(empty)
    out = runner.invoke(app, ["results", "empty", "--root", str(tmp_path), "--claims"], terminal_width=400)
    assert out.exit_code == 2 and "no trial of empty has finished" in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1 and not ExperimentDir(tmp_path / "empty").claims_path.exists()


def test_a_sweep_pooled_with_a_comparison(tmp_path):
    """alpha = 0.1 against GRPO needs both: the comparison's GRPO, the sweep's alpha settings. MASPO at alpha 0.5,
    beta 0.03 is in both (the same config and seed: the same trial name) and counts once."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    entropy = lambda key, seed, step: 2.0 - (0.1 if key in ("grpo", "maspo 0.1 0.03 0.03") else 0.04) * step + 0.01 * seed  # noqa: E731
    compare = plan_experiment(load_spec("compare"), baselines="grpo", seeds=2, name="cmp")
    sweep = plan_experiment(load_spec("alpha-beta"), seeds=2, name="ab")
    write(tmp_path, compare, entropy)
    write(tmp_path, sweep, entropy)
    shared = {t.name for t in compare.trials} & {t.name for t in sweep.trials}
    assert len(shared) == 2  # MASPO (0.5, 0.03), seeds 0 and 1
    alone = {o.claim.id: o for o in C.evaluate(tmp_path / "ab").outcomes}
    assert alone["alpha-0.1-like-grpo"].verdict == "not testable here"
    report = C.evaluate(tmp_path / "ab", [tmp_path / "cmp"])
    assert report.experiment == "ab + cmp" and [c.name for c in report.contexts] == ["local"]
    assert len(report.contexts[0].trials) == len(sweep.trials) + 2  # the sweep's, and GRPO's two seeds
    by_id = {o.claim.id: o for o in report.outcomes}
    like = by_id["alpha-0.1-like-grpo"].outcomes[0]
    assert like.verdict == "holds" and like.labels == ("alpha=0.1 beta=0.03", "cmp: GRPO")
    assert by_id["maspo-healthy-entropy"].outcomes[0].seeds == (2, 2)  # not 4: the shared trials once
    runner = CliRunner()
    out = runner.invoke(app, ["results", "ab", "--root", str(tmp_path), "--claims", "--with", "cmp"])
    assert out.exit_code == 0, out.output
    assert ExperimentDir(tmp_path / "ab").claims()["experiment"] == "ab + cmp"
    for args, message in ((["--with", "cmp"], "give --claims too"), (["--claims", "--with", "nope"], "no experiment at"),
                          (["--claims", "--with", "ab"], "an experiment is given twice")):
        out = runner.invoke(app, ["results", "ab", "--root", str(tmp_path), *args])
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output, out.output
