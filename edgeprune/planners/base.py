"""What every planner shares: the per-step context, the typed targets, the proposal, the protocol and the registry.

One step of the loop builds one :class:`StepContext` (the step's traced graph, plan, inputs, granule, each group's
bounds, the run's importance object and cost model) and asks the chosen planner for a :class:`Proposal` against a
:class:`SparsityTarget` (rho ± epsilon of the channels the flow policy lets go) or a :class:`LatencyTarget` (a
predicted latency on the target's cost model). A planner prunes a fork of the context's graph, never the graph
itself, and never traces the model again.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
from torch import nn

from edgeprune.core.task import Task
from edgeprune.measure.cost import CostModel
from edgeprune.prune.graph import ComponentGraph, GroupInfo
from edgeprune.prune.importance import Combine, FlowPolicy, Importance, cuttable
from edgeprune.prune.plan import Plan, PlanError, keep_count


class PlannerError(ValueError):
    """A planner cannot propose: bad settings, an unreachable target, a task without what the planner needs."""


@dataclass(frozen=True)
class SparsityTarget:
    """Remove ``rho`` ± ``epsilon`` of the dense channels of the groups the flow policy lets go."""

    rho: float
    epsilon: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 < self.rho < 1.0:
            raise PlannerError(f"sparsity target rho must be in (0, 1), got {self.rho:g}")
        if not 0.0 < self.epsilon < 0.5:
            raise PlannerError(f"sparsity tolerance epsilon must be in (0, 0.5), got {self.epsilon:g}")


@dataclass(frozen=True)
class LatencyTarget:
    """A predicted latency of at most ``ms`` on the cost model (``tolerance``: relative slack for planners that aim
    at it from both sides). ``best_effort``: when the groups' bounds keep it out of reach, propose the plan at the
    bounds (for a measurement to decide) rather than fail."""

    ms: float
    tolerance: float = 0.02
    best_effort: bool = False

    def __post_init__(self) -> None:
        if self.ms <= 0:
            raise PlannerError(f"latency budget must be positive, got {self.ms:g} ms")
        if not 0.0 < self.tolerance < 0.5:
            raise PlannerError(f"latency tolerance must be in (0, 0.5), got {self.tolerance:g}")


StepTarget = SparsityTarget | LatencyTarget


@dataclass
class StepContext:
    """Everything one step's planner may use, built once per step by the loop (or a script)."""

    task: Task
    graph: ComponentGraph
    """The model to prune from, traced; planners prune :meth:`fork` copies of it."""
    plan: Plan
    """Describes ``graph.model``: per group, the dense channels it still keeps."""
    inputs: tuple[torch.Tensor, ...]
    granule: int
    importance: Importance
    flow_policy: FlowPolicy = "protect"
    flow_combine: Combine = "min"
    component_ratios: Mapping[str, float] = field(default_factory=dict)
    """Component -> largest fraction of its groups' dense channels to remove."""
    max_ratio: float = 0.9
    """Largest fraction of any group's dense channels to remove."""
    component_shares: Mapping[str, float] = field(default_factory=dict)
    """Component -> largest share of a latency target its layers may take (latency planners)."""
    cost: CostModel | None = None
    seed: int = 0
    finetune: Callable[[nn.Module, int], None] | None = None
    """Fine-tunes a model in place for a number of optimiser steps, as the loop's fine-tune does (None: the task has
    none)."""
    finetune_steps: int = 0
    """The step's fine-tune budget; a planner that races its candidates spends part of it (see
    :attr:`Proposal.finetune_steps`), the loop the rest on the kept one."""

    def __post_init__(self) -> None:
        if not 0.0 < self.max_ratio < 1.0:
            raise PlannerError(f"max_group_ratio must be in (0, 1), got {self.max_ratio:g}")
        unknown = set(self.component_ratios) - set(self.graph.components)
        if unknown:
            raise PlanError(f"per-component ratios name unknown components: {', '.join(sorted(unknown))}")
        if any(not 0 < v <= 1 for v in self.component_shares.values()):
            raise PlannerError(f"component shares must be in (0, 1]: {dict(self.component_shares)}")
        unknown = set(self.component_shares) - set(self.graph.components)
        if unknown:
            raise PlannerError(f"component shares name unknown components: {', '.join(sorted(unknown))}")

    @classmethod
    def trace(cls, task: Task, model: nn.Module, plan: Plan, inputs: tuple[torch.Tensor, ...],
              components: Mapping[str, list[str]] | None = None, **settings: object) -> StepContext:
        """A context for ``model`` (left untouched) outside the loop: traces a copy once; ``settings`` are the other
        fields (granule and importance at least)."""
        graph = ComponentGraph(copy.deepcopy(model), inputs, components or task.components, task.output_layers)
        return cls(task=task, graph=graph, plan=plan, inputs=inputs, **settings)  # type: ignore[arg-type]

    @property
    def model(self) -> nn.Module:
        return self.graph.model

    def cuttable(self, info: GroupInfo) -> bool:
        return cuttable(info.kind, self.flow_policy)

    def fewest(self, key: str) -> int:
        """The fewest channels group ``key`` may keep: its dense width cut by the smallest of ``max_ratio`` and its
        components' caps, at the granule, and never more than it keeps now."""
        info = self.graph.groups[key]
        hi = min([self.max_ratio, *(self.component_ratios[c] for c in info.components if c in self.component_ratios)])
        return min(info.width, keep_count(self.plan.groups[key].width, hi, self.granule))

    def fork(self) -> ComponentGraph:
        return self.graph.fork()

    def batches(self) -> Iterator[object] | None:
        """The step's seeded stream of the task's training batches (None without them)."""
        return self.task.batches(self.seed) if self.task.batches is not None else None


