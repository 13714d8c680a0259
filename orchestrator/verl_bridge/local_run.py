"""What a full ``python -m verl.trainer.main_ppo`` run needs on a CPU-only machine (the local profile).

``cpu_trainer_overrides(...)`` gives the Hydra overrides and ``cpu_trainer_env(...)`` the environment variables;
the caller adds the algorithm's own overrides (``orchestrator.algorithms.registry.get(name).verl_overrides()``)
and, if it wants, more loggers::

    env = {**os.environ, **cpu_trainer_env(out_dir)}
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo",
           *cpu_trainer_overrides(model_dir, train, vals, out_dir=out_dir, ray_temp_dir=short_temp_dir()),
           *get("grpo").verl_overrides()]
    subprocess.run(cmd, env=env, check=True)

Why each group of settings is there (docs/verl-on-cpu.md#settings has more):

- CPU platform: ``VERL_PLATFORM=cpu`` (``orchestrator.verl_bridge.cpu``, loaded by the ``verl.plugins`` entry
  point in every process), ``trainer.device=cpu``, one "GPU" per node: the platform reports its Ray resource as
  "GPU", so Ray is started with a fake ``num_gpus=1``;
- Ray: ``num_cpus=16`` logical CPUs (verl's actors each ask for one: task runner, worker, agent loop, reward
  loop, TransferQueue controller and storage), a private short ``_temp_dir`` (another Ray instance on the machine
  is never joined or disturbed; Unix socket paths must stay short), no dashboard, ``RAY_ADDRESS`` emptied so
  ``ray.init`` starts a fresh local instance; every other Ray port is picked at random by Ray;
- TransferQueue: one storage unit (the default 8 cannot all be scheduled and ``tq.init`` then hangs);
- actor: FSDP2 (FSDP1 wants GPU params), sdpa attention (flash-attn is not installed), no torch.compile, no
  gradient checkpointing; ``precision="fp32"`` computes in fp32 (bf16 gains nothing on a tiny model and adds
  rollout/actor mismatch), ``"bf16"`` keeps verl's default mixed precision;
- rollout: ``rollout.name=hf`` (``orchestrator.verl_bridge.hf_rollout``), one replica, one agent-loop worker;
- data/reward: GRPO, ``orchestrator/rewards.py:compute_score`` as verl's custom reward function, one reward
  worker, no dataloader worker processes;
- validation: ``val_kwargs.n`` samples per prompt at temperature 0.6 / top-p 0.95 (sampled, so mean@n and
  best@n are meaningful), before training and every ``test_freq`` steps (and after the last);
- logging: ``console`` and ``file`` (JSONL at ``$VERL_FILE_LOGGER_PATH`` = ``<out_dir>/metrics.jsonl``);
  checkpoints under ``<out_dir>/checkpoints``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

REWARD_FILE = Path(__file__).resolve().parents[1] / "rewards.py"
REWARD_FUNCTION = "compute_score"
RAY_LOGICAL_CPUS = 16
METRICS_FILE = "metrics.jsonl"


def short_temp_dir(prefix: str = "maspo-ray-") -> str:
    """A fresh, short directory under /tmp for Ray's sockets and logs (socket paths are limited to 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def _hydra_list(paths: Iterable[Path | str]) -> str:
    return "[" + ",".join(f"'{Path(p)}'" for p in paths) + "]"


