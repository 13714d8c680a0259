"""BAPO's bound search (Xi et al. 2025, Algorithm 1 with Eq. 8), separable over micro-batches and ranks.

Algorithm 1 walks a fixed path of bounds: c_high rises by delta1 from a+ to b+, then c_low rises by
delta2 from a- to b-, and it stops at the first (c_low, c_high) whose positive contribution
rho_pos reaches rho_0 (or when c_low can rise no more). Because the path does not depend on the data,
the search reduces to one (numerator, denominator) pair per point of the path. Those are sums over
tokens, so they can be added across micro-batches and all-reduced across data-parallel ranks before
rho_pos is formed: the bounds of a policy update are searched over its whole mini-batch.

Eq. 8, with pi_old the rollout probability and r the current ratio:
    rho_pos = | sum_{A_t>0} pi_old * min(r A, clip(r, 0, c_high) A) |
              / | sum_t pi_old * min(r A, clip(r, c_low, c_high) A) |
Readings (spec section 5): ``literal`` (signed sums, as printed), ``abs_sum`` (sums of |terms|), and
``grad_mass`` (pi_old * |A| over tokens whose gradient survives the clip).
"""

from __future__ import annotations

import math

import torch

from orchestrator.algorithms.context import BapoBounds


def bound_path(
    c_low_start: float, c_low_max: float, c_high_start: float, c_high_max: float, delta_low: float, delta_high: float
) -> list[tuple[float, float]]:
    """The (c_low, c_high) visited by Algorithm 1, step 0 first. Integer counters avoid float drift."""
    n_high = math.floor((c_high_max - c_high_start) / delta_high + 1e-9)
    n_low = math.floor((c_low_max - c_low_start) / delta_low + 1e-9)
    # the loop runs only while c_low can still rise (``c_low + delta2 <= b-``)
    n_steps = n_high + n_low if n_low > 0 else 0
    path = []
    for k in range(n_steps + 1):
        i, j = min(k, n_high), max(0, k - n_high)
        path.append((c_low_start + j * delta_low, c_high_start + i * delta_high))
    return path


def contribution_sums(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    pi_old: torch.Tensor,
    response_mask: torch.Tensor,
    path: list[tuple[float, float]],
    reading: str = "literal",
) -> torch.Tensor:
    """(len(path), 2) float64 tensor of Eq. 8's numerator and denominator sums, before the absolute values."""
    mask = response_mask.bool()
    r, a, p = ratio.detach()[mask].double(), advantages[mask].double(), pi_old.detach()[mask].double()
    positive = a > 0
    sums = torch.zeros(len(path), 2, dtype=torch.float64, device=ratio.device)
    for k, (c_low, c_high) in enumerate(path):
        if reading == "grad_mass":
            live_pos = positive & (r <= c_high)
            live = live_pos | ((a < 0) & (r >= c_low)) | (a == 0)
            sums[k, 0] = (p * a.abs() * live_pos).sum()
            sums[k, 1] = (p * a.abs() * live).sum()
            continue
        term_pos = p * torch.minimum(r * a, torch.clamp(r, 0.0, c_high) * a) * positive
        term_all = p * torch.minimum(r * a, torch.clamp(r, c_low, c_high) * a)
        if reading == "abs_sum":
            term_pos, term_all = term_pos.abs(), term_all.abs()
        elif reading != "literal":
            raise ValueError(f"unknown BAPO reading {reading!r}: literal, abs_sum or grad_mass")
        sums[k, 0] = term_pos.sum()
        sums[k, 1] = term_all.sum()
    return sums


def select_bounds(sums: torch.Tensor, path: list[tuple[float, float]], rho0: float) -> BapoBounds:
    """Algorithm 1's stopping rule on (globally summed) contributions: the first point with rho_pos >= rho_0."""
    numerator, denominator = sums[:, 0].abs(), sums[:, 1].abs()
    # a zero denominator counts as a satisfied target (rho_pos = inf)
    rho_pos = torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), torch.full_like(numerator, math.inf))
    reached = torch.nonzero(rho_pos >= rho0)
    k = int(reached[0]) if len(reached) else len(path) - 1
    c_low, c_high = path[k]
    return BapoBounds(c_low=c_low, c_high=c_high, rho_pos=float(rho_pos[k]), steps=k)


def search_bounds(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    pi_old: torch.Tensor,
    response_mask: torch.Tensor,
    policy_loss_config,
) -> BapoBounds:
    """Algorithm 1 over the tokens given (one process, one batch)."""
    cfg = policy_loss_config
    path = bound_path(
        cfg.bapo_c_low_start, cfg.bapo_c_low_max, cfg.bapo_c_high_start, cfg.bapo_c_high_max,
        cfg.bapo_delta_low, cfg.bapo_delta_high,
    )
    sums = contribution_sums(ratio, advantages, pi_old, response_mask, path, cfg.bapo_reading)
    return select_bounds(sums, path, cfg.bapo_rho0)
