"""Offline checks of the Ray cluster-launcher YAMLs in ``cluster/`` (no credentials, no network).

Two layers:

1. Ray's own validation, the way ``ray up`` does it: ``prepare_config`` (merges the provider's defaults,
   synthesises the single ``local.cluster.node`` type for the local provider, fills per-type min/max workers)
   then ``validate_config`` (draft-07 ``ray-schema.json`` plus head-type and min/max-workers checks), both from
   the private module ``ray.autoscaler._private.util`` (ray 2.60), on a deep copy of the loaded YAML.
   ``validate_config`` on the raw YAML is not enough: it needs ``cluster_synced_files``, which only
   ``prepare_config`` fills in.
2. maspo's slot scheme: every GPU node has 8 GPUs and declares the custom resource ``verl_slot`` = 1. One trial
   is one verl run on 8 GPUs and takes one slot, so the total number of slots bounds the concurrent trials
   (:func:`gpu_slots`). Cloud providers declare both in ``available_node_types.<type>.resources`` (Ray passes
   them to ``ray start``); the local provider has no node types, so there they are the ``--num-gpus=8`` and
   ``--resources='{"verl_slot": 1}'`` flags of the start commands.

Every failure is a :class:`ClusterConfigError` whose message starts with the file and carries Ray's message.
"""

from __future__ import annotations

import copy
import json
import logging
import shlex
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UserError

GPUS_PER_NODE = 8
GPUS_PER_SLOT = 8  # one trial = one verl run on 8 GPUs = one slot
SLOT_RESOURCE = "verl_slot"
_LOCAL = "local"
_MAX_MESSAGE = 300


class ClusterConfigError(UserError):
    """A cluster YAML that Ray's validator or maspo's slot checks reject; the message names the file."""


def load_cluster_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ClusterConfigError(f"{path}: cannot read the file: {e}") from None
    except yaml.YAMLError as e:
        raise ClusterConfigError(f"{path}: not valid YAML: {_first_line(str(e))}") from None
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{path}: expected a mapping of cluster settings, got {type(config).__name__}")
    return config


def validate_cluster_yaml(path: str | Path) -> dict[str, Any]:
    """Load ``path`` and validate it with Ray's schema and maspo's GPU/slot rules; return the loaded YAML.

    The returned dict is the file's content (what ``ray up`` takes), not Ray's prepared form; pass it to
    :func:`gpu_slots`.
    """
    config = load_cluster_yaml(path)
    provider = config.get("provider")
    if isinstance(provider, dict) and provider.get("type") == _LOCAL:
        # prepare_config aborts on these, except on a node type named `local.cluster.node`: that one it takes
        # for an already prepared config and lets through to a misleading "Missing 'cluster_synced_files'
        # ... Ray version" error.
        for field in ("available_node_types", "head_node", "worker_nodes"):
            if config.get(field):
                raise ClusterConfigError(
                    f"{path}: The field {field} is not supported for on-premise clusters (Ray's local provider "
                    "builds its single node type itself); declare GPUs and slots with --num-gpus/--resources "
                    "in the start commands"
                )
    prepared = _ray_prepare_and_validate(config, path)
    _check_slots(prepared, path)
    return config


def gpu_slots(config: dict[str, Any]) -> int:
    """Total ``verl_slot`` of the cluster at its largest: the head plus every node type at its ``max_workers``.

    Accepts the loaded YAML or Ray's prepared config. With several worker types the global ``max_workers``
    caps the count; the bound then fills it with the types holding the most slots per node first.
    """
    prepared = _ray_prepare_and_validate(config, config.get("cluster_name", "<cluster config>"))
    head_slots, worker_types = _node_slots(prepared, config.get("cluster_name", "<cluster config>"))
    budget = prepared.get("max_workers")
    total = head_slots
    for slots, max_workers in sorted(worker_types, reverse=True):
        count = max_workers if budget is None else min(max_workers, budget)
        total += slots * count
        if budget is not None:
            budget -= count
    return total


def slot_nodes(config: dict[str, Any]) -> int:
    """Nodes with a ``verl_slot`` at the cluster's largest (what a trial spanning N nodes needs N of).

    Counted like :func:`gpu_slots`: the head if it declares a slot, then every worker type with one at its
    ``max_workers``, within the global ``max_workers``. With one slot per node (the rule) it equals the slots.
    """
    name = config.get("cluster_name", "<cluster config>")
    prepared = _ray_prepare_and_validate(config, name)
    head_slots, worker_types = _node_slots(prepared, name)
    budget = prepared.get("max_workers")
    total = 1 if head_slots else 0
    for slots, max_workers in sorted(worker_types, reverse=True):
        count = max_workers if budget is None else min(max_workers, budget)
        if slots:
            total += count
        if budget is not None:
            budget -= count
    return total


# --- Ray's validation ------------------------------------------------------------------------------------


def _ray_prepare_and_validate(config: dict[str, Any], path: str | Path) -> dict[str, Any]:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    quiet = logging.getLogger("ray.autoscaler._private.util")  # "setting max workers for head node type to 0"
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        prepared = prepare_config(copy.deepcopy(config))
    except Exception as prepare_error:  # noqa: BLE001 - Ray raises KeyError, ClickException, NotImplementedError...
        # prepare_config indexes the config before any schema check (a missing `provider` is a KeyError):
        # the schema on the raw file usually says what is wrong in words.
        try:
            validate_config(copy.deepcopy(config))
        except jsonschema.ValidationError as schema_error:
            raise ClusterConfigError(_schema_message(path, schema_error)) from None
        except Exception:  # noqa: BLE001 - e.g. the missing cluster_synced_files of every raw file
            pass
        raise ClusterConfigError(
            f"{path}: Ray's prepare_config rejects it: {_exception_text(prepare_error)}"
        ) from None
    finally:
        quiet.setLevel(level)
    try:
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        raise ClusterConfigError(_schema_message(path, e)) from None
    except Exception as e:  # noqa: BLE001 - ValueError / RuntimeError from Ray's extra checks
        raise ClusterConfigError(f"{path}: Ray's validate_config rejects it: {_exception_text(e)}") from None
    return prepared


