"""``select``: the latency knapsack and two global rankings aim at the same latency; the task's loss picks the cut.

Which channel choice fine-tunes back best differs by task, and no one rule wins the latency bench through the same
loop: a ranking by first-order Taylor importance on the pendulum agent, by L2 magnitude on the digits ResNet; the
per-millisecond knapsack loses metric to a plain ranking wherever the ranking reaches the target, and only it
reaches the target where time sits in a few layers (MobileNetV2). So each step plans three candidates against the
step's latency target on the measured cost model — the knapsack on the application importance (components, soft
coefficients), and Taylor and L2 rankings cut until the cost model says in time — and keeps the one whose cut
model the task's loss rises least from, on held-out training batches (as EagleEye, Li et al. 2020, picks pruning
candidates by their quality right after the cut). A ranking that cannot reach the target, or that breaks a
component's share of it, is no candidate; the knapsack always is (best effort), so ``select`` reaches as far as
the knapsack does. A task without a loss gets the knapsack.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import nn

from edgeprune.planners.base import (
    LatencyTarget,
    PlannerError,
    Proposal,
    StepContext,
    StepTarget,
    check_target,
    register,
)
from edgeprune.planners.baselines import group_space, ranked_until, taylor
from edgeprune.planners.knapsack import KnapsackPlanner
from edgeprune.prune.importance import GroupMagnitude, Importance, Loss

#: Held-out batches each candidate's loss is measured on, and their stream's seed offset from the step's (the
#: importance's batches come from the step's own seed).
LOSS_BATCHES, HELD_OUT = 8, 7919

#: The rankings besides the knapsack: label -> the importance they rank blocks by.
RANKINGS: dict[str, Callable[[StepContext], Importance]] = {"taylor": taylor, "magnitude": lambda _: GroupMagnitude()}


def loss_terms(loss: Loss, model: nn.Module, batches: list[object]) -> dict[str, float]:
    """The mean of each of the loss's terms (one, ``"loss"``, for a plain loss) over ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    total: dict[str, float] = {}
    try:
        with torch.no_grad():
            for batch in batches:
                value = loss(model, batch)
                for name, term in value.items() if isinstance(value, Mapping) else [("loss", value)]:
                    total[name] = total.get(name, 0.0) + float(term) / len(batches)
    finally:
        model.train(was_training)
    return total


def loss_rise(terms: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """The mean over the terms of each one's rise from the uncut model's value, in units of that value's size: every
    objective of a sum gets the same voice (a value regression would drown a policy's term), and a term may be
    negative (a policy's -Q)."""
    return sum((terms[n] - ref) / max(abs(ref), 1e-12) for n, ref in reference.items()) / len(reference)


@register
class SelectPlanner:
    name: ClassVar[str] = "select"
    summary: ClassVar[str] = ("the knapsack and Taylor / L2 rankings aimed at one latency; the cut the task's loss "
                              "rises least from")
    aims: ClassVar[type] = LatencyTarget
    accepts: ClassVar[tuple[type, ...]] = (LatencyTarget,)

    def propose(self, context: StepContext, target: StepTarget) -> Proposal:
        check_target(self, target)
        assert isinstance(target, LatencyTarget)
        started = time.perf_counter()
        knapsack = KnapsackPlanner().propose(context, target)
        task = context.task
        loss = task.loss_terms or task.loss
        if loss is None or task.batches is None:
            return dataclasses.replace(knapsack, planner=self.name, notes=(
                *knapsack.notes, f"task {task.name!r} has no loss/batches to choose by: the knapsack's cut"))
        candidates = {"knapsack": knapsack, **self.rankings(context, target)}
        stream = task.batches(context.seed + HELD_OUT)
        batches = [next(stream) for _ in range(LOSS_BATCHES)]
        reference = loss_terms(loss, context.model, batches)
        rise = {label: loss_rise(loss_terms(loss, p.model, batches), reference) for label, p in candidates.items()}
        kept = min(rise, key=rise.__getitem__)
        note = (f"kept the {kept} cut: the loss rises " + ", ".join(f"{v:.4g}× ({k})" for k, v in rise.items())
                + f" over the uncut model's on {LOSS_BATCHES} held-out batches")
        chosen = candidates[kept]
        return dataclasses.replace(chosen, planner=self.name, notes=(*chosen.notes, note),
                                   search_s=time.perf_counter() - started)

    def rankings(self, context: StepContext, target: LatencyTarget) -> dict[str, Proposal]:
        """The rankings' proposals that reach ``target`` by the cost model with every component within its share."""
        strict, proposals = dataclasses.replace(target, best_effort=False), {}
        for label, importance in RANKINGS.items():
            space, cost = group_space(context, importance(context))
            try:
                search = ranked_until(context, space, cost, strict)
            except PlannerError:  # out of reach by this ranking: the knapsack plans as far as it can
                continue
            proposal = space.propose(f"{self.name}:{label}", target, search)
            times = cost.component_ms(proposal.plan)
            if all(times.get(c, 0.0) <= share * target.ms + 1e-12 for c, share in context.component_shares.items()):
                proposals[label] = proposal
        return proposals
