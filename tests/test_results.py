"""``maspo results``: estimators, checkpoint choice, Table 1's layout, Table 2's gain, Table 7 and the figures.

Synthetic experiments are written with the store's own helpers (plan, status, metric records); validation
records come from verl's own ``_val_metrics_update`` with the project's hook, on known sample counts.
"""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from orchestrator import results as R
from orchestrator.config.experiment import load_spec, plan_experiment
from orchestrator.store import ExperimentDir, append_record

N = 32


def verl_validation(correct: dict[str, list[int]], n: int = N) -> dict[str, float]:
    """What verl (with the project's hook) logs for one validation: ``correct[source]`` = correct samples out of
    ``n`` per problem."""
    from verl.trainer.ppo.v1 import trainer_base

    from orchestrator.verl_bridge.validation_hooks import wrap_val_metrics_update

    sources, uids, acc = [], [], []
    for source, counts in correct.items():
        for p, c in enumerate(counts):
            for i in range(n):
                sources.append(source)
                uids.append(f"{source}-{p}")
                acc.append(1.0 if i < c else 0.0)
    hooked = wrap_val_metrics_update(trainer_base.PPOTrainer._val_metrics_update)
    return {k: float(v) for k, v in hooked(None, sources, uids, {"acc": acc}, []).items()}


def write_experiment(tmp_path, plan, curves, training=None, steps=()) -> ExperimentDir:
    """``curves[(algorithm, seed)]`` = {step: validation metrics}; ``training(algorithm, seed, step)`` = the
    training metrics of each of ``steps``."""
    experiment = ExperimentDir(tmp_path / plan.name)
    experiment.save_plan(plan)
    for planned in plan.trials:
        files = experiment.trial(planned.name)
        files.write_status({"state": "succeeded", "gpus": 8, "attempts": [{"started": 0.0, "ended": 3600.0}]})
        algorithm, seed = planned.trial.algorithm, planned.trial.seed
        validation = curves[(algorithm, seed)]
        for step in sorted(set(validation) | set(steps)):
            data = training(algorithm, seed, step) if training and step in steps else {}
            data.update(validation.get(step, {}))
            append_record(files.metrics_path, {"step": step, "data": data})
    return experiment


def flat(avg: float, n: int = 8, sources=("aime24",), unbiased: float | None = None, boot: float | None = None):
    """A validation record with the same Avg@n (and Pass@n) on every set and their average."""
    data = {}
    for source in [*sources, "average"]:
        data[f"val-core/{source}/acc/mean@{n}"] = avg
        data[f"val-core/{source}/acc/pass@{n}"] = avg + 0.2 if unbiased is None else unbiased
        data[f"val-core/{source}/acc/best@{n}/mean"] = avg + 0.1 if boot is None else boot
    return data


# --------------------------------------------------------------------------------------------------------
# the two estimators


def test_both_estimators_on_known_sample_counts():
    from orchestrator.metrics import pass_at_k_bootstrap_expectation, pass_at_k_unbiased

    # one AIME problem solved once in 32 samples, one solved 16 times
    point = R.parse_validation(100, verl_validation({"aime24": [1, 16]}))
    assert point.k == N and point.avg["aime24"] == pytest.approx((1 + 16) / 64)
    unbiased, boot = point.passk["unbiased"]["aime24"], point.passk["bootstrap"]["aime24"]
    assert sorted(unbiased) == sorted(boot) == [1, 2, 4, 8, 16, 32]
    for k in (2, 4, 8, 16, 32):
        exact = (pass_at_k_unbiased(N, 1, k) + pass_at_k_unbiased(N, 16, k)) / 2
        assert unbiased[k] == pytest.approx(exact)
        expected = (pass_at_k_bootstrap_expectation(N, 1, k) + pass_at_k_bootstrap_expectation(N, 16, k)) / 2
        assert boot[k] == pytest.approx(expected, abs=0.03)  # verl's 1000 draws
    # at n = k = 32 the unbiased estimator is "any of 32 correct": 1 for both problems; the bootstrap is not
    assert unbiased[32] == 1.0 and boot[32] == pytest.approx((0.6379 + 1.0) / 2, abs=0.03)
    # Pass@1 is Avg@32 under both (verl logs no best@1)
    assert unbiased[1] == boot[1] == pytest.approx(17 / 64)
    values = point.values()
    assert values["aime24/pass_unbiased"] == 1.0 and values["aime24/pass_bootstrap"] == boot[32]
    assert values["average/pass_bootstrap"] == boot[32]  # the five-part key of the average is read too


