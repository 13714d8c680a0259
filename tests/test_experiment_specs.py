"""Sweep/compare specs, the experiment plan, the metric stream across retries, results tables: no Ray, fast."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config.experiment import CompareSpec, SpecError, SweepSpec, load_spec, plan_experiment
from orchestrator.store import ExperimentDir, MetricStream, summary as tune_metrics

runner = CliRunner()


def test_alpha_beta_spec_is_the_papers_study():
    spec = load_spec("alpha-beta")
    assert isinstance(spec, SweepSpec) and spec.algorithm == "maspo" and spec.fixed == {"sigma_base": 1.0}
    pairs = {(p["alpha"], p["beta"]) for p in spec.points}
    # section 5.3's six pairs and Table 5's two more
    assert pairs == {(0.1, 0.03), (0.3, 0.0), (0.3, 0.03), (0.3, 0.1), (0.5, 0.03), (0.8, 0.03), (0.5, 0.0), (0.5, 0.1)}
    full = spec.grid_points("full")
    assert len(full) == 12 and {(p["alpha"], p["beta"]) for p in full} >= pairs


def test_compare_spec_is_table_4():
    spec = load_spec("compare")
    assert isinstance(spec, CompareSpec)
    assert spec.hyperparameters["1.5b"]["maspo"]["alpha"] == 0.5
    assert spec.hyperparameters["7b"]["maspo"]["alpha"] == 0.3
    assert spec.hyperparameters["1.5b"]["clip_higher"]["eps_high"] == 0.265
    assert set(spec.baselines("1.5b")) == {"grpo", "clip_higher", "dac", "bapo", "sapo", "entropy_reg", "entropy_adv",
                                           "adv_reweight"}
    assert spec.select("grpo, sapo,dac", "1.5b") == ["maspo", "grpo", "sapo", "dac"]
    assert spec.select("all", "14b") == ["maspo", "grpo"]


def test_plan_resolves_every_trial_with_seeds():
    plan = plan_experiment(load_spec("alpha-beta"), seeds=3, steps=4, grid="listed")
    assert len(plan.trials) == 8 * 3 and plan.seeds == [0, 1, 2]
    assert len({t.name for t in plan.trials}) == 24  # unique directories
    t = plan.trials[0].trial
    assert t.hyperparameters["beta_low"] == t.hyperparameters["beta_high"] and t.profile.steps == 4
    assert plan.validations == 1 + 1  # before training, and step 4 (test_freq 4)


@pytest.mark.parametrize("edit, field, reason", [
    (lambda s: s.replace("algorithm: maspo", "algorithm: maspoo"), "algorithm", "unknown algorithm 'maspoo'"),
    (lambda s: s.replace("{alpha: 0.1, beta: 0.03}", "{alpha: 0.1, beta: -1}"), "", "beta_low"),
    (lambda s: s.replace("{alpha: 0.1, beta: 0.03}", "{alpha: 0.1}"), "", "must set exactly the axes"),
    (lambda s: s.replace("kind: sweep", "kind: sweep\nbogus: 1"), "bogus", "Extra inputs are not permitted"),
])
def test_invalid_sweep_spec_names_file_field_and_reason(tmp_path, edit, field, reason):
    text = (Path(__file__).parents[1] / "sweeps" / "alpha-beta.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(text))
    result = runner.invoke(app, ["sweep", str(bad), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert str(bad) in result.output and field in result.output and reason in result.output
    assert "Traceback" not in result.output


def test_unknown_baseline_lists_the_valid_ones():
    result = runner.invoke(app, ["compare", "--baselines", "grpo,ppo2", "--dry-run"])
    assert result.exit_code == 2
    assert "unknown algorithm 'ppo2'" in result.output and "clip_higher" in result.output
    result = runner.invoke(app, ["compare", "--baselines", "sapo", "--scale", "14b", "--dry-run"])
    assert result.exit_code == 2 and "valid at 14b: grpo" in result.output


@pytest.mark.parametrize("args, message", [
    (["sweep", "--seeds", "0", "--dry-run"], "Invalid value for '--seeds': Input should be greater than or equal to 1"),
    (["sweep", "--scheduler", "hyperband", "--dry-run"], "'hyperband' is not one of 'fifo', 'asha'"),
    (["sweep", "--grid", "half", "--dry-run"], "'half' is not one of 'listed', 'full'"),
    (["compare", "--profile", "gpu", "--dry-run"], "'gpu' is not one of 'local', 'a100'"),
    (["compare", "--scale", "3b", "--dry-run"], "'3b' is not one of '1.5b', '7b', '14b'"),
    (["compare", "--max-concurrent", "0", "--dry-run"], "Invalid value for '--max-concurrent'"),
])
def test_a_bad_choice_or_number_is_clicks_usage_error_exit_2(args, message, tmp_path):
    """Typer/Click check choices and ranges themselves: exit 2, a short usage block, no traceback."""
    result = runner.invoke(app, [*args, "--root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())  # rich boxes and line breaks out
    assert message in text and "Usage:" in text and "Traceback" not in result.output
    assert result.stdout == "" and not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["sweep", "nosuchspec", "--dry-run"], "no spec 'nosuchspec'"),
    (["sweep", "compare", "--dry-run"], "is a compare spec; use `maspo compare`"),
    (["compare", "-P", "train_batch_size=5", "--dry-run"], "must be a multiple of ppo_mini_batch_size"),
    (["compare", "-P", "bogus=1", "--dry-run"], "profile.bogus"),
    (["compare", "--profile", "a100"], "the a100 profile runs on a Ray cluster"),
    (["compare", "--profile", "a100", "--address", "127.0.0.1:1", "-P", "data_dir=/nonexistent"],
     "data file(s) missing"),
    (["compare", "--profile", "a100", "--cluster", "/nonexistent.yaml"], "cannot read the file"),
    (["results", "no-such-experiment"], "no experiment at"),
    (["resume", "no-such-experiment"], "no experiment at"),
])
def test_bad_command_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written, nothing launched


def test_dry_run_prints_each_trials_verl_command_and_table_4_values(tmp_path):
    result = runner.invoke(app, ["compare", "--baselines", "all", "--dry-run", "--root", str(tmp_path)],
                           terminal_width=400)
    assert result.exit_code == 0, result.output
    assert result.output.count("python -m verl.trainer.main_ppo") == 9
    assert "actor_rollout_ref.actor.clip_ratio_high=0.265" in result.output  # Clip Higher
    assert "+actor_rollout_ref.actor.policy_loss.maspo_alpha=0.5" in result.output
    assert "actor_rollout_ref.actor.tau_neg=1.05" in result.output  # SAPO
    assert "actor_rollout_ref.actor.entropy_coeff=0.01" in result.output
    assert "trainer.resume_mode=auto" in result.output
    assert not any(tmp_path.iterdir())  # nothing written, nothing started


def test_metric_stream_keeps_every_step_once_across_a_retry(tmp_path):
    stream = MetricStream(tmp_path / "metrics.jsonl")
    for step in range(0, 4):  # attempt 1 logs steps 0..3, checkpointed at 2, then dies
        assert stream.accept({"step": step, "data": {"x": step, **({"val-core/a/acc/mean@4": 0.5} if step == 2 else {})}})
    stream = MetricStream(tmp_path / "metrics.jsonl")  # the retry's controller
    stream.truncate_after(2)
    assert stream.steps() == {0, 1, 2}
    # verl validates again at the resumed step: a duplicate, not a new step
    assert not stream.accept({"step": 2, "data": {"val-core/a/acc/mean@4": 0.5}})
    for step in (3, 4):
        assert stream.accept({"step": step, "data": {"x": 10 * step}})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4]
    assert lines[3]["data"]["x"] == 30  # the re-run's step 3 replaced the lost attempt's
    metrics = tune_metrics(lines)
    assert metrics["global_step"] == 4 and metrics["validations"] == 1


def test_results_table_from_trial_files(tmp_path):
    from orchestrator.results import collect, to_csv, to_json

    plan = plan_experiment(load_spec("compare"), baselines="grpo", seeds=2, name="r")
    exp_dir = tmp_path / "r"
    ExperimentDir(exp_dir).save_plan(plan)
    values = {("maspo", 0): 0.50, ("maspo", 1): 0.60, ("grpo", 0): 0.40, ("grpo", 1): 0.45}
    for planned in plan.trials:
        d = exp_dir / "trials" / planned.name
        d.mkdir(parents=True)
        v = values[(planned.trial.algorithm, planned.trial.seed)]
        record = {"step": 12, "data": {"val-core/local_aime24/acc/mean@8": v, "val-core/local_aime24/acc/pass@8": v + .2,
                                       "val-aux/local_aime24/acc/pass@2": v + .1,
                                       "val-core/average/acc/mean@8": v, "val-core/average/acc/pass@8": v + .2}}
        (d / "metrics.jsonl").write_text(json.dumps({"step": 0, "data": {"val-core/average/acc/mean@8": 0.1}}) + "\n"
                                         + json.dumps(record) + "\n")
        (d / "status.json").write_text(json.dumps({"state": "succeeded", "gpus": 1, "attempts": [
            {"started": 100.0, "ended": 460.0}]}))
    results = collect(exp_dir)
    assert [r.label for r in results.rows] == ["GRPO", "MASPO"] and results.k == 8  # Table 1 order
    mean, std = results.rows[1].cell("aime24/avg")
    assert mean == pytest.approx(0.55) and std == pytest.approx(0.0707, abs=1e-3)
    assert results.best()["average/avg"] == "MASPO"
    assert results.trials[0].gpu_hours == pytest.approx(0.1)
    assert "aime24_avg" in to_csv(results).splitlines()[0]
    assert json.loads(to_json(results))["total_gpu_hours"] == pytest.approx(0.4)
    result = runner.invoke(app, ["results", "r", "--root", str(tmp_path), "--passk", "--csv", str(tmp_path / "t.csv")],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "55.0 ± 7.1" in result.output and "AIME24" in result.output and "k=2" in result.output
    assert (tmp_path / "t.csv").exists()


TABLE_4_7B = {  # Table 4 (docs/algorithms.md#table-4) at 7B, as verl overrides
    "MASPO": ["maspo_alpha=0.3", "maspo_beta_low=0.03", "maspo_beta_high=0.03", "maspo_sigma_base=1.0"],
    "GRPO": ["clip_ratio_low=0.2", "clip_ratio_high=0.2"],
    "Clip Higher": ["clip_ratio_low=0.2", "clip_ratio_high=0.265"],
    "DAC": ["loss_mode=dac", "clip_ratio_high=0.2"],
    "BAPO": ["bapo_rho0=0.4", "bapo_c_high_start=1.2", "bapo_c_high_max=3.0", "bapo_c_low_start=0.6",
             "bapo_c_low_max=0.9", "bapo_delta_high=0.05", "bapo_delta_low=0.02"],
    "SAPO": ["tau_neg=1.05", "tau_pos=1.0", "loss_agg_mode=seq-mean-token-mean"],
    "Entropy Reg.": ["entropy_coeff=0.01"],
    "Entropy Adv.": ["entropy_adv_alpha=0.4", "entropy_adv_kappa=2.0"],
    "Adv. Reweighting": ["adv_reweight_alpha=0.1"],
}
SECTION_15 = ["data.train_batch_size=512", "actor_rollout_ref.actor.ppo_mini_batch_size=32",
              "actor_rollout_ref.rollout.n=16", "data.max_prompt_length=1024", "data.max_response_length=7168",
              "'actor_rollout_ref.actor.optim.betas=[0.9,0.95]'", "actor_rollout_ref.actor.optim.lr=4.63e-07",
              "actor_rollout_ref.actor.optim.lr_scheduler_type=constant", "actor_rollout_ref.actor.use_kl_loss=False",
              "algorithm.use_kl_in_reward=False", "actor_rollout_ref.rollout.val_kwargs.n=32",
              "actor_rollout_ref.rollout.val_kwargs.temperature=0.6", "actor_rollout_ref.rollout.val_kwargs.top_p=0.95",
              "actor_rollout_ref.rollout.name=vllm", "trainer.resume_mode=auto", "trainer.n_gpus_per_node=8"]


def test_a100_dry_run_shows_table_4_and_section_15_for_every_trial(tmp_path):
    result = runner.invoke(app, ["compare", "--baselines", "all", "--profile", "a100", "--scale", "7b", "--dry-run",
                                 "--root", str(tmp_path)], terminal_width=2000)
    assert result.exit_code == 0, result.output
    blocks = result.output.split("\n\n")[1:]
    seen = set()
    for block in blocks:
        label = next((name for name in TABLE_4_7B if f"({name}, seed 0;" in block), None)
        if label is None:
            continue
        seen.add(label)
        assert "8 GPU(s)" in block and "A100-hours" in block
        for expected in TABLE_4_7B[label] + SECTION_15:
            assert expected in block, (label, expected)
    assert seen == set(TABLE_4_7B)
    assert "total: 9 trials x 8 GPUs" in result.output


@pytest.mark.parametrize("args, trials, gpus", [
    (["compare", "--baselines", "all", "--scale", "1.5b"], 9, 8),
    (["compare", "--baselines", "all", "--scale", "7b"], 9, 8),
    (["sweep", "alpha-beta", "--scale", "7b"], 8, 8),
    (["compare", "--baselines", "grpo", "--scale", "14b"], 2, 16),
])
def test_the_paper_matrix_dry_runs_with_gpus_and_gpu_hours(args, trials, gpus):
    result = runner.invoke(app, [*args, "--profile", "a100", "--dry-run"], terminal_width=2000)
    assert result.exit_code == 0, result.output
    assert result.output.count("python -m verl.trainer.main_ppo") == trials
    assert f"total: {trials} trials x {gpus} GPUs, est." in result.output


def test_resume_point_skips_a_checkpoint_whose_step_was_never_logged(tmp_path):
    from orchestrator.store import resume_point
    from tests.standin_job import save_checkpoint

    ckpt = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(ckpt, step)  # verl's layout (tests/test_reliability.py checks it against verl's source)
    tracker = ckpt / "latest_checkpointed_iteration.txt"
    assert resume_point(ckpt, {0, 1, 2}) == 2 and tracker.read_text() == "2"
    # killed after saving step 2 but before logging it: verl must redo step 2, from the step-1 checkpoint
    assert resume_point(ckpt, {0, 1}) == 1 and tracker.read_text() == "1"
    tracker.write_text("1")
    assert resume_point(ckpt, {0}) == 0 and tracker.read_text() == "0"  # nothing usable: verl starts over
    assert resume_point(tmp_path / "none", set()) == 0


def test_worker_start_warnings_are_dropped_from_the_driver_console(capsys):
    import ray._private.worker as ray_worker

    from orchestrator.verl_bridge.patches import install_driver_patches

    original = ray_worker.print_to_stdstream
    try:
        install_driver_patches()
        install_driver_patches()  # idempotent
        assert ray_worker.print_to_stdstream.__wrapped__ is original
        emit = ray_worker.print_to_stdstream
        emit({"lines": ["WARNING: 8 PYTHON worker processes have been started on node: x"], "pid": "raylet",
              "is_err": False}, ignore_prefix=False)
        emit({"lines": ["a real error from the raylet"], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    finally:
        ray_worker.print_to_stdstream = original
    out = capsys.readouterr().out
    assert "a real error from the raylet" in out and "PYTHON worker processes" not in out
