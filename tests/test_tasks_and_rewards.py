"""The synthetic task family and the reward function shared by every profile."""

import pandas as pd
import pytest

from orchestrator.local.tasks import BENCHMARKS, HELD_OUT_LEVELS, make_problems, write_dataset
from orchestrator.rewards import compute_score, extract_boxed


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize(
    "response,truth,score",
    [
        ("\\boxed{19}", "19", 1.0),
        ("I think 12+7 is \\boxed{19}<|im_end|>", "19", 1.0),
        ("\\boxed{18}", "19", -1.0),  # wrong
        ("19", "19", -1.0),  # missing \boxed{}
        ("\\boxed{}", "19", -1.0),  # empty
        ("\\boxed{19", "19", -1.0),  # malformed (unbalanced)
        ("\\boxed{1}9", "19", -1.0),
        ("\\boxed{-3}", "-3", 1.0),
        ("first \\boxed{7} then \\boxed{19}", "19", 1.0),  # the last box counts
    ],
)
def test_reward_scores(response, truth, score, split):
    result = compute_score("local_math500", response, truth, {"split": split})
    assert result["score"] == score
    assert result["acc"] == (1.0 if score > 0 else 0.0)


def test_extract_boxed_balanced_braces():
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("nothing") is None


def test_problems_are_correct_deterministic_and_graded():
    for _, level in BENCHMARKS:
        problems = make_problems(20, level, seed=3)
        assert problems == make_problems(20, level, seed=3)
        for p in problems:
            assert eval(p.question[:-1]) == p.answer  # noqa: S307 - our own arithmetic strings
    assert make_problems(5, 1, seed=1) != make_problems(5, 1, seed=2)


def test_write_dataset_has_verl_schema_and_no_leakage(tmp_path):
    train_path, val_paths = write_dataset(tmp_path, n_train=240, n_val=16, seed=0)
    train = pd.read_parquet(train_path)
    assert len(train) == 240
    assert set(train.columns) >= {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert train.iloc[0]["prompt"][0]["role"] == "user"
    assert {row["split"] for row in train["extra_info"]} == {"train"}
    train_questions = {row["question"] for row in train["extra_info"]}
    assert len(val_paths) == 6
    for path, (name, level) in zip(val_paths, BENCHMARKS):
        val = pd.read_parquet(path)
        assert set(val["data_source"]) == {f"local_{name}"}
        assert {row["split"] for row in val["extra_info"]} == {"test"}
        if level in HELD_OUT_LEVELS:
            assert not train_questions & {row["question"] for row in val["extra_info"]}
        # every ground truth is scored correct by the reward when boxed
        for truth in val["reward_model"]:
            assert compute_score("x", f"\\boxed{{{truth['ground_truth']}}}", truth["ground_truth"],
                                 {"split": "test"})["score"] == 1.0


def test_worked_solutions_are_correct_lines_of_tens_of_tokens():
    from orchestrator.local.tasks import worked_solution
    from orchestrator.local.tiny_model import build_tokenizer

    assert worked_solution("7+8-3+6") == "7+8=15\n15-3=12\n12+6=18\n\\boxed{18}"
    assert worked_solution("4-6") == "4-6=-2\n\\boxed{-2}"
    tokenizer = build_tokenizer()
    lengths = {}
    for _, level in BENCHMARKS:
        for p in make_problems(50, level, seed=5):
            lines = p.solution.split("\n")
            # every line is a true equation whose left side starts from the previous line's result
            previous = None
            for line in lines[:-1]:
                left, right = line.split("=")
                assert eval(left) == int(right)  # noqa: S307 - our own arithmetic strings
                if previous is not None:
                    assert left.startswith(previous)
                previous = right
            assert lines[-1] == f"\\boxed{{{p.answer}}}" and previous == str(p.answer)
            assert compute_score("x", p.solution, str(p.answer), {"split": "train"})["score"] == 1.0
            n = len(tokenizer.encode(p.solution, add_special_tokens=False)) + 1  # + end of turn
            lengths.setdefault(level, []).append(n)
    # one operation per line: levels 1-2 one, 3-4 two, 5 three, 6 four; tens of tokens, within the 48 allowed
    assert {level: len(make_problems(1, level, seed=5)[0].solution.split("\n")) - 1 for level in lengths} == {
        1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 4}
    assert min(map(min, lengths.values())) >= 15 and max(map(max, lengths.values())) <= 48
    assert sum(map(sum, lengths.values())) / sum(map(len, lengths.values())) > 20
