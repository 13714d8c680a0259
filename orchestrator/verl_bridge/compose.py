"""Compose and validate verl's real ``ppo_trainer`` Hydra config offline, as ``main_ppo`` would.

No model, data or GPU is touched: this is how rendered overrides are checked before anything launches.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def verl_config_dir() -> Path:
    import verl.trainer

    return Path(verl.trainer.__file__).parent / "config"


def compose_trainer_config(overrides: list[str]) -> DictConfig:
    """verl's ``ppo_trainer`` config with ``overrides`` applied (Hydra's override grammar)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def validate_trainer_config(config: DictConfig) -> None:
    """What ``verl.trainer.main_ppo`` checks before it starts Ray (raises on an invalid config)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


def actor_config_of(config: DictConfig):
    """The typed actor config a verl worker builds from the composed config."""
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)
