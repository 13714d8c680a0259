"""The study spec, the start order, the schedule preview, the start-up slot check, the default concurrency: no Ray."""

from __future__ import annotations

import json

import pytest

from orchestrator.config.experiment import SpecError, StudySpec, load_spec, plan_experiment
from orchestrator.config.plan import ExperimentPlan
from orchestrator.errors import UserError
from orchestrator.schedule import Job, lower_bound, plan_jobs, simulate, simulate_greedy, start_order
from orchestrator.scales import estimate_cost
from orchestrator.tune_runner import check_slots, local_slots


# --- the paper's study as one spec -----------------------------------------------------------------------


def test_the_paper_study_has_every_run_once():
    spec = load_spec("paper")
    assert isinstance(spec, StudySpec)
    plan = plan_experiment(spec, profile="a100", spec_file="paper")
    assert plan.kind == "study" and plan.scale == "1.5b+7b+14b" and plan.slots_per_trial == 2
    by_scale = {}
    for t in plan.trials:
        by_scale.setdefault(t.trial.profile.scale, []).append(t)
    # 1.5B: Table 4's nine, D.1's two weaker settings, D.2's unilateral SAPO, D.4's beta_high = 0
    # 7B: Table 4's eight (no Entropy Reg.), seven more alpha-beta points, D.1's two; 14B: MASPO and GRPO
    assert {s: len(ts) for s, ts in by_scale.items()} == {"1.5b": 13, "7b": 17, "14b": 2}
    assert len({t.trial.stable_hash() for t in plan.trials}) == 32
    assert not any(t.trial.algorithm == "entropy_reg" for t in by_scale["7b"])
    assert all(t.nodes == 2 and t.trial.profile.gpus_per_trial == 16 for t in by_scale["14b"])
    # shared settings run once and say which parts they serve
    maspo_7b = next(t for t in by_scale["7b"] if t.label == "main-7b: MASPO")
    assert maspo_7b.parts == ["main-7b", "alpha-beta-7b"] and maspo_7b.trial.hyperparameters["alpha"] == 0.3
    maspo_15 = next(t for t in by_scale["1.5b"] if t.label == "main-1.5b: MASPO")
    assert maspo_15.parts == ["main-1.5b", "d4-beta-high-1.5b"]
    d4 = next(t for t in by_scale["1.5b"] if t.label == "d4-beta-high-1.5b: beta_high=0")
    assert (d4.trial.hyperparameters["beta_low"], d4.trial.hyperparameters["beta_high"]) == (0.03, 0.0)
    assert {t.trial.algorithm for t in by_scale["1.5b"]} >= {"sapo_unilateral", "entropy_reg"}
    # three seeds: every trial three times, nothing shared across seeds
    assert len(plan_experiment(spec, profile="a100", seeds=3).trials) == 96


def test_the_old_specs_are_unchanged():
    assert len(plan_experiment(load_spec("alpha-beta"), profile="a100").trials) == 8
    assert len(plan_experiment(load_spec("compare"), profile="a100", scale="7b").trials) == 9
    plan = plan_experiment(load_spec("compare"), profile="a100", scale="14b")
    assert plan.kind == "compare" and plan.scale == "14b" and plan.slots_per_trial == 2 and plan.max_concurrent is None


