"""The wheel runs the product: it carries the specs, the dashboard definition and the paper's tables, and an
install of it, away from any checkout, runs `maspo sweep alpha-beta --dry-run`. The `gpu` extra and the cluster
install lines stay on the GPU stack verl itself pins."""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CLUSTER_FILES = [*sorted(CLUSTER.glob("*.yaml")), CLUSTER / "slurm" / "maspo.sbatch", CLUSTER / "README.md"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from this checkout (offline when the build backend is installed here)."""
    out = tmp_path_factory.mktemp("wheel")
    offline = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []  # else pip fetches it
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, "-w", str(out), str(ROOT)],
                   check=True, timeout=300, cwd=out)
    (built,) = out.glob("maspo-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a directory of its own (no checkout anywhere on its path)."""
    target = tmp_path_factory.mktemp("site").resolve()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    return target


def _outside(target: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run with only the install on PYTHONPATH, from a directory outside the checkout."""
    assert ROOT not in cwd.resolve().parents and cwd.resolve() != ROOT
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), PYTHONNOUSERSITE="1", MASPO_DATA_DIR=str(cwd / "no-data"))
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_carries_specs_dashboards_paper_tables_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for spec in sorted((ROOT / "sweeps").glob("*.yaml")):
            packaged = f"orchestrator/_data/sweeps/{spec.name}"
            assert packaged in names, sorted(names)
            assert zf.read(packaged) == spec.read_bytes()
        assert {"orchestrator/_data/sweeps/alpha-beta.yaml", "orchestrator/_data/sweeps/compare.yaml"} <= names
        assert zf.read("orchestrator/_data/dashboards/maspo.yaml") == (ROOT / "dashboards" / "maspo.yaml").read_bytes()
        fixtures = sorted((ROOT / "tests" / "fixtures" / "data").glob("*.jsonl"))  # `maspo data prepare --fixtures`
        assert len(fixtures) == 7
        for fixture in fixtures:
            assert zf.read(f"orchestrator/_data/fixtures/{fixture.name}") == fixture.read_bytes()
        tables = sorted((ROOT / "orchestrator" / "paper").glob("*.csv"))
        assert tables and {f"orchestrator/paper/{t.name}" for t in tables} <= names
        assert {"orchestrator/resources.py", "orchestrator/cli/__init__.py", "orchestrator/rewards.py"} <= names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"maspo": "orchestrator.cli:main"}
    assert dict(parser["verl.plugins"]) == {"maspo": "orchestrator.verl_bridge.plugin"}


def test_the_installed_wheel_finds_its_specs_and_dashboards_outside_a_checkout(installed, tmp_path):
    code = """if True:
        import json, orchestrator
        from orchestrator import resources
        from orchestrator.config.experiment import load_spec
        from orchestrator.dashboards import load_definition
        from orchestrator.results import PAPER_RESULTS
        print(json.dumps({"package": orchestrator.__file__, "sweeps": str(resources.data_dir("sweeps")),
                          "dashboards": str(resources.dashboard_definition()), "specs": list(resources.spec_files()),
                          "alpha_beta": load_spec("alpha-beta").name, "compare": load_spec("compare").kind,
                          "study_parts": len(load_spec("paper").parts),
                          "x": load_definition().x, "paper": str(PAPER_RESULTS), "paper_ok": PAPER_RESULTS.is_file(),
                          "fixture": str(resources.fixture_file("aime24")),
                          "fixture_ok": resources.fixture_file("aime24").is_file()}))
    """
    run = _outside(installed, sys.executable, "-c", code, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    for key in ("package", "sweeps", "dashboards", "paper", "fixture"):  # fixture: `maspo data prepare --fixtures`
        assert Path(found[key]).is_relative_to(installed), (key, found)
    assert found["fixture_ok"]
    assert found["specs"] == ["alpha-beta", "compare", "paper"]
    assert found["study_parts"] == 10  # the study's parts resolve their specs inside the wheel too
    assert (found["alpha_beta"], found["compare"], found["x"]) == ("alpha-beta", "compare", "training/global_step")
    assert found["paper_ok"]


@pytest.mark.parametrize("how", ["module", "script"])
def test_the_installed_wheel_runs_a_sweep_dry_run_outside_a_checkout(installed, tmp_path, how):
    command = ([sys.executable, "-m", "orchestrator.cli"] if how == "module" else [str(installed / "bin" / "maspo")])
    run = _outside(installed, *command, "sweep", "alpha-beta", "--dry-run", "--root", str(tmp_path / "runs"),
                   cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("python -m verl.trainer.main_ppo") == 8  # alpha-beta's eight points
    assert f"reward.custom_reward_function.path={installed}/orchestrator/rewards.py" in run.stdout
    assert not (tmp_path / "runs").exists()


def test_a_checkout_reads_the_top_level_directories_and_a_broken_install_says_so(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from orchestrator import resources
    from orchestrator.cli import app

    # this checkout's package has no _data: the source directories are read (what `make install` runs too)
    assert Path(str(resources.data_dir("sweeps"))) == ROOT / "sweeps"
    assert resources.dashboard_definition_text() == (ROOT / "dashboards" / "maspo.yaml").read_text()
    monkeypatch.setattr(resources, "_checkout_dir", lambda kind: None)  # an install without the data files
    result = CliRunner().invoke(app, ["sweep", "alpha-beta", "--dry-run", "--root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "sweeps/ files are missing from this install" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------------------------------------
# the gpu extra and the cluster install lines


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _verl_pins(extra: str) -> dict[str, str]:
    """What the installed verl's ``extra`` pins, by package name (its own metadata)."""
    pins = {}
    for line in importlib.metadata.requires("verl") or []:
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": extra}) and req.name != "verl":
            pins[req.name] = str(req.specifier)
    return pins


def test_the_gpu_extra_is_verls_vllm_extra_at_the_verl_of_the_main_dependency():
    project = _pyproject()["project"]
    (main,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "verl"]
    gpu = [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    assert [r.name for r in gpu] == ["verl"], "the gpu extra goes through verl's own extras, nothing beside them"
    assert "vllm" in gpu[0].extras
    assert str(gpu[0].specifier) == str(main.specifier) and str(main.specifier).startswith("==")
    # the pin is verl's own: the installed verl is that release and its vllm extra pins vLLM, torch, transformers
    assert main.specifier.contains(importlib.metadata.version("verl"))
    assert {"vllm", "torch", "transformers"} <= {n for n, spec in _verl_pins("vllm").items() if spec.startswith("==")}


def test_every_cluster_install_uses_the_gpu_extra_then_verls_flash_attn():
    flash_attn = _verl_pins("flash-attn-cu130torch211")["flash-attn"]  # verl's fsdp extra takes it from here
    for path in CLUSTER_FILES:
        text = path.read_text()
        for extras in re.findall(r"(?:maspo|\B\.)\[([^\]]*)\]", text):
            assert extras == "gpu", f"{path.name}: installs maspo[{extras}]"
        for line in text.splitlines():
            if re.search(r"pip install .*maspo", line):
                assert "maspo[gpu]" in line, f"{path.name}: {line}"
            if "pip install" in line and "flash-attn" in line:
                assert f'"flash-attn{flash_attn}"' in line and "--no-build-isolation" in line, f"{path.name}: {line}"
    for path in sorted(CLUSTER.glob("*.yaml")):
        setup = yaml.safe_load(path.read_text())["setup_commands"]
        maspo = [i for i, c in enumerate(setup) if "pip install" in c and "maspo[gpu] @ " in c]
        flash = [i for i, c in enumerate(setup) if "pip install" in c and "flash-attn" in c]
        assert len(maspo) == 1 and len(flash) == 1 and maspo[0] < flash[0], (path.name, setup)
        assert "--no-build-isolation" in setup[flash[0]] and f'"flash-attn{flash_attn}"' in setup[flash[0]]
