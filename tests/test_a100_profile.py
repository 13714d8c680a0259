"""The a100 profile: every algorithm x every scale composes against verl 0.9.1's real `ppo_trainer` config,
passes verl's own `validate_config` (with the profile's GPU count, no GPU needed) and carries the paper's
Table 4 values and the project's decisions (docs/algorithms.md#decisions) into the config a verl worker builds.

Speed: Hydra composes verl's config once per scale (the profile's own overrides); each algorithm's overrides
are then applied to a copy with the very function Hydra's compose applies overrides with
(``ConfigLoaderImpl._apply_overrides_to_config``), which takes ~50x less time than a compose. One test checks
that this equals a full compose of the rendered list, and the section-15 test composes the full list per scale.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import pytest
from pydantic import ValidationError

from omegaconf import OmegaConf

from orchestrator.algorithms import names
from orchestrator.scales import (
    MEAN_PROMPT_TOKENS, MEAN_RESPONSE_TOKENS, SCALE_PRESETS, TRAIN_MFU, A100Profile, a100_job_env, base_overrides,
    checkpoint_dir, estimate_cost, gpu_hours, gpus_of, missing_data_files, render_a100_overrides,
)
from orchestrator.verl_bridge.compose import actor_config_of, compose_trainer_config, validate_trainer_config

pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic")  # verl's note for GRPO, every compose

SCALES = ("1.5b", "7b", "14b")
MODELS = {s: f"deepseek-ai/DeepSeek-R1-Distill-Qwen-{s[:-1].upper()}B" for s in SCALES}
LR = {"1.5b": 1.0e-6, "7b": 4.63e-7, "14b": 3.27e-7}  # Table 4
GPUS = {"1.5b": (1, 8), "7b": (1, 8), "14b": (2, 8)}  # (nodes, GPUs per node)
BAPO = {"rho0": 0.4, "c_high_start": 1.2, "c_high_max": 3.0, "c_low_start": 0.6, "c_low_max": 0.9,
        "delta_high": 0.05, "delta_low": 0.02}
# Table 4's hyperparameters per scale, as the paper writes them; an algorithm Table 4 has no row for at a scale
# runs with its defaults (the 1.5B row).
TABLE4 = {
    "1.5b": {"grpo": {"eps": 0.2}, "entropy_reg": {"entropy_coeff": 0.01},
             "clip_higher": {"eps_low": 0.2, "eps_high": 0.265}, "adv_reweight": {"alpha": 0.1},
             "entropy_adv": {"alpha": 0.4, "kappa": 2.0}, "dac": {"eps_low": 0.2, "eps_high": 0.2}, "bapo": BAPO,
             "sapo": {"tau_neg": 1.05, "tau_pos": 1.0}, "maspo": {"sigma_base": 1.0, "alpha": 0.5, "beta": 0.03}},
    "7b": {"grpo": {"eps": 0.2}, "clip_higher": {"eps_low": 0.2, "eps_high": 0.265}, "adv_reweight": {"alpha": 0.1},
           "entropy_adv": {"alpha": 0.4, "kappa": 2.0}, "dac": {"eps_low": 0.2, "eps_high": 0.2}, "bapo": BAPO,
           "sapo": {"tau_neg": 1.05, "tau_pos": 1.0}, "maspo": {"sigma_base": 1.0, "alpha": 0.3, "beta": 0.03}},
    "14b": {"grpo": {"eps": 0.2}, "maspo": {"sigma_base": 1.0, "alpha": 0.5, "beta_low": 0.03, "beta_high": 0.03}},
}
CLIP = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0}


def expected_actor(algorithm: str, scale: str) -> dict:
    """What the typed worker-side actor config must hold, written from the paper (not from the code)."""
    maspo_alpha = {"1.5b": 0.5, "7b": 0.3, "14b": 0.5}[scale]
    return {
        "grpo": {"policy_loss.loss_mode": "vanilla", **CLIP},
        "clip_higher": {"policy_loss.loss_mode": "vanilla", **CLIP, "clip_ratio_high": 0.265},
        "entropy_reg": {"policy_loss.loss_mode": "vanilla", **CLIP, "entropy_coeff": 0.01},
        "adv_reweight": {"policy_loss.loss_mode": "adv_reweight", **CLIP, "policy_loss.adv_reweight_alpha": 0.1},
        "entropy_adv": {"policy_loss.loss_mode": "entropy_adv", **CLIP, "policy_loss.entropy_adv_alpha": 0.4,
                        "policy_loss.entropy_adv_kappa": 2.0, "calculate_entropy": True},
        "dac": {"policy_loss.loss_mode": "dac", **CLIP, "policy_loss.dac_high_cap": 10.0},
        "bapo": {"policy_loss.loss_mode": "bapo", **{f"policy_loss.bapo_{k}": v for k, v in BAPO.items()},
                 "policy_loss.bapo_reading": "grad_mass"},
        "sapo": {"policy_loss.loss_mode": "sapo", "tau_pos": 1.0, "tau_neg": 1.05,
                 "loss_agg_mode": "seq-mean-token-mean"},
        "sapo_unilateral": {"policy_loss.loss_mode": "sapo_unilateral", "tau_pos": 1.0, "tau_neg": 1.05,
                            "loss_agg_mode": "seq-mean-token-mean"},
        "maspo": {"policy_loss.loss_mode": "maspo", "policy_loss.maspo_sigma_base": 1.0,
                  "policy_loss.maspo_alpha": maspo_alpha, "policy_loss.maspo_beta_low": 0.03,
                  "policy_loss.maspo_beta_high": 0.03},
    }[algorithm]


def profile_for(scale: str, **changes) -> A100Profile:
    return A100Profile(**{"scale": scale, "data_dir": "/shared/maspo data", "checkpoint_root": "/shared/ckpt",
                          **changes})


def rendered(algorithm: str, scale: str) -> list[str]:
    return render_a100_overrides(algorithm, TABLE4[scale].get(algorithm, {}), 7, profile_for(scale),
                                 experiment_name=f"{algorithm}-{scale}-s7", trial_hash="abc123")


@lru_cache(maxsize=None)
def scale_config(scale: str):
    """verl's config with the profile's own overrides for ``scale``: one Hydra compose per scale."""
    return compose_trainer_config(base_overrides(profile_for(scale), 7, experiment_name=f"maspo-{scale}-s7",
                                                 trial_hash="abc123"))


def hydra_apply(config, overrides: list[str]):
    """``overrides`` applied to a copy of ``config`` the way Hydra's compose applies them."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = copy.deepcopy(config)
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(overrides), config)
    return config


