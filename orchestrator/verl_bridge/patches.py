"""The manifest: every change maspo makes to the internals of verl, TransferQueue, Ray and torch, declared once.

Each ``Patch`` names its target (module and attribute), why it exists (``docs/patches.md#<name>`` says more),
the condition that turns it on, the parameter names of the target it was written for, and the function that
installs it (a wrapper factory, put in place by ``patching.wrap``, or a registration). One loop installs them:
``install_plugin_patches`` from the ``verl.plugins`` entry point (``plugin``) in every verl process, and
``install_driver_patches`` from maspo's experiment driver (``tune_runner``). A patch whose target module is not
imported yet is installed when it is (``patching.after_import``), so the driver never imports verl's heavy
modules.

Loud, never silent: a target module that is not there, an attribute that is missing, a signature that is not
the one recorded, or a broken contract (``contract``) raise ``PatchTargetError`` naming the patch and the
versions, when the patch is installed, or when its deferred target module is imported (then that import
raises). The installed verl is compared with the version the patches were written for (``WRITTEN_FOR``); a
mismatch is a ``VerlVersionWarning``, not an error, since the per-target checks are what decide (see
docs/patches.md#version-check).

``manifest_rows`` is what ``maspo doctor`` prints. This module imports neither verl nor torch.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from orchestrator.verl_bridge.patching import after_import, pending_imports, wrap

DOCS = "docs/patches.md"
ANY = "..."  # last item of a recorded signature: the wrapper passes any further parameters through
POLL_ENV = "MASPO_REPLAY_POLL_S"  # = batch_order.POLL_ENV (not imported: keep this module light)
WRITTEN_FOR = {"verl": "0.9.1", "TransferQueue": "0.1.11", "ray": "2.60.0", "torch": "2.13.0"}


class PatchTargetError(RuntimeError):
    """A patch's target is missing or not what the patch was written for. The message names the patch."""


class PluginLoadError(BaseException):
    """A ``PatchTargetError`` raised while verl loads the plugin.

    verl's plugin loader catches every ``Exception`` and logs it at DEBUG level, i.e. nowhere: the plugin
    re-raises patch failures as this ``BaseException`` so that ``import verl`` itself fails, with the message.
    """


class VerlVersionWarning(UserWarning):
    """The installed verl is not the version the patches were written for."""


