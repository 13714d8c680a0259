"""The whole study on a simulated 30-node A100 cluster, through the REAL orchestrator.

What is real: Ray (a ``ray.cluster_utils.Cluster`` of N nodes, 8 fake GPUs and one ``verl_slot`` each, on
127.0.0.1), Ray Tune, the trial controllers with their placement groups, the Ray Jobs, the JSONL tailing, the
start order and the admission of ``orchestrator.tune_runner``. What is simulated: verl. Each job is the stand-in
``tests/standin_job.py``, which takes its GPUs like verl (one STRICT_PACK group of 8 per node), logs steps and
validations like verl, and runs for the trial's derived wall time (``orchestrator.scales.estimate_cost``)
compressed (``--seconds-per-hour``, default 1 s per simulated hour) with a per-trial log-normal factor (``--noise``).

Workloads: ``sweeps/paper.yaml`` at ``--seeds`` (default: 1 and 3), FIFO; then (``--asha``) the alpha-beta study at
7B under FIFO and under ASHA, with quality curves ending at Table 5's Avg@32 values. For each run it prints the
makespan, the lower bound (the larger of node-hours / N and the longest trial, from the trials' actual run times),
their ratio, the mean GPU utilisation, the longest wait, and the preview's (``orchestrator.schedule.simulate``)
makespan for the same run times; figures go to ``--out`` as JSON, with a utilisation-over-time plot (PNG). The
last line reads ``makespan/lower_bound = X.XX`` (the last workload run, FIFO).

    .venv/bin/python benchmarks/cluster_sim.py                   # 30 nodes, seeds 1 and 3, ~45 min
    .venv/bin/python benchmarks/cluster_sim.py --seeds 1 --nodes 12 --seconds-per-hour 0.25
    .venv/bin/python benchmarks/cluster_sim.py --asha --seeds      # the ASHA measurement only

Memory: each node holds ~330 MiB; each running trial a controller, a job supervisor and the stand-in's driver.
Nodes are added while the machine keeps ``--reserve-gib`` free per concurrent trial still to come; if fewer than
``--nodes`` fit, the run says so and uses the nodes it has (the workload is not changed: the makespan grows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
# Every Ray process on 127.0.0.1 (before Ray is imported: Ray reads it once): without it a single-machine Ray
# cluster advertises the machine's network address, and drivers connect through it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

GIB = 2**30
NODE_GIB = 0.35  # what a fake node's raylet and agents hold (PSS), measured
# Table 5 (7B): Avg@32 averaged over the six benchmarks, per (alpha, beta); the stand-in's final values
TABLE_5 = {(0.1, 0.03): 60.4, (0.3, 0.0): 60.9, (0.3, 0.03): 61.8, (0.3, 0.1): 60.7, (0.5, 0.0): 60.6,
           (0.5, 0.03): 62.0, (0.5, 0.1): 60.5, (0.8, 0.03): 61.4}


def available_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available


def tree_pss(kinds: bool = False):
    """Memory (PSS: shared pages split between their users) of this process and every process under it, i.e.
    of this benchmark's Ray cluster, its trials and their jobs, and nothing the machine's other users run.
    With ``kinds``: bytes by process kind (raylet, agents, controllers, job supervisors, stand-in drivers...)."""
    import psutil

    me = psutil.Process()
    total, by_kind = 0, {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            pss = proc.memory_full_info().pss
            cmd = " ".join(proc.cmdline()[:3])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += pss
        if kinds:
            kind = next((k for k in ("ImplicitFunc", "JobSupervisor", "standin_job", "DashboardAgent", "raylet",
                                     "gcs_server", "runtime_env", "dashboard.py", "log_monitor", "ray::IDLE")
                         if k in cmd), "other")
            by_kind[kind] = by_kind.get(kind, 0) + pss
    return (total, by_kind) if kinds else total


def start_cluster(nodes: int, reserve_per_trial: float, log) -> tuple[object, dict]:
    """Head (no slot, the dashboard) plus up to ``nodes`` GPU nodes, as many as memory allows."""
    from ray.cluster_utils import Cluster

    from orchestrator.cluster import free_ports

    from ray._private.utils import get_ray_address_file

    # Ray points every later address-less ray.init() on this machine at the newest head: put back what was there,
    # so that no other process's driver lands on this cluster and takes its fake GPUs
    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_text() if address_file.is_file() else None
    dashboard, agent = free_ports(2)
    before = tree_pss()
    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
        "dashboard_agent_listen_port": agent})
    cluster.wait_for_nodes()
    if previous is not None:
        address_file.write_text(previous)
    else:
        address_file.unlink(missing_ok=True)
    time.sleep(5)
    head_bytes = tree_pss() - before
    added, nodes_from = 0, tree_pss()
    for _ in range(nodes):
        # room for the nodes still to add and for the trials all of them will run (a controller, a job
        # supervisor and a driver each), and a margin
        if available_bytes() < ((nodes - added) * NODE_GIB + (added + 1) * reserve_per_trial + 1.5) * GIB:
            log(f"memory: stopping at {added} nodes ({available_bytes() / GIB:.1f} GiB available)")
            break
        cluster.add_node(num_cpus=1, num_gpus=8, resources={"verl_slot": 1})
        added += 1
        if added % 5 == 0:
            cluster.wait_for_nodes()
            time.sleep(3)
    cluster.wait_for_nodes()
    time.sleep(10)
    per_node = (tree_pss() - nodes_from) / max(1, added)
    info = {"nodes": added, "start_s": round(time.monotonic() - t0, 1), "head_mib": round(head_bytes / 2**20),
            "per_node_mib": round(per_node / 2**20), "available_gib_after": round(available_bytes() / GIB, 1)}
    log(f"cluster: head ({info['head_mib']} MiB) + {added} nodes in {info['start_s']} s, {info['per_node_mib']} MiB "
        f"per node (PSS of this benchmark's processes); {info['available_gib_after']} GiB available on the machine")
    return cluster, info


def data_dir(tmp: Path) -> str:
    from orchestrator.scales import A100Profile, missing_data_files

    data = tmp / "data"
    data.mkdir(exist_ok=True)
    for f in missing_data_files(A100Profile(data_dir=str(data))):
        f.write_bytes(b"")
    return str(data)


def run_plan(plan, address: str, out_dir: Path, nodes: int, poll_s: float, log, standin: dict | None = None) -> dict:
    """Run ``plan`` through ``run_experiment`` and measure it from the jobs' own records.

    ``standin``: this experiment's stand-in settings (``<experiment>/standin.json``, read by the controllers).
    """
    from rich.console import Console

    from orchestrator.store import ExperimentDir
    from orchestrator.tune_runner import run_experiment

    exp_dir = out_dir / plan.name
    if exp_dir.exists():
        raise SystemExit(f"{exp_dir} exists: pick another --out or remove it")
    ExperimentDir(exp_dir).save_plan(plan)
    if standin:
        (exp_dir / "standin.json").write_text(json.dumps(standin))
    memory = []
    t0_mono = time.monotonic()
    with open(out_dir / f"{plan.name}.console.txt", "w") as console_file:
        import threading

        stop = threading.Event()

        def watch():
            while not stop.wait(15):
                total, kinds = tree_pss(kinds=True)
                memory.append((time.monotonic() - t0_mono, total / GIB, available_bytes() / GIB,
                               {k: round(v / 2**20) for k, v in kinds.items()}, os.getloadavg()[0]))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            code = run_experiment(plan, exp_dir, Console(file=console_file, width=160), address=address,
                                  renderer="tests.standin_job:render", poll_s=poll_s)
        finally:
            stop.set()
    wall = time.monotonic() - t0_mono
    return measure(plan, exp_dir, nodes, t0_mono, wall, code, memory, log)


def measure(plan, exp_dir: Path, nodes: int, t0_mono: float, wall: float, code: int, memory, log,
            seconds_per_hour: float | None = None) -> dict:
    from orchestrator.schedule import Job, lower_bound, pigeonhole_bound, simulate, start_order

    spans = []  # (trial, nodes, start, end, planned seconds, attempts)
    stopped = 0
    for t in plan.trials:
        if not (exp_dir / "trials" / t.name / "status.json").is_file():
            continue  # never started (an interrupted run)
        status = json.loads((exp_dir / "trials" / t.name / "status.json").read_text())
        ledgers = sorted((exp_dir / "trials" / t.name / "attempts").glob("*/ledger.json"))
        if not ledgers:  # stopped early (ASHA): the job ran, but the stand-in never wrote its ledger
            attempt = status["attempts"][-1]
            start, end = attempt["started"], attempt["ended"]
            if start is None or end is None:
                continue  # still running when the benchmark was interrupted
            mono = time.monotonic() - time.time()  # wall clock -> monotonic, approximately
            spans.append((t.name, t.nodes, start + mono - t0_mono, end + mono - t0_mono, None, status["state"]))
            stopped += 1
            continue
        x = json.loads(ledgers[-1].read_text())
        spans.append((t.name, t.nodes, x["start_mono"] - t0_mono, x["end_mono"] - t0_mono, x["planned_s"],
                      status["state"]))
    makespan = max(s[3] for s in spans)
    done = [s for s in spans if s[4] is not None]
    jobs = [Job(s[0], s[1], s[4]) for s in done]
    bound = lower_bound(jobs, nodes) if len(done) == len(spans) else None
    node_seconds = sum(s[1] * (s[3] - s[2]) for s in spans)
    # the preview, fed the same run times, in the same start order
    order = {t.name: i for i, t in enumerate(start_order(plan))}
    preview = simulate(sorted(jobs, key=lambda j: order[j.name]), nodes).makespan if bound else None
    waits = {s[0]: s[2] for s in spans}
    wide = [s[2] for s in spans if s[1] > 1]
    gpu_hours_sim = 8 * node_seconds / (seconds_per_hour or SECONDS_PER_HOUR)
    result = {
        "experiment": plan.name, "trials": len(plan.trials), "nodes": nodes, "exit_code": code,
        "states": {state: sum(1 for s in spans if s[5] == state) for state in {s[5] for s in spans}},
        "wall_s": round(wall, 1), "makespan_s": round(makespan, 1),
        "lower_bound_s": round(bound, 1) if bound else None,
        "ratio": round(makespan / bound, 3) if bound else None,
        "pigeonhole_bound_s": round(pigeonhole_bound(jobs, nodes), 1) if bound else None,
        "preview_makespan_s": round(preview, 1) if preview else None,
        "utilization": round(node_seconds / (nodes * makespan), 3),
        "longest_wait_s": round(max(waits.values()), 1),
        "longest_wait_trial": max(waits, key=waits.get),
        "longest_wide_wait_s": round(max(wide), 1) if wide else None,
        "first_start_s": round(min(s[2] for s in spans), 1),
        "gpu_hours_simulated": round(gpu_hours_sim), "stopped_early": stopped,
        "peak_pss_gib": round(max(m[1] for m in memory), 2) if memory else None,
        "min_available_gib": round(min(m[2] for m in memory), 1) if memory else None,
        "peak_pss_by_kind_mib": max(memory, key=lambda m: m[1])[3] if memory else None,
        "mean_load_1min": round(sum(m[4] for m in memory) / len(memory), 1) if memory else None,
        "spans": [{"trial": s[0], "nodes": s[1], "start": round(s[2], 2), "end": round(s[3], 2),
                   "planned": s[4], "state": s[5]} for s in spans],
    }
    log(f"{plan.name}: {len(plan.trials)} trials on {nodes} nodes: makespan {makespan:.0f} s, lower bound "
        f"{bound or float('nan'):.0f} s, ratio {result['ratio']}, pigeonhole bound {result['pigeonhole_bound_s']} s, "
        f"preview {result['preview_makespan_s']} s, "
        f"utilization {result['utilization']:.1%}, longest wait {result['longest_wait_s']} s "
        f"(2-node: {result['longest_wide_wait_s']} s), {result['gpu_hours_simulated']:,} simulated A100-hours")
    return result


def plot(results: list[dict], path: Path, seconds_per_hour: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(7, 2.2 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        spans = r["spans"]
        times = sorted({s["start"] for s in spans} | {s["end"] for s in spans} | {0.0})
        busy = [sum(s["nodes"] for s in spans if s["start"] <= t < s["end"]) * 8 for t in times]
        ax.step(times, busy, where="post", color="#1f77b4", linewidth=1.2)
        ax.axhline(8 * r["nodes"], color="0.6", linewidth=0.8, linestyle="--")
        if r.get("lower_bound_s"):
            ax.axvline(r["lower_bound_s"], color="#d62728", linewidth=0.8, linestyle=":", label="lower bound")
            ax.legend(loc="lower left", fontsize=7, frameon=False)
        ax.set_ylim(0, 8 * r["nodes"] * 1.08)
        ax.set_ylabel("GPUs busy", fontsize=8)
        ax.set_title(f"{r['experiment']}: {r['trials']} trials on {r['nodes']} nodes, utilization "
                     f"{r['utilization']:.0%}, makespan/lower bound {r['ratio']}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel(f"seconds (1 s = {1 / seconds_per_hour:g} simulated hours)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


SECONDS_PER_HOUR = 1.0


def policy_table(log, node_counts=(8, 12, 20, 30), seeds=(1, 3)) -> list[dict]:
    """The ordering policies on the preview's list scheduler (no Ray): the plan's order or widest/longest first,
    each with no overtaking (ours) or with whatever fits starting (what Ray's queue of pending placement groups
    does when every trial asks at once). Ratios are makespan / lower bound; waits are the 2-node trials' longest."""
    from orchestrator.config.experiment import load_spec, plan_experiment
    from orchestrator.schedule import Job, estimated_hours, plan_jobs, simulate, simulate_greedy

    rows = []
    log("policy (preview, estimated run times)   seeds nodes  bound h  makespan/bound  /pigeonhole  2-node wait h")
    for n_seeds in seeds:
        plan = plan_experiment(load_spec("paper"), profile="a100", seeds=n_seeds)
        in_plan_order = [Job(t.name, t.nodes, estimated_hours(t)) for t in plan.trials]
        ours = plan_jobs(plan)
        for nodes in node_counts:
            for name, run, jobs in (("plan order, whatever fits starts", simulate_greedy, in_plan_order),
                                    ("plan order, no overtaking", simulate, in_plan_order),
                                    ("widest/longest first, whatever fits", simulate_greedy, ours),
                                    ("widest/longest first, no overtaking *", simulate, ours)):
                s = run(jobs, nodes)
                wide = max(p.start for p in s.placements if p.job.nodes > 1)
                rows.append({"policy": name, "seeds": n_seeds, "nodes": nodes, "bound_h": s.lower_bound,
                             "ratio": s.makespan / s.lower_bound, "pigeonhole_ratio": s.makespan / s.pigeonhole_bound,
                             "wide_wait_h": wide})
                log(f"{name:<40} {n_seeds:>5} {nodes:>5} {s.lower_bound:>8.0f} {s.makespan / s.lower_bound:>15.3f} "
                    f"{s.makespan / s.pigeonhole_bound:>12.3f} {wide:>14.0f}")
    return rows


