"""W&B identity, the verl hook, the offline reader, `maspo sync`, and the dashboards (W&B JSON and local HTML).

Fast tests use verl's real ``Tracking`` with W&B offline in a subprocess, and synthetic experiments. The slow
ones share ONE real local trial (2 steps, a session fixture) and check the dashboards and the reader against it.
Golden files: ``MASPO_UPDATE_GOLDEN=1 pytest tests/test_tracking_dashboards.py`` rewrites ``tests/golden/``.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator import dashboards, tracking
from orchestrator.dashboards import LOCAL_SOURCES, Validation
from tests.conftest import SWEEP_STEPS

GOLDEN = Path(__file__).parent / "golden"
PAPER_SOURCES = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiad")
PALETTE_GROUPS = 3  # groups in the synthetic experiment


def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def clean_env(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


# --------------------------------------------------------------------------------------------------------
# identity


def test_wandb_env_identity_and_offline_without_credentials(monkeypatch, tmp_path):
    clean_env(monkeypatch, tmp_path)
    env = tracking.wandb_env(project="p", entity=None, experiment="alpha-beta", trial_name="maspo-a0.3-s1",
                             algorithm="maspo", seed=1, tags=["sweep", "a,b"], run_id="alpha-beta-abc")
    assert env == {"WANDB_PROJECT": "p", "WANDB_RUN_GROUP": "alpha-beta", "WANDB_JOB_TYPE": "maspo",
                   "WANDB_TAGS": "maspo,seed1,sweep,a b", "WANDB_NAME": "maspo-a0.3-s1",
                   "WANDB_RUN_ID": "alpha-beta-abc", "WANDB_RESUME": "allow", "WANDB_MODE": "offline",
                   "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": "1"}
    assert tracking.wandb_env(project="p", entity="team", experiment="e", trial_name="t", algorithm="grpo",
                              seed=0, run_id="e-1")["WANDB_ENTITY"] == "team"


def test_credentials_switch_online_and_the_key_never_leaves(monkeypatch, tmp_path):
    clean_env(monkeypatch, tmp_path)
    key = "local-" + secrets.token_hex(20)
    assert not tracking.has_credentials()
    monkeypatch.setenv("WANDB_API_KEY", key)
    assert tracking.has_credentials()
    env = tracking.wandb_env(project="p", entity=None, experiment="e", trial_name="t", algorithm="grpo", seed=0,
                             run_id="e-1")
    assert env["WANDB_MODE"] == "online" and key not in json.dumps(env)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's explicit choice wins
    assert tracking.wandb_env(project="p", entity=None, experiment="e", trial_name="t", algorithm="grpo", seed=0,
                              run_id="e-1")["WANDB_MODE"] == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert tracking.has_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a netrc entry for another host
    assert not tracking.has_credentials()


def test_run_id_is_stable_and_wandb_safe():
    from orchestrator.config.trial import trial_config

    trial = trial_config("maspo", {"alpha": 0.3}, seed=2)
    first = tracking.run_id("Alpha Beta/demo!", trial.stable_hash())
    assert first == tracking.run_id("Alpha Beta/demo!", trial_config("maspo", {"alpha": 0.3}, seed=2).stable_hash())
    assert first != tracking.run_id("Alpha Beta/demo!", trial_config("maspo", {"alpha": 0.3}, seed=3).stable_hash())
    assert first.startswith("alpha-beta-demo-") and set(first) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(tracking.run_id("x" * 200, "f" * 40)) <= 64
    env = tracking.trial_wandb_env(trial, experiment="exp", trial_name="maspo-a0.3-s2", label="alpha=0.3",
                                   project="p")
    settings = json.loads(env["MASPO_TRIAL_JSON"])
    assert settings["hyperparameters"]["alpha"] == 0.3 and settings["seed"] == 2 and settings["label"] == "alpha=0.3"
    assert settings["experiment"] == "exp" and env["WANDB_RUN_ID"] == tracking.run_id("exp", trial.stable_hash())


# --------------------------------------------------------------------------------------------------------
# the verl hook, with verl's own Tracking, W&B offline

HOOK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from orchestrator.verl_bridge import wandb_hooks
    wandb_hooks.install()
    from verl.utils.tracking import Tracking
    backends = sys.argv[1].split(",")
    tracker = Tracking(project_name="verl-project", experiment_name="verl-name", default_backend=backends,
                       config={"trainer": {"total_training_steps": 2}, "padding": "x" * 70000})
    tracker.log({"val-core/local_math500/acc/mean@8": 0.25, "val-core/average/acc/mean@8": 0.25}, step=0)
    tracker.log({"actor/entropy": 1.5, "training/global_step": 1}, step=1)
    tracker.log({"actor/entropy": 1.25, "training/global_step": 2, "val-core/average/acc/mean@8": 0.5}, step=2)
    tracker.finish()
""")


