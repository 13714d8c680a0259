"""The only package that knows verl's internals beyond its policy-loss registry.

- ``plugin``: the ``verl.plugins`` entry point, imported at ``import verl`` in every verl process.
- ``patches``: the manifest of every change maspo makes to verl, TransferQueue, Ray and torch internals (target,
  reason, condition, recorded signature), installed in one loop and loud when a target is not what it was
  written for; ``patching`` holds its two mechanisms (``after_import``, ``wrap``). See docs/patches.md.
- the patches' code: ``actor_hooks`` (current-policy entropy for Entropy Advantage, the whole mini-batch for
  BAPO's bound search), ``validation_hooks``, ``wandb_hooks``, ``batch_order``, ``val_bootstrap``,
  ``tq_namespace``, ``ray_console``, and for the local profile only (``VERL_PLATFORM=cpu``) ``cpu``,
  ``hf_rollout`` and ``early_start``.
"""
