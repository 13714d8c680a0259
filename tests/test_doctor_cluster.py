"""``maspo doctor --address`` and the preflight of ``maspo compare --address`` on a real 3-node Ray test cluster.

The cluster (``ray.cluster_utils.Cluster`` on 127.0.0.1, fake GPUs): the head declares 8 GPUs and a verl_slot
(all good but CUDA, which a CPU machine has not); node "noslot" declares 8 GPUs and no verl_slot; node "oldverl"
runs an interpreter that sees another verl: a ``verl-0.8.0.dist-info`` first on that node's ``PYTHONPATH``, as a
second installation would put it (the probe reports the node's interpreter; nothing in maspo reads a test
override). The nodes have no W&B credentials (an empty ``NETRC``); this process has a key, so trials would log
online: every node must fail the W&B check, and the key must not appear anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SECRET = "doctor-test-secret-0123456789abcdef0123456789abcd"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.scales import A100Profile, missing_data_files

    root = tmp_path_factory.mktemp("doctor")
    fake = root / "fake-site"
    (fake / "verl-0.8.0.dist-info").mkdir(parents=True)
    (fake / "verl-0.8.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: verl\nVersion: 0.8.0\n")
    netrc = root / "empty-netrc"
    netrc.write_text("")
    netrc.chmod(0o600)
    data = root / "data"
    data.mkdir()
    for f in missing_data_files(A100Profile(data_dir=str(data))):
        f.write_bytes(b"x" * 10)
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    env = pytest.MonkeyPatch()
    _patiently_register_nodes(env)
    env.delenv("WANDB_API_KEY", raising=False)
    env.delenv("WANDB_MODE", raising=False)
    env.setenv("NETRC", str(netrc))  # the nodes' W&B credentials: none
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 8, "include_dashboard": False,
                                                              "resources": {"verl_slot": 1}, **_ports()})
    nodes = {"head": None}
    nodes["noslot"] = cluster.add_node(num_cpus=1, num_gpus=8, **_ports())
    env.setenv("PYTHONPATH", os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    nodes["oldverl"] = cluster.add_node(num_cpus=1, num_gpus=8, resources={"verl_slot": 1}, **_ports())
    env.setenv("PYTHONPATH", os.environ["PYTHONPATH"].split(os.pathsep, 1)[1])
    ids = {name: (node.node_id if node else None) for name, node in nodes.items()}
    cluster.wait_for_nodes()
    yield cluster, root, ids
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    env.undo()


def _ports() -> dict[str, int]:
    """A node's agent ports, free and explicit (another Ray on the machine holds the defaults)."""
    from orchestrator.cluster import free_ports

    names = ("metrics_agent_port", "metrics_export_port", "runtime_env_agent_port", "dashboard_agent_listen_port")
    return dict(zip(names, free_ports(len(names))))


def _patiently_register_nodes(env: pytest.MonkeyPatch, limit_s: float = 300.0) -> None:
    """Ray's node start gives a raylet 30 s (hard-coded) to register with the GCS, and the raylet gives its
    dashboard agent about a minute; on a heavily loaded machine both failed. Wait up to ``limit_s`` instead,
    failing loudly after that."""
    import time

    import ray._private.services as services

    get_node = services.get_node

    def patient(*args, **kwargs):
        deadline = time.monotonic() + limit_s
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    env.setattr(services, "get_node", patient)
    env.setenv("RAY_raylet_start_wait_time_s", str(int(limit_s)))  # the raylet's own wait for the GCS
    # the raylet's wait for its dashboard agent's port file (a Python process that took over 60 s to start there)
    env.setenv("RAY_agent_register_timeout_ms", str(int(limit_s * 1000)))


def _settings(root: Path) -> list[str]:
    return ["-P", f"data_dir={root / 'data'}", "-P", f"model_path={root / 'model'}",
            "-P", f"checkpoint_root={root / 'ckpt'}"]


def _probe_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".maspo-doctor-*")]