def test_paper_comparison_column_uses_the_bootstrap_estimator(tmp_path):
    sources = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiad")
    plan = plan_experiment(load_spec("compare"), profile="a100", scale="7b", baselines="grpo", name="cmp")
    counts = {"grpo": [1, 16], "maspo": [2, 20]}
    curves = {(t.trial.algorithm, 0): {500: verl_validation({s: counts[t.trial.algorithm] for s in sources})}
              for t in plan.trials}
    results = R.collect(write_experiment(tmp_path, plan, curves).path)
    assert results.paper and results.estimator == "bootstrap"  # beside the paper's rows: the paper's estimator
    assert results.columns()[:2] == ["aime24/avg", "aime24/pass_bootstrap"]
    assert results.columns()[-1] == "average/pass_unbiased"  # the unbiased one: its own, labelled column
    grpo = results.rows[0]
    assert grpo.cell("aime24/pass_bootstrap")[0] < 0.9 < grpo.cell("aime24/pass_unbiased")[0] == 1.0
    text = words(R.table(results, paper=True))
    assert "bootstrap (verl's best@k/mean, the paper's estimator)" in text
    assert "P unbiased" in text  # the column's header
    assert "paper T1 GRPO" in text and "48.2 / 82.5" in text  # 7B GRPO, AIME24
    # asked for the unbiased one beside the paper: said to be not comparable
    results = R.collect(tmp_path / "cmp", estimator="unbiased")
    assert "not comparable" in words(R.table(results, paper=True))
    # a local experiment has no paper rows: the unbiased estimator by default
    local = plan_experiment(load_spec("compare"), baselines="grpo", name="loc")
    curves = {(t.trial.algorithm, 0): {8: flat(0.5)} for t in local.trials}
    assert R.collect(write_experiment(tmp_path, local, curves).path).estimator == "unbiased"


def render(table, width: int = 400, styles: bool = False) -> str:
    console = Console(record=True, width=width, force_terminal=styles, color_system="standard" if styles else None)
    console.print(table)
    return console.export_text(styles=styles)


def words(table) -> str:
    """The rendered table's text with whitespace runs as single spaces (titles and captions wrap)."""
    return " ".join(render(table).split())


# --------------------------------------------------------------------------------------------------------
# which checkpoint


def best_step_experiment(tmp_path):
    """GRPO peaks at step 10. MASPO's seeds peak at 10 (seed 0) and 30 (seed 1); their mean peaks at 20."""
    plan = plan_experiment(load_spec("compare"), baselines="grpo", seeds=2, name="ckpt")
    curves = {
        ("grpo", 0): {0: flat(0.10), 10: flat(0.40), 20: flat(0.30), 30: flat(0.20)},
        ("grpo", 1): {0: flat(0.10), 10: flat(0.42), 20: flat(0.32), 30: flat(0.22)},
        ("maspo", 0): {0: flat(0.10), 10: flat(0.60), 20: flat(0.58), 30: flat(0.30)},
        ("maspo", 1): {0: flat(0.10), 10: flat(0.30), 20: flat(0.56), 30: flat(0.62)},
    }
    return write_experiment(tmp_path, plan, curves).path


def test_at_best_is_chosen_per_row_on_the_seeds_mean_curve(tmp_path):
    results = R.collect(best_step_experiment(tmp_path), at="best")
    assert results.chosen == {"GRPO": 10, "MASPO": 20}
    assert [t.at for t in results.rows[1].trials] == [20, 20]  # both seeds at the row's step, not their own best
    assert results.rows[1].cell("average/avg")[0] == pytest.approx(0.57)
    assert results.rows[0].cell("average/avg")[0] == pytest.approx(0.41)
    caption = words(R.table(results))
    assert "best Avg@8 averaged over benchmarks and seeds (GRPO 10, MASPO 20)" in caption
    # per-seed best would have been (0.60 + 0.62) / 2 = 0.61: the row's choice is the less optimistic one
    assert results.rows[1].cell("average/avg")[0] < 0.61


