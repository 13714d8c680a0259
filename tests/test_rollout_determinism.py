"""The hf rollout samples deterministically, whatever the batching and the arrival order.

Every request samples from its own generator, seeded from (run seed, weight version, replica, prompt ids, the
session's sample key, occurrence index), so the collection window's timing (which requests share a batch, in
which order) does not change what a request samples, and with sample keys (what the agent loop hook sends)
session s of a prompt gets the same sample in every run. The end-to-end check (a tiny trial twice, every
metric of the first step compared) is ``tests/test_local_determinism.py``.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from orchestrator.local.tiny_model import build_tiny_model
from orchestrator.verl_bridge.hf_rollout import _Request, request_generator, request_seed, sample_batch

EOS, PAD = 258, 256


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(build_tiny_model(), dtype=torch.float32,
                                                attn_implementation="sdpa").eval()


# prompt, occurrence index, max_tokens, temperature, top_k, top_p: identical prompts (different indices), greedy,
# top-k and top-p rows, prompts of different lengths (so the left padding depends on the batch)
SPECS = [
    ([5, 6, 7, 8, 9], 0, 16, 1.0, -1, 1.0),
    ([5, 6, 7, 8, 9], 1, 16, 1.0, -1, 1.0),
    ([5, 6, 7, 8, 9], 2, 16, 1.0, -1, 1.0),
    ([11, 3, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51], 0, 12, 0.7, 20, 0.9),
    ([11, 3, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51], 1, 12, 0.7, 20, 0.9),
    ([60, 61, 62], 0, 16, 0.0, -1, 1.0),
    ([70, 71, 72, 73, 74, 75, 76, 77], 0, 5, 1.3, 5, 1.0),
    (list(range(80, 105)), 0, 20, 1.0, -1, 1.0),
    ([9, 9], 0, 0, 1.0, -1, 1.0),
]


def generate(model, specs, seed=0):
    requests = [_Request(prompt, max_tokens, temperature, top_k, top_p, None,
                         request_generator(seed, prompt, index))
                for prompt, index, max_tokens, temperature, top_k, top_p in specs]
    with torch.inference_mode():
        return sample_batch(model, requests, [EOS, PAD], PAD)


def assert_same(results, expected):
    assert len(results) == len(expected)
    for (tokens, log_probs), (want_tokens, want_log_probs) in zip(results, expected):
        assert tokens == want_tokens
        # the same token, from logits that may differ in the last bits with the batch's shape
        torch.testing.assert_close(torch.tensor(log_probs), torch.tensor(want_log_probs), atol=1e-4, rtol=0)


def test_request_seed_is_a_stable_key():
    seed = request_seed(0, [1, 2, 3], 0)
    assert seed == request_seed(0, (1, 2, 3), 0)  # a pure function of the key: no hash salt, no state
    assert 0 <= seed < 2**63
    others = {request_seed(1, [1, 2, 3], 0), request_seed(0, [1, 2, 3], 1), request_seed(0, [1, 2, 4], 0),
              request_seed(0, [1, 2, 3], 0, version=1), request_seed(0, [1, 2, 3], 0, replica_rank=1)}
    assert seed not in others and len(others) == 5


def test_samples_do_not_depend_on_the_batch(model):
    together = generate(model, SPECS)
    assert all(len(tokens) > 0 for tokens, _ in together[:-1]) and together[-1] == ([], [])
    assert_same([generate(model, [spec])[0] for spec in SPECS], together)  # each alone
    assert_same(generate(model, SPECS[::-1])[::-1], together)  # reversed order
    order = [4, 0, 7, 2, 8, 5, 1, 6, 3]  # shuffled, in two batches of another size
    mixed = generate(model, [SPECS[i] for i in order[:4]]) + generate(model, [SPECS[i] for i in order[4:]])
    assert_same([mixed[order.index(i)] for i in range(len(SPECS))], together)
    # the same prompt with another occurrence index is another sample
    assert len({tuple(tokens) for tokens, _ in together[:3]}) == 3


def test_another_seed_gives_other_samples(model):
    first, again, other = generate(model, SPECS, seed=0), generate(model, SPECS, seed=0), generate(model, SPECS, 1)
    assert [t for t, _ in first] == [t for t, _ in again]
    sampled = [i for i, spec in enumerate(SPECS) if spec[3] > 0 and spec[2] > 0]
    assert sum(first[i][0] != other[i][0] for i in sampled) >= len(sampled) - 1
    greedy = SPECS.index(next(s for s in SPECS if s[3] == 0))
    assert first[greedy][0] == other[greedy][0]  # temperature 0 stays greedy whatever the seed


def make_server(model):
    """The server's own fields that generate() uses, without Ray or verl's config."""
    from orchestrator.verl_bridge import hf_rollout

    server = object.__new__(hf_rollout.HFRolloutServer)
    server.model, server.stop_ids, server.pad_id, server.seed = model, [EOS, PAD], PAD, 0
    server.replica_rank, server.global_steps, server.max_batch_size = 0, 0, 4
    server.threads = torch.get_num_threads()
    server.batch_sizes, server.generated_tokens, server.generate_seconds = [], 0, 0.0
    server._queue, server._arrived, server._batcher, server._lock, server._occurrences = [], None, None, None, {}
    server._max_tokens = lambda prompt_len, params: 12
    server._log = lambda message: None
    return server


def test_sessions_get_their_own_samples_whatever_the_arrival_order(model):
    """With the agent loop's sample keys, session s of a prompt gets the same sample in any arrival order."""
    from orchestrator.verl_bridge.hf_rollout import SAMPLE_KEY

    prompt = [5, 6, 7]
    sessions = [f"train|local_train|3|{s}" for s in range(6)]

    async def run(order):
        server = make_server(model)
        params = [{"temperature": 1.0, "top_p": 1.0, "top_k": -1, SAMPLE_KEY: sessions[i]} for i in order]
        outputs = await asyncio.gather(*[server.generate(prompt, p, f"r{i}") for i, p in zip(order, params)])
        return {i: out.token_ids for i, out in zip(order, outputs)}

    first = asyncio.run(run(range(6)))
    again = asyncio.run(run([3, 5, 0, 4, 1, 2]))
    assert first == again
    assert len({tuple(tokens) for tokens in first.values()}) > 1  # sessions are different samples


