"""The search space the planners share: the groups a step may cut, their bounds, their channels ranked by
importance, the sparsity of a set of keep counts, and how a search's keep counts become a :class:`Proposal`.

**Sparsity** is channel sparsity over the groups the flow policy lets edgeprune cut: removed dense channels over
dense channels of every group except protected flow groups (:func:`policy_sparsity`). It is
``Plan.channel_sparsity()`` restricted to those groups, and equal to it when no group is protected. Why channels,
not parameters: rho then means what the tune loop's ratio and ``prune_uniform`` mean (uniform magnitude at rho
lands at rho up to the granule), so planners are compared at the same rho; and why not the protected groups: they
are not the optimiser's to cut, and counting them would make a rho the user asks for unreachable (pendulum-agent:
uniform 0.7 is 0.66 of all channels). Parameter sparsity is nonlinear in the coefficients (a layer loses in and out
channels) and is reported by the bench instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from edgeprune.planners.base import PlannerError, Proposal, SparsityTarget, StepContext, StepTarget
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.importance import FlowPolicy, cuttable
from edgeprune.prune.plan import Plan, PlanError, keep_count

Clusters = Literal["component", "group"]


def policy_sparsity(plan: Plan, flow_policy: FlowPolicy = "protect") -> float:
    """Fraction of dense channels removed over the groups ``flow_policy`` lets edgeprune cut (all groups but
    protected flow groups): ``Plan.channel_sparsity`` restricted to them."""
    groups = [g for g in plan.groups.values() if cuttable(g.kind, flow_policy)]
    total = sum(g.width for g in groups)
    return 1.0 - sum(len(g.keep) for g in groups) / total if total else 0.0


@dataclass
class SpaceGroup:
    key: str
    dense: int
    current: int
    fewest: int
    cluster: str
    order: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    """Current channel positions, most important first."""
    scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    """Their importance, in that order."""

    @property
    def free(self) -> bool:
        return self.fewest < self.current

    def keep_at(self, ratio: float, granule: int) -> int:
        return max(self.fewest, min(self.current, keep_count(self.dense, ratio, granule)))

    def keep_steps(self, granule: int) -> list[int]:
        """Keep counts a cut may land on: granule multiples between the fewest and the current count."""
        first = math.ceil(self.fewest / granule) * granule
        return sorted({self.fewest, self.current, *range(first, self.current, granule)})


@dataclass
class Search:
    """What a planner's search decided, before it becomes a plan: keep counts of the groups it cuts, the
    coefficient it chose per group before the granule, and what it traced along the way."""

    keeps: dict[str, int]
    searched: dict[str, float]
    objective: tuple[float, ...] = ()
    sparsity_trace: tuple[float, ...] = ()
    latency_trace: tuple[float, ...] = ()
    evaluations: int = 0
    best_metric: float | None = None
    masks_binary: bool | None = None
    hard_objective: float | None = None
    predicted_ms: float | None = None
    within_tolerance: bool | None = None
    """None: judged by the sparsity target's band."""
    notes: list[str] = field(default_factory=list)


