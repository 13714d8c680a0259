"""Which trial starts when: the start order of an experiment and a preview of its schedule on N nodes.

The policy (docs/orchestration.md#schedule), the same in the Tune experiment and in the preview:

1. **Start order: widest first, then longest first.** Trials that span more nodes come first, and among equally
   wide ones the longest (estimated wall time, :func:`orchestrator.scales.estimate_cost`); ties keep the plan's
   order. Tune starts trials in the order of its ``param_space`` grid, which is this order.
2. **In order, no overtaking.** A trial is handed to Tune only when the cluster has a free ``verl_slot`` for each
   of its nodes (:class:`orchestrator.tune_runner.SlotAdmission`); while the next trial does not fit, the ones
   behind it wait too. So a 2-node trial is never starved by 1-node trials that keep taking single freed nodes:
   it waits at most until enough of the trials ahead of it end. Widest-first makes that wait rare (wide trials
   start while the cluster is still empty) and longest-first (LPT) keeps the tail short.

:func:`simulate` is that policy as a pure-Python list scheduler, for ``--dry-run --nodes N`` and for tests; the
benchmark ``benchmarks/cluster_sim.py`` checks it against the real orchestrator on a 30-node Ray cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from orchestrator.config.plan import ExperimentPlan, PlannedTrial


def estimated_hours(planned: PlannedTrial) -> float | None:
    """Estimated wall hours of a trial (a100 profile: the derived cost); None where there is no estimate."""
    from orchestrator.scales import A100Profile, estimate_cost

    profile = planned.trial.profile
    return estimate_cost(profile).wall_hours if isinstance(profile, A100Profile) else None


def start_order(plan: ExperimentPlan) -> list[PlannedTrial]:
    """The plan's trials in the order they start: widest first, then longest first, then the plan's order."""
    keyed = [(-t.nodes, -(estimated_hours(t) or 0.0), i, t) for i, t in enumerate(plan.trials)]
    return [t for *_, t in sorted(keyed, key=lambda k: k[:3])]


@dataclass(frozen=True)
class Job:
    """A trial as the scheduler sees it: a name, the nodes it spans and how long it runs (any time unit)."""

    name: str
    nodes: int
    hours: float


@dataclass(frozen=True)
class Placement:
    job: Job
    start: float
    end: float


@dataclass(frozen=True)
class Schedule:
    nodes: int
    placements: list[Placement]

    @property
    def makespan(self) -> float:
        return max((p.end for p in self.placements), default=0.0)

    @property
    def node_hours(self) -> float:
        return sum(p.job.nodes * p.job.hours for p in self.placements)

    @property
    def lower_bound(self) -> float:
        return lower_bound([p.job for p in self.placements], self.nodes)

    @property
    def pigeonhole_bound(self) -> float:
        return pigeonhole_bound([p.job for p in self.placements], self.nodes)

    @property
    def utilization(self) -> float:
        """Mean share of the nodes busy from the first start to the last end."""
        return self.node_hours / (self.nodes * self.makespan) if self.makespan else 0.0

    @property
    def longest_wait(self) -> float:
        return max((p.start for p in self.placements), default=0.0)

    def busy_nodes(self, time: float) -> int:
        return sum(p.job.nodes for p in self.placements if p.start <= time < p.end)


def lower_bound(jobs: Sequence[Job], nodes: int) -> float:
    """No schedule on ``nodes`` nodes ends sooner: the larger of the node-hours spread evenly and the longest job."""
    if not jobs:
        return 0.0
    return max(sum(j.nodes * j.hours for j in jobs) / nodes, max(j.hours for j in jobs))


def pigeonhole_bound(jobs: Sequence[Job], nodes: int) -> float:
    """A tighter bound when jobs are few and long: among the k*N+1 longest node-jobs (a job of n nodes counts n
    times, once per node it holds) some node runs k+1, one after another, so no schedule ends before k+1 times the
    (k*N+1)-th longest. With :func:`lower_bound`, what no schedule on ``nodes`` nodes can beat."""
    items = sorted((j.hours for j in jobs for _ in range(j.nodes)), reverse=True)
    best = 0.0
    for k in range(1, len(items) // nodes + 1):
        if len(items) > k * nodes:
            best = max(best, (k + 1) * items[k * nodes])
    return max(best, lower_bound(jobs, nodes))


def simulate(jobs: Sequence[Job], nodes: int, max_concurrent: int | None = None) -> Schedule:
    """Start ``jobs`` in the given order on ``nodes`` nodes, each as soon as it fits, never overtaking.

    At time 0 and whenever a job ends, the jobs at the head of the queue start while there are free nodes for
    them (and fewer than ``max_concurrent`` run); the first one that does not fit waits, and so does everything
    behind it. All jobs are queued at time 0, so a job's start is also how long it waited.
    """
    too_wide = [j for j in jobs if j.nodes > nodes]
    if too_wide:
        raise ValueError(f"{too_wide[0].name} needs {too_wide[0].nodes} nodes; the cluster has {nodes}")
    queue = list(jobs)
    running: list[Placement] = []
    done: list[Placement] = []
    now, free = 0.0, nodes
    while queue or running:
        while queue and queue[0].nodes <= free and (max_concurrent is None or len(running) < max_concurrent):
            job = queue.pop(0)
            running.append(Placement(job, now, now + job.hours))
            free -= job.nodes
        if not running:  # nothing runs and the head does not fit: impossible after the width check
            raise RuntimeError("the schedule is stuck")
        now = min(p.end for p in running)
        for p in [p for p in running if p.end <= now]:
            running.remove(p)
            done.append(p)
            free += p.job.nodes
    return Schedule(nodes, done)


def simulate_greedy(jobs: Sequence[Job], nodes: int) -> Schedule:
    """The alternative this module does NOT use: any queued job that fits starts (backfill without reservation).

    What Ray's placement-group queue does when every trial's request is pending at once: a freed node goes to
    whichever waiting request fits, so single-node trials can keep a wide one waiting. For comparison only.
    """
    queue = list(jobs)
    running: list[Placement] = []
    done: list[Placement] = []
    now, free = 0.0, nodes
    while queue or running:
        for job in list(queue):
            if job.nodes <= free:
                queue.remove(job)
                running.append(Placement(job, now, now + job.hours))
                free -= job.nodes
        now = min(p.end for p in running)
        for p in [p for p in running if p.end <= now]:
            running.remove(p)
            done.append(p)
            free += p.job.nodes
    return Schedule(nodes, done)


def plan_jobs(plan: ExperimentPlan) -> list[Job]:
    """The plan's trials in start order, with their estimated wall hours (a100 profile only)."""
    jobs = []
    for t in start_order(plan):
        hours = estimated_hours(t)
        if hours is None:
            raise ValueError("a schedule preview needs the a100 profile's cost estimates (use --profile a100)")
        jobs.append(Job(t.name, t.nodes, hours))
    return jobs
