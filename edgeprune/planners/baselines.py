"""Baselines under the latency schedule: how Torch-Pruning's users and HALP choose channels, aiming at the loop's
latency targets on the same measured cost model as ``knapsack``, so a bench through the same loop compares which
channels go and nothing else.

* ``tp-local``: the same ratio in every group, lowest L2 group magnitude first (Torch-Pruning's
  ``GroupMagnitudeImportance``, local pruning) — the smallest ratio whose plan the cost model predicts in time;
* ``tp-global``: one ranking of granule blocks over all groups by that magnitude (each group's scores normalised to
  their mean, Torch-Pruning's default for global pruning), removed least important first until the prediction is in
  time;
* ``tp-taylor``: the same with first-order Taylor importance (|weight × gradient| of the task's loss);
* ``halp``: a latency knapsack (HALP, Shen et al. 2022): least Taylor importance lost per predicted millisecond saved.

None of them sees components or the application importance: every group is one cluster of its own, and the flow
policy decides which interfaces they may cut (the bench runs them with ``joint``, as Torch-Pruning would).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edgeprune.measure.cost import CostModel, plan_counts
from edgeprune.planners.base import (
    LatencyTarget,
    PlannerError,
    Proposal,
    StepContext,
    StepTarget,
    check_target,
    register,
)
from edgeprune.planners.global_rank import removals
from edgeprune.planners.knapsack import fill
from edgeprune.planners.space import Search, SearchSpace
from edgeprune.prune.importance import GroupMagnitude, Importance, TaylorImportance

#: Bisection steps of ``tp-local``'s ratio (2^-20: far below one granule of any group).
BISECTIONS = 20


def group_space(context: StepContext, importance: Importance) -> tuple[SearchSpace, CostModel]:
    """The step's groups, each its own cluster, ranked by ``importance`` (on the step's batches)."""
    if context.cost is None:
        raise PlannerError("a latency baseline needs the target's cost model in the step's context")
    space = SearchSpace(dataclasses.replace(context, importance=importance), clusters="group")
    space.rank(context.batches())
    return space, context.cost


def taylor(context: StepContext) -> TaylorImportance:
    """Torch-Pruning's Taylor importance on the task's loss and the step's seed."""
    task = context.task
    if task.loss is None or task.batches is None:
        raise PlannerError(f"Taylor importance needs a loss and batches; task {task.name!r} has none")
    return TaylorImportance(task.name, task.loss, task.batches, seed=context.seed)


def _out_of_reach(context: StepContext, target: LatencyTarget, predicted: float, search: Search) -> Search:
    message = (f"latency target {target.ms:.4g} ms is out of reach: the cost model predicts {predicted:.4g} ms with "
               f"every group at its bound (flow policy {context.flow_policy}, max_group_ratio {context.max_ratio:g}, "
               f"granule {context.granule})")
    if not target.best_effort:
        raise PlannerError(message)
    search.notes.append(message + "; planned at the bounds for a measurement to decide")
    return search


def _search(space: SearchSpace, keeps: Mapping[str, int], predicted: float, trace: list[float]) -> Search:
    free = space.free
    return Search(dict(keeps), {g.key: 1.0 - keeps.get(g.key, g.current) / g.dense for g in free},
                  objective=tuple(trace), predicted_ms=predicted, within_tolerance=True)


def uniform_until(context: StepContext, space: SearchSpace, cost: CostModel, target: LatencyTarget) -> Search:
    """The smallest uniform ratio (of each group's dense width) whose keep counts the cost model predicts in time."""
    base = plan_counts(context.plan)

    def keeps(ratio: float) -> dict[str, int]:
        return {g.key: k for g in space.free if (k := g.keep_at(ratio, space.granule)) < g.current}

    def predict(ratio: float) -> float:
        return cost.predict_ms({**base, **keeps(ratio)})

    lo, hi = 0.0, 1.0  # keep_at clamps every group to its bounds: 1.0 is every group at its fewest
    trace = [predict(hi)]
    if trace[0] > target.ms:
        return _out_of_reach(context, target, trace[0], _search(space, keeps(hi), trace[0], trace))
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        trace.append(predict(mid))
        lo, hi = (lo, mid) if trace[-1] <= target.ms else (mid, hi)
    search = _search(space, keeps(hi), predict(hi), trace)
    search.searched = {g.key: hi for g in space.free}  # the one ratio, before the granule
    return search


def ranked_until(context: StepContext, space: SearchSpace, cost: CostModel, target: LatencyTarget) -> Search:
    """Blocks removed in global ranking order until the cost model predicts the plan in time."""
    counts = plan_counts(context.plan)
    keeps: dict[str, int] = {}
    predicted = cost.predict_ms(counts)
    trace = [predicted]
    for key, keep in removals(space):
        if predicted <= target.ms:
            break
        predicted -= cost.saving_ms(counts, key, keep)
        counts[key] = keeps[key] = keep
        trace.append(predicted)
    search = _search(space, keeps, predicted, trace)
    return search if predicted <= target.ms else _out_of_reach(context, target, predicted, search)


class _LatencyBaseline(abc.ABC):
    """A baseline is an importance and a search; the space, the cost model and the proposal are shared."""

    name: ClassVar[str]
    summary: ClassVar[str]
    aims: ClassVar[type] = LatencyTarget
    accepts: ClassVar[tuple[type, ...]] = (LatencyTarget,)

    @abc.abstractmethod
    def importance(self, context: StepContext) -> Importance: ...

    @abc.abstractmethod
    def search(self, context: StepContext, space: SearchSpace, cost: CostModel, target: LatencyTarget) -> Search: ...

    def propose(self, context: StepContext, target: StepTarget) -> Proposal:
        check_target(self, target)
        assert isinstance(target, LatencyTarget)
        space, cost = group_space(context, self.importance(context))
        return space.propose(self.name, target, self.search(context, space, cost, target))


@register
class TpLocalPlanner(_LatencyBaseline):
    name: ClassVar[str] = "tp-local"
    summary: ClassVar[str] = "baseline: the same ratio in every group by L2 magnitude, sized on the cost model"

    def importance(self, context: StepContext) -> Importance:
        return GroupMagnitude()

    def search(self, context: StepContext, space: SearchSpace, cost: CostModel, target: LatencyTarget) -> Search:
        return uniform_until(context, space, cost, target)


@register
class TpGlobalPlanner(_LatencyBaseline):
    name: ClassVar[str] = "tp-global"
    summary: ClassVar[str] = "baseline: one L2-magnitude ranking of blocks, removed until the cost model says in time"

    def importance(self, context: StepContext) -> Importance:
        return GroupMagnitude()

    def search(self, context: StepContext, space: SearchSpace, cost: CostModel, target: LatencyTarget) -> Search:
        return ranked_until(context, space, cost, target)


@register
class TpTaylorPlanner(TpGlobalPlanner):
    name: ClassVar[str] = "tp-taylor"
    summary: ClassVar[str] = "baseline: one first-order Taylor ranking of blocks, removed until in time"

    def importance(self, context: StepContext) -> Importance:
        return taylor(context)


@register
class HalpPlanner(_LatencyBaseline):
    name: ClassVar[str] = "halp"
    summary: ClassVar[str] = "baseline: least Taylor importance lost per predicted ms saved, no components (HALP)"

    def importance(self, context: StepContext) -> Importance:
        return taylor(context)

    def search(self, context: StepContext, space: SearchSpace, cost: CostModel, target: LatencyTarget) -> Search:
        return fill(dataclasses.replace(context, component_shares={}), space, target)