def cpu_trainer_overrides(
    model_dir: Path | str,
    train_files: Path | str | Iterable[Path | str],
    val_files: Path | str | Iterable[Path | str],
    *,
    out_dir: Path | str,
    n_samples: int = 8,
    val_n: int = 8,
    train_batch_size: int = 8,
    ppo_mini_batch_size: int | None = None,
    micro_batch_size: int | None = None,
    max_prompt_length: int = 32,
    max_response_length: int = 32,
    total_steps: int = 10,
    test_freq: int = 5,
    seed: int = 0,
    lr: float | None = None,
    precision: str = "fp32",
    val_temperature: float = 0.6,
    val_top_p: float = 0.95,
    project_name: str = "maspo-local",
    experiment_name: str = "local",
    ray_temp_dir: Path | str | None = None,
    loggers: tuple[str, ...] = ("console", "file"),
) -> list[str]:
    """Every Hydra override a CPU run of ``verl.trainer.main_ppo`` needs, except the loss's own.

    Batch sizes are in prompts, as verl counts them (each prompt gets ``n_samples`` responses);
    ``ppo_mini_batch_size`` defaults to ``train_batch_size`` (one optimizer step per training step) and
    ``micro_batch_size`` (sequences per forward/backward, also used for log-prob computation) to a whole
    mini-batch. ``ray_temp_dir`` makes the run start its own private Ray there (a short path: see
    :func:`short_temp_dir`); None renders no Ray settings, for a job that joins an existing cluster. Rendering
    has no side effects. ``lr=None`` keeps verl's.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    train_files = [train_files] if isinstance(train_files, (str, Path)) else list(train_files)
    val_files = [val_files] if isinstance(val_files, (str, Path)) else list(val_files)
    mini = ppo_mini_batch_size or train_batch_size
    micro = micro_batch_size or mini * n_samples
    out_dir = Path(out_dir)

    overrides = [
        # algorithm and data
        "algorithm.adv_estimator=grpo",
        f"data.train_files={_hydra_list(train_files)}",
        f"data.val_files={_hydra_list(val_files)}",
        f"data.train_batch_size={train_batch_size}",
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={max_response_length}",
        "data.dataloader_num_workers=0",
        f"data.seed={seed}",
        # model and actor: what FSDP training needs on CPU
        f"actor_rollout_ref.model.path={Path(model_dir)}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        f"actor_rollout_ref.actor.fsdp_config.seed={seed}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        # rollout: the HF backend, one replica, one agent-loop worker
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        f"actor_rollout_ref.rollout.n={n_samples}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.rollout.val_kwargs.n={val_n}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={val_temperature}",
        f"actor_rollout_ref.rollout.val_kwargs.top_p={val_top_p}",
        # reward: maspo's grader, one reward-loop worker
        f"reward.custom_reward_function.path={REWARD_FILE}",
        f"reward.custom_reward_function.name={REWARD_FUNCTION}",
        "reward.num_workers=1",
        # trainer: one fake GPU, loggers, validation schedule, checkpoints
        "trainer.device=cpu",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=1",
        "trainer.logger=[" + ",".join(f"'{name}'" for name in loggers) + "]",
        f"trainer.project_name={project_name}",
        f"trainer.experiment_name={experiment_name}",
        f"trainer.default_local_dir={out_dir / 'checkpoints'}",
        f"trainer.total_training_steps={total_steps}",
        f"trainer.test_freq={test_freq}",
        "trainer.val_before_train=True",
        "trainer.save_freq=-1",
        # TransferQueue on one small machine
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]
    if ray_temp_dir is not None:  # a run of its own: a private Ray with one fake GPU
        overrides += [f"ray_kwargs.ray_init.num_cpus={RAY_LOGICAL_CPUS}", "+ray_kwargs.ray_init.num_gpus=1",
                      f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}",
                      "+ray_kwargs.ray_init.include_dashboard=False"]
    if precision == "fp32":
        fp32 = "{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
        overrides += [f"+actor_rollout_ref.actor.fsdp_config.mixed_precision={fp32}",
                      "actor_rollout_ref.rollout.dtype=float32"]
    if lr is not None:
        overrides.append(f"actor_rollout_ref.actor.optim.lr={lr!r}")
    return overrides


def cpu_trainer_env(out_dir: Path | str) -> dict[str, str]:
    """Environment variables for the ``main_ppo`` process (Ray passes them on to its workers)."""
    return {
        "VERL_PLATFORM": "cpu",  # orchestrator.verl_bridge.cpu: the CPU platform and the hf rollout
        "VERL_ENGINE_DEVICE": "cuda",  # verl registers its FSDP engine for cuda/npu only; it runs on "cpu"
        "VERL_FILE_LOGGER_PATH": str(Path(out_dir) / METRICS_FILE),  # the `file` logger's JSONL
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",  # 2 OpenMP threads per process on a busy 2-core machine were 10-40x slower
        "RAY_ADDRESS": "",  # never join a running Ray instance: start a private one
        "RAY_DEDUP_LOGS": "0",  # keep every worker's lines (e.g. the rollout server's batch log)
        "HYDRA_FULL_ERROR": "1",
    }
