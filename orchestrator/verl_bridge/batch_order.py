"""Batches in an order that is a function of the data, and a shorter replay-buffer poll on the CPU platform.

verl 0.9.1's v1 trainer takes every batch (training and validation) from its ``ReplayBuffer``
(``verl/trainer/ppo/v1/replay_buffer.py``). ``ReplayBuffer._materialize_batch`` lists the batch's trajectory
keys ``{uid}_{session_id}_{index}`` in the order TransferQueue first saw them, i.e. the order in which the agent
loop's requests *completed*; the uids are random (``uuid4``) and the prompt selection
(``_select_prompt_uids``) sorts a ``set`` of them. So two runs with one seed train on the same samples in
another order: other mini-batches, other ``actor/pg_loss`` and ``actor/grad_norm`` from the first update on.

The patch manifest (``orchestrator.verl_bridge.patches``, patches ``batch_order_prompts`` and
``batch_order_trajectories``, see docs/patches.md) installs the order in every verl process, when
``verl.trainer.ppo.v1.replay_buffer`` is imported (it takes effect where the replay buffer lives, the task
runner): ``ReplayBuffer`` is patched so that

- the prompts of a batch are taken, and listed, in the order they were *submitted* (the order of the prompt
  keys in TransferQueue's listing, which is insertion order: the dataloader's order, seeded by
  ``data.seed``); ties in staleness (``global_steps``) are broken by that order, not by set iteration order;
- within a prompt, trajectories are listed by ``session_id``, then by turn ``index``.

The batch's content is unchanged: the same trajectories, the same number, only their order. This holds for
every trainer mode and backend, so the patch is always on. What a session *contains* is made deterministic
by the rollout backend (``hf_rollout`` samples session ``s`` of a prompt from its own seeded stream).

The second patch (``replay_buffer_poll``) is only installed on the CPU platform (``VERL_PLATFORM=cpu``, the
local profile) or when ``MASPO_REPLAY_POLL_S`` is set: verl polls TransferQueue every 2 s (hard-coded
``poll_interval``) while it waits for a batch, which on the local profile costs about 1 s per training step and
per validation. There it polls every ``MASPO_REPLAY_POLL_S`` seconds (default 0.1; a listing of the few
hundred keys of a local run takes milliseconds). On a cluster nothing changes unless the variable is set.

The manifest also installs ``val_bootstrap`` (verl's validation bootstrap, vectorized: the same numbers, about
20x less CPU), the other per-batch bookkeeping of the v1 trainer that the local profile waits for.
"""

from __future__ import annotations

import inspect
import os

from orchestrator.verl_bridge.patching import wrapper_factory

REPLAY_BUFFER_MODULE = "verl.trainer.ppo.v1.replay_buffer"
POLL_ENV = "MASPO_REPLAY_POLL_S"
CPU_POLL_S = 0.1
_HOOKED = "_maspo_batch_order"


def split_key(key: str) -> tuple[str, int, int]:
    """``"{uid}_{session_id}_{index}"`` -> ``(uid, session_id, index)``; a key without both parts gets 0s."""
    uid, _, rest = key.partition("_")
    session, _, index = rest.partition("_")
    try:
        return uid, int(session or 0), int(index or 0)
    except ValueError:
        return uid, 0, 0


def prompt_rank(uids, submitted) -> dict[str, tuple[int, str]]:
    """A sort key per prompt uid: its position in ``submitted`` (submission order), unknown uids after, by uid."""
    position = {uid: i for i, uid in enumerate(submitted)}
    return {uid: (position.get(uid, len(position)), uid) for uid in uids}


def order_trajectories(keys: list[str], tags: list, submitted) -> tuple[list[str], list]:
    """Keys (and their tags) sorted by (prompt submission order, session_id, index)."""
    rank = prompt_rank({split_key(k)[0] for k in keys}, submitted)

    def sort_key(i):
        uid, session, index = split_key(keys[i])
        return rank[uid], session, index

    order = sorted(range(len(keys)), key=sort_key)
    return [keys[i] for i in order], [tags[i] for i in order]


def in_submission_order(uids, submitted) -> list[str]:
    """Prompt uids in submission order (unknown ones after, by uid)."""
    rank = prompt_rank(uids, submitted)
    return sorted(uids, key=rank.__getitem__)


@wrapper_factory(_HOOKED)
def wrap_select_prompt_uids(original):
    def _select_prompt_uids(self, partition_id, sampleable_keys, batch_size):
        # verl sorts the keys by staleness with Python's stable sort: given them in submission order (the order
        # of the kv listing) instead of a set's, its ties keep that order
        submitted = self.prompt_global_steps[partition_id]
        return original(self, partition_id, in_submission_order(sampleable_keys, submitted), batch_size)

    return _select_prompt_uids


@wrapper_factory(_HOOKED)
def wrap_materialize_batch(original):
    def _materialize_batch(self, partition_id, selected_prompt_uids, partition_snapshot):
        submitted = self.prompt_global_steps.get(partition_id, {})  # kv_list order: submission order
        if not all(uid in submitted for uid in selected_prompt_uids):  # e.g. a custom sampler's own selection
            submitted = list(selected_prompt_uids)
        keys, tags = order_trajectories(list(partition_snapshot), list(partition_snapshot.values()), submitted)
        return original(self, partition_id, selected_prompt_uids, dict(zip(keys, tags)))

    return _materialize_batch


def poll_interval() -> float | None:
    """The replay buffer's poll interval to use, or None for verl's own."""
    value = os.environ.get(POLL_ENV, "").strip()
    if value:
        return max(0.01, float(value))
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
        return CPU_POLL_S
    return None


@wrapper_factory(_HOOKED)
def wrap_init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        interval = poll_interval()
        if interval is not None:
            self.poll_interval = interval

    return __init__


def poll_contract(replay_buffer) -> str | None:
    """What ``wrap_init`` overrides must exist: the buffer's ``poll_interval`` (a constructor argument in 0.9.1)."""
    if "poll_interval" not in inspect.signature(replay_buffer.ReplayBuffer.__init__).parameters:
        return "ReplayBuffer.__init__ has no poll_interval argument any more (the attribute this patch sets)"
    return None
