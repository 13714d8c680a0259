import math

import pytest
import torch


def one_token(rho: float, advantage: float, pi_old: float, dtype=torch.float64):
    """(old_log_prob, log_prob (leaf, requires grad), advantages, mask) for a single response token."""
    old = torch.tensor([[math.log(pi_old)]], dtype=dtype)
    log_prob = torch.tensor([[math.log(rho * pi_old)]], dtype=dtype, requires_grad=True)
    adv = torch.tensor([[advantage]], dtype=dtype)
    return old, log_prob, adv, torch.ones_like(adv, dtype=torch.bool)


@pytest.fixture
def token():
    return one_token


# --------------------------------------------------------------------------------------------------------
# One real local sweep for every end-to-end test (verl on CPU is minutes per trial: run it once per session).

SWEEP_STEPS = 3
SECRET = "local-test-secret-0123456789abcdef0123456789abcdef"  # a W&B key that must never reach a file
TINY_PROFILE = ["-P", "test_freq=1", "-P", "train_batch_size=4", "-P", "ppo_mini_batch_size=2", "-P", "n_samples=4",
                "-P", "val_n=4", "-P", "n_val_problems=2"]


def _verl_drivers_of(trial_dir) -> list[int]:
    """Pids of the verl drivers (and the shell that runs one) of this trial directory, and of nothing else.

    A process qualifies only if its command line names both the trial (``trainer.experiment_name=<name>``) and
    the trial's own checkpoint dir (``trainer.default_local_dir=<this test's tmp dir>/.../checkpoints``): another
    test or user running a trial of the same name elsewhere does not match, as it would with ``pgrep -f``.
    """
    import os
    import re
    from pathlib import Path

    trial_dir = Path(trial_dir).resolve()  # as the orchestrator renders it (exp_dir.resolve())
    wanted = [f"trainer.experiment_name={trial_dir.name}", f"trainer.default_local_dir={trial_dir / 'checkpoints'}"]
    patterns = [re.compile(re.escape(w) + r"(?=[\s'\"]|$)") for w in wanted]  # whole values, not prefixes
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(p.search(cmdline) for p in patterns):
            pids.append(int(proc.name))
    return pids


def _kill_one_job_after_its_checkpoint(exp_dir, stop, killed):
    """Chaos: SIGKILL the verl driver of the first trial that has a checkpoint and more steps to go."""
    import json
    import os
    import signal
    import time

    while not stop.is_set():
        for status_path in exp_dir.glob("trials/*/status.json"):
            trial_dir = status_path.parent
            try:
                status = json.loads(status_path.read_text())
                ckpt = int((trial_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())
            except (OSError, ValueError):
                continue
            if len(status["attempts"]) != 1 or not 1 <= ckpt < SWEEP_STEPS:
                continue
            try:  # the checkpoint's step is in the trial's stream: the retry must resume from exactly there
                logged = {json.loads(line)["step"] for line in (trial_dir / "metrics.jsonl").read_text().splitlines()}
            except (OSError, ValueError):
                continue
            if ckpt not in logged:
                continue
            pids = _verl_drivers_of(trial_dir)
            if pids:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed.append((trial_dir.name, ckpt))
                return
        time.sleep(0.5)


SWEEP_RAY: dict = {}  # what the local sweep's watcher saw of its private Ray cluster


def _ray_temp_dir_of(token_path):
    """The ``--temp-dir`` of the ``ray start`` whose environment names ``token_path`` (unique per cluster)."""
    import re
    from pathlib import Path

    entry = f"RAY_AUTH_TOKEN_PATH={token_path}".encode()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"--temp-dir=" not in cmdline or entry not in (proc / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        return Path(re.search(rb"--temp-dir=(\S+)", cmdline).group(1).decode())
    raise KeyError(token_path)


def _watch_ray_secrets(exp_dir, stop, seen: dict) -> None:
    """While the sweep runs: learn its private Ray cluster's token (the file its verl jobs' ``RAY_AUTH_TOKEN_PATH``
    names) and scan the cluster's temp dir (Ray's session logs, removed when the cluster stops) for the token and
    the W&B key. ``seen``: ``token``, ``temp_dir``, ``scanned`` (files read), ``leaks`` (files that held either)."""
    from pathlib import Path

    sizes: dict = {}
    seen.update(token=None, temp_dir=None, scanned=set(), leaks=set())
    while True:
        final = stop.is_set()
        if seen["token"] is None:
            for trial_dir in Path(exp_dir).glob("trials/*"):
                for pid in _verl_drivers_of(trial_dir):
                    try:
                        environ = dict(item.split(b"=", 1) for item in
                                       Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
                        path = Path(environ[b"RAY_AUTH_TOKEN_PATH"].decode())
                        seen["temp_dir"] = _ray_temp_dir_of(path)
                        seen["token"], seen["token_path"] = path.read_text().strip(), path
                    except (OSError, KeyError, ValueError):
                        continue
        if seen["token"]:
            secrets = [seen["token"].encode(), SECRET.encode()]
            for path in seen["temp_dir"].rglob("*"):
                try:
                    if not path.is_file() or sizes.get(path) == path.stat().st_size:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                sizes[path] = len(data)
                seen["scanned"].add(str(path))
                if any(secret in data for secret in secrets):
                    seen["leaks"].add(str(path))
        if final:
            return
        stop.wait(5)


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """``maspo sweep alpha-beta --demo`` at its smallest size, two trials at a time, one job killed mid-run.

    Returns (experiment dir, completed process, [(killed trial, its checkpoint step)]); ``SWEEP_RAY`` holds what
    :func:`_watch_ray_secrets` saw of the sweep's private Ray cluster.
    """
    import os
    import subprocess
    import sys
    import threading

    root = tmp_path_factory.mktemp("sweep")
    exp_dir = root / "e2e"
    stop, killed = threading.Event(), []
    chaos = threading.Thread(target=_kill_one_job_after_its_checkpoint, args=(exp_dir, stop, killed), daemon=True)
    chaos.start()
    watch_stop = threading.Event()
    watcher = threading.Thread(target=_watch_ray_secrets, args=(exp_dir, watch_stop, SWEEP_RAY), daemon=True)
    watcher.start()
    env = {**os.environ, "COLUMNS": "200", "WANDB_API_KEY": SECRET}
    env["WANDB_MODE"] = "offline"  # a key is present (the secret-scan test), but tests never go online
    try:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "sweep", "alpha-beta", "--demo", "--steps", str(SWEEP_STEPS),
             "--max-concurrent", "2", "--root", str(root), "--name", "e2e", *TINY_PROFILE],
            capture_output=True, text=True, timeout=1500, env=env, cwd=root)
    finally:
        stop.set()
        watch_stop.set()
        watcher.join(timeout=120)
    return exp_dir, done, killed
