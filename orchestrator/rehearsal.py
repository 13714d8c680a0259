"""The a100 profile rehearsed on CPU: ``maspo compare|sweep --profile a100 --rehearse``.

A rehearsal runs a cluster experiment on this machine before anyone pays for GPUs. Every trial's verl command is
the a100 one, ``orchestrator.scales.render_a100_overrides`` exactly as rendered, except the overrides in
:data:`DEVICE_BOUND`, which are replaced by what the local profile runs (``orchestrator/verl_bridge/local_run.py``):

- ``device``: what needs a GPU: vLLM -> the hf rollout server, CUDA -> the CPU platform, the node layout -> one
  node with one fake GPU, flash-attention -> sdpa, torch.compile off (it runs on CPU, but compiles CPU kernels);
- ``size``: the model -> the warm-started tiny model; response length, batch sizes, samples per prompt scaled down
  so a trial takes minutes on two cores;
- ``machine``: process counts sized for 8 GPUs per node (agent-loop, reward and dataloader workers, TransferQueue
  storage units) -> one each.

Everything else reaches verl unchanged: the data files with their ``data_source`` names, the reward module,
dynamic batch sizing, padding removal, gradient checkpointing, FSDP2 with verl's bf16 mixed precision, the
optimiser, the checkpoint layout
``<checkpoint_root>/<trial hash>`` with ``resume_mode=auto``, the W&B names, the validation schedule. A key the
rehearsal adds (verl's default on the cluster) is device-bound too and is shown with verl's default beside it.

:data:`DEVICE_FREE` lists every other key the a100 profile renders; tests/test_rehearsal.py fails when a key is
in neither set, so a new a100 override is classified when it is added. After the run, :func:`rehearsal_checks`
reads what verl actually ran with (the resolved config verl hands its W&B logger, saved in the trial's offline
run) and checks that every device-free override arrived unchanged, that the first trial was stopped after its
first checkpoint and its retry resumed from it (:func:`should_drill`), that the validation keys name the six
benchmarks, and that checkpoints landed where the cluster would put them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

Kind = Literal["device", "size", "machine"]

# the rehearsal's sizes (the ``size`` entries below)
RESPONSE_LENGTH = 32  # response tokens (a100: 7168)
TRAIN_BATCH_SIZE = 2  # prompts per step (a100: 512); the fixture data has 3 training problems
PPO_MINI_BATCH_SIZE = 1  # prompts per policy update: 2 updates per step, the second one off-policy (a100: 32)
N_SAMPLES = 8  # responses per prompt (a100: 16)
VAL_N = 4  # samples per validation problem (a100: 32)
DEFAULT_STEPS = 2
DEFAULT_TEST_FREQ = 1  # validation and a checkpoint after every step: the resume drill needs one before the end


@dataclass(frozen=True)
class DeviceBound:
    """Why an override cannot run as the cluster renders it on this machine, and what the rehearsal runs instead."""

    kind: Kind
    reason: str  # one line
    value: Callable[[Mapping[str, str], str], str]  # (the a100 overrides by key, the tiny model dir) -> new value
    cluster_default: str | None = None  # a key the a100 profile does not render: verl's default (tested)


def _const(value: str) -> Callable[[Mapping[str, str], str], str]:
    return lambda rendered, model: value


def _token_budget(rendered: Mapping[str, str], model: str) -> str:
    # one whole sequence (what the a100 profile requires as its minimum): dynamic batching splits mini-batches
    return str(int(rendered["data.max_prompt_length"]) + RESPONSE_LENGTH)


# Keys as verl's config names them, without Hydra's "+" (an added key carries it when rendered: see ADDED).
DEVICE_BOUND: Mapping[str, DeviceBound] = MappingProxyType({
    # ---- device: needs a GPU
    "actor_rollout_ref.rollout.name": DeviceBound(
        "device", "vLLM is CUDA-only: maspo's transformers rollout server (rollout.name=hf) generates instead",
        _const("hf")),
    "actor_rollout_ref.rollout.tensor_model_parallel_size": DeviceBound(
        "device", "one fake GPU: the hf server runs one replica without tensor parallelism", _const("1")),
    "actor_rollout_ref.rollout.gpu_memory_utilization": DeviceBound(
        "device", "vLLM's share of GPU memory: the hf server has none to share (verl's default, unused)",
        _const("0.5")),
    "trainer.nnodes": DeviceBound("device", "one machine", _const("1")),
    "trainer.n_gpus_per_node": DeviceBound(
        "device", "one fake GPU (a Ray 'GPU' resource: verl counts GPUs before it places workers)", _const("1")),
    "trainer.device": DeviceBound(
        "device", "the CPU platform (VERL_PLATFORM=cpu) instead of CUDA", _const("cpu"), "cuda"),
    "actor_rollout_ref.model.override_config.attn_implementation": DeviceBound(
        "device", "flash-attention 2 (verl's default) needs CUDA and the flash-attn package: torch's sdpa",
        _const("sdpa"), "flash_attention_2"),
    **{key: DeviceBound(
        "device", "torch.compile builds kernels for the device: C++ ones on CPU (it runs, ~35 s per verl start on 2 "
                  "cores), not the cluster's Triton ones", _const("False"), "True")
       for key in ("actor_rollout_ref.actor.use_torch_compile", "actor_rollout_ref.actor.fsdp_config.use_torch_compile",
                   "actor_rollout_ref.ref.fsdp_config.use_torch_compile")},
    # ---- size: a trial in minutes on two cores
    "actor_rollout_ref.model.path": DeviceBound(
        "size", "the warm-started tiny Qwen2 (byte-level tokenizer, built offline) instead of the paper's model",
        lambda rendered, model: model),
    "data.max_response_length": DeviceBound("size", "response tokens", _const(str(RESPONSE_LENGTH))),
    "data.train_batch_size": DeviceBound(
        "size", "prompts per step (the fixture data has 3 training problems)", _const(str(TRAIN_BATCH_SIZE))),
    "actor_rollout_ref.actor.ppo_mini_batch_size": DeviceBound(
        "size", "prompts per policy update: 2 updates per step, the second one off-policy",
        _const(str(PPO_MINI_BATCH_SIZE))),
    "actor_rollout_ref.rollout.n": DeviceBound("size", "responses per prompt", _const(str(N_SAMPLES))),
    "actor_rollout_ref.rollout.val_kwargs.n": DeviceBound(
        "size", "samples per validation problem (the keys read mean@4 instead of mean@32)", _const(str(VAL_N))),
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": DeviceBound(
        "size", "token budget of a dynamic micro-batch: one whole sequence (prompt + response), so mini-batches split",
        _token_budget),
    # ---- machine: process counts sized for a GPU node
    "actor_rollout_ref.rollout.agent.num_workers": DeviceBound(
        "machine", "agent-loop worker processes", _const("1"), "8"),
    "reward.num_workers": DeviceBound("machine", "reward-loop worker processes", _const("1"), "8"),
    "data.dataloader_num_workers": DeviceBound("machine", "dataloader worker processes", _const("0"), "8"),
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": DeviceBound(
        "machine", "TransferQueue storage actors of one CPU each: verl's 8 cannot all be scheduled here and "
                   "tq.init hangs", _const("1"), "8"),
})

# Keys the a100 profile does not render (verl's default runs on the cluster); Hydra needs "+" for a key that is
# not in verl's config schema.
ADDED = {
    "trainer.device": "trainer.device",
    "actor_rollout_ref.actor.use_torch_compile": "actor_rollout_ref.actor.use_torch_compile",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile": "actor_rollout_ref.actor.fsdp_config.use_torch_compile",
    "actor_rollout_ref.ref.fsdp_config.use_torch_compile": "actor_rollout_ref.ref.fsdp_config.use_torch_compile",
    "actor_rollout_ref.model.override_config.attn_implementation":
        "+actor_rollout_ref.model.override_config.attn_implementation",
    "actor_rollout_ref.rollout.agent.num_workers": "actor_rollout_ref.rollout.agent.num_workers",
    "reward.num_workers": "reward.num_workers",
    "data.dataloader_num_workers": "data.dataloader_num_workers",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units":
        "transfer_queue.backend.SimpleStorage.num_data_storage_units",
}

# Every other key ``render_a100_overrides`` gives (profile and algorithms): these reach verl unchanged.
DEVICE_FREE: frozenset[str] = frozenset({
    # algorithm, data, reward
    "algorithm.adv_estimator", "algorithm.use_kl_in_reward", "algorithm.kl_ctrl.kl_coef",
    "data.train_files", "data.val_files", "data.max_prompt_length", "data.filter_overlong_prompts",
    "data.truncation", "data.seed",
    "reward.custom_reward_function.path", "reward.custom_reward_function.name",
    # model and actor
    "actor_rollout_ref.model.use_remove_padding", "actor_rollout_ref.model.enable_gradient_checkpointing",
    "actor_rollout_ref.actor.strategy", "actor_rollout_ref.actor.fsdp_config.seed",
    "actor_rollout_ref.actor.data_loader_seed", "actor_rollout_ref.actor.ppo_epochs",
    "actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.actor.use_kl_loss",
    "actor_rollout_ref.actor.kl_loss_coef",
    "actor_rollout_ref.actor.optim.lr", "actor_rollout_ref.actor.optim.betas",
    "actor_rollout_ref.actor.optim.weight_decay", "actor_rollout_ref.actor.optim.lr_scheduler_type",
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio", "actor_rollout_ref.actor.optim.lr_warmup_steps",
    # rollout sampling
    "actor_rollout_ref.rollout.temperature", "actor_rollout_ref.rollout.top_p", "actor_rollout_ref.rollout.top_k",
    "actor_rollout_ref.rollout.seed", "actor_rollout_ref.rollout.val_kwargs.do_sample",
    "actor_rollout_ref.rollout.val_kwargs.temperature", "actor_rollout_ref.rollout.val_kwargs.top_p",
    "actor_rollout_ref.rollout.val_kwargs.top_k",
    # trainer: names, loggers, schedule, checkpoints
    "trainer.logger", "trainer.project_name", "trainer.experiment_name", "trainer.total_training_steps",
    "trainer.total_epochs", "trainer.test_freq", "trainer.val_before_train", "trainer.save_freq",
    "trainer.resume_mode", "trainer.default_local_dir", "trainer.log_val_generations",
    "trainer.max_actor_ckpt_to_keep",
    # the algorithms' own (orchestrator/algorithms/registry.py)
    "actor_rollout_ref.actor.policy_loss._target_", "actor_rollout_ref.actor.policy_loss.loss_mode",
    "actor_rollout_ref.actor.clip_ratio", "actor_rollout_ref.actor.clip_ratio_low",
    "actor_rollout_ref.actor.clip_ratio_high", "actor_rollout_ref.actor.clip_ratio_c",
    "actor_rollout_ref.actor.entropy_coeff", "actor_rollout_ref.actor.calculate_entropy",
    "actor_rollout_ref.actor.loss_agg_mode", "actor_rollout_ref.actor.tau_pos", "actor_rollout_ref.actor.tau_neg",
    *(f"actor_rollout_ref.actor.policy_loss.{name}" for name in (
        "adv_reweight_alpha", "entropy_adv_alpha", "entropy_adv_kappa", "dac_high_cap",
        "bapo_rho0", "bapo_c_high_start", "bapo_c_high_max", "bapo_c_low_start", "bapo_c_low_max",
        "bapo_delta_high", "bapo_delta_low", "bapo_reading",
        "maspo_sigma_base", "maspo_alpha", "maspo_beta_low", "maspo_beta_high", "maspo_mass_cap",
        "maspo_risk_min", "maspo_risk_max")),
})

# What a key that touches devices looks like; a key matching one of these must be in DEVICE_BOUND (tested).
DEVICE_KEY_PATTERNS = (r"gpu", r"tensor_model_parallel", r"rollout\.name$", r"nnodes", r"device", r"cuda",
                       r"attn_implementation", r"flash", r"fused_kernel", r"torch_compile", r"nccl",
                       r"expert_model_parallel", r"pipeline_model_parallel", r"ulysses", r"offload")

# The environment a rehearsal job adds to the a100 job's (a100_job_env): the CPU platform and W&B offline.
ENV_REASONS: Mapping[str, str] = MappingProxyType({
    "VERL_PLATFORM": "the CPU platform (maspo's local-profile patches turn on with it)",
    "VERL_ENGINE_DEVICE": "verl registers its FSDP engine for cuda/npu only; it runs on the CPU platform's device",
    "OMP_NUM_THREADS": "one OpenMP thread per process on two shared cores",
    "WANDB_MODE": "offline: the rehearsal's numbers are meaningless (`maspo sync` uploads them if wanted)",
    "WANDB_DIR": "the offline runs go into the trial's directory",
})


def key_of(override: str) -> str:
    """``+a.b=c`` -> ``a.b`` (Hydra's prefixes dropped)."""
    return override.split("=", 1)[0].lstrip("+~")


def looks_device_bound(key: str) -> bool:
    return any(re.search(p, key) for p in DEVICE_KEY_PATTERNS)


def unclassified(overrides: list[str]) -> list[str]:
    """Problems with the classification of ``overrides`` (a100 ones): a key in neither set, or one that looks
    device-bound (:data:`DEVICE_KEY_PATTERNS`) but is listed as device-free. Empty when all is well."""
    problems = []
    for key in dict.fromkeys(key_of(o) for o in overrides):
        if key in DEVICE_BOUND:
            continue
        if key not in DEVICE_FREE:
            problems.append(f"{key}: neither DEVICE_BOUND nor DEVICE_FREE (orchestrator/rehearsal.py): classify it")
        elif looks_device_bound(key):
            problems.append(f"{key}: looks device-bound but is listed in DEVICE_FREE")
    return problems


@dataclass(frozen=True)
class Replacement:
    """One override the rehearsal did not run as the cluster would: key, the a100 value, the rehearsal's."""

    key: str
    kind: Kind
    a100: str | None  # None: not rendered, verl's default runs on the cluster
    rehearsal: str
    reason: str


def rehearse_overrides(rendered: list[str], model_dir: Path | str) -> tuple[list[str], list[Replacement]]:
    """The a100 overrides with every device-bound one replaced (in place) or added (at the end).

    Returns (overrides, replacements); every other override is kept as it is, in its place.
    """
    by_key = {key_of(o): o.split("=", 1)[1] for o in rendered}
    out, replaced = [], []
    for override in rendered:
        key = key_of(override)
        bound = DEVICE_BOUND.get(key)
        if bound is None:
            out.append(override)
            continue
        new = bound.value(by_key, str(model_dir))
        out.append(f"{override.split('=', 1)[0]}={new}")
        if key not in {r.key for r in replaced}:
            replaced.append(Replacement(key, bound.kind, by_key[key], new, bound.reason))
    for key, bound in DEVICE_BOUND.items():
        if key in by_key:
            continue
        if key not in ADDED:
            raise KeyError(f"{key} is device-bound but neither rendered by the a100 profile nor added (ADDED)")
        new = bound.value(by_key, str(model_dir))
        out.append(f"{ADDED[key]}={new}")
        replaced.append(Replacement(key, bound.kind, None, new, bound.reason))
    return out, replaced


def cluster_value(replacement: Replacement) -> str:
    """The a100 side of a replacement as a table shows it."""
    if replacement.a100 is not None:
        return replacement.a100
    return f"{DEVICE_BOUND[replacement.key].cluster_default} (verl's default)"


# --------------------------------------------------------------------------------------------------------
# data and model


DATA_VERSION = 1  # bump when the fixtures or their conversion change (names the default data directory)


def default_data_dir() -> Path:
    """Where a rehearsal's data goes when no ``--data`` is given (prepared from the fixtures when missing)."""
    from orchestrator.local.tiny_model import cache_root

    return cache_root() / f"rehearsal-data-v{DATA_VERSION}"


def is_fixture_data(data_dir: Path | str) -> bool:
    """``data_dir`` was written by ``maspo data prepare --fixtures`` (its manifest records the fixtures)."""
    from orchestrator.data_prepare import FIXTURE_REVISION, MANIFEST

    try:
        manifest = json.loads((Path(data_dir).expanduser() / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return any(isinstance(e, dict) and e.get("revision") == FIXTURE_REVISION for e in manifest.values())


def ensure_data(data_dir: Path | str) -> Path:
    """The rehearsal's data: the default directory is prepared from the fixtures when a file is missing; a
    directory given with ``--data`` must hold the a100 layout already."""
    from orchestrator.data_prepare import prepare_fixtures, train_file, val_files
    from orchestrator.errors import UserError

    data_dir = Path(data_dir).expanduser()
    missing = [p for p in [train_file(data_dir), *val_files(data_dir)] if not p.is_file()]
    if not missing:
        return data_dir
    if data_dir.resolve() == default_data_dir().resolve():
        prepare_fixtures(data_dir)
        return data_dir
    raise UserError(f"{len(missing)} data file(s) missing in {data_dir}, e.g. {missing[0].name}; write them with "
                    f"`maspo data prepare --fixtures --out {data_dir}` (or leave out --data)")


def tiny_model(placeholder: bool = False, progress=None) -> Path:
    """The local profile's warm-started tiny model (built and cached on first use)."""
    if placeholder:
        return Path("<warm-started tiny model>")
    from orchestrator.local.warm_start import warm_start_model

    return warm_start_model(progress=progress)


# --------------------------------------------------------------------------------------------------------
# the plan: what --rehearse changes in a command's profile settings


def profile_settings(settings: Mapping[str, Any], *, data_dir: Path | None, experiment_dir: Path,
                     steps_given: bool) -> dict[str, Any]:
    """The a100 profile settings of a rehearsal: its data, checkpoints under the experiment, 2 steps, test_freq 1.

    ``--data`` (else ``-P data_dir``, else :func:`default_data_dir`) and ``-P checkpoint_root`` (else
    ``<experiment>/checkpoints``) are absolute paths, as the cluster's shared storage is; steps and test_freq
    keep what the command gave.
    """
    out = dict(settings)
    if data_dir is not None:
        out["data_dir"] = str(Path(data_dir).expanduser().resolve())
    out.setdefault("data_dir", str(default_data_dir()))
    out.setdefault("checkpoint_root", str((experiment_dir / "checkpoints").resolve()))
    if not steps_given:
        out.setdefault("steps", DEFAULT_STEPS)
    out.setdefault("test_freq", DEFAULT_TEST_FREQ)
    return out


# --------------------------------------------------------------------------------------------------------
# one trial's job


def job_env(metrics_path: Path, trial_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The a100 job's environment plus the CPU platform's, W&B offline into the trial's directory."""
    from orchestrator.scales import a100_job_env
    from orchestrator.verl_bridge.local_run import cpu_trainer_env

    environ = os.environ if environ is None else environ
    cpu = cpu_trainer_env(trial_dir)
    env = a100_job_env(metrics_path, environ)
    env.update({k: cpu[k] for k in ("VERL_PLATFORM", "VERL_ENGINE_DEVICE", "OMP_NUM_THREADS")})
    env.update({"WANDB_MODE": environ.get("WANDB_MODE") or "offline", "WANDB_DIR": str(trial_dir),
                "WANDB_SILENT": "true"})
    return env


def render_rehearsal_job(planned, trial_dir: Path, metrics_path: Path, model_dir: Path | str):
    """The verl command of one attempt of a rehearsed trial: the a100 overrides, device-bound ones replaced."""
    from orchestrator.jobs import TrialJob

    overrides, _ = rehearse_overrides(a100_overrides(planned), model_dir)
    return TrialJob(overrides, job_env(metrics_path, trial_dir), trial_dir, metrics_path)


def a100_overrides(planned) -> list[str]:
    """The trial's overrides exactly as the cluster would run them."""
    from orchestrator.scales import render_a100_overrides

    trial = planned.trial
    return render_a100_overrides(trial.algorithm, trial.params, trial.seed, trial.profile,
                                 experiment_name=planned.name, trial_hash=trial.stable_hash())


def replacements(plan) -> list[Replacement]:
    """What the rehearsal of ``plan`` does not run as the cluster would (the same for every trial)."""
    return rehearse_overrides(a100_overrides(plan.trials[0]), tiny_model(placeholder=True))[1]


# --------------------------------------------------------------------------------------------------------
# the resume drill: the first trial's first attempt is stopped once a checkpoint is logged; its retry must
# resume from it (the cluster's path after a preempted node: Tune's FailureConfig, verl's resume_mode=auto)


class ResumeDrill(RuntimeError):
    """Raised by the trial controller to stop the drilled attempt; Tune retries the trial (:func:`drill`)."""


def drill(step: int) -> ResumeDrill:
    # one message argument: Ray rebuilds a worker's exception in the driver from its message
    return ResumeDrill(f"resume drill: the rehearsal stopped this attempt after its checkpoint at step {step}; "
                       f"the retry must resume from it")


class _DrillFilter:
    """Drops Tune's "Trial task failed" error (with its traceback) when the failure is a resume drill."""

    def filter(self, record) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ResumeDrill)


def quiet_resume_drills() -> None:
    """The drill is planned: the live table shows the trial retrying, Tune's error log for it is dropped."""
    import logging

    logger = logging.getLogger("ray.tune.execution.tune_controller")  # Tune logs failed trial tasks there
    if not any(isinstance(f, _DrillFilter) for f in logger.filters):
        logger.addFilter(_DrillFilter())


def should_drill(plan, planned, attempt: int) -> bool:
    """The rehearsal drills the first trial's first attempt (when a checkpoint can come before its last step)."""
    if not getattr(plan, "rehearse", False) or attempt != 1 or planned.name != plan.trials[0].name:
        return False
    p = planned.trial.profile
    return p.test_freq < p.steps and plan.max_failures >= 1


def drill_step(checkpoint_dir: Path, logged_steps: set[int], steps: int) -> int | None:
    """The checkpoint to stop at: verl saved it, its step is in the trial's stream, and steps remain."""
    from orchestrator.store import checkpoint_step

    step = checkpoint_step(checkpoint_dir)
    return step if 1 <= step < steps and step in logged_steps else None


# --------------------------------------------------------------------------------------------------------
# after the run: what the rehearsal tested


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def override_value(override: str) -> tuple[str, Any]:
    """(key, value) of one Hydra override as verl's resolved config holds it (quotes removed, lists parsed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([override])[0]
    return parsed.key_or_group, parsed.value()


def config_value(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _same(expected: Any, found: Any) -> bool:
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        return len(expected) == len(found) and all(_same(e, f) for e, f in zip(expected, found))
    if isinstance(expected, bool) or isinstance(found, bool):
        return expected is found or expected == found and type(expected) is type(found)
    if isinstance(expected, (int, float)) and isinstance(found, (int, float)):
        return float(expected) == float(found)
    return expected == found


def override_mismatches(overrides: list[str], config: Mapping[str, Any]) -> list[str]:
    """Each device-free override whose value is not the one in verl's resolved ``config``, as a line."""
    problems = []
    for override in overrides:
        if key_of(override) in DEVICE_BOUND:
            continue
        key, expected = override_value(override)
        try:
            found = config_value(config, key)
        except KeyError:
            problems.append(f"{key}: not in verl's config")
            continue
        if not _same(expected, found):
            problems.append(f"{key}: rendered {expected!r}, verl ran {found!r}")
    return problems


def resolved_config(trial_dir: Path) -> dict[str, Any] | None:
    """verl's resolved config of the trial's last attempt, as verl gave it to its W&B logger (offline run)."""
    from orchestrator.tracking import find_offline_runs, read_offline_run

    runs = find_offline_runs(trial_dir)
    if not runs:
        return None
    config = read_offline_run(runs[-1]).config
    return {k: v for k, v in config.items() if k != "maspo"}


def _verl_resumed_from(job_log: Path, checkpoint_dir: Path) -> int | None:
    """The step verl's trainer says it resumed from ("Resuming from <dir>/global_step_N") in a job's log."""
    try:
        text = job_log.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(rf"Resuming from {re.escape(str(checkpoint_dir))}/global_step_(\d+)", text)
    return int(found[-1]) if found else None


def rehearsal_checks(exp_dir: Path) -> list[Check]:
    """What the rehearsal of the experiment in ``exp_dir`` showed, one :class:`Check` per property."""
    from orchestrator.data_prepare import VALIDATION_NAMES
    from orchestrator.results import paper_rows
    from orchestrator.scales import checkpoint_dir
    from orchestrator.store import ExperimentDir, checkpoint_step, read_records

    experiment = ExperimentDir(exp_dir)
    plan = experiment.plan()
    checks: list[Check] = []
    done = {t.name: experiment.trial(t.name) for t in plan.trials}
    unfinished = [n for n, f in done.items() if f.status().get("state") != "succeeded"]
    checks.append(Check("every trial succeeded", not unfinished,
                        f"{len(plan.trials) - len(unfinished)}/{len(plan.trials)}"
                        + (f"; not: {', '.join(unfinished)}" if unfinished else "")))

    problems, compared = [], 0
    for planned in plan.trials:
        config = resolved_config(done[planned.name].path)
        if config is None:
            problems.append(f"{planned.name}: no W&B offline run (verl's resolved config)")
            continue
        rendered = a100_overrides(planned)
        compared += sum(key_of(o) not in DEVICE_BOUND for o in rendered)
        problems += [f"{planned.name}: {p}" for p in override_mismatches(rendered, config)]
    checks.append(Check("a100 overrides reached verl unchanged (all but the device-bound)", not problems,
                        "; ".join(problems[:3]) + (f" (+{len(problems) - 3})" if len(problems) > 3 else "")
                        if problems else f"{compared} overrides in {len(plan.trials)} trial(s), read back from "
                                         f"verl's resolved config"))

    missing_ckpt = []
    for planned in plan.trials:
        ckpt = checkpoint_dir(planned.trial.profile, planned.trial.stable_hash())
        if checkpoint_step(ckpt) != planned.trial.profile.steps:
            missing_ckpt.append(str(ckpt))
    root = plan.trials[0].trial.profile.checkpoint_root
    checks.append(Check("checkpoints at <checkpoint_root>/<trial hash>", not missing_ckpt,
                        f"no final checkpoint in {missing_ckpt[0]}" if missing_ckpt
                        else f"{root}/<hash>/global_step_{plan.steps} for every trial"))

    first = plan.trials[0]
    if should_drill(plan, first, 1):
        files = done[first.name]
        attempts = files.status().get("attempts", [])
        drilled = attempts[0].get("resume_drill") if attempts else None
        resumed = attempts[1].get("resumed_from_step") if len(attempts) > 1 else None
        retry_steps = [r["step"] for r in read_records(files.attempt_dir(2) / "metrics.jsonl")] \
            if len(attempts) > 1 else []
        steps = [r["step"] for r in files.records()]
        ckpt = checkpoint_dir(first.trial.profile, first.trial.stable_hash())
        verl_resumed = _verl_resumed_from(files.attempt_dir(2) / "job.log", ckpt) if len(attempts) > 1 else None
        ok = (drilled is not None and drilled >= 1 and resumed == drilled and verl_resumed == drilled
              and bool(retry_steps) and min(retry_steps) == drilled and steps == list(range(plan.steps + 1)))
        checks.append(Check("a stopped job's retry resumed from its checkpoint", ok,
                            f"{first.name}: attempt 1 stopped after the checkpoint of step {drilled}; attempt 2: "
                            f"verl resumed from global_step_{verl_resumed}, first logged step "
                            f"{min(retry_steps) if retry_steps else '-'}; every step logged once: "
                            f"{steps == list(range(plan.steps + 1))}"))
    else:
        checks.append(Check("a stopped job's retry resumed from its checkpoint", False,
                            "not drilled: needs test_freq < steps and max failures >= 1"))

    val_n = VAL_N  # the rehearsal's val_kwargs.n (DEVICE_BOUND)
    wanted = [f"val-core/{name}/acc/mean@{val_n}" for name in VALIDATION_NAMES]
    lacking = []
    for name, files in done.items():
        last = next((r["data"] for r in reversed(files.records()) if any(k.startswith("val-core/") for k in r["data"])),
                    {})
        lacking += [f"{name}: {k}" for k in wanted if k not in last]
    checks.append(Check("validation keys name the six benchmarks", not lacking,
                        "; ".join(lacking[:3]) if lacking else ", ".join(VALIDATION_NAMES) + f" (mean@{val_n}, ...)"))

    scores = [(r["data"].get("critic/score/min"), r["data"].get("critic/score/max"))
              for files in done.values() for r in files.records() if "critic/score/min" in r["data"]]
    graded = bool(scores) and all(lo is not None and -1.0 <= lo <= hi <= 1.0 for lo, hi in scores)
    checks.append(Check("the reward module graded every training step (+1 / -1)", graded,
                        f"{len(scores)} step(s), scores in [{min(s[0] for s in scores):+g}, "
                        f"{max(s[1] for s in scores):+g}]" if scores else "no critic/score in any step"))

    rows = paper_rows(plan)
    checks.append(Check(f"the paper's {plan.scale} rows beside the results", bool(rows),
                        f"{len(rows)} row(s): {', '.join(rows)}" if rows else f"none at scale {plan.scale}"))
    return checks


# --------------------------------------------------------------------------------------------------------
# what the user sees


def replaced_table(plan):
    """The overrides (and environment) the rehearsal replaces: the cluster's value against the rehearsal's."""
    from rich.table import Table

    t = Table(title=f"{plan.name}: a REHEARSAL of the a100 profile on CPU. Not tested here (replaced): every other "
                    f"a100 override reaches verl as the cluster renders it", title_justify="left")
    for column in ("override", "kind", "a100 (cluster)", "rehearsal", "why"):
        t.add_column(column, overflow="fold", no_wrap=column == "override")
    order = {"device": 0, "size": 1, "machine": 2}
    for r in sorted(replacements(plan), key=lambda r: order[r.kind]):
        t.add_row(r.key, r.kind, cluster_value(r), r.rehearsal, r.reason)
    env = job_env(Path("<attempt>/metrics.jsonl"), Path("<trial dir>"))
    for name, reason in ENV_REASONS.items():
        t.add_row(f"${name}", "env", "(unset)" if name not in ("WANDB_MODE",) else "online with credentials",
                  env[name], reason)
    return t


def checks_table(checks: list[Check]):
    from rich.table import Table

    t = Table(title="what the rehearsal tested", title_justify="left")
    for column in ("", "check", "detail"):
        t.add_column(column, overflow="fold")
    for c in checks:
        t.add_row("[green]ok[/]" if c.ok else "[red]FAILED[/]", c.name, c.detail)
    return t
