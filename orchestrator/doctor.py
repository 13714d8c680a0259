"""``maspo doctor --address/--cluster``: a preflight of a Ray cluster before the first trial of a study.

What fails hours into a multi-week study is checked in a minute, on every node, by Ray tasks pinned to each
node (``NodeAffinitySchedulingStrategy(soft=False)``):

- **versions** (every node): verl, vLLM, torch, Ray and maspo as the node's interpreter sees them (the
  installed distributions' metadata, which is what ``pip`` installed there; maspo with a hash of its source,
  so two checkouts of one version differ) against this machine's, the driver's;
- **verl_slot** (GPU nodes: nodes declaring GPUs or a ``verl_slot``): the node declares the slot, and 8 GPUs
  per slot;
- **storage** (every node): the experiment root and the checkpoint root are shared: a file written by a task on
  one node is read by a task on another node and by this machine, and the reverse; the prepared data files
  are on every node with the sizes they have here;
- **model** (GPU nodes): a local model directory exists there (with ``config.json``); a Hub id is well formed,
  and either in the node's Hub cache or fetched at first use (a node with ``HF_HUB_OFFLINE=1`` needs the cache);
- **W&B** (every node, as verl's W&B logger runs in its TaskRunner, which may land on any node): when trials
  log online (this machine has credentials or ``WANDB_MODE=online``), the node has credentials of its own
  (``WANDB_API_KEY`` or a netrc entry for the W&B host); with ``wandb_auth``, W&B's API accepts them (a network
  call from the node). The key is never read into a result, printed or returned;
- **CUDA** (GPU nodes, the full doctor only): a task holding the node's declared GPUs imports torch, sees CUDA
  and at least that many GPUs, puts a tensor on each and all-reduces them with NCCL (``torch.cuda.nccl``, one
  process, every GPU of the node); and vLLM is installed. A node declaring GPUs without CUDA fails: on a real
  cluster that node would fail every trial (a fake-GPU test cluster reports exactly that).

The cheap part (versions, verl_slot, storage, data) runs before every ``maspo sweep``/``compare``/``resume`` on
an existing cluster (:func:`check_cluster`): a failure refuses the launch with one line, before anything is
written. The version of a node is what its interpreter reports, with no override for tests: a test gives one
node a different verl by putting a distribution's metadata (``verl-<v>.dist-info``) first on that node's
``PYTHONPATH``, as a second installation would.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from orchestrator.errors import UserError

PACKAGES = ("verl", "vllm", "torch", "ray", "maspo")
SLOT_RESOURCE = "verl_slot"  # = orchestrator.tune_runner.SLOT_RESOURCE (that module imports Ray Tune)
GPUS_PER_SLOT = 8
PROBE_PREFIX = ".maspo-doctor-"
HEAD_MARK = "node:__internal_head__"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

FIX_VERSIONS = ("install the same versions on every node as here: the same `maspo[gpu]` spec and flash-attn step "
                "(cluster/README.md), then restart Ray on the node")
FIX_SLOT = ("start the node with --resources='{\"verl_slot\": 1}' per 8 GPUs (cloud YAMLs: the node type's "
            "`resources`; cluster/README.md)")
FIX_STORAGE = ("mount {path} on shared storage (NFS, Lustre, ...) at the same path on every node and on this "
               "machine: trial controllers, verl and `maspo results` read each other's files there")
FIX_DATA = ("run `maspo data prepare --out {path}` once onto shared storage that every node mounts at that path")
FIX_MODEL_PATH = "put the model directory on storage every GPU node mounts at {path}, or give a Hub id"
FIX_WANDB = ("put W&B credentials on every node: the cluster YAMLs' file_mounts copy ~/.maspo/wandb.netrc (Slurm: "
             "the shared home's ~/.netrc); see docs/orchestration.md#wandb-on-a-cluster. Without them the node's "
             "trials log offline and `maspo sync` uploads them later")
FIX_CUDA = ("install an NVIDIA driver >= 580 and the CUDA build of torch on the node (cluster/README.md), or start "
            "Ray there without --num-gpus if it has no GPUs")
FIX_PROBE = "install maspo on the node (cluster/README.md) and check that its raylet is alive (`ray status`)"


@dataclass
class Check:
    """One row of the doctor's table: a check on one node (or on the cluster), its result and the fix."""

    check: str
    where: str
    ok: Optional[bool]  # None: skipped (not applicable)
    result: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.ok is False


