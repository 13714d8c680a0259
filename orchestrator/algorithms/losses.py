"""MASPO and the baselines as verl policy losses (verl 0.9.1 signature, registered by name).

Every function has verl's signature
    fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)
        -> (scalar loss, metrics)
and returns the loss to *minimise* (the negated objective). Tensors are (batch, response_length).
Where verl already has the paper's form it is reused, not rewritten: ``grpo``, ``clip_higher`` and
``entropy_reg`` run verl's ``vanilla`` (PPO clip + dual clip), ``sapo`` runs verl's ``sapo``; the
advantage-shaping baselines reshape A and then call verl's ``vanilla``.

Symbols: rho = pi_theta / pi_old (log-ratio clamped to [-20, 20] as verl does), pi_old = exp(old_log_prob),
A = advantages, F = gate. Equation numbers refer to the MASPO paper (restated in docs/algorithms.md).
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_vanilla, register_policy_loss

from orchestrator.algorithms import bapo
from orchestrator.algorithms.context import current_bapo_bounds, current_token_entropy

# ----------------------------------------------------------------------------------------- helpers


def importance_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rho = exp(clamp(log pi_theta - log pi_old, -20, 20)), verl's guard; returns (rho, log rho)."""
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    return torch.exp(log_ratio), log_ratio


def masked_mean(values: torch.Tensor, mask: torch.Tensor, empty: float = 0.0) -> torch.Tensor:
    """Mean over the selected entries; ``empty`` when nothing is selected (metrics must stay finite)."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1.0)
    return torch.where(count > 0, mean, torch.as_tensor(empty, dtype=mean.dtype, device=mean.device))


def clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    lower: torch.Tensor | float,
    upper: torch.Tensor | float,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(rho A, clip(rho, lower, upper) A), optionally dual-clipped at -c A for A < 0.

    Returns (loss per token, mask of tokens whose clipped branch is active).
    """
    lower = torch.as_tensor(lower, dtype=ratio.dtype, device=ratio.device)
    upper = torch.as_tensor(upper, dtype=ratio.dtype, device=ratio.device)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, lower, upper)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    if dual_clip_c is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip_c), loss)
    return loss, clipped


def _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights) -> torch.Tensor:
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights
    return agg_loss(
        loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
    )


def _ppo_kl(log_ratio: torch.Tensor, response_mask: torch.Tensor) -> float:
    return masked_mean(-log_ratio, response_mask).item()


# ------------------------------------------------------------------------------------------- MASPO


