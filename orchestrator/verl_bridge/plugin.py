"""verl plugin entry point (``[project.entry-points."verl.plugins"]`` in pyproject.toml).

verl imports this module at ``import verl`` in the driver, the task runner and every Ray worker, so the losses
are in verl's registry wherever ``loss_mode`` is looked up, and the patches are in place in every process.
The patches are those of the manifest (``orchestrator.verl_bridge.patches``, docs/patches.md) whose condition
holds in this process, installed in one loop, the CPU platform first (before verl reads the device). Only
submodules are imported here, never names of the ``orchestrator.algorithms`` package: when a process imports
``orchestrator.algorithms`` first, that package is still initialising while verl loads this plugin.

verl's plugin loader swallows any ``Exception`` a plugin raises (logged at DEBUG level): a patch whose target is
not what it was written for is re-raised as ``PluginLoadError`` (a ``BaseException``), so ``import verl`` fails
loudly with the patch's name instead of running without the patch.
"""

from orchestrator.verl_bridge import patches

try:
    patches.install_plugin_patches()
except patches.PatchTargetError as err:
    raise patches.PluginLoadError(str(err)) from err

from orchestrator.algorithms import losses as _losses  # noqa: E402,F401  (registers the losses)
