"""Soft coefficients: how much of each pruning group to remove, chosen against the application's own metric.

Every group g gets a coefficient c_g in [0, 1], the fraction of its dense channels removed. Uniform magnitude
pruning sets every c_g to the same ratio; here the coefficients are chosen for the task under a sparsity target
rho ± epsilon:

- ``magnitude``: every c_g = rho, lowest-magnitude channels go (:func:`edgeprune.prune.plan.prune_uniform`);
- ``global``: one ranking of granule-sized channel blocks across every group, each score divided by its
  component's mean, least important blocks removed until rho (no metric evaluation; the coefficients follow
  from where each group's importance falls in that ranking);
- ``grid``: one coefficient per cluster of groups (a component, or each group) from a small grid of levels
  around rho; candidates whose exact post-granule sparsity is outside rho ± epsilon are dropped, at most
  ``max_evals`` of the rest are pruned and scored with the task's true ``evaluate`` (one-shot, no fine-tune),
  the best is kept;
- ``gradient``: channels of each group are ordered by application importance, cut into granule blocks, and
  multiplied by a soft mask ``sigmoid((k_g/granule - block - 1/2) / T)`` that keeps "the first k_g channels",
  k_g = (1 - c_g)·dense width, c_g driven by a learnable logit between the group's bounds. Adam on the logits
  alone (weights frozen, model in eval mode) minimises the task's differentiable loss (divided by its first
  value) plus a penalty holding the sparsity inside rho ± epsilon/2, while T anneals geometrically to a hard
  cut. The end is a hard 0/1 mask at the granule (nudged back inside rho ± epsilon, whole granules at a time, if
  rounding left it), which becomes a Plan through ``ComponentGraph.prune``. No metric evaluation is spent.
  Given a cost model and a latency budget instead, the penalty holds the cost model's *differentiable* latency
  prediction (:meth:`edgeprune.measure.cost.CostModel.torch_ms`) inside budget · (1 ± epsilon/2), so the coefficients
  trade the task's loss against measured per-group cost directly; the hard cut is then shrunk, a granule at a
  time where the prediction saves most, until the staircase prediction is at most budget · (1 + epsilon).

Inside every group, global, grid and gradient remove the channels with the lowest *application importance*: magnitude
mixed with the measured sensitivity of the task's loss to each channel (:func:`edgeprune.prune.importance.
application_scores`); a task without a loss falls back to magnitude (global, grid) or is refused (gradient).

**Sparsity** is channel sparsity over the groups the flow policy lets edgeprune cut: removed dense channels over
dense channels of every group except protected flow groups (:func:`policy_sparsity`). It is
``Plan.channel_sparsity()`` restricted to those groups, and equal to it when no group is protected. Why channels,
not parameters: rho then means what the tune loop's ratio and ``prune_uniform`` mean (uniform magnitude at rho
lands at rho up to the granule), so the three strategies are compared at the same rho; and why not the
protected groups: they are not the optimiser's to cut, and counting them would make a rho the user asks for
unreachable (pendulum-agent: uniform 0.7 is 0.66 of all channels). Parameter sparsity is nonlinear in the
coefficients (a layer loses in and out channels) and is reported by the bench instead.
"""

from __future__ import annotations

import copy
import heapq
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from edgeprune.core.budgets import MetricBudget
from edgeprune.measure.cost import CostModel, plan_counts
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.importance import Combine, FlowPolicy, application_scores, mask_sensitivity
from edgeprune.prune.masks import channel_masks, frozen
from edgeprune.prune.plan import Plan, PlanError, keep_count, prune_uniform
from edgeprune.core.task import Task

Strategy = Literal["magnitude", "global", "grid", "gradient"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)


