"""Run verl 0.9.1's real actor update on CPU with a tiny random Qwen2 (a test helper, not a test module).

``run_actor_update(overrides, model_dir)`` does in the current process what verl's trainer does around an
actor step, with verl's own code from config to optimizer step:

1. compose verl's ``ppo_trainer`` Hydra config from the installed package, with ``BASE_OVERRIDES`` (what a
   CPU run needs, small batch sizes) followed by the caller's ``overrides``, which pass straight through
   (``actor_rollout_ref.actor.policy_loss.loss_mode=...``, ``..._target_=...``, ``+...maspo_alpha=...``);
2. create ``ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")`` and ``init_model()`` (FSDP2 engine,
   gloo process group of one rank, through ``orchestrator.verl_bridge.cpu``);
3. build a padded batch by hand: 2 prompts x n=4 responses, prompts left-padded to 8 tokens, responses
   right-padded to 12, binary rewards turned into GRPO advantages by verl's own estimator (mixed signs);
4. old log-probs and entropy with ``compute_log_prob`` (as ``_compute_old_log_prob`` does), then
   ``update_actor`` ``n_updates`` times with the meta info ``RayPPOTrainer._update_actor`` sets.

With 8 sequences, ``ppo_mini_batch_size=1`` prompt (x n = 4 sequences) and ``ppo_micro_batch_size_per_gpu=2``,
each update call does 2 optimizer steps of 2 micro-batches each: the policy loss runs 4 times per update.

The result is a JSON-able dict:

- ``metrics``: one dict per update call, named and reduced as the trainer logs them (``actor/pg_loss``,
  ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/grad_norm``, ``actor/lr``, any key the loss returns, ...);
- ``raw_metrics``: the same before reduction (lists, one entry per mini-batch for most keys);
- ``policy_loss_calls``: how many times the registered policy loss ran, per update call;
- ``old_log_prob_metrics``: ``actor/entropy`` of the old policy, as the trainer computes it;
- ``max_abs_weight_change``: over all actor parameters, before the first vs after the last update;
- ``n_params``, ``timings_s``.

Three ways to call it:

- ``run_actor_update(...)`` in this process. Repeatable (each call builds its own worker, model and
  optimizer and reseeds; the one-rank gloo process group is reused), but it sets ``VERL_PLATFORM=cpu`` and
  friends in ``os.environ`` and activates the CPU platform for the rest of the process.
- ``ActorUpdateProcess``: one fresh interpreter serving many calls, ~1.5 s each after the ~8 s import of
  verl (2-core machine). What tests should share, e.g. in a module-scoped fixture.
- ``run_actor_update_subprocess(...)``: a fresh interpreter for one call (~10 s).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_PROMPTS, N_RESPONSES, PROMPT_LEN, RESPONSE_LEN = 2, 4, 8, 12

# What a CPU run of the actor needs, and batch sizes for the hand-made batch above. The caller's overrides
# come after these, so the same key there wins (drop the "+" to change attn_implementation: it exists then).
BASE_OVERRIDES = [
    "actor_rollout_ref.actor.strategy=fsdp2",  # FSDP1 wants GPU params for sync_module_states
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",  # flash_attention_2 is not installed
    "actor_rollout_ref.model.enable_gradient_checkpointing=False",
    "actor_rollout_ref.actor.use_torch_compile=False",  # torch.compile on CPU costs a C++ build per call
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
    f"actor_rollout_ref.rollout.n={N_RESPONSES}",
    "actor_rollout_ref.actor.ppo_mini_batch_size=1",  # prompts; x n = 4 sequences: 2 mini-batches per update
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",  # 2 micro-batches per mini-batch
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.actor.optim.lr=3e-4",  # visible change per step; the PPO clip engages by the 2nd update
    f"data.max_prompt_length={PROMPT_LEN}",
    f"data.max_response_length={RESPONSE_LEN}",
    "data.train_batch_size=2",
    "trainer.n_gpus_per_node=1",
    "trainer.nnodes=1",
    "trainer.device=cpu",
]

# Optional: FSDP mixed precision in fp32 instead of verl's bf16 default (old and new log-probs then agree
# to ~1e-8 before the first optimizer step, instead of to bf16 precision).
FP32_OVERRIDES = [
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
]

CPU_ENV = {
    "VERL_PLATFORM": "cpu",
    "VERL_ENGINE_DEVICE": "cuda",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "1",
    "LOCAL_WORLD_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_cpu_env() -> None:
    """The environment of a one-rank verl worker on CPU (keeps an existing MASTER_PORT of this process)."""
    os.environ.update(CPU_ENV)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose_config(overrides: list[str], model_dir: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import verl

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose("ppo_trainer", overrides=[*BASE_OVERRIDES, f"actor_rollout_ref.model.path={model_dir}",
                                                 *overrides])


def make_batch(seed: int):
    """The padded batch the trainer holds before ``_compute_old_log_prob`` (a ``DataProto``)."""
    import numpy as np
    import torch

    from verl import DataProto
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    g = torch.Generator().manual_seed(seed)
    bs, pad = N_PROMPTS * N_RESPONSES, 256  # <|endoftext|> of the tiny tokenizer
    prompt_lens = torch.tensor([5, 8]).repeat_interleave(N_RESPONSES)  # one short and one full prompt
    response_lens = torch.tensor([12, 7, 3, 10, 12, 5, 9, 1])
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0])  # mixed within each group

    prompts = torch.randint(0, 256, (N_PROMPTS, PROMPT_LEN), generator=g).repeat_interleave(N_RESPONSES, 0)
    responses = torch.randint(0, 256, (bs, RESPONSE_LEN), generator=g)
    cols = torch.arange(PROMPT_LEN)
    prompt_mask = cols.unsqueeze(0) >= (PROMPT_LEN - prompt_lens).unsqueeze(1)  # left padding
    response_mask = torch.arange(RESPONSE_LEN).unsqueeze(0) < response_lens.unsqueeze(1)  # right padding
    prompts = prompts.masked_fill(~prompt_mask, pad)
    responses = responses.masked_fill(~response_mask, pad)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    token_level_rewards = torch.zeros(bs, RESPONSE_LEN)
    token_level_rewards[torch.arange(bs), response_lens - 1] = scores
    uid = np.array([f"prompt-{i // N_RESPONSES}" for i in range(bs)], dtype=object)
    advantages, returns = compute_grpo_outcome_advantage(token_level_rewards, response_mask.float(), uid)

    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": response_mask.long(),
            "token_level_scores": token_level_rewards.clone(),
            "token_level_rewards": token_level_rewards,
            "advantages": advantages,
            "returns": returns,
        },
        non_tensors={"uid": uid},
    )


def _actor_params(worker) -> dict:
    out = {}
    for name, p in worker.actor.engine.module.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().float().clone()
    return out


def _jsonable(value):
    from verl.utils.metric.utils import Metric

    if isinstance(value, Metric):
        value = value.aggregate()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (int, float, bool, str)) or value is None:
        return value
    return float(value) if hasattr(value, "__float__") else str(value)


def trainer_metrics(worker_metrics: dict) -> tuple[dict, dict]:
    """(reduced, raw): the update's metrics named and reduced as the trainer logs them, and the raw lists."""
    from verl.utils.metric import reduce_metrics
    from verl.utils.py_functional import rename_dict

    raw = rename_dict(dict(worker_metrics), "actor/")
    raw["perf/mfu/actor"] = raw.pop("actor/mfu", 0.0)
    raw = {k: _jsonable(v) for k, v in raw.items()}
    reduced = reduce_metrics({k: v if isinstance(v, list) else [v] for k, v in raw.items()})
    return {k: float(v) for k, v in reduced.items()}, raw


