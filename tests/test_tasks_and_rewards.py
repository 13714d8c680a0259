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