class CoefficientError(ValueError):
    """Soft coefficients cannot be chosen: bad settings, an unreachable sparsity band, a task without a loss."""


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
    clusters: Literal["component", "group"] = "component"


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
class ChoiceInfo:
    """What a :func:`choose` call decided and what it cost."""

    strategy: str
    rho: float
    epsilon: float
    sparsity: float
    """Channel sparsity of the new plan over the groups the flow policy lets edgeprune cut (exact, post-granule)."""
    within_tolerance: bool
    coefficients: dict[str, float]
    """Per group, the realised coefficient: 1 - kept / dense width."""
    searched: dict[str, float]
    """Per group, the coefficient the search chose before the granule (grid level, gradient c_g)."""
    importance: str
    objective: tuple[float, ...] = ()
    """Gradient: objective per step. Grid: the metric of each evaluated setting, in order."""
    sparsity_trace: tuple[float, ...] = ()
    search_s: float = 0.0
    evaluations: int = 0
    """Calls of the task's ``evaluate`` (the expensive true metric)."""
    masks_binary: bool | None = None
    """Gradient: every final mask is exactly 0 or 1."""
    hard_objective: float | None = None
    """Gradient: the normalised task loss with the final hard masks, on one fresh batch."""
    best_metric: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    predicted_ms: float | None = None
    """Latency planning (knapsack, gradient with a cost model): the cost model's prediction for the chosen plan."""
    latency_trace: tuple[float, ...] = ()
    """Gradient with a cost model: the differentiable latency prediction per step."""

    def summary(self) -> dict[str, object]:
        """The part a tune step records: what was reached and what the search cost."""
        return {"strategy": self.strategy, "rho": self.rho, "sparsity": round(self.sparsity, 4),
                "predicted_ms": self.predicted_ms,
                "within_tolerance": self.within_tolerance, "importance": self.importance,
                "search_s": round(self.search_s, 2), "evaluations": self.evaluations, "notes": list(self.notes)}


def policy_sparsity(plan: Plan, flow_policy: FlowPolicy = "protect") -> float:
    """Fraction of dense channels removed over the groups ``flow_policy`` lets edgeprune cut (all groups but
    protected flow groups): ``Plan.channel_sparsity`` restricted to them."""
    groups = [g for g in plan.groups.values() if not (g.kind == "flow" and flow_policy == "protect")]
    total = sum(g.width for g in groups)
    return 1.0 - sum(len(g.keep) for g in groups) / total if total else 0.0


@dataclass
class _Group:
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


class _Space:
    """The groups a call may cut, their bounds and the sparsity of a set of keep counts."""

    def __init__(self, graph: ComponentGraph, plan: Plan, flow_policy: FlowPolicy, caps: Mapping[str, float],
                 max_group_ratio: float, granule: int, clusters: str) -> None:
        self.granule = granule
        self.groups: list[_Group] = []
        for key, info in graph.groups.items():
            if info.kind == "flow" and flow_policy == "protect":
                continue
            if key not in plan.groups or len(plan.groups[key].keep) != info.width:
                raise PlanError(f"plan does not describe the model: group {key!r} has {info.width} channels, "
                                f"the plan keeps {len(plan.groups[key].keep) if key in plan.groups else 'none'}")
            dense = plan.groups[key].width
            hi = min([max_group_ratio, *(caps[c] for c in info.components if c in caps)])
            cluster = key if clusters == "group" else (info.components[0] if info.kind == "intra" else f"flow:{key}")
            self.groups.append(_Group(key, dense, info.width, min(info.width, keep_count(dense, hi, granule)), cluster))
        self.total = sum(g.dense for g in self.groups)

    @property
    def free(self) -> list[_Group]:
        return [g for g in self.groups if g.free]

    def sparsity(self, keeps: Mapping[str, int]) -> float:
        removed = sum(g.dense - keeps.get(g.key, g.current) for g in self.groups)
        return removed / self.total if self.total else 0.0

    def bounds(self) -> tuple[float, float]:
        return (self.sparsity({}), self.sparsity({g.key: g.fewest for g in self.groups}))

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


def _validate(strategy: str, rho: float, epsilon: float, max_group_ratio: float) -> None:
    if strategy not in STRATEGIES:
        raise CoefficientError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not 0.0 < rho < 1.0:
        raise CoefficientError(f"sparsity target rho must be in (0, 1), got {rho:g}")
    if not 0.0 < epsilon < 0.5:
        raise CoefficientError(f"sparsity tolerance epsilon must be in (0, 0.5), got {epsilon:g}")
    if not 0.0 < max_group_ratio < 1.0:
        raise CoefficientError(f"max_group_ratio must be in (0, 1), got {max_group_ratio:g}")


