"""The two hooks in verl's actor update path: what registered policy losses cannot do without, and the
mechanism metrics of every loss.

verl 0.9.1's actor update: ``TrainingWorker.train_mini_batch`` splits a step's batch into mini-batches
(one optimizer step each) and calls ``TrainingWorker.train_batch`` per mini-batch; the engine splits that
into micro-batches and calls ``ppo_loss(config, model_output, data)`` per micro-batch, which calls the
registered policy loss. Two baselines need what that call does not pass, and the mechanism metrics need more
than one micro-batch:

1. Entropy Advantage needs the *current* policy's per-token entropy. ``model_output["entropy"]`` holds it
   when ``actor.calculate_entropy=True`` (the algorithm's overrides set it). ``ppo_loss`` is wrapped to
   hand it, padded like ``log_prob`` and detached, to the loss through ``algorithms.context``.
2. BAPO searches its bounds per policy update over the whole mini-batch. ``train_batch`` is wrapped: for
   ``loss_mode=bapo`` it first runs one no-grad forward over the mini-batch (the engine's own
   ``infer_batch``, with the training micro-batch sizes) that sums Eq. 8's contributions along the
   bound path, all-reduces them across data-parallel ranks, and fixes the chosen bounds for every
   micro-batch of the update. Cost: one extra forward per mini-batch, for BAPO only.
3. The mechanism metrics (``algorithms.mechanism``, docs/algorithms.md#mechanism-metrics), for every loss:
   the ``ppo_loss`` wrapper calls the registered loss once more on detached copies of the micro-batch's tensors
   (its per-token gradient weight by autograd) and appends the micro-batch's token sums to the update's list;
   the ``train_batch`` wrapper sets that list up, all-reduces its total over the data-parallel ranks, and adds
   the update's ``actor/mechanism/*`` metrics to verl's. verl averages them over the step's updates.

The entropy and the BAPO search pass through for every other loss; a critic's ``train_batch`` passes through
entirely. They are installed by the patch manifest (``orchestrator.verl_bridge.patches``: ``ppo_loss_hook``,
``ppo_loss_hook_engine_workers``, ``train_batch_hook``; see docs/patches.md); the ``engine_workers`` ones when
that module is first imported (a heavy module the driver never needs).

The ``train_batch`` hook reads the actor's loss configuration from ``TrainingWorker.loss_fn``, which verl 0.9.1
builds as ``functools.partial(ppo_loss, config=actor_config)``. If verl stops doing so, the hook cannot tell
BAPO's loss mode, and BAPO would fall back to per-micro-batch bounds without a word: so the manifest checks that
contract when it installs the hook (``loss_fn_contract``, which also checks the ``update_lr_scheduler`` flag the
last-update metric reads), and the hook raises ``PatchTargetError`` when a worker's ``loss_fn`` does not carry
the config.
"""

from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar

import torch

from orchestrator.algorithms import bapo, mechanism
from orchestrator.algorithms.context import BapoBounds, bapo_bounds, token_entropy
from orchestrator.verl_bridge.patching import wrapper_factory

_HOOKED = "_maspo_hooked"
LOSS_FN_CONTRACT = "partial(ppo_loss, config="  # how verl 0.9.1's ActorRolloutRefWorker.init_model builds loss_fn
# how verl 0.9.1's TrainingWorker.train_mini_batch marks the last update of a step
LAST_UPDATE_CONTRACT = "update_lr_scheduler=batch_idx == total_num_iterations - 1"
# the mechanism sums of the micro-batches of the update in progress (set by hooked_train_batch)
_mechanism_sums: ContextVar[list | None] = ContextVar("maspo_mechanism_sums", default=None)


def _loss_mode(config) -> str:
    return config.policy_loss.get("loss_mode", "vanilla")


def _is_policy_loss_config(config) -> bool:
    """An actor's loss config (``policy_loss`` node); the critic's ``value_loss`` has none."""
    return getattr(config, "policy_loss", None) is not None


def _entropy_context(config, model_output, data):
    """Entropy Advantage's per-token entropy of the current policy, for the loss call (else nothing)."""
    from verl.workers.utils.padding import no_padding_2_padding

    if _loss_mode(config) != "entropy_adv":
        return contextlib.nullcontext()
    entropy = model_output.get("entropy", None)
    if entropy is None:
        raise RuntimeError("entropy_adv needs actor.calculate_entropy=True (the update forward's entropy)")
    return token_entropy(no_padding_2_padding(entropy.detach(), data))


