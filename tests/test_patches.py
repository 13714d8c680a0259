"""The patch manifest (``orchestrator.verl_bridge.patches``): every target is where and what it was written for,
installation is idempotent and loud, the local profile's patches are inert on the a100 profile, and
``maspo doctor`` lists them all."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.verl_bridge import patches, patching
from orchestrator.verl_bridge.patches import ANY, MANIFEST, Condition, Kind, Patch, PatchTargetError

ROOT = Path(__file__).resolve().parents[1]
LOCAL_ONLY = {"cpu_platform", "cpu_gloo_backend", "hf_rollout_adapter", "hf_rollout_replica", "hf_rollout_sample_key",
              "early_start_servers", "early_start_reward_workers", "replay_buffer_poll"}


# ------------------------------------------------------------------------------------------------- the manifest

def test_manifest_entries_are_complete_and_documented():
    names = [p.name for p in MANIFEST]
    assert len(names) == len(set(names))
    doc = (ROOT / "docs" / "patches.md").read_text()
    headings = set(re.findall(r"^#{2,4} (\S+)\s*$", doc, flags=re.M))
    for patch in MANIFEST:
        assert patch.why and patch.doc == f"docs/patches.md#{patch.name}"
        assert patch.name in headings, f"docs/patches.md has no section for {patch.name}"
        assert isinstance(patch.condition, Condition) and isinstance(patch.kind, Kind)
        installer = patches._load(patch.installer)
        assert callable(installer)
        if patch.kind is Kind.WRAP:
            assert getattr(installer, "marker", None), f"{patch.installer} does not mark what it makes"
    assert {p.name for p in MANIFEST if p.condition in (Condition.LOCAL_PROFILE,
                                                        Condition.LOCAL_PROFILE_OR_POLL_ENV)} == LOCAL_ONLY
    assert [p.name for p in MANIFEST if p.condition is Condition.EXPERIMENT_DRIVER] == [
        "ray_quiet_worker_start_warnings"]
    assert "\n## Version check\n" in doc  # docs/patches.md#version-check


@pytest.mark.parametrize("patch", MANIFEST, ids=lambda p: p.name)
def test_every_target_exists_with_the_recorded_signature(patch):
    """What ``maspo doctor --check`` checks: the installed verl / TransferQueue / Ray / torch have every target."""
    assert patches.problems(patch) == []


def test_the_installed_verl_is_the_one_the_patches_were_written_for():
    assert patches.installed_version("verl") == patches.WRITTEN_FOR["verl"] == "0.9.1"
    assert patches.verl_version_problem() is None


# ------------------------------------------------------------------------------------------------- loud failures

@pytest.mark.parametrize("patch", MANIFEST, ids=lambda p: p.name)
def test_a_missing_target_fails_with_the_patch_name(patch):
    """The three that were silent: BAPO's partial, validation_hooks' class scan, tq_namespace's hasattr."""
    empty = types.ModuleType(patch.module)
    with pytest.raises(PatchTargetError, match=rf"^patch '{patch.name}': {re.escape(patch.target)} not found "
                                               rf"\({patch.library} "):
        patches.apply(patch, empty)


def fake_patch(module: str, attr: str = "Thing.method", signature=("self", "data"), **kw) -> Patch:
    return Patch(f"fake_{attr.replace('.', '_').lower()}", module, attr, Condition.ALWAYS, "a test patch",
                 "tests.test_patches:wrap_fake", signature=signature, **kw)


@patching.wrapper_factory("_maspo_test_fake")
def wrap_fake(original):
    def wrapped(*args, **kwargs):
        return ("wrapped", original(*args, **kwargs))

    return wrapped


def fake_module(name: str, method_source: str = "def method(self, data):\n    'the original'\n    return data"):
    module = types.ModuleType(name)
    namespace: dict = {}
    exec(textwrap.dedent(method_source), namespace)
    module.Thing = type("Thing", (), {"method": namespace["method"]})
    return module


def test_a_changed_signature_fails_with_the_patch_name_and_both_signatures():
    patch = fake_patch("fake_changed")
    module = fake_module("fake_changed", "def method(self, data, extra):\n    return data")
    with pytest.raises(PatchTargetError) as err:
        patches.apply(patch, module)
    message = str(err.value)
    assert message.startswith("patch 'fake_thing_method': fake_changed.Thing.method signature changed: "
                              "expected (self, data), found (self, data, extra) (verl 0.9.1 expected, ")
    assert "docs/patches.md#fake_thing_method" in message


