"""A synthetic verifiable-math task family for the local profile, written as verl parquet files.

Problems are chains of one-digit additions and subtractions, evaluated left to right ("7+8-3+6="). The
warm start teaches a short worked solution, one partial result per line, then the answer in ``\\boxed{}``::

    7+8=15
    15-3=12
    12+6=18
    \\boxed{18}

so a response is tens of tokens (16-44 with the byte-level tokenizer), a small chain of thought whose
intermediate tokens a policy can get wrong, as in the paper's long reasoning (docs/verl-on-cpu.md#local-regime).
Only the boxed answer is rewarded. Difficulty is graded in six levels (one to four operations), one validation set per
level, named after the paper's six benchmarks in order of their difficulty for the paper's models (MATH-500
easiest, AIME 2025 hardest), so the local profile produces the same metric keys, tables and dashboards as the
cluster (``val-core/<data_source>/acc/mean@k``). The training set mixes every level. Generation is
deterministic for a seed; validation problems of levels 5 and 6 (10,000+ problems each) never appear in the
training set.
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
RECIPE_VERSION = 3  # bump when the generated data changes (names cached data sets)
# Levels 1-4 have at most 4,000 problems: their validation problems may also occur in training.
# Levels 5-6 have 10,000+ problems: their validation problems are held out.
HELD_OUT_LEVELS = (5, 6)
# operators of each level, applied left to right to one-digit operands
LEVEL_OPERATORS: dict[int, str] = {1: "+", 2: "-", 3: "++", 4: "+-", 5: "+-+", 6: "+-+-"}


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    level: int

    @property
    def solution(self) -> str:
        """The worked solution the warm start teaches (without the end-of-turn token)."""
        return worked_solution(self.question.rstrip("="))


def worked_solution(expression: str) -> str:
    """One line per operation with its partial result, then the boxed answer: "7+8-3" -> "7+8=15\\n15-3=12\\n\\boxed{12}"."""
    operands = [int(d) for d in expression[0::2]]
    operators = expression[1::2]
    lines, total = [], operands[0]
    for op, operand in zip(operators, operands[1:]):
        new = total + operand if op == "+" else total - operand
        lines.append(f"{total}{op}{operand}={new}")
        total = new
    return "\n".join(lines + [f"\\boxed{{{total}}}"])


def _level(rng: random.Random, level: int) -> tuple[str, int]:
    """One problem of a level: len(LEVEL_OPERATORS[level]) operations on one-digit operands (0-9)."""
    if level not in LEVEL_OPERATORS:
        raise ValueError(f"level must be 1..6, got {level}")
    operators = LEVEL_OPERATORS[level]
    # shuffle the operator pattern of levels that mix + and - (so "a-b+c" occurs as well as "a+b-c")
    if len(set(operators)) > 1:
        operators = "".join(rng.choice("+-") for _ in operators)
    digits = [rng.randint(0, 9) for _ in range(len(operators) + 1)]
    expression = str(digits[0]) + "".join(op + str(d) for op, d in zip(operators, digits[1:]))
    total = digits[0]
    for op, d in zip(operators, digits[1:]):
        total = total + d if op == "+" else total - d
    return expression, total


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

