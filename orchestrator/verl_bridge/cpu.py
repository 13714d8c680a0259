"""A CPU platform for verl 0.9.1, inert unless ``VERL_PLATFORM=cpu`` (the local profile).

Stock verl has no CPU platform: auto-detection falls back to "nvidia" and worker init dies in
``init_device_mesh('cuda')``. The patch manifest (``orchestrator.verl_bridge.patches``: ``cpu_platform`` and
``cpu_gloo_backend``, installed by ``plugin`` at ``import verl`` in every verl process of the local profile; see
docs/patches.md) adds the three things a CPU run of verl's FSDP2 engine needs:

1. a ``"cpu"`` entry in verl's ``PlatformRegistry``: device "cpu", backend "gloo", and a device module
   (``torch.cpu`` plus the ``torch.cuda``-style calls verl makes: memory statistics that read 0,
   ``get_device_name``, RNG state, no-op cache/IPC calls);
2. ``VERL_ENGINE_DEVICE=cuda`` unless already set: ``EngineRegistry`` only registers the FSDP engine for
   the "cuda" and "npu" devices, and that engine itself runs on whatever device the platform names;
3. the gloo backend string: verl asks ``torch.distributed.init_process_group`` for
   ``f"cpu:gloo,{device}:{backend}"``, i.e. ``"cpu:gloo,cpu:gloo"`` here, which torch rejects
   ("Duplicate device type cpu"). The wrapper passes ``"gloo"`` for that one string, nothing else.

What a CPU run still needs from its config: ``strategy=fsdp2`` (FSDP1 wants GPU params for
``sync_module_states``) and ``+actor_rollout_ref.model.override_config.attn_implementation=sdpa`` (the
default, flash_attention_2, is not installed). Ray launches additionally need a fake "GPU" resource,
because this platform reports its Ray resource as "GPU" (docs/verl-on-cpu.md#fake-gpu).

Idempotent; with ``VERL_PLATFORM`` unset or anything but "cpu" (the a100 profile) none of it is installed.
``activate_if_requested()`` installs every local-profile patch of the manifest (these two, the hf rollout and
the early start) in a process that did not get them from the plugin.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from orchestrator.verl_bridge.patching import wrapper_factory

PLATFORM = "cpu"
_PATCHED = "_maspo_cpu_gloo"


def requested() -> bool:
    from orchestrator.verl_bridge.patches import local_profile

    return local_profile()


class CPUDeviceModule:
    """What verl calls on ``get_torch_device()``: ``torch.cpu`` where it has the call, CPU answers elsewhere.

    ``current_device()`` is ``torch.cpu``'s, the string "cpu": verl hands the device id to ``.to()``.
    """

    def __getattr__(self, name):  # Stream, Event, stream, current_stream, synchronize, ...
        return getattr(torch.cpu, name)

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def set_device(device=None) -> None:
        return None

    @staticmethod
    def get_device_name(device=None) -> str:  # read by the flops counter
        return "cpu"

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:  # (free, total) host memory, like cudaMemGetInfo
        import psutil

        vm = psutil.virtual_memory()
        return vm.available, vm.total

    # Allocator statistics: the caching allocator does not exist on CPU.
    memory_allocated = memory_reserved = max_memory_allocated = max_memory_reserved = staticmethod(
        lambda device=None: 0
    )
    empty_cache = ipc_collect = reset_peak_memory_stats = reset_accumulated_memory_stats = staticmethod(
        lambda *a, **k: None
    )
    set_per_process_memory_fraction = staticmethod(lambda *a, **k: None)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def get_rng_state(device=None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state, device=None) -> None:
        torch.set_rng_state(state)


DEVICE_MODULE = CPUDeviceModule()


def _platform_class():
    """Defined lazily: ``PlatformBase`` lives in verl, which this module must not import when inert."""
    from verl.plugin.platform import PlatformBase

    class PlatformCPU(PlatformBase):
        device_name = "cpu"
        vendor_name = "cpu"
        device_module = DEVICE_MODULE

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check=False) -> bool:
            return requested()  # never auto-detected: only VERL_PLATFORM=cpu selects it

        def current_device(self) -> str:  # verl passes it to .to(); an int would mean an accelerator
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index=None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "GPU"  # verl's resource-pool check counts "GPU"; launch Ray with a fake num_gpus

        def ray_noset_envvars(self) -> list[str]:
            return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    return PlatformCPU


def gloo_backend(backend):
    """``"cpu:gloo,cpu:gloo"`` (what verl builds on this platform) -> ``"gloo"``; anything else unchanged."""
    if isinstance(backend, str) and "," in backend:
        pairs = {p.strip() for p in backend.split(",")}
        if pairs == {"cpu:gloo"}:
            return "gloo"
    return backend


@wrapper_factory(_PATCHED)
def wrap_init_process_group(original):
    """``torch.distributed.init_process_group`` that passes ``"gloo"`` for verl's ``"cpu:gloo,cpu:gloo"``."""

    def init_process_group(backend=None, *args, **kwargs):
        return original(gloo_backend(backend), *args, **kwargs)

    return init_process_group


def register_platform(platform_manager) -> None:
    """The "cpu" platform in verl's ``PlatformRegistry``, made current; ``VERL_ENGINE_DEVICE=cuda`` by default.

    Idempotent. Called by the manifest (patch ``cpu_platform``) with ``verl.plugin.platform.platform_manager``.
    """
    pm = platform_manager
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")
    registered = pm.PlatformRegistry.get(PLATFORM)
    if registered is None or registered.__module__ != __name__:
        registered = pm.PlatformRegistry.register(platform=PLATFORM)(_platform_class())
    if pm._current_platform is not None and not isinstance(pm._current_platform, registered):
        pm.set_platform(registered())  # something resolved the platform before this plugin loaded


def activate_if_requested() -> bool:
    """Install the local profile's patches when ``VERL_PLATFORM=cpu``; returns whether it is active. Idempotent.

    The plugin does this at ``import verl``; a process that imported verl before setting ``VERL_PLATFORM`` (a test
    harness) calls it itself.
    """
    if not requested():
        return False
    from orchestrator.verl_bridge import patches

    patches.install_all(patches.Condition.LOCAL_PROFILE)
    return True
