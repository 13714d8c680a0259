"""The ``a100`` profile: the paper's models at 1.5B, 7B and 14B on 8x A100 nodes, rendered to verl overrides.

A trial on this profile is verl's own ``python -m verl.trainer.main_ppo`` with an FSDP actor and vLLM rollout,
run as one Ray Job on ``gpus_per_trial`` GPUs (``nodes_per_trial`` whole 8-GPU nodes). Every setting of the
paper's Table 4 and of docs/algorithms.md#decisions is a typed field of :class:`A100Profile` whose default is the
value those sources give; the scale preset (:data:`SCALE_PRESETS`) fills the model, the learning rate and the
parallelism knobs. ``render_a100_overrides(...)`` gives the FULL list of Hydra overrides (base settings, then
the algorithm's own, then the profile's ``extra_overrides``; on a repeated key the last one wins) and
``a100_job_env(...)`` the job's environment::

    profile = A100Profile(scale="7b", data_dir="/shared/maspo-data", checkpoint_root="/shared/ckpt")
    overrides = render_a100_overrides("maspo", {"alpha": 0.3}, 0, profile,
                                      experiment_name="maspo-a0.3-s0", trial_hash=trial.stable_hash())
    entrypoint = "python -m verl.trainer.main_ppo " + " ".join(map(shlex.quote, overrides))
    runtime_env = {"env_vars": a100_job_env("/shared/exp/trials/x/attempts/1/metrics.jsonl")}

Which values are the paper's and which are this project's decisions (docs/algorithms.md#decisions) is said per field.
``data_dir`` and ``checkpoint_root`` must be on storage every node sees; they default to ``$MASPO_DATA_DIR``
and ``$MASPO_CHECKPOINT_ROOT`` (the Slurm template exports both), else ``~/maspo-data`` / ``~/maspo-checkpoints``.
The parallelism knobs (rollout tensor parallelism, vLLM memory share, token budget per GPU) are not in the
paper: they are starting points sized for A100 80GB, overridable per field or with ``extra_overrides``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scale = Literal["1.5b", "7b", "14b"]
GPUS_PER_NODE = 8  # the cluster's nodes: 8x A100 80GB, one `verl_slot` each (cluster/README.md)
REWARD_FILE = Path(__file__).resolve().parent / "rewards.py"
REWARD_FUNCTION = "compute_score"
PROJECT_NAME = "maspo-a100"
# Forwarded from the submitting environment into every trial's job, so site network settings (Slurm sbatch,
# cluster setup) reach verl's FSDP and vLLM processes on every node. Never credentials.
FORWARDED_ENV_PREFIXES = ("NCCL_", "GLOO_SOCKET_IFNAME", "HF_HOME", "HF_HUB_OFFLINE", "HF_ENDPOINT")


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model's Hugging Face ``config.json`` (and its safetensors size) that its cost needs."""

    params: float  # every parameter, as stored (the bf16 weights are 2 bytes each)
    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads (grouped-query attention)
    head_dim: int  # hidden_size / num_attention_heads
    vocab: int  # vocab_size

    @property
    def matmul_params(self) -> float:
        """Parameters that take part in a matmul per token: all but the input embedding (a lookup)."""
        return self.params - self.vocab * self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 K and V of one token in every layer: what vLLM's KV cache holds per token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


@dataclass(frozen=True)
class ScalePreset:
    """What changes with the model size; the cost of a trial follows from it (:func:`estimate_cost`)."""

    model: str  # Hugging Face id (a local path can replace it through A100Profile.model_path)
    lr: float  # Table 4
    gpus_per_trial: int
    rollout_tp: int  # vLLM tensor parallel size
    gpu_memory_utilization: float  # vLLM's share of each GPU while it generates (freed for training)
    ppo_max_token_len_per_gpu: int  # token budget of one dynamic micro-batch (actor update and log-probs)
    shape: ModelShape


