"""Every hand-computable test vector of docs/algorithms.md#test-vectors, values and gradients, to 1e-6.

For one token with token-mean aggregation the loss is the per-token loss and d(loss)/d(log pi) is the
dL column there; gradients are taken with autograd with respect to log_prob.
"""

import math

import pytest
import torch

from orchestrator.algorithms import bapo, compute
from orchestrator.algorithms.config import MaspoPolicyLossConfig
from orchestrator.algorithms.losses import dac_bounds, entropy_advantage, maspo_gate, maspo_sigmas, reweighting_scale
from tests.conftest import one_token

TOL = 1e-6

# id, rho, A, pi_old, alpha, beta, sigma used (None = not gated), F, dL
MASPO_VECTORS = [
    ("M1", 1.2, 1, 1.0, 0.5, 0.03, 1.03, 0.981325, -1.177590),
    ("M2", 1.5, 2, 0.25, 0.5, 0.03, 2.12, 0.972571, -2.917712),
    ("M3", 0.5, -1, 0.64, 0.5, 0.03, 1.213592, 0.918630, 0.459315),
    ("M4", 0.5, 1, 0.64, 0.5, 0.03, None, 1.0, -0.5),
    ("M5", 1.5, -1, 0.64, 0.5, 0.03, None, 1.0, 1.5),
    ("M6", 2.0, 1, 1e-4, 0.5, 0.03, 10.3, 0.995298, -1.990596),
    ("M7", 3.0, 1, 0.9, 0.3, 0.0, 1.032113, 0.152975, -0.458925),
    ("M8", 0.2, -3, 1.0, 0.3, 0.03, 0.917431, 0.683730, 0.410238),
    ("M9", 1.1, 400, 1.0, 0.3, 0.03, 10.0, 0.999950, -439.978),
    ("M10", 0.9, -400, 1.0, 0.3, 0.03, 0.1, 0.606531, 218.351),
    ("M11", 1.0, 1, 0.5, 0.3, 0.03, None, 1.0, -1.0),
    ("M12", 0.3, -0.5, 0.01, 0.3, 0.03, 3.922238, 0.984200, 0.147630),
    ("M13", 2.0, 1, 0.5, 0.0, 0.0, 1.0, 0.606531, -1.213061),
]


@pytest.mark.parametrize("vid,rho,adv,pi_old,alpha,beta,sigma,gate,dl", MASPO_VECTORS, ids=[v[0] for v in MASPO_VECTORS])
def test_maspo_vectors(vid, rho, adv, pi_old, alpha, beta, sigma, gate, dl):
    old, log_prob, a, mask = one_token(rho, adv, pi_old)
    loss, metrics = compute("maspo", old, log_prob, a, mask, sigma_base=1.0, alpha=alpha, beta=beta)
    loss.backward()
    # the vectors give M9/M10's dL to 3 decimals: compare at the printed precision there
    tol = 1e-3 if abs(dl) > 100 else TOL
    assert log_prob.grad.item() == pytest.approx(dl, abs=tol)
    assert loss.item() == pytest.approx(dl, abs=tol)  # loss = -F rho A, and so is its gradient in log pi
    sigma_pos, sigma_neg = maspo_sigmas(old, a, 1.0, alpha, beta, beta)
    f, gated = maspo_gate(torch.tensor([[rho]], dtype=torch.float64), a, sigma_pos, sigma_neg)
    assert f.item() == pytest.approx(gate, abs=TOL)
    assert bool(gated.item()) == (sigma is not None)
    if sigma is not None:
        used = sigma_pos if adv > 0 else sigma_neg
        assert used.item() == pytest.approx(sigma, abs=TOL)
        assert metrics["actor/maspo/gate_mean"] == pytest.approx(gate, abs=1e-5)
        assert metrics["actor/maspo/gated_frac"] == 1.0


