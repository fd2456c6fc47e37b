"""Latency knapsack: per-group keep counts that lose the least importance per millisecond the target saves.

Where the soft-coefficient strategies (:mod:`edgeprune.planners.coefficients`) aim at a sparsity, this aims at a latency:
the cost model (:mod:`edgeprune.measure.cost`), measured on the target, prices every granule block of channels, so time is
taken where the target spends it rather than where FLOPs are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn

from edgeprune.planners.coefficients import ChoiceInfo, CoefficientError, cluster_means, policy_sparsity, ranked_space
from edgeprune.measure.cost import CostModel, plan_counts
from edgeprune.prune.importance import Combine, FlowPolicy
from edgeprune.prune.plan import Plan
from edgeprune.core.task import Task


def choose_for_latency(
    task: Task,
    model: nn.Module,
    plan: Plan,
    cost: CostModel,
    budget_ms: float,
    *,
    inputs: tuple[torch.Tensor, ...],
    granule: int,
    flow_policy: FlowPolicy = "protect",
    flow_combine: Combine = "min",
    component_ratios: Mapping[str, float] | None = None,
    component_shares: Mapping[str, float] | None = None,
    best_effort: bool = False,
    seed: int = 0,
    max_group_ratio: float = 0.9,
    importance_batches: int = 8,
    sensitivity_weight: float = 0.5,
    **graph_args: object,
) -> tuple[nn.Module, Plan, ChoiceInfo]:
    """Prune a copy of ``model`` (described by ``plan``) until the cost model predicts ``budget_ms``, losing as
    little importance per millisecond saved as it can: a greedy knapsack over granule blocks of channels.

    Each round prices the next block of every group (its channels' application importance, divided by the
    component's mean as in the global ranking) against the latency the cost model says removing it saves, and
    removes the cheapest; a block that saves nothing is never taken, so time goes where the target spends it,
    not where FLOPs are. ``component_shares`` caps a component's predicted time at a share of the budget (an
    encoder that may take at most 30 % of it): while one is over, only groups touching it are cut. Flow policy,
    component ratio caps and ``max_group_ratio`` bound every group as in :func:`choose`. Raises
    :class:`CoefficientError` when the bounds leave the budget out of reach, naming the best prediction — or, with
    ``best_effort``, returns the plan at the bounds with that in its notes: a prediction alone should not end a
    run that a measurement might still carry (the tune loop measures it).
    """
    if budget_ms <= 0:
        raise CoefficientError(f"latency budget must be positive, got {budget_ms:g} ms")
    shares = dict(component_shares or {})
    if any(not 0 < v <= 1 for v in shares.values()):
        raise CoefficientError(f"component shares must be in (0, 1]: {shares}")
    start = time.perf_counter()
    working, graph, space, importance, notes, _ = ranked_space(
        task, model, plan, inputs, granule, flow_policy, flow_combine, dict(component_ratios or {}),
        max_group_ratio, seed, importance_batches, sensitivity_weight, "component", graph_args)
    unknown = set(shares) - set(graph.components)
    if unknown:
        raise CoefficientError(f"component shares name unknown components: {', '.join(sorted(unknown))}")
    free = space.free
    means = cluster_means(free)
    steps = {g.key: g.keep_steps(space.granule)[::-1] for g in free}
    position = {g.key: 0 for g in free}
    counts = plan_counts(plan)
    predicted = cost.predict_ms(counts)
    trace = [predicted]

    def over() -> str | None:
        """The component furthest over its share, or '' for the whole budget, or None when everything holds."""
        times = cost.component_ms(counts)
        worst = max(((times.get(c, 0.0) / (share * budget_ms), c) for c, share in shares.items()), default=(0.0, ""))
        if worst[0] > 1.0 + 1e-9:
            return worst[1]
        return "" if predicted > budget_ms else None

    while (target := over()) is not None:
        best: tuple[float, str, float] | None = None
        before = cost.component_ms(counts).get(target, 0.0) if target else predicted
        for g in free:
            i = position[g.key]
            if i + 1 >= len(steps[g.key]) or (target and target not in graph.groups[g.key].components):
                continue
            hi, lo = steps[g.key][i], steps[g.key][i + 1]
            trial = {**counts, g.key: lo}
            after = cost.component_ms(trial).get(target, 0.0) if target else cost.predict_ms(trial)
            saved = before - after
            if saved <= 1e-12:
                continue
            lost = float(g.scores[lo:hi].sum()) / means[g.cluster]
            if best is None or lost / saved < best[0]:
                best = (lost / saved, g.key, lo)
        if best is None:
            what = f"component {target!r} over {shares[target]:.0%} of the budget" if target else "the budget"
            message = (f"latency budget {budget_ms:.4g} ms is out of reach for {what}: the cost model predicts "
                       f"{predicted:.4g} ms with every group at its bound (flow policy {flow_policy}, caps, "
                       f"max_group_ratio {max_group_ratio:g}, granule {granule})")
            if not best_effort:
                raise CoefficientError(message)
            notes.append(message + "; planned at the bounds for a measurement to decide")
            break
        _, key, lo = best
        position[key] += 1
        counts[key] = lo
        predicted = cost.predict_ms(counts)
        trace.append(predicted)
    keeps = {g.key: counts[g.key] for g in free if counts.get(g.key, g.current) < g.current}
    new_plan = space.cut(graph, plan, keeps)
    sparsity = policy_sparsity(new_plan, flow_policy)
    coeffs = {k: 1.0 - len(g.keep) / g.width for k, g in new_plan.groups.items()}
    searched = {g.key: 1.0 - counts.get(g.key, g.current) / g.dense for g in free}
    return working, new_plan, ChoiceInfo(
        "knapsack", sparsity, 0.0, sparsity, True, coeffs, searched, importance, objective=tuple(trace),
        search_s=time.perf_counter() - start, notes=tuple(notes), predicted_ms=predicted)
