"""The warm start: a supervised pass on the task family, cached by its settings."""

import os

import pytest

from orchestrator.local.warm_start import WarmStartSettings, warm_start_model, warm_start_report


@pytest.mark.slow
def test_warm_start_trains_records_history_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MASPO_CACHE", str(tmp_path / "cache"))
    settings = WarmStartSettings(max_steps=60, eval_every=30, eval_problems=24, batch_size=16)
    seen = []
    path = warm_start_model(settings, progress=lambda step, total, acc: seen.append((step, total)))
    report = warm_start_report(path)
    assert [h["step"] for h in report["history"]] == [30, 60] and seen == [(30, 60), (60, 60)]
    losses = [h["loss"] for h in report["history"]]
    assert losses[-1] < 1.5  # the response format is learned within a few dozen steps
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    mtime = os.path.getmtime(path / "config.json")
    assert warm_start_model(settings) == path  # cached: no second training
    assert os.path.getmtime(path / "config.json") == mtime
    assert warm_start_model(WarmStartSettings(max_steps=30, eval_every=30, eval_problems=24, batch_size=16)) != path