def test_doctor_reports_each_nodes_fault_and_the_fix(cluster, monkeypatch):
    from orchestrator.config.trial import trial_config
    from orchestrator.doctor import Targets, doctor

    ray_cluster, root, ids = cluster
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # this machine (the driver) has credentials: trials log online
    profile = trial_config("grpo", profile={"name": "a100", "data_dir": str(root / "data"),
                                            "model_path": str(root / "model"),
                                            "checkpoint_root": str(root / "ckpt")}).profile
    targets = Targets.of_profile(profile, root / "runs")
    assert targets.wandb_online
    checks = doctor(ray_cluster.address, targets, full=True, timeout_s=300, wandb_auth=False)

    def rows(check, node=None):
        return [c for c in checks if c.check == check and (node is None or ids[node][:6] in c.where)]

    head_id = [c.where for c in rows("versions") if "(head)" in c.where]
    assert len(head_id) == 1
    ids["head"] = head_id[0].split()[1]
    assert len(rows("versions")) == 3
    # the slot: the node without one fails, with the fix; the two with one pass
    (noslot,) = rows("verl_slot", "noslot")
    assert noslot.failed and "no verl_slot" in noslot.result and "--resources" in noslot.fix
    assert all(c.ok for n in ("head", "oldverl") for c in rows("verl_slot", n))
    assert [c.ok for c in rows("verl_slot") if c.where == "cluster"] == [True]
    # the versions: the node whose interpreter sees verl 0.8.0 fails, naming both versions; the others pass
    (old,) = rows("versions", "oldverl")
    assert old.failed and "verl 0.8.0 (here 0.9.1)" in old.result and "maspo[gpu]" in old.fix
    assert all(c.ok for n in ("head", "noslot") for c in rows("versions", n)), rows("versions")
    # storage: every node wrote into both shared directories and read another node's and this machine's file
    storage = [c for c in checks if c.check.startswith("storage:")]
    assert len(storage) == 2 * 3 + 2 and all(c.ok for c in storage), storage
    assert not _probe_files(root)  # nothing left behind
    assert not (root / "runs").exists() and not (root / "ckpt").exists()  # probed their parent, created nothing
    assert all(c.ok for c in rows("data")) and len(rows("data")) == 3
    assert all(c.ok for c in rows("model")) and len(rows("model")) == 3
    # a GPU node without CUDA is a failure (it would fail every trial), said plainly; NCCL is not tried then
    cuda = rows("CUDA")
    assert len(cuda) == 3 and all(c.failed and "no CUDA" in c.result and "declares 8" in c.result for c in cuda)
    assert all(c.ok is None and "no CUDA" in c.result for c in rows("NCCL"))
    # W&B: online expected, no node has credentials -> each fails, with the mechanism as the fix
    wandb = rows("W&B credentials")
    assert len(wandb) == 3 and all(c.failed and "file_mounts" in c.fix for c in wandb)
    assert all(SECRET not in f"{c.result} {c.fix}" for c in checks)


def test_cli_doctor_table_and_exit_code(cluster, monkeypatch):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    ray_cluster, root, _ = cluster
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    result = CliRunner().invoke(app, ["doctor", "--address", ray_cluster.address, "--root", str(root / "runs"),
                                      *_settings(root), "--no-gpus", "--no-wandb-auth", "--timeout", "300"],
                                terminal_width=300)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "maspo doctor: the Ray cluster at" in text and "FAIL" in text and "check(s) failed" in text
    assert "no verl_slot" in text and "verl 0.8.0 (here 0.9.1)" in text and "file_mounts" in text
    assert "CUDA" not in text  # --no-gpus
    assert SECRET not in result.output and "Traceback" not in result.output
    assert not _probe_files(root)


def test_compare_on_a_faulty_cluster_refuses_in_one_line_and_writes_nothing(cluster):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    ray_cluster, root, _ = cluster
    runs = root / "runs-compare"
    result = CliRunner().invoke(app, ["compare", "--profile", "a100", "--baselines", "grpo", "--address",
                                      ray_cluster.address, "--root", str(runs), *_settings(root)],
                                terminal_width=300)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cluster preflight failed" in errors[0], result.output
    assert "maspo doctor --address" in errors[0] and "Traceback" not in result.output
    assert not runs.exists() and not _probe_files(root)
