"""The a100 profile's data: hub rows (fixtures with each source's real column layout) -> verl parquet files whose
ground truths the project's reward scores +1 when answered and -1 otherwise. No network."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from orchestrator import data_prepare
from orchestrator.cli.data import data_app
from orchestrator.data_prepare import (
    INSTRUCTION, SOURCES, TRAIN_NAME, VALIDATION_NAMES, DataPrepareError, clean_answer, dapo_problem, last_boxed,
    prepare_source, read_jsonl, select_sources, train_file, update_manifest, val_files,
)
from orchestrator.rewards import compute_score

FIXTURES = Path(__file__).parent / "fixtures" / "data"
VERL_COLUMNS = {"data_source", "prompt", "ability", "reward_model", "extra_info"}
EXPECTED_ROWS = {TRAIN_NAME: 3, "aime24": 2, "aime25": 2, "amc23": 2, "math500": 3, "minerva": 2, "olympiad": 4}


def fixture_rows(name: str) -> list[dict]:
    return read_jsonl(FIXTURES / f"{name}.jsonl")


def converted(name: str) -> list[dict]:
    return SOURCES[name].convert(fixture_rows(name))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    update_manifest(out, {name: prepare_source(source, out, rows=fixture_rows(name))
                          for name, source in SOURCES.items()})
    return out


def test_sources_cover_training_and_the_six_benchmarks_at_pinned_revisions():
    assert list(SOURCES) == [TRAIN_NAME, *VALIDATION_NAMES]
    for source in SOURCES.values():
        assert re.fullmatch(r"[0-9a-f]{40}|main", source.revision), source
        assert source.role == ("train" if source.name == TRAIN_NAME else "validation")
        assert (FIXTURES / f"{source.name}.jsonl").is_file()


@pytest.mark.parametrize("name", list(SOURCES))
def test_converters_write_verls_schema(name):
    rows = converted(name)
    assert len(rows) == EXPECTED_ROWS[name]
    split = "train" if name == TRAIN_NAME else "test"
    for i, row in enumerate(rows):
        assert set(row) == VERL_COLUMNS
        assert row["data_source"] == name and row["ability"] == "math"
        [message] = row["prompt"]
        assert message["role"] == "user" and message["content"].endswith("\n" + INSTRUCTION)
        assert row["reward_model"]["style"] == "rule" and row["reward_model"]["ground_truth"]
        info = row["extra_info"]
        assert set(info) == {"split", "index", "question", "source_id"}
        assert (info["split"], info["index"]) == (split, i) and isinstance(info["source_id"], str)
        assert message["content"].startswith(info["question"])


@pytest.mark.parametrize("name", list(SOURCES))
def test_ground_truth_scores_plus_one_when_answered_and_minus_one_otherwise(name):
    for row in converted(name):
        gt, info, source = row["reward_model"]["ground_truth"], row["extra_info"], row["data_source"]
        score = lambda text: compute_score(source, text, gt, info)["score"]  # noqa: E731
        assert score(f"Reasoning... so the answer is $\\boxed{{{gt}}}$.") == 1.0, gt
        assert score("Reasoning... so the answer is $\\boxed{-12345}$.") == -1.0, gt  # wrong
        assert score(f"The answer is {gt}.") == -1.0, gt  # missing \boxed
        assert score(f"The answer is \\boxed{{{gt}") == -1.0, gt  # malformed (unclosed)
        assert score("The answer is \\boxed{}.") == -1.0, gt  # empty


def test_parquet_files_read_back_with_the_columns_verl_expects(prepared):
    assert train_file(prepared).is_file() and all(f.is_file() for f in val_files(prepared))
    for name in SOURCES:
        frame = pd.read_parquet(data_prepare.output_file(name, prepared))
        assert set(frame.columns) == VERL_COLUMNS and len(frame) == EXPECTED_ROWS[name]
        first = frame.iloc[0]
        assert first["data_source"] == name
        assert first["prompt"][0]["content"].endswith(INSTRUCTION)
        assert first["reward_model"]["ground_truth"] == converted(name)[0]["reward_model"]["ground_truth"]


def test_validation_files_share_one_schema_so_verl_can_concatenate_them(prepared):
    tables = [pq.read_table(f) for f in [train_file(prepared), *val_files(prepared)]]
    assert len({t.schema.remove_metadata() for t in tables}) == 1
    assert pa.concat_tables(tables).num_rows == sum(EXPECTED_ROWS.values())


def test_the_manifest_records_ids_revisions_and_counts(prepared):
    manifest = json.loads((prepared / "sources.json").read_text())
    assert set(manifest) == set(SOURCES)
    assert manifest["aime24"] == {"hf_id": "math-ai/aime24", "revision": SOURCES["aime24"].revision, "split": "test",
                                  "role": "validation", "rows": 2, "file": "val_aime24.parquet"}
    assert manifest[TRAIN_NAME]["file"] == "train.parquet"


def test_dapo_loses_its_answer_line_wrapper_and_its_duplicates():
    rows = converted(TRAIN_NAME)
    questions = [r["extra_info"]["question"] for r in rows]
    assert len(set(questions)) == len(questions) == 3
    assert questions[0] == ("In triangle $ABC$, $AB = 13$, $BC = 14$ and $CA = 15$. Find the area of the triangle.")
    assert all("Answer:" not in r["prompt"][0]["content"] for r in rows)
    assert rows[0]["extra_info"]["source_id"] == "9a9b6eb4-a1cb-49d1-8c1e-62eaf2f74079"
    assert dapo_problem("no wrapper here") == "no wrapper here"


def test_answers_are_cleaned_to_plain_strings():
    assert clean_answer(27.0) == "27" and clean_answer(2.5) == "2.5"
    assert clean_answer(["$\\frac{1}{2}$"]) == "\\frac{1}{2}"
    assert clean_answer(["$2$", "$3$"]) == "2, 3"
    assert clean_answer("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert clean_answer(None) == "" and clean_answer("  42 ") == "42"
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("none") is None


def test_olympiad_keeps_its_context_and_rows_without_answers_are_skipped():
    rows = converted("olympiad")
    assert rows[2]["extra_info"]["question"].startswith("Let $p$ denote a prime number.\n\n")
    assert SOURCES["aime24"].convert([{"id": 1, "problem": "P", "solution": "no box", "url": ""}]) == []


def test_a_changed_hub_layout_is_a_clear_error():
    with pytest.raises(DataPrepareError, match=r"amc23 row 0 has no column question \(columns: id, problem"):
        SOURCES["amc23"].convert([{"id": 0, "problem": "x", "answer": 1.0}])


def test_source_selection():
    assert [s.name for s in select_sources("aime24, amc23,aime24")] == ["aime24", "amc23"]
    with pytest.raises(DataPrepareError, match="unknown data source.*aime2024.*valid: dapo_math_17k"):
        select_sources("aime2024")


# --- the command -----------------------------------------------------------------------------------------

app = typer.Typer()
app.add_typer(data_app, name="data")
runner = CliRunner()


def test_prepare_writes_every_file_with_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(data_prepare, "load_rows", lambda source: (
        iter(fixture_rows(source.name)), len(fixture_rows(source.name)), "f" * 40))
    result = runner.invoke(app, ["data", "prepare", "--out", str(tmp_path), "--only", "aime24,dapo_math_17k"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sources.json", "train.parquet", "val_aime24.parquet"]
    assert json.loads((tmp_path / "sources.json").read_text())["aime24"]["revision"] == "f" * 40
    assert "val_aime24.parquet" in result.stdout


def test_prepare_names_an_unknown_source_and_exits_2(tmp_path):
    result = runner.invoke(app, ["data", "prepare", "--out", str(tmp_path), "--only", "gsm8k"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: unknown data source(s) gsm8k; valid: dapo_math_17k, aime24, aime25, "
                                     "amc23, math500, minerva, olympiad")
    assert list(tmp_path.iterdir()) == []


def test_prepare_without_the_datasets_package_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    result = runner.invoke(app, ["data", "prepare", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "the `datasets` package is not installed" in result.stderr and "pip install datasets" in result.stderr
    with pytest.raises(DataPrepareError, match="`datasets` package is not installed"):
        data_prepare.load_rows(SOURCES["aime24"])


def test_a_failed_download_is_one_line_and_exit_1(tmp_path, monkeypatch):
    def offline(source):
        raise DataPrepareError(f"cannot load {source.hf_id}@{source.revision} split test: connection refused")

    monkeypatch.setattr(data_prepare, "load_rows", offline)
    result = runner.invoke(app, ["data", "prepare", "--out", str(tmp_path), "--only", "aime25"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot load math-ai/aime25@{SOURCES['aime25'].revision} split test: connection refused"]


def test_sources_lists_the_table():
    result = runner.invoke(app, ["data", "sources"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for source in SOURCES.values():
        assert source.hf_id in result.stdout