def test_a_signature_ending_in_any_is_a_prefix():
    def passes(a, b, c=None):
        pass

    assert patches.signature_problem(("a", "b", ANY), passes) is None
    assert patches.signature_problem(("a", ANY), passes) is None
    assert patches.signature_problem(("b", ANY), passes).startswith("signature changed")
    assert patches.signature_problem(("a", "b"), passes).startswith("signature changed")


def test_the_version_mismatch_is_a_warning_and_appears_in_every_failure(monkeypatch):
    real = patches.installed_version
    monkeypatch.setattr(patches, "installed_version", lambda lib: "0.9.2" if lib == "verl" else real(lib))
    monkeypatch.setitem(patches._warned, "version", False)
    problem = patches.verl_version_problem()
    assert "written for verl 0.9.1, verl 0.9.2 is installed" in problem
    with pytest.warns(patches.VerlVersionWarning, match="verl 0.9.2 is installed"):
        patches.check_verl_version()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patches.check_verl_version()  # once per process
    with pytest.raises(PatchTargetError, match=re.escape(
            "patch 'train_batch_hook': verl.workers.engine_workers.TrainingWorker.train_batch not found "
            "(verl 0.9.1 expected, 0.9.2 installed")):
        patches.apply(patches.get("train_batch_hook"), types.ModuleType("verl.workers.engine_workers"))


def write_package(root: Path, package: str, source: str) -> None:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / "mod.py").write_text(textwrap.dedent(source))