@contextlib.contextmanager
def count_policy_loss_calls():
    """Count the registered policy-loss calls ``ppo_loss`` makes (it looks the function up per micro-batch)."""
    import verl.workers.utils.losses as verl_losses

    calls = [0]
    lookup = verl_losses.get_policy_loss_fn

    def counting_lookup(name):
        fn = lookup(name)

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            calls[0] += 1
            return fn(*args, **kwargs)

        return counted

    verl_losses.get_policy_loss_fn = counting_lookup
    try:
        yield calls
    finally:
        verl_losses.get_policy_loss_fn = lookup


@contextlib.contextmanager
def count_bapo_searches():
    """Count BAPO's bound searches: per mini-batch (the actor hook) and per loss call (the fallback)."""
    from orchestrator.algorithms import bapo
    from orchestrator.verl_bridge import actor_hooks

    counts = {"mini_batch": 0, "per_loss_call": 0}
    originals = (actor_hooks.search_bapo_bounds_over_mini_batch, bapo.search_bounds)

    def counting(key, fn):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)

        return counted

    actor_hooks.search_bapo_bounds_over_mini_batch = counting("mini_batch", originals[0])
    bapo.search_bounds = counting("per_loss_call", originals[1])
    try:
        yield counts
    finally:
        actor_hooks.search_bapo_bounds_over_mini_batch, bapo.search_bounds = originals


