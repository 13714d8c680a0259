"""`maspo compare --profile a100 --rehearse` for real: one algorithm (MASPO, the 1.5B Table 4 row), 2 steps, on a
private local Ray. The rehearsal stops the trial after its first checkpoint and Tune retries it (one trial, two verl
starts), so one run covers: the a100 overrides that are not device-bound reached verl unchanged (read back from the
resolved config verl gives its W&B logger, and from the job's entrypoint), a checkpoint under
<checkpoint_root>/<trial hash> and a retry that resumed from it, validation keys with the six benchmark names, and
`maspo results` with the paper's 1.5B rows."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from orchestrator.data_prepare import VALIDATION_NAMES
from orchestrator.rehearsal import DEVICE_BOUND, VAL_N, a100_overrides, key_of, override_mismatches, resolved_config
from orchestrator.scales import checkpoint_dir, render_a100_overrides
from orchestrator.store import ExperimentDir

pytestmark = pytest.mark.slow

SPEC = """kind: compare
name: rehearsal-one
reference: maspo
hyperparameters:
  "1.5b":
    maspo: {sigma_base: 1.0, alpha: 0.5, beta: 0.03}
"""


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    """(experiment dir, completed process) of one rehearsed trial."""
    root = tmp_path_factory.mktemp("rehearsal")
    spec = root / "one.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "COLUMNS": "200", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "compare", "--spec", str(spec), "--profile", "a100",
                           "--scale", "1.5b", "--rehearse", "--root", str(root), "--name", "rehearsal"],
                          capture_output=True, text=True, timeout=1800, env=env, cwd=root)
    return root / "rehearsal", done


@pytest.fixture(scope="module")
def trial(rehearsed):
    exp_dir, done = rehearsed
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-4000:]
    plan = ExperimentDir(exp_dir).plan()
    assert plan.rehearse and len(plan.trials) == 1
    return plan, plan.trials[0], exp_dir / "trials" / plan.trials[0].name


def test_the_rehearsal_lists_what_it_replaced_and_ends_with_every_check_ok(rehearsed):
    exp_dir, done = rehearsed
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-4000:]
    text = done.stdout
    assert "a REHEARSAL of the a100 profile on CPU" in text
    for key in DEVICE_BOUND:
        assert key in text, key
    assert "what the rehearsal tested" in text and "FAILED" not in text.split("what the rehearsal tested")[1]
    assert "Trial task failed" not in text + done.stderr  # the drill is planned: no error log from Tune for it


def test_every_device_free_a100_override_reached_verl_unchanged(trial):
    plan, planned, trial_dir = trial
    expected = render_a100_overrides(planned.trial.algorithm, planned.trial.params, planned.trial.seed,
                                     planned.trial.profile, experiment_name=planned.name,
                                     trial_hash=planned.trial.stable_hash())
    assert expected == a100_overrides(planned)
    free = [o for o in expected if key_of(o) not in DEVICE_BOUND]
    assert len(free) > 40
    # the job was submitted with each of them verbatim ...
    entrypoint = shlex.split(json.loads((trial_dir / "trial.json").read_text())["entrypoint"])
    assert [o for o in entrypoint if o in free] == free
    # ... and verl ran with each value (its resolved config, as it gave it to W&B)
    config = resolved_config(trial_dir)
    assert config is not None and override_mismatches(expected, config) == []
    actor, model = config["actor_rollout_ref"]["actor"], config["actor_rollout_ref"]["model"]
    assert actor["use_dynamic_bsz"] is True and model["use_remove_padding"] is True
    assert model["enable_gradient_checkpointing"] is True and actor["strategy"] == "fsdp2"
    assert config["data"]["truncation"] == "error" and config["data"]["filter_overlong_prompts"] is True
    assert config["reward"]["custom_reward_function"]["path"].endswith("orchestrator/rewards.py")
    assert actor["policy_loss"]["loss_mode"] == "maspo" and actor["policy_loss"]["maspo_alpha"] == 0.5
    # what was replaced is the rehearsal's
    assert config["actor_rollout_ref"]["rollout"]["name"] == "hf" and config["trainer"]["n_gpus_per_node"] == 1
    assert config["trainer"]["device"] == "cpu"
    assert actor["ppo_max_token_len_per_gpu"] == config["data"]["max_prompt_length"] + config["data"]["max_response_length"]


def test_a_checkpoint_was_saved_and_the_retry_resumed_from_it(trial):
    plan, planned, trial_dir = trial
    ckpt = checkpoint_dir(planned.trial.profile, planned.trial.stable_hash())
    assert ckpt == trial_dir.parents[1] / "checkpoints" / planned.trial.stable_hash()
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (ckpt / "global_step_2" / "actor").is_dir()
    status = json.loads((trial_dir / "status.json").read_text())
    first, second = status["attempts"]
    assert first["job_status"] == "STOPPED" and first["resume_drill"] == 1
    assert second["job_status"] == "SUCCEEDED" and second["resumed_from_step"] == 1
    retry = _records(trial_dir / "attempts" / "2" / "metrics.jsonl")
    assert min(r["step"] for r in retry) == 1 and max(r["step"] for r in retry) == 2
    assert f"Resuming from {ckpt}/global_step_1" in (trial_dir / "attempts" / "2" / "job.log").read_text()
    assert [r["step"] for r in _records(trial_dir / "metrics.jsonl")] == [0, 1, 2]


def test_the_validation_keys_carry_the_six_benchmark_names(trial):
    plan, planned, trial_dir = trial
    for record in _records(trial_dir / "metrics.jsonl"):  # test_freq 1: validation at every step
        for name in VALIDATION_NAMES:
            for metric in (f"mean@{VAL_N}", f"best@{VAL_N}/mean", f"pass@{VAL_N}"):
                assert f"val-core/{name}/acc/{metric}" in record["data"], (record["step"], name, metric)
        sources = {k.split("/")[1] for k in record["data"] if k.startswith("val-core/")}
        assert sources == {*VALIDATION_NAMES, "average"}
    trained = [r["data"] for r in _records(trial_dir / "metrics.jsonl") if r["step"] > 0]
    assert all(d["critic/score/min"] >= -1.0 and d["critic/score/max"] <= 1.0 for d in trained)  # rewards.py: +-1


def test_results_show_the_papers_rows_beside_the_rehearsal(rehearsed, trial):
    exp_dir, _ = rehearsed
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "results", "rehearsal", "--root",
                          str(exp_dir.parent), "--json", str(exp_dir / "results.json")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "220"})
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "REHEARSAL" in text and "paper T1 MASPO" in text and "paper T1 GRPO" not in text
    for name in ("AIME24", "AIME25", "AMC23", "MATH500", "Minerva", "Olympiad"):
        assert name in text, name
    assert "41.0 / 74.8" in text  # the paper's 1.5B MASPO AIME24 (Table 1)
    results = json.loads((exp_dir / "results.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["MASPO"]
    assert results["trials"][0]["attempts"] == 2
