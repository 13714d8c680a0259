import math

import pytest
import torch


def one_token(rho: float, advantage: float, pi_old: float, dtype=torch.float64):
    """(old_log_prob, log_prob (leaf, requires grad), advantages, mask) for a single response token."""
    old = torch.tensor([[math.log(pi_old)]], dtype=dtype)
    log_prob = torch.tensor([[math.log(rho * pi_old)]], dtype=dtype, requires_grad=True)
    adv = torch.tensor([[advantage]], dtype=dtype)
    return old, log_prob, adv, torch.ones_like(adv, dtype=torch.bool)


@pytest.fixture
def token():
    return one_token
