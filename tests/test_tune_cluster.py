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
