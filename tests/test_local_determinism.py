"""The same seed gives the same first-step metrics twice (the local profile).

Two sources of run-to-run variation are closed in ``orchestrator.verl_bridge``:

- the batch order: verl's replay buffer lists a batch's trajectories in the order the agent loop's requests
  completed (``batch_order`` sorts them into prompt submission order, then session, then turn);
- which sample a session gets: the hf rollout seeds every request from the session's sample key, which the agent
  loop hook adds to the sampling params (``hf_rollout.sample_key``), so arrival order does not matter.

Unit tests cover both on verl's own classes; one short end-to-end check runs a tiny trial twice.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import random

import pytest

from orchestrator.verl_bridge import batch_order, hf_rollout


def keys_of(prompts: list[str], n: int, turns: int = 1) -> list[str]:
    return [f"{uid}_{s}_{t}" for uid in prompts for s in range(n) for t in range(turns)]


def test_trajectories_are_ordered_by_submission_then_session_then_turn():
    submitted = ["c9f0-1", "0a11-2", "77b3-3"]  # random uids: their sort order is not the submission order
    want = keys_of(submitted, n=3, turns=2)
    for seed in range(5):
        shuffled = want[:]
        random.Random(seed).shuffle(shuffled)
        tags = [{"key": k} for k in shuffled]
        keys, out_tags = batch_order.order_trajectories(shuffled, tags, submitted)
        assert keys == want
        assert [t["key"] for t in out_tags] == want  # tags travel with their keys
    # session 10 after session 9 (numbers, not strings); an unknown uid goes last
    keys, _ = batch_order.order_trajectories(["x_10_0", "zz_0_0", "x_9_0"], [0, 1, 2], ["x"])
    assert keys == ["x_9_0", "x_10_0", "zz_0_0"]


@pytest.fixture
def replay_buffer(monkeypatch):
    import verl  # noqa: F401  (loads the plugin, which patches the replay buffer)
    from verl.trainer.ppo.v1 import replay_buffer as rb

    assert getattr(rb.ReplayBuffer._materialize_batch, batch_order._HOOKED, False)
    monkeypatch.setattr(rb.tq, "kv_clear", lambda **kwargs: None)
    buffer = rb.ReplayBuffer(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None,
                             max_off_policy_strategy="drop", sampler_kwargs={})
    return buffer


def test_replay_buffer_batches_do_not_depend_on_completion_order(replay_buffer):
    submitted = [f"{random.Random(i).getrandbits(64):016x}" for i in range(4)]
    trajectories = keys_of(submitted, n=4)
    batches = []
    for seed in range(3):
        completed = trajectories[:]
        random.Random(seed).shuffle(completed)  # the order TransferQueue first saw them
        replay_buffer.prompt_global_steps["train"] = {uid: 0 for uid in submitted}
        replay_buffer.partitions["train"] = {k: {"status": "success", "k": k} for k in completed}
        selected, snapshot, _ = replay_buffer._select_prompt_uids("train", set(submitted), 3)
        meta = replay_buffer._materialize_batch("train", selected, snapshot)
        assert [t["k"] for t in meta.tags] == meta.keys
        batches.append(meta.keys)
    assert batches[0] == batches[1] == batches[2] == keys_of(submitted[:3], n=4)


def test_prompts_oldest_first_then_in_submission_order(replay_buffer):
    replay_buffer.prompt_global_steps["train"] = {"b": 1, "a": 1, "c": 0, "d": 1}  # submitted b, a, c, d
    replay_buffer.partitions["train"] = {}
    for keys in ({"a", "b", "c", "d"}, {"d", "c", "b", "a"}):
        selected, _, _ = replay_buffer._select_prompt_uids("train", keys, 3)
        assert selected == ["c", "b", "a"]  # verl's staleness order, ties by submission


def test_cpu_platform_polls_the_replay_buffer_faster(monkeypatch, replay_buffer):
    from orchestrator.verl_bridge import patches

    # the plugin installs the poll patch only where VERL_PLATFORM=cpu or MASPO_REPLAY_POLL_S is set at import
    # verl (not in this test process): install it here, as the plugin does in a local-profile process
    patches.install(patches.get("replay_buffer_poll"))
    monkeypatch.delenv(batch_order.POLL_ENV, raising=False)
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert batch_order.poll_interval() is None  # a cluster keeps verl's 2 s
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    assert batch_order.poll_interval() == batch_order.CPU_POLL_S
    monkeypatch.setenv(batch_order.POLL_ENV, "0.5")
    assert batch_order.poll_interval() == 0.5
    assert type(replay_buffer)(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None,
                               max_off_policy_strategy="drop", sampler_kwargs={}).poll_interval == 0.5


def test_agent_loop_hook_names_the_session_for_the_hf_rollout():
    seen = []

    async def run_agent_loop(self, sampling_params, trajectory, *, agent_name, trace=True, **kwargs):
        seen.append(sampling_params)

    hooked = hf_rollout.wrap_run_agent_loop(run_agent_loop)
    assert hf_rollout.wrap_run_agent_loop(hooked) is hooked

    class Worker:
        rollout_config = type("RolloutConfig", (), {"name": "hf"})()

    params = {"temperature": 1.0}
    trajectory = {"validate": True, "sample_index": 3, "rollout_n": 0}
    asyncio.run(hooked(Worker(), params, trajectory, agent_name="x", session_id=5, index=3,
                       data_source="local_amc23", uid="random"))
    assert seen[-1] == {"temperature": 1.0, hf_rollout.SAMPLE_KEY: "val|local_amc23|3|5"}
    assert params == {"temperature": 1.0}  # the shared dict is not modified
    Worker.rollout_config.name = "vllm"
    asyncio.run(hooked(Worker(), params, trajectory, agent_name="x", session_id=5))
    assert seen[-1] is params  # other backends get the sampling params untouched


def test_server_reply_becomes_verls_token_output():
    from verl.workers.rollout.replica import TokenOutput

    reply = hf_rollout.HFTokenOutput([1, 2], [-0.5, -0.25], "completed", 0, {"global_steps": 3})
    output = pickle.loads(pickle.dumps(reply))
    assert isinstance(output, TokenOutput)
    assert output.token_ids == [1, 2] and output.extra_fields == {"global_steps": 3}


def test_server_settings_import_no_verl_in_the_server_process():
    import subprocess
    import sys

    code = ("import sys, orchestrator.verl_bridge.hf_rollout as h; "
            "assert h.HFRolloutServer and 'verl' not in sys.modules, sorted(m for m in sys.modules if 'verl' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------- end to end

TINY = dict(steps=1, train_batch_size=4, ppo_mini_batch_size=2, n_samples=4, val_n=2, n_val_problems=1,
            test_freq=1)
# rollout log-probs come from the server's batched forward, whose shape (timing) changes their last bits
NEAR = ("rollout_corr/", "training/rollout_probs_diff_", "training/rollout_actor_probs_")
SKIP = ("timing_s/", "timing_per_token_ms/", "perf/", "actor/perf/")


def _records(path) -> dict[int, dict]:
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step.setdefault(record["step"], {}).update(record["data"])
    return by_step


@pytest.mark.slow
def test_same_seed_same_first_step_metrics(tmp_path):
    """Two tiny GRPO trials with seed 0 (two updates per step): every metric of steps 0 and 1 is equal."""
    from rich.console import Console

    from orchestrator.local_trial import run_local_trial
    from orchestrator.config.trial import LocalProfile, trial_config

    trial = trial_config("grpo", {}, seed=0, profile=LocalProfile(**TINY))
    runs = []
    for name in ("first", "second"):
        assert run_local_trial(trial, name, tmp_path / name, Console(width=200, quiet=True)) == 0
        runs.append(_records(tmp_path / name / "metrics.jsonl"))
    first, second = runs
    assert sorted(first) == sorted(second) == [0, 1]
    assert first[1]["actor/pg_loss"] != 0 and first[1]["actor/grad_norm"] > 0  # a real update was compared
    for step in (0, 1):
        assert first[step].keys() == second[step].keys()
        for key, value in first[step].items():
            other = second[step][key]
            if key.startswith(SKIP) or not isinstance(value, (int, float)):
                continue
            if key.startswith(NEAR):
                assert math.isclose(value, other, rel_tol=0, abs_tol=1e-5), (step, key, value, other)
            else:
                assert value == other or (math.isnan(value) and math.isnan(other)), (step, key, value, other)


def test_vectorized_validation_bootstrap_gives_verls_numbers():
    """best@n / worst@n / maj@n from the vectorized bootstrap equal verl's loop, bit for bit."""
    from functools import partial

    import numpy as np

    import verl  # noqa: F401  (loads the plugin)
    from verl.trainer.ppo import metric_utils
    from orchestrator.verl_bridge import val_bootstrap

    assert getattr(metric_utils.bootstrap_metric, val_bootstrap._HOOKED, False)  # installed by the plugin
    slow = metric_utils.bootstrap_metric.__wrapped__
    fast = metric_utils.bootstrap_metric
    majority = partial(metric_utils.calc_maj_val, vote_key="pred", val_key="val")
    rng = random.Random(0)
    for _ in range(60):
        n = rng.choice([1, 2, 3, 5, 8, 16])
        values = [rng.choice([0.0, 1.0, -1.0, 0.5]) for _ in range(n)]
        votes = [{"val": v, "pred": rng.choice(["1", "2", "10", ""])} for v in values]
        for size in (2, 4, 8):
            assert fast(values, size, [np.max, np.min]) == slow(values, size, [np.max, np.min])
            assert fast(votes, size, [majority]) == slow(votes, size, [majority])
    other = [np.mean]  # anything else is verl's own loop
    assert fast([1.0, 0.0, 1.0], 2, other) == slow([1.0, 0.0, 1.0], 2, other)