def maspo_sigmas(
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    sigma_base: float,
    alpha: float,
    beta_low: float,
    beta_high: float,
    mass_cap: float = 10.0,
    risk_min: float = 0.1,
    risk_max: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual-variable adaptive variance in its implementation form (eqs. 19-20; eqs. 7-8 without clips).

    M         = min(sigma_base / pi_old^alpha, mass_cap)                 mass-adaptive limiter
    sigma_pos = M * clip(1 + beta_high * A, risk_min, risk_max)           risk controller, A > 0
    sigma_neg = M * clip(1 / (1 - beta_low * A), risk_min, risk_max)      risk controller, A < 0
    """
    # pi_old^-alpha computed in log space: pi_old may underflow to 0 (then M = mass_cap)
    mass = torch.clamp(sigma_base * torch.exp(-alpha * old_log_prob.clamp(min=-1e4)), max=mass_cap)
    risk_pos = torch.clamp(1.0 + beta_high * advantages, risk_min, risk_max)
    # only A < 0 uses sigma_neg; A.clamp(max=0) keeps the denominator >= 1 everywhere (finite for A >= 1/beta)
    risk_neg = torch.clamp(1.0 / (1.0 - beta_low * advantages.clamp(max=0.0)), risk_min, risk_max)
    return mass * risk_pos, mass * risk_neg


def maspo_gate(
    ratio: torch.Tensor, advantages: torch.Tensor, sigma_pos: torch.Tensor, sigma_neg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Gaussian gate F (eq. 6) on sg[rho]; returns (F, mask of gated tokens).

    F = exp(-(rho-1)^2 / (2 sigma_pos^2)) if A > 0 and rho > 1
        exp(-(rho-1)^2 / (2 sigma_neg^2)) if A < 0 and rho < 1
        1                                  otherwise
    """
    rho_sg = ratio.detach()
    gated_pos = (advantages > 0) & (rho_sg > 1.0)
    gated_neg = (advantages < 0) & (rho_sg < 1.0)
    sigma = torch.where(gated_pos, sigma_pos, sigma_neg)
    gaussian = torch.exp(-((rho_sg - 1.0) ** 2) / (2.0 * sigma**2))
    gated = gated_pos | gated_neg
    return torch.where(gated, gaussian, torch.ones_like(gaussian)).detach(), gated


@register_policy_loss("maspo")
def compute_policy_loss_maspo(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """MASPO (eq. 5): J = token-mean(F * rho * A), F from eq. 6 with sigmas of eqs. 19-20. No other clip."""
    pl = config.policy_loss
    ratio, log_ratio = importance_ratio(log_prob, old_log_prob)
    sigma_pos, sigma_neg = maspo_sigmas(
        old_log_prob, advantages, pl.maspo_sigma_base, pl.maspo_alpha, pl.maspo_beta_low, pl.maspo_beta_high,
        pl.maspo_mass_cap, pl.maspo_risk_min, pl.maspo_risk_max,
    )
    gate, gated = maspo_gate(ratio, advantages, sigma_pos, sigma_neg)
    pg_losses = -advantages * gate * ratio  # gradient: -F * rho * A * grad log pi  (F constant)
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    mask = response_mask.bool()
    return pg_loss, {
        # 1 (no attenuation) for a micro-batch without gated tokens, e.g. the first update where rho == 1
        "actor/maspo/gate_mean": masked_mean(gate, gated & mask, empty=1.0).item(),
        "actor/maspo/gated_frac": masked_mean(gated.float(), mask).item(),
        "actor/maspo/sigma_pos": masked_mean(sigma_pos, (advantages > 0) & mask).item(),
        "actor/maspo/sigma_neg": masked_mean(sigma_neg, (advantages < 0) & mask).item(),
        "actor/ppo_kl": _ppo_kl(log_ratio, response_mask),
    }


# --------------------------------------------------------------------------------------------- DAC


def dac_bounds(
    pi_old: torch.Tensor, eps_low: float, eps_high: float, high_cap: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DCPO's probability-dependent ratio bounds (eq. 3), upper bound capped at ``high_cap``.

    low(q)  = 0.5 + 0.5 sqrt(max(1 - 4 eps_low / q, 0)),   high(q) = 0.5 + 0.5 sqrt(1 + 4 eps_high / q)
    """
    low = 0.5 + 0.5 * torch.sqrt(torch.clamp(1.0 - 4.0 * eps_low / pi_old, min=0.0))
    high = torch.clamp(0.5 + 0.5 * torch.sqrt(1.0 + 4.0 * eps_high / pi_old), max=high_cap)
    return low, high


@register_policy_loss("dac")
def compute_policy_loss_dac(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """DAC: the PPO surrogate with bounds low(pi_old) <= rho <= high(pi_old) (eq. 3), dual clip kept."""
    ratio, log_ratio = importance_ratio(log_prob, old_log_prob)
    low, high = dac_bounds(
        torch.exp(old_log_prob), config.clip_ratio_low, config.clip_ratio_high, config.policy_loss.dac_high_cap
    )
    pg_losses, clipped = clipped_surrogate(ratio, advantages, low, high, config.clip_ratio_c)
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, {
        "actor/pg_clipfrac": masked_mean(clipped.float(), response_mask).item(),
        "actor/ppo_kl": _ppo_kl(log_ratio, response_mask),
        "actor/maspo/dac_high_mean": masked_mean(high, response_mask).item(),
        "actor/maspo/dac_low_mean": masked_mean(low, response_mask).item(),
    }


# -------------------------------------------------------------------------------------------- BAPO


@register_policy_loss("bapo")
def compute_policy_loss_bapo(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """BAPO step 3: maximise min(rho A, clip(rho, c_low, c_high) A) with Algorithm 1's bounds.

    The bounds come from the whole mini-batch (searched before its first micro-batch by
    ``verl_bridge.actor_hooks``); without that context they are searched over the tensors given.
    """
    ratio, log_ratio = importance_ratio(log_prob, old_log_prob)
    bounds = current_bapo_bounds()
    if bounds is None:
        bounds = bapo.search_bounds(ratio, advantages, torch.exp(old_log_prob), response_mask, config.policy_loss)
    pg_losses, clipped = clipped_surrogate(ratio, advantages, bounds.c_low, bounds.c_high)
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, {
        "actor/pg_clipfrac": masked_mean(clipped.float(), response_mask).item(),
        "actor/ppo_kl": _ppo_kl(log_ratio, response_mask),
        "actor/maspo/bapo_c_low": bounds.c_low,
        "actor/maspo/bapo_c_high": bounds.c_high,
        "actor/maspo/bapo_rho_pos": min(bounds.rho_pos, 1e6),
    }


# -------------------------------------------------------------------------------------------- SAPO


@register_policy_loss("sapo_unilateral")
def compute_policy_loss_sapo_unilateral(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="seq-mean-token-mean", config=None,
    rollout_is_weights=None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Unilateral SAPO (MASPO App. D.2): f(rho) = (4/tau) sigmoid(tau (rho - 1)) only where
    (A > 0 and rho > 1) or (A < 0 and rho < 1); plain rho * A elsewhere. Gradient weight 4p(1-p) (eq. 2)
    where gated, 1 elsewhere; continuous at rho = 1. Aggregated like verl's ``sapo`` (seq-mean-token-mean).
    """
    ratio, log_ratio = importance_ratio(log_prob, old_log_prob)
    tau = torch.where(advantages > 0, config.tau_pos, config.tau_neg).to(ratio.dtype)
    soft = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    gated = ((advantages > 0) & (ratio > 1.0)) | ((advantages < 0) & (ratio < 1.0))
    pg_losses = -advantages * torch.where(gated, soft, ratio)
    pg_loss = _aggregate(pg_losses, response_mask, "seq-mean-token-mean", config, rollout_is_weights)
    return pg_loss, {
        "actor/maspo/gated_frac": masked_mean(gated.float(), response_mask).item(),
        "actor/ppo_kl": _ppo_kl(log_ratio, response_mask),
    }


# ----------------------------------------------------------------------------- advantage shaping


def entropy_advantage(advantages: torch.Tensor, entropy: torch.Tensor, alpha: float, kappa: float) -> torch.Tensor:
    """Cheng et al. 2025: A' = A + min(alpha * H_detached, |A| / kappa)."""
    return advantages + torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)


@register_policy_loss("entropy_adv")
def compute_policy_loss_entropy_adv(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Entropy Advantage: verl's PPO clip on A' (current policy's per-token entropy, detached)."""
    entropy = current_token_entropy()
    if entropy is None:
        raise RuntimeError(
            "entropy_adv needs the current policy's per-token entropy: run it through maspo's verl plugin "
            "with actor.calculate_entropy=True, or pass entropy= to orchestrator.algorithms.compute"
        )
    pl = config.policy_loss
    shaped = entropy_advantage(advantages, entropy, pl.entropy_adv_alpha, pl.entropy_adv_kappa)
    pg_loss, metrics = compute_policy_loss_vanilla(
        old_log_prob, log_prob, shaped, response_mask, loss_agg_mode, config, rollout_is_weights
    )
    metrics["actor/maspo/entropy_adv_bonus"] = masked_mean(shaped - advantages, response_mask).item()
    return pg_loss, metrics


def reweighting_scale(old_log_prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """Yang et al. 2025b: A' = [alpha * pi_old + (1 - alpha)] * A; this is the factor, pi_old = exp(old_log_prob)."""
    return alpha * torch.exp(old_log_prob.detach()) + (1.0 - alpha)


@register_policy_loss("adv_reweight")
def compute_policy_loss_adv_reweight(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Advantage Reweighting: verl's PPO clip on A' (old_log_prob is fixed during a step, so computing A'
    here equals computing it once on the driver after advantage estimation)."""
    scale = reweighting_scale(old_log_prob, config.policy_loss.adv_reweight_alpha)
    pg_loss, metrics = compute_policy_loss_vanilla(
        old_log_prob, log_prob, scale * advantages, response_mask, loss_agg_mode, config, rollout_is_weights
    )
    metrics["actor/maspo/adv_reweight_scale"] = masked_mean(scale, response_mask.bool() & (advantages != 0)).item()
    return pg_loss, metrics
