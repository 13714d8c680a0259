"""A stand-in for verl's ``main_ppo`` in orchestration tests: it takes GPUs the way verl does and logs like verl.

verl builds its own placement groups, ONE PER NODE: ``STRICT_PACK`` groups of ``{"GPU": 1}`` bundles (8 per node
here), and waits for them with no timeout; this stand-in does the same with a timeout, so a trial that started
while its GPUs were taken fails (exit 3) instead of hanging. (verl's bundles also carry 3 CPUs each; the fake
nodes of the tests have fewer CPUs than that, so the stand-in asks for GPUs only.) It writes verl's JSONL records
(``{"step": s, "data": {...}}``) to ``$VERL_FILE_LOGGER_PATH`` and a ledger (the nodes of its GPU groups, start
and end times) beside them for the test to check. It imports Ray and nothing heavier (no torch, no verl).

With ``STANDIN_RENDEZVOUS`` (a directory shared by all the jobs of a test) the first jobs wait, GPUs held, until
two of them hold their GPUs at the same time, then write ``met`` there and go on; a job that waits longer than
``STANDIN_RENDEZVOUS_S`` (default 300) for a second one fails (exit 4). Later jobs see ``met`` and do not wait.
So a test can require that the cluster ran two trials in parallel without counting on the timing of the jobs.
If the directory has a subdirectory named like the job's experiment, that one is used, and a file ``need`` in it
sets how many jobs must meet (default 2): tests sharing one cluster keep their rendezvous apart.

Run time: ``STANDIN_SECONDS`` for every trial, or, with ``STANDIN_SECONDS_PER_HOUR`` (the benchmark's time
compression), the trial's estimated wall hours on the a100 profile (:func:`orchestrator.scales.estimate_cost`)
times that, times a per-trial log-normal factor (``STANDIN_NOISE``, its sigma; ``STANDIN_NOISE_SEED``).
Quality: validation Avg@k grows as ``final * (1 - exp(-3 t))`` over the run's fraction t, with
``STANDIN_FINAL_BY_LABEL`` (JSON, label -> final value) and ``STANDIN_CURVE_NOISE`` (Gaussian, per validation);
otherwise it is linear in the step at ``STANDIN_QUALITY_BASE / (1 + seed)`` per step. Validations are logged every
``test_freq`` steps (and at step 0 and the last step) with ``STANDIN_VALIDATE_AT_TEST_FREQ``, else every step.

Faults (tests/test_faults_cluster.py): with ``STANDIN_CHECKPOINTS`` the job checkpoints like verl (every
``test_freq`` steps and at the last, into the trial's checkpoint directory, in verl's FSDP layout and order, the
newest two kept) and resumes like verl's ``resume_mode=auto`` (the tracker's checkpoint, loaded: a file cut off
fails the job, as ``torch.load`` would). With ``STANDIN_WORKERS`` it runs one actor in each GPU group and calls it
every step, as verl's driver calls its workers, so a node that dies under it fails the job.
``STANDIN_GPUS_ON_SLOT_NODES`` puts its GPU groups on the nodes of the trial's ``verl_slot``s (a soft hint), so
that one node holds a trial's controller and its GPUs. ``STANDIN_PAUSE`` (JSON, trial -> step) holds a trial's
first attempt after it logged that step until a file ``release`` (or ``release-<trial>``) appears in the
experiment directory (at most ``STANDIN_PAUSE_S``, default 300), and writes ``paused.json`` (step, GPU nodes)
beside its ledger meanwhile.
``STANDIN_ENTRYPOINT_RESOURCES`` (JSON) is what the job's entrypoint asks Ray for.
With ``STANDIN_EXCLUSIVE`` it holds an exclusive ``flock`` on ``<checkpoint dir>/.writer``
for its whole run (the kernel drops it when the process dies); a job that finds it taken, i.e. a second run of the
trial writing the same checkpoint directory while the first is alive, writes ``overlap-<attempt>`` into the
trial's directory and exits 5.

The ``STANDIN_*`` settings come from the environment of the Ray nodes (the trial controllers render the job), and
an experiment directory's ``standin.json`` (name -> value) overrides them for that experiment only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import zipfile
from pathlib import Path


CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"


def _archive(path: Path, payload: str) -> None:
    """A small zip archive, the container ``torch.save`` writes (its directory at the end)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


