"""Fuzz the command line in-process: whatever a user types or whatever a spec file holds, a command exits 0 or 2,
a mistake is one line ``error: ...`` (or Click's short usage block), never a traceback, and nothing is written.

Every sweep and compare runs with ``--dry-run`` (valid input prints the trials and writes nothing either);
``maspo run`` has its trial replaced by a stub, so nothing here starts Ray.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[1]
SPECS = {name: yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text()) for name in ("alpha-beta", "compare")}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

runner = CliRunner()

# text a shell can pass: no NUL (argv cannot hold one); surrogates are left out by st.text already
text = st.text(st.characters(blacklist_characters="\x00"), max_size=24)


def mostly(valid, bad):
    """Three draws in four valid (so that a command gets past its first check), one bad."""
    return st.tuples(st.integers(0, 3), valid, bad).map(lambda t: t[2] if t[0] == 0 else t[1])


names = mostly(st.sampled_from(["ok-name", "ok.name_1", "x" * 128, "A.b-c_9"]),
               st.one_of(st.sampled_from(["../x", "..", ".", "a/b", "/tmp/abs", "ünï", "a b", "", "[/]", "[bold]x",
                                          ":smile:", "x" * 129, "-x", "--dry-run", "a\nb"]), text))
numbers = mostly(st.one_of(st.sampled_from(["1", "2", "3"]), st.integers(1, 4).map(str)),
                 st.one_of(st.sampled_from(["-1", "0", "101", "1025", "1000001", str(2**32), str(2**63), str(10**30),
                                            "-" + str(10**30), "1.5", "nan", "inf", "abc", "", " 1", "0x10"]),
                           st.integers(-3, 0).map(str)))
floats = mostly(st.one_of(st.sampled_from(["0.5", "1", "0.1", "0.03", "1e-3"]),
                          st.floats(0.001, 1).map(repr)),
                st.one_of(st.sampled_from(["0", "-0", "1e-320", "1e400", "-1e400", "nan", "inf", "-inf", "2.5",
                                           "-0.1", "abc", ""]),
                          st.floats(allow_nan=True, allow_infinity=True).map(repr)))
profiles = mostly(st.sampled_from(["local", "a100"]), st.one_of(st.sampled_from(["gpu", "LOCAL", ""]), text))
scales = mostly(st.sampled_from(["1.5b", "7b", "14b"]), st.one_of(st.sampled_from(["3b", "1.5B", ""]), text))
schedulers = mostly(st.sampled_from(["fifo", "asha"]), st.sampled_from(["hyperband", "", "FIFO"]))
grids = mostly(st.sampled_from(["listed", "full"]), st.sampled_from(["half", "", "Full"]))
setting_keys = st.one_of(st.sampled_from(["train_batch_size", "ppo_mini_batch_size", "test_freq", "lr", "steps",
                                          "name", "scale", "model_path", "n_samples", "val_n", "n_val_problems",
                                          "max_response_length", "data_dir", "bogus", "", " ", "gpus_per_trial",
                                          "nodes_per_trial", "rollout_tp", "gpu_memory_utilization", "adam_betas",
                                          "checkpoint_root", "top_p", "temperature", "weight_decay"]), text)
setting_values = st.one_of(numbers, floats, st.sampled_from(["/nonexistent", "a100", "local", "7b", "x=y"]), text)
assignments = mostly(st.builds(lambda k, v: f"{k}={v}", setting_keys, setting_values), text)
baselines = mostly(st.sampled_from(["all", "grpo", "grpo,sapo,dac", "maspo", " all "]),
                   st.one_of(st.sampled_from(["ppo2", "", ",", "grpo,,sapo", "grpo,ppo2"]), text))
hyper_keys = st.sampled_from(["alpha", "beta", "beta_low", "eps", "eps_high", "sigma_base", "reading", "kappa",
                              "zeta", ""])
hyperparameters = mostly(st.builds(lambda k, v: f"{k}={v}", hyper_keys, floats), text)
algorithms = mostly(st.sampled_from(["maspo", "grpo", "sapo", "dac", "bapo", "entropy_adv", "clip_higher"]),
                    st.one_of(st.sampled_from(["ppo2", "", "MASPO"]), text))

# spec files: the real specs with one value replaced, random documents, random text, random bytes
leaves = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True), text,
                   st.sampled_from(["sweep", "compare", "maspo", "grpo", "1.5b", "7b", "alpha", "beta", "../x"]))
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(text, inner, max_size=3)), max_leaves=8)


def replace_at(document, path: list, value):
    """``document`` with the value at ``path`` (indices into nested dicts/lists, taken modulo) replaced."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    if isinstance(document, dict):
        key = list(document)[path[0] % len(document)]
        return {**document, key: replace_at(document[key], path[1:], value)}
    index = path[0] % len(document)
    return [*document[:index], replace_at(document[index], path[1:], value), *document[index + 1:]]


def mutated(base: str):
    """The real spec ``base`` with one value replaced by a random one, maybe one top-level field dropped."""
    def build(path, value, drop):
        document = replace_at(SPECS[base], path, value)
        if isinstance(document, dict):
            document = {k: v for k, v in document.items() if k != drop}
        return yaml.safe_dump(document).encode()

    return st.builds(build, st.lists(st.integers(0, 50), min_size=1, max_size=5), values,
                     st.sampled_from(["", "", "", "kind", "name", "algorithm", "axes", "points", "reference",
                                      "hyperparameters", "demo"]))