# The three DeepSeek-R1-Distill-Qwen models (Qwen2.5 architecture), from their config.json on the Hub; params is
# the size the Hub shows for their safetensors (1.78B, 7.62B, 14.8B).
SCALE_PRESETS: dict[str, ScalePreset] = {
    "1.5b": ScalePreset("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1.0e-6, 8, 1, 0.7, 32768,
                        ModelShape(1.78e9, 28, 1536, 12, 2, 128, 151936)),
    "7b": ScalePreset("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 4.63e-7, 8, 2, 0.6, 16384,
                      ModelShape(7.62e9, 28, 3584, 28, 4, 128, 152064)),
    "14b": ScalePreset("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", 3.27e-7, 16, 4, 0.6, 16384,
                       ModelShape(14.8e9, 48, 5120, 40, 8, 128, 152064)),
}

_FROM_SCALE = ("lr", "rollout_tp", "gpu_memory_utilization", "ppo_max_token_len_per_gpu")


class A100Profile(BaseModel):
    """The cluster profile: a DeepSeek-R1-Distill-Qwen model, DAPO-Math-17k, six benchmarks, FSDP + vLLM.

    Fields left out (or None) take the scale's preset, so a dumped profile says exactly what ran.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["a100"] = "a100"
    scale: Scale = Field("1.5b", description="model size: 1.5b, 7b or 14b (DeepSeek-R1-Distill-Qwen)")
    model_path: str | None = Field(None, description="HF id or local directory (default: the scale's HF id)")
    lr: float | None = Field(None, gt=0, description="actor learning rate, constant (default: Table 4 for the scale)")
    steps: int = Field(500, ge=1, description="training steps (decision: the paper does not state its count)")
    test_freq: int = Field(20, ge=1, description="validate and checkpoint every N steps, and at the end (decision)")
    # batch and lengths (docs/algorithms.md#decision-batch)
    train_batch_size: int = Field(512, ge=1, description="prompts per step (paper: global batch 512)")
    ppo_mini_batch_size: int = Field(32, ge=1, description="prompts per policy update (paper: 32; 16 updates/step)")
    ppo_epochs: int = Field(1, ge=1, description="passes over each step's batch (decision)")
    n_samples: int = Field(16, ge=2, description="responses per prompt, G (decision)")
    max_prompt_length: int = Field(1024, ge=16, description="prompt tokens (decision: 1024 + 7168 = paper's 8192)")
    max_response_length: int = Field(7168, ge=16, description="response tokens (decision)")
    # sampling (docs/algorithms.md#decision-sampling)
    temperature: float = Field(1.0, gt=0, description="training rollout temperature (decision)")
    top_p: float = Field(1.0, gt=0, le=1, description="training rollout top-p (decision)")
    val_n: int = Field(32, ge=1, description="samples per validation problem: k of Avg@k / Pass@k (paper: 32)")
    val_temperature: float = Field(0.6, gt=0, description="validation temperature (decision)")
    val_top_p: float = Field(0.95, gt=0, le=1, description="validation top-p (decision)")
    # optimiser (paper: AdamW (0.9, 0.95), constant LR, beta_KL = 0; weight decay is verl's default)
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas (paper)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (decision: verl's default)")
    # resources and parallelism (not in the paper; the scale's preset when left out)
    gpus_per_trial: int | None = Field(None, ge=1, description="GPUs of one trial (default 8; 16 for 14b)")
    nodes_per_trial: int | None = Field(None, ge=1, description="8-GPU nodes of one trial (gpus_per_trial / 8)")
    rollout_tp: int | None = Field(None, ge=1, description="vLLM tensor parallel size (1 / 2 / 4 by scale)")
    gpu_memory_utilization: float | None = Field(None, gt=0, lt=1, description="vLLM's GPU memory share")
    ppo_max_token_len_per_gpu: int | None = Field(None, ge=1, description="tokens per dynamic micro-batch")
    # where things are: shared storage every node sees
    data_dir: str = Field(default_factory=lambda: os.environ.get("MASPO_DATA_DIR", "~/maspo-data"),
                          description="where `maspo data prepare` wrote the parquet files ($MASPO_DATA_DIR)")
    checkpoint_root: str = Field(
        default_factory=lambda: os.environ.get("MASPO_CHECKPOINT_ROOT", "~/maspo-checkpoints"),
        description="checkpoints go to <checkpoint_root>/<trial hash>, on shared storage ($MASPO_CHECKPOINT_ROOT)")
    max_checkpoints_to_keep: int | None = Field(
        2, ge=1, description="newest checkpoints kept per trial (None keeps all; a 7B one is ~85 GB)")
    extra_overrides: tuple[str, ...] = Field((), description="more Hydra overrides, applied last (site tuning)")

    @model_validator(mode="after")
    def _resolve_and_check(self) -> A100Profile:
        # fill what was left out from the scale's preset, so the dumped profile says exactly what runs
        resolved = {field: getattr(self.preset, field) for field in _FROM_SCALE if getattr(self, field) is None}
        if self.model_path is None:
            resolved["model_path"] = self.preset.model
        if self.gpus_per_trial is None:
            nodes = self.nodes_per_trial
            resolved["gpus_per_trial"] = nodes * GPUS_PER_NODE if nodes else self.preset.gpus_per_trial
        for field, value in resolved.items():
            object.__setattr__(self, field, value)
        if self.nodes_per_trial is None:
            object.__setattr__(self, "nodes_per_trial", max(1, self.gpus_per_trial // GPUS_PER_NODE))
        gpus, nodes = self.gpus_per_trial, self.nodes_per_trial
        if gpus % GPUS_PER_NODE:
            raise ValueError(f"gpus_per_trial={gpus} must be a multiple of {GPUS_PER_NODE}: a trial takes whole "
                             f"8x A100 nodes (one verl_slot each)")
        if nodes * GPUS_PER_NODE != gpus:
            raise ValueError(f"nodes_per_trial={nodes} does not match gpus_per_trial={gpus}: nodes have "
                             f"{GPUS_PER_NODE} GPUs, so that is {gpus // GPUS_PER_NODE} node(s)")
        if GPUS_PER_NODE % self.rollout_tp:
            raise ValueError(f"rollout_tp={self.rollout_tp} must divide the {GPUS_PER_NODE} GPUs of a node")
        if self.train_batch_size % self.ppo_mini_batch_size:
            raise ValueError(f"train_batch_size={self.train_batch_size} must be a multiple of "
                             f"ppo_mini_batch_size={self.ppo_mini_batch_size}")
        if (self.ppo_mini_batch_size * self.n_samples) % gpus:
            raise ValueError(f"a mini-batch of {self.ppo_mini_batch_size} prompts x {self.n_samples} responses "
                             f"does not split over {gpus} GPUs")
        length = self.max_prompt_length + self.max_response_length
        if self.ppo_max_token_len_per_gpu < length:
            raise ValueError(f"ppo_max_token_len_per_gpu={self.ppo_max_token_len_per_gpu} must hold one whole "
                             f"sequence (max_prompt_length + max_response_length = {length})")
        return self

    @property
    def preset(self) -> ScalePreset:
        return SCALE_PRESETS[self.scale]

    @property
    def slots(self) -> int:
        """``verl_slot`` resources one trial takes (one per 8-GPU node)."""
        return self.nodes_per_trial


def gpus_of(profile: Any) -> int:
    """GPUs one trial of ``profile`` uses: the a100 profile's ``gpus_per_trial``; 1 (fake) on the local one."""
    return profile.gpus_per_trial if isinstance(profile, A100Profile) else 1


