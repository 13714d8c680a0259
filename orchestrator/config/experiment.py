"""Sweep and comparison specs (``sweeps/*.yaml``), validated by pydantic and expanded into trials.

The specs named on the command line (``maspo sweep alpha-beta``) are the ones shipped with the package, read
through :mod:`orchestrator.resources`; any other YAML path is read as it is.

A spec says WHAT to compare (algorithms and hyperparameters); the command line says WHERE and HOW MUCH
(profile, scale, seeds, steps). :func:`load_spec` validates a file once, at the edge; every failure is a
:class:`SpecError` naming the file, the field and the reason. :func:`expand` turns a spec plus the command's
choices into the list of :class:`~orchestrator.config.trial.TrialConfig` the Tune experiment runs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from orchestrator import resources
from orchestrator.algorithms import AlgorithmError, get

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SCALES = ("1.5b", "7b", "14b")
Scale = Literal["1.5b", "7b", "14b"]


class SpecError(AlgorithmError):
    """A spec file that cannot be used; the message names the file, the field and the reason."""


class DemoSize(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points: list[dict[str, float]] | None = None
    baselines: list[str] | None = None
    steps: int | None = Field(None, ge=1)


class SweepSpec(BaseModel):
    """One algorithm over a set of hyperparameter points (``maspo sweep NAME``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sweep"]
    name: str
    algorithm: str
    scale: Scale = "7b"
    fixed: dict[str, Any] = Field(default_factory=dict, description="hyperparameters shared by every point")
    axes: list[str] = Field(min_length=1, description="the swept hyperparameters, in table order")
    points: list[dict[str, float]] = Field(min_length=1)
    demo: DemoSize = DemoSize()

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        algorithm = get(self.algorithm)
        for i, point in enumerate(self.points + (self.demo.points or [])):
            if set(point) != set(self.axes):
                raise ValueError(f"point {i} {point} must set exactly the axes {self.axes}")
            algorithm.parse({**self.fixed, **point})
        if len({tuple(sorted(p.items())) for p in self.points}) != len(self.points):
            raise ValueError("points repeat")
        return self

    def grid_points(self, grid: Literal["listed", "full"]) -> list[dict[str, float]]:
        """The listed points, or the Cartesian product of every value listed per axis."""
        if grid == "listed":
            return list(self.points)
        values = [sorted({p[a] for p in self.points}) for a in self.axes]
        return [dict(zip(self.axes, combo)) for combo in itertools.product(*values)]


class CompareSpec(BaseModel):
    """A reference algorithm against baselines, with hyperparameters per scale (``maspo compare``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["compare"]
    name: str
    reference: str
    hyperparameters: dict[Scale, dict[str, dict[str, Any]]]
    demo: DemoSize = DemoSize()

    @model_validator(mode="after")
    def _check(self) -> CompareSpec:
        for scale, table in self.hyperparameters.items():
            if self.reference not in table:
                raise ValueError(f"hyperparameters.{scale} has no entry for the reference {self.reference!r}")
            for name, values in table.items():
                get(name).parse(values)
        return self

    def baselines(self, scale: str) -> list[str]:
        return [name for name in self.hyperparameters.get(scale, {}) if name != self.reference]

    def select(self, baselines: str, scale: str) -> list[str]:
        """``all`` or a comma list -> [reference, *baselines], checked against what the spec has at ``scale``."""
        available = self.baselines(scale)
        if not available and scale not in self.hyperparameters:
            raise SpecError(f"the compare spec has no hyperparameters for scale {scale}; "
                            f"it has: {', '.join(self.hyperparameters)}")
        if baselines.strip() == "all":
            return [self.reference, *available]
        chosen = [b.strip() for b in baselines.split(",") if b.strip()]
        if not chosen:
            raise SpecError("--baselines is empty; give 'all' or a comma list such as grpo,sapo,dac")
        for name in chosen:
            if name not in available:
                get(name)  # an unknown algorithm names every valid algorithm
                raise SpecError(f"baseline {name!r} has no Table 4 hyperparameters at scale {scale} in the spec; "
                                f"valid at {scale}: {', '.join(available)}")
        return [self.reference, *dict.fromkeys(c for c in chosen if c != self.reference)]


class StudyPart(BaseModel):
    """One part of a study: a sweep or a comparison at ONE scale, named by a shipped spec or written inline.

    ``spec: compare`` (a spec in sweeps/, or a YAML path relative to the study's file) takes that spec as it is;
    ``sweep: {...}`` / ``compare: {...}`` are the body of a sweep or compare spec (without kind and name). A
    compare part runs ``baselines`` (``all`` or a list) at the part's scale; a sweep part its listed points, or
    ``grid: full``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    scale: Scale
    about: str = Field("", description="what the part reproduces, e.g. the paper's section")
    spec: str | None = None
    sweep: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    baselines: str | list[str] = "all"
    grid: Literal["listed", "full"] = "listed"

    @model_validator(mode="after")
    def _one_source(self) -> StudyPart:
        given = [k for k in ("spec", "sweep", "compare") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"part {self.name!r} needs exactly one of spec, sweep, compare (got {given or 'none'})")
        return self

    def resolve(self, base: Path | None) -> SweepSpec | CompareSpec:
        """The part's sweep or compare spec, validated; a referenced spec must not be a study itself."""
        if self.spec is not None:
            path = Path(self.spec)
            if base is not None and path.suffix in (".yaml", ".yml") and not path.is_absolute():
                path = base / path
            loaded = load_spec(path if path.suffix in (".yaml", ".yml") else self.spec)
            if isinstance(loaded, StudySpec):
                raise SpecError(f"part {self.name!r}: spec {self.spec!r} is a study; a part is a sweep or a compare")
            return loaded
        body = {"kind": "sweep" if self.sweep is not None else "compare", "name": self.name,
                **(self.sweep if self.sweep is not None else self.compare)}
        if body["kind"] == "sweep":
            body.setdefault("scale", self.scale)
        try:
            return TypeAdapter(Union[SweepSpec, CompareSpec]).validate_python(body)
        except ValidationError as err:
            e = err.errors()[0]
            field = ".".join(str(p) for p in e["loc"] if p not in ("SweepSpec", "CompareSpec"))
            reason = str(e.get("ctx", {}).get("error", e["msg"])).replace("Value error, ", "")
            raise SpecError(f"part {self.name!r}: {field}: {reason}") from None
        except AlgorithmError as err:
            raise SpecError(f"part {self.name!r}: {err}") from None

    def runs(self, base: Path | None) -> list[tuple[str, dict[str, Any], dict[str, float] | None]]:
        """(algorithm, hyperparameters, swept point or None) of every trial of the part, for one seed."""
        spec = self.resolve(base)
        if isinstance(spec, SweepSpec):
            if self.baselines != "all":
                raise SpecError(f"part {self.name!r}: baselines apply to a compare part, not a sweep")
            return [(spec.algorithm, {**spec.fixed, **p}, p) for p in spec.grid_points(self.grid)]
        if self.grid != "listed":
            raise SpecError(f"part {self.name!r}: grid applies to a sweep part, not a compare")
        chosen = self.baselines if isinstance(self.baselines, str) else ",".join(self.baselines)
        table = spec.hyperparameters.get(self.scale, {})
        try:
            return [(a, dict(table[a]), None) for a in spec.select(chosen, self.scale)]
        except SpecError as err:
            raise SpecError(f"part {self.name!r}: {err}") from None


class StudySpec(BaseModel):
    """Several sweeps and comparisons, each at its own scale, as ONE experiment (``maspo sweep paper``).

    Trials with identical configs (same algorithm, hyperparameters, scale and seed) run once, whichever parts
    ask for them; the trial lists every part it belongs to.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["study"]
    name: str
    about: str = ""
    parts: list[StudyPart] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_parts(self) -> StudySpec:
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"part names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        return self


Spec = Annotated[Union[SweepSpec, CompareSpec, StudySpec], Field(discriminator="kind")]


def spec_path(name_or_path: str | Path) -> Path | Traversable:
    """``alpha-beta`` -> the shipped ``sweeps/alpha-beta.yaml``; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return resources.spec_file(str(name_or_path))


def load_spec(name_or_path: str | Path) -> SweepSpec | CompareSpec | StudySpec:
    path = spec_path(name_or_path)
    if not path.is_file():
        known = ", ".join(resources.spec_files())
        raise SpecError(f"no spec {str(name_or_path)!r} ({path} does not exist); "
                        f"specs in {resources.data_dir('sweeps')}: {known}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read it: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    try:
        spec = TypeAdapter(Spec).validate_python(raw)
        if isinstance(spec, StudySpec):  # every part resolves and expands, before anything is planned
            for part in spec.parts:
                part.runs(_base_dir(path))
        return spec
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(p) for p in e["loc"] if p not in ("sweep", "compare", "study")) or "(top level)"
        reason = str(e.get("ctx", {}).get("error", e["msg"])).replace("Value error, ", "")
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        raise SpecError(f"{path}: {field}: {reason}{more}") from None
    except AlgorithmError as err:
        raise SpecError(f"{path}: {err}") from None


def _base_dir(path: Path | Traversable) -> Path | None:
    """The directory a study's relative part paths are read from (None for a spec shipped in the wheel)."""
    return path.parent if isinstance(path, Path) else None


# --------------------------------------------------------------------------------------------------------
# spec + command-line choices -> the experiment plan


def _label(algorithm: str, point: dict[str, float] | None) -> str:
    if point:
        return " ".join(f"{k}={v:g}" for k, v in point.items())
    return get(algorithm).title


def plan_experiment(spec: SweepSpec | CompareSpec | StudySpec, *, name: str | None = None, profile: str = "local",
                    scale: str | None = None, seeds: int = 1, steps: int | None = None,
                    grid: Literal["listed", "full"] = "listed", baselines: str = "all", demo: bool = False,
                    max_concurrent: int | None = None, scheduler: Literal["fifo", "asha"] = "fifo",
                    grace_validations: int = 3, max_failures: int = 2, profile_settings: dict[str, Any] | None = None,
                    spec_file: str = "", rehearse: bool = False):
    """The experiment a command describes; every choice is validated here, before any cluster work.

    ``max_concurrent=None`` fills the cluster: as many trials at once as its ``verl_slot``s allow.
    ``rehearse``: the a100 experiment rehearsed on CPU (``orchestrator/rehearsal.py``): one fake GPU per trial.
    """
    from orchestrator.config.trial import trial_config
    from orchestrator.config.plan import ExperimentPlan, PlannedTrial, trial_name

    if profile not in ("local", "a100"):
        raise SpecError(f"unknown profile {profile!r}; valid: local, a100")
    if rehearse and profile != "a100":
        raise SpecError("--rehearse rehearses the a100 profile on this machine: give --profile a100 (the local "
                        "profile runs here as it is)")
    if seeds < 1:
        raise SpecError(f"--seeds must be at least 1, got {seeds}")
    if max_concurrent is not None and max_concurrent < 1:
        raise SpecError(f"--max-concurrent must be at least 1, got {max_concurrent}")
    if scale is not None and scale not in SCALES:
        raise SpecError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if demo and isinstance(spec, StudySpec):
        raise SpecError(f"study {spec.name!r} has no demo size; run one of its parts' specs with --demo")
    if demo:
        steps = steps or spec.demo.steps
    settings = dict(profile_settings or {})
    if steps is not None:
        settings["steps"] = steps

    # (part, scale, algorithm, hyperparameters, swept point) for one seed
    runs: list[tuple[str | None, str, str, dict[str, Any], dict[str, float] | None]] = []
    if isinstance(spec, StudySpec):
        if scale is not None or grid != "listed" or baselines != "all":
            raise SpecError(f"study {spec.name!r} sets the scale, grid and baselines of each part; drop --scale, "
                            f"--grid and --baselines")
        base = _base_dir(spec_path(spec_file)) if spec_file else None
        for part in spec.parts:
            runs += [(part.name, part.scale, *run) for run in part.runs(base)]
        scale = "+".join(dict.fromkeys(part.scale for part in spec.parts))
    elif isinstance(spec, SweepSpec):
        scale = scale or (spec.scale if profile == "a100" else "1.5b")
        points = spec.demo.points if demo and spec.demo.points else spec.grid_points(grid)
        runs = [(None, scale, spec.algorithm, {**spec.fixed, **p}, p) for p in points]
    else:
        scale = scale or "1.5b"
        if demo and spec.demo.baselines and baselines == "all":
            baselines = ",".join(spec.demo.baselines)
        table = spec.hyperparameters.get(scale, {})
        runs = [(None, scale, a, dict(table[a]), None) for a in spec.select(baselines, scale)]

    trials: dict[str, PlannedTrial] = {}  # by config hash: identical configs run once
    for seed in range(seeds):
        for part, run_scale, algorithm, values, point in runs:
            trial_settings = {"name": "a100", "scale": run_scale, **settings} if profile == "a100" else settings
            trial = trial_config(algorithm, values, seed=seed, profile=trial_settings)
            key = trial.stable_hash()
            if key in trials:
                if part is not None and part not in trials[key].parts:
                    trials[key] = trials[key].model_copy(update={"parts": [*trials[key].parts, part]})
                continue
            label = _label(algorithm, point)
            trials[key] = PlannedTrial(name=trial_name(trial), label=f"{part}: {label}" if part else label,
                                       trial=trial, parts=[part] if part else [])
    planned = list(trials.values())
    return ExperimentPlan(
        name=name or (f"{spec.name}-demo" if demo else spec.name), kind=spec.kind, spec=spec_file or spec.name,
        profile=profile, scale=scale, seeds=list(range(seeds)), steps=planned[0].trial.profile.steps,
        scheduler=scheduler, grace_validations=grace_validations, max_concurrent=max_concurrent,
        max_failures=max_failures, slots_per_trial=1 if rehearse else max(t.nodes for t in planned),
        rehearse=rehearse, trials=planned)
