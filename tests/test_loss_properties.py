"""Property tests (hypothesis) of every loss, on random batches of padded tokens."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

from orchestrator.algorithms import ALGORITHMS, actor_config, compute
from orchestrator.algorithms.losses import clipped_surrogate

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, max_rows=4, max_len=6):
    """Padded (batch, length) tensors with extreme but legal values: pi_old down to 1e-30, |log rho| up to 20,
    A = 0 allowed, fully masked rows allowed."""
    rows = draw(st.integers(1, max_rows))
    length = draw(st.integers(1, max_len))
    n = rows * length
    floats = lambda lo, hi: st.lists(st.floats(lo, hi, allow_nan=False), min_size=n, max_size=n)  # noqa: E731
    old = np.array(draw(floats(math.log(1e-30), 0.0))).reshape(rows, length)
    log_ratio = np.array(draw(floats(-20.0, 20.0))).reshape(rows, length)
    adv_row = draw(st.lists(st.sampled_from([0.0, 1.0, -1.0, 3.873, -0.258, 0.5, -3.75]), min_size=rows, max_size=rows))
    # 0 = a fully masked row; the batch as a whole keeps one token (verl normalises by the global token count)
    lengths = [draw(st.integers(1, length))] + draw(st.lists(st.integers(0, length), min_size=rows - 1, max_size=rows - 1))
    mask = np.array([[t < k for t in range(length)] for k in lengths])
    log_prob = torch.tensor(np.minimum(old + log_ratio, 0.0), requires_grad=True)
    entropy = torch.tensor(draw(floats(0.0, 12.0))).reshape(rows, length)
    adv = torch.tensor(adv_row)[:, None].expand(rows, length).clone()
    return torch.tensor(old), log_prob, adv, torch.tensor(mask), entropy


@pytest.mark.parametrize("name", list(ALGORITHMS))
@SETTINGS
@given(batch=batches())
def test_finite_loss_gradients_and_metrics(name, batch):
    old, log_prob, adv, mask, entropy = batch
    loss, metrics = compute(name, old, log_prob, adv, mask, entropy=entropy)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(log_prob.grad).all()
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # padding never receives gradient
    assert (log_prob.grad[~mask] == 0).all()


@SETTINGS
@given(batch=batches(), alpha=st.floats(0.0, 2.0), beta=st.floats(0.0, 0.5), sigma_base=st.floats(0.05, 5.0))
def test_maspo_gate_never_amplifies_a_gradient(batch, alpha, beta, sigma_base):
    """|dL_maspo/dlog pi| <= |dL_plain/dlog pi| token by token, where plain is the ungated rho*A objective."""
    old, log_prob, adv, mask, _ = batch
    loss, _ = compute("maspo", old, log_prob, adv, mask, alpha=alpha, beta=beta, sigma_base=sigma_base)
    (grad_maspo,) = torch.autograd.grad(loss, log_prob)
    ratio = torch.exp(torch.clamp(log_prob - old, -20, 20))
    plain = -(adv * ratio * mask).sum() / mask.sum().clamp(min=1)
    (grad_plain,) = torch.autograd.grad(plain, log_prob)
    assert (grad_maspo.abs() <= grad_plain.abs() * (1 + 1e-12) + 1e-300).all()
    assert (torch.sign(grad_maspo) * torch.sign(grad_plain) >= 0).all()


@SETTINGS
@given(batch=batches(), sigma=st.floats(0.05, 5.0))
def test_maspo_with_alpha_and_beta_zero_is_a_fixed_sigma_unilateral_gate(batch, sigma):
    old, log_prob, adv, mask, _ = batch
    loss, _ = compute("maspo", old, log_prob, adv, mask, alpha=0.0, beta=0.0, sigma_base=sigma)
    (grad,) = torch.autograd.grad(loss, log_prob)

    ratio = torch.exp(torch.clamp(log_prob - old, -20, 20))
    rho = ratio.detach()
    gated = ((adv > 0) & (rho > 1)) | ((adv < 0) & (rho < 1))
    gate = torch.where(gated, torch.exp(-((rho - 1) ** 2) / (2 * sigma**2)), torch.ones_like(rho))
    reference = -(gate * ratio * adv * mask).sum() / mask.sum().clamp(min=1)
    (grad_ref,) = torch.autograd.grad(reference, log_prob)
    torch.testing.assert_close(loss, reference, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(batch=batches())
def test_grpo_equals_verls_vanilla(batch):
    """`grpo` through maspo's hyperparameters and config is verl's own vanilla PPO loss (eps 0.2, c 3)."""
    from verl.workers.config.actor import ActorConfig

    old, log_prob, adv, mask, _ = batch
    loss, metrics = compute("grpo", old, log_prob, adv, mask)
    (grad,) = torch.autograd.grad(loss, log_prob)
    verl_config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1)
    ref, ref_metrics = compute_policy_loss_vanilla(old, log_prob, adv, mask, "token-mean", verl_config)
    (grad_ref,) = torch.autograd.grad(ref, log_prob)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, grad_ref)
    assert metrics == ref_metrics


@SETTINGS
# eps_high is generated in the range verl's config takes (every example is compared, none skipped)
@given(batch=batches(), eps_low=st.floats(0.01, 0.99), eps_high=st.floats(0.01, 0.99, exclude_max=True))
def test_clipped_surrogate_matches_verls_vanilla_per_token(batch, eps_low, eps_high):
    """The PPO surrogate DAC and BAPO share reproduces verl's vanilla for constant bounds."""
    old, log_prob, adv, mask, _ = batch
    ratio = torch.exp(torch.clamp(log_prob - old, -20, 20))
    per_token, _ = clipped_surrogate(ratio, adv, 1 - eps_low, 1 + eps_high, dual_clip_c=3.0)
    ours = (per_token * mask).sum() / mask.sum().clamp(min=1)
    config = actor_config("clip_higher", eps_low=eps_low, eps_high=eps_high)
    ref, _ = compute_policy_loss_vanilla(old, log_prob, adv, mask, "token-mean", config)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, log_prob)[0], torch.autograd.grad(ref, log_prob)[0])


