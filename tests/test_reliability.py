"""Faults without a cluster: a checkpoint cut off by a crash, and a Ray Job that never starts.

A checkpoint is built the way verl's ``_save_checkpoint`` builds it (tests/standin_job.py's ``save_checkpoint``,
whose layout and order are checked against verl's own source below), then damaged as a node dying mid-save
would leave it. The retry must pass over it (``store.choose_resume``) so that verl's ``resume_mode=auto``, which
loads whatever the tracker names (the stand-in's ``load_checkpoint`` does the same), gets a whole checkpoint.
The multi-node versions of these faults, on a real Ray cluster, are in tests/test_faults_cluster.py.
"""

from __future__ import annotations

import importlib.util
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.jobs import JobRun, JobStartTimeout, TrialJob
from orchestrator.store import CHECKPOINT_TRACKER, checkpoint_problem, checkpoint_step, choose_resume, resume_point
from tests.standin_job import load_checkpoint, save_checkpoint


def _cut(path: Path, keep: float = 0.5) -> None:
    """Truncate a file as a crash mid-write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def two_checkpoints(tmp_path) -> Path:
    """Steps 2 and 4 saved by one run (the newest two kept: step 1's actor/ was removed, as verl does)."""
    root, saved = tmp_path / "checkpoints", []
    for step in (1, 2, 4):
        save_checkpoint(root, step, world_size=2, keep=2, saved=saved)
    return root


def test_a_whole_checkpoint_is_complete_and_a_damaged_one_says_why(two_checkpoints):
    newest = two_checkpoints / "global_step_4"
    assert checkpoint_problem(newest) is None and checkpoint_problem(two_checkpoints / "global_step_2") is None
    assert checkpoint_problem(two_checkpoints / "global_step_1") == "actor/fsdp_config.json is missing or unreadable"

    _cut(newest / "actor" / "optim_world_size_2_rank_1.pt")
    assert "actor/optim_world_size_2_rank_1.pt is cut off" in checkpoint_problem(newest)
    (newest / "actor" / "optim_world_size_2_rank_1.pt").unlink()
    assert checkpoint_problem(newest) == "actor/optim_world_size_2_rank_1.pt is missing"
    save_checkpoint(two_checkpoints, 4, world_size=2)
    (newest / "data.pt").unlink()  # the save stopped before the dataloader's state
    assert checkpoint_problem(newest) == "data.pt is missing"
    save_checkpoint(two_checkpoints, 4, world_size=2)
    (newest / "actor" / "fsdp_config.json").write_text("{")  # rank 0 died writing it
    assert checkpoint_problem(newest) == "actor/fsdp_config.json is missing or unreadable"
    (newest / "actor" / "fsdp_config.json").write_text('{"world_size": 3}')  # a shard count that does not match
    assert checkpoint_problem(newest) == "actor/model_world_size_3_rank_0.pt is missing"
    save_checkpoint(two_checkpoints, 4, world_size=2)
    (newest / "critic").mkdir()  # a critic's checkpoint is checked the same way
    assert checkpoint_problem(newest) == "critic/fsdp_config.json is missing or unreadable"


@pytest.mark.parametrize("damage", ["truncated shard", "missing shard", "truncated data.pt"])
def test_a_retry_falls_back_from_a_cut_off_checkpoint_to_the_previous_one(two_checkpoints, damage):
    newest = two_checkpoints / "global_step_4"
    target = {"truncated shard": newest / "actor" / "model_world_size_2_rank_0.pt",
              "missing shard": newest / "actor" / "extra_state_world_size_2_rank_1.pt",
              "truncated data.pt": newest / "data.pt"}[damage]
    if damage.startswith("missing"):
        target.unlink()
    else:
        _cut(target, keep=0.9)
    with pytest.raises((zipfile.BadZipFile, FileNotFoundError)):
        load_checkpoint(two_checkpoints, world_size=2)  # what verl's resume_mode=auto would do, on every retry

    choice = choose_resume(two_checkpoints, logged_steps={0, 1, 2, 3, 4, 5})
    assert choice.step == 2 and (two_checkpoints / CHECKPOINT_TRACKER).read_text() == "2"
    assert choice.skipped[0][0] == 4 and target.name in choice.skipped[0][1]
    assert choice.warning().startswith("resuming from the checkpoint of step 2, not from the newest checkpoint")
    assert load_checkpoint(two_checkpoints, world_size=2) == 2  # verl now loads a whole checkpoint
    # the retry saves step 4 again: the tracker moves on and nothing is passed over any more
    save_checkpoint(two_checkpoints, 4, world_size=2)
    again = choose_resume(two_checkpoints, logged_steps={0, 1, 2, 3, 4})
    assert again.step == 4 and again.warning() is None


def test_with_no_whole_checkpoint_left_the_retry_starts_over_with_a_warning(two_checkpoints):
    _cut(two_checkpoints / "global_step_4" / "actor" / "model_world_size_2_rank_1.pt")
    (two_checkpoints / "global_step_2" / "data.pt").unlink()
    choice = choose_resume(two_checkpoints, logged_steps={0, 1, 2, 3, 4})
    assert choice.step == 0 and [s for s, _ in choice.skipped] == [4, 2, 1]  # 1: verl removed its actor/
    assert "step 0 (no complete checkpoint left)" in choice.warning()
    assert load_checkpoint(two_checkpoints, world_size=2) == 0  # verl finds no global_step_0: from scratch
    assert checkpoint_step(two_checkpoints) == 0


def test_a_missing_or_torn_tracker_lets_the_files_decide(two_checkpoints):
    tracker = two_checkpoints / CHECKPOINT_TRACKER
    tracker.unlink()  # verl would start over and lose 4 steps
    choice = choose_resume(two_checkpoints, logged_steps={0, 1, 2, 3, 4})
    assert choice.step == 4 and tracker.read_text() == "4" and choice.tracker_lost
    assert "latest_checkpointed_iteration.txt is missing or unreadable" in choice.warning()
    tracker.write_text("")  # verl opens it with "w": a crash right then leaves it empty
    _cut(two_checkpoints / "global_step_4" / "data.pt")
    assert choose_resume(two_checkpoints, logged_steps={0, 1, 2, 3, 4}).step == 2 and tracker.read_text() == "2"


def test_a_save_that_never_reached_the_tracker_is_ignored_quietly(two_checkpoints):
    """A node dying mid-save leaves a newer, partial directory and the tracker at the previous step."""
    save_checkpoint(two_checkpoints, 6, world_size=2)
    (two_checkpoints / CHECKPOINT_TRACKER).write_text("4")
    _cut(two_checkpoints / "global_step_6" / "actor" / "optim_world_size_2_rank_0.pt")
    choice = choose_resume(two_checkpoints, logged_steps={0, 1, 2, 3, 4, 5})
    assert choice.step == 4 and choice.warning() is None  # what verl picks too: nothing to warn about


def test_a_checkpoint_whose_step_was_never_logged_is_passed_over(two_checkpoints):
    """verl saves step c before it logs it: a job killed in between must redo step c from the one before."""
    choice = choose_resume(two_checkpoints, {0, 1, 2, 3})
    assert choice.step == 2 and choice.skipped == ((4, "saved but its metrics were never logged"),)
    assert resume_point(two_checkpoints, {0, 1}) == 0  # step 1's actor/ was removed by verl's retention
    assert resume_point(two_checkpoints.parent / "none", set()) == 0
    assert not (two_checkpoints.parent / "none").exists()  # nothing written where no checkpoint ever was


def _verl_source(relative: str) -> str:
    spec = importlib.util.find_spec("verl")
    return (Path(spec.origin).parent / relative).read_text()


def test_the_stand_ins_checkpoints_are_laid_out_and_ordered_like_verls():
    """What the completeness check relies on, read from the installed verl: fails loudly if verl changes it."""
    trainer = _verl_source("trainer/ppo/ray_trainer.py")
    save = trainer[trainer.index("def _save_checkpoint(self)"):trainer.index("def _load_checkpoint(self)")]
    actor, data, tracker = (save.index(s) for s in ("actor_rollout_wg.save_checkpoint", '"data.pt"',
                                                     '"latest_checkpointed_iteration.txt"'))
    assert actor < data < tracker, "verl no longer writes the tracker file last"
    assert 'f"global_step_{self.global_steps}"' in save and '"actor"' in save
    manager = _verl_source("utils/checkpoint/fsdp_checkpoint_manager.py")
    for kind in ("model", "optim", "extra_state"):
        assert f'f"{kind}_world_size_{{self.world_size}}_rank_{{self.rank}}.pt"' in manager, kind
    assert '"fsdp_config.json"' in manager and re.search(r"torch\.save\(model_state_dict, model_path\)", manager)
    retention = _verl_source("utils/checkpoint/checkpoint_manager.py")
    assert "def ensure_checkpoint_capacity" in retention and "keep_start = len(self.previous_saved_paths)" in retention


# --------------------------------------------------------------------------------------------------------
# a Ray Job that never starts


class PendingClient:
    """A job API whose job never leaves PENDING (its entrypoint's resources exist nowhere)."""

    def __init__(self):
        self.calls = []

    def submit_job(self, **kwargs):
        self.calls.append(("submit", kwargs))

    def get_job_status(self, submission_id):
        return SimpleNamespace(value="STOPPED" if ("stop", submission_id) in self.calls else "PENDING")

    def get_job_info(self, submission_id):
        return SimpleNamespace(message="Job has not started yet. It may be waiting for resources (CPUs, GPUs, "
                                       "memory, custom resources) to become available.")

    def stop_job(self, submission_id):
        self.calls.append(("stop", submission_id))

    def get_job_logs(self, submission_id):
        return ""


def test_a_job_stuck_pending_is_stopped_after_its_start_timeout_with_the_reason(tmp_path):
    job = TrialJob([], {}, tmp_path, tmp_path / "m.jsonl", entrypoint_resources={"no_such_node": 1})
    client = PendingClient()
    run = JobRun(client, job, "t-a1-abc", log_path=tmp_path / "job.log", poll_s=0.01, start_timeout_s=0.2)
    with pytest.raises(JobStartTimeout) as err:
        run.run(lambda records: None)
    message = str(err.value)
    assert "Ray job t-a1-abc did not start within 0.2 s and was stopped: still PENDING" in message
    assert "{'no_such_node': 1}" in message and "waiting for resources" in message
    assert client.calls[0][1]["entrypoint_resources"] == {"no_such_node": 1}
    assert ("stop", "t-a1-abc") in client.calls and run.status == "STOPPED"
    assert (tmp_path / "job.log").exists()


def test_without_a_start_timeout_a_pending_job_is_left_to_ray(tmp_path):
    """``start_timeout_s=None`` keeps the old behaviour (a job that starts late is not a failure)."""
    job = TrialJob([], {}, tmp_path, tmp_path / "m.jsonl")
    client = PendingClient()
    polls = iter(["PENDING"] * 20)
    client.get_job_status = lambda submission_id: SimpleNamespace(value=next(polls, "SUCCEEDED"))
    run = JobRun(client, job, "late", log_path=tmp_path / "job.log", poll_s=0.01)
    assert run.run(lambda records: None) == "SUCCEEDED" and "entrypoint_resources" not in client.calls[0][1]


def test_the_plans_start_timeout_is_typed_and_defaults_to_rays():
    from pydantic import ValidationError

    from orchestrator.config.plan import ExperimentPlan

    base = dict(name="x", kind="compare", spec="t", profile="local", scale="1.5b", seeds=[0], steps=1, trials=[])
    assert ExperimentPlan(**base).job_start_timeout_s == 900
    with pytest.raises(ValidationError):
        ExperimentPlan(**base, job_start_timeout_s=0)


def test_stopping_a_trials_old_jobs_waits_for_started_ones_only():
    """A retry stops its trial's old jobs and waits until they end before it touches the checkpoints. A job that
    never started (stuck PENDING) stays PENDING after ``stop_job`` (Ray ends it before its entrypoint, if it ever
    starts), so waiting for it would hang every retry of a job-start timeout; a started job is waited for."""
    from types import SimpleNamespace

    from orchestrator.jobs import stop_jobs

    class Client:
        def __init__(self, statuses):
            self.statuses, self.stopped = dict(statuses), []

        def list_jobs(self):
            return [SimpleNamespace(submission_id=s, status=SimpleNamespace(value=v), metadata={"maspo_trial": "t"})
                    for s, v in self.statuses.items()]

        def stop_job(self, submission_id):
            self.stopped.append(submission_id)

        def get_job_status(self, submission_id):
            return SimpleNamespace(value=self.statuses[submission_id])

    pending = Client({"t-a1": "PENDING", "t-a0": "FAILED"})
    assert stop_jobs(pending, {"maspo_trial": "t"}, wait_s=0.2, poll_s=0.01) == ["t-a1"] and pending.stopped == ["t-a1"]
    running = Client({"t-a1": "RUNNING"})
    with pytest.raises(TimeoutError, match="t-a1"):
        stop_jobs(running, {"maspo_trial": "t"}, wait_s=0.2, poll_s=0.01)
