"""The losses as verl sees them: its registry in a fresh process, its Hydra config, its typed actor config."""

import json
import subprocess
import sys

import pytest

from orchestrator.algorithms import ALGORITHMS, get
from orchestrator.algorithms.config import MaspoPolicyLossConfig
from orchestrator.verl_bridge.compose import actor_config_of, compose_trainer_config, validate_trainer_config

FRESH_PROCESS = r"""
import json, os
import verl  # the verl.plugins entry point must register everything; orchestrator is never imported here
from verl.trainer.ppo.core_algos import get_policy_loss_fn
import verl.workers.engine_workers as ew
names = json.loads(os.environ["LOSS_NAMES"])
print(json.dumps({
    "found": {n: get_policy_loss_fn(n).__module__ for n in names},
    "ppo_loss_hooked": getattr(ew.ppo_loss, "_maspo_hooked", False),
    "train_batch_hooked": getattr(ew.TrainingWorker.train_batch, "_maspo_hooked", False),
    "dispatch_attrs_kept": any(k.startswith("attrs_") for k in vars(ew.TrainingWorker.train_batch)),
}))
"""


def test_every_loss_is_in_verls_registry_in_a_fresh_process():
    names = sorted({a.verl_loss for a in ALGORITHMS.values()})
    env = {**__import__("os").environ, "LOSS_NAMES": json.dumps(names)}
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(report["found"]) == set(names)
    for name, module in report["found"].items():
        expected = "verl.trainer.ppo.core_algos" if name in ("vanilla", "sapo") else "orchestrator.algorithms.losses"
        assert module == expected, name
    assert report["ppo_loss_hooked"] and report["train_batch_hooked"] and report["dispatch_attrs_kept"]


BASE = ["actor_rollout_ref.model.path=/nonexistent/model", "data.train_files=/x.parquet", "data.val_files=/x.parquet",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2", "trainer.n_gpus_per_node=8",
        "actor_rollout_ref.rollout.name=vllm", "algorithm.adv_estimator=grpo"]


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_overrides_compose_validate_and_reach_the_typed_worker_config(name):
    algorithm = get(name)
    params = algorithm.parse({})
    config = compose_trainer_config(BASE + algorithm.verl_overrides(params))
    validate_trainer_config(config)
    actor = actor_config_of(config)
    assert isinstance(actor.policy_loss, MaspoPolicyLossConfig)
    assert actor.policy_loss.loss_mode == algorithm.verl_loss
    assert actor.loss_agg_mode == params.loss_agg_mode
    for key, value in params.actor_fields().items():
        assert getattr(actor, key) == value, key
    for key, value in params.policy_loss_fields().items():
        assert getattr(actor.policy_loss, key) == value, key


def test_hyperparameter_fields_are_exactly_the_fields_verl_lacks():
    """verl_overrides adds every policy-loss hyperparameter with '+' without importing verl: that is right only
    if each one is a MaspoPolicyLossConfig field absent from verl's own PolicyLossConfig."""
    from dataclasses import fields

    from verl.workers.config.actor import PolicyLossConfig

    extra = {f.name for f in fields(MaspoPolicyLossConfig)} - {f.name for f in fields(PolicyLossConfig)}
    ours = set().union(*(a.params().policy_loss_fields() for a in ALGORITHMS.values()))
    assert ours == extra
    for algorithm in ALGORITHMS.values():
        plus = {o.split("=")[0] for o in algorithm.verl_overrides({}) if o.startswith("+")}
        assert plus == {f"+actor_rollout_ref.actor.policy_loss.{k}" for k in algorithm.params().policy_loss_fields()}


def test_non_default_hyperparameters_reach_the_worker_config():
    algorithm = get("maspo")
    config = compose_trainer_config(BASE + algorithm.verl_overrides({"alpha": 0.3, "beta": 0.1, "sigma_base": 2.0}))
    pl = actor_config_of(config).policy_loss
    assert (pl.maspo_alpha, pl.maspo_beta_low, pl.maspo_beta_high, pl.maspo_sigma_base) == (0.3, 0.1, 0.1, 2.0)
    config = compose_trainer_config(BASE + get("bapo").verl_overrides({"reading": "grad_mass", "rho0": 0.5}))
    pl = actor_config_of(config).policy_loss
    assert (pl.bapo_reading, pl.bapo_rho0) == ("grad_mass", 0.5)


IMPORT_ORDER = r"""
import json
import orchestrator.algorithms  # before verl: the plugin then loads while this package initialises
import verl
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
from verl.utils.device import get_device_name
import verl.workers.utils.losses as L
print(json.dumps({"losses": sorted(POLICY_LOSS_REGISTRY), "device": get_device_name(),
                  "hooked": getattr(L.ppo_loss, "_maspo_hooked", False)}))
"""


def test_plugin_works_whatever_is_imported_first():
    env = {**__import__("os").environ, "VERL_PLATFORM": "cpu"}
    out = subprocess.run([sys.executable, "-c", IMPORT_ORDER], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"maspo", "dac", "bapo", "entropy_adv", "adv_reweight", "sapo_unilateral"} <= set(report["losses"])
    assert report["device"] == "cpu" and report["hooked"]