@SETTINGS
@given(batch=batches())
def test_sapo_unilateral_equals_plain_gradient_where_not_gated(batch):
    old, log_prob, adv, mask, _ = batch
    loss, _ = compute("sapo_unilateral", old, log_prob, adv, mask)
    (grad,) = torch.autograd.grad(loss, log_prob)
    rho = torch.exp(torch.clamp(log_prob - old, -20, 20)).detach()
    not_gated = mask & ~(((adv > 0) & (rho > 1)) | ((adv < 0) & (rho < 1))) & (rho < math.exp(20))
    assume(not_gated.any())  # a batch with every token gated would compare two empty tensors (~5% of batches)
    seq_len = mask.sum(-1, keepdim=True).clamp(min=1)
    n_seq = (mask.sum(-1) > 0).sum().clamp(min=1)
    expected = -(rho * adv) / seq_len / n_seq  # seq-mean-token-mean weights
    torch.testing.assert_close(grad[not_gated], expected.expand_as(grad)[not_gated])


@SETTINGS
@given(batch=batches(max_rows=6), split=st.integers(1, 5), reading=st.sampled_from(["literal", "abs_sum", "grad_mass"]))
def test_bapo_contributions_add_up_over_micro_batches(batch, split, reading):
    """Why BAPO can search over a whole mini-batch from micro-batches: Eq. 8's sums are additive over rows."""
    from orchestrator.algorithms import bapo

    old, log_prob, adv, mask, _ = batch
    ratio = torch.exp(torch.clamp(log_prob - old, -20, 20)).detach()
    path = bapo.bound_path(0.6, 0.9, 1.2, 3.0, 0.02, 0.05)
    whole = bapo.contribution_sums(ratio, adv, torch.exp(old), mask, path, reading)
    split = min(split, len(adv))
    parts = sum(bapo.contribution_sums(ratio[s], adv[s], torch.exp(old[s]), mask[s], path, reading)
                for s in (slice(0, split), slice(split, None)))
    torch.testing.assert_close(whole, parts)


