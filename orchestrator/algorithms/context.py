"""Inputs that verl's policy-loss signature does not carry, handed to a loss for one call.

verl calls a registered loss with (old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
config, rollout_is_weights). Two baselines need more:
- Entropy Advantage needs the current policy's per-token entropy (computed in the update forward);
- BAPO needs bounds searched over the whole mini-batch, while the loss only sees one micro-batch.
``orchestrator.verl_bridge.actor_hooks`` (and ``orchestrator.algorithms.compute``) provide them
through these context variables, for the duration of one call.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch

_token_entropy: ContextVar[torch.Tensor | None] = ContextVar("maspo_token_entropy", default=None)
_bapo_bounds: ContextVar["BapoBounds | None"] = ContextVar("maspo_bapo_bounds", default=None)


@dataclass(frozen=True)
class BapoBounds:
    """The result of BAPO's Algorithm 1 for one policy update (one mini-batch)."""

    c_low: float
    c_high: float
    rho_pos: float
    steps: int


@contextmanager
def token_entropy(entropy: torch.Tensor) -> Iterator[None]:
    """Make the current policy's per-token entropy (padded like ``log_prob``, detached) visible."""
    token = _token_entropy.set(entropy.detach())
    try:
        yield
    finally:
        _token_entropy.reset(token)


def current_token_entropy() -> torch.Tensor | None:
    return _token_entropy.get()


@contextmanager
def bapo_bounds(bounds: BapoBounds) -> Iterator[None]:
    """Fix BAPO's (c_low, c_high) for the micro-batches of one mini-batch."""
    token = _bapo_bounds.set(bounds)
    try:
        yield
    finally:
        _bapo_bounds.reset(token)


def current_bapo_bounds() -> BapoBounds | None:
    return _bapo_bounds.get()
