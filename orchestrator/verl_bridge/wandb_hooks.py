"""W&B inside the verl job: the trial's identity, the step axis, the trial settings in the run config.

verl's ``Tracking.__init__`` calls ``wandb.init(project=trainer.project_name, name=trainer.experiment_name,
entity=$WANDB_ENTITY, config=<verl config>)`` and logs every step with ``wandb.log(metrics, step=global_steps)``.
The hook wraps ``Tracking.__init__``; when the wandb backend is on:

- ``WANDB_PROJECT`` and ``WANDB_NAME`` win over verl's explicit arguments (wandb prefers explicit arguments;
  the orchestrator sets both per trial, see ``orchestrator.tracking.wandb_env``);
- ``training/global_step`` becomes the x axis of verl's metric families (prefix globs, which do not overlap, as
  W&B's choice among overlapping globs is not documented), with the ``max`` and ``last`` summaries for
  ``val-core/*`` and ``val-aux/*``. Other keys keep W&B's ``_step``, which verl sets to the global step too.
  verl puts ``training/global_step`` in the training steps' records only; the hook adds it to every record it
  logs to W&B (the validation before training has none);
- ``MASPO_TRIAL_JSON`` (the resolved trial) goes into the run config as ``maspo``.

Without the wandb backend (or without ``MASPO_TRIAL_JSON``'s identity) nothing changes.

Offline fallback: the job env says ``WANDB_MODE=online`` when the driver has W&B credentials, but verl's W&B
logger runs in its TaskRunner, on whichever node that lands. If that process has no credentials (no
``WANDB_API_KEY``, no netrc entry for the W&B host: :func:`orchestrator.tracking.has_credentials`), or W&B's init
refuses the key or cannot be reached, the run logs offline into ``WANDB_DIR`` (the trial's directory) with a
warning on the job's log, instead of failing the trial; ``maspo sync`` uploads it later
(docs/orchestration.md#wandb-on-a-cluster).

Installed by the patch manifest (``orchestrator.verl_bridge.patches``, patch ``wandb_run_identity``, see
docs/patches.md#wandb_run_identity) when ``verl.utils.tracking`` is imported. While verl's ``Tracking.__init__``
runs, ``wandb.init`` itself is swapped for one that prefers ``WANDB_PROJECT``/``WANDB_NAME``, then restored.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys

from orchestrator.verl_bridge.patching import wrapper_factory

STEP_KEY = "training/global_step"
STEP_PREFIXES = ("actor/", "critic/", "response_length/", "response/", "prompt_length/", "timing_s/",
                 "timing_per_token_ms/", "perf/", "global_seqlen/", "num_turns/")
VALIDATION_PREFIXES = ("val-core/", "val-aux/")
TRIAL_JSON_ENV = "MASPO_TRIAL_JSON"  # = orchestrator.tracking.TRIAL_JSON_ENV (not imported: keep the job light)
_HOOKED = "_maspo_wandb_hooked"


class StepLogger:
    """verl's ``logger["wandb"]``: the wandb module, but every record carries the training step as a metric."""

    def __init__(self, wandb):
        self.wandb = wandb

    def log(self, data, step):
        self.wandb.log({**data, STEP_KEY: data.get(STEP_KEY, step)}, step=step)

    def finish(self, exit_code: int = 0):
        self.wandb.finish(exit_code=exit_code)

    def __getattr__(self, name):
        return getattr(self.wandb, name)


def define_metrics(wandb) -> None:
    """Every metric plots against the training step; validation keeps its best and its last value."""
    wandb.define_metric(STEP_KEY)
    for prefix in STEP_PREFIXES:
        wandb.define_metric(prefix + "*", step_metric=STEP_KEY)
    for prefix in VALIDATION_PREFIXES:
        wandb.define_metric(prefix + "*", step_metric=STEP_KEY, summary="max,last")


def trial_settings() -> dict | None:
    raw = os.environ.get(TRIAL_JSON_ENV)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"unparsed": raw}


def _identity_init(init):
    """``wandb.init`` with ``WANDB_PROJECT``/``WANDB_NAME`` in place of verl's explicit project and name."""

    @functools.wraps(init)
    def wrapped(*args, **kwargs):
        if os.environ.get("WANDB_PROJECT"):
            kwargs["project"] = os.environ["WANDB_PROJECT"]
        if os.environ.get("WANDB_NAME"):
            kwargs["name"] = os.environ["WANDB_NAME"]
        return init(*args, **kwargs)

    return wrapped


OFFLINE_HINT = "this run logs OFFLINE into {dir}; `maspo sync <experiment>` uploads it later"


def _warn(message: str) -> None:
    print(f"maspo: WARNING: {message}", file=sys.stderr, flush=True)


def offline_unless_credentials() -> str | None:
    """``WANDB_MODE`` online (or unset) in a process without W&B credentials: switch it to offline, warn.

    Returns the warning (None when nothing changed). Only presence is checked here (no network).
    """
    from orchestrator.tracking import has_credentials, wandb_host

    if os.environ.get("WANDB_MODE", "online").strip().lower() not in ("online", "run", ""):
        return None
    if has_credentials():
        return None
    os.environ["WANDB_MODE"] = "offline"
    message = (f"no W&B credentials on {socket.gethostname()} (no WANDB_API_KEY, no netrc entry for "
               f"{wandb_host()}): " + OFFLINE_HINT.format(dir=os.environ.get("WANDB_DIR", os.getcwd())))
    _warn(message)
    return message


def _offline_on_refusal(init):
    """``wandb.init`` that retries offline when W&B refuses the key or cannot be reached (a warning, no failure)."""

    @functools.wraps(init)
    def wrapped(*args, **kwargs):
        try:
            return init(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (narrowed below: only W&B's own errors fall back)
            import wandb

            if kwargs.get("mode") == "offline" or not isinstance(err, wandb.errors.Error):
                raise
            key = os.environ.get("WANDB_API_KEY", "").strip()
            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            if key:
                why = why.replace(key, "<redacted>")
            os.environ["WANDB_MODE"] = "offline"
            try:  # the failed online run still holds its id in wandb's service: end the service first
                wandb.teardown()
            except Exception:  # noqa: BLE001
                pass
            _warn(f"W&B's online init failed on {socket.gethostname()} ({why}): "
                  + OFFLINE_HINT.format(dir=os.environ.get("WANDB_DIR", os.getcwd())))
            return init(*args, **{**kwargs, "mode": "offline"})

    return wrapped


@wrapper_factory(_HOOKED)
def wrap_tracking_init(original):
    def hooked(self, project_name, experiment_name, default_backend="console", config=None):
        backends = [default_backend] if isinstance(default_backend, str) else list(default_backend or [])
        if "wandb" not in backends and "tracking" not in backends:
            return original(self, project_name, experiment_name, default_backend, config)
        import wandb

        offline_unless_credentials()
        settings = trial_settings()
        plain_init = wandb.init
        wandb.init = _offline_on_refusal(_identity_init(plain_init) if settings is not None else plain_init)
        try:
            original(self, project_name, experiment_name, default_backend, config)
        finally:
            wandb.init = plain_init
        if "wandb" in self.logger and wandb.run is not None:
            define_metrics(wandb)
            if settings is not None:
                wandb.config.update({"maspo": settings}, allow_val_change=True)
            self.logger["wandb"] = StepLogger(wandb)

    return hooked


def install() -> None:
    """Install this hook alone (the plugin installs it with all the others; see ``patches``)."""
    from orchestrator.verl_bridge import patches

    patches.install(patches.get("wandb_run_identity"))
