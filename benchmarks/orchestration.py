"""Orchestration overhead per trial: Ray Tune + Ray Job submission + JSONL tailing, against the bare verl command.

Both sides run the SAME local-profile trial (same overrides, same steps, same cached model and data):

- bare:         ``python -m verl.trainer.main_ppo <overrides>`` as a plain subprocess (verl starts its own Ray);
- orchestrated: ``run_experiment`` with a one-trial plan: a private Ray, a Tune experiment, a CPU-only trial
                controller that submits the job and tails its JSONL, results written.

It prints both wall times, the overhead in seconds and as a ratio, and the overhead's share of a 1-hour trial
(the issue's target: under 20 s per trial and under 5 % of a 1-hour trial). Run on demand, not in CI:

    .venv/bin/python benchmarks/orchestration.py [--steps 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare(trial, assets, out_dir: Path) -> float:
    from orchestrator.algorithms import get
    from orchestrator.verl_bridge.local_run import cpu_trainer_env, cpu_trainer_overrides, short_temp_dir

    p = trial.profile
    overrides = cpu_trainer_overrides(
        assets.model_dir, assets.train_file, assets.val_files, out_dir=out_dir, n_samples=p.n_samples, val_n=p.val_n,
        train_batch_size=p.train_batch_size, ppo_mini_batch_size=p.ppo_mini_batch_size,
        max_response_length=p.max_response_length, total_steps=p.steps, test_freq=p.test_freq, seed=trial.seed,
        lr=p.lr, experiment_name="bare", ray_temp_dir=short_temp_dir())
    overrides += get(trial.algorithm).verl_overrides(trial.params)
    env = {**os.environ, **cpu_trainer_env(out_dir), "WANDB_MODE": "disabled"}
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "bare.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", *overrides], env=env,
                              stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"the bare verl run failed ({code}):\n" + "\n".join(
            (out_dir / "bare.log").read_text().splitlines()[-15:]))
    return time.monotonic() - started


def orchestrated(trial, out_root: Path) -> float:
    from rich.console import Console

    from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
    from orchestrator.store import ExperimentDir
    from orchestrator.tune_runner import run_experiment

    plan = ExperimentPlan(name="bench", kind="compare", spec="benchmark", profile="local", scale="1.5b", seeds=[0],
                          steps=trial.profile.steps, max_failures=0,
                          trials=[PlannedTrial(name=trial_name(trial), label="bench", trial=trial)])
    exp_dir = out_root / "bench"
    ExperimentDir(exp_dir).save_plan(plan)
    started = time.monotonic()
    code = run_experiment(plan, exp_dir, Console(file=open(os.devnull, "w")))
    elapsed = time.monotonic() - started
    if code:
        raise SystemExit(f"the orchestrated trial failed; see {exp_dir}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from orchestrator.render import prepare_local_assets
    from orchestrator.config.trial import trial_config

    os.environ["WANDB_MODE"] = "disabled"
    trial = trial_config("grpo", seed=0, profile={"steps": args.steps, "test_freq": args.steps})
    assets = prepare_local_assets(trial.profile, trial.seed)  # cached: not part of either measurement
    rows = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            b = bare(trial, assets, Path(tmp) / "bare")
            o = orchestrated(trial, Path(tmp))
        rows.append((b, o))
        print(f"repeat {i + 1}: bare {b:.1f} s, orchestrated {o:.1f} s", flush=True)
    b = sum(r[0] for r in rows) / len(rows)
    o = sum(r[1] for r in rows) / len(rows)
    overhead = o - b
    print(f"\n| trial ({args.steps} steps, local profile) | wall time |\n|---|---|")
    print(f"| bare `python -m verl.trainer.main_ppo` | {b:.1f} s |")
    print(f"| orchestrated (Tune + Ray Job + tailing) | {o:.1f} s |")
    print(f"| overhead | {overhead:+.1f} s (ratio {o / b:.2f}x) |")
    print(f"| overhead share of a 1-hour trial | {100 * max(overhead, 0) / 3600:.2f} % |")
    print(f"\nload average while measuring: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