# --------------------------------------------------------------------------------------------------------
# What a trial costs: seconds per step from tokens per step and A100 throughput (docs/orchestration.md#cost)
#
# Nobody has run this profile yet, so the cost is DERIVED, not measured: the tokens a step moves, divided by what
# an A100 80GB does with them. Every number below is a named constant with its source or the reason for its value;
# none was fitted to a total. Once a run exists, pass its measured `timing_s/step` to gpu_hours instead.
#
# Per training step (train_batch_size prompts x n_samples responses; verl's synchronous PPO loop, so the phases add):
#   rollout   vLLM generates prompts x G x MEAN_RESPONSE_TOKENS tokens. Decode is a roofline per vLLM engine
#             (rollout_tp GPUs): a decode step reads the weights once plus the KV cache of every running sequence
#             (memory time) and does 2 x matmul params + attention FLOPs per sequence (compute time); the batch is
#             what the KV cache holds (gpu_memory_utilization of each GPU, less the weights and a reserve) at the
#             mean context; the step takes the longer of the two times at the achieved fractions below. Then the
#             last response still running decodes alone up to max_response_length (the long tail).
#   training  FSDP: 6 x params x tokens FLOPs for the update's forward and backward (plus attention), and 2 x params
#             x tokens for the old log-probs' forward (verl recomputes them; with beta_KL = 0 there is no reference
#             model, so no ref forward), at TRAIN_MFU of the A100's 312 TFLOP/s.
#   overhead  STEP_OVERHEAD_S per step: resharding FSDP weights into vLLM, rewards (math_verify), bookkeeping.
# Per validation (before training, every test_freq steps, at the end): the six benchmarks x val_n samples,
# generated like a rollout, plus a checkpoint save (verl saves at every validation here).