@dataclass(frozen=True)
class Targets:
    """What the cluster is checked for: where experiments, checkpoints, data and the model are."""

    root: Path
    checkpoint_root: Optional[Path] = None
    data_files: tuple[Path, ...] = ()
    data_dir: Optional[Path] = None
    model: Optional[str] = None
    wandb_online: bool = False
    nodes_per_trial: int = 1

    @classmethod
    def of_profile(cls, profile, root: Path, nodes_per_trial: int = 1,
                   environ: Optional[dict[str, str]] = None) -> "Targets":
        """The targets of a trial profile (the a100 profile's shared paths; the local profile's root only)."""
        online = job_wandb_online(environ)
        if getattr(profile, "name", None) != "a100":
            return cls(root=_abs(root), wandb_online=online, nodes_per_trial=nodes_per_trial)
        from orchestrator.scales import data_files

        train, vals = data_files(profile)
        return cls(root=_abs(root), checkpoint_root=_abs(Path(profile.checkpoint_root).expanduser()),
                   data_files=(train, *vals), data_dir=_abs(Path(profile.data_dir).expanduser()),
                   model=profile.model_path, wandb_online=online, nodes_per_trial=nodes_per_trial)


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def job_wandb_online(environ: Optional[dict[str, str]] = None) -> bool:
    """Whether a trial's job would log online (``orchestrator.tracking.wandb_env``'s rule)."""
    from orchestrator.tracking import has_credentials

    environ = os.environ if environ is None else environ
    mode = environ.get("WANDB_MODE") or ("online" if has_credentials(environ) else "offline")
    return mode.strip().lower() not in ("offline", "disabled", "dryrun")


# --------------------------------------------------------------------------------------------------------
# what runs on a node (Ray tasks; also called here, for the driver's own view)


def installed_versions() -> dict[str, str]:
    """The versions of :data:`PACKAGES` this interpreter sees ("-" when not installed); maspo with its source hash."""
    import importlib.metadata as metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    out["maspo"] = f"{out['maspo']} (source {source_hash()})"
    return out