@dataclass(frozen=True)
class Proposal:
    """A planner's answer: the pruned model (a fork), its graph and plan, and what was decided at what cost."""

    planner: str
    target: StepTarget
    model: nn.Module
    graph: ComponentGraph
    plan: Plan
    sparsity: float
    """Channel sparsity of the new plan over the groups the flow policy lets go (exact, after the granule)."""
    within_tolerance: bool
    coefficients: dict[str, float]
    """Per group, the realised coefficient: 1 - kept / dense width."""
    searched: dict[str, float]
    """Per group, the coefficient the search chose before the granule (grid level, gradient c_g, knapsack cut)."""
    importance: str
    search_s: float
    evaluations: int = 0
    """Calls of the task's ``evaluate`` (the expensive true metric)."""
    predicted_ms: float | None = None
    """The cost model's prediction for the new plan (when the context has a cost model)."""
    notes: tuple[str, ...] = ()
    objective: tuple[float, ...] = ()
    """Gradient: objective per optimiser step. Grid: the metric of each evaluated setting. Knapsack: the predicted
    latency after each removal."""
    sparsity_trace: tuple[float, ...] = ()
    latency_trace: tuple[float, ...] = ()
    """Gradient against a latency target: the differentiable prediction per optimiser step."""
    masks_binary: bool | None = None
    """Gradient: every final mask is exactly 0 or 1."""
    hard_objective: float | None = None
    """Gradient: the normalised task loss with the final hard masks, on one fresh batch."""
    best_metric: float | None = None
    """Grid: the best evaluated metric."""
    finetune_steps: int = 0
    """Fine-tune steps the planner spent on all its candidates together, out of the step's budget (``model`` already
    had its share of them)."""

    def summary(self) -> dict[str, object]:
        """The part a loop step records: what was aimed at and reached, and what the search cost."""
        aim = ({"rho": self.target.rho, "epsilon": self.target.epsilon} if isinstance(self.target, SparsityTarget)
               else {"target_ms": self.target.ms})
        return {"strategy": self.planner, **aim, "sparsity": round(self.sparsity, 4), "predicted_ms": self.predicted_ms,
                "within_tolerance": self.within_tolerance, "importance": self.importance,
                "search_s": round(self.search_s, 2), "evaluations": self.evaluations,
                **({"finetune_steps": self.finetune_steps} if self.finetune_steps else {}), "notes": list(self.notes)}


class Planner(Protocol):
    """Decides which channels go at one step. ``aims`` is the kind of target the loop gives it; ``accepts`` the
    target kinds it can plan for at all (the gradient planner also runs against a sparsity outside the loop)."""

    name: ClassVar[str]
    aims: ClassVar[type[SparsityTarget | LatencyTarget]]
    accepts: ClassVar[tuple[type, ...]]

    def propose(self, context: StepContext, target: StepTarget) -> Proposal: ...


PLANNERS: dict[str, type[Planner]] = {}


def register(planner: type[Planner]) -> type[Planner]:
    """Class decorator: make a planner available to ``--strategy`` under its ``name``."""
    PLANNERS[planner.name] = planner
    return planner


def get_planner(name: str, **config: object) -> Planner:
    """The registered planner ``name``. ``config`` may hold settings of any planner (``grid=GridSettings(…)``,
    ``gradient=GradientSettings(…)``); each planner takes those its constructor names."""
    if name not in PLANNERS:
        raise PlannerError(f"unknown strategy {name!r}; choose one of {', '.join(PLANNERS)}")
    planner = PLANNERS[name]
    accepted = inspect.signature(planner).parameters
    return planner(**{k: v for k, v in config.items() if k in accepted})


def plans_latency(name: str) -> bool:
    """Whether the loop gives planner ``name`` latency targets on the cost model (rather than sparsities)."""
    return PLANNERS[name].aims is LatencyTarget


def check_target(planner: Planner, target: StepTarget) -> None:
    """Refuse a target kind ``planner`` cannot plan for, naming the planners that can."""
    if not isinstance(target, planner.accepts):
        what = "latency" if isinstance(target, LatencyTarget) else "sparsity"
        able = " or ".join(repr(n) for n, p in PLANNERS.items() if isinstance(target, p.accepts))
        raise PlannerError(f"planner {planner.name!r} cannot plan for a {what} target: a {what} target needs "
                           f"strategy {able}")