DAC_Q = [1.0, 0.9, 0.8, 0.5, 0.2, 0.1, 0.05, 0.01, 0.001]
DAC_LOW = [0.723607, 0.666667, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
DAC_HIGH = [1.170820, 1.187184, 1.207107, 1.306226, 1.618034, 2.0, 2.561553, 5.0, 10.0]


@pytest.mark.parametrize("q,low,high", list(zip(DAC_Q, DAC_LOW, DAC_HIGH)))
def test_dac_bounds(q, low, high):
    lo, hi = dac_bounds(torch.tensor(q, dtype=torch.float64), 0.2, 0.2, 10.0)
    assert lo.item() == pytest.approx(low, abs=TOL)
    assert hi.item() == pytest.approx(high, abs=TOL)


def test_dac_bounds_uncapped_and_dcpo_readme():
    _, hi = dac_bounds(torch.tensor(0.001, dtype=torch.float64), 0.2, 0.2, high_cap=math.inf)
    assert hi.item() == pytest.approx(14.650972, abs=TOL)
    lo, hi = dac_bounds(torch.tensor(0.9, dtype=torch.float64), 0.16, 0.2)
    assert (lo.item(), hi.item()) == (pytest.approx(0.768742, abs=TOL), pytest.approx(1.187184, abs=TOL))
    lo, hi = dac_bounds(torch.tensor(0.01, dtype=torch.float64), 0.16, 0.2)
    assert (lo.item(), hi.item()) == (pytest.approx(0.5, abs=TOL), pytest.approx(5.0, abs=TOL))


@pytest.mark.parametrize("q,high", [(0.5, 1.306226), (0.1, 2.0), (0.01, 5.0)])
def test_dac_gradient_stops_exactly_at_the_upper_bound(q, high):
    for rho, active in [(high - 1e-4, True), (high + 1e-4, False)]:
        old, log_prob, a, mask = one_token(rho, 1.0, q)
        loss, _ = compute("dac", old, log_prob, a, mask)
        loss.backward()
        assert (log_prob.grad.item() != 0.0) == active


def _sapo_token(tau_pos, tau_neg, rho, adv):
    old, log_prob, a, mask = one_token(rho, adv, 0.5)
    loss, _ = compute("sapo", old, log_prob, a, mask, tau_pos=tau_pos, tau_neg=tau_neg)
    loss.backward()
    weight = -log_prob.grad.item() / (rho * adv)  # w = 4 p (1 - p)
    return loss.item(), log_prob.grad.item(), weight


def test_sapo_vectors():
    loss, dl, w = _sapo_token(1.0, 1.05, 1.5, 1.0)
    assert (loss, dl, w) == (pytest.approx(-2.489837, abs=TOL), pytest.approx(-1.410022, abs=TOL),
                             pytest.approx(0.940015, abs=TOL))
    loss, dl, w = _sapo_token(1.0, 1.05, 0.5, -1.0)
    assert (loss, dl, w) == (pytest.approx(1.415938, abs=TOL), pytest.approx(0.467070, abs=TOL),
                             pytest.approx(0.934140, abs=TOL))
    assert _sapo_token(1.0, 1.05, 1.0, 1.0)[2] == pytest.approx(1.0, abs=TOL)
    assert _sapo_token(1.0, 1.05, 3.0, 1.0)[2] == pytest.approx(0.419974, abs=TOL)
    assert _sapo_token(1.0, 1.05, 2.0, -1.0)[2] == pytest.approx(0.768110, abs=TOL)


def test_sapo_unilateral_gates_only_like_maspo():
    for rho, adv, expected in [(1.5, 1.0, 0.940015), (0.5, -1.0, 0.934140), (0.5, 1.0, 1.0), (2.0, -1.0, 1.0)]:
        old, log_prob, a, mask = one_token(rho, adv, 0.5)
        loss, _ = compute("sapo_unilateral", old, log_prob, a, mask)
        loss.backward()
        assert -log_prob.grad.item() / (rho * adv) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(
    "name,rho,adv,active",
    [("grpo", 1.25, 1, False), ("grpo", 1.25, -1, True), ("grpo", 0.75, -1, False), ("grpo", 0.75, 1, True),
     ("grpo", 3.5, -1, False), ("clip_higher", 1.25, 1, True), ("clip_higher", 1.27, 1, False)],
)
def test_ppo_clip_gradient_activity(name, rho, adv, active):
    old, log_prob, a, mask = one_token(rho, adv, 0.5)
    loss, _ = compute(name, old, log_prob, a, mask)
    loss.backward()
    assert (log_prob.grad.item() != 0.0) == active
    if active:
        assert log_prob.grad.item() == pytest.approx(-rho * adv, abs=TOL)


def _bapo_config(reading):
    return MaspoPolicyLossConfig(loss_mode="bapo", bapo_reading=reading)


def _bapo_tokens(tokens):
    adv = torch.tensor([[t[0] for t in tokens]], dtype=torch.float64)
    ratio = torch.tensor([[t[1] for t in tokens]], dtype=torch.float64)
    pi_old = torch.tensor([[t[2] for t in tokens]], dtype=torch.float64)
    return ratio, adv, pi_old, torch.ones_like(adv, dtype=torch.bool)


B1 = [(+1, 1.6, .3), (+1, .9, .8), (-1, .5, .3), (-1, 1.1, .9), (-1, .95, .7), (-1, .7, .5)]
B2 = [(+1, 2.0, .5), (+1, 1.0, .5), (-1, 1.0, 1.0), (-1, 1.0, .79)]


def test_bapo_b1():
    ratio, adv, pi_old, mask = _bapo_tokens(B1)
    path = bapo.bound_path(0.6, 0.9, 1.2, 3.0, 0.02, 0.05)
    start = bapo.contribution_sums(ratio, adv, pi_old, mask, path[:1], "literal")[0]
    assert start[0].item() == pytest.approx(1.08, abs=TOL)
    assert start[1].item() == pytest.approx(-1.105, abs=TOL)
    assert bapo.contribution_sums(ratio, adv, pi_old, mask, path[:1], "abs_sum")[0, 1].item() == pytest.approx(3.265)
    literal = bapo.search_bounds(ratio, adv, pi_old, mask, _bapo_config("literal"))
    assert (literal.c_low, literal.c_high, literal.steps) == (0.6, 1.2, 0)
    assert literal.rho_pos == pytest.approx(1.08 / 1.105, abs=TOL)
    abs_sum = bapo.search_bounds(ratio, adv, pi_old, mask, _bapo_config("abs_sum"))
    assert (abs_sum.c_low, abs_sum.c_high, abs_sum.steps) == (pytest.approx(0.9), pytest.approx(3.0), 51)
    assert abs_sum.rho_pos == pytest.approx(0.3357, abs=1e-4)


def test_bapo_b2():
    ratio, adv, pi_old, mask = _bapo_tokens(B2)
    literal = bapo.search_bounds(ratio, adv, pi_old, mask, _bapo_config("literal"))
    assert (literal.c_low, literal.c_high) == (0.6, 1.2)
    assert literal.rho_pos == pytest.approx(1.1 / 0.69, abs=TOL)
    abs_sum = bapo.search_bounds(ratio, adv, pi_old, mask, _bapo_config("abs_sum"))
    assert (abs_sum.c_low, abs_sum.c_high, abs_sum.steps) == (pytest.approx(0.6), pytest.approx(1.40), 4)
    assert abs_sum.rho_pos == pytest.approx(0.4013, abs=1e-4)
    sums = bapo.contribution_sums(ratio, adv, pi_old, mask, bapo.bound_path(0.6, 0.9, 1.2, 3.0, 0.02, 0.05)[:5],
                                  "abs_sum")
    rho = (sums[:, 0] / sums[:, 1]).tolist()
    assert rho == pytest.approx([0.3806, 0.3859, 0.3912, 0.3963, 0.4013], abs=1e-4)


def test_bapo_grad_mass_moves_both_bounds():
    """The default reading: B1 needs both phases of Algorithm 1, and each raises rho_pos."""
    ratio, adv, pi_old, mask = _bapo_tokens(B1)
    path = bapo.bound_path(0.6, 0.9, 1.2, 3.0, 0.02, 0.05)
    rho = bapo.rho_pos(bapo.contribution_sums(ratio, adv, pi_old, mask, path, "grad_mass"))
    assert rho[0].item() == pytest.approx(0.8 / 2.9)  # (+1, 1.6) clipped; (-1, .5) clipped
    assert rho[8].item() == pytest.approx(1.1 / 3.2)  # c_high = 1.6 lets (+1, 1.6) through
    assert rho[42].item() == pytest.approx(1.1 / 2.7)  # c_low = 0.72 clips (-1, .7)
    assert MaspoPolicyLossConfig(loss_mode="bapo").bapo_reading == "grad_mass"
    found = bapo.search_bounds(ratio, adv, pi_old, mask, MaspoPolicyLossConfig(loss_mode="bapo"))
    assert (found.c_low, found.c_high, found.steps) == (pytest.approx(0.72), pytest.approx(3.0), 42)
    assert found.rho_pos == pytest.approx(0.4074, abs=1e-4)
    ratio, adv, pi_old, mask = _bapo_tokens(B2)
    found = bapo.search_bounds(ratio, adv, pi_old, mask, _bapo_config("grad_mass"))
    assert (found.c_low, found.c_high, found.steps) == (pytest.approx(0.9), pytest.approx(3.0), 51)
    assert found.rho_pos == pytest.approx(1.0 / 2.79)


def test_bapo_path_uses_integer_counters():
    path = bapo.bound_path(0.6, 0.9, 1.2, 3.0, 0.02, 0.05)
    assert len(path) == 36 + 15 + 1
    assert path[36] == (0.6, pytest.approx(3.0))
    assert path[-1] == (pytest.approx(0.9), pytest.approx(3.0))


@pytest.mark.parametrize("adv,h,expected", [(1, 1.5, 1.5), (-1, 1.5, -0.5), (2, .5, 2.2), (0, 3, 0), (-.25, .1, -.21)])
def test_entropy_advantage_vectors(adv, h, expected):
    shaped = entropy_advantage(torch.tensor(float(adv), dtype=torch.float64), torch.tensor(float(h), dtype=torch.float64),
                               alpha=0.4, kappa=2.0)
    assert shaped.item() == pytest.approx(expected, abs=TOL)
    # through the registered loss: inside the clip (rho = 1) the gradient is -A'
    old, log_prob, a, mask = one_token(1.0, adv, 0.5)
    loss, _ = compute("entropy_adv", old, log_prob, a, mask, entropy=torch.full_like(a, h))
    loss.backward()
    assert log_prob.grad.item() == pytest.approx(-expected, abs=TOL)


@pytest.mark.parametrize("pi,adv,expected", [(.2, 2, 1.84), (.9, -1, -0.99)])
def test_advantage_reweighting_vectors(pi, adv, expected):
    shaped = reweighting_scale(torch.tensor(math.log(pi)), alpha=0.1) * adv
    assert shaped.item() == pytest.approx(expected, abs=TOL)
    old, log_prob, a, mask = one_token(1.0, adv, pi)
    loss, _ = compute("adv_reweight", old, log_prob, a, mask)
    loss.backward()
    assert log_prob.grad.item() == pytest.approx(-expected, abs=TOL)


def test_maspo_gate_mean_is_one_when_nothing_is_gated():
    """The first update of a step has rho == 1: no token is gated, and the metric must not read 0."""
    old = torch.log(torch.full((2, 3), 0.5, dtype=torch.float64))
    log_prob = old.clone().requires_grad_(True)
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3], dtype=torch.float64)
    _, metrics = compute("maspo", old, log_prob, adv, torch.ones_like(adv, dtype=torch.bool))
    assert metrics["actor/maspo/gated_frac"] == 0.0 and metrics["actor/maspo/gate_mean"] == 1.0
