"""One TransferQueue per verl job, so that concurrent trials on one Ray cluster do not share it.

TransferQueue (verl 0.9's data plane) finds its controller as the named actor ``TransferQueueController`` in
the fixed Ray namespace ``transfer_queue`` (and its Ray-object storage as ``RayObjectRefStorage``). Two verl
jobs on one cluster, as a sweep runs them, then share ONE controller: the second job's
``tq.init`` attaches to the first job's queue and fails with "keys or partition were not found!" (seen on the
local profile with two concurrent trials; a 30-trial sweep on the A100 cluster would hit the same).

The fix: the namespace becomes ``transfer_queue-<ray job id>``. Every process of a verl job (driver, task
runner, workers: actors inherit their creator's job id) computes the same name, and distinct jobs distinct
names. ``MASPO_TQ_NAMESPACE`` overrides it. Installed by the patch manifest in every verl process (patches
``tq_namespace_*``, see docs/patches.md#tq_namespace_controller): each of the four targets (the ``ray`` module
and the actor class, in TransferQueue's ``interface`` and in its Ray storage client) must exist, or the install
fails; none is skipped.
"""

from __future__ import annotations

import os

from orchestrator.verl_bridge.patching import wrapper_factory

DEFAULT_NAMESPACE = "transfer_queue"
_HOOKED = "_maspo_tq_namespace"


def job_namespace() -> str:
    explicit = os.environ.get("MASPO_TQ_NAMESPACE")
    if explicit:
        return explicit
    import ray

    try:
        return f"{DEFAULT_NAMESPACE}-{ray.get_runtime_context().get_job_id()}"
    except Exception:  # noqa: BLE001 (Ray not initialised: keep TransferQueue's own name)
        return DEFAULT_NAMESPACE


def _rename(namespace):
    return job_namespace() if namespace == DEFAULT_NAMESPACE else namespace


class _RayProxy:
    """The ``ray`` module as TransferQueue's modules see it, with ``get_actor`` in the job's namespace."""

    def __init__(self, ray_module):
        self._ray = ray_module

    def get_actor(self, name, namespace=None):
        return self._ray.get_actor(name, namespace=_rename(namespace))

    def __getattr__(self, name):
        return getattr(self._ray, name)


class _ActorClassProxy:
    """A Ray actor class whose ``.options(namespace=...)`` is moved to the job's namespace."""

    def __init__(self, actor_class):
        self._actor_class = actor_class

    def options(self, **kwargs):
        if "namespace" in kwargs:
            kwargs["namespace"] = _rename(kwargs["namespace"])
        return self._actor_class.options(**kwargs)

    def __getattr__(self, name):
        return getattr(self._actor_class, name)


@wrapper_factory(_HOOKED, metadata=False)  # proxies, not functions: only __wrapped__
def proxy_ray(ray_module):
    """The ``ray`` name in a TransferQueue module -> ``_RayProxy``."""
    return _RayProxy(ray_module)


@wrapper_factory(_HOOKED, metadata=False)
def proxy_actor_class(actor_class):
    """A TransferQueue actor class -> ``_ActorClassProxy``."""
    return _ActorClassProxy(actor_class)
