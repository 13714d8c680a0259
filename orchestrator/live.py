"""One live Rich table of an experiment's trials (instead of Tune's log output).

It reads what the trial controllers write (``trials/<T>/status.json`` and ``metrics.jsonl``), so it needs no
Tune callback (Tune pickles callbacks into its experiment state) and shows a restored experiment the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.live import Live
from rich.table import Table

from orchestrator.store import ExperimentDir, summary

STYLE = {"PENDING": "dim", "RUNNING": "cyan", "RETRYING": "yellow", "DONE": "green", "FAILED": "red",
         "STOPPED": "yellow"}


class LiveTrials:
    def __init__(self, plan, exp_dir: Path, console):
        self.plan, self.experiment, self.console = plan, ExperimentDir(exp_dir), console
        self.rows = {t.name: {"label": t.label, "seed": t.trial.seed, "state": "PENDING", "metrics": {}, "start": None}
                     for t in plan.trials}
        self.started = time.monotonic()
        self._live: Live | None = None

    # the data side: the trials' own files (status.json, metrics.jsonl), so a restored experiment shows too
    def refresh(self) -> None:
        for name, row in self.rows.items():
            files = self.experiment.trial(name)
            status = files.status()
            state = {"running": "RUNNING", "succeeded": "DONE", "failed": "FAILED", "stopped": "STOPPED"}.get(
                status.get("state"), "PENDING")
            attempts = len(status.get("attempts", []))
            if state == "FAILED" and attempts <= self.plan.max_failures:
                state = "RETRYING"
            elif state == "STOPPED" and attempts and status["attempts"][-1].get("resume_drill") is not None:
                state = "RETRYING"  # a rehearsal's resume drill (orchestrator/rehearsal.py)
            row.update(state=state, metrics={**summary(files.records()), "attempt": attempts})

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.refresh()
            if self._live is not None:
                self._live.update(self.table())

    # the Rich side ----------------------------------------------------------------------------------------
    def _concurrency(self) -> str:
        if self.plan.max_concurrent is None:
            return "as many at a time as the free verl_slots allow"
        return f"at most {self.plan.max_concurrent} at a time"

    def table(self) -> Table:
        steps = self.plan.steps
        done = sum(r["state"] == "DONE" for r in self.rows.values())
        elapsed = time.monotonic() - self.started
        table = Table(title=f"{self.plan.name}: {done}/{len(self.rows)} trials done, {elapsed / 60:.1f} min "
                            f"({self.plan.profile} profile, {self._concurrency()})",
                      title_justify="left")
        for column, justify in (("trial", "left"), ("seed", "right"), ("status", "left"), ("step", "right"),
                                ("entropy", "right"), ("reward", "right"), ("Avg@k", "right"), ("Pass@k", "right"),
                                ("attempt", "right")):
            table.add_column(column, justify=justify)
        for row in self.rows.values():
            m = row["metrics"]
            k = m.get("k", "k")
            state = row["state"]
            table.add_row(
                row["label"], str(row["seed"]), f"[{STYLE.get(state, '')}]{state.lower()}[/]",
                f"{m.get('global_step', 0)}/{steps}" if m else "-",
                f"{m['entropy']:.3f}" if "entropy" in m else "-",
                f"{m['reward']:+.3f}" if "reward" in m else "-",
                f"{100 * m['val_avg']:.1f} (@{k})" if "val_avg" in m else "-",
                f"{100 * m['val_pass']:.1f}" if m.get("val_pass") is not None else "-",
                str(m.get("attempt", "-")),
            )
        return table

    def __enter__(self) -> LiveTrials:
        import threading

        self.refresh()
        self._live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
        self._live.__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.refresh()
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(*exc)
            self._live = None
