"""Mechanism metrics (``orchestrator.algorithms.mechanism``) on hand-built tensors whose answers are known.

The gradient weight is checked against each loss's closed form (0/1 for a clip, the Gaussian gate, SAPO's
4p(1-p), A'/A for advantage shaping); the token sums and the metrics against counts done by hand. The real
actor path (verl's FSDP engine, every loss) is in tests/test_cpu_actor_update.py.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch

from orchestrator.algorithms import ALGORITHMS, actor_config, mechanism
from orchestrator.algorithms.context import token_entropy


def weights_of(name, ratio, advantages, old_log_prob=None, mask=None, entropy=None, agg_mode=None, **hp):
    """(weights, defined) of algorithm ``name`` at the given ratios, through verl's registry and config."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from orchestrator.algorithms import losses  # noqa: F401  (registers the losses)

    ratio = torch.as_tensor(ratio, dtype=torch.float32).reshape(1, -1)
    advantages = torch.as_tensor(advantages, dtype=torch.float32).reshape(1, -1)
    old = torch.full_like(ratio, math.log(0.5)) if old_log_prob is None else torch.as_tensor(
        old_log_prob, dtype=torch.float32).reshape(1, -1)
    mask = torch.ones_like(ratio, dtype=torch.bool) if mask is None else torch.as_tensor(mask).reshape(1, -1)
    config = actor_config(name, **hp)
    mode = config.policy_loss.loss_mode
    context = token_entropy(torch.as_tensor(entropy).reshape(1, -1)) if entropy is not None else nullcontext()
    with context:
        w, defined = mechanism.gradient_weights(get_policy_loss_fn(mode), mode, old, old + torch.log(ratio),
                                                advantages, mask, agg_mode or config.loss_agg_mode, config)
    return w[0], defined[0]


def test_a_hard_clip_weighs_every_token_zero_or_one():
    # A>0: inside, above the clip, below it; A<0: inside, below the clip, above it, beyond the dual clip c=3
    ratio = [1.1, 1.3, 0.7, 0.9, 0.7, 1.3, 4.0]
    adv = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    w, defined = weights_of("grpo", ratio, adv)
    assert defined.all()
    assert w.tolist() == pytest.approx([1, 0, 1, 1, 0, 1, 0], abs=1e-6)
    w, _ = weights_of("clip_higher", [1.25, 1.3], [1.0, 1.0])  # eps_high = 0.265
    assert w.tolist() == pytest.approx([1, 0], abs=1e-6)


def test_maspo_weight_is_its_gaussian_gate():
    # alpha = beta = 0: sigma = sigma_base everywhere (mass 0.5 * pi_old^0, risk factor 1)
    ratio = [1.5, 0.5, 1.5, 0.5, 1.0]
    adv = [1.0, -1.0, -1.0, 1.0, 1.0]
    w, _ = weights_of("maspo", ratio, adv, sigma_base=0.5, alpha=0.0, beta=0.0)
    gate = math.exp(-(0.5 ** 2) / (2 * 0.5 ** 2))  # e^-0.5 where gated: (A>0, rho>1) and (A<0, rho<1)
    assert w.tolist() == pytest.approx([gate, gate, 1, 1, 1], abs=1e-6)


@pytest.mark.parametrize("name", ["sapo", "sapo_unilateral"])
def test_sapo_weight_is_4p_1_minus_p(name):
    ratio, adv = [1.5, 0.6, 1.5, 0.6], [1.0, -1.0, -1.0, 1.0]
    w, _ = weights_of(name, ratio, adv, tau_pos=2.0, tau_neg=3.0, agg_mode="token-mean")  # the loss ignores it
    tau = [2.0, 3.0, 3.0, 2.0]
    soft = [4 * torch.sigmoid(torch.tensor(t * (r - 1))).item() * (1 - torch.sigmoid(torch.tensor(t * (r - 1))).item())
            for t, r in zip(tau, ratio)]
    expected = soft if name == "sapo" else [soft[0], soft[1], 1.0, 1.0]  # unilateral: only where MASPO gates
    assert w.tolist() == pytest.approx(expected, abs=1e-5)


