"""Faults on a real multi-node Ray cluster, with the stand-in for verl (tests/standin_job.py).

Three nodes with 8 fake GPUs and one ``verl_slot`` each, the first the head (the job API and the jobs' drivers);
checkpoints and streams are in the test's temp dir, which every node of this fake cluster sees, as every node of a
real one sees the shared storage. The stand-in checkpoints and resumes like verl
(``STANDIN_CHECKPOINTS``), and, where a node dies, calls a worker actor on its GPUs every step as verl's driver
calls its workers (``STANDIN_WORKERS``). Nothing here counts on timing: the fault is injected while the first
attempt is held after a known step (``STANDIN_PAUSE``), and every wait has a generous deadline that fails loudly.

- A node dies: a worker node's raylet and every process of the node are SIGKILLed while a trial on it is held
  after step 5 (checkpoints at 3 and 6). The trial is retried by Tune on the spare node from its step-3
  checkpoint; the trial on the other node carries on, one attempt. Steps lost: 4 and 5, the two since the
  checkpoint; none duplicated.
- A checkpoint cut off: the newest checkpoint's model shard is truncated and the job stopped; the retry passes
  over it to the previous one, with a warning (verl would load the broken one and fail on every retry).
- A job that never starts: its entrypoint asks for a resource no node has; each attempt times out PENDING after
  ``job_start_timeout_s``, is stopped, and the trial's error says which job and why.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.cluster import free_ports
from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name
from orchestrator.config.trial import trial_config
from orchestrator.store import ExperimentDir, read_records

pytestmark = pytest.mark.slow

DEADLINE_S = 240  # for anything the test waits for: far beyond what it takes, to fail loudly rather than hang


@pytest.fixture(scope="module")
def three_gpu_nodes():
    import ray
    from ray.cluster_utils import Cluster

    # a temp dir of its own: a Ray Job's driver finds its cluster through <temp dir>/ray_current_cluster, which in
    # the shared /tmp/ray names whichever cluster on the machine started last (another test's, say)
    temp_dir = tempfile.mkdtemp(prefix="maspo-faults-", dir="/tmp")
    dashboard, agent = free_ports(2)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 8, "resources": {"verl_slot": 1}, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard, "dashboard_agent_listen_port": agent,
        "temp_dir": temp_dir})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=8, resources={"verl_slot": 1}, temp_dir=temp_dir)
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _plan(name: str, seeds: list[int], steps: int, test_freq: int, **fields) -> ExperimentPlan:
    trials = [trial_config("grpo", seed=s, profile={"steps": steps, "test_freq": test_freq}) for s in seeds]
    return ExperimentPlan(name=name, kind="compare", spec="test", profile="local", scale="1.5b", seeds=seeds,
                          steps=steps, slots_per_trial=1, **fields,
                          trials=[PlannedTrial(name=trial_name(t), label=f"s{t.seed}", trial=t) for t in trials])


def _start(plan: ExperimentPlan, tmp_path: Path, standin: dict) -> Path:
    exp_dir = tmp_path / plan.name
    ExperimentDir(exp_dir).save_plan(plan)
    (exp_dir / "standin.json").write_text(json.dumps({"STANDIN_GPU_WAIT_S": "120", **standin}))
    return exp_dir


def _run(plan, exp_dir, address, tmp_path) -> tuple[int, str]:
    from orchestrator.tune_runner import run_experiment

    out = tmp_path / f"{plan.name}.out"
    code = run_experiment(plan, exp_dir, Console(file=open(out, "w"), width=200), address=address,
                          renderer="tests.standin_job:render", poll_s=0.2)
    return code, out.read_text() + _logs(exp_dir)


def _logs(exp_dir: Path) -> str:
    return "".join(f"\n--- {p}\n{p.read_text()[-1500:]}" for p in sorted(exp_dir.glob("trials/*/attempts/*/job.log")))


def _status(exp_dir: Path, trial: str) -> dict:
    return json.loads((exp_dir / "trials" / trial / "status.json").read_text())


def _steps(path: Path) -> list[int]:
    return [r["step"] for r in read_records(path)]


def _client(cluster):
    from ray.job_submission import JobSubmissionClient

    url = cluster.webui_url
    return JobSubmissionClient(url if url.startswith("http") else f"http://{url}")


def _inject(exp_dir: Path, fault) -> dict:
    """Run ``fault(wait_for)`` in a thread while the experiment runs in this one; its outcome lands in the dict.

    ``wait_for(what, ready)`` waits for a condition; past the deadline it releases every held job (so the
    experiment ends) and raises, and the test fails with what it waited for.
    """
    import threading

    outcome: dict = {}

    def wait_for(what: str, ready) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {DEADLINE_S} s: {what}")
            time.sleep(0.2)

    def run() -> None:
        try:
            outcome.update(fault(wait_for) or {})
        except BaseException as err:  # noqa: BLE001 (reported by the test, in its own thread)
            outcome["error"] = repr(err)
            (exp_dir / "release").touch()

    threading.Thread(target=run, daemon=True).start()
    return outcome


def test_a_job_that_never_starts_times_out_with_a_clear_error_and_is_retried(three_gpu_nodes, tmp_path):
    plan = _plan("pending", [0], steps=2, test_freq=1, max_failures=1, job_start_timeout_s=3)
    exp_dir = _start(plan, tmp_path, {"STANDIN_ENTRYPOINT_RESOURCES": json.dumps({"no_such_resource": 1})})
    started = time.monotonic()
    code, output = _run(plan, exp_dir, three_gpu_nodes.address, tmp_path)
    assert code == 1, output  # the trial failed (after its retry); the experiment did not hang
    assert time.monotonic() - started < DEADLINE_S
    trial = plan.trials[0].name
    status = _status(exp_dir, trial)
    assert status["state"] == "failed" and len(status["attempts"]) == 2  # tried, then retried once
    client = _client(three_gpu_nodes)
    for attempt in status["attempts"]:
        sid = attempt["submission_id"]
        assert attempt["job_status"] == "STOPPED"
        said = f"trial {trial}, attempt {attempt['attempt']}: Ray job {sid} did not start within 3 s"
        assert said in attempt["error"]
        assert "{'no_such_resource': 1}" in attempt["error"] and "waiting for resources" in attempt["error"]
        # Ray delivers a stop to a job that has not started when (if) it starts, so it never runs; until then, or
        # until Ray's own start timeout fails it, Ray still lists it as PENDING
        assert str(client.get_job_status(sid).value) in ("PENDING", "STOPPED", "FAILED")
    assert not list(exp_dir.glob("trials/*/attempts/*/metrics.jsonl"))  # no attempt ever ran
    errors = list((exp_dir / "tune").glob(f"*{trial}*/error.txt")) or list((exp_dir / "tune").rglob("error.txt"))
    assert errors and "did not start within 3 s" in errors[0].read_text()  # what Tune reports for the trial


def test_a_cut_off_checkpoint_is_passed_over_on_the_retry(three_gpu_nodes, tmp_path):
    plan = _plan("cutoff", [0], steps=6, test_freq=2, max_failures=1)
    trial = plan.trials[0].name
    exp_dir = _start(plan, tmp_path, {"STANDIN_CHECKPOINTS": "1", "STANDIN_PAUSE": json.dumps({trial: 5}),
                                      "STANDIN_SECONDS": "2"})
    trial_dir = exp_dir / "trials" / trial
    checkpoints = trial_dir / "checkpoints"

    def cut_and_stop(wait_for) -> dict:
        wait_for("attempt 1 held after step 5, logged", lambda: (trial_dir / "attempts/1/paused.json").exists()
                 and 5 in _steps(trial_dir / "metrics.jsonl"))
        tracker = (checkpoints / "latest_checkpointed_iteration.txt").read_text()
        shard = checkpoints / "global_step_4" / "actor" / "model_world_size_1_rank_0.pt"
        shard.write_bytes(shard.read_bytes()[:10])  # cut off, as a node dying mid-save would leave it
        # the attempt fails (stopped by someone else), so Tune retries it
        _client(three_gpu_nodes).stop_job(_status(exp_dir, trial)["attempts"][0]["submission_id"])
        return {"tracker": tracker}

    injected = _inject(exp_dir, cut_and_stop)
    code, output = _run(plan, exp_dir, three_gpu_nodes.address, tmp_path)
    assert "error" not in injected, injected.get("error", "") + output
    assert code == 0 and injected["tracker"] == "4", output
    status = _status(exp_dir, trial)
    assert [a["job_status"] for a in status["attempts"]] == ["STOPPED", "SUCCEEDED"], output
    retry = status["attempts"][1]
    assert retry["resumed_from_step"] == 2  # the previous complete checkpoint, not the cut-off step 4
    assert "step 4: actor/model_world_size_1_rank_0.pt is cut off" in retry["checkpoint_warning"]
    assert f"Resuming from {checkpoints}/global_step_2" in (trial_dir / "attempts/2/job.log").read_text()
    assert _steps(trial_dir / "attempts/1/metrics.jsonl")[-1] == 5
    assert _steps(trial_dir / "attempts/2/metrics.jsonl")[0] == 2
    assert _steps(trial_dir / "metrics.jsonl") == list(range(7))  # every step once: 3-5 re-run, none twice


def test_a_node_that_dies_costs_its_trial_the_steps_since_its_checkpoint(three_gpu_nodes, tmp_path):
    """Runs last in this module: it kills one of the worker nodes."""
    plan = _plan("nodedeath", [0, 1], steps=8, test_freq=3, max_failures=2)
    names = [t.name for t in plan.trials]
    exp_dir = _start(plan, tmp_path, {
        "STANDIN_CHECKPOINTS": "1", "STANDIN_WORKERS": "1", "STANDIN_GPUS_ON_SLOT_NODES": "1", "STANDIN_SECONDS": "2",
        "STANDIN_PAUSE": json.dumps({name: 5 for name in names})})
    paused = {t: exp_dir / "trials" / t / "attempts/1/paused.json" for t in names}
    workers = {n.node_id: n for n in three_gpu_nodes.worker_nodes}

    def kill_a_worker_node(wait_for) -> dict:
        wait_for("both trials held after step 5, logged", lambda: all(
            p.exists() and 5 in _steps(p.parents[2] / "metrics.jsonl") for p in paused.values()))
        gpus = {t: json.loads(p.read_text())["nodes"] for t, p in paused.items()}
        slots = {t: _status(exp_dir, t)["attempts"][0]["slot_nodes"] for t in names}
        victim = next(t for t in names if gpus[t][0] in workers)  # at most one trial is on the head
        node_id = gpus[victim][0]
        seen = {"victim": victim, "node": node_id, "gpus": gpus, "slots": slots,
                "checkpoint": int((exp_dir / "trials" / victim / "checkpoints" /
                                   "latest_checkpointed_iteration.txt").read_text())}
        three_gpu_nodes.remove_node(workers[node_id], allow_graceful=False)  # SIGKILL: raylet and all of the node
        survivor = next(t for t in names if t != victim)
        (exp_dir / f"release-{survivor}").touch()  # the other trial goes on; the victim's job stays held till it dies
        return seen

    seen = _inject(exp_dir, kill_a_worker_node)
    code, output = _run(plan, exp_dir, three_gpu_nodes.address, tmp_path)
    assert "error" not in seen, seen.get("error", "") + output
    victim, node_id, checkpoint = seen["victim"], seen["node"], seen["checkpoint"]
    survivor = next(t for t in names if t != victim)
    # the node held the victim's GPUs and its controller (its verl_slot), and nothing of the other trial
    assert seen["slots"][victim] == seen["gpus"][victim] == [node_id]
    assert seen["slots"][survivor] == seen["gpus"][survivor] != [node_id]
    assert checkpoint == 3
    assert code == 0, output

    status = _status(exp_dir, victim)
    assert status["state"] == "succeeded" and len(status["attempts"]) == 2, output
    retry = status["attempts"][1]
    assert retry["slot_nodes"] and retry["slot_nodes"] != [node_id]  # retried on another node
    assert retry["resumed_from_step"] == checkpoint and "checkpoint_warning" not in retry
    trial_dir = exp_dir / "trials" / victim
    assert f"Resuming from {trial_dir / 'checkpoints'}/global_step_3" in (trial_dir / "attempts/2/job.log").read_text()
    ran_before = _steps(trial_dir / "attempts/1/metrics.jsonl")
    assert ran_before == list(range(6))  # nothing after the node died
    lost = [s for s in ran_before if s > checkpoint]
    assert lost == [4, 5]  # steps lost: those since the checkpoint, which the retry ran again
    assert _steps(trial_dir / "attempts/2/metrics.jsonl") == list(range(checkpoint, 9))
    for trial in names:
        steps = _steps(exp_dir / "trials" / trial / "metrics.jsonl")
        assert steps == list(range(9)), (trial, steps)  # every step once: none lost from the stream, none twice
    other = _status(exp_dir, survivor)
    assert other["state"] == "succeeded" and len(other["attempts"]) == 1  # carried on
    print(f"\nnode death: checkpoint {checkpoint}, attempt 1 ran to step {ran_before[-1]}, steps lost {len(lost)}, "
          f"retried on {retry['slot_nodes'][0][:8]} (dead: {node_id[:8]})")
