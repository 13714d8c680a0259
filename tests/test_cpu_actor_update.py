"""verl's real actor update on CPU (FSDP2 engine, tiny random Qwen2) and the CPU platform's inertness.

The actor updates run in one shared child interpreter (``ActorUpdateProcess``, see
``tests/verl_actor_harness.py``): importing verl takes ~8 s on a 2-core machine, each update call after that
~1.5 s. To run a loss through it, pass its overrides, e.g. ``actor_rollout_ref.actor.policy_loss.loss_mode=X``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.verl_actor_harness import REPO, ActorUpdateProcess, finite

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def actor_updates():
    with ActorUpdateProcess(timeout=240) as proc:
        yield proc


@pytest.mark.slow
def test_vanilla_actor_update_changes_weights(actor_updates):
    result = actor_updates.run(["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"], n_updates=2)

    assert result["max_abs_weight_change"] > 0
    assert result["policy_loss_calls"] == [4, 4]  # 2 mini-batches x 2 micro-batches per update call
    assert math.isfinite(result["old_log_prob_metrics"]["actor/entropy"])
    assert len(result["metrics"]) == 2
    for metrics, raw in zip(result["metrics"], result["raw_metrics"]):
        assert "actor/pg_loss" in metrics and math.isfinite(metrics["actor/pg_loss"])
        assert finite(raw["actor/pg_loss"]) and len(raw["actor/pg_loss"]) == 2  # one per mini-batch
        assert math.isfinite(metrics["actor/grad_norm"]) and metrics["actor/grad_norm"] > 0
    # the second mini-batch of the first call already sees the policy that the first one updated
    assert result["raw_metrics"][0]["actor/ppo_kl"][1] != 0


_INERT_CHECK = """
import json, os, torch.distributed as dist
init_pg = dist.init_process_group
import verl
from orchestrator.verl_bridge import cpu
from verl.plugin.platform import PlatformRegistry, get_platform
from verl.utils.device import get_device_name
active = cpu.activate_if_requested()
print(json.dumps({
    "active": active,
    "device": get_device_name(),
    "platform": type(get_platform()).__name__,
    "cpu_registered": PlatformRegistry.get("cpu") is not None,
    "init_process_group_untouched": dist.init_process_group is init_pg,
    "engine_device": os.environ.get("VERL_ENGINE_DEVICE"),
}))
"""


def test_cpu_platform_is_inert_without_verl_platform():
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_ENGINE_DEVICE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _INERT_CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == {
        "active": False,
        "device": "cuda",  # verl's own fallback on a machine without accelerators
        "platform": "PlatformCUDA",
        "cpu_registered": False,
        "init_process_group_untouched": True,
        "engine_device": None,
    }


def test_gloo_backend_string():
    from orchestrator.verl_bridge.cpu import gloo_backend

    assert gloo_backend("cpu:gloo,cpu:gloo") == "gloo"
    for backend in ("cpu:gloo,cuda:nccl", "nccl", "gloo", "cpu:gloo", None):
        assert gloo_backend(backend) == backend


# The metric each loss must add to verl's stream (beside verl's own actor/pg_loss, grad_norm, ...).
SIGNATURE_METRICS = {
    "maspo": ["actor/maspo/gate_mean", "actor/maspo/gated_frac", "actor/maspo/sigma_pos", "actor/maspo/sigma_neg"],
    "grpo": ["actor/pg_clipfrac", "actor/pg_clipfrac_lower"],
    "clip_higher": ["actor/pg_clipfrac"],
    "dac": ["actor/pg_clipfrac", "actor/maspo/dac_high_mean"],
    "bapo": ["actor/maspo/bapo_c_low", "actor/maspo/bapo_c_high", "actor/maspo/bapo_rho_pos", "actor/pg_clipfrac"],
    "sapo": ["actor/ppo_kl"],
    "sapo_unilateral": ["actor/maspo/gated_frac"],
    "entropy_reg": ["actor/entropy_loss", "actor/pg_clipfrac"],
    "entropy_adv": ["actor/maspo/entropy_adv_bonus", "actor/entropy_loss"],
    "adv_reweight": ["actor/maspo/adv_reweight_scale"],
}


def test_every_algorithm_has_its_signature_metrics_listed():
    from orchestrator.algorithms import ALGORITHMS

    assert set(SIGNATURE_METRICS) == set(ALGORITHMS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIGNATURE_METRICS))
def test_every_loss_drives_verls_fsdp_actor_update(actor_updates, name):
    """One real update of verl's FSDP2 engine per loss, selected and configured by the algorithm's overrides."""
    from orchestrator.algorithms import get

    result = actor_updates.run(get(name).verl_overrides(), n_updates=1)
    assert result["max_abs_weight_change"] > 0
    assert result["policy_loss_calls"] == [4]  # 2 mini-batches x 2 micro-batches
    metrics = result["metrics"][0]
    assert math.isfinite(metrics["actor/pg_loss"]) and metrics["actor/grad_norm"] > 0
    for key in SIGNATURE_METRICS[name]:
        assert key in metrics and math.isfinite(metrics[key]), key
    searches = result["bapo_searches"][0]
    if name == "bapo":
        # bounds searched once per mini-batch by the actor hook, never per micro-batch
        assert searches == {"mini_batch": 2, "per_loss_call": 0}
        assert 0.6 <= metrics["actor/maspo/bapo_c_low"] <= 0.9 and 1.2 <= metrics["actor/maspo/bapo_c_high"] <= 3.0
    else:
        assert searches == {"mini_batch": 0, "per_loss_call": 0}
    if name == "entropy_adv":
        # the shaping bonus is positive: it reached the loss with the current policy's entropy
        assert metrics["actor/maspo/entropy_adv_bonus"] != 0
    assert_mechanism_metrics(name, metrics, result["raw_metrics"][0])


def assert_mechanism_metrics(name: str, metrics: dict, raw: dict) -> None:
    """Every mechanism metric, finite, one value per update (the last-update one once), consistent."""
    from orchestrator.algorithms.mechanism import NAMES, PREFIX

    for key in NAMES:
        assert key in metrics and math.isfinite(metrics[key]), key
        assert 0 <= metrics[key] <= (10 if key.endswith(("grad_weight_mean", "ratio_dev", "ratio_dev_last")) else 1)
    assert len(raw[PREFIX + "ratio_dev"]) == 2 and raw[PREFIX + "ratio_dev_last"] == [raw[PREFIX + "ratio_dev"][-1]]
    m = {key[len(PREFIX):]: metrics[key] for key in NAMES}
    assert m["outside_clip_frac_pos"] + m["outside_clip_frac_neg"] <= m["outside_clip_frac"] + 1e-12
    assert m["kept_frac"] <= m["hard_clip_frac"] + 1e-12
    if name in ("grpo", "entropy_reg"):  # a hard clip at 0.2: it zeroes exactly what it clips, keeps none of it
        assert m["kept_frac"] == 0 and m["suppressed_frac"] >= m["hard_clip_frac"]


@pytest.mark.slow
def test_maspo_hyperparameters_change_the_update(actor_updates):
    from orchestrator.algorithms import get

    a = actor_updates.run(get("maspo").verl_overrides({"alpha": 0.0, "beta": 0.0, "sigma_base": 0.01}), n_updates=2)
    b = actor_updates.run(get("maspo").verl_overrides({"alpha": 0.5, "beta": 0.03}), n_updates=2)
    # a tiny fixed sigma gates hard: the mean gate over gated tokens is far below the default's
    assert a["metrics"][1]["actor/maspo/gate_mean"] < b["metrics"][1]["actor/maspo/gate_mean"]
    assert a["metrics"][1]["actor/maspo/sigma_pos"] == pytest.approx(0.01)