def test_at_step_and_at_last(tmp_path):
    exp = best_step_experiment(tmp_path)
    at_30 = R.collect(exp, at="30")
    assert at_30.rows[1].cell("average/avg")[0] == pytest.approx(0.46)
    assert "at step 30" in words(R.table(at_30))
    last = R.collect(exp)
    assert last.at == "last" and {t.at for t in last.trials} == {30}
    assert last.rows[1].cell("average/avg")[0] == pytest.approx(0.46)
    assert "each trial's last validation (step 30)" in words(R.table(last))
    with pytest.raises(R.UserError, match="no trial of ckpt validated at step 25; validation steps: 0, 10, 20, 30"):
        R.collect(exp, at="25")
    with pytest.raises(R.UserError, match="--at must be last, best or a step number"):
        R.collect(exp, at="first")


# --------------------------------------------------------------------------------------------------------
# Table 1's layout


def test_rows_in_table_1_order_best_bold_second_underlined(tmp_path):
    from orchestrator.local_dashboard import final_table, load_trials

    plan = plan_experiment(load_spec("compare"), baselines="all", name="all")
    assert plan.trials[0].label == "MASPO"  # the plan lists MASPO first
    scores = {"grpo": 0.40, "clip_higher": 0.41, "dac": 0.42, "entropy_adv": 0.39, "bapo": 0.43, "sapo": 0.50,
              "maspo": 0.55, "entropy_reg": 0.38, "adv_reweight": 0.37}
    curves = {(t.trial.algorithm, 0): {8: flat(scores[t.trial.algorithm])} for t in plan.trials}
    results = R.collect(write_experiment(tmp_path, plan, curves).path)
    assert [row.label for row in results.rows] == [
        "GRPO", "Clip Higher", "DAC", "Entropy Adv.", "BAPO", "SAPO", "MASPO", "Entropy Reg.", "Adv. Reweighting"]
    marks = results.ranks()["average/avg"]
    assert marks == {"MASPO": 1, "SAPO": 2}
    text = render(R.table(results), styles=True)
    sapo = next(line for line in text.splitlines() if "SAPO" in line)
    maspo = next(line for line in text.splitlines() if "MASPO" in line)
    assert "\x1b[4m50.0" in sapo and "\x1b[1m55.0" in maspo  # underline, bold
    assert "\x1b[4m" not in maspo and "\x1b[1m" not in sapo
    plain = render(R.table(results))
    order = [plain.index(f"│ {label} ") for label in ("GRPO", "Clip Higher", "DAC", "Entropy Adv.", "BAPO", "SAPO",
                                                        "MASPO", "Entropy Reg.")]
    assert order == sorted(order)
    # the local page: the same rows, order and marks
    page = final_table(load_trials(tmp_path / "all"), "unbiased", "compare")
    assert page.index(">GRPO<") < page.index(">SAPO<") < page.index(">MASPO<") < page.index(">Entropy Reg.<")
    assert "<td><u>50.0</u></td>" in page and "<td><b>55.0</b></td>" in page


def test_a_sweep_keeps_the_plans_order(tmp_path):
    plan = plan_experiment(load_spec("alpha-beta"), name="ab")
    experiment = ExperimentDir(tmp_path / "ab")
    experiment.save_plan(plan)
    for i, planned in enumerate(plan.trials):
        append_record(experiment.trial(planned.name).metrics_path, {"step": 8, "data": flat(0.3 + 0.01 * i)})
    results = R.collect(experiment.path)
    assert [row.label for row in results.rows] == [t.label for t in plan.trials]


# --------------------------------------------------------------------------------------------------------
# Table 2 and Table 7