def _schema_message(path: str | Path, error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "top level"
    return f"{path}: Ray's cluster schema rejects it at {where}: {_first_line(error.message)}"


def _exception_text(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)  # click.ClickException keeps it in .message
    if isinstance(error, KeyError):
        text = f"missing key {text}"
    return _first_line(text) or type(error).__name__


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


# --- maspo's GPU and slot rules --------------------------------------------------------------------------


def _check_slots(prepared: dict[str, Any], path: str | Path) -> None:
    head_slots, worker_types = _node_slots(prepared, path)
    if head_slots == 0 and not any(slots * n for slots, n in worker_types):
        raise ClusterConfigError(f"{path}: no node declares the `{SLOT_RESOURCE}` resource, so no trial can run")


def _node_slots(prepared: dict[str, Any], path: Any) -> tuple[int, list[tuple[int, int]]]:
    """(slots of the head node, [(slots per node, max_workers) for each worker node type]), checked."""
    if prepared["provider"].get("type") == _LOCAL:
        node_type = next(iter(prepared["available_node_types"].values()))
        head = _ray_start_resources(prepared.get("head_start_ray_commands", []), "head_start_ray_commands", path)
        worker = _ray_start_resources(
            prepared.get("worker_start_ray_commands", []), "worker_start_ray_commands", path
        )
        head_slots = _slots_for("the head (head_start_ray_commands)", head, path, worker=False, flags=True)
        worker_slots = _slots_for("the workers (worker_start_ray_commands)", worker, path, worker=True, flags=True)
        return head_slots, [(worker_slots, node_type.get("max_workers", 0))]

    head_type = prepared["head_node_type"]
    head_slots, workers = 0, []
    for name, node_type in prepared["available_node_types"].items():
        resources = node_type.get("resources") or {}
        is_head = name == head_type
        max_workers = node_type.get("max_workers", 0)
        # the head type is a worker type too when it has max_workers > 0
        slots = _slots_for(f"node type `{name}`", resources, path, worker=not is_head or max_workers > 0, flags=False)
        if is_head:
            head_slots = slots
        if not is_head or max_workers > 0:
            workers.append((slots, max_workers))
    return head_slots, workers


def _slots_for(what: str, resources: dict[str, Any], path: Any, *, worker: bool, flags: bool) -> int:
    gpu_key = "--num-gpus" if flags else "resources.GPU"
    slot_key = f"--resources {SLOT_RESOURCE}" if flags else f"resources.{SLOT_RESOURCE}"
    gpus, slots = resources.get("GPU", 0), resources.get(SLOT_RESOURCE, 0)
    if worker and gpus != GPUS_PER_NODE:
        found = "nothing" if "GPU" not in resources else repr(gpus)
        raise ClusterConfigError(
            f"{path}: {what} must declare {gpu_key}={GPUS_PER_NODE} (8x A100 per node), found {found}"
        )
    if gpus not in (0, GPUS_PER_NODE):
        raise ClusterConfigError(f"{path}: {what} declares {gpu_key}={gpus!r}; maspo nodes have 0 or 8 GPUs")
    expected = gpus // GPUS_PER_SLOT
    if not isinstance(slots, (int, float)) or slots != expected:
        found = "nothing" if SLOT_RESOURCE not in resources else repr(slots)
        raise ClusterConfigError(
            f"{path}: {what} must declare {slot_key}={expected} (one slot per {GPUS_PER_SLOT} GPUs, a trial "
            f"takes one slot), found {found}"
        )
    return int(slots)


def _ray_start_resources(commands: list[str], key: str, path: Any) -> dict[str, Any]:
    """GPU and custom resources of the (last) ``ray start`` in a list of shell commands."""
    found: dict[str, Any] | None = None
    for command in commands:
        try:
            lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError as e:
            raise ClusterConfigError(f"{path}: {key}: cannot parse {command!r}: {e}") from None
        for i, token in enumerate(tokens[:-1]):
            if Path(token).name == "ray" and tokens[i + 1] == "start":
                found = _parse_ray_start(tokens[i + 2 :], key, path)
    if found is None:
        raise ClusterConfigError(f"{path}: {key} has no `ray start` command")
    return found


def _parse_ray_start(args: list[str], key: str, path: Any) -> dict[str, Any]:
    options: dict[str, str] = {}
    i = 0
    while i < len(args) and not set(args[i]) <= set("();<>|&"):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            options[name] = value
        i += 1
    resources: dict[str, Any] = {}
    if "--resources" in options:
        try:
            resources = json.loads(options["--resources"])
        except json.JSONDecodeError as e:
            raise ClusterConfigError(
                f"{path}: {key}: --resources is not JSON ({e}): {options['--resources']!r}"
            ) from None
        if not isinstance(resources, dict):
            raise ClusterConfigError(f"{path}: {key}: --resources must be a JSON object")
    if "--num-gpus" in options:
        try:
            resources["GPU"] = int(options["--num-gpus"])
        except ValueError:
            raise ClusterConfigError(f"{path}: {key}: --num-gpus={options['--num-gpus']!r} is not an integer") from None
    return resources
