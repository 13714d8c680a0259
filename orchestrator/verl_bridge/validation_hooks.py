"""The project's validation metrics, added where verl computes its own (so every logger sees them).

verl's v1 trainer turns per-sample rewards into ``val-core/<data_source>/acc/mean@N`` and the bootstrap
``best@k`` in ``PPOTrainer._val_metrics_update``. This hook extends its result with
- the unbiased Pass@k (Chen et al. 2021), ``val-core/<data_source>/acc/pass@N`` and ``val-aux/.../pass@k``;
- the plain mean over validation sets of every ``val-core/*/acc/*`` metric, ``val-core/average/acc/<metric>``
  (the paper's Average column; the sweeps rank trials on ``val-core/average/acc/mean@N``).
"""

from __future__ import annotations

import functools

from orchestrator.metrics import benchmark_average, validation_pass_at_k
from orchestrator.verl_bridge.patching import after_import

_HOOKED = "_maspo_hooked"


def wrap_val_metrics_update(original):
    if getattr(original, _HOOKED, False):
        return original

    @functools.wraps(original)
    def hooked(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns, expected_acc_counts=None):
        metrics = original(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                           expected_acc_counts=expected_acc_counts)
        if "acc" in reward_extra_infos_dict:
            metrics.update(validation_pass_at_k(data_sources, sample_uids, reward_extra_infos_dict["acc"],
                                                expected_acc_counts))
        metrics.update(benchmark_average(metrics))
        return metrics

    setattr(hooked, _HOOKED, True)
    return hooked


def _patch(module) -> None:
    for cls in vars(module).values():
        if isinstance(cls, type) and "_val_metrics_update" in vars(cls):
            cls._val_metrics_update = wrap_val_metrics_update(cls._val_metrics_update)


def install() -> None:
    after_import("verl.trainer.ppo.v1.trainer_base", _patch)