class SearchSpace:
    """The groups of a step a planner may cut (on a fork of the context's graph), their bounds, and — once
    :meth:`rank` ran — each group's channels ordered by the context's importance."""

    def __init__(self, context: StepContext, clusters: Clusters = "component") -> None:
        self.context, self.granule = context, context.granule
        self.graph: ComponentGraph = context.fork()
        self.start = time.perf_counter()
        self.groups: list[SpaceGroup] = []
        plan = context.plan
        for key, info in self.graph.groups.items():
            if not context.cuttable(info):
                continue
            if key not in plan.groups or len(plan.groups[key].keep) != info.width:
                raise PlanError(f"plan does not describe the model: group {key!r} has {info.width} channels, "
                                f"the plan keeps {len(plan.groups[key].keep) if key in plan.groups else 'none'}")
            cluster = key if clusters == "group" else (info.components[0] if info.kind == "intra" else f"flow:{key}")
            self.groups.append(SpaceGroup(key, plan.groups[key].width, info.width, context.fewest(key), cluster))
        self.total = sum(g.dense for g in self.groups)
        self.notes: list[str] = []

    @property
    def free(self) -> list[SpaceGroup]:
        return [g for g in self.groups if g.free]

    def rank(self, batches: Iterator[object] | None) -> None:
        """Order every free group's channels by the context's importance (``batches``: the step's stream, from
        which an application importance draws its loss batches)."""
        torch.manual_seed(self.context.seed)
        importance = self.context.importance
        scores = importance.scores(self.graph, [g.key for g in self.free], batches)
        for g in self.free:
            g.order = torch.argsort(scores[g.key], descending=True, stable=True)
            g.scores = scores[g.key][g.order]
        self.notes.extend(importance.notes)

    def sparsity(self, keeps: Mapping[str, int]) -> float:
        removed = sum(g.dense - keeps.get(g.key, g.current) for g in self.groups)
        return removed / self.total if self.total else 0.0

    def bounds(self) -> tuple[float, float]:
        return (self.sparsity({}), self.sparsity({g.key: g.fewest for g in self.groups}))

    def check_reachable(self, target: SparsityTarget) -> None:
        low, high = self.bounds()
        rho, epsilon = target.rho, target.epsilon
        if rho + epsilon < low - 1e-9 or rho - epsilon > high + 1e-9:
            c = self.context
            raise PlannerError(f"sparsity band {rho - epsilon:.3f}..{rho + epsilon:.3f} is unreachable: this model "
                               f"and plan allow {low:.3f}..{high:.3f} (flow policy {c.flow_policy}, caps, "
                               f"max_group_ratio {c.max_ratio:g}, granule {c.granule})")

    def cut(self, graph: ComponentGraph, plan: Plan, keeps: Mapping[str, int]) -> Plan:
        """Prune ``graph.model`` in place to ``keeps`` (each group's most important channels) and narrow ``plan``."""
        for g in self.groups:
            k = keeps.get(g.key, g.current)
            if k >= g.current:
                continue
            positions = sorted(g.order[:k].tolist())
            kept = set(positions)
            graph.prune(g.key, [i for i in range(g.current) if i not in kept])
            plan = plan.narrow(g.key, positions)
        return plan

    def cluster_means(self) -> dict[str, float]:
        """Each cluster's mean channel score: what global rankings divide by, so no component is starved by scores
        in units of their own (magnitudes). Scores already comparable across groups (the application importance's,
        in the task loss's units) are divided by 1: dividing them by their cluster's mean would cancel what the
        loss says one group is worth against another — wholly so where a cluster is one group (a flow group, a
        component of one group), leaving the ranking to milliseconds alone."""
        free = self.free
        if self.context.importance.comparable:
            return {g.cluster: 1.0 for g in free}
        means: dict[str, float] = {}
        for cluster in {g.cluster for g in free}:
            mean = float(torch.cat([g.scores for g in free if g.cluster == cluster]).mean())
            means[cluster] = mean if mean > 0 else 1.0
        return means

    def propose(self, planner: str, target: StepTarget, search: Search) -> Proposal:
        """Cut this space's graph to ``search.keeps``: the proposal, checked against the search's own arithmetic."""
        plan = self.cut(self.graph, self.context.plan, search.keeps)
        sparsity = policy_sparsity(plan, self.context.flow_policy)
        if abs(sparsity - self.sparsity(search.keeps)) > 1e-9:  # the plan is the truth; the search must agree
            raise PlanError(f"the plan's groups do not match this model's graph (made with other components or "
                            f"output layers?): plan sparsity {sparsity:.4f}, searched {self.sparsity(search.keeps):.4f}")
        within = search.within_tolerance
        if within is None:
            within = isinstance(target, SparsityTarget) and abs(sparsity - target.rho) <= target.epsilon + 1e-9
        return Proposal(
            planner=planner, target=target, model=self.graph.model, graph=self.graph, plan=plan, sparsity=sparsity,
            within_tolerance=within, coefficients=coefficients(plan), searched=search.searched,
            importance=self.context.importance.description, search_s=time.perf_counter() - self.start,
            evaluations=search.evaluations, predicted_ms=search.predicted_ms,
            notes=tuple(self.notes + search.notes), objective=search.objective,
            sparsity_trace=search.sparsity_trace, latency_trace=search.latency_trace,
            masks_binary=search.masks_binary, hard_objective=search.hard_objective, best_metric=search.best_metric)


def coefficients(plan: Plan) -> dict[str, float]:
    """Per group, the realised coefficient: 1 - kept / dense width."""
    return {k: 1.0 - len(g.keep) / g.width for k, g in plan.groups.items()}


def steps_down(groups: Sequence[SpaceGroup], granule: int) -> dict[str, list[int]]:
    """Per group, its keep steps from the current count down to the fewest (what rankings walk along)."""
    return {g.key: g.keep_steps(granule)[::-1] for g in groups}