@lru_cache(maxsize=None)
def composed(algorithm: str, scale: str):
    """verl's config for one (algorithm, scale): the scale's composed config plus the algorithm's overrides."""
    overrides = rendered(algorithm, scale)
    base = base_overrides(profile_for(scale), 7, experiment_name=f"{algorithm}-{scale}-s7", trial_hash="abc123")
    assert overrides[:len(base)] == base  # the profile's settings first, then the algorithm's
    return hydra_apply(scale_config(scale), overrides[len(base):] + [f"trainer.experiment_name={algorithm}-{scale}-s7"])


def test_the_shortcut_equals_a_full_compose():
    for algorithm, scale in (("bapo", "7b"), ("entropy_reg", "14b")):
        full = compose_trainer_config(rendered(algorithm, scale))
        assert OmegaConf.to_container(full) == OmegaConf.to_container(composed(algorithm, scale))


def attr(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("algorithm", names())
def test_every_algorithm_at_every_scale_passes_verl_and_carries_table_4(algorithm, scale):
    config = composed(algorithm, scale)
    validate_trainer_config(config)  # verl's own checks, with the profile's nodes x GPUs
    actor = actor_config_of(config)  # the typed config a worker builds
    expected = {"loss_agg_mode": "token-mean", "entropy_coeff": 0, "use_kl_loss": False, "ppo_epochs": 1,
                "optim.lr": LR[scale], "optim.betas": [0.9, 0.95], **expected_actor(algorithm, scale)}
    for key, value in expected.items():
        got = attr(actor, key)
        got = list(got) if isinstance(value, list) else got
        assert got == (pytest.approx(value) if isinstance(value, float) else value), (key, got, value)
    nodes, per_node = GPUS[scale]
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (nodes, per_node)
    assert config.actor_rollout_ref.model.path == MODELS[scale]


@pytest.mark.parametrize("scale", SCALES)
def test_section_15_settings_reach_verls_config(scale):
    c = compose_trainer_config(rendered("maspo", scale))  # the full rendered list, composed by Hydra
    validate_trainer_config(c)
    a, r, t, d = c.actor_rollout_ref.actor, c.actor_rollout_ref.rollout, c.trainer, c.data
    # batch, group, lengths
    assert (d.train_batch_size, a.ppo_mini_batch_size, r.n, a.ppo_epochs) == (512, 32, 16, 1)
    assert (d.max_prompt_length, d.max_response_length) == (1024, 7168)
    assert (r.prompt_length, r.response_length) == (1024, 7168)
    # sampling
    assert (r.temperature, r.top_p, r.top_k) == (1.0, 1.0, -1)
    v = r.val_kwargs
    assert (v.n, v.do_sample, v.temperature, v.top_p, v.top_k) == (32, True, 0.6, 0.95, -1)
    # optimiser: AdamW (0.9, 0.95), weight decay 0.01, constant LR, no warm-up; no KL anywhere
    o = a.optim
    assert (o.optimizer, list(o.betas), o.weight_decay, o.lr) == ("AdamW", [0.9, 0.95], 0.01, LR[scale])
    assert (o.lr_scheduler_type, o.lr_warmup_steps, o.lr_warmup_steps_ratio) == ("constant", 0, 0.0)
    assert (a.use_kl_loss, a.kl_loss_coef, c.algorithm.use_kl_in_reward, c.algorithm.kl_ctrl.kl_coef) == (
        False, 0.0, False, 0.0)
    assert c.algorithm.adv_estimator == "grpo"
    # FSDP actor, vLLM rollout, dynamic micro-batches that hold a whole sequence
    preset = SCALE_PRESETS[scale]
    assert (a.strategy, r.name, r.tensor_model_parallel_size) == ("fsdp2", "vllm", preset.rollout_tp)
    assert a.use_dynamic_bsz and a.ppo_max_token_len_per_gpu >= 8192 and r.log_prob_use_dynamic_bsz
    # reward: maspo's grader by path and name
    assert c.reward.custom_reward_function.path == str(Path("orchestrator/rewards.py").resolve())
    assert c.reward.custom_reward_function.name == "compute_score"
    # data: the prepared files, validation in the paper's order
    assert list(d.train_files) == ["/shared/maspo data/train.parquet"]
    assert [Path(f).name for f in d.val_files] == [f"val_{n}.parquet" for n in
                                                   ("aime24", "aime25", "amc23", "math500", "minerva", "olympiad")]
    # schedule, loggers, checkpoints at every validation under <root>/<trial hash>, resume from the newest
    assert (t.total_training_steps, t.test_freq, t.save_freq, t.val_before_train) == (500, 20, 20, True)
    assert (t.resume_mode, t.default_local_dir, t.max_actor_ckpt_to_keep) == ("auto", "/shared/ckpt/abc123", 2)
    assert list(t.logger) == ["console", "file", "wandb"]
    assert (t.experiment_name, t.project_name, t.device) == (f"maspo-{scale}-s7", "maspo-a100", "cuda")
    assert (d.seed, a.fsdp_config.seed, r.seed) == (7, 7, 7)


def test_extra_overrides_come_last_and_win():
    profile = profile_for("14b", extra_overrides=("actor_rollout_ref.actor.fsdp_config.param_offload=True",
                                                  "actor_rollout_ref.rollout.gpu_memory_utilization=0.5"))
    overrides = render_a100_overrides("grpo", None, 0, profile, experiment_name="x", trial_hash="h")
    assert overrides[-2:] == list(profile.extra_overrides)
    config = compose_trainer_config(overrides)
    assert config.actor_rollout_ref.actor.fsdp_config.param_offload is True
    assert config.actor_rollout_ref.rollout.gpu_memory_utilization == 0.5


def test_nothing_cpu_specific_is_rendered():
    overrides = render_a100_overrides("maspo", None, 0, profile_for("7b"), experiment_name="x", trial_hash="h")
    joined = "\n".join(overrides)
    for cpu_only in ("trainer.device=cpu", "rollout.name=hf", "ray_kwargs", "transfer_queue", "attn_implementation",
                     "mixed_precision", "num_gpus"):
        assert cpu_only not in joined, cpu_only
    env = a100_job_env("/shared/exp/metrics.jsonl", environ={
        "NCCL_IB_HCA": "mlx5_0", "NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0", "HF_HOME": "/shared/hf",
        "WANDB_API_KEY": "secret", "HF_TOKEN": "secret", "PATH": "/bin"})
    assert env["VERL_FILE_LOGGER_PATH"] == "/shared/exp/metrics.jsonl"
    assert {k: env[k] for k in ("NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "HF_HOME")} == {
        "NCCL_IB_HCA": "mlx5_0", "NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0", "HF_HOME": "/shared/hf"}
    for absent in ("WANDB_API_KEY", "HF_TOKEN", "PATH", "VERL_PLATFORM", "VERL_ENGINE_DEVICE", "RAY_ADDRESS",
                   "OMP_NUM_THREADS"):
        assert absent not in env, absent


# --- the profile model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_scale_presets_fill_the_profile(scale):
    p = A100Profile(scale=scale)
    nodes, per_node = GPUS[scale]
    assert (p.model_path, p.lr, p.gpus_per_trial, p.nodes_per_trial) == (MODELS[scale], LR[scale], nodes * per_node,
                                                                         nodes)
    assert gpus_of(p) == nodes * per_node and p.slots == nodes
    assert A100Profile.model_validate(p.model_dump()) == p  # a dumped profile says everything and reloads


def test_user_values_beat_the_preset():
    p = A100Profile(scale="7b", model_path="/models/r1-7b", lr=1e-6, nodes_per_trial=2)
    assert (p.model_path, p.lr, p.gpus_per_trial, p.nodes_per_trial) == ("/models/r1-7b", 1e-6, 16, 2)
    assert A100Profile(scale="1.5b", gpus_per_trial=32).nodes_per_trial == 4
    assert A100Profile(scale="1.5b", nodes_per_trial="2").gpus_per_trial == 16  # CLI strings are coerced first


@pytest.mark.parametrize("changes, message", [
    ({"gpus_per_trial": 12}, "gpus_per_trial=12 must be a multiple of 8"),
    ({"gpus_per_trial": 16, "nodes_per_trial": 1}, "nodes_per_trial=1 does not match gpus_per_trial=16"),
    ({"rollout_tp": 3}, "rollout_tp=3 must divide the 8 GPUs"),
    ({"ppo_mini_batch_size": 48}, "must be a multiple of ppo_mini_batch_size=48"),
    ({"ppo_max_token_len_per_gpu": 4096}, "must hold one whole sequence"),
    ({"scale": "70b"}, "Input should be '1.5b', '7b' or '14b'"),
    ({"gpu": 8}, "Extra inputs are not permitted"),
])
def test_profile_mistakes_are_named(changes, message):
    with pytest.raises(ValidationError) as info:
        A100Profile(**changes)
    assert message in str(info.value)


def test_the_profile_is_frozen_and_reads_its_storage_from_the_environment(monkeypatch):
    monkeypatch.setenv("MASPO_DATA_DIR", "/lustre/data")
    monkeypatch.setenv("MASPO_CHECKPOINT_ROOT", "/lustre/ckpt")
    p = A100Profile()
    assert (p.data_dir, p.checkpoint_root) == ("/lustre/data", "/lustre/ckpt")
    assert checkpoint_dir(p, "f00") == Path("/lustre/ckpt/f00")
    with pytest.raises(ValidationError):
        p.steps = 3


def test_gpu_hours_is_gpus_times_steps_times_seconds():
    p = A100Profile(scale="14b", steps=100)
    assert gpu_hours(p, seconds_per_step=36.0) == pytest.approx(16 * 100 * 36 / 3600)
    assert gpu_hours(p) == pytest.approx(estimate_cost(p).gpu_hours)
    assert gpu_hours(A100Profile(scale="1.5b"), steps=500, seconds_per_step=3600) == pytest.approx(4000.0)
    with pytest.raises(ValueError):
        gpu_hours(p, steps=-1)


def test_the_cost_is_derived_from_tokens_and_a100_throughput():
    """The 7B step by hand, from the constants in orchestrator/scales.py (docs/orchestration.md#cost)."""
    p = A100Profile(scale="7b")
    c = estimate_cost(p)
    shape = SCALE_PRESETS["7b"].shape
    sequences, length = 512 * 16, MEAN_PROMPT_TOKENS + MEAN_RESPONSE_TOKENS
    assert c.train_tokens_per_step == sequences * length and c.rollout_tokens_per_step == sequences * 4500
    attention = 2 * 28 * (length / 2) * 28 * 128
    flops = (8 * shape.matmul_params + 4 * attention) * sequences * length  # update 6N, old log-probs 2N
    assert c.train_s == pytest.approx(flops / (8 * 312e12 * TRAIN_MFU))
    # the KV cache of a TP2 engine holds a few hundred 2,450-token sequences; the step is memory-bound
    assert 300 < c.decode.batch < 1024 and c.decode.memory_bound
    assert c.rollout_s > sequences * 4500 / (8 * c.decode.tokens_per_s_per_gpu)  # plus the long tail
    assert c.validations == 26  # before training, every 20 steps, and step 500 is one of them
    assert c.gpu_hours == pytest.approx(8 * (500 * c.seconds_per_step + 26 * c.validation_s) / 3600)
    # what the model says, in round numbers (docs/orchestration.md#cost): training dominates from 7B on
    assert 2000 < c.train_s < 2600 and 600 < c.rollout_s < 1000
    assert [round(estimate_cost(A100Profile(scale=s)).seconds_per_step, -2) for s in SCALES] == [900, 3100, 3700]


def test_the_cost_follows_the_profile():
    base = estimate_cost(A100Profile(scale="1.5b"))
    assert estimate_cost(A100Profile(scale="1.5b", n_samples=8)).train_s == pytest.approx(base.train_s / 2)
    assert estimate_cost(A100Profile(scale="1.5b", steps=250)).gpu_hours < 0.55 * base.gpu_hours
    shorter = estimate_cost(A100Profile(scale="1.5b", max_response_length=2048, ppo_max_token_len_per_gpu=4096))
    assert shorter.rollout_tokens_per_step == 512 * 16 * 2048  # the mean is capped by the maximum
    assert estimate_cost(A100Profile(scale="14b")).gpus == 16


def test_missing_data_files_lists_what_data_prepare_must_write(tmp_path):
    p = A100Profile(data_dir=str(tmp_path))
    assert [f.name for f in missing_data_files(p)][:2] == ["train.parquet", "val_aime24.parquet"]
    for f in missing_data_files(p):
        f.write_bytes(b"")
    assert missing_data_files(p) == []


def test_quoted_paths_survive_hydra():
    profile = profile_for("1.5b", checkpoint_root="/mnt/it's here", model_path="/models/my model")
    config = compose_trainer_config(render_a100_overrides("grpo", None, 0, profile, experiment_name="a,b=c",
                                                          trial_hash="h1"))
    assert config.trainer.default_local_dir == "/mnt/it's here/h1"
    assert config.actor_rollout_ref.model.path == "/models/my model"
    assert config.trainer.experiment_name == "a,b=c"
