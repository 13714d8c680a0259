"""A Hugging Face ``transformers`` rollout backend for verl 0.9.1 on CPU: ``actor_rollout_ref.rollout.name=hf``.

verl's trainer only generates through an inference *server* (vLLM, SGLang, TensorRT-LLM), none of which runs
on a CPU-only machine. This module plugs a small one into verl's two rollout registries (the patch manifest's
``hf_rollout_*`` patches, installed in every verl process of a ``VERL_PLATFORM=cpu`` run, see docs/patches.md):

- ``RolloutReplicaRegistry["hf"]`` -> ``HFReplica``: launched by the trainer's ``LLMServerManager``; starts one
  ``HFRolloutServer`` Ray actor per replica (named ``hf_server_<replica_rank>``), on the node of its trainer worker,
  or adopts the one the task runner started early (``prelaunch_server``, called by ``early_start``);
- ``_ROLLOUT_REGISTRY[("hf", "async")]`` -> ``HFServerAdapter``: built inside the actor worker (hybrid engine);
  verl hands it the new weights after every actor update (``update_weights``) and it forwards them to the server.

The server (``HFRolloutServer``):

- ``generate(prompt_ids, sampling_params, request_id, **kw) -> TokenOutput`` is what verl's agent loop calls, one
  request per sample, all concurrently (the actor is async, ``max_concurrency`` ~1000). Requests are queued; a
  single batcher task collects them (it waits until no new request arrived for ``BATCH_GAP_S``, at most
  ``BATCH_WINDOW_S``, at most ``max_num_seqs`` requests) and generates the batch in one KV-cached sampling loop
  in a worker thread, so the event loop keeps queueing the next batch meanwhile;
- sampling is deterministic whatever the batching and the arrival order: every request samples from its own
  ``torch.Generator``, seeded (``request_seed``) from the run's seed (``rollout.seed``, or a ``seed`` in the
  sampling params), the weight version, the replica, the prompt ids, the request's *sample key* and its
  occurrence index (the k-th request with these prompt ids and sample key since the weights last changed gets
  index k). The sample key names the session: the agent loop hook (``hf_rollout_sample_key``, in the agent-loop
  worker) puts ``"<train|val>|<data_source>|<dataset index>|<session_id>"`` into the sampling params
  (``SAMPLE_KEY``), so session s of a prompt gets the same sample in every run, whichever request arrives first
  and whichever batch it lands in (up to the last bits of its log-probs: the batch's shape changes the
  matmuls). Without a sample key (another caller) the requests of one prompt are indistinguishable, and each
  prompt gets the same multiset of samples, not the same order;
- the sampling loop: left-padded prompts, explicit position ids, per-request temperature / top-k / top-p /
  max_tokens (``temperature <= 0`` is greedy), stop at any eos/pad id of the model (the stop token is returned,
  as vLLM does), finished rows dropped from the batch and its KV cache. The log-prob returned per token is
  ``log_softmax(logits / temperature)`` of the sampled token over the full vocabulary (before top-k/top-p), which
  is what verl's actor recomputes as the old policy, so ``training/rollout_actor_probs_pearson_corr`` ~ 1;
- ``TokenOutput.extra_fields["global_steps"]``: the weight version, set by the adapter after each sync (the v1
  trainer's metrics need it);
- sleep / wake_up / abort / resume / KV-cache calls are no-ops: generation is idle when verl syncs weights, and a
  lock keeps a weight load from overlapping a batch anyway.

Weight sync: the adapter drains verl's ``(name, tensor)`` generator on every trainer rank (it all-gathers FSDP
shards, a collective), and rank 0 of each replica sends the tensors to its server through Ray in buckets of
``checkpoint_engine.update_weights_bucket_megabytes``; the server ``load_state_dict``s them. Every update prints
a line ``[hf_rollout] weights <fingerprint> ...`` (and each batch a throughput line) to the run's output.

The model is loaded with ``AutoModelForCausalLM`` from the actor's checkpoint in ``rollout.dtype`` (sdpa
attention). The server process never imports verl (``import verl`` costs 6-9 s of CPU per process on the
local machine, on the start-up's critical path): the replica hands it plain settings (``server_settings``), and
its replies (``HFTokenOutput``) become verl's ``TokenOutput`` when the agent loop unpickles them. For the same
reason this module imports verl only inside functions; ``HFReplica`` and ``HFServerAdapter`` (subclasses of
verl's classes) are created on first access. Threads: ``MASPO_HF_ROLLOUT_THREADS``, default what Ray gives the actor (``OMP_NUM_THREADS``, 1): on a
small model and a busy 2-core machine, 2 OpenMP threads were 10-40x slower than 1 (spinning threads contend).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.verl_bridge.patching import wrapper_factory

NAME = "hf"
SAMPLE_KEY = "maspo_sample_key"  # in the sampling params: which session of which prompt a request is
AGENT_LOOP_MODULE = "verl.experimental.agent_loop.agent_loop"
_HOOKED = "_maspo_hf_sample_key"
BATCH_GAP_S = 0.05  # a batch closes once no request arrived for this long ...
BATCH_WINDOW_S = 0.5  # ... or this long after its first request

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32", "float": "float32"}


# The three registrations are the manifest's hf_rollout_adapter, hf_rollout_replica and hf_rollout_sample_key
# (orchestrator.verl_bridge.patches): each when verl imports its module, not before (a process that never
# rolls out saves ~1 s).


def register_adapter(base) -> None:
    """``rollout.name=hf`` -> ``HFServerAdapter`` in verl's ``_ROLLOUT_REGISTRY`` (idempotent)."""
    base._ROLLOUT_REGISTRY[(NAME, "async")] = f"{__name__}.HFServerAdapter"


