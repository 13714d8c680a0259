"""The reward function every profile uses, through verl's ``reward.custom_reward_function`` setting.

verl routes scoring by ``data_source`` name unless a custom function is given; maspo always gives this one, so
the grader is chosen explicitly (docs/algorithms.md#rewards):
- training samples (``extra_info["split"] == "train"``): math_verify, mapped to +1 / -1 (paper eq. 27);
- validation samples: prime_math's ``is_correct``.
The answer is the content of the response's last ``\\boxed{...}``; a response without one scores -1.
Per-sample correctness is returned as ``acc`` (verl's validation core variable) and the extracted answer as
``pred`` (enables verl's maj@k), so Avg@k and both Pass@k estimators can be computed from verl's outputs.
"""

from __future__ import annotations

import threading
from typing import Any


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

    boxed = last_boxed_only_string(text)
    if boxed is None:
        return None
    try:
        return remove_boxed(boxed).strip()
    except (AssertionError, IndexError):
        return None


def math_verify_correct(answer: str, ground_truth: str) -> bool:
    from math_verify import parse, verify

    # math_verify's timeouts use SIGALRM, which only works in the main thread
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=timeout)
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
    return bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=timeout)


def prime_math_correct(answer: str, ground_truth: str) -> bool:
    from verl.utils.reward_score import prime_math

    is_correct, _format_ok, _extracted = prime_math.compute_score(f"\\boxed{{{answer}}}", str(ground_truth))
    return bool(is_correct)


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **_: Any) -> dict[str, Any]:
    """verl's custom reward signature; returns score (+1/-1), acc (1/0) and pred."""
    answer = extract_boxed(solution_str)
    split = (extra_info or {}).get("split", "train")
    if answer is None or answer == "":
        correct = False
    elif split == "train":
        correct = math_verify_correct(answer, str(ground_truth))
    else:
        correct = prime_math_correct(answer, str(ground_truth))
    return {"score": 1.0 if correct else -1.0, "acc": 1.0 if correct else 0.0, "pred": answer or ""}