def run_actor_update(overrides: list[str], model_dir: Path | str | None = None, n_updates: int = 1,
                     seed: int = 0) -> dict:
    """verl's real actor update on CPU in this process (see the module docstring).

    Best called in a process where ``VERL_PLATFORM=cpu`` was set before ``import verl``: the CPU platform is
    activated here anyway, but verl modules that read the device at import time would keep "cuda".
    """
    timings = {}
    t0 = time.perf_counter()
    set_cpu_env()
    if model_dir is None:
        from orchestrator.local.tiny_model import build_tiny_model

        model_dir = build_tiny_model()

    import torch

    from orchestrator.verl_bridge import cpu

    cpu.activate_if_requested()  # normally done by the verl.plugins entry point; idempotent
    from verl.trainer.ppo.core_algos import agg_loss
    from verl.utils import tensordict_utils as tu
    from verl.utils.device import auto_set_device, get_device_name
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    assert get_device_name() == "cpu", "the CPU platform is not active (VERL_PLATFORM=cpu before import verl?)"
    torch.manual_seed(seed)
    cfg = compose_config(list(overrides), Path(model_dir))
    auto_set_device(cfg)
    timings["import_and_compose"] = time.perf_counter() - t0

    t = time.perf_counter()
    worker = ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")
    worker.init_model()
    timings["init_model"] = time.perf_counter() - t

    batch = make_batch(seed)
    actor_cfg, rollout_cfg = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout

    # RayPPOTrainer._compute_old_log_prob
    t = time.perf_counter()
    batch_td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(batch_td, calculate_entropy=True, calculate_sum_pi_squared=False, compute_loss=False,
                         temperature=rollout_cfg.temperature)
    output = worker.compute_log_prob(batch_td)
    old_log_probs = no_padding_2_padding(tu.get(output, "log_probs"), batch_td).float()
    entropy = no_padding_2_padding(tu.get(output, "entropy"), batch_td).float()
    response_mask = batch.batch["response_mask"]
    old_log_prob_metrics = {
        "actor/entropy": agg_loss(loss_mat=entropy, loss_mask=response_mask, loss_agg_mode=actor_cfg.loss_agg_mode,
                                  loss_scale_factor=actor_cfg.loss_scale_factor).item(),
    }
    batch.batch["old_log_probs"] = old_log_probs
    batch.batch["entropy"] = entropy  # v1 keeps the old policy's entropy in the batch the actor sees
    timings["compute_log_prob"] = time.perf_counter() - t

    # RayPPOTrainer._update_actor (the v1 trainer passes the same keys through extra_info)
    before = _actor_params(worker)
    metrics, raw_metrics, loss_calls, bapo_searches, timings["update_actor"] = [], [], [], [], []
    mini_batch_size = actor_cfg.ppo_mini_batch_size * rollout_cfg.n
    for _ in range(n_updates):
        t = time.perf_counter()
        batch.meta_info.update(multi_turn=rollout_cfg.multi_turn.enable, temperature=rollout_cfg.temperature)
        batch_td = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(
            batch_td,
            calculate_entropy=bool(actor_cfg.calculate_entropy or actor_cfg.entropy_coeff != 0.0),
            distillation_use_topk=False,
            distillation_only=False,
            global_batch_size=mini_batch_size,
            mini_batch_size=mini_batch_size,
            epochs=actor_cfg.ppo_epochs,
            seed=actor_cfg.data_loader_seed,
            dataloader_kwargs={"shuffle": actor_cfg.shuffle},
            compute_loss=True,
        )
        with count_policy_loss_calls() as calls, count_bapo_searches() as searches:
            output = worker.update_actor(batch_td)
        loss_calls.append(calls[0])
        bapo_searches.append(searches)
        reduced, raw = trainer_metrics(tu.get(output, "metrics"))
        metrics.append(reduced)
        raw_metrics.append(raw)
        timings["update_actor"].append(time.perf_counter() - t)
    after = _actor_params(worker)

    change = max((after[n] - before[n]).abs().max().item() for n in before)
    timings["total"] = time.perf_counter() - t0
    return {
        "metrics": metrics,
        "raw_metrics": raw_metrics,
        "policy_loss_calls": loss_calls,
        "bapo_searches": bapo_searches,
        "old_log_prob_metrics": old_log_prob_metrics,
        "max_abs_weight_change": change,
        "n_params": sum(p.numel() for p in before.values()),
        "timings_s": timings,
    }


