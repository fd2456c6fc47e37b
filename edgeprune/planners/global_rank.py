"""``global``: one ranking of granule-sized channel blocks over all groups, least important removed until rho.

Scores are the application importance, in the task loss's units across groups (each group's mean sensitivity),
so the loss decides which group and which component gives channels. Magnitudes alone (a task without a loss) are
in each layer's own weight scale: they are divided by their component's mean first (a flow group is its own
component here), so a component whose weights happen to be small is not wiped out by one whose weights are large
— and cannot hide behind it either (:meth:`SearchSpace.cluster_means`). Inside a group blocks go least important
first; a block's score is its channels' mean. The coefficients follow from where each group's importance falls in
the ranking; no metric evaluation is spent.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import ClassVar

from edgeprune.planners.base import (
    PlannerError,
    Proposal,
    SparsityTarget,
    StepContext,
    StepTarget,
    check_target,
    register,
)
from edgeprune.planners.space import Search, SearchSpace, SpaceGroup, steps_down


@register
class GlobalPlanner:
    name: ClassVar[str] = "global"
    summary: ClassVar[str] = "one ranking of channel blocks by application importance"
    aims: ClassVar[type] = SparsityTarget
    accepts: ClassVar[tuple[type, ...]] = (SparsityTarget,)

    def propose(self, context: StepContext, target: StepTarget) -> Proposal:
        check_target(self, target)
        assert isinstance(target, SparsityTarget)
        space = SearchSpace(context)
        space.rank(context.batches())
        space.check_reachable(target)
        return space.propose(self.name, target, rank_blocks(space, target))


def rank_blocks(space: SearchSpace, target: SparsityTarget) -> Search:
    """The keep counts that reach ``target`` by removing the globally least important blocks."""
    rho, epsilon = target.rho, target.epsilon
    keeps: dict[str, int] = {}
    previous = dict(keeps)
    for key, keep in removals(space):
        if space.sparsity(keeps) >= rho:
            break
        previous = dict(keeps)
        keeps[key] = keep
    if abs(space.sparsity(previous) - rho) < abs(space.sparsity(keeps) - rho):
        keeps = previous  # the last block overshot further than stopping short of it
    if abs(space.sparsity(keeps) - rho) > epsilon + 1e-9:
        raise PlannerError(f"global ranking reaches sparsity {space.sparsity(keeps):.4f}, outside {rho:g} ± "
                           f"{epsilon:g}: the granule's blocks are too coarse for this band")
    return Search(keeps, {g.key: 1.0 - keeps.get(g.key, g.current) / g.dense for g in space.free})


def removals(space: SearchSpace) -> Iterator[tuple[str, int]]:
    """The ranked space's granule blocks, globally least important first (a block's score: its channels' mean, over
    its cluster's mean where scores are not comparable across groups): per block, its group and the group's keep
    count once it goes."""
    free = space.free
    means = space.cluster_means()
    steps = steps_down(free, space.granule)
    position = {g.key: 0 for g in free}
    by_key = {g.key: g for g in free}

    def next_block(g: SpaceGroup) -> tuple[float, str] | None:
        i = position[g.key]
        if i + 1 >= len(steps[g.key]):
            return None
        hi, lo = steps[g.key][i], steps[g.key][i + 1]
        return float(g.scores[lo:hi].mean()) / means[g.cluster], g.key

    heap = [b for b in (next_block(g) for g in free) if b is not None]
    heapq.heapify(heap)
    while heap:
        _, key = heapq.heappop(heap)
        position[key] += 1
        yield key, steps[key][position[key]]
        block = next_block(by_key[key])
        if block is not None:
            heapq.heappush(heap, block)
