"""The cluster templates in cluster/ pass Ray's own validator and maspo's slot rules; broken copies fail clearly."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster_config import ClusterConfigError, gpu_slots, validate_cluster_yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
ONPREM, AWS, GCP = CLUSTER / "a100-onprem.yaml", CLUSTER / "a100-aws.yaml", CLUSTER / "a100-gcp.yaml"
SLOTS = {ONPREM.name: 30, AWS.name: 30, GCP.name: 30}  # one verl_slot per 8-GPU node, 30 nodes (cluster/README.md)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, name: str, config: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _rejects(tmp_path: Path, name: str, config: dict, *expected: str) -> str:
    path = _write(tmp_path, name, config)
    with pytest.raises(ClusterConfigError) as info:
        validate_cluster_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and len(message) < 500, message
    for fragment in expected:
        assert fragment in message, message
    return message


def test_the_templates_are_all_here():
    assert {p.name for p in YAMLS} >= set(SLOTS)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_cluster_yaml_passes_and_declares_its_slots(path):
    config = validate_cluster_yaml(path)
    assert config == _load(path)  # the file's content, not Ray's prepared form
    if path.name in SLOTS:
        assert gpu_slots(config) == SLOTS[path.name]
    else:
        assert gpu_slots(config) >= 1


def test_onprem_is_the_papers_30_nodes_with_the_local_provider():
    config = _load(ONPREM)
    assert config["provider"]["type"] == "local"
    assert len(config["provider"]["worker_ips"]) == 29
    assert "available_node_types" not in config and "min_workers" not in config
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "--num-gpus=8" in start and "verl_slot" in start
    assert gpu_slots(config) == 30


@pytest.mark.parametrize("path,instance", [(AWS, "p4de.24xlarge"), (GCP, "a2-ultragpu-8g")], ids=["aws", "gcp"])
def test_cloud_worker_types(path, instance):
    config = _load(path)
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert len(workers) == 1
    worker = workers[0]
    assert instance in yaml.safe_dump(worker["node_config"])
    assert worker["resources"]["GPU"] == 8 and worker["resources"]["verl_slot"] == 1
    assert all(isinstance(v, int) for t in config["available_node_types"].values() for v in t["resources"].values())
    if path is GCP:
        assert worker["node_config"]["scheduling"] == [{"onHostMaintenance": "TERMINATE"}]


def test_gpu_slots_follows_max_workers():
    config = _load(AWS)
    config["max_workers"] = 10  # the global cap wins over the node type's 30
    assert gpu_slots(config) == 10
    local = _load(ONPREM)
    local["provider"]["worker_ips"] = local["provider"]["worker_ips"][:3]
    assert gpu_slots(local) == 4  # head + 3 workers


# --- corrupted copies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_missing_provider(tmp_path, path):
    config = _load(path)
    del config["provider"]
    _rejects(tmp_path, "no-provider.yaml", config, "'provider' is a required property")


@pytest.mark.parametrize("path", [AWS, GCP], ids=["aws", "gcp"])
def test_gpu_count_as_a_string(tmp_path, path):
    config = _load(path)
    config["available_node_types"]["a100"]["resources"]["GPU"] = "8"
    _rejects(tmp_path, "gpu-string.yaml", config,
             "available_node_types.a100.resources.GPU", "'8' is not of type 'integer'")


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_unknown_top_level_key(tmp_path, path):
    config = _load(path)
    config["gpus_per_trial"] = 8
    _rejects(tmp_path, "unknown-key.yaml", config, "Additional properties are not allowed", "gpus_per_trial")


@pytest.mark.parametrize("node_type", ["a100", "local.cluster.node"])
def test_local_provider_with_node_types(tmp_path, node_type):
    config = _load(ONPREM)
    config["available_node_types"] = {node_type: {"resources": {"GPU": 8, "verl_slot": 1}, "node_config": {}}}
    config["head_node_type"] = node_type
    _rejects(tmp_path, "local-node-types.yaml", config, "available_node_types", "not supported for on-premise")


def test_local_workers_without_gpus(tmp_path):
    config = _load(ONPREM)
    config["worker_start_ray_commands"] = ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"]
    _rejects(tmp_path, "local-no-gpus.yaml", config, "worker_start_ray_commands", "--num-gpus=8")


def test_local_workers_with_too_many_slots(tmp_path):
    config = _load(ONPREM)
    config["worker_start_ray_commands"] = [
        "ray start --address=$RAY_HEAD_IP:6379 --num-gpus 8 --resources '{\"verl_slot\": 8}'"
    ]
    _rejects(tmp_path, "local-slots.yaml", config, "verl_slot=1", "found 8")


def test_cloud_worker_without_slot_or_with_four_gpus(tmp_path):
    config = _load(AWS)
    del config["available_node_types"]["a100"]["resources"]["verl_slot"]
    _rejects(tmp_path, "no-slot.yaml", config, "`a100`", "verl_slot=1")
    config = _load(GCP)
    config["available_node_types"]["a100"]["resources"]["GPU"] = 4
    _rejects(tmp_path, "four-gpus.yaml", config, "`a100`", "GPU=8")


def test_rays_own_cross_checks(tmp_path):
    config = _load(AWS)
    config["head_node_type"] = "gpu-head"
    _rejects(tmp_path, "bad-head.yaml", config, "head_node_type")
    config = _load(AWS)
    config["available_node_types"]["a100"]["min_workers"] = 31
    _rejects(tmp_path, "min-workers.yaml", config, "max_workers")
    config = _load(AWS)
    config["provider"]["type"] = "nimbus"
    _rejects(tmp_path, "provider-type.yaml", config, "Unsupported node provider: nimbus")


def test_not_yaml_or_not_a_mapping(tmp_path):
    (tmp_path / "broken.yaml").write_text("cluster_name: [unclosed\n")
    with pytest.raises(ClusterConfigError, match="broken.yaml: not valid YAML"):
        validate_cluster_yaml(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ClusterConfigError, match="list.yaml: expected a mapping"):
        validate_cluster_yaml(tmp_path / "list.yaml")


def test_validation_does_not_modify_the_config():
    config = _load(AWS)
    before = copy.deepcopy(config)
    gpu_slots(config)
    assert config == before


# --- the Slurm template ----------------------------------------------------------------------------------


def test_sbatch_template_is_valid_bash():
    script = CLUSTER / "slurm" / "maspo.sbatch"
    assert shutil.which("bash")
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    for fragment in ("#SBATCH --gpus-per-node=8", "ray start --head", "--block", "--temp-dir=", "srun --overlap",
                     "NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "NCCL_DEBUG", "verl_slot", "maspo sweep", "--address"):
        assert fragment in text, fragment


def test_readme_describes_every_file():
    readme = (CLUSTER / "README.md").read_text()
    for path in [*YAMLS, CLUSTER / "slurm" / "maspo.sbatch"]:
        assert path.name in readme, path.name