A100_BF16_FLOPS = 312e12  # dense bf16 tensor-core peak, NVIDIA A100 datasheet
A100_HBM_BYTES_PER_S = 2.039e12  # A100 80GB SXM HBM2e bandwidth, NVIDIA A100 datasheet
A100_MEMORY_BYTES = 80 * 2**30  # what torch.cuda.mem_get_info reports as total, the base of gpu_memory_utilization
TRAIN_MFU = 0.40
# ^ Model-FLOPs utilisation of the FSDP update, recompute of full gradient checkpointing included. IBM's fms-fsdp
#   (PyTorch FSDP, A100 80GB) reports 0.57 MFU for a 7B model with selective checkpointing and, for 13B with full
#   activation checkpointing, 1,600 tokens/s/GPU, i.e. 6 x 13e9 x 1600 / 312e12 = 0.40; verl users report
#   perf/mfu/actor around 0.5 on one node (verl issue #2579). RL micro-batches are dynamic and unevenly packed,
#   so we take the full-checkpointing figure, 0.40, for every scale.
DECODE_BANDWIDTH_EFFICIENCY = 0.5
# ^ Fraction of the HBM roofline a vLLM decode step achieves. A single-request decode of an 8B model on an A100
#   runs at ~77% of its bandwidth ceiling (vLLM 0.23 sweep, johnmusgrave.com "vLLM throughput-latency sweep on
#   NVIDIA A100"); at hundreds of sequences paged attention over long KV does worse, hence one half.
DECODE_COMPUTE_EFFICIENCY = 0.5  # fraction of 312 TFLOP/s in a large decode batch (same reasoning)
VLLM_RESERVED_BYTES = 3 * 2**30  # per GPU inside vLLM's share: activations, CUDA graphs, sampler buffers
VLLM_MAX_NUM_SEQS = 1024  # verl's rollout.max_num_seqs default: sequences one engine runs at once, at most
MEAN_PROMPT_TOKENS = 200  # a DAPO-Math-17k problem in the chat template with its instruction (~100-300 tokens)
MEAN_RESPONSE_TOKENS = 4500
# ^ R1-distilled models write long chains of thought and hit an 8k cap often: DeepScaleR's 8K-context phase with
#   DeepSeek-R1-Distill-Qwen-1.5B went from ~5,500 to ~3,500 tokens per response (Luo et al. 2025, blog); we take
#   the middle for every scale and for validation (temperature 0.6), capped by max_response_length.
STEP_OVERHEAD_S = 60.0  # per step: weight resharding to vLLM, math_verify rewards, metrics (an estimate)
CHECKPOINT_BYTES_PER_PARAM = 14  # fp32 weights (4) + Adam moments (8) + bf16 HF copy (2)
CHECKPOINT_WRITE_BYTES_PER_S = 2e9  # shared storage, one writer per rank, aggregate (an estimate)
# the validation sets' sizes (rows of `maspo data prepare`'s parquet files; docs/algorithms.md)
VALIDATION_PROBLEMS = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272, "olympiad": 675}


