"""``grid``: one coefficient per cluster of groups (a component, or each group) from a small grid of levels around
rho, scored with the task's own metric.

Candidates whose exact post-granule sparsity is outside rho ± epsilon are dropped, at most ``max_evals`` of the
rest are pruned and scored with the task's true ``evaluate`` (one-shot, no fine-tune), and the best is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edgeprune.core.budgets import MetricBudget
from edgeprune.core.task import Task
from edgeprune.planners.base import (
    PlannerError,
    Proposal,
    SparsityTarget,
    StepContext,
    StepTarget,
    check_target,
    register,
)
from edgeprune.planners.space import Clusters, Search, SearchSpace

_ENUMERATE_LIMIT = 5_000_000
_SAMPLE = 500_000


@dataclass(frozen=True)
class GridSettings:
    """The grid: levels rho + offset for each cluster, at most ``max_evals`` true-metric evaluations.

    The product of levels over clusters grows fast (13 levels, 6 components: 4.8 M settings), and most of it is
    outside rho ± epsilon; the feasible settings are sampled (seeded) down to ``max_evals``, the uniform setting
    always among them. Pendulum-agent's evaluate takes ~6 s, so the default cap of 25 costs ~2.5 min per call.
    """

    offsets: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(-6, 7))
    """Levels are rho + offset, clipped to [0, 1] (rho itself always included); each group then stops at its cap."""
    max_evals: int = 25
    clusters: Clusters = "component"


@register
class GridPlanner:
    name: ClassVar[str] = "grid"
    summary: ClassVar[str] = "per-component ratios searched on the task's metric"
    aims: ClassVar[type] = SparsityTarget
    accepts: ClassVar[tuple[type, ...]] = (SparsityTarget,)

    def __init__(self, grid: GridSettings = GridSettings()) -> None:  # frozen dataclass: immutable
        if grid.max_evals < 1:
            raise PlannerError("grid max_evals must be at least 1")
        self.settings = grid

    def propose(self, context: StepContext, target: StepTarget) -> Proposal:
        check_target(self, target)
        assert isinstance(target, SparsityTarget)
        space = SearchSpace(context, self.settings.clusters)
        space.rank(context.batches())
        space.check_reachable(target)
        return space.propose(self.name, target, self.search(context, space, target))

    def search(self, context: StepContext, space: SearchSpace, target: SparsityTarget) -> Search:
        """Evaluate up to ``max_evals`` feasible grid settings with the true metric; the best one's keeps."""
        rho, epsilon, settings = target.rho, target.epsilon, self.settings
        granule, free = space.granule, space.free
        clusters = sorted({g.cluster for g in free})
        levels: list[list[float]] = []
        removed: list[np.ndarray] = []
        uniform_row = []
        for c in clusters:
            members = [g for g in free if g.cluster == c]
            seen: dict[tuple[int, ...], float] = {}
            for level in sorted({rho, *(min(max(rho + o, 0.0), 1.0) for o in settings.offsets)}):
                seen.setdefault(tuple(g.keep_at(level, granule) for g in members), level)  # levels that cut alike: one
            levels.append(list(seen.values()))
            removed.append(np.array([sum(g.dense - k for g, k in zip(members, ks, strict=True)) for ks in seen]))
            uniform_row.append(list(seen).index(tuple(g.keep_at(rho, granule) for g in members)))
        fixed = sum(g.dense - g.current for g in space.groups if not g.free)
        rng = np.random.default_rng(context.seed)
        sizes = [len(r) for r in removed]
        if math.prod(sizes) <= _ENUMERATE_LIMIT:
            total = np.zeros(())
            for r in removed:
                total = np.add.outer(total, r)
            feasible = np.argwhere(np.abs((fixed + total) / space.total - rho) <= epsilon + 1e-9)
        else:
            idx = np.stack([rng.integers(0, n, _SAMPLE) for n in sizes], axis=1)
            value = fixed + sum(r[idx[:, i]] for i, r in enumerate(removed))
            feasible = np.unique(idx[np.abs(value / space.total - rho) <= epsilon + 1e-9], axis=0)
        if len(feasible) == 0:
            raise PlannerError(f"no grid setting lands within {rho:g} ± {epsilon:g} after the granule ({granule}); "
                               f"widen epsilon, refine the grid offsets or use 'gradient'")
        is_uniform = (feasible == np.array(uniform_row)).all(axis=1)
        rest = feasible[~is_uniform]
        take = min(len(rest), settings.max_evals - int(is_uniform.any()))
        rows = (([uniform_row] if is_uniform.any() else [])
                + rest[np.sort(rng.choice(len(rest), take, replace=False))].tolist())
        candidates = [tuple(levels[i][j] for i, j in enumerate(row)) for row in rows]

        def keeps_of(setting: Sequence[float]) -> dict[str, int]:
            level = dict(zip(clusters, setting, strict=True))
            return {g.key: g.keep_at(level[g.cluster], granule) for g in free}

        task = context.task
        higher = _higher_is_better(task)
        metrics: list[float] = []
        sparsities: list[float] = []
        best: tuple[float, tuple[float, ...]] | None = None
        for setting in candidates:
            keeps = keeps_of(setting)
            trial = space.graph.fork()  # the space's graph stays uncut until the proposal
            space.cut(trial, context.plan, keeps)
            value = float(task.evaluate(trial.model.eval())[task.metric])
            metrics.append(value)
            sparsities.append(space.sparsity(keeps))
            if not math.isnan(value) and (best is None or (value > best[0] if higher else value < best[0])):
                best = (value, setting)
        if best is None:
            raise PlannerError(f"every grid setting gave a NaN {task.metric}")
        level = dict(zip(clusters, best[1], strict=True))
        note = (f"grid: {len(clusters)} clusters ({', '.join(clusters)}), {len(feasible)} feasible settings, "
                f"{len(candidates)} evaluated")
        return Search(keeps_of(best[1]), {g.key: level[g.cluster] for g in free}, objective=tuple(metrics),
                      sparsity_trace=tuple(sparsities), evaluations=len(candidates), best_metric=best[0], notes=[note])


def _higher_is_better(task: Task) -> bool:
    try:
        return MetricBudget.parse(task.default_metric_budget).op.startswith(">")
    except ValueError:
        return True
