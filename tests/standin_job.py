"""A stand-in for verl's ``main_ppo`` in orchestration tests: it takes GPUs the way verl does and logs like verl.

verl builds its own STRICT_PACK placement group of ``{"GPU": 1}`` bundles and waits for it with no timeout;
this stand-in does the same with a timeout, so a trial that started while its GPUs were taken fails
(exit 3) instead of hanging. It writes verl's JSONL records (``{"step": s, "data": {...}}``) to
``$VERL_FILE_LOGGER_PATH`` and a ledger (node, start and end times) beside them for the test to check.

With ``STANDIN_RENDEZVOUS`` (a directory shared by all the jobs of a test) the first jobs wait, GPUs held, until
two of them hold their GPUs at the same time, then write ``met`` there and go on; a job that waits longer than
``STANDIN_RENDEZVOUS_S`` (default 300) for a second one fails (exit 4). Later jobs see ``met`` and do not wait.
So a test can require that the cluster ran two trials in parallel without counting on the timing of the jobs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def render(planned, plan, trial_dir: Path, attempt_dir: Path):
    """The renderer the trial controller calls instead of verl's (``renderer="tests.standin_job:render"``)."""
    from orchestrator.jobs import TrialJob

    from orchestrator.scales import gpus_of

    gpus = 8 * plan.slots_per_trial if os.environ.get("STANDIN_A100") else gpus_of(planned.trial.profile)
    env = {"VERL_FILE_LOGGER_PATH": str(attempt_dir / "metrics.jsonl"), "STANDIN_GPUS": str(gpus),
           "STANDIN_STEPS": str(planned.trial.profile.steps), "STANDIN_LEDGER": str(attempt_dir / "ledger.json"),
           "STANDIN_SECONDS": os.environ.get("STANDIN_SECONDS", "2"),
           "STANDIN_QUALITY": str(float(os.environ.get("STANDIN_QUALITY_BASE", "0.1")) / (1 + planned.trial.seed)), "PYTHONPATH": str(Path(__file__).parents[1])}
    for name in ("STANDIN_RENDEZVOUS", "STANDIN_RENDEZVOUS_S"):
        if name in os.environ:
            env[name] = os.environ[name]
    return TrialJob([], env, trial_dir, attempt_dir / "metrics.jsonl", module="tests.standin_job")


def _meet(rendezvous: Path, me: str) -> bool:
    """Wait (at most ``STANDIN_RENDEZVOUS_S``) until two jobs are in ``rendezvous`` at once; False if none came."""
    deadline = time.monotonic() + float(os.environ.get("STANDIN_RENDEZVOUS_S", "300"))
    (rendezvous / f"{me}.running").write_text(str(os.getpid()))
    while not (rendezvous / "met").exists():
        running = sorted(p.name.removesuffix(".running") for p in rendezvous.glob("*.running"))
        if len(running) >= 2:
            tmp = rendezvous / f"met.{me}.tmp"
            tmp.write_text(json.dumps({"running": running, "by": me, "time": time.monotonic()}))
            os.replace(tmp, rendezvous / "met")
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def main() -> int:
    launched, launched_mono = time.time(), time.monotonic()  # the job's process is up (GPUs not yet taken)
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    ray.init()
    gpus, steps = int(os.environ["STANDIN_GPUS"]), int(os.environ["STANDIN_STEPS"])
    pg = placement_group([{"GPU": 1}] * gpus, strategy="STRICT_PACK")
    if not pg.wait(timeout_seconds=30):
        print("GPUs were not free: the orchestrator oversubscribed them", file=sys.stderr)
        return 3
    start, start_mono = time.time(), time.monotonic()
    node = ray.util.placement_group_table(pg)["bundles_to_node_id"][0]
    ledger = Path(os.environ["STANDIN_LEDGER"])
    me = f"{ledger.parents[2].name}-a{ledger.parent.name}"  # <trial>/attempts/<n>/ledger.json
    rendezvous = Path(os.environ["STANDIN_RENDEZVOUS"]) if os.environ.get("STANDIN_RENDEZVOUS") else None
    if rendezvous is not None and not _meet(rendezvous, me):
        print(f"no second job held its GPUs alongside {me} within {os.environ.get('STANDIN_RENDEZVOUS_S', '300')} s",
              file=sys.stderr)
        return 4
    with open(os.environ["VERL_FILE_LOGGER_PATH"], "w") as log:
        for step in range(steps + 1):
            q = float(os.environ["STANDIN_QUALITY"])  # seed s learns at 1 / (1 + s) of seed 0's rate
            data = {"val-core/local_math500/acc/mean@4": q * step, "val-core/local_math500/acc/pass@4": 2 * q * step,
                    "val-core/average/acc/mean@4": q * step, "val-core/average/acc/pass@4": 2 * q * step}
            if step:
                data["actor/entropy"] = 1.0 / step
            log.write(json.dumps({"step": step, "data": data}) + "\n")
            log.flush()
            time.sleep(float(os.environ["STANDIN_SECONDS"]) / (steps + 1))
    end, end_mono = time.time(), time.monotonic()
    if rendezvous is not None:
        (rendezvous / f"{me}.running").unlink()
    # *_mono: CLOCK_MONOTONIC, one clock for every process of the machine (unlike time.time, it never steps)
    ledger.write_text(json.dumps({"node": node, "start": start, "end": end, "launched": launched,
                                  "launched_mono": launched_mono, "start_mono": start_mono, "end_mono": end_mono}))
    remove_placement_group(pg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
