"""Per-algorithm hyperparameters: pydantic models whose defaults are the paper's Table 4 values (1.5B).

Each model knows how its values map onto verl: ``actor_fields()`` are fields of verl's own actor config
(clip ratios, SAPO's taus, the entropy coefficient), ``policy_loss_fields()`` are the extra fields of
``MaspoPolicyLossConfig``. Validation happens here, once, before anything runs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Probability = Field(gt=0.0, lt=1.0)


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: token-mean (paper eq. 1) for every method except SAPO, which keeps its own aggregation.
    loss_agg_mode: ClassVar[str] = "token-mean"

    def actor_fields(self) -> dict[str, Any]:
        return {}

    def policy_loss_fields(self) -> dict[str, Any]:
        return {}


class MaspoParams(Hyperparameters):
    """MASPO, eqs. 6 and 19-20. ``beta`` sets ``beta_low`` and ``beta_high`` together."""

    sigma_base: float = Field(1.0, gt=0.0, description="sigma_base of the mass-adaptive limiter")
    alpha: float = Field(0.5, ge=0.0, le=2.0, description="mass exponent: sigma ~ sigma_base / pi_old^alpha")
    beta_low: float = Field(0.03, ge=0.0, le=1.0, description="risk controller for A < 0 (sigma_neg)")
    beta_high: float = Field(0.03, ge=0.0, le=1.0, description="risk controller for A > 0 (sigma_pos)")
    mass_cap: float = Field(10.0, gt=0.0, description="cap of sigma_base / pi_old^alpha (eq. 19)")
    risk_min: float = Field(0.1, gt=0.0, description="lower clip of the risk factor (eq. 20)")
    risk_max: float = Field(10.0, gt=0.0, description="upper clip of the risk factor (eq. 20)")

    @model_validator(mode="before")
    @classmethod
    def _split_beta(cls, data: Any) -> Any:
        if isinstance(data, dict) and "beta" in data:
            data = dict(data)
            beta = data.pop("beta")
            for side in ("beta_low", "beta_high"):
                if side in data and data[side] != beta:
                    raise ValueError(f"beta={beta} contradicts {side}={data[side]}; give beta or beta_low/beta_high")
                data[side] = beta
        return data

    @model_validator(mode="after")
    def _ordered_risk_clip(self) -> MaspoParams:
        if self.risk_min > self.risk_max:
            raise ValueError(f"risk_min={self.risk_min} must not exceed risk_max={self.risk_max}")
        return self

    def policy_loss_fields(self) -> dict[str, Any]:
        return {f"maspo_{name}": value for name, value in self.model_dump().items()}


class ClipParams(Hyperparameters):
    """PPO/GRPO hard clip with verl's dual clip c for A < 0."""

    eps_low: float = Field(0.2, gt=0.0, lt=1.0, description="lower clip: rho >= 1 - eps_low")
    eps_high: float = Field(0.2, gt=0.0, lt=1.0, description="upper clip: rho <= 1 + eps_high")
    dual_clip_c: float = Field(3.0, gt=1.0, description="verl's dual clip for A < 0")

    def actor_fields(self) -> dict[str, Any]:
        return {
            "clip_ratio": self.eps_low,
            "clip_ratio_low": self.eps_low,
            "clip_ratio_high": self.eps_high,
            "clip_ratio_c": self.dual_clip_c,
        }


class GrpoParams(ClipParams):
    """GRPO: symmetric eps. ``eps`` sets both sides."""

    @model_validator(mode="before")
    @classmethod
    def _split_eps(cls, data: Any) -> Any:
        if isinstance(data, dict) and "eps" in data:
            data = dict(data)
            eps = data.pop("eps")
            data.setdefault("eps_low", eps)
            data.setdefault("eps_high", eps)
        return data


class ClipHigherParams(ClipParams):
    eps_high: float = Field(0.265, gt=0.0, lt=1.0, description="decoupled upper clip (App. D.1: 0.265)")


class DacParams(ClipParams):
    """DAC (DCPO) probability-dependent bounds, eq. 3."""

    high_cap: float = Field(10.0, gt=1.0, description="cap of the upper bound (DCPO code)")

    def policy_loss_fields(self) -> dict[str, Any]:
        return {"dac_high_cap": self.high_cap}


class BapoParams(Hyperparameters):
    """BAPO, Algorithm 1 with Eq. 8 (Xi et al. 2025)."""

    rho0: float = Field(0.4, gt=0.0, description="target positive contribution rho_0")
    c_low_start: float = Field(0.6, gt=0.0, lt=1.0, description="a-")
    c_low_max: float = Field(0.9, gt=0.0, lt=1.0, description="b-")
    c_high_start: float = Field(1.2, gt=1.0, description="a+")
    c_high_max: float = Field(3.0, gt=1.0, description="b+")
    delta_high: float = Field(0.05, gt=0.0, description="delta1, step of c_high")
    delta_low: float = Field(0.02, gt=0.0, description="delta2, step of c_low")
    reading: Literal["grad_mass", "literal", "abs_sum"] = Field(
        "grad_mass", description="how Eq. 8 is read (docs/algorithms.md#bapo-readings, #decision-bapo)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> BapoParams:
        if self.c_low_start > self.c_low_max:
            raise ValueError(f"c_low_start={self.c_low_start} exceeds c_low_max={self.c_low_max}")
        if self.c_high_start > self.c_high_max:
            raise ValueError(f"c_high_start={self.c_high_start} exceeds c_high_max={self.c_high_max}")
        return self

    def policy_loss_fields(self) -> dict[str, Any]:
        return {f"bapo_{name}": value for name, value in self.model_dump().items()}


class SapoParams(Hyperparameters):
    """SAPO soft gate f(x) = (4/tau) sigmoid(tau (x - 1)), tau_pos for A > 0, tau_neg otherwise."""

    loss_agg_mode: ClassVar[str] = "seq-mean-token-mean"
    tau_pos: float = Field(1.0, gt=0.0)
    tau_neg: float = Field(1.05, gt=0.0)

    def actor_fields(self) -> dict[str, Any]:
        return {"tau_pos": self.tau_pos, "tau_neg": self.tau_neg}


class EntropyRegParams(GrpoParams):
    """GRPO loss minus beta_E * H through verl's own entropy term."""

    entropy_coeff: float = Field(0.01, ge=0.0, description="beta_E")

    def actor_fields(self) -> dict[str, Any]:
        return {**super().actor_fields(), "entropy_coeff": self.entropy_coeff}


class EntropyAdvParams(GrpoParams):
    """A' = A + min(alpha * H_detached, |A| / kappa), then the GRPO clip."""

    alpha: float = Field(0.4, gt=0.0, description="alpha_E")
    kappa: float = Field(2.0, gt=1.0)

    def actor_fields(self) -> dict[str, Any]:
        # the current policy's per-token entropy must be computed in the update forward
        return {**super().actor_fields(), "calculate_entropy": True}

    def policy_loss_fields(self) -> dict[str, Any]:
        return {"entropy_adv_alpha": self.alpha, "entropy_adv_kappa": self.kappa}


class AdvReweightParams(GrpoParams):
    """A' = [alpha * pi_old + (1 - alpha)] * A, then the GRPO clip."""

    alpha: float = Field(0.1, ge=0.0, le=1.0, description="alpha_A")

    def policy_loss_fields(self) -> dict[str, Any]:
        return {"adv_reweight_alpha": self.alpha}