@pytest.mark.parametrize("scale, printed", [
    ("1.5b", (48.4, 70.1, 51.4, 72.9, +3.0, +2.8)),
    ("7b", (58.9, 77.2, 61.8, 79.8, +2.9, +2.6)),
    ("14b", (53.6, 67.4, 56.4, 71.1, +2.8, +3.7)),
])
def test_table_2_gain_from_the_papers_own_table_1_and_6_rows(scale, printed):
    gain = R.paper_gain(scale)
    assert (*gain.grpo, *gain.maspo) == pytest.approx(printed[:4])
    assert gain.absolute == pytest.approx(printed[4:], abs=0.051)  # Table 2 rounds to 0.1


def test_gain_of_an_experiment_beside_the_papers(tmp_path):
    plan = plan_experiment(load_spec("compare"), profile="a100", scale="1.5b", baselines="grpo", name="g")
    curves = {("grpo", 0): {500: flat(0.50, 32, boot=0.70)}, ("maspo", 0): {500: flat(0.52, 32, boot=0.77)}}
    results = R.collect(write_experiment(tmp_path, plan, curves).path)
    [gain] = R.gains(results)
    assert gain.absolute == pytest.approx((2.0, 7.0)) and gain.relative == pytest.approx((4.0, 10.0))
    text = words(R.gain_table(results))
    assert "+2.0" in text and "+7.0" in text and "+4.0%" in text and "+10.0%" in text
    assert "paper 1.5B" in text and "+3.0" in text and "+2.8" in text
    local = plan_experiment(load_spec("alpha-beta"), name="nogrpo", demo=True)
    experiment = write_experiment(tmp_path, local, {("maspo", 0): {8: flat(0.5)}})
    with pytest.raises(R.UserError, match="--gain needs a GRPO and a MASPO row"):
        R.gains(R.collect(experiment.path))


def test_table_7_is_read_and_its_pass_at_32_is_table_1s_p_at_32():
    for scale in ("1.5b", "7b", "14b"):
        table7, table1 = R.paper_passk(scale), R.paper_table1(scale)
        assert set(table7) == {"aime24", "aime25"}
        for source, methods in table7.items():
            for method, curve in methods.items():
                assert sorted(curve) == [1, 2, 4, 8, 16, 32]
                assert curve[32] == table1[method][f"{source}/pass"], (scale, source, method)
    assert R.paper_passk("7b")["aime25"]["MASPO"][32] == 73.2
    assert R.paper_passk("1.5b")["aime24"]["DAC"][1] == 40.0  # "DAC (400)" in Table 7


def test_passk_table_puts_table_7_beside_at_a_paper_scale(tmp_path):
    plan = plan_experiment(load_spec("compare"), profile="a100", scale="7b", baselines="grpo", name="p7")
    curves = {(t.trial.algorithm, 0): {500: verl_validation({"aime24": [4, 30], "aime25": [0, 8]})}
              for t in plan.trials}
    results = R.collect(write_experiment(tmp_path, plan, curves).path)
    text = words(R.passk_table(results))
    assert "paper GRPO" in text and "48.2" in text and "82.5" in text  # Table 7, 7B AIME24 GRPO
    assert "bootstrap" in text and "Pass@1 = Avg@32" in text
    assert "k=1" in text and "k=32" in text


# --------------------------------------------------------------------------------------------------------
# the figures


def dynamics_experiment(tmp_path):
    plan = plan_experiment(load_spec("compare"), baselines="grpo,sapo", seeds=2, name="fig")
    entropy = {"grpo": 1.0, "sapo": 1.5, "maspo": 2.0}
    curves = {(t.trial.algorithm, t.trial.seed): {
        0: verl_validation({"local_aime24": [1, 3], "local_amc23": [0, 5]}, n=8),
        4: verl_validation({"local_aime24": [2, 4 + t.trial.seed], "local_amc23": [1, 6]}, n=8)}
        for t in plan.trials}

    def training(algorithm, seed, step):
        return {"actor/entropy": entropy[algorithm] - 0.1 * step + 0.01 * seed, "response_length/mean": 10.0 + step}

    return write_experiment(tmp_path, plan, curves, training, steps=range(1, 5)).path