def main() -> int:
    global SECONDS_PER_HOUR
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 3], help="workloads: the study at these seeds")
    parser.add_argument("--seconds-per-hour", type=float, default=1.0, help="time compression")
    parser.add_argument("--noise", type=float, default=0.1, help="sigma of the per-trial log-normal run-time factor")
    parser.add_argument("--asha", action="store_true", help="also: the alpha-beta study under FIFO and ASHA")
    parser.add_argument("--asha-seconds-per-hour", type=float, default=0.25)
    parser.add_argument("--asha-noise-seed", type=int, nargs="*", default=[0])
    parser.add_argument("--reserve-gib", type=float, default=0.45, help="memory kept free per trial to come")
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--policies", action="store_true", help="only the ordering policies on the preview, no Ray")
    args = parser.parse_args()
    SECONDS_PER_HOUR = args.seconds_per_hour
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "cluster_sim.log", "a")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    if args.policies:
        policy_table(log)
        return 0
    # the stand-ins and controllers read these from the nodes' environment: set before the nodes start
    os.environ.update({"STANDIN_A100": "1", "STANDIN_SECONDS_PER_HOUR": str(args.seconds_per_hour),
                       "STANDIN_NOISE": str(args.noise), "STANDIN_VALIDATE_AT_TEST_FREQ": "1",
                       "STANDIN_GPU_WAIT_S": "120", "RAY_DEDUP_LOGS": "0"})
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    from orchestrator.config.experiment import load_spec, plan_experiment

    tmp = Path(tempfile.mkdtemp(prefix="maspo-sim-"))
    data = data_dir(tmp)
    cluster, info = start_cluster(args.nodes, args.reserve_gib, log)
    results = []
    try:
        for seeds in args.seeds:
            plan = plan_experiment(load_spec("paper"), name=f"paper-s{seeds}", profile="a100", seeds=seeds,
                                   max_failures=1, profile_settings={"data_dir": data}, spec_file="paper")
            results.append(run_plan(plan, cluster.address, args.out, info["nodes"], args.poll_s, log))
        if args.asha:
            finals = {f"alpha={a:g} beta={b:g}": v / 100 for (a, b), v in TABLE_5.items()}
            for noise_seed in args.asha_noise_seed:
                standin = {"STANDIN_SECONDS_PER_HOUR": args.asha_seconds_per_hour, "STANDIN_CURVE_NOISE": 0.005,
                           "STANDIN_FINAL_BY_LABEL": json.dumps(finals), "STANDIN_NOISE_SEED": noise_seed}
                SECONDS_PER_HOUR = args.asha_seconds_per_hour
                for scheduler in ("fifo", "asha"):
                    plan = plan_experiment(load_spec("alpha-beta"), name=f"alpha-beta-{scheduler}-n{noise_seed}",
                                           profile="a100", scheduler=scheduler, max_failures=1,
                                           profile_settings={"data_dir": data})
                    r = run_plan(plan, cluster.address, args.out, info["nodes"], args.poll_s, log, standin)
                    r["best_kept"] = best_kept(plan, args.out / plan.name)
                    r["seconds_per_hour"] = args.asha_seconds_per_hour
                    results.append(r)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    summary = {"cluster": info, "seconds_per_hour": args.seconds_per_hour, "noise": args.noise,
               "results": results}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"cluster_sim-{stamp}.json").write_text(json.dumps(summary, indent=1))
    fifo = [r for r in results if r["experiment"].startswith("paper")]
    if fifo:
        plot(fifo, args.out / "utilization.png", args.seconds_per_hour)
    print_table(results, log)
    last = fifo[-1] if fifo else results[-1]
    log(f"makespan/lower_bound = {last['ratio']:.2f}")
    return 0


