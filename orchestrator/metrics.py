"""Validation metrics from per-sample correctness: Avg@k and both Pass@k estimators (docs/algorithms.md#pass-at-k).

- Avg@k: per problem the mean correctness of its n samples, then the mean over problems (verl's mean@n).
- Pass@k, unbiased (Chen et al. 2021, arXiv 2107.03374): 1 - C(n-c, k) / C(n, k) per problem, in the stable
  product form 1 - prod_{j=n-c+1..n} (1 - k/j); then the mean over problems.
- Pass@k, bootstrap (verl's best@k): verl's own ``bootstrap_metric`` (1000 draws of k samples with replacement,
  seed 42, max per draw), then the mean over problems. Biased low; its expectation is 1 - (1 - c/n)^k.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """Chen et al.'s unbiased estimator for one problem with c correct out of n samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_bootstrap(correct: Sequence[float], k: int, n_bootstrap: int = 1000, seed: int = 42) -> float:
    """verl's best@k for one problem: ``bootstrap_metric`` with ``max`` as the reduction."""
    from verl.trainer.ppo.metric_utils import bootstrap_metric

    [(mean, _std)] = bootstrap_metric(list(correct), subset_size=k, reduce_fns=[np.max], n_bootstrap=n_bootstrap,
                                      seed=seed)
    return float(mean)


def pass_at_k_bootstrap_expectation(n: int, c: int, k: int) -> float:
    """The expectation of the bootstrap estimator, 1 - (1 - c/n)^k."""
    return 1.0 - (1.0 - c / n) ** k


def k_values(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself (the Pass@k curve of the paper's Table 7)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def benchmark_metrics(per_problem_correct: Sequence[Sequence[float]], ks: Sequence[int] | None = None) -> dict[str, float]:
    """Avg@n and Pass@k (both estimators) of one benchmark; ``per_problem_correct[i]`` holds 0/1 per sample."""
    n = len(per_problem_correct[0])
    if any(len(samples) != n for samples in per_problem_correct):
        raise ValueError("every problem needs the same number of samples")
    ks = list(ks) if ks is not None else k_values(n)
    out = {f"mean@{n}": float(np.mean([np.mean(s) for s in per_problem_correct]))}
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k_unbiased(n, int(sum(s)), k) for s in per_problem_correct]))
        out[f"best@{k}"] = float(np.mean([pass_at_k_bootstrap(s, k) for s in per_problem_correct]))
    return out


def validation_pass_at_k(data_sources: Sequence[str], sample_uids: Sequence[str], acc: Sequence[float],
                         expected_counts: dict[tuple[str, str], int] | None = None) -> dict[str, float]:
    """The unbiased Pass@k of every validation set, keyed like verl's validation metrics.

    ``val-core/<data_source>/acc/pass@<n>`` for n = samples per problem, ``val-aux/...`` for the smaller k.
    Missing samples that verl counts as failures (``expected_counts``) count as incorrect here too.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    for source, uid, value in zip(data_sources, sample_uids, acc):
        groups.setdefault(source, {}).setdefault(uid, []).append(float(value or 0.0))
    for (source, uid), count in (expected_counts or {}).items():
        if source in groups:
            samples = groups[source].setdefault(uid, [])
            samples.extend([0.0] * max(count - len(samples), 0))
    out = {}
    for source, problems in groups.items():
        n = max(len(samples) for samples in problems.values())
        for k in k_values(n):
            values = [pass_at_k_unbiased(len(s), int(sum(s)), min(k, len(s))) for s in problems.values() if s]
            section = "val-core" if k == n else "val-aux"
            out[f"{section}/{source}/acc/pass@{k}"] = float(np.mean(values))
    return out


def benchmark_average(metrics: dict[str, float]) -> dict[str, float]:
    """``val-core/average/acc/<metric>``: the plain mean over validation sets (the paper's Average column)."""
    per_metric: dict[str, list[float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) >= 4 and parts[0] == "val-core" and parts[1] != "average" and parts[2] == "acc":
            per_metric.setdefault("/".join(parts[3:]), []).append(float(value))
    return {f"val-core/average/acc/{metric}": float(np.mean(values)) for metric, values in per_metric.items()}
