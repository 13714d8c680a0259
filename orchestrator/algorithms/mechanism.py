"""Mechanism metrics: what each loss does to the policy gradient, measured the same way for every algorithm.

The paper's eq. 1 writes every method's gradient as F_t(rho) * rho_t * A_t * grad log pi_t: the algorithm is its
per-token weight F. These metrics measure F and the ratios it acts on, for any registered verl policy loss,
without knowing its formula (docs/algorithms.md#mechanism-metrics has the equations):

- F by autograd. ``gradient_weights`` differentiates the algorithm's own loss with respect to the per-token
  log-probability and divides by the derivative of the plain policy-gradient term -A rho under the same
  aggregation: w_t = (dL/dlog pi_t) / (dL_PG/dlog pi_t). Exact for any loss whose per-token term depends on its
  own token only (all of maspo's): 0 or 1 for a hard clip, the gate for MASPO, 4p(1-p) for SAPO, A'/A (within
  the clip) for the advantage-shaping baselines. Undefined, and left out, where A_t = 0 (no gradient at all).
- Ratios against a fixed reference clip of 0.2 (``REFERENCE_EPS``), whatever the algorithm's own bounds, so
  that one number means the same thing across algorithms.

``token_sums`` turns one micro-batch into the sums of ``SUMS`` (token counts and probability masses);
the actor hook (``verl_bridge.actor_hooks``) adds them up over the micro-batches of one policy update (one
mini-batch) and over data-parallel ranks, and ``metrics_from_sums`` turns the totals into the update's metrics.
Per step, verl averages them over the step's updates like its other actor metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

PREFIX = "actor/mechanism/"  # verl prefixes the actor's metrics with actor/ (update_actor)
REFERENCE_EPS = 0.2  # the hard clip the metrics compare with: rho outside [1 - 0.2, 1 + 0.2]
KEEP_THRESHOLD = 0.5  # a token's gradient is "suppressed" below this weight, "kept" above it

# The aggregation a loss applies whatever ``loss_agg_mode`` says (the gradient reference must use the same one).
FIXED_AGGREGATION = {"sapo": "seq-mean-token-mean", "sapo_unilateral": "seq-mean-token-mean"}

# The per-update token sums (over the micro-batches of one mini-batch, all data-parallel ranks).
SUMS = (
    "tokens",  # response tokens
    "outside",  # |rho - 1| > eps
    "outside_pos",  # ... with A > 0
    "outside_neg",  # ... with A < 0
    "hard_clipped",  # a hard clip at eps would zero the gradient: (A > 0, rho > 1 + eps) or (A < 0, rho < 1 - eps)
    "weighted",  # tokens with a defined gradient weight (A != 0)
    "weight_sum",  # sum of the gradient weight over them
    "suppressed",  # weight < 0.5
    "kept",  # hard_clipped and weight > 0.5
    "pos_tokens",  # A > 0
    "pos_clipped",  # A > 0 and rho > 1 + eps (what the hard clip discards of them)
    "pos_mass",  # sum of pi_old over A > 0
    "pos_mass_clipped",  # ... over the clipped ones
    "abs_dev",  # sum of |rho - 1|
)

# The metrics, what each one divides (numerator, denominator), and what it means. A metric whose denominator is
# 0 in an update (no A > 0 token, no A != 0 token) is left out of that update; verl then averages the others.
METRICS: dict[str, tuple[str, str, str]] = {
    "outside_clip_frac": ("outside", "tokens", "share of response tokens with |rho - 1| > 0.2"),
    "outside_clip_frac_pos": ("outside_pos", "tokens", "... those with A > 0 (share of all response tokens)"),
    "outside_clip_frac_neg": ("outside_neg", "tokens", "... those with A < 0 (share of all response tokens)"),
    "hard_clip_frac": ("hard_clipped", "tokens", "share of response tokens a hard clip at 0.2 would zero"),
    "suppressed_frac": ("suppressed", "tokens", "share of response tokens whose gradient weight is below 0.5"),
    "kept_frac": ("kept", "tokens", "share of response tokens a hard clip would zero that keep weight > 0.5"),
    "grad_weight_mean": ("weight_sum", "weighted", "mean gradient weight over tokens with A != 0"),
    "pos_clipped_frac": ("pos_clipped", "pos_tokens", "share of A > 0 tokens a hard clip at 0.2 would zero"),
    "pos_mass_clipped": ("pos_mass_clipped", "pos_mass",
                         "share of the A > 0 tokens' pi_old mass a hard clip at 0.2 would discard"),
    "ratio_dev": ("abs_dev", "tokens", "mean |rho - 1| over response tokens, every update"),
}
LAST_UPDATE = {"ratio_dev_last": ("abs_dev", "tokens", "mean |rho - 1| over response tokens, last update only")}
NAMES = tuple(PREFIX + name for name in (*METRICS, *LAST_UPDATE))


def gradient_weights(
    policy_loss_fn: Callable,
    loss_mode: str,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token gradient weight the loss applies relative to -A rho grad log pi, and where it is defined.

    Calls ``policy_loss_fn`` (verl's registered loss, with verl's signature) once more on detached copies of
    the inputs; nothing flows back into the model. Returns (weights, defined): ``weights`` is 0 where not
    ``defined`` (masked tokens, A = 0, a log-ratio outside verl's [-20, 20] guard).
    """
    from verl.trainer.ppo.core_algos import agg_loss

    old = old_log_prob.detach()
    adv = advantages.detach()
    mask = response_mask.bool()
    is_weights = None if rollout_is_weights is None else rollout_is_weights.detach()
    with torch.enable_grad():
        lp = log_prob.detach().clone().requires_grad_(True)
        loss, _ = policy_loss_fn(old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask,
                                 loss_agg_mode=loss_agg_mode, config=config, rollout_is_weights=is_weights)
        (grad,) = torch.autograd.grad(loss, lp, allow_unused=True)
        grad = torch.zeros_like(lp) if grad is None else grad

        lp_ref = log_prob.detach().clone().requires_grad_(True)
        ratio = torch.exp(torch.clamp(lp_ref - old, min=-20.0, max=20.0))
        plain = -adv * ratio
        if is_weights is not None:
            plain = plain * is_weights
        batch_info = dict(getattr(config, "global_batch_info", None) or {})
        mode = FIXED_AGGREGATION.get(loss_mode, loss_agg_mode)
        reference = agg_loss(loss_mat=plain, loss_mask=mask, loss_agg_mode=mode, **batch_info)
        (grad_ref,) = torch.autograd.grad(reference, lp_ref)
    defined = mask & (grad_ref != 0) & (adv != 0)
    weights = torch.where(defined, grad / torch.where(defined, grad_ref, torch.ones_like(grad_ref)),
                          torch.zeros_like(grad))
    return weights.detach(), defined


