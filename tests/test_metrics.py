"""Pass@k estimators against the vectors of docs/algorithms.md#test-vectors-pass-at-k."""

import pytest

from orchestrator.metrics import (benchmark_metrics, k_values, pass_at_k_bootstrap, pass_at_k_bootstrap_expectation,
                                  pass_at_k_unbiased)


@pytest.mark.parametrize("c,k,unbiased,bootstrap", [(1, 2, .0625, .0615), (1, 8, .25, .2243), (1, 32, 1.0, .6379),
                                                    (4, 2, .2379, .2344), (4, 8, .7045, .6564), (16, 2, .7581, .75)])
def test_pass_at_k_vectors_n32(c, k, unbiased, bootstrap):
    assert pass_at_k_unbiased(32, c, k) == pytest.approx(unbiased, abs=5e-5)
    assert pass_at_k_bootstrap_expectation(32, c, k) == pytest.approx(bootstrap, abs=5e-5)
    # verl's own bootstrap (1000 draws) estimates that expectation
    sample = [1.0] * c + [0.0] * (32 - c)
    assert pass_at_k_bootstrap(sample, k) == pytest.approx(bootstrap, abs=0.03)


def test_pass_at_k_edges_and_errors():
    assert pass_at_k_unbiased(8, 0, 8) == 0.0
    assert pass_at_k_unbiased(8, 8, 1) == 1.0
    assert pass_at_k_unbiased(8, 3, 1) == pytest.approx(3 / 8)
    with pytest.raises(ValueError):
        pass_at_k_unbiased(8, 9, 1)
    assert k_values(32) == [1, 2, 4, 8, 16, 32] and k_values(8) == [1, 2, 4, 8] and k_values(6) == [1, 2, 4, 6]


def test_benchmark_metrics():
    metrics = benchmark_metrics([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert metrics["mean@4"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert metrics["pass@1"] == pytest.approx(metrics["mean@4"])
    assert metrics["pass@4"] == pytest.approx(2 / 3)
    assert metrics["best@4"] < metrics["pass@4"]


def test_validation_hook_adds_unbiased_pass_at_k_and_the_average_to_verls_metrics():
    """verl's own PPOTrainer._val_metrics_update, hooked by the plugin, on 2 sets x 2 problems x 4 samples."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    sources = ["local_math500"] * 8 + ["local_aime24"] * 8
    uids = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4
    acc = [1, 0, 0, 0] + [1, 1, 1, 1] + [0, 0, 0, 0] + [0, 1, 0, 0]
    infos = {"acc": acc, "score": [2 * a - 1 for a in acc]}
    metrics = PPOTrainer._val_metrics_update(None, sources, uids, infos, [])
    assert metrics["val-core/local_math500/acc/mean@4"] == pytest.approx(0.625)  # verl's own
    assert metrics["val-core/local_math500/acc/pass@4"] == pytest.approx(1.0)
    assert metrics["val-core/local_aime24/acc/pass@4"] == pytest.approx(0.5)
    assert metrics["val-aux/local_math500/acc/pass@2"] == pytest.approx((pass_at_k_unbiased(4, 1, 2) + 1) / 2)
    assert metrics["val-aux/local_aime24/acc/pass@1"] == pytest.approx(0.125)
    assert metrics["val-core/average/acc/mean@4"] == pytest.approx((0.625 + 0.125) / 2)
    assert metrics["val-core/average/acc/pass@4"] == pytest.approx(0.75)
    assert metrics["val-core/average/acc/best@4/mean"] == pytest.approx(
        (metrics["val-core/local_math500/acc/best@4/mean"] + metrics["val-core/local_aime24/acc/best@4/mean"]) / 2)


def test_missing_samples_count_as_failures():
    from orchestrator.metrics import validation_pass_at_k

    out = validation_pass_at_k(["s", "s"], ["u", "u"], [1, 0], expected_counts={("s", "u"): 4})
    assert out["val-core/s/acc/pass@4"] == 1.0 and out["val-aux/s/acc/pass@1"] == pytest.approx(0.25)


def test_jsonl_tail_reads_appended_records_partial_lines_and_restarts(tmp_path):
    from orchestrator.store import JsonlTail

    path = tmp_path / "m.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []
    path.write_bytes(b'{"step": 0, "data": {"a": 1}}\n{"step": 1, "da')
    assert tail.read() == [{"step": 0, "data": {"a": 1}}]
    with open(path, "ab") as f:
        f.write(b'ta": {"a": 2}}\n')
    assert tail.read() == [{"step": 1, "data": {"a": 2}}]
    path.write_bytes(b'{"step": 0, "data": {}}\n')  # a restarted trainer truncates the file
    assert tail.read() == [{"step": 0, "data": {}}]