def record_mechanism_sums(config, model_output, data) -> None:
    """Add this micro-batch's mechanism sums to the update's (inside ``hooked_train_batch`` only)."""
    sums = _mechanism_sums.get()
    if sums is None:  # not an actor update through TrainingWorker.train_batch
        return
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.utils.padding import no_padding_2_padding

    log_prob = no_padding_2_padding(model_output["log_probs"], data).detach()
    fields = ["response_mask", "old_log_probs", "advantages"]
    if "rollout_is_weights" in data:
        fields.append("rollout_is_weights")
    padded = data.select(*fields).to_padded_tensor()
    loss_mode = _loss_mode(config)
    sums.append(mechanism.micro_batch_sums(
        get_policy_loss_fn(loss_mode), loss_mode, padded["old_log_probs"], log_prob, padded["advantages"],
        padded["response_mask"].to(bool), config.loss_agg_mode, config, padded.get("rollout_is_weights", None),
    ))


@wrapper_factory(_HOOKED)
def wrap_ppo_loss(ppo_loss):
    """verl's ``ppo_loss`` plus the current policy's per-token entropy for ``entropy_adv``, and the mechanism
    metrics' sums for every loss."""

    def hooked_ppo_loss(config, model_output, data, dp_group=None):
        with _entropy_context(config, model_output, data):
            out = ppo_loss(config, model_output, data, dp_group)
            record_mechanism_sums(config, model_output, data)  # in the entropy context: entropy_adv's loss
        return out

    return hooked_ppo_loss


def search_bapo_bounds_over_mini_batch(worker, data, config) -> BapoBounds:
    """Algorithm 1 over one mini-batch, all data-parallel ranks together (one no-grad forward)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import no_padding_2_padding

    pl = config.policy_loss
    path = bapo.bound_path(pl.bapo_c_low_start, pl.bapo_c_low_max, pl.bapo_c_high_start, pl.bapo_c_high_max,
                           pl.bapo_delta_low, pl.bapo_delta_high)
    partial_sums: list[torch.Tensor] = []

    def collect(model_output, data, dp_group=None):
        log_prob = no_padding_2_padding(model_output["log_probs"], data)
        padded = data.select("response_mask", "old_log_probs", "advantages").to_padded_tensor()
        old_log_prob = padded["old_log_probs"]
        ratio = torch.exp(torch.clamp(log_prob - old_log_prob, -20.0, 20.0))
        partial_sums.append(bapo.contribution_sums(
            ratio, padded["advantages"], torch.exp(old_log_prob), padded["response_mask"], path, pl.bapo_reading
        ))
        return torch.zeros((), device=log_prob.device), {}

    probe = data.copy()
    engine_config = worker.engine_config
    tu.assign_non_tensor(
        probe,
        use_remove_padding=worker.model_config.get("use_remove_padding", False),
        use_dynamic_bsz=engine_config.use_dynamic_bsz,
        max_token_len_per_gpu=engine_config.max_token_len_per_gpu,
        micro_batch_size_per_gpu=engine_config.micro_batch_size_per_gpu,
        use_fused_kernels=engine_config.use_fused_kernels,
    )
    worker.engine.infer_batch(probe, loss_function=collect)
    sums = torch.stack(partial_sums).sum(dim=0)
    group = worker.engine.get_data_parallel_group()
    if torch.distributed.is_initialized():
        device_sums = sums.to(worker.device_name if hasattr(worker, "device_name") else sums.device)
        torch.distributed.all_reduce(device_sums, op=torch.distributed.ReduceOp.SUM, group=group)
        sums = device_sums.cpu()
    return bapo.select_bounds(sums, path, pl.bapo_rho0)


def actor_loss_config(worker):
    """The actor config in the worker's ``loss_fn`` (``partial(ppo_loss, config=...)``); None without a loss_fn.

    Raises ``PatchTargetError`` when the loss function does not carry it: BAPO could not be told apart.
    """
    loss_fn = getattr(worker, "loss_fn", None)
    if loss_fn is None:
        return None  # verl's own train_batch asserts on this
    keywords = getattr(loss_fn, "keywords", None)
    if not isinstance(keywords, dict) or "config" not in keywords:
        from orchestrator.verl_bridge.patches import PatchTargetError

        raise PatchTargetError(
            f"patch 'train_batch_hook': TrainingWorker.loss_fn is {loss_fn!r}, not functools.partial("
            f"<loss>, config=<actor config>) as in verl 0.9.1; without its config BAPO's bounds would silently "
            f"be searched per micro-batch (see docs/patches.md#train_batch_hook)")
    return keywords["config"]


def reduce_mechanism_sums(worker, sums: list[torch.Tensor]) -> torch.Tensor:
    """The update's mechanism sums: over its micro-batches here, then over the data-parallel ranks."""
    total = torch.stack(sums).sum(dim=0) if sums else torch.zeros(len(mechanism.SUMS), dtype=torch.float64)
    if torch.distributed.is_initialized():
        group = worker.engine.get_data_parallel_group()
        device_total = total.to(worker.device_name if hasattr(worker, "device_name") else total.device)
        torch.distributed.all_reduce(device_total, op=torch.distributed.ReduceOp.SUM, group=group)
        total = device_total.cpu()
    return total