def best_kept(plan, exp_dir: Path) -> dict:
    """Whether the setting with the best final value ran to the end, and what ASHA's winner is."""
    from orchestrator.store import ExperimentDir, summary

    rows = {}
    for t in plan.trials:
        records = ExperimentDir(exp_dir).trial(t.name).records()
        s = summary(records)
        rows[t.label] = {"validations": s.get("validations", 0), "val_avg": s.get("val_avg")}
    full = max(r["validations"] for r in rows.values())
    finished = {k: v for k, v in rows.items() if v["validations"] == full}
    best_final = max(TABLE_5, key=TABLE_5.get)
    best_label = f"alpha={best_final[0]:g} beta={best_final[1]:g}"
    winner = max(finished, key=lambda k: finished[k]["val_avg"] or 0)
    return {"best_setting": best_label, "best_ran_to_end": best_label in finished, "winner": winner,
            "finished": sorted(finished), "validations": {k: v["validations"] for k, v in rows.items()}}


def print_table(results: list[dict], log) -> None:
    log("")
    log(f"{'workload':<22} {'trials':>6} {'nodes':>5} {'makespan s':>10} {'bound s':>8} {'ratio':>6} "
        f"{'pigeon s':>8} {'preview s':>9} {'util':>6} {'max wait s':>10} {'sim A100-h':>10}")
    for r in results:
        log(f"{r['experiment']:<22} {r['trials']:>6} {r['nodes']:>5} {r['makespan_s']:>10.0f} "
            f"{(r['lower_bound_s'] or float('nan')):>8.0f} {(r['ratio'] or float('nan')):>6.2f} "
            f"{(r['pigeonhole_bound_s'] or float('nan')):>8.0f} "
            f"{(r['preview_makespan_s'] or float('nan')):>9.0f} {r['utilization']:>6.1%} "
            f"{r['longest_wait_s']:>10.0f} {r['gpu_hours_simulated']:>10,}")
    asha = {r["experiment"]: r for r in results if r["experiment"].startswith("alpha-beta")}
    for name, r in asha.items():
        if "-asha-" in name:
            fifo = asha.get(name.replace("-asha-", "-fifo-"))
            if fifo:
                saved = 1 - r["gpu_hours_simulated"] / fifo["gpu_hours_simulated"]
                log(f"ASHA ({name}): {r['gpu_hours_simulated']:,} simulated A100-hours against FIFO's "
                    f"{fifo['gpu_hours_simulated']:,}: {saved:.0%} saved; best setting "
                    f"{r['best_kept']['best_setting']} {'kept' if r['best_kept']['best_ran_to_end'] else 'STOPPED'}"
                    f"; ASHA's winner {r['best_kept']['winner']}")


if __name__ == "__main__":
    sys.exit(main())