def register_replica(replica) -> None:
    """``rollout.name=hf`` -> ``HFReplica`` in verl's ``RolloutReplicaRegistry`` (idempotent)."""
    replica.RolloutReplicaRegistry.register(NAME, lambda: _verl_classes()["HFReplica"])


def sample_key(trajectory: dict, kwargs: dict) -> str:
    """What names one session of one prompt, the same in every run: split, data source, dataset index, session."""
    validate = bool(trajectory.get("validate", False))
    session = kwargs.get("session_id", trajectory.get("rollout_n", 0))  # v1 (TransferQueue) / v0 agent loop
    index = kwargs.get("index", trajectory.get("sample_index", 0))
    return f"{'val' if validate else 'train'}|{kwargs.get('data_source', '')}|{index}|{session}"


@wrapper_factory(_HOOKED)
def wrap_run_agent_loop(original):
    """``AgentLoopWorker._run_agent_loop`` with the session's sample key in the sampling params (rollout hf only)."""

    async def _run_agent_loop(self, sampling_params, trajectory, *args, **kwargs):
        if getattr(self.rollout_config, "name", None) == NAME:
            sampling_params = {**sampling_params, SAMPLE_KEY: sample_key(trajectory, kwargs)}
        return await original(self, sampling_params, trajectory, *args, **kwargs)

    return _run_agent_loop


def server_name(replica_rank: int, suffix: str = "") -> str:
    return f"{NAME}_server_{replica_rank}{suffix}"


# ------------------------------------------------------------------------------- early server start
#
# verl starts the rollout servers late in its set-up (after the datasets and the actor workers), and a server
# process takes ~8 s to import torch and transformers and load the model: on the local machine that sat on the
# start-up's critical path while one of the two cores idled. So the task runner starts the server of a
# single-replica, single-node run as soon as it has its config (``early_start``), and ``HFReplica`` adopts it
# when verl launches its servers (or starts its own, as before, if the settings or the node differ).

_PRELAUNCHED: dict[str, tuple[Any, dict, str]] = {}  # server name -> (handle, settings, node id)


def single_replica(config) -> bool:
    """Whether the run has exactly one rollout replica (the local profile: one fake GPU, TP = DP = PP = 1)."""
    rollout, trainer = config.actor_rollout_ref.rollout, config.trainer
    replica_world = (int(rollout.tensor_model_parallel_size) * int(rollout.data_parallel_size)
                     * int(rollout.pipeline_model_parallel_size))
    return int(trainer.n_gpus_per_node) * int(trainer.nnodes) == replica_world