def test_a_deferred_patch_raises_at_the_import_of_its_module_and_stays_loud(tmp_path, monkeypatch):
    write_package(tmp_path, "maspo_fake_pkg_a", """
        class Other:
            def method(self, data):
                return data
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    patch = fake_patch("maspo_fake_pkg_a.mod")
    patches.install(patch)  # the module is not imported yet: armed
    assert "maspo_fake_pkg_a.mod" in patching.pending_imports()
    for _ in range(2):  # the failed import is forgotten by Python; the next one must not give an unpatched module
        with pytest.raises(PatchTargetError, match=r"^patch 'fake_thing_method': maspo_fake_pkg_a\.mod\.Thing"
                                                   r"\.method not found"):
            __import__("maspo_fake_pkg_a.mod")
    assert "maspo_fake_pkg_a.mod" not in sys.modules


def test_a_deferred_patch_whose_module_does_not_exist_fails_at_install():
    with pytest.raises(PatchTargetError, match=r"^patch 'fake_thing_method': module maspo_no_such_pkg\.mod "
                                               r"not found"):
        patches.install(fake_patch("maspo_no_such_pkg.mod"))
    with pytest.raises(PatchTargetError, match="cannot be imported"):
        patches.install(fake_patch("maspo_no_such_pkg.mod", eager=True))


def test_a_deferred_patch_is_installed_at_import_once(tmp_path, monkeypatch):
    write_package(tmp_path, "maspo_fake_pkg_b", """
        class Thing:
            def method(self, data):
                "the original"
                return data
        Thing.method.dispatch_mode = "verl's attribute"
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    patch = fake_patch("maspo_fake_pkg_b.mod")
    assert patches.module_exists("maspo_fake_pkg_b.mod") and "maspo_fake_pkg_b" not in sys.modules
    patches.install(patch)
    patches.install(patch)  # idempotent while armed: one callback
    assert [n for n in patching.pending_imports() if n == "maspo_fake_pkg_b.mod"] == ["maspo_fake_pkg_b.mod"]
    import maspo_fake_pkg_b.mod as mod

    hooked = mod.Thing.method
    assert mod.Thing().method(3) == ("wrapped", 3)
    assert hooked.__name__ == "method" and hooked.__doc__ == "the original"  # functools.wraps
    assert hooked.dispatch_mode == "verl's attribute" and hooked._maspo_test_fake
    patches.install(patch)  # the module is imported: applied again, a no-op
    patches.apply(patch, mod)
    assert mod.Thing.method is hooked
    assert not getattr(hooked.__wrapped__, "_maspo_test_fake", False)  # wrapped once, not twice
    assert mod.Thing().method(3) == ("wrapped", 3)


def test_wrap_is_idempotent_and_keeps_the_original_metadata():
    owner = fake_module("fake_wrap").Thing
    original = owner.method
    assert patching.wrap(owner, "method", wrap_fake) is True
    first = owner.method
    assert patching.wrap(owner, "method", wrap_fake) is False and owner.method is first
    assert first.__wrapped__ is original and first.__doc__ == "the original"
    # a plain make_wrapper with an explicit marker
    assert patching.wrap(owner, "method", lambda f: functools.partial(f), "_maspo_other", metadata=False) is True
    assert patching.wrap(owner, "method", lambda f: functools.partial(f), "_maspo_other", metadata=False) is False


def test_bapo_hook_fails_loudly_when_verl_drops_the_partial(tmp_path, monkeypatch):
    """Issue item 1: without ``partial(ppo_loss, config=...)`` BAPO used to fall back to per-micro-batch bounds."""
    from orchestrator.verl_bridge import actor_hooks

    config = types.SimpleNamespace(policy_loss={"loss_mode": "bapo"})
    worker = types.SimpleNamespace(loss_fn=functools.partial(lambda config, model_output, data: None, config=config))
    assert actor_hooks.actor_loss_config(worker) is config
    assert actor_hooks.actor_loss_config(types.SimpleNamespace(loss_fn=None)) is None
    with pytest.raises(PatchTargetError, match="^patch 'train_batch_hook': TrainingWorker.loss_fn is"):
        actor_hooks.actor_loss_config(types.SimpleNamespace(loss_fn=lambda config, model_output, data: None))

    train_batch = actor_hooks.wrap_train_batch(lambda self, data: "trained")
    with pytest.raises(PatchTargetError, match="train_batch_hook"):
        train_batch(types.SimpleNamespace(loss_fn=print), data=None)

    # and at install time: the contract is read from ActorRolloutRefWorker.init_model
    import verl.workers.engine_workers as engine_workers

    assert actor_hooks.loss_fn_contract(engine_workers) is None
    write_package(tmp_path, "maspo_fake_engine_workers", """
        from functools import partial

        class ActorRolloutRefWorker:
            def init_model(self):
                self.loss_fn = make_loss(self.actor_config)  # verl no longer builds partial(ppo_loss, ...)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    import maspo_fake_engine_workers.mod as changed

    changed.TrainingWorker = engine_workers.TrainingWorker
    problem = actor_hooks.loss_fn_contract(changed)
    assert problem and "partial(ppo_loss, config=" in problem
    with pytest.raises(PatchTargetError, match="^patch 'train_batch_hook': ActorRolloutRefWorker.init_model"):
        patches.verify(patches.get("train_batch_hook"), changed)


def test_train_batch_hook_fails_loudly_when_verl_stops_flagging_the_last_update(tmp_path, monkeypatch):
    """The mechanism metrics' last-update value reads ``update_lr_scheduler``, set by ``train_mini_batch``."""
    from orchestrator.verl_bridge import actor_hooks

    write_package(tmp_path, "maspo_fake_engine_workers2", """
        from functools import partial

        class ActorRolloutRefWorker:
            def init_model(self):
                self.loss_fn = partial(ppo_loss, config=self.actor_config)

        class TrainingWorker:
            def train_batch(self, data):
                pass

            def train_mini_batch(self, data):
                for batch_idx, mini_batch_td in enumerate(data):
                    self.train_batch(mini_batch_td)  # verl no longer flags the last update
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    import maspo_fake_engine_workers2.mod as changed

    problem = actor_hooks.loss_fn_contract(changed)
    assert problem and "update_lr_scheduler" in problem
    with pytest.raises(PatchTargetError, match="^patch 'train_batch_hook': TrainingWorker.train_mini_batch"):
        patches.verify(patches.get("train_batch_hook"), changed)


def test_the_plugin_makes_import_verl_fail_when_a_target_is_missing():
    """verl's plugin loader swallows exceptions: a patch failure must still stop ``import verl``, by name."""
    code = textwrap.dedent("""
        import sys, types
        sys.modules["verl.workers.utils.losses"] = types.ModuleType("verl.workers.utils.losses")  # no ppo_loss
        import verl
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", patches.POLL_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert ("PluginLoadError: patch 'ppo_loss_hook': verl.workers.utils.losses.ppo_loss not found "
            "(verl 0.9.1 expected, 0.9.1 installed") in out.stderr


# ------------------------------------------------------------------------------------------------- profiles

PROFILE_SCRIPT = textwrap.dedent("""
    import importlib, json
    import verl  # the plugin installs what applies to this process
    from orchestrator.verl_bridge import patches
    for patch in patches.MANIFEST:  # import every target module (the deferred patches install now)
        importlib.import_module(patch.module)
    import torch.distributed as dist
    from verl.plugin.platform import platform_manager as pm
    from verl.workers.rollout import base, replica
    print(json.dumps({
        "installed": {p.name: patches.is_installed(p) for p in patches.MANIFEST},
        "rows": {r.name: [r.active, r.state] for r in patches.manifest_rows()},
        "hf_adapter": ("hf", "async") in base._ROLLOUT_REGISTRY,
        "hf_replica": "hf" in replica.RolloutReplicaRegistry._registry,
        "cpu_platform": pm.PlatformRegistry.get("cpu") is not None,
        "gloo_wrapped": getattr(dist.init_process_group, "_maspo_cpu_gloo", False),
    }))
""")


def run_profile_process(extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VERL_PLATFORM", "VERL_ENGINE_DEVICE", patches.POLL_ENV, "VERL_USE_EXTERNAL_PLUGINS")}
    env.update({"PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", **extra_env})
    out = subprocess.run([sys.executable, "-c", PROFILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_local_profile_patches_are_inert_on_the_a100_profile():
    seen = run_profile_process({})  # an a100 verl process: no VERL_PLATFORM=cpu
    installed = seen["installed"]
    assert {name for name, on in installed.items() if on} == {
        p.name for p in MANIFEST if p.condition is Condition.ALWAYS}
    assert not any(installed[name] for name in LOCAL_ONLY)
    assert not installed["ray_quiet_worker_start_warnings"]  # driver only
    assert not (seen["hf_adapter"] or seen["hf_replica"] or seen["cpu_platform"] or seen["gloo_wrapped"])
    assert all(seen["rows"][name] == [False, "off"] for name in LOCAL_ONLY)


def test_the_local_profile_installs_every_plugin_patch():
    seen = run_profile_process({"VERL_PLATFORM": "cpu"})
    assert {name for name, on in seen["installed"].items() if on} == {p.name for p in MANIFEST
                                                                      if p.condition.by_plugin}
    assert seen["hf_adapter"] and seen["hf_replica"] and seen["cpu_platform"] and seen["gloo_wrapped"]


# ------------------------------------------------------------------------------------------------- maspo doctor

def doctor_app() -> typer.Typer:
    from orchestrator.cli.doctor import doctor_command

    app = typer.Typer()
    app.command("doctor")(doctor_command)

    @app.callback()
    def main():  # a group, so that the command is invoked by its name as under `maspo`
        pass

    return app


@pytest.mark.parametrize("args", [["doctor"], ["doctor", "--no-check"], ["doctor", "--no-check", "--profile", "local"]])
def test_doctor_lists_every_patch(args):
    result = CliRunner().invoke(doctor_app(), args)
    assert result.exit_code == 0, result.output
    for patch in MANIFEST:
        assert patch.name in result.output
    assert "verl 0.9.1" in result.output
    if "--no-check" not in args:
        assert f"all {len(MANIFEST)} patch targets found" in result.output


def test_doctor_reports_a_broken_target_and_exits_1(monkeypatch):
    broken = fake_patch("maspo_no_such_pkg.mod")
    monkeypatch.setattr(patches, "MANIFEST", (*MANIFEST, broken))
    result = CliRunner().invoke(doctor_app(), ["doctor"])
    assert result.exit_code == 1
    assert "fake_thing_method" in result.output and "cannot be imported" in result.output


def test_the_cli_module_imports_neither_verl_nor_torch():
    code = ("import sys, orchestrator.cli.doctor, orchestrator.verl_bridge.patches; "
            "assert not {'verl', 'torch'} & set(sys.modules), sorted(m for m in sys.modules if 'verl' in m)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