def _higher_is_better(task: Task) -> bool:
    try:
        return MetricBudget.parse(task.default_metric_budget).op.startswith(">")
    except ValueError:
        return True


def choose(
    strategy: Strategy,
    task: Task,
    model: nn.Module,
    plan: Plan,
    rho: float,
    *,
    inputs: tuple[torch.Tensor, ...],
    granule: int,
    flow_policy: FlowPolicy = "protect",
    flow_combine: Combine = "min",
    component_ratios: Mapping[str, float] | None = None,
    epsilon: float = 0.02,
    seed: int = 0,
    max_group_ratio: float = 0.9,
    importance_batches: int = 8,
    sensitivity_weight: float = 0.5,
    grid: GridSettings = GridSettings(),  # a frozen dataclass: immutable
    gradient: GradientSettings = GradientSettings(),  # a frozen dataclass: immutable
    cost: CostModel | None = None,
    budget_ms: float | None = None,
    **graph_args: object,
) -> tuple[nn.Module, Plan, ChoiceInfo]:
    """Prune a copy of ``model`` (described by ``plan``) to channel sparsity rho ± epsilon (dense-relative, see
    :func:`policy_sparsity`) with per-group coefficients chosen by ``strategy``; return it, the narrowed plan and
    what was decided.

    The contract is :func:`edgeprune.prune.plan.prune_uniform`'s: protected flow groups keep their width; a group
    never exceeds ``min(max_group_ratio, its components' caps)`` nor grows back; kept counts are multiples of
    ``granule`` (via ``keep_count``). ``magnitude`` *is* ``prune_uniform(ratio=rho)`` and reports its sparsity
    without enforcing the band; grid and gradient guarantee it or raise :class:`CoefficientError`.
    Deterministic for a ``seed`` (it seeds torch, the loss batches and the grid's sample).

    ``gradient`` with a ``cost`` model and ``budget_ms`` aims at a predicted latency of ``budget_ms`` ± epsilon
    (relative) instead of a sparsity; rho then only sets where the search starts.
    """
    _validate(strategy, rho, epsilon, max_group_ratio)
    latency = None
    if cost is not None or budget_ms is not None:
        if strategy != "gradient" or cost is None or budget_ms is None or budget_ms <= 0:
            raise CoefficientError("a latency target needs strategy 'gradient', a cost model and a positive budget")
        latency = (cost, budget_ms, plan_counts(plan))
    start = time.perf_counter()
    caps = dict(component_ratios or {})
    if strategy == "magnitude":
        pruned, new_plan = prune_uniform(model, plan, rho, inputs, granule, flow_policy, caps, flow_combine, **graph_args)
        coeffs = {k: 1.0 - len(g.keep) / g.width for k, g in new_plan.groups.items()}
        sparsity = policy_sparsity(new_plan, flow_policy)
        within = abs(sparsity - rho) <= epsilon + 1e-9
        cut = {k: rho for k, g in new_plan.groups.items() if not (g.kind == "flow" and flow_policy == "protect")}
        miss = (f"uniform {rho:g} lands at sparsity {sparsity:.4f} after the granule, outside ± {epsilon:g}: "
                "magnitude does not enforce the band")
        notes = () if within else (miss,)
        return pruned, new_plan, ChoiceInfo(strategy, rho, epsilon, sparsity, within, coeffs, cut, "magnitude",
                                            search_s=time.perf_counter() - start, notes=notes)

    has_loss = task.loss is not None and task.batches is not None
    if strategy == "gradient" and not has_loss:
        raise CoefficientError(f"strategy 'gradient' needs the task's differentiable loss(model, batch) and "
                               f"batches(seed); task {task.name!r} has none: use 'grid' or 'magnitude'")
    working, graph, space, importance, notes, stream = ranked_space(
        task, model, plan, inputs, granule, flow_policy, flow_combine, caps, max_group_ratio, seed,
        importance_batches, sensitivity_weight, grid.clusters, graph_args)
    low, high = space.bounds()
    if latency is None and (rho + epsilon < low - 1e-9 or rho - epsilon > high + 1e-9):
        raise CoefficientError(f"sparsity band {rho - epsilon:.3f}..{rho + epsilon:.3f} is unreachable: this model "
                               f"and plan allow {low:.3f}..{high:.3f} (flow policy {flow_policy}, caps, "
                               f"max_group_ratio {max_group_ratio:g}, granule {granule})")

    if strategy == "global":
        keeps, searched, result = _global(space, rho, epsilon)
    elif strategy == "grid":
        keeps, searched, result = _grid(task, model, plan, space, rho, epsilon, grid, seed, inputs, graph_args)
    else:
        assert stream is not None and task.loss is not None
        keeps, searched, result = _gradient(graph, space, task.loss, stream, rho, epsilon, gradient, latency)
    new_plan = space.cut(graph, plan, keeps)
    sparsity = policy_sparsity(new_plan, flow_policy)
    if abs(sparsity - space.sparsity(keeps)) > 1e-9:  # the plan is the truth; the search's arithmetic must agree
        raise PlanError(f"the plan's groups do not match this model's graph (made with other components or "
                        f"output layers?): plan sparsity {sparsity:.4f}, searched {space.sparsity(keeps):.4f}")
    coeffs = {k: 1.0 - len(g.keep) / g.width for k, g in new_plan.groups.items()}
    within = result.pop("within_tolerance", abs(sparsity - rho) <= epsilon + 1e-9)
    return working, new_plan, ChoiceInfo(
        strategy, rho, epsilon, sparsity, within, coeffs, searched, importance,
        search_s=time.perf_counter() - start, notes=tuple(notes + result.pop("notes", [])), **result)


