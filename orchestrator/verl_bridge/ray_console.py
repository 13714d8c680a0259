"""The experiment driver's console: Ray's "N PYTHON worker processes have been started" warnings dropped.

Each verl job starts about 15 worker processes and the raylet warns whenever that exceeds the number of CPUs; on
the local profile that is a screenful per trial above the live table, and says nothing to act on. The patch
manifest (``orchestrator.verl_bridge.patches``, patch ``ray_quiet_worker_start_warnings``, see
docs/patches.md#ray_quiet_worker_start_warnings) wraps ``ray._private.worker.print_to_stdstream`` in maspo's
experiment driver only (``patches.install_driver_patches``, called by ``tune_runner.run_experiment``).
"""

from __future__ import annotations

from orchestrator.verl_bridge.patching import wrapper_factory

WORKER_START_WARNING = "PYTHON worker processes have been started"
_HOOKED = "_maspo_quiet"


@wrapper_factory(_HOOKED)
def quiet_worker_start_warnings(original):
    """``print_to_stdstream(data, ignore_prefix)`` without the worker-start warning lines."""

    def print_to_stdstream(data, ignore_prefix):
        lines = [line for line in data.get("lines", []) if WORKER_START_WARNING not in line]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    return print_to_stdstream