def add_metrics(output, metrics: dict[str, float]) -> None:
    """Put per-update metrics beside verl's in ``train_batch``'s output (one value per update, like grad_norm)."""
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(output, metrics={**tu.get(output, "metrics"), **metrics})


@wrapper_factory(_HOOKED)  # keeps verl's dispatch attributes (functools.update_wrapper)
def wrap_train_batch(train_batch):
    """``TrainingWorker.train_batch`` that fixes BAPO's bounds for the mini-batch before updating on it, and adds
    the update's mechanism metrics (summed over its micro-batches and the data-parallel ranks) to its output."""
    from verl.utils import tensordict_utils as tu

    def hooked_train_batch(self, data):
        config = actor_loss_config(self)
        if config is None or not _is_policy_loss_config(config):  # verl asserts on a missing loss_fn; a critic
            return train_batch(self, data)
        # train_mini_batch flags the last update of the step (LAST_UPDATE_CONTRACT)
        last_update = bool(tu.get(data, key="update_lr_scheduler", default=False))
        sums: list[torch.Tensor] = []
        token = _mechanism_sums.set(sums)
        try:
            if _loss_mode(config) == "bapo":
                with bapo_bounds(search_bapo_bounds_over_mini_batch(self, data, config)):
                    output = train_batch(self, data)
            else:
                output = train_batch(self, data)
        finally:
            _mechanism_sums.reset(token)
        metrics = mechanism.metrics_from_sums(reduce_mechanism_sums(self, sums), last_update)  # every rank
        if output is not None and metrics:
            add_metrics(output, metrics)
        return output

    return hooked_train_batch


def loss_fn_contract(engine_workers) -> str | None:
    """Install-time check of what ``hooked_train_batch`` reads: verl builds the actor's ``loss_fn`` as
    ``functools.partial(ppo_loss, config=...)`` (``ActorRolloutRefWorker.init_model``), and
    ``TrainingWorker.train_mini_batch`` flags the last update of a step with ``update_lr_scheduler``."""
    import inspect

    try:
        source = inspect.getsource(engine_workers.ActorRolloutRefWorker.init_model)
    except (AttributeError, OSError, TypeError) as err:
        return f"cannot read ActorRolloutRefWorker.init_model ({err})"
    if getattr(engine_workers, "partial", None) is not functools.partial or LOSS_FN_CONTRACT not in source:
        return (f"ActorRolloutRefWorker.init_model no longer sets loss_fn = {LOSS_FN_CONTRACT}...), the "
                f"config the BAPO hook reads")
    try:
        source = inspect.getsource(engine_workers.TrainingWorker.train_mini_batch)
    except (AttributeError, OSError, TypeError) as err:
        return f"cannot read TrainingWorker.train_mini_batch ({err})"
    if LAST_UPDATE_CONTRACT not in " ".join(source.split()):
        return (f"TrainingWorker.train_mini_batch no longer sets {LAST_UPDATE_CONTRACT}, the flag the "
                f"mechanism metrics read to tell the last update of a step")
    return None