@dataclass(frozen=True)
class DecodeRate:
    """One vLLM engine's decode at a given context: batch, step time, tokens/s per GPU."""

    batch: float
    step_s: float
    tokens_per_s_per_gpu: float
    memory_bound: bool


@dataclass(frozen=True)
class CostEstimate:
    """The derived cost of one trial on the a100 profile (every time in seconds of the trial's wall clock)."""

    gpus: int
    steps: int
    validations: int
    rollout_tokens_per_step: float
    train_tokens_per_step: float
    rollout_s: float
    train_s: float
    overhead_s: float
    validation_s: float  # one validation, generation and checkpoint
    decode: DecodeRate

    @property
    def seconds_per_step(self) -> float:
        return self.rollout_s + self.train_s + self.overhead_s

    @property
    def wall_hours(self) -> float:
        return (self.steps * self.seconds_per_step + self.validations * self.validation_s) / 3600.0

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.wall_hours


def decode_rate(profile: A100Profile, context: float, sequences_per_engine: float) -> DecodeRate:
    """The roofline of one vLLM engine (``rollout_tp`` GPUs) decoding sequences of mean length ``context``."""
    shape, tp = profile.preset.shape, profile.rollout_tp
    weights = 2.0 * shape.params
    kv_budget = tp * (profile.gpu_memory_utilization * A100_MEMORY_BYTES - VLLM_RESERVED_BYTES) - weights
    if kv_budget <= 0:
        raise ValueError(f"{shape.params / 1e9:.1f}B weights do not fit vLLM's share of {tp} GPU(s)")
    batch = max(1.0, min(kv_budget / (shape.kv_bytes_per_token * context), sequences_per_engine, VLLM_MAX_NUM_SEQS))
    memory_s = (weights + batch * context * shape.kv_bytes_per_token) / (tp * A100_HBM_BYTES_PER_S
                                                                          * DECODE_BANDWIDTH_EFFICIENCY)
    flops_per_token = 2 * shape.matmul_params + 4 * shape.layers * context * shape.heads * shape.head_dim
    compute_s = batch * flops_per_token / (tp * A100_BF16_FLOPS * DECODE_COMPUTE_EFFICIENCY)
    step_s = max(memory_s, compute_s)
    return DecodeRate(batch, step_s, batch / step_s / tp, memory_s >= compute_s)


def generation_seconds(profile: A100Profile, sequences: int, response_tokens: float) -> float:
    """Wall time of generating ``sequences`` responses of mean length ``response_tokens`` on the trial's GPUs."""
    engines = profile.gpus_per_trial // profile.rollout_tp
    context = MEAN_PROMPT_TOKENS + response_tokens / 2  # a response's KV grows from the prompt to its end
    rate = decode_rate(profile, context, sequences / engines)
    bulk = sequences * response_tokens / (rate.tokens_per_s_per_gpu * profile.gpus_per_trial)
    tail = profile.max_response_length * decode_rate(profile, context, 1).step_s  # the last one decodes alone
    return bulk + tail