def run_hook_script(tmp_path, backends, extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != tracking.TRIAL_JSON_ENV}
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                "VERL_FILE_LOGGER_PATH": str(tmp_path / "metrics.jsonl"), **extra_env})
    out = subprocess.run([sys.executable, "-c", HOOK_SCRIPT, backends], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_hook_gives_verl_runs_the_trial_identity_step_axis_and_config(tmp_path, monkeypatch):
    from orchestrator.config.trial import trial_config

    clean_env(monkeypatch, tmp_path)
    trial = trial_config("maspo", {"alpha": 0.3, "beta": 0.1}, seed=1)
    env = tracking.trial_wandb_env(trial, experiment="hook-test", trial_name="maspo-a0.3-s1", label="alpha=0.3",
                                   project="maspo-test", tags=["sweep"])
    run_hook_script(tmp_path, "console,file,wandb", env)
    [run_dir] = tracking.find_offline_runs(tmp_path)
    run = tracking.read_offline_run(run_dir)
    assert (run.project, run.name, run.group, run.job_type) == ("maspo-test", "maspo-a0.3-s1", "hook-test", "maspo")
    assert run.run_id == env["WANDB_RUN_ID"] and run.tags == ["maspo", "seed1", "sweep"]
    assert run.config["maspo"] == json.loads(env["MASPO_TRIAL_JSON"])
    assert run.config["maspo"]["hyperparameters"]["beta_high"] == 0.1
    assert len(run.config["padding"]) == 70000  # a record spanning several 32 KiB blocks
    # every row carries the training step, the validation before training included
    assert [row["training/global_step"] for row in run.history] == [0, 1, 2]
    assert run.series("actor/entropy", x="training/global_step") == [(1, 1.5), (2, 1.25)]
    assert run.series("val-core/average/acc/mean@8", x="training/global_step") == [(0, 0.25), (2, 0.5)]
    rules = {m["name"]: m for m in run.metrics}
    assert rules["actor/*"]["step_metric"] == "training/global_step"
    assert rules["val-core/*"]["summary"] == ["max", "last"] and rules["training/global_step"]["glob"] is False
    assert run.exit_code == 0


def test_hook_keeps_verls_identity_without_the_trial_settings(tmp_path, monkeypatch):
    clean_env(monkeypatch, tmp_path)
    run_hook_script(tmp_path, "file,wandb", {})
    run = tracking.read_offline_run(tracking.find_offline_runs(tmp_path)[0])
    assert (run.project, run.name) == ("verl-project", "verl-name") and "maspo" not in run.config
    assert [row["training/global_step"] for row in run.history] == [0, 1, 2]


def test_hook_is_a_no_op_without_the_wandb_logger(tmp_path, monkeypatch):
    clean_env(monkeypatch, tmp_path)
    run_hook_script(tmp_path, "console,file", {"MASPO_TRIAL_JSON": "{}", "WANDB_PROJECT": "p"})
    assert not (tmp_path / "wandb").exists() and tracking.find_offline_runs(tmp_path) == []
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "training/global_step" not in records[0]["data"]  # verl's own records, untouched


def test_reader_rejects_other_files_and_stops_at_a_truncated_tail(tmp_path):
    (tmp_path / "offline-run-x").mkdir()
    bad = tmp_path / "offline-run-x" / "run-x.wandb"
    bad.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        tracking.read_offline_run(bad)
    with pytest.raises(tracking.TrackingError, match="no run-"):
        tracking.read_offline_run(tmp_path)
    assert list(tracking._read_records(b":W&B\xe1\xbe\x00" + b"\x00\x00\x00\x00\x20\x00\x01abc")) == []


# --------------------------------------------------------------------------------------------------------
# maspo sync


def fake_offline_run(trial_dir: Path, stamp: str, run_id: str) -> Path:
    run_dir = trial_dir / "wandb" / f"offline-run-{stamp}-{run_id}"
    run_dir.mkdir(parents=True)
    (run_dir / f"run-{run_id}.wandb").write_bytes(b":W&B\xe1\xbe\x00")
    return run_dir


def test_sync_one_command_per_run_attempts_oldest_first_needs_credentials(tmp_path, monkeypatch):
    clean_env(monkeypatch, tmp_path)
    exp = tmp_path / "runs" / "exp"
    retry = fake_offline_run(exp / "trials" / "a", "20260102_000000", "exp-a")  # the same trial, attempt 2
    first = fake_offline_run(exp / "trials" / "a", "20260101_000000", "exp-a")
    other = fake_offline_run(exp / "trials" / "b", "20260101_100000", "exp-b")
    synced = fake_offline_run(exp / "trials" / "c", "20260103_000000", "exp-c")
    (synced / "run-exp-c.wandb.synced").write_text("")
    results = tracking.sync_experiment(exp, dry_run=True)
    assert [(r.run_id, r.run_dirs) for r in results] == [("exp-a", [first, retry]), ("exp-b", [other])]
    assert results[0].command[1:] == ["sync", "--yes", str(first), str(retry)] and results[0].returncode is None
    with pytest.raises(tracking.TrackingError, match="no W&B credentials"):
        tracking.sync_experiment(exp)
    with pytest.raises(tracking.TrackingError, match="no experiment directory"):
        tracking.sync_experiment(tmp_path / "runs" / "missing")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    calls = []

    def runner(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "done", "")

    results = tracking.sync_experiment(exp, include_synced=True, runner=runner)
    assert [c[-1] for c in calls] == [str(retry), str(other), str(synced)] and "--include-synced" in calls[0]
    assert all(r.returncode == 0 for r in results)


def test_sync_command_dry_run_and_error_line(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from orchestrator.cli.sync import sync_command

    clean_env(monkeypatch, tmp_path)
    app = typer.Typer()
    app.command()(sync_command)
    exp = tmp_path / "runs" / "exp"
    run_dir = fake_offline_run(exp / "trials" / "a", "20260101_000000", "exp-a")
    out = CliRunner().invoke(app, ["exp", "--dry-run", "--runs-root", str(tmp_path / "runs")])
    assert out.exit_code == 0 and str(run_dir) in out.output
    out = CliRunner().invoke(app, ["exp", "--runs-root", str(tmp_path / "runs")])
    assert out.exit_code == 2 and "no W&B credentials" in out.output and "Traceback" not in out.output


# --------------------------------------------------------------------------------------------------------
# W&B workspace and report, offline


GOLDEN_CASES = {
    "local_sweep": dict(experiment="alpha-beta-demo", kind="sweep", validation=Validation(8, tuple(LOCAL_SOURCES))),
    "cluster_compare": dict(experiment="compare", kind="compare", validation=Validation(32, PAPER_SOURCES)),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_wandb_views_match_golden_json(case, monkeypatch):
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    no_network(monkeypatch)
    definition = dashboards.load_definition()
    args = dict(GOLDEN_CASES[case], entity="ENTITY", project="maspo")
    views = {"workspace": dashboards.build_workspace(definition, **args),
             "report": dashboards.build_report(definition, **args)}
    for what, view in views.items():
        got = dashboards.to_json(view)
        path = GOLDEN / f"wandb_{what}_{case}.json"
        if os.environ.get("MASPO_UPDATE_GOLDEN"):
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        assert got == json.loads(path.read_text()), f"{path} differs (MASPO_UPDATE_GOLDEN=1 to accept)"
    # what the generated JSON says, in words
    workspace = dashboards.to_json(views["workspace"])
    sections = workspace["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == ["Training dynamics", "Mechanism", "Validation", "Pass@k against k",
                                             "Alpha-beta study"]
    k = args["validation"].k
    lines = [p["config"] for s in sections for p in s["panels"] if p["viewType"] == "Run History Line Plot"]
    assert all(c["xAxis"] == "training/global_step" and c["groupBy"] == "maspo.value.label"
               and c["groupAgg"] == "mean" and c["groupArea"] == "minmax" for c in lines)
    plotted = {m for c in lines for m in c["metrics"]}
    for source in [*args["validation"].sources, "average"]:
        assert {f"val-core/{source}/acc/mean@{k}", f"val-core/{source}/acc/pass@{k}",
                f"val-core/{source}/acc/best@{k}/mean"} <= plotted
    # every Pass@k panel names its estimator; the bootstrap one is the paper's
    titles = [p["config"].get("chartTitle", "") for s in sections for p in s["panels"]]
    assert all("unbiased" in t or "bootstrap" in t for t in titles if "Pass@" in t), titles
    # Pass@j against j (Table 7): bars of the unbiased Pass@1 ... Pass@k per set
    bars = [p["config"] for s in sections if s["name"] == "Pass@k against k" for p in s["panels"]]
    assert len(bars) == len(args["validation"].sources)
    source = args["validation"].sources[0]
    assert bars[0]["metrics"] == [f"{'val-core' if j == k else 'val-aux'}/{source}/acc/pass@{j}.last"
                                  for j in (1, 2, 4, 8, 16, 32) if j <= k]
    assert {"actor/entropy", "critic/score/mean", "response_length/mean", "actor/pg_clipfrac",
            "actor/maspo/gate_mean"} <= plotted
    # the mechanism group plots every mechanism metric but the every-update |rho - 1| (its last-update value is)
    from orchestrator.algorithms.mechanism import NAMES, PREFIX

    mechanism = [p["config"] for s in sections if s["name"] == "Mechanism" for p in s["panels"]]
    assert {m for c in mechanism for m in c["metrics"]} == set(NAMES) - {PREFIX + "ratio_dev"}
    [parallel] = [p["config"] for s in sections for p in s["panels"] if p["viewType"] == "Parallel Coordinates Plot"]
    assert [c["accessor"] for c in parallel["columns"]] == [
        "config:maspo.value.hyperparameters.alpha", "config:maspo.value.hyperparameters.beta_high",
        f"summary:val-core/average/acc/mean@{k}.last", f"summary:val-core/average/acc/mean@{k}.max"]
    runset = workspace["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"][0]["value"] == args["experiment"]
    # the private serialisation round-trips (the publish path of an existing view)
    assert dashboards.to_json(ws.Workspace._from_model(views["workspace"]._to_model())) == workspace
    report = dashboards.to_json(views["report"])
    headings = [b["children"][0]["text"] for b in report["spec"]["blocks"] if b["type"] == "heading"]
    expected = ["Training dynamics (paper Figure 3)", "Pass@k against k (paper Figure 3 a, e and Table 7)",
                "Final validation (paper Table 1)"]
    if args["kind"] == "sweep":
        expected.insert(2, "Hyperparameter sensitivity (paper Figure 4, top)")
    assert headings == expected
    # Figure 3's row: entropy, Avg@k and response length against the step
    grids = [b for b in report["spec"]["blocks"] if b["type"] == "panel-grid"]
    figure3 = [p["config"]["metrics"] for p in grids[0]["metadata"]["panelBankSectionConfig"]["panels"]]
    assert figure3 == [["actor/entropy"], [f"val-core/average/acc/mean@{k}"], ["response_length/mean"]]
    # Table 7's bars are verl's bootstrap, its Pass@1 is Avg@k
    passk = grids[1]["metadata"]["panelBankSectionConfig"]["panels"][0]["config"]["metrics"]
    assert passk[0] == f"val-core/{source}/acc/mean@{k}.last" and passk[-1] == f"val-core/{source}/acc/best@{k}/mean.last"
    assert isinstance(wr.Report._from_model(views["report"]._to_model()), wr.Report)


def test_definition_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: s\ngroup_by: g\nsections:\n  - name: A\n    panels: [{title: T}]\n"
                   "report: {title: r, blocks: []}\n")
    with pytest.raises(dashboards.DashboardError, match="needs exactly one of y, columns, bars") as err:
        dashboards.load_definition(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(dashboards.DashboardError, match="cannot read"):
        dashboards.load_definition(tmp_path / "missing.yaml")


def test_publish_without_credentials_is_a_clear_error(tmp_path, monkeypatch):
    clean_env(monkeypatch, tmp_path)
    no_network(monkeypatch)
    runs = make_experiment(tmp_path)
    with pytest.raises(dashboards.DashboardError, match="publishing needs W&B credentials"):
        dashboards.publish("demo", runs_root=runs)
    with pytest.raises(dashboards.DashboardError, match="no experiment 'nope'"):
        dashboards.publish("nope", runs_root=runs)


# --------------------------------------------------------------------------------------------------------
# the local HTML page


def make_experiment(root: Path, name: str = "demo") -> Path:
    """A sweep with two (alpha, beta) settings and GRPO, two seeds each, with verl-shaped metrics.jsonl files."""
    from orchestrator.algorithms.mechanism import NAMES as mechanism_names

    runs = root / "runs"
    exp = runs / name
    planned = []
    groups = [("alpha=0.3 beta=0.03", "maspo", {"alpha": 0.3, "beta_high": 0.03}, 0.0),
              ("alpha=0.8 beta=0.1", "maspo", {"alpha": 0.8, "beta_high": 0.1}, 0.05),
              ("GRPO", "grpo", {"eps": 0.2}, -0.05)]
    for label, algorithm, hp, shift in groups:
        for seed in (0, 1):
            trial_name = f"{algorithm}-{hp.get('alpha', 'x')}-s{seed}"
            trial = {"algorithm": algorithm, "hyperparameters": hp, "seed": seed,
                     "profile": {"name": "local", "val_n": 8}}
            trial_dir = exp / "trials" / trial_name
            trial_dir.mkdir(parents=True)
            (trial_dir / "trial.json").write_text(json.dumps({"name": trial_name, "label": label, "trial": trial}))
            planned.append({"name": trial_name, "label": label, "trial": trial})
            lines = []
            for step in range(9):
                data = {}
                if step:
                    data = {"actor/entropy": 1 - 0.05 * step + shift + 0.01 * seed, "training/global_step": step,
                            "critic/score/mean": -0.5 + 0.05 * step + shift, "response_length/mean": 10 + seed,
                            "actor/pg_clipfrac": 0.01 + 0.001 * step}
                    data.update({key: 0.01 * step + shift + 0.1 for key in mechanism_names})
                    if algorithm == "maspo":
                        data.update({"actor/maspo/gate_mean": 0.9 + shift, "actor/maspo/gated_frac": 0.1})
                if step % 4 == 0:
                    for source in [*LOCAL_SOURCES, "average"]:
                        data[f"val-core/{source}/acc/mean@8"] = 0.4 + 0.01 * step + shift + 0.02 * seed
                        data[f"val-core/{source}/acc/pass@8"] = 0.7 + 0.01 * step + shift
                        data[f"val-core/{source}/acc/best@8/mean"] = 0.6 + 0.01 * step + shift  # verl's bootstrap
                        if source != "average":  # Pass@j below k: the project's (unbiased) and verl's (bootstrap)
                            for j in (1, 2, 4):
                                data[f"val-aux/{source}/acc/pass@{j}"] = 0.4 + 0.07 * j + shift
                                if j > 1:
                                    data[f"val-aux/{source}/acc/best@{j}/mean"] = 0.4 + 0.05 * j + shift
                lines.append(json.dumps({"step": step, "data": data}))
            (trial_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (exp / "experiment.json").write_text(json.dumps({"name": name, "kind": "sweep", "trials": planned}))
    return runs


def test_validation_sets_from_the_metrics_or_else_the_planned_profile(tmp_path):
    runs = make_experiment(tmp_path)
    assert dashboards.detect_validation(runs / "demo") == Validation(8, tuple(LOCAL_SOURCES))
    assert dashboards.detect_validation(runs / "demo", k=4, sources=["x"]) == Validation(4, ("x",))
    planned = runs / "planned"
    (planned / "trials").mkdir(parents=True)
    (planned / "experiment.json").write_text(json.dumps({"name": "planned", "kind": "compare", "trials": [
        {"name": "t", "label": "GRPO", "trial": {"algorithm": "grpo", "profile": {"name": "a100", "val_n": 32}}}]}))
    assert dashboards.detect_validation(planned) == Validation(32, PAPER_SOURCES)


def test_local_page_is_self_contained_and_aggregates_over_seeds(tmp_path):
    from orchestrator.local_dashboard import aggregate, group_trials, load_trials, write_local_dashboard

    runs = make_experiment(tmp_path)
    path = write_local_dashboard("demo", runs_root=runs)
    assert path == runs / "demo" / "dashboard.html"
    page = path.read_text()
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<link" not in page
    definition = dashboards.load_definition()
    line_panels = sum(len(dashboards.expand([p for p in s.panels if p.y], Validation(8, tuple(LOCAL_SOURCES))))
                      for s in definition.sections)
    assert page.count("<polyline") >= line_panels * PALETTE_GROUPS
    assert page.count('<svg class="panel"') == line_panels + 1  # + the parallel coordinates
    groups = group_trials(load_trials(runs / "demo"))
    assert list(groups) == ["alpha=0.3 beta=0.03", "alpha=0.8 beta=0.1", "GRPO"]  # the plan's order
    step, mean, lo, hi = aggregate(groups["GRPO"], "val-core/average/acc/mean@8")[-1]
    assert step == 8 and mean == pytest.approx(0.4 + 0.08 - 0.05 + 0.01) and hi - lo == pytest.approx(0.02)
    assert "Final validation (paper Table 1)" in page and "<b>" in page


def test_local_page_of_a_single_maspo_run_directory(tmp_path):
    from orchestrator.local_dashboard import write_local_dashboard

    runs = make_experiment(tmp_path)
    single = runs / "single"
    shutil.copytree(runs / "demo" / "trials" / "maspo-0.3-s0", single)
    page = write_local_dashboard("single", runs_root=runs).read_text()
    assert "1 trial(s) in 1 group(s)" in page


def test_dashboard_local_command_and_its_errors(tmp_path):
    import typer
    from typer.testing import CliRunner

    from orchestrator.cli.dashboard import dashboard_app

    runs = make_experiment(tmp_path)
    app = typer.Typer()
    app.add_typer(dashboard_app, name="dashboard")
    out = CliRunner().invoke(app, ["dashboard", "local", "demo", "--runs-root", str(runs)])
    assert out.exit_code == 0, out.output
    assert (runs / "demo" / "dashboard.html").exists()
    out = CliRunner().invoke(app, ["dashboard", "local", "nope", "--runs-root", str(runs)])
    assert out.exit_code == 2 and "no experiment 'nope'" in out.output and "Traceback" not in out.output
    (runs / "empty" / "trials").mkdir(parents=True)
    out = CliRunner().invoke(app, ["dashboard", "local", "empty", "--runs-root", str(runs)])
    assert out.exit_code == 2 and "pass --k and --source" in out.output


def screenshot(html_path: Path, png: Path, height: int = 3200) -> "object":
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from PIL import Image

    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1440,{height}", f"--screenshot={png}", html_path.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    return Image.open(png).convert("RGB")


def colour_pixels(image, hex_colour: str, tolerance: int = 8) -> int:
    import numpy as np

    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(image, dtype=np.int16)
    return int((np.abs(pixels - target) <= tolerance).all(axis=-1).sum())


def test_local_page_renders_in_headless_chromium(tmp_path):
    from orchestrator.local_dashboard import PALETTE, write_local_dashboard

    runs = make_experiment(tmp_path)
    image = screenshot(write_local_dashboard("demo", runs_root=runs), tmp_path / "page.png")
    width, height = image.size
    for colour in PALETTE[:PALETTE_GROUPS]:  # every group's lines are drawn
        assert colour_pixels(image, colour) > 2000, colour
    # every row of panels has line colour in it: cut the page into bands of one panel's height
    rows_with_lines = 0
    for top in range(0, height - 270, 270):
        band = image.crop((0, top, width, top + 270)).resize((width // 4, 67))
        rows_with_lines += colour_pixels(band, PALETTE[0], tolerance=40) > 0
    assert rows_with_lines >= 6


# --------------------------------------------------------------------------------------------------------
# ONE real local sweep (tests/conftest.py `local_sweep`): the keys the dashboards plot, the offline reader,
# no secret on disk. Its trial that was not killed has one W&B offline run.


@pytest.fixture(scope="session")
def real_trial(local_sweep):
    from tests.conftest import SECRET

    exp_dir, done, killed = local_sweep
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    killed_names = {name for name, _ in killed}
    trial_dir = next(d for d in sorted((exp_dir / "trials").iterdir()) if d.name not in killed_names)
    records = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    planned = next(t for t in json.loads((exp_dir / "experiment.json").read_text())["trials"]
                   if t["name"] == trial_dir.name)
    return {"root": exp_dir.parent, "exp": exp_dir, "trial_dir": trial_dir, "secret": SECRET, "records": records,
            "planned": planned}


def loss_metric_keys() -> dict[str, set[str]]:
    """The metric keys each algorithm's loss returns (the very function verl calls), per algorithm."""
    import torch

    from orchestrator.algorithms import compute, names

    torch.manual_seed(0)
    old = torch.log(torch.rand(2, 5))
    log_prob, advantages, mask = old + 0.3 * torch.randn(2, 5), torch.randn(2, 5), torch.ones(2, 5)
    out = {}
    for name in names():
        extra = {"entropy": torch.rand(2, 5)} if name in ("entropy_adv", "entropy_reg") else {}
        out[name] = set(compute(name, old, log_prob, advantages, mask, **extra)[1])
    return out


@pytest.mark.slow
def test_every_plotted_metric_is_one_a_real_trial_logs(real_trial):
    """The trial is MASPO; a key only other losses return (their clip fraction) must come from one of them."""
    logged = {key for record in real_trial["records"] for key in record["data"]}
    validation = dashboards.detect_validation(real_trial["exp"])
    assert validation == Validation(4, tuple(f"local_{n}" for n in
                                             ("math500", "amc23", "minerva", "olympiad", "aime24", "aime25")))
    plotted = dashboards.plotted_metrics(dashboards.load_definition(), validation)
    by_loss = loss_metric_keys()
    assert by_loss["maspo"] <= logged  # a loss's metrics reach the JSONL under the loss's own names
    other_losses = {k for k in plotted - by_loss["maspo"] if any(k in keys for keys in by_loss.values())}
    assert other_losses == {"actor/pg_clipfrac"}
    assert plotted - other_losses - logged == set(), f"plotted but never logged: {sorted(plotted - logged)}"


@pytest.mark.slow
def test_offline_run_of_a_real_trial_matches_its_jsonl(real_trial):
    [run_dir] = tracking.find_offline_runs(real_trial["trial_dir"])
    run = tracking.read_offline_run(run_dir)
    trial_hash = json.loads((real_trial["trial_dir"] / "trial.json").read_text())["trial_hash"]
    planned = real_trial["planned"]
    assert (run.group, run.job_type, run.name) == ("e2e", "maspo", planned["name"])
    assert run.tags[:2] == ["maspo", "seed0"] and "sweep" in run.tags
    assert run.run_id == tracking.run_id("e2e", trial_hash)
    assert run.config["maspo"]["hyperparameters"]["alpha"] == planned["trial"]["hyperparameters"]["alpha"]
    assert run.config["maspo"]["label"] == planned["label"]
    assert run.config["trainer"]["total_training_steps"] == SWEEP_STEPS  # verl's own config is still there
    for key in dashboards.config_keys(dashboards.load_definition()):  # the config keys the dashboards read
        node = run.config
        for part in key.split("."):
            node = node[part]
    for key in ("actor/entropy", "val-core/average/acc/mean@4", "val-core/local_aime24/acc/pass@4"):
        from_jsonl = [(r["step"], r["data"][key]) for r in real_trial["records"] if key in r["data"]]
        assert from_jsonl and run.series(key, x="training/global_step") == from_jsonl, key
        assert run.series(key) == from_jsonl  # W&B's own step is verl's global step
    assert {m["name"] for m in run.metrics} >= {"training/global_step", "actor/*", "val-core/*"}


@pytest.mark.slow
def test_an_api_key_in_the_environment_never_reaches_the_trial_files(real_trial):
    secret = real_trial["secret"].encode()
    files = [p for p in real_trial["exp"].rglob("*") if p.is_file()]
    assert len(files) > 5
    leaked = [str(p) for p in files if secret in p.read_bytes()]
    assert leaked == []


@pytest.mark.slow
def test_local_page_of_the_real_trial(real_trial, tmp_path):
    from orchestrator.local_dashboard import PALETTE, write_local_dashboard

    path = write_local_dashboard("e2e", runs_root=real_trial["exp"].parent)
    page = path.read_text()
    # every training and validation panel has data, but the clip fraction MASPO's loss does not have
    assert page.count("no data") == page.count("no data: actor/pg_clipfrac") == 1
    image = screenshot(path, tmp_path / "real.png")
    # two settings, two colours: both groups' lines are drawn
    assert colour_pixels(image, PALETTE[0]) > 500 and colour_pixels(image, PALETTE[1]) > 500


FAKE_WANDB = """#!/bin/sh
# a stand-in for the `wandb` CLI at the process boundary: records each `wandb sync` call; no network, no marker
echo "$*" >> "{calls}"
for arg in "$@"; do case "$arg" in *{fail}*) echo "wandb: ERROR network is unreachable" >&2; exit 1;; esac; done
echo "Syncing: done"
"""


def test_sync_twice_uploads_each_run_once_and_retries_only_what_failed(tmp_path, monkeypatch):
    """`maspo sync NAME` twice: the second uploads nothing. The fake `wandb` leaves no `.synced` marker (as an
    interrupted real one would not), so what leaves a run out is the record in the experiment directory."""
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.store import SYNCED_FILE, ExperimentDir

    clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    exp = tmp_path / "runs" / "exp"
    a1 = fake_offline_run(exp / "trials" / "a", "20260101_000000", "exp-a")
    a2 = fake_offline_run(exp / "trials" / "a", "20260102_000000", "exp-a")  # the retry of trial a
    b = fake_offline_run(exp / "trials" / "b", "20260101_100000", "exp-b")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "wandb"
    fake.write_text(FAKE_WANDB.format(calls=calls, fail="exp-b"))
    fake.chmod(0o755)
    monkeypatch.setattr(tracking, "wandb_cli", lambda: [str(fake)])
    runs_root = ["--runs-root", str(tmp_path / "runs")]

    def sync():
        out = CliRunner().invoke(app, ["sync", "exp", *runs_root])
        sent = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return out, sent

    out, sent = sync()  # b fails (network down): a is uploaded and recorded, b is not
    assert out.exit_code == 1 and "failed exp-b" in " ".join(out.output.split())
    assert sent == [f"sync --yes {a1} {a2}", f"sync --yes {b}"]
    assert set(ExperimentDir(exp).synced()) == {str(a1.relative_to(exp)), str(a2.relative_to(exp))}
    fake.write_text(FAKE_WANDB.format(calls=calls, fail="nothing-fails-now"))
    out, sent = sync()  # network back: only b
    assert out.exit_code == 0 and sent == [f"sync --yes {b}"]
    out, sent = sync()  # everything uploaded once: nothing is sent
    assert out.exit_code == 0 and sent == [] and "nothing to upload" in out.output
    records = json.loads((exp / SYNCED_FILE).read_text())
    assert {r["run_id"] for r in records.values()} == {"exp-a", "exp-b"} and len(records) == 3
    out = CliRunner().invoke(app, ["sync", "exp", "--include-synced", *runs_root])  # asked for: all again
    assert out.exit_code == 0 and len(calls.read_text().splitlines()) == 2


# --------------------------------------------------------------------------------------------------------
# W&B without network: no metric lost, even when an attempt dies mid-run

ATTEMPT_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from orchestrator.verl_bridge import wandb_hooks
    wandb_hooks.install()
    from verl.utils.tracking import Tracking
    first, last, die_after = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    tracker = Tracking(project_name="p", experiment_name="n", default_backend=["file", "wandb"], config={})
    checkpoint, log_dir = int(sys.argv[4]), sys.argv[5]
    for step in range(first, last + 1):
        data = {f"actor/k{i}": step + i / 100 for i in range(12)}
        data["val-core/average/acc/mean@4"] = step / 100
        tracker.log(data, step=step)
        if step == checkpoint + 1:
            # step c+1 is logged, so W&B has closed step c's row; a real step takes minutes: wait (120 s at most)
            # until wandb-core wrote step c to the .wandb file, as it does every WANDB__TRANSACTION_LOG_FLUSH_INTERVAL
            import glob, time
            from orchestrator.tracking import read_offline_run
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                [path] = glob.glob(os.path.join(log_dir, "wandb", "offline-run-*", "run-*.wandb"))
                if checkpoint in {row.get("_step") for row in read_offline_run(path).history}:
                    break
                time.sleep(0.2)
        if step == die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # the job dies: no finish, no flush
    tracker.finish()
""")


def test_offline_wandb_keeps_every_metric_of_a_trial_whose_attempt_was_killed(tmp_path, monkeypatch):
    """W&B offline (no network), verl's own Tracking, the trial's W&B env: attempt 1 is SIGKILLed after step 12,
    attempt 2 resumes from the checkpoint at step 10 under the same run id. Every record of the trial's stream is
    in the offline runs that `maspo sync` uploads together, with its value: what the killed attempt had not written
    (the steps after its checkpoint) the retry logs again.

    With wandb's default (the .wandb file written every 15 s) attempt 1's file held no step at all: a run killed
    within 15 s of logging a checkpointed step lost it in W&B. The trial env makes that one second."""
    from orchestrator.config.trial import trial_config
    from orchestrator.store import MetricStream, read_records

    clean_env(monkeypatch, tmp_path)
    trial = trial_config("maspo", {"alpha": 0.3}, seed=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(tracking.trial_wandb_env(trial, experiment="offline", trial_name="t", project="p"))
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert env["WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"] == "1"
    stream = MetricStream(tmp_path / "metrics.jsonl")
    for attempt, (first, last, die_after) in enumerate([(0, 20, 12), (10, 20, -1)], start=1):
        log = tmp_path / f"attempt{attempt}.jsonl"
        out = subprocess.run([sys.executable, "-c", ATTEMPT_SCRIPT, str(first), str(last), str(die_after),
                              "10" if die_after >= 0 else "-10", str(tmp_path)],
                             cwd=tmp_path, env={**env, "VERL_FILE_LOGGER_PATH": str(log)},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == (-9 if die_after >= 0 else 0), out.stderr[-3000:]
        stream.truncate_after(first)  # as the controller does before an attempt that resumes from `first`
        for record in read_records(log):
            stream.accept(record)
    expected = {(r["step"], k): v for r in read_records(tmp_path / "metrics.jsonl") for k, v in r["data"].items()}
    assert {s for s, _ in expected} == set(range(21))
    runs = [tracking.read_offline_run(d) for d in tracking.find_offline_runs(tmp_path)]
    assert len(runs) == 2 and {r.run_id for r in runs} == {env["WANDB_RUN_ID"]}
    in_wandb = {(row["_step"], k): v for run in runs for row in run.history for k, v in row.items()
                if not k.startswith("_") and k != "training/global_step"}
    missing = sorted({s for (s, k) in expected if (s, k) not in in_wandb})
    assert missing == [], f"steps with metrics missing from the offline runs: {missing}"
    assert all(in_wandb[key] == value for key, value in expected.items())
    killed_steps = sorted({row["_step"] for row in runs[0].history})
    print(f"\nFIGURES wandb-offline: attempt 1 killed after step 12 kept steps {killed_steps[0]}..{killed_steps[-1]} "
          f"in its .wandb; attempt 2 logged 10..20; stream steps 0..20, none missing from W&B")
