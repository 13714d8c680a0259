"""Cost of every policy loss against verl's own ``vanilla`` PPO loss (an on-demand benchmark, not a test).

    python benchmarks/losses.py [--device cpu|cuda] [--rows 64] [--length 8192] [--repeats 20]
                                [--dtype float32 bfloat16] [--markdown]

For each algorithm of ``orchestrator.algorithms.names()`` and for verl's ``compute_policy_loss_vanilla``
(configured as ``actor_config("grpo")``), on the same random (rows, length) tensors, it measures one
forward + backward (the loss, its metrics, ``loss.backward()`` w.r.t. ``log_prob``):

- time: median wall time over ``--repeats`` after ``--warmup`` calls, on CUDA with the device synchronised.
  The cases are interleaved repeat by repeat, and the ratio to vanilla is the median of the ratios within a
  repeat, so that drift of the machine hits all cases alike. ``grpo`` runs the very code of ``vanilla``
  (through the algorithm's config): its ratio shows the noise of the run;
- peak memory above what was allocated before the call: on CUDA the caching allocator's
  ``max_memory_allocated``; elsewhere ``LiveBytes``, a dispatch-mode tracker that sums the storages
  every op (forward and backward) creates until they are freed, and keeps the maximum. It does not see
  scratch buffers a kernel allocates and frees inside one op (checked against torch.profiler's CPU
  allocator events at 64 x 8192 float32: equal for maspo, dac and bapo; one 2 MiB temporary under for
  vanilla and sapo, a mixed-dtype ``mul`` in verl's masked sum), so its ratios are close, not exact;

Targets, relative to vanilla in the same run: time <= 1.3x, peak memory <= 1.5x. Cases over a target are
flagged; the exit code is 0 regardless.

Each loss runs as ``orchestrator.algorithms.compute`` runs it, but with its verl ``ActorConfig`` built
once (as a worker holds it), so that the pydantic/dataclass construction is not timed. ``bapo`` searches
its bounds inside the loss (``compute``'s fallback); ``bapo (bounds fixed)`` is what each micro-batch of a
training step pays, the bounds being searched once per mini-batch by ``verl_bridge.actor_hooks``.

Inputs: old_log_prob uniform in [log 1e-6, 0]; log_prob = old_log_prob + N(0, 0.1), clamped to <= 0
(a leaf that requires grad); GRPO advantages (Bernoulli rewards normalised within groups of 8 rows,
so of mixed sign) broadcast over each row's response; response lengths uniform in [length/8, length];
entropy uniform in [0, 5] (``entropy_adv`` reads it; ``entropy_reg`` subtracts its token mean).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from orchestrator.algorithms import actor_config, bapo, names
from orchestrator.algorithms.context import bapo_bounds, token_entropy

TIME_TARGET = 1.3  # x vanilla
MEMORY_TARGET = 1.5  # x vanilla
GROUP_SIZE = 8  # GRPO rollouts per prompt
MIB = 2**20


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class Inputs:
    old_log_prob: torch.Tensor
    log_prob: torch.Tensor  # leaf, requires grad
    advantages: torch.Tensor
    response_mask: torch.Tensor  # bool
    entropy: torch.Tensor


def make_inputs(rows: int, length: int, dtype: torch.dtype, device: str, seed: int = 0) -> Inputs:
    """Realistic random loss inputs; the same seed gives the same values in every dtype."""
    g = torch.Generator().manual_seed(seed)
    old = math.log(1e-6) * torch.rand(rows, length, generator=g)
    new = (old + 0.1 * torch.randn(rows, length, generator=g)).clamp(max=0.0)
    lengths = torch.randint(max(1, length // 8), length + 1, (rows,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    rewards = (torch.rand(rows, generator=g) < torch.rand(rows, generator=g)).float().view(-1, GROUP_SIZE)
    scores = (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-6)
    advantages = scores.view(rows, 1) * mask
    entropy = 5.0 * torch.rand(rows, length, generator=g)
    return Inputs(
        old_log_prob=old.to(device, dtype),
        log_prob=new.to(device, dtype).requires_grad_(),
        advantages=advantages.to(device, dtype),
        response_mask=mask.to(device),
        entropy=entropy.to(device, dtype),
    )


# ---------------------------------------------------------------------------------- memory tracker


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created by ops run under this mode (forward and autograd's backward).

    An op's output storage counts once (deduplicated by data pointer) unless it aliases one of the op's
    inputs (views, in-place ops: no new memory, so storages from before the mode are never counted); it
    stops counting when the storage is freed (``weakref.finalize`` on the storage object, which PyTorch
    keeps alive exactly as long as the storage). ``peak`` is thus relative to the memory at entry.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}  # data_ptr -> nbytes
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        args_flat = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in args_flat if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or ptr in inputs or ptr in self.live:
                continue
            self.live[ptr] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, ptr)
        return out

    def _free(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)


def check_tracker() -> None:
    """The tracker sees a known allocation, its release, and autograd's backward ops."""
    n = 1 << 18  # float32 -> 1 MiB
    with LiveBytes() as tracker:
        t = torch.empty(n)
        del t
    assert tracker.peak == 4 * n and tracker.current == 0, (tracker.peak, tracker.current)
    x = torch.rand(n, requires_grad=True)
    with LiveBytes() as tracker:
        x.exp().sum().backward()  # exp keeps its 1 MiB output for backward; backward adds a 1 MiB gradient
    assert 8 * n <= tracker.peak <= 8 * n + 64, tracker.peak
    assert 4 * n <= tracker.current <= 4 * n + 64, tracker.current  # x.grad stays