class ActorUpdateProcess:
    """A fresh interpreter that runs ``run_actor_update`` calls one after another (verl imported once).

    A fresh interpreter per call costs the ~8 s of ``import verl`` on a 2-core machine; a call in a warm
    one takes ~1.5 s. Each call builds its own worker, model and optimizer from the checkpoint and reseeds,
    so results do not depend on what ran before (the gloo process group of one rank is reused). After a
    failed call the process is replaced, so one failure cannot leak into the next call::

        with ActorUpdateProcess() as proc:
            result = proc.run(["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"], n_updates=2)

    The child's stdout and stderr go to a temporary file; the tail of a failed call's output is in the error.
    """

    def __init__(self, model_dir: Path | str | None = None, timeout: float = 300.0):
        if model_dir is None:
            from orchestrator.local.tiny_model import build_tiny_model

            model_dir = build_tiny_model()
        self.model_dir, self.timeout = Path(model_dir), timeout
        self._proc = None

    def __enter__(self) -> "ActorUpdateProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, **CPU_ENV, "MASTER_PORT": str(free_port())}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        log_fd, self._log = tempfile.mkstemp(prefix="maspo-actor-update-", suffix=".log")
        os.close(log_fd)
        code = "import sys; from tests.verl_actor_harness import serve; serve(int(sys.argv[1]))"
        with open(self._log, "ab") as log:  # O_APPEND: the child's writes never race the tail reads below
            self._proc = subprocess.Popen([sys.executable, "-c", code, str(write_fd)], cwd=REPO, env=env,
                                          text=True, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                          pass_fds=(write_fd,))
        os.close(write_fd)
        self._replies: queue.Queue = queue.Queue()
        results = os.fdopen(read_fd, "r")

        def pump():
            for line in results:
                self._replies.put(line)
            self._replies.put(None)  # the child is gone
            results.close()

        threading.Thread(target=pump, daemon=True).start()

    def _log_size(self) -> int:
        return os.path.getsize(self._log)

    def _log_tail(self, start: int, n: int = 8000) -> str:
        with open(self._log, "rb") as log:
            log.seek(max(start, self._log_size() - n))
            return log.read().decode(errors="replace")

    def run(self, overrides: list[str], n_updates: int = 1, seed: int = 0) -> dict:
        """``run_actor_update(overrides, self.model_dir, n_updates, seed)`` in the child process."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._start()
        log_start = self._log_size()
        request = {"overrides": list(overrides), "model_dir": str(self.model_dir), "n_updates": n_updates,
                   "seed": seed}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            self._proc.kill()
            line = json.dumps({"error": f"no result after {self.timeout} s (killed)"})
        except OSError as e:  # broken pipe: the child died before reading the request
            line = json.dumps({"error": repr(e)})
        if line is None:
            line = json.dumps({"error": f"the actor-update process exited (rc={self._proc.wait()})"})
        reply = json.loads(line)
        if "result" in reply:
            return reply["result"]
        tail = self._log_tail(log_start)
        self.close()
        raise RuntimeError(f"actor update {list(overrides)} failed: {reply['error']}\n--- output tail ---\n{tail}")

    def close(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()  # serve() returns at EOF
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        Path(self._log).unlink(missing_ok=True)
        self._proc = None


def serve(result_fd: int) -> None:
    """The child side of ``ActorUpdateProcess``: JSON requests on stdin, one JSON reply line each on result_fd."""
    set_cpu_env()
    import verl.workers.engine_workers  # noqa: F401  (the slow import, before the first request)

    with os.fdopen(result_fd, "w") as out:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                reply = {"result": run_actor_update(request["overrides"], Path(request["model_dir"]),
                                                    n_updates=request["n_updates"], seed=request["seed"])}
            except Exception:  # noqa: BLE001 - the parent raises it, with this traceback
                reply = {"error": traceback.format_exc()}
            out.write(json.dumps(reply) + "\n")
            out.flush()


def run_actor_update_subprocess(overrides: list[str], model_dir: Path | str | None = None, n_updates: int = 1,
                                seed: int = 0, timeout: float = 300.0) -> dict:
    """``run_actor_update`` in a fresh interpreter of its own (full isolation, ~10 s); JSON back.

    ``model_dir=None`` builds (or reuses, from the cache) the default tiny model. For many calls, share one
    ``ActorUpdateProcess`` instead. Raises ``RuntimeError`` with the child's output tail when it fails.
    """
    with ActorUpdateProcess(model_dir, timeout=timeout) as proc:
        return proc.run(overrides, n_updates=n_updates, seed=seed)


def finite(x) -> bool:
    values = x if isinstance(x, list) else [x]
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


if __name__ == "__main__":  # python tests/verl_actor_harness.py [override ...]
    print(json.dumps(run_actor_update_subprocess(sys.argv[1:], n_updates=2), indent=1))
