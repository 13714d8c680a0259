"""A synthetic verifiable-math task family for the local profile, written as verl parquet files.

Problems are integer arithmetic prompts ("37+48=") whose answer the model must give as ``\\boxed{85}``.
Difficulty is graded in six levels, one validation set per level, named after the paper's six benchmarks in
order of their difficulty for the paper's models (MATH-500 easiest, AIME 2025 hardest), so the local profile
produces the same metric keys, tables and dashboards as the cluster (``val-core/<data_source>/acc/mean@k``).
The training set mixes every level. Generation is deterministic for a seed; validation problems of the
levels with many problems (5, 6) never appear in the training set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

# (data_source, level) — easiest first
BENCHMARKS: list[tuple[str, int]] = [
    ("math500", 1), ("amc23", 2), ("minerva", 3), ("olympiad", 4), ("aime24", 5), ("aime25", 6),
]
DATA_SOURCE_PREFIX = "local_"
RECIPE_VERSION = 2  # bump when the generated data changes (names cached data sets)
# Levels 1-4 are small tables (at most 100 problems): their validation problems also occur in training,
# as facts a model has seen. Levels 5-6 have 1,000+ problems: their validation problems are held out.
HELD_OUT_LEVELS = (5, 6)


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    level: int


def _level(rng: random.Random, level: int) -> tuple[str, int]:
    """One problem of a level. Levels 1-4 are small tables a tiny model can learn; 5-6 need carries."""
    r = rng.randint
    if level == 1:  # small sums
        a, b = r(0, 4), r(0, 4)
        return f"{a}+{b}", a + b
    if level == 2:  # one-digit sums
        a, b = r(0, 9), r(0, 9)
        return f"{a}+{b}", a + b
    if level == 3:  # one-digit differences, possibly negative
        a, b = r(0, 9), r(0, 9)
        return f"{a}-{b}", a - b
    if level == 4:  # one-digit products
        a, b = r(2, 9), r(2, 9)
        return f"{a}*{b}", a * b
    if level == 5:  # three one-digit terms
        a, b, c = r(0, 9), r(0, 9), r(0, 9)
        return f"{a}+{b}+{c}", a + b + c
    if level == 6:  # two-digit sums
        a, b = r(10, 99), r(10, 99)
        return f"{a}+{b}", a + b
    raise ValueError(f"level must be 1..6, got {level}")


def make_problems(n: int, level: int, seed: int, exclude: set[str] | None = None) -> list[Problem]:
    """``n`` distinct problems of one level (fewer if the level has fewer distinct problems)."""
    rng = random.Random(f"{seed}-{level}")
    seen: set[str] = set(exclude or ())
    out: list[Problem] = []
    for _ in range(n * 50):
        question, answer = _level(rng, level)
        if question not in seen:
            seen.add(question)
            out.append(Problem(f"{question}=", answer, level))
            if len(out) == n:
                break
    return out


def sample_problems(n: int, levels: tuple[int, ...], seed: int, exclude: set[str] | None = None) -> list[Problem]:
    """The training distribution: a uniform level, then a uniform problem of it (repeats allowed)."""
    rng = random.Random(f"train-{seed}")
    exclude = exclude or set()
    out: list[Problem] = []
    while len(out) < n:
        level = rng.choice(levels)
        question, answer = _level(rng, level)
        if question not in exclude:
            out.append(Problem(f"{question}=", answer, level))
    return out


def verl_row(problem: Problem, data_source: str, split: str, index: int) -> dict:
    """One row in the schema verl's RLHFDataset reads."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": problem.question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(problem.answer)},
        "extra_info": {"split": split, "index": index, "level": problem.level, "question": problem.question},
    }


def write_dataset(out_dir: Path, *, n_train: int = 2048, n_val: int = 32, seed: int = 0,
                  train_levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> tuple[Path, list[Path]]:
    """Write ``train.parquet`` and one ``val_<benchmark>.parquet`` per benchmark; returns their paths."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    val_paths, held_out = [], set()
    for name, level in BENCHMARKS:
        problems = make_problems(n_val, level, seed=seed + 1000)
        if level in HELD_OUT_LEVELS:
            held_out.update(p.question[:-1] for p in problems)
        rows = [verl_row(p, DATA_SOURCE_PREFIX + name, "test", i) for i, p in enumerate(problems)]
        path = out_dir / f"val_{name}.parquet"
        pd.DataFrame(rows).to_parquet(path)
        val_paths.append(path)
    train = sample_problems(n_train, train_levels, seed=seed, exclude=held_out)
    rows = [verl_row(p, DATA_SOURCE_PREFIX + "train", "train", i) for i, p in enumerate(train)]
    train_path = out_dir / "train.parquet"
    pd.DataFrame(rows).to_parquet(train_path)
    return train_path, val_paths