def save_checkpoint(root: Path, step: int, world_size: int = 1, keep: int | None = 2,
                    saved: list[int] | None = None) -> None:
    """verl's ``_save_checkpoint`` for an FSDP actor, in its order: retention, the shards of every rank,
    ``fsdp_config.json`` (rank 0), ``data.pt``, and last the tracker file, written in place.

    Retention as verl's ``ensure_checkpoint_capacity``: of the checkpoints saved by this run (``saved``; verl
    keeps the list in memory, so a restarted run never removes older ones), keep ``keep``-1 before saving, and
    remove only their ``actor/``."""
    step_dir = root / f"global_step_{step}"
    actor = step_dir / "actor"
    if keep and saved is not None:
        while len(saved) >= keep:
            shutil.rmtree(root / f"global_step_{saved.pop(0)}" / "actor", ignore_errors=True)
        saved.append(step)
    actor.mkdir(parents=True, exist_ok=True)
    for rank in range(world_size):
        for kind in ("model", "optim", "extra_state"):
            _archive(actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt", f"{kind} of step {step}, rank {rank}")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": world_size}))
    _archive(step_dir / "data.pt", f"dataloader after step {step}")
    (root / CHECKPOINT_TRACKER).write_text(str(step))


def load_checkpoint(root: Path, world_size: int = 1) -> int:
    """verl's ``resume_mode=auto``: the step its tracker names, loaded (0: from scratch).

    Like verl, it trusts the tracker; a shard that is missing or cut off raises (``torch.load`` would)."""
    try:
        step = int((root / CHECKPOINT_TRACKER).read_bytes().decode())
    except FileNotFoundError:
        return 0
    step_dir = root / f"global_step_{step}"
    if not step_dir.exists():
        return 0
    for rank in range(world_size):
        for kind in ("model", "optim", "extra_state"):
            with zipfile.ZipFile(step_dir / "actor" / f"{kind}_world_size_{world_size}_rank_{rank}.pt") as z:
                z.read("archive/data.pkl")
    if (step_dir / "data.pt").exists():
        with zipfile.ZipFile(step_dir / "data.pt") as z:
            z.read("archive/data.pkl")
    return step


def settings(trial_dir: Path | None = None) -> dict[str, str]:
    """The ``STANDIN_*`` settings: the environment's, overridden by the experiment's ``standin.json``."""
    found = {k: v for k, v in os.environ.items() if k.startswith("STANDIN_")}
    if trial_dir is not None:
        override = Path(trial_dir).parent.parent / "standin.json"  # <experiment>/trials/<trial>
        if override.is_file():
            found.update({k: str(v) for k, v in json.loads(override.read_text()).items()})
    return found


def _noise_factor(name: str, env: dict[str, str]) -> float:
    sigma = float(env.get("STANDIN_NOISE", "0"))
    if not sigma:
        return 1.0
    seed = f"{env.get('STANDIN_NOISE_SEED', '0')}:{name}"
    rng = random.Random(int(hashlib.sha256(seed.encode()).hexdigest()[:12], 16))
    return math.exp(rng.gauss(0.0, sigma) - sigma * sigma / 2)  # mean 1


def seconds_of(planned, env: dict[str, str] | None = None) -> float:
    """The stand-in's run time for a trial (see the module docstring)."""
    from orchestrator.scales import A100Profile, estimate_cost

    env = settings() if env is None else env
    per_hour = env.get("STANDIN_SECONDS_PER_HOUR")
    if per_hour is None or not isinstance(planned.trial.profile, A100Profile):
        return float(env.get("STANDIN_SECONDS", "2"))
    return estimate_cost(planned.trial.profile).wall_hours * float(per_hour) * _noise_factor(planned.name, env)