# ------------------------------------------------------------------------------------------- cases


def loss_step(name: str, x: Inputs) -> Callable[[], torch.Tensor]:
    """``compute(name, ...)`` with the config built once: the loss (metrics included, as verl computes them)."""
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn

    config = actor_config(name)
    fn = get_policy_loss_fn(config.policy_loss.loss_mode)

    def step() -> torch.Tensor:
        with token_entropy(x.entropy):
            loss, _ = fn(
                old_log_prob=x.old_log_prob, log_prob=x.log_prob, advantages=x.advantages,
                response_mask=x.response_mask, loss_agg_mode=config.loss_agg_mode, config=config,
                rollout_is_weights=None,
            )
        if config.entropy_coeff != 0:
            loss = loss - config.entropy_coeff * agg_loss(x.entropy, x.response_mask, config.loss_agg_mode)
        return loss

    return step


def cases(x: Inputs) -> dict[str, Callable[[], torch.Tensor]]:
    """Everything measured, by label; ``vanilla`` first."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    grpo = actor_config("grpo")

    def vanilla() -> torch.Tensor:
        loss, _ = compute_policy_loss_vanilla(
            x.old_log_prob, x.log_prob, x.advantages, x.response_mask, grpo.loss_agg_mode, grpo
        )
        return loss

    out = {"vanilla": vanilla} | {name: loss_step(name, x) for name in names()}

    bapo_config = actor_config("bapo")
    with torch.no_grad():
        ratio = torch.exp(torch.clamp(x.log_prob - x.old_log_prob, -20.0, 20.0))
        bounds = bapo.search_bounds(
            ratio, x.advantages, torch.exp(x.old_log_prob), x.response_mask, bapo_config.policy_loss
        )
    bapo_loss = loss_step("bapo", x)

    def bapo_fixed() -> torch.Tensor:
        with bapo_bounds(bounds):
            return bapo_loss()

    out["bapo (bounds fixed)"] = bapo_fixed
    return out


# --------------------------------------------------------------------------------------- measuring


def forward_backward(step: Callable[[], torch.Tensor], x: Inputs) -> None:
    x.log_prob.grad = None
    step().backward()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def times_ms(steps: dict[str, Callable], x: Inputs, device: str, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Forward+backward wall times per case, the cases interleaved within each repeat."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for i in range(warmup + repeats):
        for label, step in steps.items():
            sync(device)
            start = time.perf_counter()
            forward_backward(step, x)
            sync(device)
            if i >= warmup:
                times[label].append(1e3 * (time.perf_counter() - start))
    return times


def peak_bytes(step: Callable[[], torch.Tensor], x: Inputs, device: str) -> int:
    """Peak memory of one forward+backward above what was allocated before it."""
    x.log_prob.grad = None
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward_backward(step, x)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveBytes() as tracker:
        forward_backward(step, x)
    return tracker.peak


# ---------------------------------------------------------------------------------------- reporting


def rows_of(times: dict[str, list[float]], peak: dict[str, int]) -> list[list[str]]:
    """Table rows. The time ratio is the median of per-repeat ratios (case / vanilla of the same repeat)."""
    base_times, base_peak = times["vanilla"], peak["vanilla"]
    rows = []
    for label, ts in times.items():
        t = statistics.median(a / b for a, b in zip(ts, base_times))
        m = peak[label] / base_peak
        over = [what for what, bad in (("time", t > TIME_TARGET), ("memory", m > MEMORY_TARGET)) if bad]
        rows.append([
            label, f"{statistics.median(ts):.2f}", f"{t:.2f}x", f"{peak[label] / MIB:.1f}", f"{m:.2f}x",
            "yes" if not over else "NO: " + " and ".join(over) + " over",
        ])
    return rows


HEADER = ["algorithm", "ms (fwd+bwd)", "time / vanilla", "peak MiB", "memory / vanilla", "within targets"]


def print_table(title: str, rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        print(f"\n{title}")
        widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
        for r in [HEADER, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for i, name in enumerate(HEADER):
        table.add_column(name, justify="left" if i in (0, 5) else "right", no_wrap=True)
    for r in rows:
        table.add_row(*r, style=None if r[5] == "yes" else "bold red")
    console = Console()
    console.width = max(console.width, 120)  # a pipe gets 80 columns: keep rows on one line
    console.print(table)


def print_markdown(title: str, rows: list[list[str]]) -> None:
    print(f"\n**{title}**\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join(":---" if i in (0, 5) else "---:" for i in range(len(HEADER))) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--rows", type=int, default=64, help="responses per micro-batch (a multiple of 8)")
    parser.add_argument("--length", type=int, default=8192, help="response length (tokens)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables (for the README)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rows % GROUP_SIZE:
        parser.error(f"--rows must be a multiple of the GRPO group size {GROUP_SIZE}")

    check_tracker()
    started = time.perf_counter()
    if args.device.startswith("cuda"):
        where, memory = torch.cuda.get_device_name(args.device), "CUDA allocator peak"
    else:
        where, memory = f"{args.device}, {torch.get_num_threads()} threads", "dispatch-mode tracker (checked)"
    print(f"torch {torch.__version__} on {where}; {args.rows} x {args.length} tokens; warm-up {args.warmup}, "
          f"median of {args.repeats}; memory: {memory}")
    print(f"targets vs vanilla: time <= {TIME_TARGET}x, peak memory <= {MEMORY_TARGET}x")

    over = []
    for dtype_name in args.dtype:
        x = make_inputs(args.rows, args.length, getattr(torch, dtype_name), args.device, args.seed)
        steps = cases(x)
        times = times_ms(steps, x, args.device, args.warmup, args.repeats)
        peak = {label: peak_bytes(step, x, args.device) for label, step in steps.items()}
        rows = rows_of(times, peak)
        title = f"{dtype_name}, {args.rows} x {args.length}, {args.device}"
        print_table(title, rows)
        if args.markdown:
            print_markdown(title, rows)
        over += [f"{r[0]} ({dtype_name}): {r[5][4:]}" for r in rows if r[5] != "yes"]

    print("\nover target: " + ("; ".join(over) if over else "none"))
    print(f"benchmark took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