def test_advantage_shaping_weight_is_a_prime_over_a():
    pi_old = torch.tensor([0.9, 0.1, 0.5])
    w, _ = weights_of("adv_reweight", [1.0, 1.0, 1.0], [1.0, -2.0, 0.5], old_log_prob=pi_old.log(), alpha=0.6)
    assert w.tolist() == pytest.approx((0.6 * pi_old + 0.4).tolist(), abs=1e-5)
    entropy = torch.tensor([0.5, 3.0, 0.5])  # A' = A + min(0.4 H, |A| / 2)
    w, _ = weights_of("entropy_adv", [1.0, 1.0, 1.0], [1.0, -1.0, -1.0], entropy=entropy)
    assert w.tolist() == pytest.approx([1.2, 0.5, 0.8], abs=1e-5)


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n not in ("entropy_adv", "adv_reweight")])
def test_on_policy_every_unshaped_loss_has_weight_one(name):
    """At rho = 1 nothing clips or gates: w = 1 exactly where A != 0, undefined (and 0) where A = 0 or masked."""
    torch.manual_seed(0)
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.5, 0.7])
    mask = torch.tensor([True, True, True, True, True, False])
    old = torch.log(torch.rand(6).clamp(min=0.05))
    w, defined = weights_of(name, torch.ones(6), adv, old_log_prob=old, mask=mask, agg_mode="token-mean")
    assert defined.tolist() == [True, True, False, True, True, False]
    assert w.tolist() == pytest.approx([1, 1, 0, 1, 1, 0], abs=1e-5)


def sums_of(ratio, adv, pi_old, weights, mask=None):
    ratio, adv = torch.tensor([ratio], dtype=torch.float64), torch.tensor([adv], dtype=torch.float64)
    mask = torch.ones_like(ratio, dtype=torch.bool) if mask is None else torch.tensor([mask])
    weights = torch.tensor([weights], dtype=torch.float64)
    defined = mask & (adv != 0)
    sums = mechanism.token_sums(ratio, adv, torch.tensor([pi_old]).log(), mask, weights, defined)
    return dict(zip(mechanism.SUMS, sums.tolist()))


def test_token_sums_and_metrics_by_hand():
    # token:      0     1     2     3     4     5     6     7 (masked)
    ratio = [1.30, 1.10, 0.70, 0.75, 1.25, 1.00, 0.50, 3.0]
    adv = [1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 1.0, 1.0]
    pi_old = [0.1, 0.5, 0.2, 0.4, 0.3, 0.9, 0.05, 0.1]
    weights = [0.9, 1.0, 0.2, 1.0, 1.0, 0.0, 0.4, 0.0]  # what the loss would apply (5 undefined: A = 0)
    mask = [True] * 7 + [False]
    s = sums_of(ratio, adv, pi_old, weights, mask)
    assert s["tokens"] == 7
    assert (s["outside"], s["outside_pos"], s["outside_neg"]) == (5, 3, 2)  # all but 1 and 5 (|rho-1|<=0.2)
    assert s["hard_clipped"] == 2  # 0 (A>0, rho>1.2) and 2 (A<0, rho<0.8); 3, 4 and 6 are on the safe side
    assert (s["weighted"], s["weight_sum"]) == (6, pytest.approx(0.9 + 1 + 0.2 + 1 + 1 + 0.4))
    assert s["suppressed"] == 2  # 2 and 6
    assert s["kept"] == 1  # 0: clipped by a hard clip, weight 0.9 here
    assert (s["pos_tokens"], s["pos_clipped"]) == (4, 1)
    assert s["pos_mass"] == pytest.approx(0.1 + 0.5 + 0.4 + 0.05) and s["pos_mass_clipped"] == pytest.approx(0.1)
    assert s["abs_dev"] == pytest.approx(0.3 + 0.1 + 0.3 + 0.25 + 0.25 + 0 + 0.5)

    m = mechanism.metrics_from_sums(s, last_update=False)
    assert set(m) == {mechanism.PREFIX + n for n in mechanism.METRICS}
    p = mechanism.PREFIX
    assert m[p + "outside_clip_frac"] == pytest.approx(5 / 7)
    assert m[p + "outside_clip_frac_pos"] == pytest.approx(3 / 7)
    assert m[p + "outside_clip_frac_neg"] == pytest.approx(2 / 7)
    assert m[p + "hard_clip_frac"] == pytest.approx(2 / 7)
    assert m[p + "suppressed_frac"] == pytest.approx(2 / 7)
    assert m[p + "kept_frac"] == pytest.approx(1 / 7)
    assert m[p + "grad_weight_mean"] == pytest.approx(4.5 / 6)
    assert m[p + "pos_clipped_frac"] == pytest.approx(1 / 4)
    assert m[p + "pos_mass_clipped"] == pytest.approx(0.1 / 1.05)
    assert m[p + "ratio_dev"] == pytest.approx(1.7 / 7)
    last = mechanism.metrics_from_sums(s, last_update=True)
    assert last[p + "ratio_dev_last"] == last[p + "ratio_dev"] and set(last) == set(mechanism.NAMES)