def render(planned, plan, trial_dir: Path, attempt_dir: Path):
    """The renderer the trial controller calls instead of verl's (``renderer="tests.standin_job:render"``)."""
    from orchestrator.jobs import TrialJob
    from orchestrator.render import trial_checkpoint_dir
    from orchestrator.scales import gpus_of

    given = settings(trial_dir)
    nodes = planned.nodes
    gpus = 8 * nodes if given.get("STANDIN_A100") else gpus_of(planned.trial.profile)
    profile = planned.trial.profile
    quality = str(float(given.get("STANDIN_QUALITY_BASE", "0.1")) / (1 + planned.trial.seed))
    finals = json.loads(given.get("STANDIN_FINAL_BY_LABEL", "{}"))
    env = {"VERL_FILE_LOGGER_PATH": str(attempt_dir / "metrics.jsonl"), "STANDIN_GPUS": str(gpus),
           "STANDIN_NODES": str(nodes), "STANDIN_STEPS": str(profile.steps),
           "STANDIN_TEST_FREQ": str(profile.test_freq), "STANDIN_LEDGER": str(attempt_dir / "ledger.json"),
           "STANDIN_SECONDS": str(seconds_of(planned, given)), "STANDIN_QUALITY": quality,
           "STANDIN_CURVE_SEED": f"{planned.name}", "PYTHONPATH": str(Path(__file__).parents[1])}
    if given.get("STANDIN_CHECKPOINTS"):
        env["STANDIN_CHECKPOINT_DIR"] = str(trial_checkpoint_dir(planned, trial_dir))
    if planned.label in finals:
        env["STANDIN_FINAL"] = str(finals[planned.label])
    for name in ("STANDIN_RENDEZVOUS", "STANDIN_RENDEZVOUS_S", "STANDIN_CURVE_NOISE", "STANDIN_VALIDATE_AT_TEST_FREQ",
                 "STANDIN_GPU_WAIT_S", "STANDIN_WORKERS", "STANDIN_GPUS_ON_SLOT_NODES", "STANDIN_PAUSE",
                 "STANDIN_PAUSE_S", "STANDIN_EXCLUSIVE"):
        if name in given:
            env[name] = given[name]
    if given.get("STANDIN_CHECKPOINTS"):
        from orchestrator.render import trial_checkpoint_dir

        env["STANDIN_CHECKPOINT_DIR"] = str(trial_checkpoint_dir(planned, trial_dir))
    try:  # the cluster this controller runs in: Ray hands a job's driver the address named in its temp dir's
        import ray  # ray_current_cluster, which on a machine running several clusters may be another one's

        env["STANDIN_RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 (rendered outside Ray, e.g. a dry run)
        pass
    asks = json.loads(given["STANDIN_ENTRYPOINT_RESOURCES"]) if given.get("STANDIN_ENTRYPOINT_RESOURCES") else None
    return TrialJob([], env, trial_dir, attempt_dir / "metrics.jsonl", module="tests.standin_job",
                    entrypoint_resources=asks)


def _meet(rendezvous: Path, me: str) -> bool:
    """Wait (at most ``STANDIN_RENDEZVOUS_S``) until enough jobs are in ``rendezvous`` at once; False if none came."""
    deadline = time.monotonic() + float(os.environ.get("STANDIN_RENDEZVOUS_S", "300"))
    need = int((rendezvous / "need").read_text()) if (rendezvous / "need").is_file() else 2
    (rendezvous / f"{me}.running").write_text(str(os.getpid()))
    while not (rendezvous / "met").exists():
        running = sorted(p.name.removesuffix(".running") for p in rendezvous.glob("*.running"))
        if len(running) >= need:
            tmp = rendezvous / f"met.{me}.tmp"
            tmp.write_text(json.dumps({"running": running, "by": me, "time": time.monotonic()}))
            os.replace(tmp, rendezvous / "met")
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _quality(step: int, steps: int, rng: random.Random) -> float:
    if "STANDIN_FINAL" in os.environ:
        final, noise = float(os.environ["STANDIN_FINAL"]), float(os.environ.get("STANDIN_CURVE_NOISE", "0"))
        return final * (1 - math.exp(-3 * step / max(1, steps))) + rng.gauss(0.0, noise)
    return float(os.environ["STANDIN_QUALITY"]) * step  # seed s learns at 1 / (1 + s) of seed 0's rate


def _slot_nodes(ledger: Path) -> list[str]:
    """The nodes of the trial's ``verl_slot``s, as its controller recorded them before it submitted this job."""
    try:
        return json.loads((ledger.parents[2] / "status.json").read_text())["attempts"][-1]["slot_nodes"]
    except (OSError, ValueError, KeyError, IndexError):
        return []


def _pause_step(ledger: Path) -> int | None:
    """The step after which this job holds (``STANDIN_PAUSE``: first attempts only), or None."""
    pauses = json.loads(os.environ.get("STANDIN_PAUSE") or "{}")
    if ledger.parent.name != "1":
        return None
    return pauses.get(ledger.parents[2].name)


def main() -> int:
    launched, launched_mono = time.time(), time.monotonic()  # the job's process is up (GPUs not yet taken)
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(address=os.environ.get("STANDIN_RAY_ADDRESS"))
    gpus, nodes, steps = int(os.environ["STANDIN_GPUS"]), int(os.environ.get("STANDIN_NODES", "1")), \
        int(os.environ["STANDIN_STEPS"])
    per_node = gpus // nodes
    ledger = Path(os.environ["STANDIN_LEDGER"])
    targets = _slot_nodes(ledger) if os.environ.get("STANDIN_GPUS_ON_SLOT_NODES") else []
    # like verl's RayResourcePool: one STRICT_PACK group per node, each asked for before any is waited on
    groups = [placement_group([{"GPU": 1}] * per_node, strategy="STRICT_PACK",
                              _soft_target_node_id=targets[i] if i < len(targets) else None) for i in range(nodes)]
    wait_s = float(os.environ.get("STANDIN_GPU_WAIT_S", "30"))
    if not all(pg.wait(timeout_seconds=wait_s) for pg in groups):
        print("GPUs were not free: the orchestrator oversubscribed them", file=sys.stderr)
        return 3
    start, start_mono = time.time(), time.monotonic()
    gpu_nodes = [ray.util.placement_group_table(pg)["bundles_to_node_id"][0] for pg in groups]
    workers = []
    if os.environ.get("STANDIN_WORKERS"):  # like verl's worker group: an actor on the GPUs, called every step

        @ray.remote(num_cpus=0, num_gpus=1, max_restarts=0)
        class Worker:
            def step(self, step: int) -> int:
                return step

        workers = [Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
                   for pg in groups]
        ray.get([w.step.remote(-1) for w in workers])
    me = f"{ledger.parents[2].name}-a{ledger.parent.name}"  # <trial>/attempts/<n>/ledger.json
    rendezvous = Path(os.environ["STANDIN_RENDEZVOUS"]) if os.environ.get("STANDIN_RENDEZVOUS") else None
    if rendezvous is not None and (rendezvous / ledger.parents[4].name).is_dir():
        rendezvous = rendezvous / ledger.parents[4].name  # <experiment>/trials/<trial>/attempts/<n>/ledger.json
    if rendezvous is not None and not _meet(rendezvous, me):
        print(f"no second job held its GPUs alongside {me} within {os.environ.get('STANDIN_RENDEZVOUS_S', '300')} s",
              file=sys.stderr)
        return 4
    checkpoints = Path(os.environ["STANDIN_CHECKPOINT_DIR"]) if os.environ.get("STANDIN_CHECKPOINT_DIR") else None
    first = load_checkpoint(checkpoints, gpus) if checkpoints else 0  # a broken checkpoint fails here, as in verl
    if first:
        print(f"Resuming from {checkpoints}/global_step_{first}", flush=True)
    saved: list[int] = []  # this run's checkpoints, for verl's retention
    pause = _pause_step(ledger)
    rng = random.Random(os.environ.get("STANDIN_CURVE_SEED", ""))
    test_freq = int(os.environ.get("STANDIN_TEST_FREQ", "1"))
    val_freq = test_freq if os.environ.get("STANDIN_VALIDATE_AT_TEST_FREQ") else 1
    seconds = float(os.environ["STANDIN_SECONDS"])
    checkpoints = Path(os.environ["STANDIN_CHECKPOINT_DIR"]) if os.environ.get("STANDIN_CHECKPOINT_DIR") else None
    if os.environ.get("STANDIN_EXCLUSIVE"):
        import fcntl

        writer_dir = checkpoints or ledger.parents[2] / "checkpoints"
        writer_dir.mkdir(parents=True, exist_ok=True)
        writer = open(writer_dir / ".writer", "a")  # kept open (and locked) until the process ends
        try:
            fcntl.flock(writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            (ledger.parents[2] / f"overlap-{ledger.parent.name}").write_text(str(os.getpid()))
            print(f"another run of this trial still writes {writer_dir}", file=sys.stderr)
            return 5
    first = 0
    if checkpoints is not None:
        try:
            first = int((checkpoints / "latest_checkpointed_iteration.txt").read_text().strip())
        except (OSError, ValueError):
            first = 0
    paced_from = time.monotonic()  # after the rendezvous: the run time is the steps' own
    with open(os.environ["VERL_FILE_LOGGER_PATH"], "w") as log:
        for step in range(first, steps + 1):
            data = {}
            if step == first or step % val_freq == 0 or step == steps:
                q = _quality(step, steps, rng)
                data.update({"val-core/local_math500/acc/mean@4": q, "val-core/local_math500/acc/pass@4": 2 * q,
                             "val-core/average/acc/mean@4": q, "val-core/average/acc/pass@4": 2 * q})
            if step > first:  # a training step (verl validates again at the step it resumed from, nothing more)
                ray.get([w.step.remote(step) for w in workers])
                data["actor/entropy"] = 1.0 / step
                if checkpoints and (step % test_freq == 0 or step == steps):  # verl: saved before it is logged
                    save_checkpoint(checkpoints, step, gpus, saved=saved)
            log.write(json.dumps({"step": step, "data": data}) + "\n")
            log.flush()
            if step == pause:
                _hold(ledger, step, gpu_nodes, workers)
            # sleep to the step's planned end, so the run time holds however slow the machine is
            time.sleep(max(0.0, paced_from + seconds * (step - first + 1) / (steps + 1) - time.monotonic()))
    end, end_mono = time.time(), time.monotonic()
    if rendezvous is not None:
        (rendezvous / f"{me}.running").unlink()
    # *_mono: CLOCK_MONOTONIC, one clock for every process of the machine (unlike time.time, it never steps)
    ledger.write_text(json.dumps({"node": gpu_nodes[0], "nodes": gpu_nodes, "gpus": gpus, "start": start, "end": end,
                                  "launched": launched, "launched_mono": launched_mono, "start_mono": start_mono,
                                  "end_mono": end_mono, "planned_s": seconds, "first_step": first}))
    for pg in groups:
        remove_placement_group(pg)
    return 0


def _hold(ledger: Path, step: int, gpu_nodes: list[str], workers: list) -> None:
    """Wait, workers called all the while, until the experiment's ``release`` (every trial) or
    ``release-<trial>`` file appears (``STANDIN_PAUSE``)."""
    import ray

    (ledger.parent / "paused.json").write_text(json.dumps({"step": step, "nodes": gpu_nodes, "pid": os.getpid()}))
    releases = [ledger.parents[4] / "release", ledger.parents[4] / f"release-{ledger.parents[2].name}"]
    deadline = time.monotonic() + float(os.environ.get("STANDIN_PAUSE_S", "300"))
    while not any(r.exists() for r in releases):
        if time.monotonic() > deadline:
            raise SystemExit(f"held at step {step} for {os.environ.get('STANDIN_PAUSE_S', '300')} s: never released")
        ray.get([w.step.remote(step) for w in workers])  # a worker on a dead node raises here, as in verl
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