@pytest.mark.parametrize("part, message", [
    ("{name: p, scale: 7b}", "needs exactly one of spec, sweep, compare"),
    ("{name: p, scale: 7b, spec: compare, sweep: {algorithm: grpo}}", "needs exactly one of spec, sweep, compare"),
    ("{name: p, scale: 7b, spec: compare, baselines: [ppo2]}", "unknown algorithm 'ppo2'"),
    ("{name: p, scale: 14b, spec: compare, baselines: [sapo]}", "valid at 14b: grpo"),
    ("{name: p, scale: 7b, sweep: {algorithm: maspo, axes: [alpha], points: [{alpha: 9}]}}", "part 'p'"),
    ("{name: p, scale: 7b, spec: alpha-beta, baselines: [grpo]}", "baselines apply to a compare part"),
    ("{name: p, scale: 70b, spec: compare}", "Input should be"),
    ("{name: p, scale: 7b, spec: paper}", "is a study"),
])
def test_a_bad_study_part_names_the_file_and_the_part(tmp_path, part, message):
    path = tmp_path / "study.yaml"
    path.write_text(f"kind: study\nname: s\nparts:\n  - {part}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_study_sets_scale_grid_and_baselines_per_part():
    with pytest.raises(SpecError, match="drop --scale"):
        plan_experiment(load_spec("paper"), profile="a100", scale="7b")
    with pytest.raises(SpecError, match="no demo size"):
        plan_experiment(load_spec("paper"), demo=True)


def test_a_study_part_may_name_a_spec_next_to_it(tmp_path):
    (tmp_path / "mine.yaml").write_text("kind: sweep\nname: mine\nalgorithm: grpo\naxes: [eps]\n"
                                        "points: [{eps: 0.1}, {eps: 0.2}]\n")
    (tmp_path / "study.yaml").write_text("kind: study\nname: s\nparts:\n"
                                         "  - {name: a, scale: 1.5b, spec: mine.yaml}\n"
                                         "  - {name: b, scale: 1.5b, spec: compare, baselines: [grpo]}\n")
    plan = plan_experiment(load_spec(tmp_path / "study.yaml"), profile="a100", spec_file=str(tmp_path / "study.yaml"))
    # GRPO eps 0.2 at 1.5B is in both parts: one trial
    assert [t.label for t in plan.trials] == ["a: eps=0.1", "a: eps=0.2", "b: MASPO"]
    assert plan.trials[1].parts == ["a", "b"]


def test_an_old_experiment_file_still_loads():
    plan = plan_experiment(load_spec("compare"), baselines="grpo")
    old = json.loads(plan.model_dump_json())
    old["max_concurrent"] = 1
    for t in old["trials"]:
        del t["parts"]
    loaded = ExperimentPlan.model_validate(old)
    assert loaded.max_concurrent == 1 and loaded.trials[0].parts == [] and loaded.trials[0].nodes == 1
    with pytest.raises(ValueError):
        ExperimentPlan.model_validate({**old, "max_concurrent": 0})


# --- the start order and the schedule ---------------------------------------------------------------------


def test_start_order_is_widest_then_longest_then_the_plans():
    plan = plan_experiment(load_spec("paper"), profile="a100")
    order = start_order(plan)
    assert [t.trial.profile.scale for t in order[:2]] == ["14b", "14b"]
    hours = [estimate_cost(t.trial.profile).wall_hours for t in order[2:]]
    assert hours == sorted(hours, reverse=True)
    assert [t.name for t in order if t.trial.profile.scale == "7b"] == \
        [t.name for t in plan.trials if t.trial.profile.scale == "7b"]  # equal estimates keep the plan's order
    local = plan_experiment(load_spec("compare"))
    assert start_order(local) == local.trials  # the local profile: one node each, no estimate, the plan's order


def test_a_schedule_by_hand():
    # 4 nodes, in start order: A (2 nodes, 10 h), E (2, 3), B (1, 6), C (1, 6), F (1, 5), D (1, 4)
    jobs = [Job("A", 2, 10), Job("E", 2, 3), Job("B", 1, 6), Job("C", 1, 6), Job("F", 1, 5), Job("D", 1, 4)]
    s = simulate(jobs, nodes=4)
    # t=0 A and E; t=3 E ends: B, C (3-9); t=9 B, C end: F (9-14), D (9-13); t=10 A ends; t=14 F ends
    assert {p.job.name: (p.start, p.end) for p in s.placements} == {
        "A": (0, 10), "E": (0, 3), "B": (3, 9), "C": (3, 9), "F": (9, 14), "D": (9, 13)}
    assert s.makespan == 14 and s.node_hours == 47
    assert s.lower_bound == pytest.approx(47 / 4)  # more than the longest job (10)
    assert s.utilization == pytest.approx(47 / (4 * 14)) and s.longest_wait == 9
    assert max(s.busy_nodes(t) for t in (0, 3, 9, 10, 13)) <= 4


def test_nothing_overtakes_a_waiting_wide_trial():
    # 2 nodes: two 1-node jobs end at 3 and 4, then a 2-node job, then six short 1-node jobs
    jobs = [Job("a", 1, 3), Job("b", 1, 4), Job("wide", 2, 5)] + [Job(f"n{i}", 1, 2) for i in range(6)]
    ours = {p.job.name: p.start for p in simulate(jobs, nodes=2).placements}
    assert ours["wide"] == 4 and all(ours[f"n{i}"] >= 9 for i in range(6))  # node a freed at 3 stays free till 4
    # the alternative (whatever fits starts): the short jobs keep taking the one free node; the wide job waits
    # until none is left (with an endless supply of short jobs, forever)
    greedy = {p.job.name: p.start for p in simulate_greedy(jobs, nodes=2).placements}
    assert greedy["n0"] == 3 and greedy["wide"] == 10


def test_the_cap_and_the_width_check():
    jobs = [Job(str(i), 1, 1) for i in range(4)]
    assert simulate(jobs, nodes=4).makespan == 1
    assert simulate(jobs, nodes=4, max_concurrent=1).makespan == 4
    with pytest.raises(ValueError, match="needs 3 nodes; the cluster has 2"):
        simulate([Job("x", 3, 1)], nodes=2)
    assert lower_bound([Job("a", 1, 5), Job("b", 1, 1)], 4) == 5


def test_the_paper_study_on_30_nodes():
    plan = plan_experiment(load_spec("paper"), profile="a100")
    s = simulate(plan_jobs(plan), nodes=30)
    assert s.makespan == pytest.approx(s.lower_bound)  # one seed: the longest trial (14B) bounds it
    assert s.longest_wait < s.makespan / 2


# --- the start-up check and the default concurrency ------------------------------------------------------


def test_a_cluster_with_enough_slots_but_not_enough_nodes_is_refused():
    plan = plan_experiment(load_spec("compare"), profile="a100", scale="14b")
    with pytest.raises(UserError) as info:
        check_slots(plan, [2], "127.0.0.1:6379")  # one node declaring two slots
    message = str(info.value)
    assert "2 'verl_slot'(s) in total but only 1 node(s)" in message and "2 different nodes" in message
    assert "\n" not in message
    check_slots(plan, [1, 1], "x")  # two nodes with a slot each
    with pytest.raises(UserError, match="declares no 'verl_slot'"):
        check_slots(plan, [], "x")


def test_the_local_default_comes_from_the_machine():
    gib = 2**30
    assert local_slots(cpus=2, available_bytes=24 * gib) == 2  # cores bound it
    assert local_slots(cpus=16, available_bytes=12 * gib) == 2  # memory bounds it (5 GiB a trial)
    assert local_slots(cpus=1, available_bytes=1 * gib) == 1  # never none


def test_the_pigeonhole_bound():
    from orchestrator.schedule import pigeonhole_bound

    jobs = [Job(str(i), 1, 10) for i in range(3)]  # three 10-hour jobs on two nodes: one node runs two
    assert lower_bound(jobs, 2) == 15 and pigeonhole_bound(jobs, 2) == 20 == simulate(jobs, 2).makespan
    # the paper's study at 3 seeds on 30 nodes: 63 node-jobs of at least a 7B trial's length (six 2-node 14B
    # trials, 51 7B trials); with 61 of them on 30 nodes some node runs three in a row
    plan = plan_experiment(load_spec("paper"), profile="a100", seeds=3)
    s = simulate(plan_jobs(plan), nodes=30)
    seven = estimate_cost(next(t for t in plan.trials if t.trial.profile.scale == "7b").trial.profile).wall_hours
    assert s.pigeonhole_bound == pytest.approx(3 * seven) and s.makespan == pytest.approx(s.pigeonhole_bound)
    assert s.makespan / s.lower_bound > 1.15  # the simple bound is not reachable here


# --- the command line: the study's dry run and the schedule preview ---------------------------------------

from typer.testing import CliRunner  # noqa: E402

from orchestrator.cli import app  # noqa: E402

runner = CliRunner()


def _flat(text: str) -> str:
    """The output with Rich's line wrapping undone (the console is 160 columns wide off a terminal)."""
    return " ".join(text.split())


def test_the_study_dry_run_prints_every_trial_its_nodes_its_cost_and_the_total(tmp_path):
    result = runner.invoke(app, ["sweep", "paper", "--profile", "a100", "--dry-run", "--root", str(tmp_path)],
                           terminal_width=3000)
    assert result.exit_code == 0, result.output
    assert result.output.count("python -m verl.trainer.main_ppo") == 32
    assert result.output.count("16 GPU(s) on 2 node(s), 2 slot(s)") == 2
    assert result.output.count("8 GPU(s) on 1 node(s), 1 slot(s)") == 30
    assert "parts: main-7b, alpha-beta-7b" in result.output
    plan = plan_experiment(load_spec("paper"), profile="a100")
    total = sum(estimate_cost(t.trial.profile).gpu_hours for t in plan.trials)
    assert f"total: 32 trials (30 x 8 GPUs, 2 x 16 GPUs), est. {total:,.0f} A100-hours" in result.output
    assert "as many at a time as the free verl_slots allow" in _flat(result.output)
    assert not any(tmp_path.iterdir())


def test_the_schedule_preview_by_hand(tmp_path):
    """Nine 7B trials of T hours on 4 nodes: waves of 4, 4 and 1, so 3T; the bound is 9T/4; utilization 9/12."""
    result = runner.invoke(app, ["compare", "--profile", "a100", "--scale", "7b", "--dry-run", "--nodes", "4",
                                 "--root", str(tmp_path)], terminal_width=3000)
    assert result.exit_code == 0, result.output
    hours = estimate_cost(plan_experiment(load_spec("compare"), profile="a100", scale="7b").trials[0]
                          .trial.profile).wall_hours
    out = _flat(result.output)
    assert f"makespan {3 * hours:,.0f} h" in out
    assert f"lower bound {9 * hours / 4:,.0f} h" in out and "makespan / lower bound 1.33" in out
    assert f"no schedule ends before {3 * hours:,.0f} h either" in out  # 9 trials on 4 nodes: 3 in a row
    assert "mean utilization 75.0%" in out and f"starts after {2 * hours:,.0f} h" in out
    capped = runner.invoke(app, ["compare", "--profile", "a100", "--scale", "7b", "--dry-run", "--nodes", "4",
                                 "--max-concurrent", "1", "--root", str(tmp_path)], terminal_width=3000)
    assert f"makespan {9 * hours:,.0f} h" in _flat(capped.output) and "at most 1 at a time" in _flat(capped.output)


def test_the_schedule_preview_of_a_cluster_file(tmp_path):
    result = runner.invoke(app, ["sweep", "paper", "--profile", "a100", "--dry-run", "--cluster",
                                 "cluster/a100-onprem.yaml", "--root", str(tmp_path)], terminal_width=3000)
    assert result.exit_code == 0, result.output
    assert "schedule on 30 node(s)" in _flat(result.output) and "makespan / lower bound 1.00" in _flat(result.output)


@pytest.mark.parametrize("args, message", [
    (["compare", "--profile", "a100", "--nodes", "4"], "--nodes previews a schedule: use it with --dry-run"),
    (["compare", "--dry-run", "--nodes", "4"], "needs the a100 profile"),
    (["compare", "--profile", "a100", "--scale", "14b", "--dry-run", "--nodes", "1"], "can never start it"),
    (["compare", "--spec", "paper", "--dry-run"], "is a study spec; use `maspo sweep`"),
    (["sweep", "paper", "--scale", "7b", "--dry-run"], "drop --scale"),
])
def test_preview_and_study_mistakes_are_one_line(tmp_path, args, message):
    result = runner.invoke(app, [*args, "--root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in _flat(result.output) and "Traceback" not in result.output


def test_the_readme_shows_the_study_total_the_code_derives():
    from pathlib import Path

    plan = plan_experiment(load_spec("paper"), profile="a100")
    total = sum(estimate_cost(t.trial.profile).gpu_hours for t in plan.trials)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"total: 32 trials (30 x 8 GPUs, 2 x 16 GPUs), est. {total:,.0f} A100-hours" in readme
