"""``gradient``: per-group keep counts learnt by gradient descent through differentiable soft channel masks.

Channels of each group are ordered by application importance, cut into granule blocks, and multiplied by a soft
mask ``sigmoid((k_g/granule - block - 1/2) / T)`` that keeps "the first k_g channels", k_g = (1 - c_g)·dense width,
c_g driven by a learnable logit between the group's bounds. Adam on the logits alone (weights frozen, model in eval
mode) minimises the task's differentiable loss (divided by its first value) plus a penalty, while T anneals
geometrically to a hard cut; the end is a hard 0/1 mask at the granule, which becomes the plan. No metric evaluation
is spent. The penalty follows the target:

- a :class:`SparsityTarget` holds the sparsity inside rho ± epsilon/2 (the hard cut nudged back inside
  rho ± epsilon, whole granules at a time, if rounding left it);
- a :class:`LatencyTarget` holds the cost model's *differentiable* prediction
  (:meth:`edgeprune.measure.cost.CostModel.torch_ms`) inside target · (1 ± tolerance/2), so the coefficients trade
  the task's loss against measured per-group cost directly; the hard cut is then shrunk, a granule at a time where
  the prediction saves most, until the staircase prediction is at most target · (1 + tolerance). The search starts
  where a uniform cut would if latency followed channels: at 1 - target / dense prediction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from edgeprune.core.modes import evaluating
from edgeprune.measure.cost import CostModel, plan_counts
from edgeprune.planners.base import (
    LatencyTarget,
    PlannerError,
    Proposal,
    SparsityTarget,
    StepContext,
    StepTarget,
    check_target,
    register,
)
from edgeprune.planners.space import Search, SearchSpace, SpaceGroup
from edgeprune.prune.masks import channel_masks, frozen
from edgeprune.prune.plan import keep_count


@dataclass(frozen=True)
class GradientSettings:
    """The relaxation and its schedule.

    ``tau_*`` is the temperature as a fraction of the group's width (0.1 of 128 channels: the soft cut spans
    about ±25 channels; 0.002: a quarter channel, nearly hard), annealed geometrically over ``steps``.
    ``penalty`` weighs ((|s - rho| - epsilon/2)_+ / epsilon)^2 against the task loss divided by its value at
    the first step, so one weight serves tasks whose losses differ by orders of magnitude.
    """

    steps: int = 200
    lr: float = 0.05
    tau_start: float = 0.1
    tau_end: float = 0.002
    penalty: float = 10.0


@dataclass(frozen=True)
class _Latency:
    """A latency target on a cost model, from the keep counts of the plan the search starts at."""

    cost: CostModel
    ms: float
    tolerance: float
    base: Mapping[str, int]


@register
class GradientPlanner:
    name: ClassVar[str] = "gradient"
    summary: ClassVar[str] = "soft masks against the cost model's differentiable latency"
    aims: ClassVar[type] = LatencyTarget
    accepts: ClassVar[tuple[type, ...]] = (SparsityTarget, LatencyTarget)

    def __init__(self, gradient: GradientSettings = GradientSettings()) -> None:  # frozen: immutable
        if gradient.steps < 2:
            raise PlannerError("gradient steps must be at least 2")
        self.settings = gradient

    def propose(self, context: StepContext, target: StepTarget) -> Proposal:
        check_target(self, target)
        task = context.task
        if task.loss is None or task.batches is None:
            raise PlannerError(f"strategy 'gradient' needs the task's differentiable loss(model, batch) and "
                               f"batches(seed); task {task.name!r} has none: use 'grid' or 'magnitude'")
        latency = None
        if isinstance(target, LatencyTarget):
            if context.cost is None:
                raise PlannerError("a latency target needs the target's cost model in the step's context")
            latency = _Latency(context.cost, target.ms, target.tolerance, plan_counts(context.plan))
            rho = min(max(1.0 - target.ms / context.cost.predict_ms({}), 0.0), context.max_ratio)
            epsilon = target.tolerance
        else:
            rho, epsilon = target.rho, target.epsilon
        space = SearchSpace(context)
        stream = context.batches()
        assert stream is not None
        space.rank(stream)
        if isinstance(target, SparsityTarget):
            space.check_reachable(target)
        return space.propose(self.name, target, _gradient(space, task.loss, stream, rho, epsilon, self.settings,
                                                          latency))


def _soft_masks(free: Sequence[SpaceGroup], kept: torch.Tensor, blocks: Sequence[torch.Tensor], granule: int,
                tau: float | None) -> dict[str, torch.Tensor]:
    """Per group, the mask over its current positions, one value per granule block of the importance order.

    Soft: block b of a group keeping k channels gets ``sigmoid((k/granule - b - 1/2) / T)``, T = tau · blocks
    in the group, so as T -> 0 it keeps exactly the blocks that rounding k to the granule keeps (the cut the
    plan will make): the relaxation anneals to the hard cut instead of to a channel count the granule then
    moves. Hard (``tau`` None): ``block < k/granule``, exactly 0/1.
    """
    masks = {}
    for i, g in enumerate(free):
        if tau is None:
            masks[g.key] = (blocks[i] < kept[i] / granule).to(torch.float32)
        else:
            masks[g.key] = torch.sigmoid((kept[i] / granule - blocks[i] - 0.5) / (tau * g.current / granule))
    return masks


def _repair(space: SearchSpace, keeps: dict[str, int], target: Mapping[str, float], rho: float,
            epsilon: float) -> tuple[dict[str, int], list[str]]:
    """Move whole granules until the exact sparsity is inside rho ± epsilon: grow the group the rounding cut
    most below its continuous keep count (too sparse), or shrink the one it left most above (too dense)."""
    keeps = dict(keeps)
    steps = {g.key: g.keep_steps(space.granule) for g in space.free}
    for moves in range(4 * len(space.free) + 16):
        s = space.sparsity(keeps)
        if abs(s - rho) <= epsilon + 1e-9:
            return keeps, [f"granule rounding left the sparsity outside the band: moved {moves} granule(s)"] if moves else []
        grow = s > rho
        options = []
        for g in space.free:
            i = steps[g.key].index(keeps[g.key])
            j = i + 1 if grow else i - 1
            if 0 <= j < len(steps[g.key]):
                gap = target[g.key] - keeps[g.key]
                options.append((gap if grow else -gap, g.key, steps[g.key][j]))
        if not options:
            break
        _, key, value = max(options)
        keeps[key] = value
    raise PlannerError(f"cannot bring sparsity inside {rho:g} ± {epsilon:g} at granule {space.granule} "
                           f"(reached {space.sparsity(keeps):.4f}); widen epsilon")


def _fit_latency(space: SearchSpace, keeps: dict[str, int], latency: _Latency) -> tuple[dict[str, int], float, list[str]]:
    """Shrink the hard cut, one granule where the staircase prediction saves most, until it predicts at most
    budget · (1 + epsilon); returns the keep counts, their prediction and what was moved."""
    cost, budget_ms, epsilon, base = latency.cost, latency.ms, latency.tolerance, latency.base
    keeps = dict(keeps)
    steps = {g.key: g.keep_steps(space.granule) for g in space.free}
    predicted = cost.predict_ms({**base, **keeps})
    moves = 0
    while predicted > budget_ms * (1 + epsilon):
        options = []
        for g in space.free:
            i = steps[g.key].index(keeps[g.key])
            if i > 0:
                options.append((cost.predict_ms({**base, **keeps, g.key: steps[g.key][i - 1]}), g.key, steps[g.key][i - 1]))
        best = min(options, default=None)
        if best is None or best[0] >= predicted:
            return keeps, predicted, [(f"the cost model predicts {predicted:.4g} ms > {budget_ms:.4g} ms at the "
                                       f"groups' bounds; planned there for a measurement to decide")]
        predicted, key, keep = best
        keeps[key] = keep
        moves += 1
    return keeps, predicted, [f"granule rounding left the prediction above the budget: cut {moves} more granule(s)"] \
        if moves else []


def _gradient(space: SearchSpace, loss_fn: object, stream: Iterator[object], rho: float, epsilon: float,
              settings: GradientSettings, latency: _Latency | None = None) -> Search:
    """Optimise per-group keep counts through soft masks on the space's graph; return the hard, granule-rounded cut.
    With ``latency``, the penalty holds the predicted latency, not the sparsity (rho then only sets the start)."""
    graph = space.graph
    free, model = space.free, graph.model
    lo = torch.tensor([float(g.fewest) for g in free])
    hi = torch.tensor([float(g.current) for g in free])
    dense = torch.tensor([float(g.dense) for g in free])
    granule = space.granule
    blocks = [torch.div(torch.argsort(g.order), granule, rounding_mode="floor").to(torch.float32) for g in free]
    fixed = float(sum(g.dense - g.current for g in space.groups if not g.free))
    start = ((1 - rho) * dense).clamp(lo, hi)
    logits = torch.logit(((start - lo) / (hi - lo)).clamp(0.02, 0.98)).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=settings.lr)

    def kept_counts() -> torch.Tensor:
        return lo + (hi - lo) * torch.sigmoid(logits)

    def sparsity_of(kept: torch.Tensor) -> torch.Tensor:
        return (fixed + (dense - kept).sum()) / space.total

    masks: dict[str, torch.Tensor] = {g.key: torch.ones(g.current) for g in free}
    objective: list[float] = []
    sparsities: list[float] = []
    predictions: list[float] = []
    scale = 1.0
    with evaluating(model), frozen(model), channel_masks(graph, masks), torch.enable_grad():
        for step in range(settings.steps):
            tau = settings.tau_start * (settings.tau_end / settings.tau_start) ** (step / (settings.steps - 1))
            kept = kept_counts()
            masks.update(_soft_masks(free, kept, blocks, granule, tau))
            loss = loss_fn(model, next(stream))  # type: ignore[operator]
            if step == 0:
                scale = max(abs(float(loss.detach())), 1e-12)
            s = sparsity_of(kept)
            if latency is None:
                penalty = torch.relu((s - rho).abs() - epsilon / 2) / epsilon
            else:
                ms = latency.cost.torch_ms({**latency.base, **{g.key: k for g, k in zip(free, kept, strict=True)}})
                penalty = torch.relu((ms / latency.ms - 1).abs() - epsilon / 2) / epsilon
                predictions.append(float(ms.detach()))
            total = loss / scale + settings.penalty * penalty**2
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
            objective.append(float(total.detach()))
            sparsities.append(float(s.detach()))
        with torch.no_grad():
            kept = kept_counts()
        continuous = {g.key: float(k) for g, k in zip(free, kept, strict=True)}
        rounded = {g.key: max(g.fewest, min(g.current, keep_count(g.dense, 1 - continuous[g.key] / g.dense,
                                                                   granule))) for g in free}
        if latency is None:
            keeps, notes = _repair(space, rounded, continuous, rho, epsilon)
        else:
            keeps, predicted, notes = _fit_latency(space, rounded, latency)
        hard = torch.tensor([float(keeps[g.key]) for g in free])
        masks.update(_soft_masks(free, hard, blocks, granule, None))
        binary = all(bool(((m == 0) | (m == 1)).all()) for m in masks.values())
        with torch.no_grad():
            hard_objective = float(loss_fn(model, next(stream))) / scale  # type: ignore[operator]
    if not binary:
        raise AssertionError("final masks are not exactly 0/1")
    search = Search(keeps, {g.key: 1 - continuous[g.key] / g.dense for g in free}, objective=tuple(objective),
                    sparsity_trace=tuple(sparsities), masks_binary=binary, hard_objective=hard_objective, notes=notes)
    if latency is not None:
        search.predicted_ms = predicted
        search.within_tolerance = predicted <= latency.ms * (1 + latency.tolerance) + 1e-12
        search.latency_trace = tuple(predictions)
    return search
