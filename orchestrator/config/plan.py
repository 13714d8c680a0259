"""The plan of an experiment: what a ``maspo sweep``/``compare`` command decided, before anything starts.

Saved as ``runs/<NAME>/experiment.json`` by :mod:`orchestrator.store` (the only module that reads or writes it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.config.trial import TrialConfig


class PlannedTrial(BaseModel):
    """One trial of an experiment: a unique directory name, a row label for tables, the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    label: str
    trial: TrialConfig
    parts: list[str] = Field(default_factory=list, description="the study parts that share this trial (studies)")

    @property
    def nodes(self) -> int:
        """``verl_slot``s the trial takes, one on each of that many nodes (1 on the local profile)."""
        return getattr(self.trial.profile, "slots", 1)


class ExperimentPlan(BaseModel):
    """Everything a command decided, saved as ``experiment.json`` before anything starts."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["sweep", "compare", "study"]
    spec: str
    profile: str
    scale: str  # a study's trials have a scale each (their profile's); here the scales, joined by '+'
    seeds: list[int]
    steps: int
    scheduler: Literal["fifo", "asha"] = "fifo"
    grace_validations: int = Field(3, ge=1)
    max_concurrent: int | None = Field(
        None, ge=1, description="trials at a time; None fills the cluster (as many as its verl_slots allow)")
    max_failures: int = Field(2, ge=0)
    job_start_timeout_s: float = Field(
        900.0, gt=0, description="a trial's Ray Job still PENDING this long (runtime env not built, entrypoint "
                                 "resources missing) is stopped and the attempt fails (Ray's own default is 900 s)")
    slots_per_trial: int = Field(1, ge=1, description="verl_slots of the widest trial (one per node it spans)")
    rehearse: bool = Field(False, description="an a100 experiment rehearsed on CPU (orchestrator/rehearsal.py)")
    trials: list[PlannedTrial]
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def gpus_per_trial(self) -> int:
        """GPUs of the widest trial (a study mixes 8- and 16-GPU trials; see :func:`gpus_of` per trial)."""
        from orchestrator.scales import gpus_of

        if self.rehearse:
            return 1  # one fake GPU, as on the local profile
        return max(gpus_of(t.trial.profile) for t in self.trials)

    def trial(self, name: str) -> PlannedTrial:
        return next(t for t in self.trials if t.name == name)

    def nodes_of(self, planned: PlannedTrial) -> int:
        """The nodes (and ``verl_slot``s) a trial takes here: its profile's, or 1 in a rehearsal on this machine."""
        return 1 if self.rehearse else planned.nodes

    @property
    def validations(self) -> int:
        """Validation points of a full trial: before training, every test_freq steps, and the last step."""
        p = self.trials[0].trial.profile
        return 1 + len({s for s in range(1, p.steps + 1) if s % p.test_freq == 0 or s == p.steps})


def trial_name(trial: TrialConfig) -> str:
    """Readable and unique: the default name plus a short stable hash of the full config."""
    return f"{trial.default_name()}-{trial.stable_hash()[:6]}"