def test_plots_have_one_line_per_algorithm(tmp_path):
    from PIL import Image

    from orchestrator import plots

    results = R.collect(dynamics_experiment(tmp_path))
    labels = [row.label for row in results.rows]
    assert labels == ["GRPO", "SAPO", "MASPO"]
    figs = plots.figures(results)
    training = figs["training"]
    titles = [ax.get_title() for ax in training.axes]
    assert titles == ["Policy entropy", "Avg@8, average over benchmarks", "Response length (mean tokens)"]
    for ax in training.axes:
        assert [line.get_label() for line in ax.get_lines()] == labels, ax.get_title()
        assert all(len(line.get_xdata()) >= 2 for line in ax.get_lines())
    entropy = {line.get_label(): list(line.get_ydata()) for line in training.axes[0].get_lines()}
    assert entropy["MASPO"][0] == pytest.approx(2.0 - 0.1 + 0.005)  # step 1, the mean over seeds 0 and 1
    assert training.axes[0].collections  # the seed bands
    passk = figs["passk"]
    assert [ax.get_title() for ax in passk.axes] == ["AIME24", "AMC23"]
    for ax in passk.axes:
        assert [line.get_label() for line in ax.get_lines()] == labels
        assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 4, 8]
    assert "unbiased" in passk.get_suptitle()  # the estimator it plots
    written = plots.write_figures(results, tmp_path / "png")
    assert set(written) == {"training", "passk"}
    for path in written.values():
        assert path.stat().st_size > 10_000
        width, height = Image.open(path).size
        assert width > 800 and height > 300


def test_passk_figure_has_the_papers_table_7_beside(tmp_path):
    from orchestrator import plots

    plan = plan_experiment(load_spec("compare"), profile="a100", scale="1.5b", baselines="grpo", name="pf")
    curves = {(t.trial.algorithm, 0): {500: verl_validation({"aime24": [4, 30], "aime25": [0, 8]})}
              for t in plan.trials}
    results = R.collect(write_experiment(tmp_path, plan, curves).path)
    fig = plots.figures(results)["passk"]
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2  # ours: GRPO, MASPO
        assert len(ax.collections) == 2  # the paper's Table 7: GRPO, MASPO
    assert "bootstrap" in fig.get_suptitle() and "the paper" in fig.get_suptitle()


def test_local_page_shows_the_figures(tmp_path):
    from orchestrator.local_dashboard import write_local_dashboard

    exp = dynamics_experiment(tmp_path)
    page = write_local_dashboard("fig", runs_root=tmp_path).read_text()
    images = re.findall(r'<img class="figure" src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"', page)
    alts = [alt for _, alt in images]
    assert any("Training dynamics (paper Figure 3)" in alt for alt in alts)
    assert sum("Pass@k against k" in alt for alt in alts) == 2  # one per set
    assert all(len(data) > 5000 for data, _ in images)
    assert "Pass@8, unbiased (Chen et al. 2021)" in page
    assert exp.exists()


# --------------------------------------------------------------------------------------------------------
# the command


def test_results_command_options(tmp_path):
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app

    best_step_experiment(tmp_path)
    runner = CliRunner()
    out = runner.invoke(app, ["results", "ckpt", "--root", str(tmp_path), "--at", "best", "--estimator", "bootstrap",
                              "--gain", "--passk", "--plot", str(tmp_path / "figs"), "--json", str(tmp_path / "r.json")],
                        terminal_width=300)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "(GRPO 10, MASPO 20)" in text and "bootstrap (verl's best@k/mean" in text
    assert "MASPO's gain over GRPO" in text and "+16.0" in text  # 0.57 - 0.41 at the rows' best steps
    assert (tmp_path / "figs" / "training.png").stat().st_size > 0 and (tmp_path / "figs" / "passk.png").exists()
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["estimator"] == "bootstrap" and saved["at"] == "best"
    assert [(r["label"], r["step"]) for r in saved["rows"]] == [("GRPO", 10), ("MASPO", 20)]
    for args, message in ((["--estimator", "median"], "'median' is not one of"),  # Click's own check of the Enum
                          (["--at", "25"], "no trial of ckpt validated at step 25"),
                          (["--at", "first"], "--at must be last, best or a step number")):
        out = runner.invoke(app, ["results", "ckpt", "--root", str(tmp_path), *args], terminal_width=300)
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output, out.output
    out = runner.invoke(app, ["results", "ckpt", "--root", str(tmp_path), "--at", "10"], terminal_width=300)
    assert out.exit_code == 0 and "at step 10" in " ".join(out.output.split())