def _eq8_by_definition(ratio, adv, pi_old, mask, path, reading):
    """Eq. 8's sums written out token by token, for every point of the path (the slow reference)."""
    m = mask.bool()
    r, a, p = ratio[m].double(), adv[m].double(), pi_old[m].double()
    rows = []
    for c_low, c_high in path:
        if reading == "grad_mass":
            live_pos = (a > 0) & (r <= c_high)
            live = live_pos | ((a < 0) & (r >= c_low))
            rows.append([(p * a.abs() * live_pos).sum(), (p * a.abs() * live).sum()])
            continue
        term_pos = p * torch.minimum(r * a, torch.clamp(r, 0.0, c_high) * a) * (a > 0)
        term_all = p * torch.minimum(r * a, torch.clamp(r, c_low, c_high) * a)
        if reading == "abs_sum":
            term_pos, term_all = term_pos.abs(), term_all.abs()
        rows.append([term_pos.sum(), term_all.sum()])
    return torch.tensor([[float(x) for x in row] for row in rows], dtype=torch.float64)


@SETTINGS
@given(batch=batches(max_rows=6), reading=st.sampled_from(["literal", "abs_sum", "grad_mass"]),
       ties=st.booleans())
def test_bapo_one_pass_sums_equal_eq8_by_definition(batch, reading, ties):
    from orchestrator.algorithms import bapo

    old, log_prob, adv, mask, _ = batch
    ratio = torch.exp(torch.clamp(log_prob - old, -20, 20)).detach()
    path = bapo.bound_path(0.6, 0.9, 1.2, 3.0, 0.02, 0.05)
    if ties:  # ratios exactly on the bounds
        grid = torch.tensor([c for pair in path for c in pair], dtype=ratio.dtype)
        ratio = grid[torch.arange(ratio.numel()) % len(grid)].reshape(ratio.shape)
    fast = bapo.contribution_sums(ratio, adv, torch.exp(old), mask, path, reading)
    torch.testing.assert_close(fast, _eq8_by_definition(ratio, adv, torch.exp(old), mask, path, reading))


def _bapo_rho(batch, path, reading="grad_mass"):
    from orchestrator.algorithms import bapo

    old, log_prob, adv, mask, _ = batch
    ratio = torch.exp(torch.clamp(log_prob - old, -20, 20)).detach()
    return bapo.rho_pos(bapo.contribution_sums(ratio, adv, torch.exp(old), mask, path, reading))


@SETTINGS
@given(batch=batches(max_rows=6))
def test_bapo_grad_mass_rho_pos_is_a_share(batch):
    """Under the default reading rho_pos is a share of the gradient mass: always in [0, 1], at every bound."""
    from orchestrator.algorithms import bapo

    rho = _bapo_rho(batch, bapo.bound_path(0.6, 0.9, 1.2, 3.0, 0.02, 0.05))
    assert ((rho >= 0) & (rho <= 1)).all(), rho


BOUND = st.floats(0.05, 0.999)


@SETTINGS
@given(batch=batches(max_rows=6), c_low=BOUND, high_a=st.floats(1.001, 25.0), high_b=st.floats(1.001, 25.0))
def test_bapo_grad_mass_raising_c_high_never_lowers_rho_pos(batch, c_low, high_a, high_b):
    assume(high_a != high_b)
    lo, hi = sorted((high_a, high_b))
    rho = _bapo_rho(batch, [(c_low, lo), (c_low, hi)])
    assert rho[1] >= rho[0] * (1 - 1e-12), rho


@SETTINGS
@given(batch=batches(max_rows=6), c_high=st.floats(1.001, 25.0), low_a=BOUND, low_b=BOUND)
def test_bapo_grad_mass_raising_c_low_never_lowers_rho_pos(batch, c_high, low_a, low_b):
    assume(low_a != low_b)
    lo, hi = sorted((low_a, low_b))
    rho = _bapo_rho(batch, [(lo, c_high), (hi, c_high)])
    assert rho[1] >= rho[0] * (1 - 1e-12), rho