def token_sums(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    old_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    weights: torch.Tensor,
    defined: torch.Tensor,
    eps: float = REFERENCE_EPS,
) -> torch.Tensor:
    """The sums of ``SUMS`` over one micro-batch, as a float64 vector in that order (on the CPU)."""
    mask = response_mask.bool()
    rho = ratio.detach().double()
    adv = advantages.detach()
    pos, neg = (adv > 0) & mask, (adv < 0) & mask
    outside = ((rho - 1.0).abs() > eps) & mask
    clipped_pos = pos & (rho > 1.0 + eps)
    hard_clipped = clipped_pos | (neg & (rho < 1.0 - eps))
    defined = defined & mask
    w = weights.detach().double()
    pi_old = torch.exp(old_log_prob.detach().double())

    def count(selected: torch.Tensor) -> torch.Tensor:
        return selected.double().sum()

    values = {
        "tokens": count(mask),
        "outside": count(outside),
        "outside_pos": count(outside & pos),
        "outside_neg": count(outside & neg),
        "hard_clipped": count(hard_clipped),
        "weighted": count(defined),
        "weight_sum": torch.where(defined, w, torch.zeros_like(w)).sum(),
        "suppressed": count(defined & (w < KEEP_THRESHOLD)),
        "kept": count(hard_clipped & defined & (w > KEEP_THRESHOLD)),
        "pos_tokens": count(pos),
        "pos_clipped": count(clipped_pos),
        "pos_mass": torch.where(pos, pi_old, torch.zeros_like(pi_old)).sum(),
        "pos_mass_clipped": torch.where(clipped_pos, pi_old, torch.zeros_like(pi_old)).sum(),
        "abs_dev": torch.where(mask, (rho - 1.0).abs(), torch.zeros_like(rho)).sum(),
    }
    return torch.stack([values[name] for name in SUMS]).cpu()


def micro_batch_sums(
    policy_loss_fn: Callable,
    loss_mode: str,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``token_sums`` of one call of a policy loss (the ratio as verl computes it, log-ratio clamped to +-20)."""
    weights, defined = gradient_weights(policy_loss_fn, loss_mode, old_log_prob, log_prob, advantages,
                                        response_mask, loss_agg_mode, config, rollout_is_weights)
    ratio = torch.exp(torch.clamp(log_prob.detach() - old_log_prob.detach(), min=-20.0, max=20.0))
    return token_sums(ratio, advantages, old_log_prob, response_mask, weights, defined)


def metrics_from_sums(sums: torch.Tensor | Mapping[str, float], last_update: bool) -> dict[str, float]:
    """One update's metrics (``actor/mechanism/<name>``) from its summed ``SUMS``; see ``METRICS``."""
    if not isinstance(sums, Mapping):
        sums = dict(zip(SUMS, (float(v) for v in sums)))
    table = {**METRICS, **(LAST_UPDATE if last_update else {})}
    out = {}
    for name, (numerator, denominator, _) in table.items():
        if sums[denominator] > 0:
            out[PREFIX + name] = sums[numerator] / sums[denominator]
    return out