# --------------------------------------------------------------------------------------------------------
# what each loss did: the mechanism metrics per row


def test_mechanism_table_means_over_steps_then_seeds(tmp_path):
    """GRPO's seeds log outside_clip_frac 0.02 + 0.01 * seed at steps 1-2 (seed means 0.02 and 0.03) and nothing at
    the validation-only step 0; MASPO's seed 0 logs a NaN at step 2, which is left out; kept_frac only for MASPO."""
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app

    plan = plan_experiment(load_spec("compare"), baselines="grpo", seeds=2, name="mech")
    curves = {(a, s): {0: flat(0.3), 2: flat(0.4)} for a in ("grpo", "maspo") for s in (0, 1)}

    def training(algorithm, seed, step):
        if algorithm == "grpo":
            return {"actor/mechanism/outside_clip_frac": 0.02 + 0.01 * seed, "actor/mechanism/ratio_dev_last": 0.5}
        nan = seed == 0 and step == 2
        return {"actor/mechanism/outside_clip_frac": float("nan") if nan else 0.04 * step,
                "actor/mechanism/kept_frac": 0.01 * step}

    write_experiment(tmp_path, plan, curves, training, steps=(1, 2))
    results = R.collect(tmp_path / "mech")
    cells = {row.label: c for row, c in R.mechanism_rows(results)}
    assert cells["GRPO"]["outside_clip_frac"] == pytest.approx((0.025, 0.00707107), rel=1e-5)
    assert "kept_frac" not in cells["GRPO"] and cells["GRPO"]["ratio_dev_last"] == pytest.approx((0.5, 0.0))
    # MASPO seed 0: step 1 only (0.04); seed 1: mean of 0.04 and 0.08 (0.06)
    assert cells["MASPO"]["outside_clip_frac"][0] == pytest.approx(0.05)
    assert cells["MASPO"]["kept_frac"][0] == pytest.approx(0.015)
    text = words(R.mechanism_table(results))
    assert "GRPO │ 2.50 ± 0.71 │" in text and "0.5000 ± 0.0000" in text and "MASPO │ 5.00 ± 1.41 │" in text
    out = CliRunner().invoke(app, ["results", "mech", "--root", str(tmp_path), "--mechanism",
                                   "--json", str(tmp_path / "r.json")], terminal_width=300)
    assert out.exit_code == 0 and "mechanism metrics" in out.output, out.output
    saved = {t["name"]: t["mechanism"] for t in json.loads((tmp_path / "r.json").read_text())["trials"]}
    assert sorted(round(m["outside_clip_frac"], 4) for m in saved.values()) == [0.02, 0.03, 0.04, 0.06]


def test_mechanism_table_shows_no_spread_from_one_seed(tmp_path):
    plan = plan_experiment(load_spec("compare"), baselines="grpo", seeds=2, name="mech1")
    curves = {(a, s): {0: flat(0.3), 1: flat(0.4)} for a in ("grpo", "maspo") for s in (0, 1)}
    write_experiment(tmp_path, plan, curves, lambda a, s, step: {"actor/mechanism/kept_frac": 0.01} if s == 0 else {},
                     steps=(1,))
    results = R.collect(tmp_path / "mech1")
    cells = {row.label: c for row, c in R.mechanism_rows(results)}
    assert cells["GRPO"]["kept_frac"] == (0.01, None)  # seed 1 logged nothing: one value, no deviation
    assert "GRPO │ - │ - │ - │ - │ 1.00 │ - │" in words(R.mechanism_table(results))
