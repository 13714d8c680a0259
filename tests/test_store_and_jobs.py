"""The experiment store (runs/<NAME>/) and the one job runner, on their own: crash-safe files, torn lines,
names that stay inside runs/, secrets never written, a job stopped when its runner is interrupted."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from orchestrator.errors import UserError
from orchestrator.jobs import JobRun, TrialJob, redacted, stop_jobs
from orchestrator.store import (ExperimentDir, JsonlTail, MetricStream, TrialDir, append_record, check_name,
                                experiment_dir, read_records, summary, validations, write_json)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".", "..", "x y", "é", "/abs", "a\\b"])
def test_an_experiment_name_is_one_path_component(bad, tmp_path):
    with pytest.raises(UserError, match="one path component"):
        experiment_dir(bad, tmp_path)


@pytest.mark.parametrize("good", ["alpha-beta", "compare_7b.v2", "x"])
def test_good_names_stay_under_the_root(good, tmp_path):
    assert check_name(good) == good
    assert experiment_dir(good, tmp_path).parent == tmp_path


def test_a_torn_last_line_is_skipped_and_the_next_record_starts_on_a_line_of_its_own(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "data": {"a": 1}}\n{"step": 2, "data": {"a"')  # a crash mid-write
    assert [r["step"] for r in read_records(path)] == [1]
    append_record(path, {"step": 2, "data": {"a": 2}})
    assert [r["step"] for r in read_records(path)] == [1, 2]
    assert path.read_text().endswith('{"step": 2, "data": {"a": 2}}\n')


def test_write_json_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "status.json"
    write_json(path, {"state": "running"})
    write_json(path, {"state": "succeeded"})
    assert json.loads(path.read_text()) == {"state": "succeeded"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_metric_stream_keeps_every_step_once_across_a_retry(tmp_path):
    stream = MetricStream(tmp_path / "metrics.jsonl")
    for step in (0, 1, 2, 3):
        assert stream.accept({"step": step, "data": {"x": step}})
    stream.truncate_after(2)  # the retry resumes from the checkpoint of step 2
    assert not stream.accept({"step": 2, "data": {"x": 2}})  # verl logs the resume step again: nothing new
    assert stream.accept({"step": 2, "data": {"val-core/a/acc/mean@4": 0.5}})  # new keys are merged
    assert stream.accept({"step": 3, "data": {"x": 3}})
    again = MetricStream(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in again.records] == [0, 1, 2, 3]
    assert again.records[2]["data"] == {"x": 2, "val-core/a/acc/mean@4": 0.5}


def test_summary_and_validations_read_the_latest_values():
    records = [{"step": 0, "data": {"val-core/average/acc/mean@8": 0.4, "val-core/average/acc/pass@8": 0.7}},
               {"step": 1, "data": {"actor/entropy": 0.9, "critic/score/mean": -0.2}},
               {"step": 2, "data": {"actor/entropy": 0.8, "val-core/average/acc/mean@8": 0.5}}]
    assert summary(records) == {"global_step": 2, "validations": 2, "entropy": 0.8, "reward": -0.2,
                                "val_avg": 0.5, "val_pass": 0.7, "k": 8}
    assert [step for step, _ in validations(records)] == [0, 2]


def test_jsonl_tail_waits_for_a_complete_line_and_restarts_on_truncation(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []
    path.write_text('{"step": 1, "data": {}}\n{"step": 2,')
    assert [r["step"] for r in tail.read()] == [1]
    with open(path, "a") as f:
        f.write(' "data": {}}\n')
    assert [r["step"] for r in tail.read()] == [2]
    path.write_text('{"step": 0, "data": {}}\n')  # verl restarted and truncated the file
    assert [r["step"] for r in tail.read()] == [0]


def test_a_trial_dir_that_never_started_reads_as_pending(tmp_path):
    files = TrialDir(tmp_path / "t")
    assert files.status() == {"state": "pending", "attempts": []}
    assert files.records() == [] and files.info() == {} and files.wall_seconds() == 0


def test_a_missing_or_unreadable_plan_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="experiment.json missing"):
        ExperimentDir(tmp_path).plan()
    (tmp_path / "experiment.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(UserError, match="not a plan"):
        ExperimentDir(tmp_path).plan()


def test_secrets_are_never_part_of_the_recorded_environment():
    env = {"WANDB_API_KEY": "k" * 40, "RAY_AUTH_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "MY_PASSWORD": "p",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"}
    assert redacted(env) == {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"}


class FakeClient:
    """A JobSubmissionClient stand-in: the job runs for ``steps`` polls, writing one record per poll."""

    def __init__(self, metrics_path, steps, end="SUCCEEDED"):
        self.metrics_path, self.steps, self.end = metrics_path, steps, end
        self.polls, self.calls = 0, []

    def submit_job(self, **kwargs):
        self.calls.append(("submit", kwargs["submission_id"], kwargs["metadata"]))

    def get_job_status(self, submission_id):
        self.polls += 1
        if self.polls <= self.steps:
            append_record(self.metrics_path, {"step": self.polls, "data": {"x": self.polls}})
            return SimpleNamespace(value="RUNNING")
        return SimpleNamespace(value=self.end)

    def stop_job(self, submission_id):
        self.calls.append(("stop", submission_id))

    def get_job_logs(self, submission_id):
        return "the job's log\n"

    def list_jobs(self):
        return [SimpleNamespace(submission_id="a", status=SimpleNamespace(value="RUNNING"),
                                metadata={"maspo_experiment": "e", "maspo_trial": "t"}),
                SimpleNamespace(submission_id="b", status=SimpleNamespace(value="SUCCEEDED"),
                                metadata={"maspo_experiment": "e", "maspo_trial": "t"}),
                SimpleNamespace(submission_id="c", status=SimpleNamespace(value="RUNNING"),
                                metadata={"maspo_experiment": "e", "maspo_trial": "other"})]


def test_the_job_runner_streams_every_record_and_keeps_the_log(tmp_path):
    job = TrialJob(["a=1"], {}, tmp_path, tmp_path / "m.jsonl")
    client = FakeClient(job.metrics_path, steps=3)
    seen = []
    run = JobRun(client, job, "sub-1", log_path=tmp_path / "job.log", metadata={"k": "v"}, poll_s=0)
    assert run.run(lambda records: seen.extend(r["step"] for r in records)) == "SUCCEEDED"
    assert seen == [1, 2, 3]
    assert (tmp_path / "job.log").read_text() == "the job's log\n"
    assert client.calls == [("submit", "sub-1", {"k": "v"})]  # ended by itself: never stopped


def test_an_interrupted_runner_stops_its_job(tmp_path):
    job = TrialJob(["a=1"], {}, tmp_path, tmp_path / "m.jsonl")
    client = FakeClient(job.metrics_path, steps=10)

    def interrupt(records):
        raise KeyboardInterrupt

    run = JobRun(client, job, "sub-2", log_path=tmp_path / "job.log", poll_s=0)
    with pytest.raises(KeyboardInterrupt):
        run.run(interrupt)
    assert ("stop", "sub-2") in client.calls and run.status == "STOPPED"
    assert (tmp_path / "job.log").exists()


def test_stop_jobs_stops_only_the_running_jobs_of_that_trial(tmp_path):
    client = FakeClient(tmp_path / "m.jsonl", steps=0)
    assert stop_jobs(client, {"maspo_experiment": "e", "maspo_trial": "t"}) == ["a"]
    assert client.calls == [("stop", "a")]


def test_rendering_a_trial_has_no_side_effects(tmp_path, monkeypatch):
    """Rendering used to create a Ray temp dir for every trial (and the caller dropped the override)."""
    import tempfile

    from orchestrator.config.trial import trial_config
    from orchestrator.render import LocalAssets, render_local_trial

    def no_temp_dirs(*args, **kwargs):
        raise AssertionError("rendering created a temporary directory")

    monkeypatch.setattr(tempfile, "mkdtemp", no_temp_dirs)
    out = tmp_path / "trial"
    assets = LocalAssets(tmp_path / "model", tmp_path / "train.parquet", [tmp_path / "val.parquet"])
    job = render_local_trial(trial_config("maspo", seed=0), assets, out, "t", checkpoint_every=4)
    assert not any(tmp_path.iterdir())  # nothing written, not even the trial's directory
    assert not any(o.lstrip("+").startswith("ray_kwargs.ray_init.") for o in job.overrides)  # joins the trial's Ray
    assert "trainer.logger=['console','file','wandb']" in job.overrides
    assert "trainer.save_freq=4" in job.overrides and "trainer.resume_mode=auto" in job.overrides
