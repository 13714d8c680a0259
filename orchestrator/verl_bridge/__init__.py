"""The only package that knows verl's internals beyond its policy-loss registry.

- ``plugin``: the ``verl.plugins`` entry point, imported at ``import verl`` in every verl process.
- ``actor_hooks``: the two places where a registered policy loss cannot see what it needs
  (current-policy entropy for Entropy Advantage, the whole mini-batch for BAPO's bound search).
- ``cpu``: a CPU platform for verl, inert unless ``VERL_PLATFORM=cpu`` (the local profile).
"""
