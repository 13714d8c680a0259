"""Local profile: start the slow-starting actors of a verl run while its task runner is still setting up.

Every Ray actor of a verl run is a new process that imports torch, transformers and (most) verl: 5-9 s of CPU
each on the local machine. verl's task runner creates them one after another (TransferQueue, the actor workers,
then the reward workers, the rollout server, the load balancer and the agent-loop worker), so on 2 cores the
start-up ran on one core for most of a minute and then three imports competed for the last 12 s. Measured with
a per-process CPU sampler (`maspo run`, 2 cores): the second core idled from the job's start until the actor
workers existed.

Two actors need nothing but the trainer config, so the task runner starts them as soon as it has it, at its
first call into TransferQueue (``transfer_queue.init(config.transfer_queue)``, whose root is the whole config):

- the hf rollout server (``hf_rollout.prelaunch_server``; verl's replica adopts it later);
- the reward-loop workers: a ``RewardLoopManager`` built now, which verl's trainer gets when its set-up asks for
  one (step 7 of ``PPOTrainer._setup``), instead of building a second one (its workers are named actors).

Only for the local profile (the patch manifest's ``early_start_servers`` and ``early_start_reward_workers``, see
docs/patches.md) and only for what the defaults run: a single-replica hf rollout, rule-based rewards (no reward
model). Anything else goes verl's own way.
"""

from __future__ import annotations

from typing import Any

from orchestrator.verl_bridge.patching import wrapper_factory

TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_base"
_HOOKED = "_maspo_early_start"
_early: dict[str, Any] = {}  # "reward_loop_manager" -> the manager started early (at most one per task runner)


def trainer_config_of(conf) -> Any | None:
    """The whole trainer config if ``conf`` is a node of it (OmegaConf nodes know their root), else None."""
    root = conf._get_root() if hasattr(conf, "_get_root") else None
    if root is None or root is conf or "actor_rollout_ref" not in root or "trainer" not in root:
        return None
    return root


def start_early(config) -> None:
    """Start the rollout server and the reward workers of this run now, without waiting for them."""
    from orchestrator.verl_bridge import hf_rollout

    started = ["the rollout server"] if hf_rollout.prelaunch_server(config) else []
    if not config.reward.reward_model.enable and "reward_loop_manager" not in _early:
        from verl.experimental.reward_loop import RewardLoopManager

        _early["reward_loop_manager"] = RewardLoopManager(config=config, rm_resource_pool=None)
        started.append(f"{config.reward.num_workers} reward worker(s)")
    if started:
        print(f"[maspo] started early, while the task runner sets up: {' and '.join(started)}", flush=True)


@wrapper_factory(_HOOKED)
def wrap_tq_init(original):
    """``transfer_queue.init(conf)`` that first starts the run's slow actors (see the module docstring)."""

    def init(conf=None, *args, **kwargs):
        config = trainer_config_of(conf)
        if config is not None:
            start_early(config)
        return original(conf, *args, **kwargs)

    return init


@wrapper_factory(_HOOKED, metadata=False)  # a function standing in for a class: only __wrapped__
def adopting_reward_loop_manager(manager_class):
    """verl's ``RewardLoopManager`` as the trainer calls it: the early one when there is one (no reward model)."""

    def make(config, rm_resource_pool=None):
        early = _early.pop("reward_loop_manager", None)
        if early is not None and rm_resource_pool is None:
            return early
        return manager_class(config=config, rm_resource_pool=rm_resource_pool)

    return make
