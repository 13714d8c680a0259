"""The typed policy-loss config that carries every maspo hyperparameter into verl's workers.

verl 0.9.1 rejects unknown keys under ``actor_rollout_ref.actor.policy_loss``; pointing that node's
``_target_`` at this dataclass (a subclass of verl's own ``PolicyLossConfig``) makes the fields below
legal, so the worker's ``config.policy_loss`` holds them as typed attributes. Each field has a neutral
default; the per-algorithm pydantic models in ``hyperparams.py`` are where the paper's values live.
"""

from dataclasses import dataclass

from verl.workers.config.actor import PolicyLossConfig


@dataclass
class MaspoPolicyLossConfig(PolicyLossConfig):
    # MASPO (eqs. 6, 19-20)
    maspo_sigma_base: float = 1.0
    maspo_alpha: float = 0.5
    maspo_beta_low: float = 0.03
    maspo_beta_high: float = 0.03
    maspo_mass_cap: float = 10.0
    maspo_risk_min: float = 0.1
    maspo_risk_max: float = 10.0
    # DAC (eq. 3): upper bound cap of DCPO's code
    dac_high_cap: float = 10.0
    # BAPO (Algorithm 1 with Eq. 8)
    bapo_rho0: float = 0.4
    bapo_c_low_start: float = 0.6
    bapo_c_low_max: float = 0.9
    bapo_c_high_start: float = 1.2
    bapo_c_high_max: float = 3.0
    bapo_delta_high: float = 0.05
    bapo_delta_low: float = 0.02
    bapo_reading: str = "grad_mass"
    # Entropy Advantage (Cheng et al. 2025)
    entropy_adv_alpha: float = 0.4
    entropy_adv_kappa: float = 2.0
    # Advantage Reweighting (Yang et al. 2025b)
    adv_reweight_alpha: float = 0.1
