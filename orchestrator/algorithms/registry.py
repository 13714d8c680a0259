"""The algorithms a user can name: which verl loss each runs, its hyperparameters, its equations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import ValidationError

from orchestrator.algorithms import hyperparams as hp
from orchestrator.errors import UserError

# verl's policy_loss node is built as this dataclass (``config.py``; a string here, so this module needs no verl)
TARGET = "orchestrator.algorithms.config.MaspoPolicyLossConfig"


class AlgorithmError(UserError):
    """A user mistake in an algorithm name or its hyperparameters; the message is meant for the user."""


@dataclass(frozen=True)
class Algorithm:
    name: str
    title: str  # the paper's name for it
    verl_loss: str  # the name verl's policy-loss registry knows it by
    params: type[hp.Hyperparameters]
    equations: str
    notes: str = ""

    def parse(self, values: Mapping[str, Any] | None = None) -> hp.Hyperparameters:
        """Validate user hyperparameters (the edge); raises AlgorithmError with a readable message."""
        try:
            return self.params(**dict(values or {}))
        except ValidationError as err:
            problems = []
            for e in err.errors():
                field = ".".join(str(p) for p in e["loc"]) or "hyperparameters"
                given = e.get("input")
                shown = "" if isinstance(given, dict) else f" (got {given!r})"
                problems.append(f"{field}: {e['msg']}{shown}".replace("Value error, ", ""))
            raise AlgorithmError(f"invalid hyperparameters for {self.name}: " + "; ".join(problems)) from None

    def actor_settings(self, params: hp.Hyperparameters) -> dict[str, Any]:
        """Every verl actor-config value this algorithm sets, as (dotted key under actor) -> value."""
        settings: dict[str, Any] = {
            "policy_loss.loss_mode": self.verl_loss,
            "policy_loss._target_": TARGET,
            "loss_agg_mode": params.loss_agg_mode,
        }
        settings.update(params.actor_fields())
        settings.update({f"policy_loss.{k}": v for k, v in params.policy_loss_fields().items()})
        return settings

    def verl_overrides(self, params: hp.Hyperparameters | Mapping[str, Any] | None = None) -> list[str]:
        """Hydra overrides for verl's ``ppo_trainer`` config (``actor_rollout_ref.actor.*``)."""
        if not isinstance(params, hp.Hyperparameters):
            params = self.parse(params)
        # the hyperparameter models' policy-loss fields exist only on MaspoPolicyLossConfig, not in verl's
        # ppo_trainer.yaml, so Hydra must add them with '+' (tested against verl's own PolicyLossConfig)
        ours = {f"policy_loss.{k}" for k in params.policy_loss_fields()}
        return [f"{'+' if key in ours else ''}actor_rollout_ref.actor.{key}={_hydra_value(value)}"
                for key, value in self.actor_settings(params).items()]


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm("maspo", "MASPO", "maspo", hp.MaspoParams, "eqs. 5, 6, 19, 20 (7-8)",
                  "soft Gaussian gate on sg[rho], mass-adaptive and risk-controlled sigma"),
        Algorithm("grpo", "GRPO", "vanilla", hp.GrpoParams, "eq. 1 with F = hard clip",
                  "verl's vanilla PPO clip, dual clip c=3 for A<0"),
        Algorithm("clip_higher", "Clip Higher", "vanilla", hp.ClipHigherParams, "decoupled eps (DAPO)",
                  "verl's vanilla with eps_low != eps_high"),
        Algorithm("dac", "DAC", "dac", hp.DacParams, "eq. 3", "DCPO bounds from pi_old, upper capped at 10"),
        Algorithm("bapo", "BAPO", "bapo", hp.BapoParams, "eq. 4 (BAPO Eq. 8, Algorithm 1)",
                  "bounds searched per update over the whole mini-batch"),
        Algorithm("sapo", "SAPO", "sapo", hp.SapoParams, "eq. 2", "verl's sapo (bilateral, seq-mean-token-mean)"),
        Algorithm("sapo_unilateral", "SAPO (unilateral)", "sapo_unilateral", hp.SapoParams, "eq. 2, App. D.2",
                  "SAPO gate only where MASPO gates"),
        Algorithm("entropy_reg", "Entropy Reg.", "vanilla", hp.EntropyRegParams, "GRPO - beta_E * H",
                  "verl's entropy term (entropy_coeff)"),
        Algorithm("entropy_adv", "Entropy Adv.", "entropy_adv", hp.EntropyAdvParams,
                  "A' = A + min(alpha H, |A|/kappa)", "current-policy entropy, detached"),
        Algorithm("adv_reweight", "Adv. Reweighting", "adv_reweight", hp.AdvReweightParams,
                  "A' = [alpha pi_old + 1 - alpha] A", "pi_old = exp(old_log_prob), both signs"),
    ]
}


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise AlgorithmError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}") from None