def ranked_space(task: Task, model: nn.Module, plan: Plan, inputs: tuple[torch.Tensor, ...], granule: int,
                  flow_policy: FlowPolicy, flow_combine: Combine, caps: Mapping[str, float], max_group_ratio: float,
                  seed: int, importance_batches: int, sensitivity_weight: float, clusters: str,
                  graph_args: Mapping[str, object]):
    """A working copy of ``model``, its graph, the groups a call may cut, each ranked by application importance
    (magnitude alone for a task without a loss, with a note), and the task's seeded batch stream."""
    torch.manual_seed(seed)
    working = copy.deepcopy(model)
    graph = ComponentGraph(working, inputs, **graph_args)  # type: ignore[arg-type]
    unknown = set(caps) - set(graph.components)
    if unknown:
        raise PlanError(f"per-component ratios name unknown components: {', '.join(sorted(unknown))}")
    space = _Space(graph, plan, flow_policy, caps, max_group_ratio, granule, clusters)
    notes: list[str] = []
    has_loss = task.loss is not None and task.batches is not None
    stream: Iterator[object] | None = task.batches(seed) if has_loss else None  # type: ignore[misc]
    sensitivity: dict[str, torch.Tensor] = {}
    if stream is not None and task.loss is not None:
        sensitivity = mask_sensitivity(graph, [g.key for g in space.free], task.loss, stream, importance_batches)
        importance = f"magnitude + loss sensitivity (weight {sensitivity_weight:g}, {importance_batches} batches)"
    else:
        importance = "magnitude"
        notes.append(f"task {task.name!r} has no loss/batches: channels ranked by magnitude alone")
    for g in space.free:
        scores = application_scores(graph, g.key, sensitivity.get(g.key), flow_policy, flow_combine, sensitivity_weight)
        g.order = torch.argsort(scores, descending=True, stable=True)
        g.scores = scores[g.order]
    return working, graph, space, importance, notes, stream


def cluster_means(free: Sequence[_Group]) -> dict[str, float]:
    """Each cluster's mean channel score: what global rankings divide by, so no component is starved."""
    means: dict[str, float] = {}
    for cluster in {g.cluster for g in free}:
        mean = float(torch.cat([g.scores for g in free if g.cluster == cluster]).mean())
        means[cluster] = mean if mean > 0 else 1.0
    return means


