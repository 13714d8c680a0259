"""Pass@k estimators against the spec's vectors (section 11)."""

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