def estimate_cost(profile: A100Profile, steps: int | None = None) -> CostEstimate:
    """The derived cost of one trial of ``profile`` (``steps`` defaults to the profile's); see the notes above."""
    p, shape = profile, profile.preset.shape
    steps = p.steps if steps is None else steps
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    response = min(MEAN_RESPONSE_TOKENS, p.max_response_length)
    prompt = min(MEAN_PROMPT_TOKENS, p.max_prompt_length)
    sequences = p.train_batch_size * p.n_samples
    rollout_s = generation_seconds(p, sequences, response)
    length = prompt + response
    tokens = sequences * length
    attention = 2 * shape.layers * (length / 2) * shape.heads * shape.head_dim  # forward FLOPs per token, causal
    update = 6 * shape.matmul_params + 3 * attention  # forward + backward
    old_log_prob = 2 * shape.matmul_params + attention  # one more forward
    train_s = (update + old_log_prob) * tokens * p.ppo_epochs / (p.gpus_per_trial * A100_BF16_FLOPS * TRAIN_MFU)
    val_sequences = sum(VALIDATION_PROBLEMS.values()) * p.val_n
    checkpoint_s = shape.params * CHECKPOINT_BYTES_PER_PARAM / CHECKPOINT_WRITE_BYTES_PER_S
    validation_s = generation_seconds(p, val_sequences, response) + checkpoint_s
    validations = 1 + len({s for s in range(1, steps + 1) if s % p.test_freq == 0 or s == steps})
    return CostEstimate(
        gpus=p.gpus_per_trial, steps=steps, validations=validations, rollout_tokens_per_step=sequences * response,
        train_tokens_per_step=tokens, rollout_s=rollout_s, train_s=train_s, overhead_s=STEP_OVERHEAD_S,
        validation_s=validation_s,
        decode=decode_rate(p, prompt + response / 2, sequences / (p.gpus_per_trial // p.rollout_tp)))


def gpu_hours(profile: A100Profile, steps: int | None = None, seconds_per_step: float | None = None) -> float:
    """Estimated A100-hours of one trial.

    Without ``seconds_per_step``: the derived estimate (:func:`estimate_cost`: steps, validations and checkpoints).
    With it (e.g. a measured verl ``timing_s/step``): GPUs x steps x seconds per step / 3600, nothing added.
    ``steps`` defaults to the profile's.
    """
    steps = profile.steps if steps is None else steps
    if seconds_per_step is None:
        return estimate_cost(profile, steps).gpu_hours
    if steps < 0 or seconds_per_step < 0:
        raise ValueError(f"steps and seconds_per_step must be >= 0, got {steps} and {seconds_per_step}")
    return profile.gpus_per_trial * steps * seconds_per_step / 3600.0


def checkpoint_dir(profile: A100Profile, trial_hash: str) -> Path:
    """Where a trial's verl checkpoints go (and where ``resume_mode=auto`` looks): ``<root>/<trial hash>``."""
    return Path(profile.checkpoint_root).expanduser() / trial_hash


def data_files(profile: A100Profile) -> tuple[Path, list[Path]]:
    """(training parquet, validation parquets) under ``data_dir``, named as ``maspo data prepare`` writes them."""
    from orchestrator.data_prepare import train_file, val_files

    root = Path(profile.data_dir).expanduser()
    return train_file(root), val_files(root)


def missing_data_files(profile: A100Profile) -> list[Path]:
    """The profile's data files that do not exist here (run ``maspo data prepare --out DATA_DIR`` first)."""
    train, vals = data_files(profile)
    return [p for p in [train, *vals] if not p.is_file()]


def _quoted(value: Any) -> str:
    """A Hydra override value as a quoted string (paths and names may hold characters Hydra would parse)."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _hydra_list(paths: list[Path]) -> str:
    return "[" + ",".join(_quoted(p) for p in paths) + "]"


def base_overrides(profile: A100Profile, seed: int, *, experiment_name: str, trial_hash: str,
                   project_name: str = PROJECT_NAME) -> list[str]:
    """The profile's own overrides, without the algorithm's (see :func:`render_a100_overrides`)."""
    p = profile
    train, vals = data_files(p)
    betas = f"[{p.adam_betas[0]!r},{p.adam_betas[1]!r}]"
    overrides = [
        # algorithm: GRPO advantages, no KL anywhere (paper: beta_KL = 0)
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=False",
        "algorithm.kl_ctrl.kl_coef=0.0",
        # data: DAPO-Math-17k for training, the six benchmarks for validation
        f"data.train_files={_hydra_list([train])}",
        f"data.val_files={_hydra_list(vals)}",
        f"data.train_batch_size={p.train_batch_size}",
        f"data.max_prompt_length={p.max_prompt_length}",
        f"data.max_response_length={p.max_response_length}",
        "data.filter_overlong_prompts=True",
        "data.truncation=error",
        f"data.seed={seed}",
        # model and actor: FSDP2, bf16 compute, gradient checkpointing, padding removed, dynamic micro-batches
        f"actor_rollout_ref.model.path={_quoted(p.model_path)}",
        "actor_rollout_ref.model.use_remove_padding=True",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        "actor_rollout_ref.actor.strategy=fsdp2",
        f"actor_rollout_ref.actor.fsdp_config.seed={seed}",
        f"actor_rollout_ref.actor.data_loader_seed={seed}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={p.ppo_mini_batch_size}",
        f"actor_rollout_ref.actor.ppo_epochs={p.ppo_epochs}",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={p.ppo_max_token_len_per_gpu}",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.actor.kl_loss_coef=0.0",
        # optimiser: AdamW (0.9, 0.95), constant LR, no warm-up
        f"actor_rollout_ref.actor.optim.lr={p.lr!r}",
        f"actor_rollout_ref.actor.optim.betas={betas}",
        f"actor_rollout_ref.actor.optim.weight_decay={p.weight_decay!r}",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        # rollout: vLLM, G responses per prompt; validation samples val_n per problem
        "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={p.rollout_tp}",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={p.gpu_memory_utilization!r}",
        f"actor_rollout_ref.rollout.n={p.n_samples}",
        f"actor_rollout_ref.rollout.temperature={p.temperature!r}",
        f"actor_rollout_ref.rollout.top_p={p.top_p!r}",
        "actor_rollout_ref.rollout.top_k=-1",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.rollout.val_kwargs.n={p.val_n}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={p.val_temperature!r}",
        f"actor_rollout_ref.rollout.val_kwargs.top_p={p.val_top_p!r}",
        "actor_rollout_ref.rollout.val_kwargs.top_k=-1",
        # reward: maspo's grader (math_verify for training, prime_math for validation), never verl's routing
        f"reward.custom_reward_function.path={_quoted(REWARD_FILE)}",
        f"reward.custom_reward_function.name={REWARD_FUNCTION}",
        # trainer: nodes x 8 GPUs, loggers, schedule, checkpoints at every validation, resume from the newest
        f"trainer.nnodes={p.nodes_per_trial}",
        f"trainer.n_gpus_per_node={p.gpus_per_trial // p.nodes_per_trial}",
        "trainer.logger=['console','file','wandb']",
        f"trainer.project_name={_quoted(project_name)}",
        f"trainer.experiment_name={_quoted(experiment_name)}",
        f"trainer.total_training_steps={p.steps}",
        "trainer.total_epochs=100000",  # the step count ends the run, never the epoch count
        f"trainer.test_freq={p.test_freq}",
        "trainer.val_before_train=True",
        f"trainer.save_freq={p.test_freq}",
        "trainer.resume_mode=auto",
        f"trainer.default_local_dir={_quoted(checkpoint_dir(p, trial_hash))}",
        "trainer.log_val_generations=0",
    ]
    if p.max_checkpoints_to_keep is not None:
        overrides.append(f"trainer.max_actor_ckpt_to_keep={p.max_checkpoints_to_keep}")
    return overrides


def render_a100_overrides(algorithm: str, params: Any, seed: int, profile: A100Profile, *,
                          experiment_name: str, trial_hash: str, project_name: str = PROJECT_NAME) -> list[str]:
    """Every Hydra override of ``python -m verl.trainer.main_ppo`` for one trial on the a100 profile.

    ``params``: the algorithm's hyperparameters (a parsed model, a mapping or None for the defaults).
    Order: the profile's settings, the algorithm's (``orchestrator.algorithms.get(algorithm).verl_overrides``),
    then ``profile.extra_overrides``; Hydra lets the last of repeated keys win.
    """
    from orchestrator.algorithms import get

    overrides = base_overrides(profile, seed, experiment_name=experiment_name, trial_hash=trial_hash,
                               project_name=project_name)
    return [*overrides, *get(algorithm).verl_overrides(params), *profile.extra_overrides]


def a100_job_env(metrics_path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a trial's Ray Job: verl's JSONL metrics file, logging, and forwarded site settings.

    ``metrics_path`` must be on storage the controller reads (verl's file logger writes it from the node its
    task runner lands on). ``environ`` (default: this process's) supplies the forwarded ``NCCL_*`` and
    friends (:data:`FORWARDED_ENV_PREFIXES`).
    """
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    env.update({
        "VERL_FILE_LOGGER_PATH": str(metrics_path),  # the `file` logger's JSONL (truncated at start by verl)
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
    })
    return env