def test_undefined_ratios_are_left_out_not_zero():
    """An update without A > 0 tokens has no positive mass to discard: that metric is absent, the others there."""
    s = sums_of([1.5, 0.5], [-1.0, 0.0], [0.5, 0.5], [1.0, 0.0])
    m = mechanism.metrics_from_sums(s, last_update=True)
    assert mechanism.PREFIX + "pos_mass_clipped" not in m and mechanism.PREFIX + "pos_clipped_frac" not in m
    assert m[mechanism.PREFIX + "outside_clip_frac"] == 1.0 and m[mechanism.PREFIX + "hard_clip_frac"] == 0.0
    none = mechanism.metrics_from_sums(torch.zeros(len(mechanism.SUMS)), last_update=True)
    assert none == {}
    assert all(math.isfinite(v) for v in m.values())


def test_micro_batch_sums_of_grpo_and_maspo_off_policy():
    """End to end through one loss call: GRPO zeroes what the hard clip zeroes, MASPO keeps it."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from orchestrator.algorithms import losses  # noqa: F401

    ratio = torch.tensor([[1.5, 1.05, 0.6, 0.95]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old = torch.full_like(ratio, math.log(0.2))
    mask = torch.ones_like(ratio, dtype=torch.bool)
    out = {}
    for name in ("grpo", "maspo"):
        config = actor_config(name)
        mode = config.policy_loss.loss_mode
        sums = mechanism.micro_batch_sums(get_policy_loss_fn(mode), mode, old, old + ratio.log(), adv, mask,
                                          config.loss_agg_mode, config)
        out[name] = mechanism.metrics_from_sums(sums, last_update=True)
    p = mechanism.PREFIX
    assert out["grpo"][p + "hard_clip_frac"] == out["maspo"][p + "hard_clip_frac"] == 0.5
    assert out["grpo"][p + "suppressed_frac"] == 0.5 and out["grpo"][p + "kept_frac"] == 0.0
    # MASPO's default sigma at pi_old = 0.2 (~2.2 before the risk factor) barely gates |rho - 1| = 0.5
    assert out["maspo"][p + "kept_frac"] == 0.5 and out["maspo"][p + "suppressed_frac"] == 0.0
    assert out["grpo"][p + "pos_mass_clipped"] == pytest.approx(0.5)
    assert out["grpo"][p + "ratio_dev_last"] == pytest.approx((0.5 + 0.05 + 0.4 + 0.05) / 4)


def test_the_train_batch_hook_sums_micro_batches_before_dividing():
    """One update = its micro-batches' sums added, then divided (not a mean of per-micro-batch ratios); the
    last-update value only on the update verl flags; a critic's update passes through untouched."""
    import functools
    import types

    from verl.utils import tensordict_utils as tu

    from orchestrator.verl_bridge import actor_hooks

    def micro(tokens, outside, abs_dev):
        values = dict.fromkeys(mechanism.SUMS, 0.0) | {"tokens": tokens, "outside": outside, "abs_dev": abs_dev}
        return torch.tensor([values[n] for n in mechanism.SUMS], dtype=torch.float64)

    def verl_train_batch(self, data):  # what verl's engine does: one ppo_loss call per micro-batch
        recorded = actor_hooks._mechanism_sums.get()  # what ppo_loss_hook appends to (None: records nothing)
        for sums in (micro(10, 5, 1.0), micro(30, 0, 2.0)):
            if recorded is not None:
                recorded.append(sums)
        return tu.get_tensordict({}, non_tensor_dict={"metrics": {"grad_norm": 1.0}})

    hooked = actor_hooks.wrap_train_batch(verl_train_batch)
    config = types.SimpleNamespace(policy_loss={"loss_mode": "vanilla"})
    worker = types.SimpleNamespace(loss_fn=functools.partial(lambda config, model_output, data: None, config=config))
    p = mechanism.PREFIX
    for last in (False, True):
        data = tu.get_tensordict({}, non_tensor_dict={"update_lr_scheduler": last})
        metrics = tu.get(hooked(worker, data), "metrics")
        assert metrics["grad_norm"] == 1.0
        assert metrics[p + "outside_clip_frac"] == pytest.approx(5 / 40)  # not (0.5 + 0) / 2
        assert metrics[p + "ratio_dev"] == pytest.approx(3 / 40)
        assert (p + "ratio_dev_last" in metrics) is last
        assert p + "pos_mass_clipped" not in metrics  # no A > 0 token in this update
    critic = types.SimpleNamespace(loss_fn=functools.partial(lambda config, model_output, data: None,
                                                             config=types.SimpleNamespace(cliprange_value=0.5)))
    assert tu.get(hooked(critic, tu.get_tensordict({}, non_tensor_dict={})), "metrics") == {"grad_norm": 1.0}
