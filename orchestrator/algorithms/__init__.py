"""MASPO and its baselines as verl policy losses.

``compute`` is the notebook entry point: it validates hyperparameters, builds verl's own actor-config
object exactly as a worker would hold it, and calls the very function verl's ``ppo_loss`` calls::

    from orchestrator.algorithms import compute
    loss, metrics = compute("maspo", old_log_prob, log_prob, advantages, response_mask, alpha=0.3, beta=0.03)
    loss.backward()  # gradients w.r.t. log_prob

All tensors are (batch, response_length); ``response_mask`` is 1 on response tokens. ``entropy_adv`` also
takes ``entropy=`` (per-token entropy of the current policy); ``entropy_reg`` subtracts
``entropy_coeff * agg(entropy)`` when ``entropy=`` is given, as verl's ``ppo_loss`` does.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from orchestrator.algorithms.registry import ALGORITHMS, Algorithm, AlgorithmError, get

if TYPE_CHECKING:
    import torch

# Names, hyperparameters and verl overrides (``registry``) need neither torch nor verl, so the CLI validates a
# user's input in well under a second; the losses (``losses``, which imports verl) are registered in verl's
# registry by the plugin in every verl process, and here by ``compute`` and ``register_with_verl``.

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmError", "compute", "get", "names", "register_with_verl", "actor_config"]


def names() -> list[str]:
    return list(ALGORITHMS)


def register_with_verl() -> None:
    """Make sure every algorithm's verl loss is in verl's registry (importing ``losses`` registers them)."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    from orchestrator.algorithms import losses  # noqa: F401

    missing = [a.verl_loss for a in ALGORITHMS.values() if a.verl_loss not in POLICY_LOSS_REGISTRY]
    if missing:  # pragma: no cover - would mean verl dropped one of its own losses
        raise RuntimeError(f"verl's registry lacks {missing}")


def actor_config(name: str, **hyperparameters: Any):
    """verl's ``ActorConfig`` as a worker would hold it for this algorithm (policy_loss typed as ours)."""
    from verl.workers.config.actor import ActorConfig

    from orchestrator.algorithms.config import MaspoPolicyLossConfig

    algorithm = get(name)
    settings = algorithm.actor_settings(algorithm.parse(hyperparameters))
    policy_loss = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("policy_loss.")}
    policy_loss.pop("_target_")
    actor = {k: v for k, v in settings.items() if not k.startswith("policy_loss.")}
    return ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
        policy_loss=MaspoPolicyLossConfig(**policy_loss), **actor,
    )


def compute(
    name: str,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    **hyperparameters: Any,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Loss (to minimise) and metrics of algorithm ``name``, through verl's registry and config object."""
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn

    from orchestrator.algorithms import losses  # noqa: F401  (registers the losses in verl's registry)
    from orchestrator.algorithms.context import token_entropy

    config = actor_config(name, **hyperparameters)
    fn = get_policy_loss_fn(config.policy_loss.loss_mode)
    context = token_entropy(entropy) if entropy is not None else nullcontext()
    with context:
        loss, metrics = fn(
            old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
            response_mask=response_mask.bool(), loss_agg_mode=config.loss_agg_mode, config=config,
            rollout_is_weights=rollout_is_weights,
        )
    if entropy is not None and config.entropy_coeff != 0:  # verl's ppo_loss entropy term
        loss = loss - config.entropy_coeff * agg_loss(entropy, response_mask.bool(), config.loss_agg_mode)
    return loss, metrics
