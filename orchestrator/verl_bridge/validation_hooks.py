"""The project's validation metrics, added where verl computes its own (so every logger sees them).

verl's v1 trainer turns per-sample rewards into ``val-core/<data_source>/acc/mean@N`` and the bootstrap
``best@k`` in ``PPOTrainer._val_metrics_update``. This hook extends its result with
- the unbiased Pass@k (Chen et al. 2021), ``val-core/<data_source>/acc/pass@N`` and ``val-aux/.../pass@k``;
- the plain mean over validation sets of every ``val-core/*/acc/*`` metric, ``val-core/average/acc/<metric>``
  (the paper's Average column; the sweeps rank trials on ``val-core/average/acc/mean@N``).

Installed by the patch manifest (``orchestrator.verl_bridge.patches``, patch ``validation_pass_at_k``, see
docs/patches.md#validation_pass_at_k) on ``PPOTrainer._val_metrics_update`` in
``verl.trainer.ppo.v1.trainer_base``, which every v1 trainer mode inherits; a verl without it fails the install.
"""

from __future__ import annotations

from orchestrator.metrics import benchmark_average, validation_pass_at_k
from orchestrator.verl_bridge.patching import wrapper_factory

_HOOKED = "_maspo_hooked"


@wrapper_factory(_HOOKED)
def wrap_val_metrics_update(original):
    def hooked(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns, expected_acc_counts=None):
        metrics = original(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                           expected_acc_counts=expected_acc_counts)
        if "acc" in reward_extra_infos_dict:
            metrics.update(validation_pass_at_k(data_sources, sample_uids, reward_extra_infos_dict["acc"],
                                                expected_acc_counts))
        metrics.update(benchmark_average(metrics))
        return metrics

    return hooked
