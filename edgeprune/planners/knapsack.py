"""``knapsack``: per-group keep counts that lose the least importance per millisecond the target saves.

Where the sparsity planners aim at a share of channels, this aims at a latency: the cost model
(:mod:`edgeprune.measure.cost`), measured on the target, prices every granule block of channels, so time is taken
where the target spends it rather than where FLOPs are. A greedy knapsack over granule blocks: each round prices
the next block of every group (its channels' application importance, in the task loss's units across groups; a
magnitude over its cluster's mean, see :meth:`SearchSpace.cluster_means`) against the latency the cost model says
removing it saves, and removes the cheapest; a block that saves nothing is never taken. Once the target holds, the
removed blocks that fit back under it go back, most importance per millisecond first. The context's component
shares cap a component's predicted time at a share of the target (an encoder that may take at most 30 % of it):
while one is over, only groups touching it are cut.
"""

from __future__ import annotations

from typing import ClassVar

from edgeprune.measure.cost import plan_counts
from edgeprune.planners.base import (
    LatencyTarget,
    PlannerError,
    Proposal,
    StepContext,
    StepTarget,
    check_target,
    register,
)
from edgeprune.planners.space import Search, SearchSpace, SpaceGroup, steps_down


@register
class KnapsackPlanner:
    name: ClassVar[str] = "knapsack"
    summary: ClassVar[str] = "least importance lost per measured millisecond saved"
    aims: ClassVar[type] = LatencyTarget
    accepts: ClassVar[tuple[type, ...]] = (LatencyTarget,)

    def propose(self, context: StepContext, target: StepTarget) -> Proposal:
        """Raises :class:`PlannerError` when the bounds leave the target out of reach, naming the best prediction —
        or, for a best-effort target, proposes every cut that saves predicted time (each group at its bound or where
        its staircase is flat) with that in its notes: a prediction alone
        should not end a run that a measurement might still carry (the tune loop measures it)."""
        check_target(self, target)
        assert isinstance(target, LatencyTarget)
        if context.cost is None:
            raise PlannerError("the knapsack needs the target's cost model in the step's context")
        space = SearchSpace(context)
        space.rank(context.batches())
        return space.propose(self.name, target, fill(context, space, target))


def fill(context: StepContext, space: SearchSpace, target: LatencyTarget) -> Search:
    """Remove the block that loses least importance per predicted millisecond saved until the target holds; then
    give back the removed blocks that fit in what the last removal overshot (a greedy knapsack's classic repair: one
    block of a full-resolution layer can save several times what was still missing)."""
    cost, budget_ms, shares = context.cost, target.ms, context.component_shares
    assert cost is not None
    free = space.free
    means = space.cluster_means()
    steps = steps_down(free, space.granule)
    position = {g.key: 0 for g in free}
    counts = plan_counts(context.plan)
    predicted = cost.predict_ms(counts)
    trace = [predicted]
    notes: list[str] = []

    def loss(g: SpaceGroup, lo: int, hi: int) -> float:
        """The importance channels ``lo:hi`` of group ``g`` carry, comparable across groups."""
        return float(g.scores[lo:hi].sum()) / means[g.cluster]

    def over(counts: dict[str, int], predicted: float) -> str | None:
        """The component furthest over its share, or '' for the whole budget, or None when everything holds."""
        times = cost.component_ms(counts)
        worst = max(((times.get(c, 0.0) / (share * budget_ms), c) for c, share in shares.items()), default=(0.0, ""))
        if worst[0] > 1.0 + 1e-9:
            return worst[1]
        return "" if predicted > budget_ms else None

    while (aim := over(counts, predicted)) is not None:
        best: tuple[float, str, int] | None = None
        before = cost.component_ms(counts).get(aim, 0.0) if aim else predicted  # only read for a component
        for g in free:
            i = position[g.key]
            if i + 1 >= len(steps[g.key]) or (aim and aim not in space.graph.groups[g.key].components):
                continue
            hi, lo = steps[g.key][i], steps[g.key][i + 1]
            if aim:
                saved = before - cost.component_ms({**counts, g.key: lo}).get(aim, 0.0)
            else:
                saved = cost.saving_ms(counts, g.key, lo)
            if saved <= 1e-12:
                continue
            lost = loss(g, lo, hi)
            if best is None or lost / saved < best[0]:
                best = (lost / saved, g.key, lo)
        if best is None:
            what = f"component {aim!r} over {shares[aim]:.0%} of the budget" if aim else "the budget"
            message = (f"latency budget {budget_ms:.4g} ms is out of reach for {what}: the cost model predicts "
                       f"{predicted:.4g} ms with every group at its bound or where a further cut saves no predicted "
                       f"time (flow policy {context.flow_policy}, caps, max_group_ratio {context.max_ratio:g}, "
                       f"granule {context.granule})")
            if not target.best_effort:
                raise PlannerError(message)
            notes.append(message + "; planned as far as a cut saves predicted time, for a measurement to decide")
            break
        _, key, lo = best
        position[key] += 1
        counts[key] = lo
        predicted = cost.predict_ms(counts)
        trace.append(predicted)

    def give_back() -> tuple[str, int] | None:
        """Of each group's last removed block, the one that fits back with every limit holding and regains most
        importance per predicted millisecond: (its group, the group's keep count with it)."""
        best: tuple[float, str, int] | None = None
        for g in free:
            i = position[g.key]
            if i == 0:
                continue
            lo, hi = steps[g.key][i], steps[g.key][i - 1]
            back = {**counts, g.key: hi}
            ms = cost.saving_ms(back, g.key, lo)
            if over(back, predicted + ms) is None:
                value = loss(g, lo, hi) / max(ms, 1e-12)
                if best is None or value > best[0]:
                    best = (value, g.key, hi)
        return None if best is None else best[1:]

    while not notes and (back := give_back()):  # notes: the removals stopped at the bounds, short of the target
        key, counts[key] = back
        position[key] -= 1
        predicted = cost.predict_ms(counts)
        trace.append(predicted)
    keeps = {g.key: counts[g.key] for g in free if counts.get(g.key, g.current) < g.current}
    return Search(keeps, {g.key: 1.0 - counts.get(g.key, g.current) / g.dense for g in free}, objective=tuple(trace),
                  predicted_ms=predicted, within_tolerance=True, notes=notes)
