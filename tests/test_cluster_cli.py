"""`maspo cluster ...`: the YAML is validated before anything launches; then the exact `ray` command runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from orchestrator.cli import cluster as cluster_cli
from orchestrator.cli.cluster import cluster_app, ray_executable
from orchestrator.cli.data import data_app

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
ONPREM = CLUSTER / "a100-onprem.yaml"

# what the lead wires into orchestrator/cli/__init__.py
app = typer.Typer()
app.add_typer(cluster_app, name="cluster")
app.add_typer(data_app, name="data")
runner = CliRunner()


@pytest.fixture
def calls(monkeypatch):
    """Every subprocess.run (argv, exit status 0) and every job submission, recorded instead of run."""
    recorded: list = []

    def fake_run(argv, *args, **kwargs):
        recorded.append(list(argv))
        return subprocess.CompletedProcess(argv, 0)

    class FakeClient:
        def __init__(self, address):
            recorded.append(("client", address))

        def submit_job(self, **kwargs):
            recorded.append(("submit", kwargs))
            return kwargs["submission_id"]

    monkeypatch.setattr(cluster_cli.subprocess, "run", fake_run)
    monkeypatch.setattr(cluster_cli, "job_client", FakeClient)
    return recorded


@pytest.fixture
def broken(tmp_path) -> Path:
    config = yaml.safe_load((CLUSTER / "a100-aws.yaml").read_text())
    config["available_node_types"]["a100"]["resources"]["GPU"] = "8"  # Ray's schema wants an integer
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


COMMANDS = [["up"], ["down"], ["status"], ["submit", "{file}", "--", "maspo", "sweep", "alpha-beta"]]


def _argv(command: list[str], file: Path) -> list[str]:
    args = [a.replace("{file}", str(file)) for a in command]
    return ["cluster", *args] if "{file}" in command else ["cluster", *args, str(file)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_broken_yaml_exits_2_with_rays_message_and_launches_nothing(command, broken, calls):
    result = runner.invoke(app, _argv(command, broken))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {broken}: Ray's cluster schema rejects it at "), lines[0]
    assert "available_node_types.a100.resources.GPU" in lines[0] and "'8'" in lines[0]
    assert calls == []


def test_a_missing_or_unparsable_file_exits_2(tmp_path, calls):
    result = runner.invoke(app, ["cluster", "up", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "cannot read the file" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: [unclosed\n")
    result = runner.invoke(app, ["cluster", "up", str(bad)])
    assert result.exit_code == 2 and "not valid YAML" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert calls == []


def test_up_runs_ray_up_with_the_file(calls):
    result = runner.invoke(app, ["cluster", "up", str(ONPREM)])
    assert result.exit_code == 0, result.output
    assert calls == [[ray_executable(), "up", "-y", str(ONPREM)]]
    assert "30 verl_slot(s)" in result.stderr


def test_the_exit_status_of_ray_is_the_commands(monkeypatch):
    monkeypatch.setattr(cluster_cli.subprocess, "run", lambda argv, *a, **k: subprocess.CompletedProcess(argv, 3))
    assert runner.invoke(app, ["cluster", "down", str(ONPREM)]).exit_code == 3


def test_down_and_status_run_rays_own_commands(calls):
    assert runner.invoke(app, ["cluster", "down", str(ONPREM)]).exit_code == 0
    result = runner.invoke(app, ["cluster", "status", str(ONPREM)])
    assert result.exit_code == 0, result.output
    ray = ray_executable()
    assert calls == [[ray, "down", "-y", str(ONPREM)],
                     [ray, "get-head-ip", str(ONPREM)],
                     [ray, "exec", str(ONPREM), "ray status"]]
    assert "30 verl_slot(s)" in result.stdout


def test_submit_sends_the_command_after_the_separator_as_a_ray_job(calls):
    result = runner.invoke(app, ["cluster", "submit", str(ONPREM), "--submission-id", "s1", "--env", "NCCL_DEBUG=INFO",
                                 "--", "maspo", "sweep", "alpha-beta", "--profile", "a100", "--scale", "7b"])
    assert result.exit_code == 0, result.output
    assert calls == [("client", cluster_cli.DEFAULT_JOB_ADDRESS),
                     ("submit", {"entrypoint": "maspo sweep alpha-beta --profile a100 --scale 7b",
                                 "submission_id": "s1", "runtime_env": {"env_vars": {"NCCL_DEBUG": "INFO"}}})]
    assert "ray job logs --address http://127.0.0.1:8265 -f s1" in result.stdout


def test_submit_rejects_a_malformed_env_before_submitting(calls):
    result = runner.invoke(app, ["cluster", "submit", str(ONPREM), "--env", "NOEQUALS", "--", "maspo", "results"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr
    assert calls == []


def test_submit_reports_an_unreachable_cluster_in_one_line(monkeypatch):
    def refuse(address):
        raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:8265.\nmore detail")

    monkeypatch.setattr(cluster_cli, "job_client", refuse)
    result = runner.invoke(app, ["cluster", "submit", str(ONPREM), "--", "maspo", "results"])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "ray dashboard" in result.stderr


@pytest.mark.parametrize("argv, phrases", [
    (["cluster", "--help"], ["up", "down", "status", "submit", "validated offline"]),
    (["cluster", "up", "--help"], ["ray up -y FILE", "checking FILE offline"]),
    (["cluster", "submit", "--help"], ["Ray Job", "ray dashboard FILE"]),
    (["data", "prepare", "--help"], ["train.parquet", "Hugging Face Hub", "--only"]),
])
def test_help_texts_explain(argv, phrases):
    result = runner.invoke(app, argv)
    assert result.exit_code == 0
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stdout).split())  # rich boxes and line breaks out
    for phrase in phrases:
        assert phrase in text, phrase


def test_the_slurm_template_calls_the_intended_cli():
    script = (CLUSTER / "slurm" / "maspo.sbatch").read_text()
    run = script[script.index('srun --overlap --nodes=1 --ntasks=1 -w "$head_node"'):]
    words = " ".join(run.replace("\\\n", " ").split())
    assert ('maspo $MASPO_COMMAND --profile a100 --scale "$SCALE" --address "$head_ip:$RAY_PORT" '
            '--root "$RESULTS_DIR" --max-concurrent "$MAX_CONCURRENT"') in words
    assert 'MASPO_COMMAND=${MASPO_COMMAND:-sweep alpha-beta}' in script  # `maspo sweep alpha-beta ...`
    for variable in ("MASPO_DATA_DIR", "MASPO_CHECKPOINT_ROOT"):  # what A100Profile reads
        assert f"export {variable}=" in script, variable
