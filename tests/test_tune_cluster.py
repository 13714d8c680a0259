"""The Tune experiment on a real multi-node Ray test cluster, with a stand-in for verl (tests/standin_job.py).

Two worker nodes declare 8 fake GPUs and one ``verl_slot`` each; five trials each need 8 GPUs. The trials must
all finish (no deadlock with more trials than slots), never hold more than two slots at once, and every job's
STRICT_PACK GPU placement group must be placeable when it starts (the stand-in exits 3 otherwise).
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


@pytest.fixture
def two_gpu_nodes():
    import ray
    from ray.cluster_utils import Cluster

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


def test_more_trials_than_slots_never_oversubscribe_and_all_finish(two_gpu_nodes, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "3")
    monkeypatch.setenv("STANDIN_A100", "1")  # 8 GPUs per trial
    trials = [trial_config("grpo", seed=s, profile={"steps": 3, "test_freq": 1}) for s in range(5)]
    plan = ExperimentPlan(name="slots", kind="compare", spec="test", profile="local", scale="1.5b",
                          seeds=list(range(5)), steps=3, max_concurrent=5, slots_per_trial=1, max_failures=0,
                          trials=[PlannedTrial(name=trial_name(t), label=f"grpo s{t.seed}", trial=t) for t in trials])
    exp_dir = tmp_path / "slots"
    ExperimentDir(exp_dir).save_plan(plan)

    code = run_experiment(plan, exp_dir, Console(file=open(tmp_path / "out.txt", "w")),
                          address=two_gpu_nodes.address, renderer="tests.standin_job:render", poll_s=0.2)

    assert code == 0, (tmp_path / "out.txt").read_text()
    ledgers = [json.loads(p.read_text()) for p in exp_dir.glob("trials/*/attempts/*/ledger.json")]
    assert len(ledgers) == 5  # every trial ran its job once, to the end
    events = sorted([(x["start"], 1) for x in ledgers] + [(x["end"], -1) for x in ledgers])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2  # never more verl runs than slots
    assert peak == 2  # and the slots were used in parallel
    for status in exp_dir.glob("trials/*/status.json"):
        assert json.loads(status.read_text())["state"] == "succeeded"
    # the controller's stream holds every step of the stand-in's JSONL once
    for metrics in exp_dir.glob("trials/*/metrics.jsonl"):
        assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 1, 2, 3]
