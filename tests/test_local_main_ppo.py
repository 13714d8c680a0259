"""End to end: ``python -m verl.trainer.main_ppo`` on CPU with the tiny model, the synthetic task and the hf rollout.

Two GRPO steps (4 prompts x 4 samples, 16-token responses) with validation before training and after the last
step, exactly as the local profile launches verl (``orchestrator.verl_bridge.local_run``). Besides the metric
keys, it checks that the rollout follows the policy: an entropy bonus and a large learning rate make every
update change the weights (the reward of a random model is -1 everywhere, so GRPO's advantages are 0), the
rollout server reports a new weight fingerprint after each sync, and the log-probs it sampled with agree with
the actor's recomputation (``training/rollout_actor_probs_pearson_corr``; without the sync it fell to ~0.2 at
step 2 in the same setting).

Prints the time to the first rollout, per step, in total, and the peak RSS summed over the run's processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.algorithms.registry import get
from orchestrator.local.tasks import BENCHMARKS, DATA_SOURCE_PREFIX, write_dataset
from orchestrator.local.tiny_model import build_tiny_model
from orchestrator.verl_bridge.local_run import METRICS_FILE, cpu_trainer_env, cpu_trainer_overrides, short_temp_dir

N, VAL_N, STEPS = 4, 4, 2
WEIGHTS_LINE = re.compile(r"\[hf_rollout\] replica 0: weights (\w+) for step (\d+)")


class PeakRSS(threading.Thread):
    """Polls the summed RSS of a process and all its descendants (Ray's processes included)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.processes, self.stopped = pid, 0, 0, threading.Event()

    def run(self):
        import psutil

        while not self.stopped.wait(0.5):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.processes = total, len(procs)


def run_main_ppo(overrides: list[str], out_dir: Path, timeout: float) -> tuple[int, list[tuple[float, str]], PeakRSS]:
    """Run main_ppo, keeping every output line with its time since start; kills the run on timeout."""
    env = {**os.environ, **cpu_trainer_env(out_dir)}
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=out_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    rss = PeakRSS(proc.pid)
    rss.start()
    lines: list[tuple[float, str]] = []
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        with open(out_dir / "main_ppo.log", "w") as log:
            for line in proc.stdout:
                lines.append((time.monotonic() - start, line))
                log.write(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        rss.stopped.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return rc, lines, rss


def test_hf_sampler_matches_a_full_forward():
    """The batched KV-cached sampler returns the log-probs the actor would recompute, and honours every limit.

    The different max_tokens make rows finish at different steps, so dropping rows from the cache is covered."""
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.verl_bridge.hf_rollout import _Request, sample_batch

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    eos, pad = 258, 256
    specs = [  # prompt length, max_tokens, temperature, top_k, top_p
        (10, 16, 1.0, -1, 1.0), (25, 12, 0.7, 20, 0.9), (3, 16, 0.0, -1, 1.0), (18, 0, 1.0, -1, 1.0),
        (7, 5, 1.3, 5, 1.0), (12, 40, 1.0, -1, 1.0),
    ]
    requests = [_Request(list(range(5 + i, 5 + i + length)), max_tokens, temperature, top_k, top_p, None)
                for i, (length, max_tokens, temperature, top_k, top_p) in enumerate(specs)]
    with torch.inference_mode():
        results = sample_batch(model, requests, [eos, pad], pad, torch.Generator().manual_seed(0))
        for request, (tokens, log_probs) in zip(requests, results):
            assert len(tokens) == len(log_probs) <= request.max_tokens
            if request.max_tokens == 0:
                assert tokens == []
                continue
            assert len(tokens) == request.max_tokens or tokens[-1] in (eos, pad)
            assert not any(t in (eos, pad) for t in tokens[:-1])
            logits = model(torch.tensor([request.prompt_ids + tokens])).logits[0, len(request.prompt_ids) - 1:-1]
            temperature = request.temperature if request.temperature > 0 else 1.0
            expected = torch.log_softmax(logits.float() / temperature, -1).gather(1, torch.tensor(tokens)[:, None])
            torch.testing.assert_close(torch.tensor(log_probs), expected.squeeze(1), atol=1e-4, rtol=0)
            if request.temperature == 0:
                assert tokens == logits.argmax(-1).tolist()
            if request.top_k > 0:
                allowed = logits.topk(request.top_k).indices
                assert all(t in allowed[i].tolist() for i, t in enumerate(tokens))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_main_ppo_two_steps_on_cpu(tmp_path):
    model_dir = build_tiny_model()
    train, vals = write_dataset(tmp_path / "data", n_train=8, n_val=4)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    ray_dir = short_temp_dir()
    overrides = [
        *cpu_trainer_overrides(model_dir, train, vals, out_dir=out_dir, n_samples=N, val_n=VAL_N, train_batch_size=4,
                               max_response_length=16, total_steps=STEPS, test_freq=STEPS, lr=1e-2,
                               ray_temp_dir=ray_dir),
        *get("grpo").verl_overrides(),
        "actor_rollout_ref.actor.entropy_coeff=0.01",  # a gradient even where every reward is -1
    ]
    try:
        rc, lines, rss = run_main_ppo(overrides, out_dir, timeout=600)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    output = "".join(line for _, line in lines)
    assert rc == 0, f"main_ppo exited with {rc}; output tail:\n{output[-8000:]}"

    by_step: dict[int, dict] = {}
    for record in map(json.loads, (out_dir / METRICS_FILE).read_text().splitlines()):
        by_step.setdefault(record["step"], {}).update(record["data"])
    assert set(by_step) == set(range(STEPS + 1)), sorted(by_step)
    val_keys = [f"val-core/{DATA_SOURCE_PREFIX}{name}/acc/mean@{VAL_N}" for name, _ in BENCHMARKS]
    for step in (0, STEPS):
        missing = [k for k in val_keys if k not in by_step[step]]
        assert not missing, f"step {step} lacks {missing}"
    for step in range(1, STEPS + 1):
        metrics = by_step[step]
        for key in ("actor/entropy", "critic/score/mean", "training/rollout_actor_probs_pearson_corr"):
            assert key in metrics, f"step {step} lacks {key}"
        assert metrics["training/rollout_actor_probs_pearson_corr"] > 0.99, metrics

    # the rollout server got new weights after every step, and they differ from step to step
    fingerprints = {int(step): fp for fp, step in WEIGHTS_LINE.findall(output)}
    assert sorted(fingerprints) == list(range(STEPS + 1)), fingerprints
    assert len(set(fingerprints.values())) == STEPS + 1, fingerprints

    # the task runner started the rollout server and the reward workers before verl's set-up, and verl adopted
    # them (no second server; a second reward manager would have failed on its workers' names)
    assert "[maspo] started early, while the task runner sets up: the rollout server and 1 reward worker(s)" in output
    assert "server hf_server_0 ready (started early by the task runner)" in output
    assert output.count("[hf_rollout] replica 0: loaded ") == 1

    first_rollout = next(t for t, line in lines if "[hf_rollout]" in line and "batch of" in line)
    batches = [(int(b), int(n), float(s)) for b, n, s in
               re.findall(r"batch of (\d+): (\d+) tokens in ([\d.]+) s", output)]
    print(f"\nfirst rollout after {first_rollout:.1f} s, total {lines[-1][0]:.1f} s, "
          f"steps {[round(by_step[s]['timing_s/step'], 2) for s in range(1, STEPS + 1)]} s, "
          f"peak RSS {rss.peak / 2**30:.2f} GiB over {rss.processes} processes")
    print(f"rollout batches (size, tokens, s): {batches}; "
          f"{sum(n for _, n, _ in batches) / sum(s for _, _, s in batches):.0f} tokens/s while generating")
