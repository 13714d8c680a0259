"""The Tune experiment on a real multi-node Ray test cluster, with a stand-in for verl (tests/standin_job.py).

Two worker nodes declare 8 fake GPUs and one ``verl_slot`` each; five trials each need 8 GPUs. The trials must
all finish (no deadlock with more trials than slots), never hold more than two slots at once, and every job's
STRICT_PACK GPU placement group must be placeable when it starts (the stand-in exits 3 otherwise).

Nothing here depends on how fast the machine is: "never more than two" is counted from the jobs' own records
(from the moment a job's process is up to its end, a span inside the job's lifetime), and "two in parallel" is
made certain by a rendezvous: the first jobs hold their GPUs until a second job holds its own (the stand-in fails
after a generous deadline if none ever does).
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from orchestrator.cluster import free_ports
from orchestrator.config.trial import trial_config
from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
from orchestrator.store import ExperimentDir
from orchestrator.tune_runner import run_experiment

pytestmark = pytest.mark.slow


RENDEZVOUS_S = 300  # how long a stand-in job waits for a second one to run alongside it


@pytest.fixture
def two_gpu_nodes(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    # set before the nodes start: the trial controllers (Ray workers) render the stand-in jobs with the nodes' env
    monkeypatch.setenv("STANDIN_SECONDS", "3")
    monkeypatch.setenv("STANDIN_A100", "1")  # 8 GPUs per trial
    (tmp_path / "rendezvous").mkdir()
    monkeypatch.setenv("STANDIN_RENDEZVOUS", str(tmp_path / "rendezvous"))
    monkeypatch.setenv("STANDIN_RENDEZVOUS_S", str(RENDEZVOUS_S))

    dashboard, agent = free_ports(2)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
        "dashboard_agent_listen_port": agent})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=8, resources={"verl_slot": 1})
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def _peak(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one time (one that ends exactly when another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_more_trials_than_slots_never_oversubscribe_and_all_finish(two_gpu_nodes, tmp_path):
    trials = [trial_config("grpo", seed=s, profile={"steps": 3, "test_freq": 1}) for s in range(5)]
    plan = ExperimentPlan(name="slots", kind="compare", spec="test", profile="local", scale="1.5b",
                          seeds=list(range(5)), steps=3, max_concurrent=5, slots_per_trial=1, max_failures=0,
                          trials=[PlannedTrial(name=trial_name(t), label=f"grpo s{t.seed}", trial=t) for t in trials])
    exp_dir = tmp_path / "slots"
    ExperimentDir(exp_dir).save_plan(plan)

    code = run_experiment(plan, exp_dir, Console(file=open(tmp_path / "out.txt", "w")),
                          address=two_gpu_nodes.address, renderer="tests.standin_job:render", poll_s=0.2)

    logs = "".join(f"\n--- {p}\n{p.read_text()[-1500:]}" for p in sorted(exp_dir.glob("trials/*/attempts/*/job.log")))
    met = tmp_path / "rendezvous" / "met"
    assert met.exists(), f"no two trials' jobs ever held their GPUs at once (each waited {RENDEZVOUS_S} s){logs}"
    assert len(set(json.loads(met.read_text())["running"])) == 2
    assert code == 0, (tmp_path / "out.txt").read_text() + logs
    for info in exp_dir.glob("trials/*/trial.json"):
        assert json.loads(info.read_text())["env"]["STANDIN_GPUS"] == "8"  # each job took a whole node's GPUs
    ledgers = [json.loads(p.read_text()) for p in exp_dir.glob("trials/*/attempts/*/ledger.json")]
    assert len(ledgers) == 5  # every trial ran its job once, to the end
    # never more verl runs than slots: counted from each job's process start (before it asks for GPUs) to its end
    assert _peak([(x["launched_mono"], x["end_mono"]) for x in ledgers]) <= 2
    # and the slots were used in parallel: the two jobs of the rendezvous held their GPUs at the same time
    assert _peak([(x["start_mono"], x["end_mono"]) for x in ledgers]) >= 2
    for status in exp_dir.glob("trials/*/status.json"):
        assert json.loads(status.read_text())["state"] == "succeeded"
    # the controller's stream holds every step of the stand-in's JSONL once
    for metrics in exp_dir.glob("trials/*/metrics.jsonl"):
        assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------------------
# Six 8-GPU nodes, one verl_slot each: multi-node trials, the default concurrency, the start-up check.


@pytest.fixture(scope="module")
def six_gpu_nodes(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("six")
    (root / "rendezvous").mkdir()
    env = pytest.MonkeyPatch()
    # the trial controllers (Ray workers) read these from the nodes' environment: set before the nodes start
    env.setenv("STANDIN_A100", "1")  # 8 GPUs per node a trial spans
    env.setenv("STANDIN_SECONDS_PER_HOUR", "0.01")  # 14B ~5.6 s, 7B ~4.7 s, 1.5B ~1.5 s
    env.setenv("STANDIN_RENDEZVOUS", str(root / "rendezvous"))
    env.setenv("STANDIN_RENDEZVOUS_S", str(RENDEZVOUS_S))
    env.setenv("STANDIN_GPU_WAIT_S", "60")
    dashboard, agent = free_ports(2)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
        "dashboard_agent_listen_port": agent})
    for _ in range(6):
        cluster.add_node(num_cpus=1, num_gpus=8, resources={"verl_slot": 1})
    yield cluster, root
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    env.undo()


def _a100_data(tmp_path) -> str:
    """Empty files where `maspo data prepare` writes its parquet files (the stand-in reads none of them)."""
    from orchestrator.scales import A100Profile, missing_data_files

    data = tmp_path / "data"
    data.mkdir()
    for f in missing_data_files(A100Profile(data_dir=str(data))):
        f.write_bytes(b"")
    return str(data)


def _run(plan, exp_dir, address, tmp_path):
    ExperimentDir(exp_dir).save_plan(plan)
    out = tmp_path / f"{plan.name}.out"
    code = run_experiment(plan, exp_dir, Console(file=open(out, "w")), address=address,
                          renderer="tests.standin_job:render", poll_s=0.2)
    logs = "".join(f"\n--- {p}\n{p.read_text()[-1500:]}" for p in sorted(exp_dir.glob("trials/*/attempts/*/job.log")))
    return code, out.read_text() + logs


def _peak_weighted(spans: list[tuple[float, float, int]]) -> int:
    events = sorted([(s, w) for s, _, w in spans] + [(e, -w) for _, e, w in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_one_and_two_node_trials_share_six_nodes(six_gpu_nodes, tmp_path):
    cluster, _ = six_gpu_nodes
    data = _a100_data(tmp_path)
    trials = [trial_config("maspo", seed=s, profile={"name": "a100", "scale": scale, "steps": 3, "test_freq": 1,
                                                     "data_dir": data})
              for scale, seeds in (("1.5b", 3), ("14b", 3), ("7b", 2)) for s in range(seeds)]
    planned = [PlannedTrial(name=trial_name(t), label=f"{t.profile.scale} s{t.seed}", trial=t) for t in trials]
    plan = ExperimentPlan(name="mixed", kind="study", spec="test", profile="a100", scale="1.5b+14b+7b",
                          seeds=[0, 1, 2], steps=3, max_failures=0, slots_per_trial=2, trials=planned)
    exp_dir = tmp_path / "mixed"
    code, output = _run(plan, exp_dir, cluster.address, tmp_path)
    assert code == 0, output
    statuses = {p.parent.name: json.loads(p.read_text()) for p in exp_dir.glob("trials/*/status.json")}
    assert len(statuses) == 8 and all(s["state"] == "succeeded" for s in statuses.values()), output
    ledgers = {p.parents[2].name: json.loads(p.read_text()) for p in exp_dir.glob("trials/*/attempts/*/ledger.json")}
    assert len(ledgers) == 8  # every job ran once, to the end
    for t in planned:
        slots = statuses[t.name]["attempts"][-1]["slot_nodes"]
        gpu_nodes = ledgers[t.name]["nodes"]
        assert len(slots) == len(set(slots)) == t.nodes  # one slot on each of N different nodes
        assert len(gpu_nodes) == len(set(gpu_nodes)) == t.nodes  # verl-like: one 8-GPU group per node, all placed
        assert ledgers[t.name]["gpus"] == 8 * t.nodes and statuses[t.name]["gpus"] == 8 * t.nodes
    # never more GPUs held than exist, never more slots than nodes (from each job's process start to its end)
    assert _peak_weighted([(x["start_mono"], x["end_mono"], x["gpus"]) for x in ledgers.values()]) <= 48
    assert _peak_weighted([(x["launched_mono"], x["end_mono"], x["gpus"] // 8) for x in ledgers.values()]) <= 6
    # widest first: the three 2-node trials started before any 1-node trial
    wide = [ledgers[t.name]["launched_mono"] for t in planned if t.nodes == 2]
    narrow = [ledgers[t.name]["launched_mono"] for t in planned if t.nodes == 1]
    assert max(wide) < min(narrow)


def test_without_a_flag_trials_fill_the_slots(six_gpu_nodes, tmp_path):
    from orchestrator.config.experiment import load_spec, plan_experiment

    cluster, root = six_gpu_nodes
    plan = plan_experiment(load_spec("compare"), name="fill", steps=2, profile_settings={"test_freq": 1},
                           max_failures=0)  # nine local-profile trials, no max_concurrent
    assert plan.max_concurrent is None and len(plan.trials) == 9
    (root / "rendezvous" / "fill").mkdir()
    (root / "rendezvous" / "fill" / "need").write_text("6")  # the first six jobs hold their GPUs together
    exp_dir = tmp_path / "fill"
    code, output = _run(plan, exp_dir, cluster.address, tmp_path)
    assert code == 0, output
    met = root / "rendezvous" / "fill" / "met"
    assert met.exists() and len(set(json.loads(met.read_text())["running"])) == 6, output
    ledgers = [json.loads(p.read_text()) for p in exp_dir.glob("trials/*/attempts/*/ledger.json")]
    assert len(ledgers) == 9
    assert _peak_weighted([(x["launched_mono"], x["end_mono"], 1) for x in ledgers]) <= 6


def test_a_cluster_without_n_nodes_with_a_slot_is_refused(tmp_path, monkeypatch):
    """Two slots on ONE node: enough in total for a 14B trial, but it needs a slot on each of two nodes."""
    import ray
    from ray.cluster_utils import Cluster
    from typer.testing import CliRunner

    from orchestrator.cli import app

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 16,
                                                              "resources": {"verl_slot": 2}})
    try:
        result = CliRunner().invoke(app, ["compare", "--profile", "a100", "--scale", "14b", "--baselines", "grpo",
                                          "--address", cluster.address, "-P", f"data_dir={_a100_data(tmp_path)}",
                                          "--root", str(tmp_path / "runs")], terminal_width=400)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "2 'verl_slot'(s) in total but only 1 node(s)" in error[0], result.output
    assert "needs a slot on each of 2 different nodes" in error[0] and "Traceback" not in result.output