def source_hash() -> str:
    """A hash of maspo's Python source as imported here (two checkouts of one version number differ)."""
    import orchestrator

    digest = hashlib.sha256()
    package = Path(orchestrator.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _probe_file(directory: str, run: str, who: str) -> Path:
    return Path(directory) / f"{PROBE_PREFIX}{run}-{who}"


def _content(run: str, who: str) -> str:
    return f"maspo doctor {run} written by {who} on {socket.gethostname()}\n"


def write_probe(directories: Iterable[str], run: str, who: str) -> dict[str, str]:
    """Write this node's probe file into each directory; ``{dir: ""}`` on success, else the error."""
    out = {}
    for directory in directories:
        path = _probe_file(directory, run, who)
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(_content(run, who))
            os.replace(tmp, path)
            out[directory] = ""
        except OSError as err:
            out[directory] = f"cannot write {path}: {err.strerror or err}"
    return out


def read_probe(directories: Iterable[str], run: str, who: str) -> dict[str, str]:
    """Read the probe file ``who`` wrote into each directory; ``{dir: ""}`` when it reads back as written."""
    out = {}
    for directory in directories:
        path = _probe_file(directory, run, who)
        try:
            text = path.read_text()
        except FileNotFoundError:
            out[directory] = "not there"
            continue
        except OSError as err:
            out[directory] = f"cannot read: {err.strerror or err}"
            continue
        out[directory] = "" if text.startswith(f"maspo doctor {run} written by {who} ") else "other content"
    return out


def remove_probe(directories: Iterable[str], run: str, who: str) -> None:
    for directory in directories:
        for path in (_probe_file(directory, run, who), _probe_file(directory, run, who + ".tmp")):
            try:
                path.unlink()
            except OSError:
                pass


def node_facts(directories: list[str], run: str, who: str, data_files: list[str], model: Optional[str]) -> dict:
    """Round 1 on a node: versions, W&B credentials (present or not), data files, the model, and the probe write."""
    import platform

    from orchestrator.tracking import has_credentials, wandb_host

    data = {}
    for name in data_files:
        try:
            data[name] = os.stat(name).st_size
        except OSError:
            data[name] = None
    return {"host": socket.gethostname(), "python": platform.python_version(), "versions": installed_versions(),
            "wandb_credentials": has_credentials(), "wandb_host": wandb_host(),
            "data": data, "model": model_facts(model), "wrote": write_probe(directories, run, who)}


def model_facts(model: Optional[str]) -> dict:
    """Whether ``model`` resolves here: a local directory with ``config.json``, or a Hub id (cached or not)."""
    if not model:
        return {}
    path = Path(model).expanduser()
    if model.startswith(("/", "~", ".")) or path.exists():
        return {"kind": "path", "ok": (path / "config.json").is_file(), "exists": path.exists()}
    if not _HUB_ID.match(model):
        return {"kind": "invalid"}
    cached = False
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # noqa: BLE001 (an old or missing huggingface_hub: "not cached" is the honest answer)
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
    return {"kind": "hub", "cached": cached, "offline": offline}


def node_reads(directories: list[str], run: str, others: list[str]) -> dict[str, dict[str, str]]:
    """Round 2 on a node: read the probe files the other writers (a node, the driver) wrote."""
    return {who: read_probe(directories, run, who) for who in others}


def wandb_authenticates(timeout_s: float) -> str:
    """Ask W&B's API who the node's credentials belong to; "" when accepted, else why not (never the key)."""
    try:
        import wandb

        api = wandb.Api(timeout=int(timeout_s))
        viewer = api.viewer
        return "" if viewer is not None else "W&B answered without a user"
    except Exception as err:  # noqa: BLE001 (any failure is the answer; the message never holds the key)
        return _redact(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def _redact(text: str) -> str:
    key = os.environ.get("WANDB_API_KEY", "").strip()
    return text.replace(key, "<redacted>") if key else text


def gpu_facts(declared: int) -> dict:
    """Holding the node's declared GPUs: CUDA, the GPUs, one NCCL all-reduce over all of them, vLLM installed."""
    import importlib.util

    out: dict = {"vllm": importlib.util.find_spec("vllm") is not None}
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        out["error"] = f"import torch failed: {type(err).__name__}: {err}"
        return out
    out.update(torch=torch.__version__, cuda_build=torch.version.cuda, available=torch.cuda.is_available())
    if not out["available"]:
        return out
    try:
        count = torch.cuda.device_count()
        out["count"] = count
        out["names"] = sorted({torch.cuda.get_device_name(i) for i in range(count)})
        tensors = [torch.full((1024,), float(i + 1), device=f"cuda:{i}") for i in range(count)]
        version = torch.cuda.nccl.version()
        out["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        torch.cuda.nccl.all_reduce(tensors)
        torch.cuda.synchronize()
        want = count * (count + 1) / 2
        bad = [i for i, t in enumerate(tensors) if not torch.all(t == want).item()]
        out["nccl"] = "" if not bad else f"all-reduce gave wrong sums on GPU(s) {bad}"
    except Exception as err:  # noqa: BLE001
        out["nccl"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return out


# --------------------------------------------------------------------------------------------------------
# the cluster's nodes


@dataclass
class Node:
    node_id: str
    address: str
    resources: dict
    head: bool
    label: str = ""
    facts: dict = field(default_factory=dict)
    error: str = ""  # the probe did not answer or raised

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))

    @property
    def slots(self) -> int:
        return int(self.resources.get(SLOT_RESOURCE, 0))

    @property
    def is_gpu_node(self) -> bool:
        return self.gpus > 0 or self.slots > 0


def cluster_nodes() -> list[Node]:
    import ray

    nodes = [Node(n["NodeID"], n.get("NodeManagerAddress", "?"), dict(n.get("Resources", {})),
                  HEAD_MARK in n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda n: (not n.head, n.address, n.node_id))
    for node in nodes:
        kind = "head" if node.head else ("GPU node" if node.is_gpu_node else "CPU node")
        node.label = f"{node.address} {node.node_id[:6]} ({kind})"
    return nodes


def _pinned(function, node: Node, **options):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(function) if not hasattr(function, "remote") else function
    return remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                          max_retries=0, **{"num_cpus": 0, **options})


def _gather(calls: dict[str, object], timeout_s: float) -> dict[str, tuple[object, str]]:
    """``{key: ObjectRef}`` -> ``{key: (value, error)}``; a call unanswered after ``timeout_s`` is cancelled."""
    import ray

    refs = list(calls.values())
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    done = set(ready)
    out = {}
    for key, ref in calls.items():
        if ref not in done:
            ray.cancel(ref, force=True)
            out[key] = (None, f"no answer in {timeout_s:.0f} s")
            continue
        try:
            out[key] = (ray.get(ref), "")
        except Exception as err:  # noqa: BLE001 (a task that raised: its first line is the answer)
            cause = getattr(err, "cause", None) or err
            text = str(cause).strip().splitlines()
            out[key] = (None, f"{type(cause).__name__}: {text[-1] if text else ''}")
    return out


# --------------------------------------------------------------------------------------------------------
# the checks


def probe_dirs(targets: Targets) -> dict[str, Path]:
    """The shared directories to probe, each as the directory itself or, if not there yet, its nearest parent."""
    wanted = {"experiment root": targets.root}
    if targets.checkpoint_root is not None:
        wanted["checkpoint root"] = targets.checkpoint_root
    out = {}
    for what, path in wanted.items():
        probe = path
        while not probe.is_dir() and probe != probe.parent:
            probe = probe.parent
        out[what] = probe
    return out


def run_checks(targets: Targets, *, full: bool, gpus: bool = True, timeout_s: float = 120.0,
               wandb_auth: bool = False) -> list[Check]:
    """The doctor's checks on the connected Ray cluster (``ray.init`` done by the caller).

    ``full=False``: the cheap part (versions, verl_slot, storage, data); ``full=True`` adds the model and W&B,
    and with ``gpus`` the GPUs (CUDA, NCCL, vLLM), which hold each node's GPUs for a moment.
    """
    nodes = cluster_nodes()
    checks = [_slot_summary(nodes, targets)]
    gpu_nodes = [n for n in nodes if n.is_gpu_node]
    for node in gpu_nodes:
        checks.append(_slot_check(node))
    run = uuid.uuid4().hex[:10]
    dirs = probe_dirs(targets)
    dir_names = [str(d) for d in dirs.values()]
    expected = installed_versions()
    mine = write_probe(dir_names, run, "driver")
    checks += driver_storage_checks(dirs, targets, mine)
    try:
        answers = _gather({n.node_id: _pinned(node_facts, n).remote(
            dir_names, run, n.node_id, [str(f) for f in targets.data_files], targets.model if full else None)
            for n in nodes}, timeout_s)
        for node in nodes:
            node.facts, node.error = answers[node.node_id]
            node.facts = node.facts or {}
        alive = [n for n in nodes if not n.error]
        readers = {}
        for i, node in enumerate(alive):
            others = ["driver"] + ([alive[(i + 1) % len(alive)].node_id] if len(alive) > 1 else [])
            readers[node.node_id] = (others, _pinned(node_reads, node).remote(dir_names, run, others))
        reads = _gather({k: ref for k, (_, ref) in readers.items()}, timeout_s)
        driver_reads = {n.node_id: read_probe(dir_names, run, n.node_id) for n in alive}
    finally:
        cleanup = {n.node_id: _pinned(remove_probe, n).remote(dir_names, run, n.node_id) for n in nodes
                   if not n.error}
        _gather(cleanup, timeout_s)
        remove_probe(dir_names, run, "driver")
        for n in nodes:  # what a node could not remove itself (the driver sees the same directory)
            remove_probe(dir_names, run, n.node_id)
    for node in nodes:
        if node.error:
            checks.append(Check("probe", node.label, False, f"the task on this node failed: {node.error}",
                                FIX_PROBE))
            continue
        checks.append(_version_check(node, expected))
        checks.extend(_storage_checks(node, dirs, mine, readers, reads, driver_reads, alive))
        if targets.data_files:
            checks.append(_data_check(node, targets))
    if full:
        for node in nodes:
            if node.error:
                continue
            if node.is_gpu_node and targets.model:
                checks.append(_model_check(node, targets.model))
            checks.append(_wandb_check(node, targets))
        if wandb_auth and targets.wandb_online:
            checks.extend(_wandb_auth_checks([n for n in nodes if not n.error and n.facts.get("wandb_credentials")],
                                             timeout_s))
        if gpus:
            checks.extend(_gpu_checks([n for n in gpu_nodes if not n.error], timeout_s))
    return checks


def _slot_summary(nodes: list[Node], targets: Targets) -> Check:
    slotted = [n for n in nodes if n.slots >= 1]
    total = sum(n.slots for n in slotted)
    text = f"{total} {SLOT_RESOURCE}(s) on {len(slotted)} of {len(nodes)} node(s)"
    if not slotted:
        return Check("verl_slot", "cluster", False, f"{text}: no trial can start", FIX_SLOT)
    if len(slotted) < targets.nodes_per_trial:
        return Check("verl_slot", "cluster", False,
                     f"{text}: a trial spans {targets.nodes_per_trial} nodes, one slot on each", FIX_SLOT)
    return Check("verl_slot", "cluster", True, text)


def _slot_check(node: Node) -> Check:
    if node.slots < 1:
        return Check("verl_slot", node.label, False,
                     f"declares {node.gpus} GPU(s) but no {SLOT_RESOURCE}: no trial is ever placed here", FIX_SLOT)
    if node.gpus < GPUS_PER_SLOT * node.slots:
        return Check("verl_slot", node.label, False,
                     f"declares {node.slots} {SLOT_RESOURCE}(s) but {node.gpus} GPU(s); a slot is 8 GPUs "
                     f"(one trial's verl run)", FIX_SLOT)
    return Check("verl_slot", node.label, True, f"{node.slots} slot(s), {node.gpus} GPUs")


def _version_check(node: Node, expected: dict[str, str]) -> Check:
    versions = node.facts.get("versions", {})
    wrong = [f"{name} {versions.get(name, '?')} (here {want})" for name, want in expected.items()
             if versions.get(name) != want]
    if wrong:
        return Check("versions", node.label, False, "differs from this machine: " + "; ".join(wrong), FIX_VERSIONS)
    return Check("versions", node.label, True, ", ".join(f"{k} {v}" for k, v in expected.items()))


def _storage_checks(node: Node, dirs: dict[str, Path], mine: dict[str, str], readers, reads, driver_reads,
                    alive: list[Node]) -> list[Check]:
    out = []
    wrote = node.facts.get("wrote", {})
    others, _ = readers.get(node.node_id, ([], None))
    got, read_error = reads.get(node.node_id, ({}, "not asked"))
    got = got or {}
    # who reads this node's file: the node before it in the ring
    reader = next((n for n in alive if node.node_id in readers.get(n.node_id, ([], None))[0]), None)
    for what, path in dirs.items():
        d = str(path)
        problems = []
        if wrote.get(d):
            problems.append(wrote[d])
        else:
            if driver_reads.get(node.node_id, {}).get(d):
                problems.append(f"this machine does not see its file ({driver_reads[node.node_id][d]})")
            if reader is not None and reader is not node:
                seen, err = reads.get(reader.node_id, ({}, ""))
                verdict = err or (seen or {}).get(node.node_id, {}).get(d, "")
                if verdict:
                    problems.append(f"node {reader.label} does not see its file ({verdict})")
        if read_error:
            problems.append(f"reading the others' files failed: {read_error}")
        else:
            for who in others:
                verdict = got.get(who, {}).get(d, "")
                if who == "driver" and mine.get(d):
                    continue  # this machine could not write: reported on the driver's row
                if verdict:
                    name = "this machine's" if who == "driver" else f"node {_label_of(who, alive)}'s"
                    problems.append(f"does not see {name} file ({verdict})")
        if problems:
            out.append(Check(f"storage: {what}", node.label, False, f"{path}: " + "; ".join(problems),
                             FIX_STORAGE.format(path=path)))
        else:
            out.append(Check(f"storage: {what}", node.label, True,
                             f"{path}: writes, and reads what another node and this machine wrote"))
    return out


def _label_of(node_id: str, nodes: list[Node]) -> str:
    return next((n.label for n in nodes if n.node_id == node_id), node_id[:6])


def driver_storage_checks(dirs: dict[str, Path], targets: Targets, wrote: dict[str, str]) -> list[Check]:
    """This machine wrote its probe file into each shared directory (the nodes' rows say whether they read it)."""
    out = []
    for what, path in dirs.items():
        wanted = targets.root if what == "experiment root" else targets.checkpoint_root
        note = "" if path == wanted else f" (not there yet: probed {path}, its nearest existing parent)"
        error = wrote.get(str(path), "")
        out.append(Check(f"storage: {what}", "this machine", not error, f"{wanted}{note}" + (f": {error}" if error
                         else ": writes; every node's row says whether it reads this file"),
                         FIX_STORAGE.format(path=wanted) if error else ""))
    return out


def _data_check(node: Node, targets: Targets) -> Check:
    sizes = node.facts.get("data", {})
    missing, differ = [], []
    for path in targets.data_files:
        theirs = sizes.get(str(path))
        try:
            here = path.stat().st_size
        except OSError:
            here = None
        if theirs is None:
            missing.append(path.name)
        elif here is not None and theirs != here:
            differ.append(f"{path.name} ({theirs} bytes, here {here})")
    if missing or differ:
        text = (f"{len(missing)} of {len(targets.data_files)} file(s) missing in {targets.data_dir}, e.g. "
                f"{missing[0]}" if missing else "") + ("; " if missing and differ else "") + \
               ("other sizes than here: " + ", ".join(differ[:3]) if differ else "")
        return Check("data", node.label, False, text, FIX_DATA.format(path=targets.data_dir))
    return Check("data", node.label, True, f"{len(targets.data_files)} prepared file(s) in {targets.data_dir}, "
                                           f"sizes as here")


def _model_check(node: Node, model: str) -> Check:
    facts = node.facts.get("model", {})
    kind = facts.get("kind")
    if kind == "path":
        if facts.get("ok"):
            return Check("model", node.label, True, f"{model}: a local model directory")
        why = "no config.json in it" if facts.get("exists") else "does not exist here"
        return Check("model", node.label, False, f"{model}: {why}", FIX_MODEL_PATH.format(path=model))
    if kind == "invalid":
        return Check("model", node.label, False, f"{model!r} is neither a directory nor a Hub id (ORG/NAME)",
                     "give -P model_path=ORG/NAME or a directory every GPU node mounts")
    if facts.get("cached"):
        return Check("model", node.label, True, f"{model}: in this node's Hugging Face cache")
    if facts.get("offline"):
        return Check("model", node.label, False, f"{model}: not in the Hub cache and HF_HUB_OFFLINE is set",
                     "download it into the node's cache (`huggingface-cli download ...`) or give a local directory")
    return Check("model", node.label, True,
                 f"{model}: a Hub id, not cached here: downloaded at the first trial (needs Hub access)")


def _wandb_check(node: Node, targets: Targets) -> Check:
    present = node.facts.get("wandb_credentials")
    host = node.facts.get("wandb_host", "api.wandb.ai")
    if not targets.wandb_online:
        return Check("W&B credentials", node.label, None,
                     "trials log offline (this machine has no W&B credentials, or WANDB_MODE says so): "
                     "`maspo sync` uploads them")
    if present:
        return Check("W&B credentials", node.label, True, f"present for {host} (not shown)")
    return Check("W&B credentials", node.label, False,
                 f"none for {host} (no WANDB_API_KEY, no netrc entry): trials whose W&B logger runs here log "
                 f"offline", FIX_WANDB)


def _wandb_auth_checks(nodes: list[Node], timeout_s: float) -> list[Check]:
    answers = _gather({n.node_id: _pinned(wandb_authenticates, n).remote(min(timeout_s, 30.0)) for n in nodes},
                      timeout_s)
    out = []
    for node in nodes:
        value, error = answers[node.node_id]
        why = error or value
        out.append(Check("W&B login", node.label, not why,
                         f"W&B rejected or could not be reached: {why}" if why else "W&B accepts this node's key",
                         FIX_WANDB if why else ""))
    return out


def _gpu_checks(nodes: list[Node], timeout_s: float) -> list[Check]:
    calls = {n.node_id: _pinned(gpu_facts, n, num_gpus=n.gpus).remote(n.gpus) for n in nodes if n.gpus > 0}
    answers = _gather(calls, timeout_s)
    out = []
    for node in nodes:
        if node.gpus == 0:
            out.append(Check("CUDA", node.label, False, f"declares {node.slots} {SLOT_RESOURCE} but no GPU",
                             FIX_SLOT))
            continue
        facts, error = answers[node.node_id]
        if error:
            out.append(Check("CUDA", node.label, False, f"the GPU task (holding {node.gpus} GPUs) failed: {error}; "
                             f"are the GPUs held by running jobs?", "run doctor while no trial runs, or raise "
                             "--timeout; " + FIX_PROBE))
            continue
        out.extend(_gpu_rows(node, facts))
    return out


def _gpu_rows(node: Node, facts: dict) -> list[Check]:
    rows = []
    if facts.get("error") or not facts.get("available"):
        why = facts.get("error") or (f"no CUDA: torch {facts.get('torch')} (CUDA build: "
                                     f"{facts.get('cuda_build') or 'none, a CPU build'}) sees no GPU, but the node "
                                     f"declares {node.gpus}")
        rows.append(Check("CUDA", node.label, False, why, FIX_CUDA))
        rows.append(Check("NCCL", node.label, None, "not tried: no CUDA"))
    else:
        count = facts.get("count", 0)
        names = ", ".join(facts.get("names", []))
        if count < node.gpus:
            rows.append(Check("CUDA", node.label, False, f"torch sees {count} GPU(s), the node declares {node.gpus}",
                              FIX_CUDA))
        else:
            rows.append(Check("CUDA", node.label, True, f"{count} x {names}, torch {facts.get('torch')} "
                                                        f"(CUDA {facts.get('cuda_build')})"))
        if facts.get("nccl"):
            rows.append(Check("NCCL", node.label, False, f"NCCL {facts.get('nccl_version', '?')}: {facts['nccl']}",
                              "check the NCCL library of torch's CUDA build and the node's driver"))
        else:
            rows.append(Check("NCCL", node.label, True, f"NCCL {facts.get('nccl_version')}: an all-reduce over "
                                                        f"{count} GPU(s) gave the right sums"))
    rows.append(Check("vLLM", node.label, bool(facts.get("vllm")),
                      "installed" if facts.get("vllm") else "not installed: the a100 profile's rollout needs it",
                      "" if facts.get("vllm") else FIX_VERSIONS))
    return rows


# --------------------------------------------------------------------------------------------------------
# connecting, and the preflight of sweep / compare / resume


def connect(address: str) -> None:
    import ray

    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as err:
        raise UserError(f"cannot reach the Ray cluster at {address}: {str(err).splitlines()[0]}") from None


def doctor(address: str, targets: Targets, *, full: bool = True, gpus: bool = True, timeout_s: float = 120.0,
           wandb_auth: bool = False) -> list[Check]:
    """Connect to the cluster at ``address``, run the checks, disconnect."""
    import ray

    started = time.monotonic()
    connect(address)
    try:
        checks = run_checks(targets, full=full, gpus=gpus, timeout_s=timeout_s, wandb_auth=wandb_auth)
    finally:
        ray.shutdown()
    checks.append(Check("took", "", None, f"{time.monotonic() - started:.1f} s"))
    return checks


def check_cluster(plan, address: str, root: Path, timeout_s: float = 120.0) -> list[Check]:
    """The cheap preflight of a launch on an existing cluster: a UserError (one line) on the first failure.

    The slots the plan needs (the widest trial's nodes) first, then versions, verl_slot, storage and data on
    every node. Nothing is written but the probe files, which are removed.
    """
    import ray

    from orchestrator.tune_runner import check_slots, slot_nodes

    profile = plan.trials[0].trial.profile
    targets = Targets.of_profile(profile, root, nodes_per_trial=max(plan.nodes_of(t) for t in plan.trials))
    connect(address)
    try:
        check_slots(plan, slot_nodes(), address)
        checks = run_checks(targets, full=False, timeout_s=timeout_s)
    finally:
        ray.shutdown()
    failed = [c for c in checks if c.failed]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise UserError(f"cluster preflight failed{more}: {first.check} on {first.where}: {first.result}; fix: "
                        f"{first.fix}; the whole table: maspo doctor --address {address}")
    return checks


def grouped(checks: list[Check]) -> list[tuple[Check, list[str]]]:
    """Rows that say the same on several nodes become one row naming the nodes (30 nodes, not 300 rows)."""
    out: dict[tuple, tuple[Check, list[str]]] = {}
    for c in checks:
        key = (c.check, c.ok, c.result, c.fix)
        if key in out:
            out[key][1].append(c.where)
        else:
            out[key] = (c, [c.where])
    return list(out.values())
