"""The cli/ package: one handler for a user's mistakes on every command, choices that match what they feed, and
the edge checks (spec files that are not UTF-8, experiment names that would leave --root). No Ray, fast."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.cli import common
from orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def one_error_line(result) -> str:
    """The run ended with exit 2 and exactly one line ``error: ...`` on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def commands(group, prefix=()) -> list:
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (Typer may use its own copy of Click)
            found += commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


ALL_COMMANDS = commands(typer.main.get_command(app))


def test_every_command_runs_inside_the_one_handler():
    names = {" ".join(path) for path, _ in ALL_COMMANDS}
    assert {"algorithms", "probe", "run", "sweep", "compare", "resume", "results", "demo", "sync", "cluster up",
            "cluster submit", "data prepare", "data sources", "dashboard local", "dashboard publish"} <= names
    unhandled = [" ".join(path) for path, command in ALL_COMMANDS
                 if not getattr(command.callback, "handles_user_errors", False)]
    assert not unhandled, unhandled


def test_the_handler_prints_one_plain_line_and_exits_2():
    mini = typer.Typer()

    @mini.command()
    @common.handles_user_errors
    def boom() -> None:
        raise UserError("first line\n  second [/] [bold]not markup[/bold] :smile:")

    result = runner.invoke(mini, [])
    assert one_error_line(result) == "error: first line second [/] [bold]not markup[/bold] :smile:"


def test_a_bug_is_not_a_user_error():
    mini = typer.Typer()

    @mini.command()
    @common.handles_user_errors
    def bug() -> None:
        raise KeyError("a bug keeps its traceback")

    result = runner.invoke(mini, [])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_every_help_explains_the_command():
    for path, _ in ALL_COMMANDS:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.stdout and len(result.stdout.split()) > 20, path
    sweep = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"}).stdout
    for listed in ("local|a100", "1.5b|7b|14b", "fifo|asha", "listed|full", "--max-concurrent", "--profile-set"):
        assert listed in sweep, listed


def test_choices_are_the_strings_downstream():
    from orchestrator.config.experiment import SCALES, SweepSpec
    from orchestrator.config.plan import ExperimentPlan
    from orchestrator.config.trial import LocalProfile
    from orchestrator.scales import A100Profile

    assert tuple(s.value for s in common.Scale) == SCALES
    assert {p.value for p in common.Profile} == {LocalProfile().name, A100Profile.model_fields["name"].default}
    scheduler = ExperimentPlan.model_fields["scheduler"].annotation
    assert tuple(s.value for s in common.Scheduler) == typing.get_args(scheduler)
    grid = typing.get_type_hints(SweepSpec.grid_points)["grid"]
    assert tuple(g.value for g in common.Grid) == typing.get_args(grid)
    from orchestrator.results import ESTIMATORS

    assert {e.value for e in common.Estimator} == set(ESTIMATORS)


def test_the_plan_holds_plain_strings_not_enums():
    from orchestrator.cli.experiments import _plan

    plan = _plan("compare", "compare", name=None, profile=common.Profile.a100, scale=common.Scale.b7, seeds=1,
                 steps=None, max_concurrent=1, scheduler=common.Scheduler.asha, demo=False, profile_set=[])
    for field in ("profile", "scale", "scheduler"):
        assert type(getattr(plan, field)) is str, field
    assert '"profile":"a100"' in plan.model_dump_json() and '"scheduler":"asha"' in plan.model_dump_json()


# --------------------------------------------------------------------------------------------------------
# a spec file that is not UTF-8


def test_a_spec_that_is_not_utf8_is_one_line_naming_the_file(tmp_path):
    spec = tmp_path / "some.bin"
    spec.write_bytes(b"kind: sweep\nname: \xff\xfe\x00 binary")
    result = runner.invoke(app, ["sweep", str(spec), "--dry-run", "--root", str(tmp_path / "runs")])
    line = one_error_line(result)
    assert str(spec) in line and "not a UTF-8 text file" in line
    assert not (tmp_path / "runs").exists()


def test_a_spec_that_is_not_utf8_exits_2_from_the_shell(tmp_path):
    spec = tmp_path / "some.bin"
    spec.write_bytes(bytes(range(128, 256)))
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", str(spec), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {spec}: not a UTF-8 text file (byte 0: invalid start byte)"]
    assert list(tmp_path.iterdir()) == [spec]


# --------------------------------------------------------------------------------------------------------
# names that would become a path outside --root


BAD_NAMES = ["../x", "..", ".", "a/b", "/tmp/x", "x y", "ünï", "[/]", "x" * (common.MAX_NAME_LENGTH + 1)]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("command", [["sweep"], ["compare"], ["sweep", "--dry-run"], ["compare", "--dry-run"]])
def test_an_experiment_name_is_one_path_component(tmp_path, name, command):
    root = tmp_path / "runs"
    result = runner.invoke(app, [*command, "--name", name, "--root", str(root)])
    assert "name" in one_error_line(result)
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere, not even outside --root


