"""The order and pace at which Tune gets an experiment's trials (docs/orchestration.md#schedule).

Imported by the Tune driver only (it imports Ray Tune); :mod:`orchestrator.schedule` has the policy in plain Python.
"""

from __future__ import annotations

import time

from ray.tune.search import BasicVariantGenerator

SLOT_RESOURCE = "verl_slot"


class SlotAdmission(BasicVariantGenerator):
    """Tune's grid generator that hands out trials in order, and only while the next one fits the free slots.

    Tune asks its search algorithm for new trials and requests resources for every trial it holds; Ray then
    places whichever pending placement group fits first, so single-node trials would keep taking single freed
    nodes while a 2-node trial waits. Here the next trial (in :func:`orchestrator.schedule.start_order`) is held
    back until the cluster's ``verl_slot``s not taken by live trials cover its nodes, and nothing overtakes it.
    ``max_concurrent`` (0: none) caps the live trials as Tune's own generator does. After ``Tuner.restore`` the
    count continues from the saved state; a trial restarted by ``resume_errored`` is not counted, which at worst
    lets Ray's queue order a few requests (the slots still bound what runs).

    Starting is staggered too: at most ``starting_at_once`` handed-out trials may still be PENDING in Tune (their
    controller not yet running; one that has waited ``STARTING_TIMEOUT_S`` no longer counts). Handed out all at
    once, the first cluster-full of trials start in whatever order Ray places their groups and starts their
    controllers and jobs; staggered, the widest and longest are the first to hold their nodes, and the job API on
    the head is not asked for thirty jobs in the same second.
    """

    STARTING_TIMEOUT_S = 120.0

    def __init__(self, nodes_of: dict[str, int], max_concurrent: int = 0, capacity: int | None = None,
                 starting_at_once: int = 4):
        super().__init__(max_concurrent=max_concurrent)
        self._nodes_of = dict(nodes_of)
        self._capacity = capacity  # None: the cluster's verl_slot total, read when needed
        self._held = None  # the next trial, created but not handed to Tune yet
        self._taken: dict[str, int] = {}  # live trial id -> slots
        self._capacity_read = (0.0, 0)
        self._starting_at_once = starting_at_once
        self._starting: dict[str, tuple[object, float]] = {}  # trial id -> (trial, handed out at); not saved

    def _still_starting(self) -> int:
        now = time.monotonic()
        for trial_id, (trial, since) in list(self._starting.items()):
            if getattr(trial, "status", None) != "PENDING" or now - since > self.STARTING_TIMEOUT_S:
                del self._starting[trial_id]
        return len(self._starting)

    def slots(self) -> int:
        if self._capacity is not None:
            return self._capacity
        read_at, value = self._capacity_read
        if time.monotonic() - read_at > 5.0:
            import ray

            value = int(ray.cluster_resources().get(SLOT_RESOURCE, 0))
            self._capacity_read = (time.monotonic(), value)
        return value

    def next_trial(self):
        if self._starting_at_once and self._still_starting() >= self._starting_at_once:
            return None
        trial = self._held if self._held is not None else super().next_trial()
        if trial is None:
            return None
        need = self._nodes_of.get(trial.config.get("trial"), 1)
        if self._taken and sum(self._taken.values()) + need > self.slots():
            self._held = trial
            return None
        self._held = None
        self._taken[trial.trial_id] = need
        self._starting[trial.trial_id] = (trial, time.monotonic())
        return trial

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result=result, error=error)
        self._taken.pop(trial_id, None)

    def get_state(self):
        state = super().get_state()
        if state:
            state["_capacity_read"] = (0.0, 0)
            state["_starting"] = {}  # this session's Trial objects; a restored experiment starts its own count
        return state

    def set_state(self, state):
        super().set_state(state)
        self._starting = {}