def spec_contents(own: str):
    """Mostly the command's own spec, mutated; else the other one, random YAML, random text, random bytes."""
    other = next(name for name in SPECS if name != own)
    return mostly(mutated(own), st.one_of(
        mutated(other),
        values.map(lambda v: yaml.safe_dump(v).encode()),
        text.map(str.encode),
        st.binary(max_size=64),
        st.sampled_from([b"\xff\xfe\x00", b"kind: sweep\nname: \xe9\n", b"\xef\xbb\xbfkind: sweep\n",
                         b"!!python/object:os.system {}", b"a: [", b"kind: sweep\nname: x\0\n",
                         b"kind: compare\nname: x\nreference: maspo\nhyperparameters: {}\n"]),
    ))


def options(draw, command: str) -> list[str]:
    """A random selection of the options sweep/compare share, each with a random (often bad) value."""
    choices = {
        "--profile": profiles, "--scale": scales, "--seeds": numbers, "--steps": numbers,
        "--max-concurrent": numbers, "--scheduler": schedulers, "--name": names, "-P": assignments,
        "--data": names,
    }
    if command == "sweep":
        choices["--grid"] = grids
    else:
        choices["--baselines"] = baselines
    argv: list[str] = []
    for option in draw(st.lists(st.sampled_from(sorted(choices)), max_size=4)):
        argv += [option, draw(choices[option])]
    argv += draw(st.lists(st.sampled_from(["--demo", "--resume", "--rehearse"]), max_size=3, unique=True))
    return argv


def check(result, root: Path, *, written_ok: bool = False) -> None:
    """Exit 0 or 2; no traceback; a mistake is one error line or Click's usage block; nothing under ``root``."""
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{output}")
    assert result.exit_code in (0, 2), output
    assert "Traceback" not in output
    if result.exit_code == 2:
        stderr = result.stderr.strip()
        if stderr.startswith("error: "):
            assert len(stderr.splitlines()) == 1, stderr
        else:
            assert "Usage:" in stderr, stderr
    if not written_ok:
        assert not root.exists() or not any(root.iterdir()), sorted(root.rglob("*"))


@pytest.mark.parametrize("command", ["sweep", "compare"])
@FUZZ
@given(data=st.data())
def test_sweep_and_compare_dry_runs_exit_0_or_2_and_write_nothing(command, data):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "runs"
        spec: list[str] = []
        own = "alpha-beta" if command == "sweep" else "compare"
        kind = data.draw(st.sampled_from(["named", "file", "file", "none"]))
        if kind == "named":
            spec = [data.draw(mostly(st.just(own), st.sampled_from(["alpha-beta", "compare", "nosuch",
                                                                   "../sweeps/compare", "/", ""])))]
        elif kind == "file":
            path = tmp / "spec" / data.draw(st.sampled_from(["s.yaml", "s.yml", "s.bin"]))
            path.parent.mkdir()
            path.write_bytes(data.draw(spec_contents(own)))
            spec = [str(path)]
        if command == "compare" and spec:
            spec = ["--spec", spec[0]]
        argv = [command, *spec, *options(data.draw, command), "--dry-run", "--root", str(root)]
        result = runner.invoke(app, argv)
        check(result, root)


@FUZZ
@given(data=st.data())
def test_names_given_to_existing_experiment_commands_exit_2_and_write_nothing(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        name = data.draw(names)
        command = data.draw(st.sampled_from([["resume"], ["results"], ["sync"], ["sync", "--dry-run"],
                                             ["dashboard", "local"], ["dashboard", "publish"]]))
        result = runner.invoke(app, [*command, name, "--root", str(root)])
        check(result, root)
        assert result.exit_code == 2  # nothing exists under the empty root


@FUZZ
@given(data=st.data())
def test_run_checks_everything_before_starting_a_trial(data, monkeypatch_module):
    calls = monkeypatch_module
    calls.clear()
    choices = {"--algorithm": algorithms, "--alpha": floats, "--beta": floats, "--set": hyperparameters,
               "--profile": profiles, "--steps": numbers, "--seed": numbers, "--name": names, "--lr": floats}
    argv = ["run"]
    for option in data.draw(st.lists(st.sampled_from(sorted(choices)), max_size=5)):
        argv += [option, data.draw(choices[option])]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = runner.invoke(app, [*argv, "--out", str(root / "out")])
        check(result, root)
        # a valid input reached the (stubbed) trial with a valid name; an invalid one never did
        assert bool(calls) == (result.exit_code == 0), (argv, result.output)
        if calls:
            from orchestrator.store import check_name

            check_name(calls[0])


@FUZZ
@given(data=st.data())
def test_probe_exits_0_or_2(data):
    argv = ["probe"]
    for algorithm in data.draw(st.lists(algorithms, max_size=2)):
        argv += ["-a", algorithm]
    for option, values_ in (("--pi-old", floats), ("--advantage", floats), ("-s", hyperparameters)):
        if data.draw(st.booleans()):
            argv += [option, data.draw(values_)]
    with tempfile.TemporaryDirectory() as tmp:
        check(runner.invoke(app, argv), Path(tmp))


@pytest.fixture(scope="module")
def monkeypatch_module():
    """``run_local_trial`` replaced for the module: it records the trial's name and succeeds."""
    import orchestrator.local_trial

    calls: list[str] = []

    def stub(trial, name, out_dir, console, poll_s=0.5):
        calls.append(name)
        return 0

    patch = pytest.MonkeyPatch()
    patch.setattr(orchestrator.local_trial, "run_local_trial", stub)
    yield calls
    patch.undo()
