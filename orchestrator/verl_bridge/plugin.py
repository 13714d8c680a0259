"""verl plugin entry point (``[project.entry-points."verl.plugins"]`` in pyproject.toml).

verl imports this module at ``import verl`` in the driver, the task runner and every Ray worker, so the losses
are in verl's registry wherever ``loss_mode`` is looked up, and the hooks are in place in every process.
Only submodules are imported here, never names of the ``orchestrator.algorithms`` package: when a process
imports ``orchestrator.algorithms`` first, that package is still initialising while verl loads this plugin.
"""

from orchestrator.verl_bridge import cpu

cpu.activate_if_requested()  # inert unless VERL_PLATFORM=cpu (the local profile); before verl reads the device

from orchestrator.algorithms import losses as _losses  # noqa: E402,F401  (registers the losses)
from orchestrator.verl_bridge import actor_hooks, validation_hooks  # noqa: E402
from orchestrator.verl_bridge import wandb_hooks  # noqa: E402
from orchestrator.verl_bridge import batch_order  # noqa: E402
from orchestrator.verl_bridge import tq_namespace  # noqa: E402

actor_hooks.install()
validation_hooks.install()
wandb_hooks.install()
batch_order.install()
tq_namespace.install()