def test_server_counts_occurrences_per_weight_version(model):
    """The server's own bookkeeping: k-th request with the same prompt since the last weight version gets index k,
    whatever the batches; a new weight version starts counting again (and has its own streams)."""
    server = make_server(model)
    prompts = [[5, 6, 7], [8, 9, 10, 11], [5, 6, 7], [5, 6, 7], [8, 9, 10, 11]]

    async def run(order, version):
        if version != server.global_steps:
            await server.set_global_steps(version)
        params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}
        outputs = await asyncio.gather(*[server.generate(prompts[i], params, f"r{i}") for i in order])
        return {i: out.token_ids for i, out in zip(order, outputs)}

    async def scenario():
        first = await run(range(5), 0)
        server._occurrences.clear()  # as if a fresh run
        second = await run([4, 3, 2, 1, 0], 0)
        third = await run(range(5), 1)
        return first, second, third

    first, second, third = asyncio.run(scenario())
    for prompt in ([5, 6, 7], [8, 9, 10, 11]):  # per prompt, the same multiset of samples
        same = [i for i, p in enumerate(prompts) if p == prompt]
        assert sorted(first[i] for i in same) == sorted(second[i] for i in same)
    assert sorted(map(tuple, first.values())) != sorted(map(tuple, third.values()))
    assert server.batch_sizes and max(server.batch_sizes) <= 4


def test_server_is_started_early_only_for_one_replica_and_adopted_only_if_unchanged(monkeypatch):
    """The task runner starts the hf server early only for a single-replica run; the replica adopts it only with the
    same settings on the same node, and otherwise stops it and starts its own."""
    from omegaconf import OmegaConf

    from orchestrator.verl_bridge import hf_rollout

    def config(gpus, tp):
        return OmegaConf.create({
            "trainer": {"n_gpus_per_node": gpus, "nnodes": 1},
            "actor_rollout_ref": {"rollout": {"tensor_model_parallel_size": tp, "data_parallel_size": 1,
                                              "pipeline_model_parallel_size": 1}}})

    assert hf_rollout.single_replica(config(1, 1)) and hf_rollout.single_replica(config(8, 8))
    assert not hf_rollout.single_replica(config(8, 1)) and not hf_rollout.single_replica(config(8, 4))

    import ray

    killed = []
    monkeypatch.setattr(ray, "kill", killed.append)

    def get_actor(name):
        raise ValueError(f"no actor {name}")  # the stopped server's name is free again

    monkeypatch.setattr(ray, "get_actor", get_actor)
    settings = {"model_path": "/m", "seed": 0}
    monkeypatch.setitem(hf_rollout._PRELAUNCHED, "hf_server_0", ("early", settings, "node-a"))
    assert hf_rollout.adopt_prelaunched("hf_server_0", dict(settings), "node-a") == "early"
    assert hf_rollout.adopt_prelaunched("hf_server_0", dict(settings), "node-a") is None  # adopted once
    for other_settings, node in (({**settings, "seed": 1}, "node-a"), (settings, "node-b")):
        hf_rollout._PRELAUNCHED["hf_server_0"] = ("stale", settings, "node-a")
        assert hf_rollout.adopt_prelaunched("hf_server_0", other_settings, node) is None
    assert killed == ["stale", "stale"] and not hf_rollout._PRELAUNCHED
