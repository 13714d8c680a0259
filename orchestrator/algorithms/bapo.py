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
Readings (docs/algorithms.md#bapo-readings): ``grad_mass`` (the default: pi_old * |A| over tokens whose gradient
survives the clip, BAPO's own section 2 notion of a token's contribution; rho_pos lies in [0, 1] and rises along the
whole path), ``literal`` (signed sums, as printed) and ``abs_sum`` (sums of |terms|).
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
    reading: str = "grad_mass",
) -> torch.Tensor:
    """(len(path), 2) float64 tensor of Eq. 8's numerator and denominator sums, before the absolute values.

    One pass over the tokens for the whole path. Per token, with w = pi_old and c_low < 1 < c_high,
        min(r A, clip(r, c_low, c_high) A) = A min(r, c_high)  if A > 0,   A max(r, c_low)  if A < 0,
    and clip(r, 0, c_high) gives the same for A > 0. So with
        P(c_high) = sum_{A>0} w A min(r, c_high),   N(c_low) = sum_{A<0} w |A| max(r, c_low),
        G+(c_high) = sum_{A>0, r<=c_high} w |A|,    G-(c_low) = sum_{A<0, r>=c_low} w |A|,
    literal: (P, P - N); abs_sum: (P, P + N); grad_mass: (G+, G+ + G-). Each of P, N, G+- at every bound on the
    path comes from per-bin sums (bucketize) and cumulative sums.
    """
    if reading not in ("literal", "abs_sum", "grad_mass"):
        raise ValueError(f"unknown BAPO reading {reading!r}: literal, abs_sum or grad_mass")
    mask = response_mask.bool()
    r, a, w = ratio.detach()[mask].double(), advantages.detach()[mask].double(), pi_old.detach()[mask].double()
    wa = w * a.abs()
    pos, neg = a > 0, a < 0
    highs = torch.tensor(sorted({c_high for _, c_high in path}), dtype=torch.float64, device=r.device)
    lows = torch.tensor(sorted({c_low for c_low, _ in path}), dtype=torch.float64, device=r.device)

    def per_bin(values: torch.Tensor, bounds: torch.Tensor, right: bool, select: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(bounds) + 1, dtype=torch.float64, device=r.device)
        out.index_add_(0, torch.bucketize(r[select], bounds, right=right), values[select])
        return out

    def below_and_total(values: torch.Tensor, bounds: torch.Tensor, right: bool, select: torch.Tensor):
        """(per bound: the sum of the selected tokens' values whose r is below it; their total)."""
        bins = per_bin(values, bounds, right, select)
        return torch.cumsum(bins, 0)[:-1], bins.sum()

    def at_or_above(values: torch.Tensor, bounds: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """Per bound: the sum of the selected tokens' values whose r is >= it (a sum of non-negative terms, so
        never below 0 in floating point, unlike total minus the part below)."""
        bins = per_bin(values, bounds, True, select)
        return torch.flip(torch.cumsum(torch.flip(bins, [0]), 0), [0])[1:]

    # positive tokens with r <= c_high (right=False: bin = number of bounds < r)
    pos_wa_r, _ = below_and_total(wa * r, highs, False, pos)
    pos_wa, pos_wa_total = below_and_total(wa, highs, False, pos)
    # negative tokens with r < c_low (right=True: bin = number of bounds <= r)
    neg_wa_r, neg_wa_r_total = below_and_total(wa * r, lows, True, neg)
    neg_wa, _ = below_and_total(wa, lows, True, neg)

    p_high = pos_wa_r + highs * (pos_wa_total - pos_wa)  # P(c_high)
    n_low = (neg_wa_r_total - neg_wa_r) + lows * neg_wa  # N(c_low)
    g_pos, g_neg = pos_wa, at_or_above(wa, lows, neg)  # G+(c_high), G-(c_low)

    hi = {c: i for i, c in enumerate(highs.tolist())}
    lo = {c: i for i, c in enumerate(lows.tolist())}
    i_high = torch.tensor([hi[c_high] for _, c_high in path], device=r.device)
    i_low = torch.tensor([lo[c_low] for c_low, _ in path], device=r.device)
    if reading == "grad_mass":
        numerator = g_pos[i_high]
        denominator = numerator + g_neg[i_low]
    else:
        numerator = p_high[i_high]
        denominator = numerator - n_low[i_low] if reading == "literal" else numerator + n_low[i_low]
    return torch.stack([numerator, denominator], dim=1)


def rho_pos(sums: torch.Tensor) -> torch.Tensor:
    """rho_pos at every point of the path from :func:`contribution_sums`' (numerator, denominator).

    A zero denominator means no token contributes anything: rho_pos is then 1 when the numerator is 0 too (always
    so under ``grad_mass`` and ``abs_sum``, whose numerator is part of the denominator), else inf (``literal``).
    """
    numerator, denominator = sums[:, 0].abs(), sums[:, 1].abs()
    empty = torch.where(numerator > 0, torch.full_like(numerator, math.inf), torch.ones_like(numerator))
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), empty)


def select_bounds(sums: torch.Tensor, path: list[tuple[float, float]], rho0: float) -> BapoBounds:
    """Algorithm 1's stopping rule on (globally summed) contributions: the first point with rho_pos >= rho_0."""
    rho = rho_pos(sums)
    # a zero denominator counts as a satisfied target
    reached = torch.nonzero((rho >= rho0) | (sums[:, 1] == 0))
    k = int(reached[0]) if len(reached) else len(path) - 1
    c_low, c_high = path[k]
    return BapoBounds(c_low=c_low, c_high=c_high, rho_pos=float(rho[k]), steps=k)


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
