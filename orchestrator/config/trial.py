"""Typed trial configuration, validated once at the edge and carried as objects from there on."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.algorithms import AlgorithmError, get
from orchestrator.scales import A100Profile


class LocalProfile(BaseModel):
    """The embedded CPU profile: tiny warm-started Qwen2, synthetic math, verl's own trainer on CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["local"] = "local"
    steps: int = Field(8, ge=1, le=10_000, description="training steps")
    test_freq: int = Field(4, ge=1, description="validate every N steps (and before training and at the end)")
    train_batch_size: int = Field(32, ge=1, description="prompts per step")
    ppo_mini_batch_size: int = Field(2, ge=1, description="prompts per policy update (off-policy updates per step)")
    n_samples: int = Field(8, ge=2, description="responses per prompt, G")
    val_n: int = Field(8, ge=1, description="samples per validation problem, k of Avg@k / Pass@k")
    n_val_problems: int = Field(12, ge=1, description="problems per validation set")
    max_response_length: int = Field(48, ge=4)
    lr: float = Field(2e-4, gt=0, description="actor learning rate (constant, AdamW)")
    model_path: Path | None = Field(None, description="a model directory to use instead of the warm start")

    @model_validator(mode="after")
    def _divisible(self) -> LocalProfile:
        if self.train_batch_size % self.ppo_mini_batch_size:
            raise ValueError(f"train_batch_size={self.train_batch_size} must be a multiple of "
                             f"ppo_mini_batch_size={self.ppo_mini_batch_size}")
        if self.model_path is not None and not (Path(self.model_path) / "config.json").is_file():
            raise ValueError(f"model_path={self.model_path} is not a model directory (no config.json)")
        return self


class TrialConfig(BaseModel):
    """One trial: an algorithm with its hyperparameters, on a profile, with a seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0)
    profile: Annotated[Union[LocalProfile, A100Profile], Field(discriminator="name")] = Field(
        default_factory=LocalProfile)

    @model_validator(mode="before")
    @classmethod
    def _local_by_default(cls, data: Any) -> Any:
        # a profile given as settings without a name is the local one
        if isinstance(data, dict) and isinstance(data.get("profile"), dict) and "name" not in data["profile"]:
            data = {**data, "profile": {"name": "local", **data["profile"]}}
        return data

    @field_validator("algorithm")
    @classmethod
    def _known(cls, name: str) -> str:
        get(name)
        return name

    @model_validator(mode="after")
    def _valid_hyperparameters(self) -> TrialConfig:
        # resolve to the full set (defaults included) so the config says exactly what ran
        full = get(self.algorithm).parse(self.hyperparameters).model_dump()
        object.__setattr__(self, "hyperparameters", full)
        return self

    @property
    def params(self):
        return get(self.algorithm).parse(self.hyperparameters)

    def stable_hash(self) -> str:
        """A hash of everything that determines the run (names a trial's checkpoints and W&B run)."""
        # where data and checkpoints live is not part of what runs: moving storage must not break a resume
        payload = json.dumps(self.model_dump(mode="json", exclude={"profile": {"data_dir", "checkpoint_root"}}),
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def default_name(self) -> str:
        hp = "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
                      for k, v in self.hyperparameters.items() if k in ("alpha", "beta_high", "eps_high"))
        return re.sub(r"[^A-Za-z0-9_.-]", "", f"{self.algorithm}-{hp}-s{self.seed}".replace("--", "-"))


def trial_config(algorithm: str, hyperparameters: dict[str, Any] | None = None, **kwargs) -> TrialConfig:
    """Build a TrialConfig, turning every validation failure into one AlgorithmError for the CLI."""
    from pydantic import ValidationError

    try:
        return TrialConfig(algorithm=algorithm, hyperparameters=hyperparameters or {}, **kwargs)
    except ValidationError as err:
        messages = []
        for e in err.errors():
            text = str(e.get("ctx", {}).get("error", e["msg"]))
            if isinstance(e.get("ctx", {}).get("error"), AlgorithmError):
                messages.append(text)
            else:
                field = ".".join(str(p) for p in e["loc"] if p not in ("local", "a100"))  # union tags
                messages.append(f"{field}: {text}".replace("Value error, ", ""))
        raise AlgorithmError("; ".join(messages)) from None