# -- global ranking ------------------------------------------------------------------------------------------------
def _global(space: _Space, rho: float, epsilon: float) -> tuple[dict[str, int], dict[str, float], dict]:
    """Remove the least important granule blocks of channels across all groups, one ranking, until rho.

    Scores are divided by their component's mean channel score first (a flow group is its own component here: its
    scores are already combined from its components' normalised ones), so a component whose weights happen to be
    small, or whose loss gradients are, is not wiped out by one that is large — and cannot hide behind it either.
    Inside a group blocks go least important first; a block's score is its channels' mean.
    """
    free = space.free
    means = cluster_means(free)
    steps = {g.key: g.keep_steps(space.granule)[::-1] for g in free}  # current count first, then ever fewer
    position = {g.key: 0 for g in free}
    by_key = {g.key: g for g in free}
    keeps: dict[str, int] = {}

    def next_block(g: _Group) -> tuple[float, str] | None:
        i = position[g.key]
        if i + 1 >= len(steps[g.key]):
            return None
        hi, lo = steps[g.key][i], steps[g.key][i + 1]
        return float(g.scores[lo:hi].mean()) / means[g.cluster], g.key

    heap = [b for b in (next_block(g) for g in free) if b is not None]
    heapq.heapify(heap)
    previous = dict(keeps)
    while heap and space.sparsity(keeps) < rho:
        previous = dict(keeps)
        _, key = heapq.heappop(heap)
        position[key] += 1
        keeps[key] = steps[key][position[key]]
        block = next_block(by_key[key])
        if block is not None:
            heapq.heappush(heap, block)
    if abs(space.sparsity(previous) - rho) < abs(space.sparsity(keeps) - rho):
        keeps = previous  # the last block overshot further than stopping short of it
    if abs(space.sparsity(keeps) - rho) > epsilon + 1e-9:
        raise CoefficientError(f"global ranking reaches sparsity {space.sparsity(keeps):.4f}, outside {rho:g} ± "
                               f"{epsilon:g}: the granule's blocks are too coarse for this band")
    searched = {g.key: 1.0 - keeps.get(g.key, g.current) / g.dense for g in free}
    return keeps, searched, {}


# -- grid ----------------------------------------------------------------------------------------------------------
_ENUMERATE_LIMIT = 5_000_000
_SAMPLE = 500_000


def _grid(task: Task, model: nn.Module, plan: Plan, space: _Space, rho: float, epsilon: float,
          settings: GridSettings, seed: int, inputs: tuple[torch.Tensor, ...],
          graph_args: Mapping[str, object]) -> tuple[dict[str, int], dict[str, float], dict]:
    """Evaluate up to ``max_evals`` feasible grid settings with the true metric; return the best one's keeps."""
    if settings.max_evals < 1:
        raise CoefficientError("grid max_evals must be at least 1")
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
    rng = np.random.default_rng(seed)
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
        raise CoefficientError(f"no grid setting lands within {rho:g} ± {epsilon:g} after the granule ({granule}); "
                               f"widen epsilon, refine the grid offsets or use 'gradient'")
    is_uniform = (feasible == np.array(uniform_row)).all(axis=1)
    rest = feasible[~is_uniform]
    take = min(len(rest), settings.max_evals - int(is_uniform.any()))
    rows = ([uniform_row] if is_uniform.any() else []) + rest[np.sort(rng.choice(len(rest), take, replace=False))].tolist()
    candidates = [tuple(levels[i][j] for i, j in enumerate(row)) for row in rows]

    def keeps_of(setting: Sequence[float]) -> dict[str, int]:
        level = dict(zip(clusters, setting, strict=True))
        return {g.key: g.keep_at(level[g.cluster], granule) for g in free}

    higher = _higher_is_better(task)
    metrics: list[float] = []
    sparsities: list[float] = []
    best: tuple[float, tuple[float, ...]] | None = None
    for setting in candidates:
        keeps = keeps_of(setting)
        trial = copy.deepcopy(model)
        space.cut(ComponentGraph(trial, inputs, **graph_args), plan, keeps)  # type: ignore[arg-type]
        value = float(task.evaluate(trial.eval())[task.metric])
        metrics.append(value)
        sparsities.append(space.sparsity(keeps))
        if not math.isnan(value) and (best is None or (value > best[0] if higher else value < best[0])):
            best = (value, setting)
    if best is None:
        raise CoefficientError(f"every grid setting gave a NaN {task.metric}")
    level = dict(zip(clusters, best[1], strict=True))
    notes = [(f"grid: {len(clusters)} clusters ({', '.join(clusters)}), {len(feasible)} feasible settings, "
              f"{len(candidates)} evaluated")]
    return keeps_of(best[1]), {g.key: level[g.cluster] for g in free}, {
        "objective": tuple(metrics), "sparsity_trace": tuple(sparsities), "evaluations": len(candidates),
        "best_metric": best[0], "notes": notes}