def local_profile(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this is a process of the local profile: ``VERL_PLATFORM=cpu`` (set for every verl process)."""
    env = os.environ if environ is None else environ
    return env.get("VERL_PLATFORM", "").strip().lower() == "cpu"


_process = {"driver": False}  # install_driver_patches was called here


class Condition(enum.Enum):
    """When a patch is installed. The first three are decided by the plugin from the process's environment."""

    ALWAYS = "always"
    LOCAL_PROFILE = "local profile (VERL_PLATFORM=cpu)"
    LOCAL_PROFILE_OR_POLL_ENV = f"local profile, or {POLL_ENV} set"
    EXPERIMENT_DRIVER = "maspo's experiment driver"

    @property
    def by_plugin(self) -> bool:
        """Installed by the ``verl.plugins`` entry point (else: by the experiment driver)."""
        return self is not Condition.EXPERIMENT_DRIVER

    def holds(self, environ: Mapping[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        if self is Condition.ALWAYS:
            return True
        if self is Condition.LOCAL_PROFILE:
            return local_profile(env)
        if self is Condition.LOCAL_PROFILE_OR_POLL_ENV:
            return local_profile(env) or bool(env.get(POLL_ENV, "").strip())
        return _process["driver"]


class Kind(enum.Enum):
    WRAP = "wrap"  # owner.attr = factory(owner.attr), through patching.wrap (idempotent, marked)
    REGISTER = "register"  # installer(module): an entry added to one of verl's registries (idempotent)


@dataclass(frozen=True)
class Patch:
    name: str
    module: str  # the target module
    attr: str  # the target attribute in it, dotted for class members ("TrainingWorker.train_batch")
    condition: Condition
    why: str  # one or two sentences; docs/patches.md#<name> has the rest
    installer: str  # "package.module:function": a wrapper factory (WRAP) or a registration (REGISTER)
    kind: Kind = Kind.WRAP
    signature: tuple[str, ...] | None = None  # the target's parameter names; ANY last: a prefix; None: no check
    library: str = "verl"  # the distribution the target belongs to (for the versions in messages)
    eager: bool = False  # import the target module when installing (else: when something imports it)
    requires: tuple[str, ...] = ()  # other attributes of the module the patch relies on
    contract: str | None = None  # "module:function"(target module) -> a problem (str) or None
    acts: str = "always"  # when the installed patch changes anything (the others pass through)

    @property
    def target(self) -> str:
        return f"{self.module}.{self.attr}"

    @property
    def doc(self) -> str:
        return f"{DOCS}#{self.name}"


_VB = "orchestrator.verl_bridge"
ENGINE_WORKERS = "verl.workers.engine_workers"
TRAINER_BASE = "verl.trainer.ppo.v1.trainer_base"
REPLAY_BUFFER = "verl.trainer.ppo.v1.replay_buffer"

# In installation order: the CPU platform before anything reads verl's device.
MANIFEST: tuple[Patch, ...] = (
    # ---- local profile: verl on a CPU-only machine
    Patch("cpu_platform", "verl.plugin.platform.platform_manager", "PlatformRegistry.register",
          Condition.LOCAL_PROFILE,
          "verl has no CPU platform (it falls back to 'nvidia' and worker init dies in init_device_mesh('cuda')): "
          "register a 'cpu' platform (gloo backend, a torch.cpu device module) and make it current.",
          f"{_VB}.cpu:register_platform", kind=Kind.REGISTER, signature=("platform",), eager=True,
          requires=("PlatformRegistry.get", "set_platform", "_current_platform")),
    Patch("cpu_gloo_backend", "torch.distributed", "init_process_group", Condition.LOCAL_PROFILE,
          "verl asks torch for the process-group backend 'cpu:gloo,cpu:gloo' on the CPU platform, which torch "
          "rejects (duplicate device type): pass 'gloo' for that one string.",
          f"{_VB}.cpu:wrap_init_process_group", signature=("backend", ANY), library="torch", eager=True,
          acts="backend 'cpu:gloo,cpu:gloo'"),
    Patch("hf_rollout_adapter", "verl.workers.rollout.base", "_ROLLOUT_REGISTRY", Condition.LOCAL_PROFILE,
          "verl only generates through vLLM, SGLang or TensorRT-LLM servers, none of which runs on CPU: "
          "rollout.name=hf gets maspo's transformers server adapter in the actor worker.",
          f"{_VB}.hf_rollout:register_adapter", kind=Kind.REGISTER),
    Patch("hf_rollout_replica", "verl.workers.rollout.replica", "RolloutReplicaRegistry.register",
          Condition.LOCAL_PROFILE,
          "The trainer launches its rollout servers through RolloutReplicaRegistry: rollout.name=hf gets "
          "maspo's transformers replica (one HFRolloutServer actor).",
          f"{_VB}.hf_rollout:register_replica", kind=Kind.REGISTER, signature=("name", "loader")),
    Patch("hf_rollout_sample_key", "verl.experimental.agent_loop.agent_loop", "AgentLoopWorker._run_agent_loop",
          Condition.LOCAL_PROFILE,
          "The hf server seeds each sample from the session it belongs to; the agent loop adds that session's "
          "key to the sampling params, so a seed gives the same samples whatever the arrival order.",
          f"{_VB}.hf_rollout:wrap_run_agent_loop", signature=("self", "sampling_params", "trajectory", ANY),
          acts="rollout.name=hf"),
    Patch("early_start_servers", "transfer_queue", "init", Condition.LOCAL_PROFILE,
          "Start-up on 2 cores: the task runner starts the hf rollout server and the reward workers at its first "
          "TransferQueue call, while it still sets up, instead of one after another.",
          f"{_VB}.early_start:wrap_tq_init", signature=("conf", ANY), library="TransferQueue",
          acts="called with a node of the trainer config"),
    Patch("early_start_reward_workers", TRAINER_BASE, "RewardLoopManager", Condition.LOCAL_PROFILE,
          "verl's trainer adopts the reward-loop manager started early (its workers are named actors: a "
          "second manager would clash) instead of building its own.",
          f"{_VB}.early_start:adopting_reward_loop_manager", signature=("config", "rm_resource_pool"),
          acts="no reward model, and one was started early"),
    Patch("replay_buffer_poll", REPLAY_BUFFER, "ReplayBuffer.__init__", Condition.LOCAL_PROFILE_OR_POLL_ENV,
          "verl polls TransferQueue every 2 s (hard-coded) while it waits for a batch, about 1 s lost per "
          f"local step and validation: poll every 0.1 s on CPU, or every ${POLL_ENV} s.",
          f"{_VB}.batch_order:wrap_init", signature=("self", ANY), contract=f"{_VB}.batch_order:poll_contract"),
    # ---- every verl process, both profiles
    Patch("ppo_loss_hook", "verl.workers.utils.losses", "ppo_loss", Condition.ALWAYS,
          "A registered policy loss never sees the current policy's per-token entropy, which Entropy Advantage "
          "needs: ppo_loss hands it to the loss; and for every loss it sums the mechanism metrics' token counts "
          "of the micro-batch (bound before engine_workers imports the name).",
          f"{_VB}.actor_hooks:wrap_ppo_loss", signature=("config", "model_output", "data", "dp_group"), eager=True,
          acts="entropy: loss_mode=entropy_adv; mechanism sums: every actor update"),
    Patch("ppo_loss_hook_engine_workers", ENGINE_WORKERS, "ppo_loss", Condition.ALWAYS,
          "The same hook on the name the actor worker builds its loss from, in case engine_workers was imported "
          "before the plugin.",
          f"{_VB}.actor_hooks:wrap_ppo_loss", signature=("config", "model_output", "data", "dp_group"),
          acts="entropy: loss_mode=entropy_adv; mechanism sums: every actor update"),
    Patch("train_batch_hook", ENGINE_WORKERS, "TrainingWorker.train_batch", Condition.ALWAYS,
          "BAPO searches its clipping bounds once per policy update over the whole mini-batch (all data-parallel "
          "ranks); a loss only sees one micro-batch: train_batch runs the search first. For every loss it turns "
          "the update's mechanism sums (all ranks) into the actor/mechanism/* metrics of its output.",
          f"{_VB}.actor_hooks:wrap_train_batch", signature=("self", "data"),
          requires=("ActorRolloutRefWorker.init_model", "TrainingWorker.train_mini_batch"),
          contract=f"{_VB}.actor_hooks:loss_fn_contract",
          acts="bounds: loss_mode=bapo; mechanism metrics: every actor update"),
    Patch("validation_pass_at_k", TRAINER_BASE, "PPOTrainer._val_metrics_update", Condition.ALWAYS,
          "The paper's metrics where verl computes its validation metrics, so every logger sees them: unbiased "
          "Pass@k per benchmark and the average over benchmarks (the sweeps rank trials on it).",
          f"{_VB}.validation_hooks:wrap_val_metrics_update",
          signature=("self", "data_sources", "sample_uids", "reward_extra_infos_dict", "sample_turns",
                     "expected_acc_counts")),
    Patch("wandb_run_identity", "verl.utils.tracking", "Tracking.__init__", Condition.ALWAYS,
          "verl names its W&B run after trainer.project_name/experiment_name: the trial's W&B project and name "
          "win, metrics plot against training/global_step, the trial's settings go into the run config.",
          f"{_VB}.wandb_hooks:wrap_tracking_init",
          signature=("self", "project_name", "experiment_name", "default_backend", "config"),
          acts="the wandb logger is on"),
    Patch("batch_order_prompts", REPLAY_BUFFER, "ReplayBuffer._select_prompt_uids", Condition.ALWAYS,
          "Prompt uids are random and verl selects them from a set: ties in staleness are broken by submission "
          "order, so one seed gives one batch order.",
          f"{_VB}.batch_order:wrap_select_prompt_uids",
          signature=("self", "partition_id", "sampleable_keys", "batch_size")),
    Patch("batch_order_trajectories", REPLAY_BUFFER, "ReplayBuffer._materialize_batch", Condition.ALWAYS,
          "verl lists a batch's trajectories in the order their requests completed: list them by prompt "
          "submission order, session and turn, so mini-batches and the actor's metrics are reproducible.",
          f"{_VB}.batch_order:wrap_materialize_batch",
          signature=("self", "partition_id", "selected_prompt_uids", "partition_snapshot")),
    Patch("fast_validation_bootstrap", "verl.trainer.ppo.metric_utils", "bootstrap_metric", Condition.ALWAYS,
          "verl's best@n/worst@n/maj@n bootstrap is a Python loop over 1000 resamples per prompt and n: "
          "vectorized, with the same draws and bit-identical results, about 20x less CPU.",
          f"{_VB}.val_bootstrap:wrap_bootstrap_metric",
          signature=("data", "subset_size", "reduce_fns", "n_bootstrap", "seed"), requires=("calc_maj_val",),
          acts="max/min/maj reductions of numeric data"),
    Patch("tq_namespace_controller", "transfer_queue.interface", "TransferQueueController", Condition.ALWAYS,
          "TransferQueue's controller is a named actor in a fixed Ray namespace, so concurrent verl jobs on one "
          "cluster share one queue and fail: create it in the namespace transfer_queue-<ray job id>.",
          f"{_VB}.tq_namespace:proxy_actor_class", library="TransferQueue"),
    Patch("tq_namespace_interface_ray", "transfer_queue.interface", "ray", Condition.ALWAYS,
          "... and look it up there (ray.get_actor in TransferQueue's client interface).",
          f"{_VB}.tq_namespace:proxy_ray", library="TransferQueue"),
    Patch("tq_namespace_storage", "transfer_queue.storage.clients.ray_storage_client", "RayObjectRefStorage",
          Condition.ALWAYS,
          "The same for TransferQueue's Ray-object storage actor: created in the job's namespace ...",
          f"{_VB}.tq_namespace:proxy_actor_class", library="TransferQueue"),
    Patch("tq_namespace_storage_ray", "transfer_queue.storage.clients.ray_storage_client", "ray", Condition.ALWAYS,
          "... and looked up there.",
          f"{_VB}.tq_namespace:proxy_ray", library="TransferQueue"),
    # ---- maspo's experiment driver (maspo sweep / compare / run's Tune driver), not verl processes
    Patch("ray_quiet_worker_start_warnings", "ray._private.worker", "print_to_stdstream",
          Condition.EXPERIMENT_DRIVER,
          "The raylet warns that 'N PYTHON worker processes have been started' whenever a verl job starts more "
          "workers than CPUs: a screenful per trial above the live table, nothing to act on; dropped.",
          f"{_VB}.ray_console:quiet_worker_start_warnings", signature=("data", "ignore_prefix"), library="ray",
          eager=True),
)

_BY_NAME = {p.name: p for p in MANIFEST}
_APPLIED: set[str] = set()  # patches installed in this process (their target was there and is patched)
_CALLBACKS: dict[str, Callable[[Any], None]] = {}  # one stable after_import callback per patch
_warned = {"version": False}


def get(name: str) -> Patch:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no patch named {name!r} in the manifest ({', '.join(_BY_NAME)})") from None


# ------------------------------------------------------------------------------------------------- versions

def installed_version(library: str) -> str | None:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions_note(library: str) -> str:
    expected = WRITTEN_FOR.get(library)
    installed = installed_version(library) or "none"
    return f"{library} {expected} expected, {installed} installed" if expected else f"{library} {installed} installed"


def verl_version_problem() -> str | None:
    """A message when the installed verl is not the one the patches were written for, else None."""
    installed = installed_version("verl")
    if installed == WRITTEN_FOR["verl"]:
        return None
    return (f"maspo's patches were written for verl {WRITTEN_FOR['verl']}, verl {installed or 'none'} is "
            f"installed: every patch still checks its target and fails loudly if it is missing or changed "
            f"(see {DOCS}#version-check; `maspo doctor` checks them all)")


def check_verl_version() -> str | None:
    """Warn (``VerlVersionWarning``, once per process) when verl is not the version the patches expect."""
    problem = verl_version_problem()
    if problem and not _warned["version"]:
        _warned["version"] = True
        warnings.warn(problem, VerlVersionWarning, stacklevel=2)
    return problem


# ------------------------------------------------------------------------------------------------- checks

def _load(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _fail(patch: Patch, what: str) -> PatchTargetError:
    return PatchTargetError(f"patch '{patch.name}': {what} ({versions_note(patch.library)}; see {patch.doc})")


def module_exists(name: str) -> bool:
    """Whether module ``name`` can be imported, found without importing it or its parent packages."""
    if name in sys.modules:
        return True
    parts = name.split(".")
    path = None
    for i in range(len(parts)):
        prefix = ".".join(parts[: i + 1])
        loaded = sys.modules.get(prefix)
        if loaded is not None:
            spec = getattr(loaded, "__spec__", None)
        else:
            spec = importlib.machinery.PathFinder.find_spec(prefix, path)
        if spec is None:
            return False
        if i < len(parts) - 1:
            path = spec.submodule_search_locations
            if path is None:  # a plain module has no submodules
                return False
    return True


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def signature_problem(expected: tuple[str, ...] | None, target: Any) -> str | None:
    """``None`` when ``target``'s parameter names are ``expected`` (a prefix of them when it ends with ANY)."""
    if expected is None:
        return None
    try:
        found = list(inspect.signature(target).parameters)  # follows __wrapped__: an installed patch checks too
    except (TypeError, ValueError):
        return "has no signature to check"
    want = list(expected)
    ok = found[: len(want) - 1] == want[:-1] if want and want[-1] == ANY else found == want
    if ok:
        return None
    return f"signature changed: expected ({', '.join(want)}), found ({', '.join(found)})"


def problems(patch: Patch, module: Any = None) -> list[str]:
    """What is wrong with the patch's target in the installed libraries (imports the module if not given)."""
    if module is None:
        try:
            module = importlib.import_module(patch.module)
        except ImportError as err:
            return [f"module {patch.module} cannot be imported ({err})"]
    try:
        target = _lookup(module, patch.attr)
    except AttributeError:
        return [f"{patch.target} not found"]
    found = []
    issue = signature_problem(patch.signature, target)
    if issue:
        found.append(f"{patch.target} {issue}")
    for name in patch.requires:
        try:
            _lookup(module, name)
        except AttributeError:
            found.append(f"{patch.module}.{name} (which the patch relies on) not found")
    if patch.contract and not found:
        issue = _load(patch.contract)(module)
        if issue:
            found.append(issue)
    return found


def verify(patch: Patch, module: Any = None) -> None:
    """Raise ``PatchTargetError`` (naming the patch and the versions) unless the target is as recorded."""
    found = problems(patch, module)
    if found:
        raise _fail(patch, "; ".join(found))


# ------------------------------------------------------------------------------------------------- install

def apply(patch: Patch, module: Any) -> None:
    """Check the target in ``module`` (the imported target module) and install the patch there. Idempotent."""
    verify(patch, module)
    installer = _load(patch.installer)
    if patch.kind is Kind.WRAP:
        owner_path, _, leaf = patch.attr.rpartition(".")
        owner = _lookup(module, owner_path) if owner_path else module
        wrap(owner, leaf, installer)
    else:
        installer(module)
    _APPLIED.add(patch.name)


def _callback(patch: Patch) -> Callable[[Any], None]:
    if patch.name not in _CALLBACKS:
        _CALLBACKS[patch.name] = lambda module: apply(patch, module)
    return _CALLBACKS[patch.name]


def install(patch: Patch) -> None:
    """Install ``patch`` now if its module is imported (or ``eager``), else when it is. Idempotent.

    Raises ``PatchTargetError`` when the module does not exist at all, or (now or at that import) when the
    target is not what the patch was written for.
    """
    if patch.eager and patch.module not in sys.modules:
        try:
            importlib.import_module(patch.module)
        except ImportError as err:
            raise _fail(patch, f"module {patch.module} cannot be imported ({err})") from err
    elif not module_exists(patch.module):
        raise _fail(patch, f"module {patch.module} not found")
    after_import(patch.module, _callback(patch))


def install_all(only: Condition | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The plugin's one loop: every plugin patch whose condition holds here (or only those of ``only``).

    Returns the names installed or armed. Checks the verl version first (a warning on a mismatch).
    """
    check_verl_version()
    names = []
    for patch in MANIFEST:
        if not patch.condition.by_plugin or (only is not None and patch.condition is not only):
            continue
        if patch.condition.holds(environ):
            install(patch)
            names.append(patch.name)
    return names


def install_plugin_patches() -> list[str]:
    """What ``plugin`` runs at ``import verl`` in every verl process."""
    return install_all()


def install_driver_patches() -> list[str]:
    """What maspo's experiment driver runs before it starts Ray (``tune_runner.run_experiment``)."""
    _process["driver"] = True
    names = []
    for patch in MANIFEST:
        if patch.condition is Condition.EXPERIMENT_DRIVER:
            install(patch)
            names.append(patch.name)
    return names


def is_installed(patch: Patch) -> bool:
    """Whether the patch is in place in this process right now."""
    module = sys.modules.get(patch.module)
    if module is None:
        return False
    if patch.kind is Kind.REGISTER:
        return patch.name in _APPLIED
    try:
        target = _lookup(module, patch.attr)
    except AttributeError:
        return False
    return bool(getattr(target, getattr(_load(patch.installer), "marker", ""), False))


# ------------------------------------------------------------------------------------------------- report

@dataclass(frozen=True)
class PatchRow:
    name: str
    library: str
    target: str
    module: str
    attr: str
    condition: str
    acts: str
    active: bool  # the condition holds in this process (for the driver patch: it was installed here)
    state: str  # installed / armed (installs when its module is imported) / not installed / off
    why: str
    doc: str
    problem: str | None = None  # from check=True: what is wrong with the target, if anything


def _state(patch: Patch, active: bool) -> str:
    if is_installed(patch):
        return "installed"
    if patch.module in pending_imports() and patch.name in _CALLBACKS:
        return f"armed: installs when {patch.module} is imported"
    return "not installed in this process" if active else "off"


def manifest_rows(check: bool = False, environ: Mapping[str, str] | None = None) -> list[PatchRow]:
    """One row per patch: target, condition, whether it is active in this process, why.

    ``check``: import each target module and check the target (what ``problems`` finds goes in ``problem``);
    importing a verl module loads the plugin, which installs what applies here. ``environ``: evaluate the
    conditions for that environment instead of this process's (``maspo doctor --profile``).
    """
    rows = []
    for patch in MANIFEST:
        problem = None
        if check:
            try:
                problem = "; ".join(problems(patch)) or None
            except PluginLoadError as err:
                problem = str(err)
            except PatchTargetError as err:  # another patch of the same module failed while it was imported
                problem = str(err)
        active = patch.condition.holds(environ)
        rows.append(PatchRow(name=patch.name, library=patch.library, target=patch.target, module=patch.module,
                             attr=patch.attr,
                             condition=patch.condition.value, acts=patch.acts, active=active,
                             state=_state(patch, active), why=patch.why, doc=patch.doc, problem=problem))
    return rows