def test_a_name_from_the_spec_is_checked_too(tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text((ROOT / "sweeps" / "alpha-beta.yaml").read_text().replace("name: alpha-beta", "name: ../evil"))
    assert "name: ../evil" in spec.read_text()
    result = runner.invoke(app, ["sweep", str(spec), "--root", str(tmp_path / "runs")])
    assert "'../evil'" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yaml"]


@pytest.mark.parametrize("args", [
    ["resume", "../x"], ["results", "../x"], ["results", ".."], ["sync", "../x"], ["sync", "../x", "--dry-run"],
    ["dashboard", "local", "../x"], ["dashboard", "publish", "../x"],
])
def test_names_of_existing_experiments_are_checked_too(tmp_path, args):
    (tmp_path / "x").mkdir()
    (tmp_path / "runs").mkdir()
    result = runner.invoke(app, [*args, "--root", str(tmp_path / "runs")])
    assert "must be letters, digits" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs", "x"]


def test_dashboard_and_sync_still_take_a_path_to_an_experiment_directory(tmp_path):
    exp = tmp_path / "elsewhere" / "exp"
    (exp / "trials").mkdir(parents=True)
    result = runner.invoke(app, ["sync", str(exp), "--dry-run"])
    assert result.exit_code == 0 and "nothing to upload" in result.stdout


def test_maspo_run_checks_its_name_before_anything(tmp_path, monkeypatch):
    import orchestrator.local_trial

    def must_not_run(*args, **kwargs):
        raise AssertionError("started a trial")

    monkeypatch.setattr(orchestrator.local_trial, "run_local_trial", must_not_run)
    monkeypatch.chdir(tmp_path)
    for name in ("../x", "a/b", ".."):
        assert "trial name" in one_error_line(runner.invoke(app, ["run", "--name", name]))
    assert list(tmp_path.iterdir()) == []


def test_results_says_when_it_cannot_write_the_csv(tmp_path):
    from orchestrator.cli.experiments import _plan
    from orchestrator.store import ExperimentDir

    plan = _plan("compare", "compare", name="r", profile=common.Profile.local, scale=None, seeds=1, steps=None,
                 max_concurrent=1, scheduler=common.Scheduler.fifo, demo=False, baselines="grpo", profile_set=[])
    ExperimentDir.named("r", tmp_path / "runs").save_plan(plan)
    result = runner.invoke(app, ["results", "r", "--root", str(tmp_path / "runs"), "--csv",
                                 str(tmp_path / "missing" / "t.csv")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: cannot write {tmp_path / 'missing' / 't.csv'}: "
                                                  "No such file or directory"]


# --------------------------------------------------------------------------------------------------------
# bounds and values checked at the edge


@pytest.mark.parametrize("args, message", [
    (["compare", "--dry-run", "-P", "name=a100"], "use --profile"),
    (["compare", "--dry-run", "-P", "scale=7b"], "use --scale"),
    (["compare", "--dry-run", "-P", "steps=10000000"], "-P steps must be 1 to"),
    (["compare", "--dry-run", "-P", "novalue"], "expected NAME=VALUE"),
    (["run", "--lr", "inf"], "--lr must be a finite number"),
    (["run", "--alpha", "nan"], "--alpha must be a finite number"),
    (["probe", "--pi-old", "1e-320"], "--pi-old must be in (0, 1]"),
    (["probe", "--advantage", "inf"], "--advantage must be a finite number"),
])
def test_values_that_would_fail_later_are_refused_at_the_edge(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert message in one_error_line(runner.invoke(app, args))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["compare", "--dry-run", "--seeds", str(common.MAX_SEEDS + 1)],
    ["compare", "--dry-run", "--seeds", "-1"],
    ["compare", "--dry-run", "--steps", str(10**30)],
    ["compare", "--dry-run", "--max-concurrent", str(common.MAX_CONCURRENT + 1)],
    ["run", "--seed", str(2**32)],
])
def test_numbers_out_of_range_are_clicks_usage_errors(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Usage:" in result.stderr and "Invalid value" in result.stderr
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_a_dry_run_imports_neither_torch_verl_ray_nor_wandb(tmp_path):
    code = f"""
import sys
from typer.testing import CliRunner
from orchestrator.cli import app
for args in (["compare", "--dry-run"], ["sweep", "--dry-run", "--profile", "a100", "--scale", "7b"],
             ["sweep", "--dry-run", "--name", "../x"], ["results", "nope"]):
    result = CliRunner().invoke(app, [*args, "--root", {str(tmp_path / "runs")!r}])
    assert result.exit_code in (0, 2), result.output
heavy = sorted(m for m in ("torch", "verl", "ray", "transformers", "wandb") if m in sys.modules)
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args", [["sync", "nope"], ["sync", "nope", "--dry-run"], ["dashboard", "local", "nope"],
                                  ["dashboard", "publish", "nope"]])
def test_a_missing_experiment_is_the_same_line_everywhere(tmp_path, args):
    result = runner.invoke(app, [*args, "--runs-root", str(tmp_path)])
    assert one_error_line(result) == f"error: no experiment 'nope': {tmp_path / 'nope'} does not exist"


def test_an_output_that_is_a_file_is_one_line_before_anything_starts(tmp_path, monkeypatch):
    import orchestrator.local_trial
    import orchestrator.tune_runner

    def must_not_run(*args, **kwargs):
        raise AssertionError("started")

    monkeypatch.setattr(orchestrator.local_trial, "run_local_trial", must_not_run)
    monkeypatch.setattr(orchestrator.tune_runner, "run_experiment", must_not_run)
    file = tmp_path / "a-file"
    file.write_text("")
    assert "is a file" in one_error_line(runner.invoke(app, ["run", "--out", str(file)]))
    assert "is not a directory" in one_error_line(runner.invoke(app, ["compare", "--root", str(file)]))
    assert list(tmp_path.iterdir()) == [file] and file.read_text() == ""