# -- gradient ------------------------------------------------------------------------------------------------------
def _soft_masks(free: Sequence[_Group], kept: torch.Tensor, blocks: Sequence[torch.Tensor], granule: int,
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


def _repair(space: _Space, keeps: dict[str, int], target: Mapping[str, float], rho: float,
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
    raise CoefficientError(f"cannot bring sparsity inside {rho:g} ± {epsilon:g} at granule {space.granule} "
                           f"(reached {space.sparsity(keeps):.4f}); widen epsilon")


def _fit_latency(space: _Space, keeps: dict[str, int], cost: CostModel, budget_ms: float, epsilon: float,
                 base: Mapping[str, int]) -> tuple[dict[str, int], float, list[str]]:
    """Shrink the hard cut, one granule where the staircase prediction saves most, until it predicts at most
    budget · (1 + epsilon); returns the keep counts, their prediction and what was moved."""
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


def _gradient(graph: ComponentGraph, space: _Space, loss_fn: object, stream: Iterator[object], rho: float,
              epsilon: float, settings: GradientSettings,
              latency: tuple[CostModel, float, Mapping[str, int]] | None = None
              ) -> tuple[dict[str, int], dict[str, float], dict]:
    """Optimise per-group keep counts through soft masks; return the hard, granule-rounded cut. With ``latency``
    (cost model, budget ms, the plan's keep counts), the penalty holds the predicted latency, not the sparsity."""
    if settings.steps < 2:
        raise CoefficientError("gradient steps must be at least 2")
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
    was_training = model.training
    model.eval()
    try:
        with frozen(model), channel_masks(graph, masks), torch.enable_grad():
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
                    cost, budget_ms, base = latency
                    ms = cost.torch_ms({**base, **{g.key: k for g, k in zip(free, kept, strict=True)}})
                    penalty = torch.relu((ms / budget_ms - 1).abs() - epsilon / 2) / epsilon
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
                keeps, predicted, notes = _fit_latency(space, rounded, latency[0], latency[1], epsilon, latency[2])
            hard = torch.tensor([float(keeps[g.key]) for g in free])
            masks.update(_soft_masks(free, hard, blocks, granule, None))
            binary = all(bool(((m == 0) | (m == 1)).all()) for m in masks.values())
            with torch.no_grad():
                hard_objective = float(loss_fn(model, next(stream))) / scale  # type: ignore[operator]
    finally:
        model.train(was_training)
    if not binary:
        raise AssertionError("final masks are not exactly 0/1")
    result = {"objective": tuple(objective), "sparsity_trace": tuple(sparsities), "masks_binary": binary,
              "hard_objective": hard_objective, "notes": notes}
    if latency is not None:
        result.update(predicted_ms=predicted, within_tolerance=predicted <= latency[1] * (1 + epsilon) + 1e-12,
                      latency_trace=tuple(predictions))
    return keeps, {g.key: 1 - continuous[g.key] / g.dense for g in free}, result


__all__ = ["STRATEGIES", "ChoiceInfo", "CoefficientError", "GradientSettings", "GridSettings", "Strategy", "choose",
           "policy_sparsity"]
