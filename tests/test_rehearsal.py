"""The rehearsal of the a100 profile on CPU (``--rehearse``), without running verl: which overrides it replaces
(exactly the typed device-bound set, every other a100 override classified as device-free and passed through
unchanged), that verl composes and validates the result, its data from the fixtures, its plan and command line.
The real run is tests/test_rehearsal_e2e.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator import rehearsal
from orchestrator.algorithms import names
from orchestrator.cli import app
from orchestrator.data_prepare import FIXTURE_REVISION, SOURCES, VALIDATION_NAMES, train_file, val_files
from orchestrator.rehearsal import (ADDED, DEVICE_BOUND, DEVICE_FREE, Check, key_of, looks_device_bound,
                                    override_mismatches, rehearse_overrides, unclassified)
from orchestrator.scales import A100Profile, render_a100_overrides

pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic")

SCALES = ("1.5b", "7b", "14b")
MODEL = "/models/tiny"
runner = CliRunner()


def rendered(algorithm: str, scale: str, **changes) -> list[str]:
    profile = A100Profile(scale=scale, data_dir="/data/rehearsal", checkpoint_root="/ckpt", **changes)
    return render_a100_overrides(algorithm, None, 3, profile, experiment_name=f"{algorithm}-{scale}",
                                 trial_hash="abc123")


def all_rendered() -> list[tuple[str, str, list[str]]]:
    return [(a, s, rendered(a, s)) for a in names() for s in SCALES]


# --------------------------------------------------------------------------------------------------------
# the classification


def test_every_a100_override_is_either_device_bound_or_device_free():
    assert not set(DEVICE_BOUND) & DEVICE_FREE
    for algorithm, scale, overrides in all_rendered():
        assert unclassified(overrides) == [], (algorithm, scale)
    # with and without the checkpoint cap
    assert unclassified(rendered("maspo", "7b", max_checkpoints_to_keep=None)) == []


def test_a_new_override_that_touches_devices_must_be_classified():
    new = rendered("grpo", "1.5b", extra_overrides=("actor_rollout_ref.rollout.new_gpu_knob=3",))
    assert unclassified(new) == ["actor_rollout_ref.rollout.new_gpu_knob: neither DEVICE_BOUND nor DEVICE_FREE "
                                 "(orchestrator/rehearsal.py): classify it"]
    # the name heuristic catches what would hide in the device-free allowlist
    for key in ("trainer.n_gpus_per_node", "actor_rollout_ref.rollout.tensor_model_parallel_size",
                "actor_rollout_ref.rollout.name", "trainer.nnodes", "trainer.device",
                "actor_rollout_ref.rollout.gpu_memory_utilization", "actor_rollout_ref.model.use_fused_kernels",
                "actor_rollout_ref.actor.fsdp_config.param_offload", "x.cuda_graph"):
        assert looks_device_bound(key), key
    assert [k for k in DEVICE_FREE if looks_device_bound(k)] == []
    assert [k for k in DEVICE_BOUND if DEVICE_BOUND[k].kind == "device" and not looks_device_bound(k)] == []


def test_the_replaced_overrides_are_exactly_the_device_bound_set_and_the_rest_passes_unchanged():
    for algorithm, scale, overrides in all_rendered():
        out, replaced = rehearse_overrides(overrides, MODEL)
        assert [r.key for r in replaced] == list(dict.fromkeys(r.key for r in replaced))
        assert {r.key for r in replaced} == set(DEVICE_BOUND), (algorithm, scale)
        kept = [o for o in overrides if key_of(o) not in DEVICE_BOUND]
        assert [o for o in out if key_of(o) not in DEVICE_BOUND] == kept  # unchanged, in order
        by_key = {key_of(o): o.split("=", 1)[1] for o in out}
        for r in replaced:
            assert by_key[r.key] == r.rehearsal and r.reason and r.kind in ("device", "size", "machine")
            assert (r.a100 is None) == (r.key in ADDED)
            assert r.a100 is not None or DEVICE_BOUND[r.key].cluster_default is not None
        assert by_key["actor_rollout_ref.rollout.name"] == "hf" and by_key["trainer.device"] == "cpu"
        assert by_key["trainer.n_gpus_per_node"] == "1" and by_key["trainer.nnodes"] == "1"
        assert by_key["actor_rollout_ref.rollout.tensor_model_parallel_size"] == "1"
        assert by_key["actor_rollout_ref.model.path"] == MODEL
        assert by_key["actor_rollout_ref.model.override_config.attn_implementation"] == "sdpa"
        assert int(by_key["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"]) == \
            int(by_key["data.max_prompt_length"]) + int(by_key["data.max_response_length"])


def test_what_the_rehearsal_keeps_is_what_the_issue_names():
    keep = ("actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.model.use_remove_padding",
            "actor_rollout_ref.model.enable_gradient_checkpointing", "data.train_files", "data.val_files",
            "reward.custom_reward_function.path", "trainer.default_local_dir", "trainer.resume_mode",
            "trainer.experiment_name", "trainer.project_name", "trainer.logger", "data.truncation",
            "data.max_prompt_length", "actor_rollout_ref.actor.strategy")
    assert set(keep) <= DEVICE_FREE


def test_verl_composes_and_validates_the_rehearsal_and_the_cluster_defaults_are_verls():
    from omegaconf import OmegaConf

    from orchestrator.verl_bridge.compose import compose_trainer_config, validate_trainer_config

    cluster = compose_trainer_config(rendered("bapo", "14b"))
    for key in ADDED:
        default = DEVICE_BOUND[key].cluster_default
        value = OmegaConf.select(cluster, key)
        if key.endswith("attn_implementation"):  # not in the yaml: HFModelConfig's default when unset
            import inspect

            from verl.workers.config import model

            assert value is None and f'get("attn_implementation", "{default}")' in inspect.getsource(model)
        else:
            assert str(value) == default, key
    out, _ = rehearse_overrides(rendered("bapo", "14b"), MODEL)
    config = compose_trainer_config(out)
    validate_trainer_config(config)  # verl accepts the rehearsal's sizes (dynamic batches, 1 GPU, mini-batch 1)
    assert config.trainer.n_gpus_per_node == 1 and config.actor_rollout_ref.rollout.name == "hf"
    assert config.actor_rollout_ref.actor.use_dynamic_bsz is True and config.actor_rollout_ref.model.use_remove_padding


# --------------------------------------------------------------------------------------------------------
# reading back what verl ran with


def test_override_mismatches_compare_values_as_verl_resolves_them():
    config = {"data": {"train_files": ["/d/train.parquet"], "max_prompt_length": 1024, "truncation": "error"},
              "actor_rollout_ref": {"actor": {"optim": {"lr": 1e-06, "betas": [0.9, 0.95]}, "use_dynamic_bsz": True,
                                              "policy_loss": {"maspo_alpha": 0.5}}},
              "trainer": {"experiment_name": "a b'c"}}
    overrides = ["data.train_files=['/d/train.parquet']", "data.max_prompt_length=1024", "data.truncation=error",
                 "actor_rollout_ref.actor.optim.lr=1e-06", "actor_rollout_ref.actor.optim.betas=[0.9,0.95]",
                 "actor_rollout_ref.actor.use_dynamic_bsz=True", "+actor_rollout_ref.actor.policy_loss.maspo_alpha=0.5",
                 "trainer.experiment_name='a b\\'c'", "trainer.n_gpus_per_node=8"]  # device-bound: not compared
    assert override_mismatches(overrides, config) == []
    config["actor_rollout_ref"]["actor"]["use_dynamic_bsz"] = False
    config["data"]["max_prompt_length"] = 512
    del config["data"]["truncation"]
    assert override_mismatches(overrides, config) == [
        "data.max_prompt_length: rendered 1024, verl ran 512", "data.truncation: not in verl's config",
        "actor_rollout_ref.actor.use_dynamic_bsz: rendered True, verl ran False"]


def test_the_drill_stops_the_first_trial_once_after_a_logged_checkpoint(tmp_path):
    plan = _plan(tmp_path)
    first, second = plan.trials
    assert rehearsal.should_drill(plan, first, 1)
    assert not rehearsal.should_drill(plan, first, 2) and not rehearsal.should_drill(plan, second, 1)
    ckpt = tmp_path / "ckpt"
    assert rehearsal.drill_step(ckpt, {0}, 2) is None
    ckpt.mkdir()
    (ckpt / "latest_checkpointed_iteration.txt").write_text("1")
    assert rehearsal.drill_step(ckpt, {0}, 2) is None  # saved, not yet logged
    assert rehearsal.drill_step(ckpt, {0, 1}, 2) == 1
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    assert rehearsal.drill_step(ckpt, {0, 1, 2}, 2) is None  # the last step: nothing left to resume
    one_step = _plan(tmp_path, "--steps", "1")
    assert not rehearsal.should_drill(one_step, one_step.trials[0], 1)


# --------------------------------------------------------------------------------------------------------
# the plan and the command line


def _plan(tmp_path, *extra: str):
    from orchestrator.cli.common import Grid, Profile, Scale, Scheduler
    from orchestrator.cli.experiments import _plan as plan_of

    steps = int(extra[extra.index("--steps") + 1]) if "--steps" in extra else None
    return plan_of("compare", "compare", name="r", profile=Profile.a100, scale=Scale.b1_5, seeds=1, steps=steps,
                   max_concurrent=1, scheduler=Scheduler.fifo, demo=False, grid=Grid.listed, baselines="grpo",
                   profile_set=[], rehearse=True, data=None, root=tmp_path)


def test_the_plan_of_a_rehearsal(tmp_path, monkeypatch):
    monkeypatch.setenv("MASPO_CHECKPOINT_ROOT", "/cluster/ckpt")  # a cluster's setting never reaches a rehearsal
    monkeypatch.setenv("MASPO_DATA_DIR", "/cluster/data")
    plan = _plan(tmp_path)
    assert plan.rehearse and plan.profile == "a100" and plan.slots_per_trial == 1 and plan.gpus_per_trial == 1
    assert plan.steps == rehearsal.DEFAULT_STEPS
    profile = plan.trials[0].trial.profile
    assert profile.scale == "1.5b" and profile.test_freq == rehearsal.DEFAULT_TEST_FREQ
    assert profile.data_dir == str(rehearsal.default_data_dir())
    assert profile.checkpoint_root == str((tmp_path / "r" / "checkpoints").resolve())
    # the trial is the cluster's: same hash as the a100 trial with the same steps (storage is not in the hash)
    from orchestrator.config.trial import trial_config

    cluster = trial_config("maspo", plan.trials[0].trial.hyperparameters, seed=0,
                           profile={"name": "a100", "scale": "1.5b", "steps": 2, "test_freq": 1})
    assert cluster.stable_hash() == plan.trials[0].trial.stable_hash()
    assert _plan(tmp_path, "--steps", "5").steps == 5


def test_dry_run_lists_every_replaced_override_and_the_rehearsals_commands(tmp_path):
    result = runner.invoke(app, ["compare", "--profile", "a100", "--rehearse", "--baselines", "grpo", "--dry-run",
                                 "--root", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "REHEARSAL of the a100 profile" in text
    for key, bound in DEVICE_BOUND.items():
        assert key in text, key
    assert "vllm" in text and "flash_attention_2" in text and "$VERL_PLATFORM" in text
    assert "rehearsed on 1 fake GPU" in text
    assert "actor_rollout_ref.rollout.name=hf" in text and "trainer.device=cpu" in text
    assert "actor_rollout_ref.actor.use_dynamic_bsz=True" in text and "trainer.resume_mode=auto" in text
    assert not (tmp_path / "compare").exists()  # a dry run writes nothing


@pytest.mark.parametrize("args, message", [
    (["--rehearse"], "give --profile a100 too"),
    (["--data", "/tmp"], "--data is the data of a rehearsal"),
    (["--profile", "a100", "--rehearse", "--address", "127.0.0.1:1"], "a rehearsal runs on a private local Ray"),
    (["--profile", "a100", "--rehearse", "--data", "/nonexistent-maspo-data"], "maspo data prepare --fixtures --out"),
])
def test_rehearsal_options_are_checked_before_anything_starts(tmp_path, args, message):
    result = runner.invoke(app, ["compare", "--baselines", "grpo", "--root", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "compare").exists()


# --------------------------------------------------------------------------------------------------------
# data


def test_prepare_fixtures_writes_the_a100_layout_without_network(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setattr("orchestrator.data_prepare.load_rows", lambda *a: pytest.fail("no download"))
    result = runner.invoke(app, ["data", "prepare", "--fixtures", "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert train_file(tmp_path).is_file() and all(p.is_file() for p in val_files(tmp_path))
    manifest = json.loads((tmp_path / "sources.json").read_text())
    assert set(manifest) == set(SOURCES) and {e["revision"] for e in manifest.values()} == {FIXTURE_REVISION}
    assert rehearsal.is_fixture_data(tmp_path)
    assert [pd.read_parquet(p).data_source.unique().tolist() for p in val_files(tmp_path)] == \
        [[n] for n in VALIDATION_NAMES]


def test_every_fixture_prompt_fits_the_a100_prompt_length_in_the_tiny_tokenizer(tmp_path):
    """data.filter_overlong_prompts and data.truncation=error stay as rendered: no fixture row is dropped."""
    import pandas as pd

    from orchestrator.data_prepare import prepare_fixtures
    from orchestrator.local.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    prepare_fixtures(tmp_path)
    limit = A100Profile().max_prompt_length
    for path in [train_file(tmp_path), *val_files(tmp_path)]:
        for prompt in pd.read_parquet(path).prompt:
            text = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
            assert 0 < len(tokenizer(text)["input_ids"]) <= limit, path


def test_the_default_rehearsal_data_is_prepared_and_given_data_must_exist(tmp_path, monkeypatch):
    from orchestrator.errors import UserError

    monkeypatch.setenv("MASPO_CACHE", str(tmp_path / "cache"))
    default = rehearsal.default_data_dir()
    assert rehearsal.ensure_data(default) == default and train_file(default).is_file()
    with pytest.raises(UserError, match="maspo data prepare --fixtures --out"):
        rehearsal.ensure_data(tmp_path / "elsewhere")


def test_a_cluster_run_refuses_the_fixtures_data(tmp_path):
    from orchestrator.data_prepare import prepare_fixtures

    prepare_fixtures(tmp_path / "data")
    result = runner.invoke(app, ["compare", "--profile", "a100", "--baselines", "grpo", "--address", "127.0.0.1:1",
                                 "-P", f"data_dir={tmp_path / 'data'}", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "holds the fixtures' rehearsal data" in " ".join(result.output.split())


def test_tunes_error_log_for_a_drill_is_dropped_and_others_are_kept():
    import logging
    import sys

    rehearsal.quiet_resume_drills()
    rehearsal.quiet_resume_drills()  # idempotent
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    assert sum(isinstance(f, rehearsal._DrillFilter) for f in logger.filters) == 1

    def record(error):
        try:
            raise error
        except Exception:  # noqa: BLE001
            return logging.LogRecord(logger.name, logging.ERROR, __file__, 1, "Trial task failed", None, sys.exc_info())

    assert not logger.filter(record(rehearsal.drill(1)))
    assert logger.filter(record(RuntimeError("a real failure")))
    assert str(rehearsal.drill(3)).startswith("resume drill: the rehearsal stopped this attempt after its checkpoint "
                                              "at step 3;")


def test_checks_table_marks_each_check():
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(rehearsal.checks_table([Check("a", True, "fine"), Check("b", False, "broken")]))
    text = console.export_text()
    assert "ok" in text and "FAILED" in text and "broken" in text
