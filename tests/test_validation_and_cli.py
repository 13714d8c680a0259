"""Bad input is rejected before anything runs, with one clear line; the CLI explains the algorithms."""

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from orchestrator.algorithms import ALGORITHMS, AlgorithmError, compute, get
from orchestrator.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "name,values,fragment",
    [
        ("maspo", {"sigma_base": -1.0}, "sigma_base: Input should be greater than 0"),
        ("maspo", {"alpha": 2.5}, "alpha: Input should be less than or equal to 2"),
        ("maspo", {"alpha": -0.1}, "alpha: Input should be greater than or equal to 0"),
        ("grpo", {"eps": 1.0}, "eps_low: Input should be less than 1"),
        ("clip_higher", {"eps_low": 0.0}, "eps_low: Input should be greater than 0"),
        ("dac", {"eps_high": 1.5}, "eps_high: Input should be less than 1"),
        ("maspo", {"beta": 0.1, "beta_low": 0.2}, "contradicts"),
        ("bapo", {"reading": "median"}, "reading: Input should be 'grad_mass', 'literal' or 'abs_sum'"),
        ("bapo", {"c_low_start": 0.95}, "exceeds c_low_max"),
        ("entropy_adv", {"kappa": 1.0}, "kappa: Input should be greater than 1"),
        ("sapo", {"alpha": 0.5}, "alpha: Extra inputs are not permitted"),
    ],
)
def test_bad_hyperparameters_are_rejected_with_a_clear_message(name, values, fragment):
    with pytest.raises(AlgorithmError) as err:
        get(name).parse(values)
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"invalid hyperparameters for {name}")


def test_unknown_algorithm_lists_the_valid_names():
    with pytest.raises(AlgorithmError) as err:
        get("ppo2")
    assert "unknown algorithm 'ppo2'" in str(err.value)
    assert all(name in str(err.value) for name in ALGORITHMS)


def test_compute_rejects_before_computing():
    x = torch.zeros(1, 2)
    with pytest.raises(AlgorithmError):
        compute("maspo", x, x, x, torch.ones(1, 2), alpha=9.0)


def test_algorithms_command_lists_every_algorithm_with_defaults_and_equations():
    result = runner.invoke(app, ["algorithms"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for algorithm in ALGORITHMS.values():
        assert algorithm.name in result.output
        assert algorithm.equations.split()[0] in result.output
    assert "sigma_base = 1.0" in result.output and "eps_high = 0.265" in result.output
    assert "tau_neg = 1.05" in result.output and "rho0 = 0.4" in result.output


def test_algorithms_command_prints_the_verl_overrides():
    result = runner.invoke(app, ["algorithms", "dac", "--overrides"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "+actor_rollout_ref.actor.policy_loss.dac_high_cap=10.0" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["algorithms", "ppo2"], "unknown algorithm 'ppo2'"),
        (["probe", "-a", "maspo", "-s", "alpha=3"], "alpha: Input should be less than or equal to 2"),
        (["probe", "-a", "maspo", "-s", "zeta=1"], "no selected algorithm has hyperparameter(s) zeta"),
        (["probe", "-a", "maspo", "-s", "alpha"], "expected NAME=VALUE"),
        (["probe", "--pi-old", "0"], "--pi-old must be in (0, 1]"),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_no_traceback(args, message):
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": ""}, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1


def test_probe_shows_the_gate_shapes():
    result = runner.invoke(app, ["probe", "-a", "grpo", "-a", "maspo", "-s", "alpha=0.5"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    grpo = [c.strip() for c in rows["grpo"].split("│")[2:-1]]
    maspo = [c.strip() for c in rows["maspo"].split("│")[2:-1]]
    # rho = 0.5 0.8 1 1.2 1.5 2 3 5 with A = +1: the hard clip drops the gradient past 1.2, the gate decays
    assert grpo == ["1.00", "1.00", "1.00", "1.00", "0.00", "0.00", "0.00", "0.00"]
    assert maspo[:3] == ["1.00", "1.00", "1.00"] and 0.0 < float(maspo[-1]) < float(maspo[4]) < 1.0
