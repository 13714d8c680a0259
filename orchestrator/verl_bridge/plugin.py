"""verl plugin entry point (``[project.entry-points."verl.plugins"]`` in pyproject.toml).

verl imports this module at ``import verl`` in the driver, the task runner and every Ray worker,
so the losses are in verl's registry wherever ``loss_mode`` is looked up.
"""

from orchestrator.algorithms import register_with_verl
from orchestrator.verl_bridge import actor_hooks, validation_hooks

register_with_verl()
actor_hooks.install()
validation_hooks.install()

try:  # the CPU platform is added by the local profile; inert unless VERL_PLATFORM=cpu
    from orchestrator.verl_bridge import cpu as _cpu
except ImportError:  # pragma: no cover - module not present yet
    _cpu = None
if _cpu is not None:
    _cpu.activate_if_requested()