def _start_server(name: str, settings: dict, replica_rank: int, max_concurrency: int, node_id: str):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(HFRolloutServer).options(
        name=name,
        num_cpus=0,  # generation and training take turns on the same cores
        max_concurrency=max_concurrency,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(settings=settings, replica_rank=replica_rank)


def prelaunch_server(config) -> bool:
    """Start replica 0's server now, without waiting for it (the task runner, before verl's set-up)."""
    import types

    import ray
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.rollout.replica import RolloutReplica

    rollout = config.actor_rollout_ref.rollout
    if rollout.name != NAME or not single_replica(config):
        return False
    if sum(1 for node in ray.nodes() if node["Alive"]) != 1:
        return False  # verl pins the server to its trainer worker's node, unknown before the workers exist
    name = server_name(0)
    if name in _PRELAUNCHED:
        return True
    settings = server_settings(rollout, config.actor_rollout_ref.model)
    # what the replica's ``max_concurrency`` will be: verl's own property, read off the typed rollout config
    typed_rollout = types.SimpleNamespace(config=omega_conf_to_dataclass(rollout))
    max_concurrency = RolloutReplica.max_concurrency.fget(typed_rollout)
    node_id = ray.get_runtime_context().get_node_id()
    _PRELAUNCHED[name] = (_start_server(name, settings, 0, max_concurrency, node_id), settings, node_id)
    return True


def adopt_prelaunched(name: str, settings: dict, node_id: str):
    """The server started early under ``name`` if it has these settings on this node, else None (and it is
    stopped)."""
    entry = _PRELAUNCHED.pop(name, None)
    if entry is None:
        return None
    handle, early_settings, early_node = entry
    if early_settings == settings and early_node == node_id:
        return handle
    import ray

    ray.kill(handle)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the name is free once the actor is gone: the caller reuses it
        try:
            ray.get_actor(name)
        except ValueError:
            break
        time.sleep(0.1)
    return None


# --------------------------------------------------------------------------------------------- sampling


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    future: asyncio.Future = field(repr=False)
    generator: Any = field(default=None, repr=False)  # this request's own torch.Generator (None: the batch's)


def request_seed(seed: int, prompt_ids, index: int, version: int = 0, replica_rank: int = 0,
                 sample_key: str | None = None) -> int:
    """A 63-bit seed from a stable key (independent of the process's hash salt, of timing and of batching)."""
    key = (int(seed), int(version), int(replica_rank), int(index), tuple(int(t) for t in prompt_ids))
    if sample_key is not None:
        key += (str(sample_key),)
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") >> 1


def request_generator(seed: int, prompt_ids, index: int, version: int = 0, replica_rank: int = 0,
                      sample_key: str | None = None):
    """The ``torch.Generator`` one request samples all its tokens from (see ``request_seed``)."""
    import torch

    return torch.Generator().manual_seed(request_seed(seed, prompt_ids, index, version, replica_rank, sample_key))


def sample_batch(model, requests: list[_Request], stop_ids: list[int], pad_id: int, generator=None):
    """Generate every request in one KV-cached loop; returns ``[(token_ids, log_probs), ...]`` in order.

    A request with its own ``generator`` draws every token from it alone, so its sample does not depend on the
    other requests of the batch (up to the last bits of the logits); the others share ``generator`` (``None``:
    torch's global generator), drawing in row order."""
    import torch

    device = next(model.parameters()).device
    n = len(requests)
    lengths = [len(r.prompt_ids) for r in requests]
    width = max(lengths)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(requests):  # left padding
        input_ids[i, width - lengths[i]:] = torch.tensor(r.prompt_ids, dtype=torch.long)
        attention[i, width - lengths[i]:] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)

    temperature = torch.tensor([r.temperature for r in requests], dtype=torch.float32)
    greedy = temperature <= 0
    temperature = torch.where(greedy, torch.ones_like(temperature), temperature)
    top_k = torch.tensor([r.top_k if r.top_k and r.top_k > 0 else 0 for r in requests], dtype=torch.long)
    top_p = torch.tensor([r.top_p if r.top_p is not None else 1.0 for r in requests], dtype=torch.float32)
    max_tokens = torch.tensor([r.max_tokens for r in requests], dtype=torch.long)
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
    generators = [r.generator if r.generator is not None else generator for r in requests]

    tokens: list[list[int]] = [[] for _ in requests]
    log_probs: list[list[float]] = [[] for _ in requests]
    rows = torch.nonzero(max_tokens > 0).flatten()  # original index of each row still generating
    if rows.numel() == 0:
        return list(zip(tokens, log_probs))
    input_ids, attention, positions = input_ids[rows].to(device), attention[rows].to(device), positions[rows]

    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions.to(device), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1, :]
    next_position = positions[:, -1] + 1
    step = 0
    while True:
        scaled = logits.float().cpu() / temperature[rows, None]
        chosen = _choose(scaled, greedy[rows], top_k[rows], top_p[rows], [generators[i] for i in rows.tolist()])
        chosen_lp = torch.log_softmax(scaled, dim=-1).gather(1, chosen[:, None]).squeeze(1)
        for j, i in enumerate(rows.tolist()):
            tokens[i].append(int(chosen[j]))
            log_probs[i].append(float(chosen_lp[j]))
        step += 1
        alive = ~(torch.isin(chosen, stop) | (max_tokens[rows] <= step))
        if not alive.any():
            break
        if not alive.all():  # drop finished rows from the batch and the cache
            keep = torch.nonzero(alive).flatten()
            rows, chosen, next_position, attention = rows[keep], chosen[keep], next_position[keep], attention[keep]
            cache.batch_select_indices(keep.to(device))
        attention = torch.cat([attention, attention.new_ones((attention.size(0), 1))], dim=1)
        out = model(input_ids=chosen[:, None].to(device), attention_mask=attention,
                    position_ids=next_position[:, None].to(device), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        next_position = next_position + 1
    return list(zip(tokens, log_probs))


def _choose(scaled_logits, greedy, top_k, top_p, generators):
    """One token per row: argmax for greedy rows, else a sample from the row's top-k / top-p filtered distribution.

    Each sampled row draws from its own generator (``generators[j]``; one generator or ``None`` for all rows),
    and how a row is sampled depends on its own parameters only: rows without top-k / top-p sample from the full
    softmax, the others from the sorted (stable), filtered one; greedy rows draw nothing."""
    import torch

    n, vocab = scaled_logits.shape
    if not isinstance(generators, (list, tuple)):
        generators = [generators] * n
    chosen = scaled_logits.argmax(dim=-1)
    sampled_rows = torch.nonzero(~greedy).flatten().tolist()
    if not sampled_rows:
        return chosen
    filtered = ((top_k > 0) & (top_k < vocab)) | (top_p < 1.0)
    probs = torch.softmax(scaled_logits, dim=-1)
    order = {}
    rows = torch.nonzero(filtered & ~greedy).flatten()
    if rows.numel():
        sorted_logits, sorted_order = scaled_logits[rows].sort(dim=-1, descending=True, stable=True)
        rank = torch.arange(vocab).expand_as(sorted_logits)
        k = torch.where(top_k[rows] > 0, top_k[rows].clamp(max=vocab), torch.full_like(top_k[rows], vocab))
        sorted_logits = sorted_logits.masked_fill(rank >= k[:, None], float("-inf"))
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # keep a token while the mass before it < top_p
        sorted_probs = sorted_probs.masked_fill((mass_before >= top_p[rows, None]) & (rank > 0), 0.0)
        order = {int(row): (sorted_probs[j], sorted_order[j]) for j, row in enumerate(rows.tolist())}
    for j in sampled_rows:
        if j in order:
            row_probs, row_order = order[j]
            chosen[j] = row_order[torch.multinomial(row_probs, 1, generator=generators[j])[0]]
        else:
            chosen[j] = torch.multinomial(probs[j], 1, generator=generators[j])[0]
    return chosen


def weights_fingerprint(model, samples_per_tensor: int = 4096) -> str:
    """A short digest of (an evenly strided sample of) every parameter: cheap, and it changes with the weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().flatten()
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // samples_per_tensor)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- server


def server_settings(config, model_config) -> dict:
    """What the server needs from verl's rollout and model configs, as plain values (the server imports no verl).

    Runs where verl is loaded (the replica's process); stop ids are every eos id of the model's config, its
    generation config and its tokenizer; the pad id the config's, else the tokenizer's, else the first stop id."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig

    config = omega_conf_to_dataclass(config)
    model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
    hf_config, tokenizer = model_config.hf_config, model_config.tokenizer
    stop = set()
    for source in (hf_config.eos_token_id, getattr(model_config.generation_config, "eos_token_id", None),
                   getattr(tokenizer, "eos_token_id", None)):
        stop.update(source if isinstance(source, (list, tuple)) else [source] if source is not None else [])
    pad = hf_config.pad_token_id if hf_config.pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
    stop_ids = sorted(int(t) for t in stop)
    return {
        "model_path": str(model_config.local_path),
        "trust_remote_code": bool(model_config.trust_remote_code),
        "dtype": _DTYPES.get(str(config.dtype).lower(), "float32"),
        "prompt_length": int(config.prompt_length),
        "response_length": int(config.response_length),
        "max_model_len": int(config.max_model_len) if config.max_model_len else None,
        "max_num_seqs": max(1, int(config.max_num_seqs)),
        "seed": int(getattr(config, "seed", 0) or 0),  # actor_rollout_ref.rollout.seed
        "stop_ids": stop_ids,
        "pad_id": int(pad) if pad is not None else stop_ids[0],
    }


def _verl_token_output(fields: dict):
    from verl.workers.rollout.replica import TokenOutput

    return TokenOutput(**fields)


class HFTokenOutput:
    """The server's reply: the fields of verl's ``TokenOutput``, which it becomes when unpickled (in the agent
    loop's process, where verl is loaded), so the server process needs no verl."""

    __slots__ = ("token_ids", "log_probs", "stop_reason", "num_preempted", "extra_fields")

    def __init__(self, token_ids, log_probs, stop_reason, num_preempted, extra_fields):
        self.token_ids, self.log_probs, self.stop_reason = token_ids, log_probs, stop_reason
        self.num_preempted, self.extra_fields = num_preempted, extra_fields

    def fields(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __reduce__(self):
        return _verl_token_output, (self.fields(),)


class HFRolloutServer:
    """The Ray actor verl's agent loop sends requests to (see the module docstring); ``settings`` are
    ``server_settings(rollout_config, model_config)``."""

    def __init__(self, settings: dict, replica_rank: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        self.settings = dict(settings)
        self.replica_rank = replica_rank
        self.threads = int(os.environ.get("MASPO_HF_ROLLOUT_THREADS") or torch.get_num_threads())
        dtype = getattr(torch, settings["dtype"])
        self.model = AutoModelForCausalLM.from_pretrained(
            settings["model_path"], dtype=dtype, attn_implementation="sdpa",
            trust_remote_code=settings["trust_remote_code"],
        ).eval()
        self.stop_ids, self.pad_id = list(settings["stop_ids"]), settings["pad_id"]
        self.max_batch_size = settings["max_num_seqs"]
        self.seed = settings["seed"]
        self.global_steps = 0
        self._occurrences: dict[tuple, int] = {}  # (prompt ids, sample key) -> requests seen at this weight version
        self.batch_sizes: list[int] = []
        self.generated_tokens = 0
        self.generate_seconds = 0.0
        self._queue: list[_Request] = []
        self._arrived: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._log(f"loaded {settings['model_path']} ({dtype}), stop ids {self.stop_ids}, "
                  f"weights {weights_fingerprint(self.model)}")

    def _log(self, message: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        print(f"[hf_rollout] replica {self.replica_rank}: {message} (at {stamp})", flush=True)

    def _ensure_started(self) -> None:
        if self._batcher is None:  # created lazily: the actor's event loop runs only after __init__
            self._arrived, self._lock = asyncio.Event(), asyncio.Lock()
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    def _max_tokens(self, prompt_len: int, sampling_params: dict) -> int:
        s = self.settings
        budget = min(s["response_length"], s["prompt_length"] + s["response_length"] - prompt_len)
        if s["max_model_len"]:
            budget = min(budget, s["max_model_len"] - prompt_len)
        for key in ("max_tokens", "max_new_tokens"):
            if sampling_params.get(key) is not None:
                budget = min(budget, int(sampling_params[key]))
        return max(0, budget)

    async def generate(self, prompt_ids, sampling_params: dict[str, Any], request_id: str, image_data=None,
                       video_data=None, **kwargs):
        if image_data or video_data or kwargs.get("audio_data"):
            raise NotImplementedError("the hf rollout is text-only")
        if sampling_params.get("repetition_penalty", 1.0) not in (None, 1.0):
            raise NotImplementedError("the hf rollout has no repetition penalty")
        self._ensure_started()
        prompt_ids = [int(t) for t in prompt_ids]
        session = sampling_params.get(SAMPLE_KEY)
        key = (tuple(prompt_ids), session)
        index = self._occurrences.get(key, 0)
        self._occurrences[key] = index + 1
        seed = self.seed if sampling_params.get("seed") is None else int(sampling_params["seed"])
        request = _Request(
            prompt_ids=prompt_ids,
            max_tokens=self._max_tokens(len(prompt_ids), sampling_params),
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_k=int(sampling_params.get("top_k", -1) or -1),
            top_p=float(sampling_params.get("top_p", 1.0)),
            future=asyncio.get_running_loop().create_future(),
            generator=request_generator(seed, prompt_ids, index, self.global_steps, self.replica_rank, session),
        )
        self._queue.append(request)
        self._arrived.set()
        token_ids, log_probs = await request.future
        stop_reason = "completed" if token_ids and token_ids[-1] in self.stop_ids else "length"
        return HFTokenOutput(token_ids=token_ids, log_probs=log_probs, stop_reason=stop_reason, num_preempted=0,
                             extra_fields={"global_steps": self.global_steps})

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            opened = loop.time()
            while len(self._queue) < self.max_batch_size and loop.time() - opened < BATCH_WINDOW_S:
                seen = len(self._queue)
                await asyncio.sleep(BATCH_GAP_S)
                if len(self._queue) == seen:
                    break
            batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size:]
            async with self._lock:
                try:
                    results = await asyncio.to_thread(self._generate_batch, batch)
                except Exception as error:  # noqa: BLE001 - every waiting request gets the error
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(error)
                    continue
            for request, result in zip(batch, results):
                if not request.future.done():
                    request.future.set_result(result)

    def _generate_batch(self, batch: list[_Request]):
        import torch

        torch.set_num_threads(self.threads)  # per thread under OpenMP: set it in the thread that generates
        start = time.perf_counter()
        with torch.inference_mode():
            results = sample_batch(self.model, batch, self.stop_ids, self.pad_id)
        elapsed = time.perf_counter() - start
        n_tokens = sum(len(tokens) for tokens, _ in results)
        self.batch_sizes.append(len(batch))
        self.generated_tokens += n_tokens
        self.generate_seconds += elapsed
        self._log(f"batch of {len(batch)}: {n_tokens} tokens in {elapsed:.2f} s ({n_tokens / elapsed:.0f} tok/s), "
                  f"weights of step {self.global_steps}")
        return results

    async def load_weights(self, named_tensors: dict) -> int:
        """Copy a bucket of ``{hf_name: tensor}`` into the model; returns how many tensors were loaded."""
        self._ensure_started()
        async with self._lock:
            result = self.model.load_state_dict(named_tensors, strict=False)
        if result.unexpected_keys:
            raise KeyError(f"weights the rollout model does not have: {result.unexpected_keys[:8]}")
        return len(named_tensors)

    async def set_global_steps(self, global_steps: int | None, n_tensors: int | None = None) -> None:
        if global_steps is not None and global_steps != self.global_steps:  # None: a re-sync of the same version
            self.global_steps = global_steps
            self._occurrences.clear()  # occurrence indices count from 0 again for the new weights
        self._log(f"weights {weights_fingerprint(self.model)} for step {global_steps} ({n_tensors} tensors)")

    async def stats(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes), "generated_tokens": self.generated_tokens,
                "generate_seconds": self.generate_seconds, "global_steps": self.global_steps}

    # Lifecycle calls verl makes on every server: nothing to free or restore on CPU.
    async def wake_up(self, *args, **kwargs):
        return None

    sleep = abort_all_requests = resume_generation = clear_kv_cache = wake_up
    release_kv_cache = resume_kv_cache = start_profile = stop_profile = wake_up


# ------------------------------------------------------------------------------------ replica and adapter


@functools.cache
def _verl_classes() -> dict[str, type]:
    """``HFReplica`` and ``HFServerAdapter``: subclasses of verl's, so created (importing verl) on first use."""
    from verl.workers.rollout.base import BaseRollout
    from verl.workers.rollout.replica import RolloutReplica

    class HFReplica(RolloutReplica):
        """One ``HFRolloutServer`` actor per replica, pinned to the node of the replica's first worker."""

        async def launch_servers(self):
            import ray

            if self.workers:
                node_id = await self.workers[0].__ray_call__.remote(
                    lambda worker: ray.get_runtime_context().get_node_id())
            else:
                node_id = ray.get_runtime_context().get_node_id()
            name = server_name(self.replica_rank, self.name_suffix)
            settings = server_settings(self.config, self.model_config)
            early = adopt_prelaunched(name, settings, node_id)
            if early is None:
                server = _start_server(name, settings, self.replica_rank, self.max_concurrency, node_id)
            else:
                server = early
            await server.stats.remote()  # returns once the model is loaded
            print(f"[hf_rollout] replica {self.replica_rank}: server {name} ready"
                  f"{' (started early by the task runner)' if early is not None else ''}", flush=True)
            self.servers = [server]
            self._server_handle = server
            self._server_address = f"{NAME}://{name}"  # a key for verl's load balancer, not an HTTP address

    class HFServerAdapter(BaseRollout):
        """The rollout side of the hybrid actor worker: forwards weight updates to this replica's server."""

        def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
            super().__init__(config, model_config, device_mesh)
            rank = int(os.environ.get("RANK", "0"))
            world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                     * self.config.pipeline_model_parallel_size)
            self.replica_rank = rank // world if replica_rank == -1 else replica_rank
            self.is_leader = rank % world == 0
            self._server = None

        def _server_handle(self):
            import ray

            if self._server is None:
                self._server = ray.get_actor(server_name(self.replica_rank))
            return self._server

        async def resume(self, tags: list[str]):
            return None

        async def release(self):
            return None

        async def update_weights(self, weights, global_steps: int | None = None, wire_format: str = "named_tensors",
                                 **kwargs):
            """Send verl's ``(name, tensor)`` stream to the server in buckets; every rank must drain the stream."""
            from verl.workers.rollout.utils import ensure_async_iterator

            if wire_format != "named_tensors":
                raise NotImplementedError(f"the hf rollout takes full named tensors, not {wire_format!r}")
            if kwargs.get("peft_config") is not None:
                raise NotImplementedError("the hf rollout does not take LoRA adapters (set model.lora.merge=True)")
            bucket_limit = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20
            bucket, bucket_bytes, sent = {}, 0, 0
            async for name, tensor in ensure_async_iterator(weights):  # the engine gathers each full tensor
                if not self.is_leader:
                    continue
                bucket[name] = tensor = tensor.detach().to("cpu")
                bucket_bytes += tensor.numel() * tensor.element_size()
                if bucket_bytes >= bucket_limit:
                    sent += await self._server_handle().load_weights.remote(bucket)
                    bucket, bucket_bytes = {}, 0
            if self.is_leader:
                if bucket:
                    sent += await self._server_handle().load_weights.remote(bucket)
                await self._server_handle().set_global_steps.remote(global_steps, sent)

    classes = {"HFReplica": HFReplica, "HFServerAdapter": HFServerAdapter}
    for name, cls in classes.items():  # picklable by reference: module.__getattr__ resolves the name
        cls.__module__, cls.__qualname__ = __name__, name
    return classes


def __getattr__(name: str):
    if name in ("HFReplica", "HFServerAdapter"):
        return _verl_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
