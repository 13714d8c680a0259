"""A trial whose job env says ``WANDB_MODE=online`` but whose node cannot authenticate logs offline, with a
warning, and loses no metric (``orchestrator.verl_bridge.wandb_hooks``; docs/orchestration.md#wandb-on-a-cluster).

verl's own ``Tracking`` runs in a subprocess with the hook installed, as in a trial's TaskRunner; no network.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from orchestrator import tracking
from tests.test_tracking_dashboards import HOOK_SCRIPT, clean_env

SECRET = "fallback-test-secret-0123456789abcdef0123456789ab"


def _run(tmp_path, env_extra, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != tracking.TRIAL_JSON_ENV}
    env.update({"WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true", "NETRC": str(tmp_path / "no-netrc"),
                "VERL_FILE_LOGGER_PATH": str(tmp_path / "metrics.jsonl"), **env_extra})
    return subprocess.run([sys.executable, "-c", HOOK_SCRIPT, "console,file,wandb"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _all_text(root) -> str:
    out = []
    for path in root.rglob("*"):
        if path.is_file():
            out.append(path.read_bytes().decode(errors="replace"))
    return "\n".join(out)


def test_online_without_credentials_on_the_node_logs_offline_with_a_warning(tmp_path, monkeypatch):
    clean_env(monkeypatch, tmp_path)
    assert not tracking.has_credentials()
    out = _run(tmp_path, {"WANDB_MODE": "online", "WANDB_RUN_ID": "fallback-run"})
    assert out.returncode == 0, out.stderr[-3000:]
    warning = [line for line in out.stderr.splitlines() if line.startswith("maspo: WARNING: no W&B credentials")]
    assert len(warning) == 1, out.stderr[-3000:]
    assert socket.gethostname() in warning[0] and "maspo sync" in warning[0] and str(tmp_path) in warning[0]
    [run_dir] = tracking.find_offline_runs(tmp_path)
    run = tracking.read_offline_run(run_dir)
    assert run.run_id == "fallback-run"
    assert [row["training/global_step"] for row in run.history] == [0, 1, 2]  # every step, none lost
    assert [r.run_id for r in tracking.sync_experiment(tmp_path, dry_run=True)] == ["fallback-run"]


@pytest.mark.slow  # W&B's init waits for its server (WANDB_INIT_TIMEOUT) before it gives up
def test_a_key_w_and_b_cannot_check_falls_back_offline_and_never_shows_the_key(tmp_path, monkeypatch):
    """A key is there, but W&B's server does not answer (a port nothing listens on): offline, warned, no key."""
    clean_env(monkeypatch, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    out = _run(tmp_path, {"WANDB_MODE": "online", "WANDB_RUN_ID": "refused-run", "WANDB_API_KEY": SECRET,
                          "WANDB_BASE_URL": f"http://127.0.0.1:{port}", "WANDB_INIT_TIMEOUT": "30"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "maspo: WARNING: W&B's online init failed" in out.stderr, out.stderr[-3000:]
    [run_dir] = tracking.find_offline_runs(tmp_path)
    assert [row["training/global_step"] for row in tracking.read_offline_run(run_dir).history] == [0, 1, 2]
    assert SECRET not in out.stdout + out.stderr and SECRET not in _all_text(tmp_path)


def test_offline_mode_and_present_credentials_are_left_alone(monkeypatch, tmp_path):
    from orchestrator.verl_bridge import wandb_hooks

    clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_hooks.offline_unless_credentials() is None and os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password not-a-real-key\n")
    (tmp_path / "netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_hooks.offline_unless_credentials() is None and os.environ["WANDB_MODE"] == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    warning = wandb_hooks.offline_unless_credentials()
    assert warning and "no W&B credentials" in warning and os.environ["WANDB_MODE"] == "offline"


@pytest.mark.slow  # W&B's client waits for its server before it gives up
def test_doctors_w_and_b_login_check_reports_an_unreachable_server_without_the_key(monkeypatch, tmp_path):
    """What `maspo doctor`'s per-node W&B login task answers when the server cannot be reached."""
    clean_env(monkeypatch, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    code = ("import os, sys; from orchestrator.doctor import wandb_authenticates as w; "
            "sys.stdout.write(w(5))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout and f"127.0.0.1:{port}" in out.stdout  # a reason, naming the server
    assert SECRET not in out.stdout + out.stderr
