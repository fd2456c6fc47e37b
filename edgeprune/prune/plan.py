"""Plan: per group, the dense-model channel indices to keep — the single source of truth for what was pruned.

Indices refer to the dense model, so a plan replays on a fresh model with one prune per group (each group's
channel dimension is independent of the others'); Torch-Pruning's own history is never used.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.importance import Combine, FlowPolicy, MagnitudeImportance, cuttable

FORMAT = "edgeprune.plan/1"


class PlanError(ValueError):
    """A plan is malformed or does not fit the model it is applied to."""


class GroupPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=1, description="channels of the group in the dense model")
    keep: tuple[int, ...] = Field(description="dense channel indices kept, ascending")
    kind: str = "intra"
    components: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> GroupPlan:
        if not self.keep or list(self.keep) != sorted(set(self.keep)) or self.keep[-1] >= self.width or self.keep[0] < 0:
            raise ValueError("keep must be non-empty, ascending, unique indices below width")
        return self


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = FORMAT
    task: str
    groups: dict[str, GroupPlan]

    @classmethod
    def dense(cls, task: str, graph: ComponentGraph) -> Plan:
        """The identity plan: every group of ``graph`` at full width."""
        return cls(
            task=task,
            groups={
                k: GroupPlan(width=g.width, keep=tuple(range(g.width)), kind=g.kind, components=g.components)
                for k, g in graph.groups.items()
            },
        )

    def narrow(self, key: str, positions: Sequence[int]) -> Plan:
        """Keep only ``positions`` (relative to this plan's current keep list) of group ``key``."""
        group = self.groups[key]
        keep = tuple(group.keep[i] for i in sorted(positions))
        return self.model_copy(update={"groups": {**self.groups, key: group.model_copy(update={"keep": keep})}})

    def kept(self, key: str) -> int:
        return len(self.groups[key].keep)

    @property
    def pruned_groups(self) -> dict[str, GroupPlan]:
        return {k: g for k, g in self.groups.items() if len(g.keep) < g.width}

    def channel_sparsity(self) -> float:
        """Fraction of group channels removed, over all groups."""
        total = sum(g.width for g in self.groups.values())
        return 1.0 - sum(len(g.keep) for g in self.groups.values()) / total if total else 0.0

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1))

    @classmethod
    def load(cls, path: Path) -> Plan:
        try:
            return cls.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read plan {path}: {str(exc).splitlines()[0]}") from exc

    def apply(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
              components: Mapping[str, Sequence[str]] | None = None, output_layers: Sequence[str] = ()) -> nn.Module:
        """Prune a dense ``model`` in place to this plan (tracing it: the graph arguments are ComponentGraph's) and
        return it."""
        self.apply_to(ComponentGraph(model, example_inputs, components, output_layers))
        return model

    def apply_to(self, graph: ComponentGraph) -> None:
        """Prune a traced dense model (``graph.model``) in place to this plan."""
        for key, group in self.pruned_groups.items():
            if key not in graph.groups:
                raise PlanError(f"plan group {key!r} is not a prunable group of this model")
            if graph.groups[key].width != group.width:
                raise PlanError(f"plan group {key!r} has width {group.width}, the model's has {graph.groups[key].width}")
            keep = set(group.keep)
            graph.prune(key, [i for i in range(group.width) if i not in keep])


def keep_count(width: int, ratio: float, granule: int) -> int:
    """Channels to keep when removing ``ratio`` of ``width``: a multiple of the granule, at least one granule.

    Groups no wider than one granule are left alone: any cut would leave a partly filled SIMD/tensor-core block.
    """
    if width <= granule:
        return width
    kept = round(width * (1.0 - ratio) / granule) * granule
    return int(min(width, max(granule, kept)))


def uniform_counts(plan: Plan, ratio: float, granule: int, flow_policy: FlowPolicy = "protect",
                   component_ratios: Mapping[str, float] | None = None) -> dict[str, int]:
    """Keep counts that remove ``ratio`` of every group the flow policy lets go (``keep_count`` at the granule);
    ``component_ratios`` caps the ratio per component (a flow group takes the smallest cap of its components)."""
    caps = dict(component_ratios or {})
    components = {c for g in plan.groups.values() for c in g.components}
    unknown = set(caps) - components
    if unknown:
        raise PlanError(f"per-component ratios name unknown components (or ones with no prunable group): {', '.join(sorted(unknown))}")
    return {
        key: keep_count(group.width, min([ratio, *(caps[c] for c in group.components if c in caps)]), granule)
        for key, group in plan.groups.items()
        if cuttable(group.kind, flow_policy)
    }


def cut_to_counts(graph: ComponentGraph, plan: Plan, counts: Mapping[str, int],
                  scores: Callable[[ComponentGraph, str], torch.Tensor]) -> Plan:
    """Prune ``graph.model`` in place so group ``key`` keeps ``counts[key]`` channels, its highest-``scores`` ones,
    and return ``plan`` (which describes the graph's model) narrowed alike; a count at or above a group's current
    width leaves it alone."""
    unknown = set(counts) - set(graph.groups)
    if unknown:
        raise PlanError(f"counts name groups this model does not have: {', '.join(sorted(unknown))}")
    for key, keep in counts.items():
        info = graph.groups[key]
        if keep >= info.width:
            continue
        if keep < 1:
            raise PlanError(f"group {key!r}: cannot keep {keep} channels")
        positions = sorted(torch.topk(scores(graph, key), keep).indices.tolist())
        kept = set(positions)
        graph.prune(key, [i for i in range(info.width) if i not in kept])
        plan = plan.narrow(key, positions)
    return plan


def prune_uniform(
    model: nn.Module,
    plan: Plan,
    ratio: float,
    example_inputs: tuple[torch.Tensor, ...],
    granule: int,
    flow_policy: FlowPolicy = "protect",
    component_ratios: Mapping[str, float] | None = None,
    flow_combine: Combine = "min",
    components: Mapping[str, Sequence[str]] | None = None,
    output_layers: Sequence[str] = (),
) -> tuple[nn.Module, Plan]:
    """Prune a copy of ``model`` (described by ``plan``) so every prunable group keeps
    ``keep_count(dense width, ratio, granule)`` channels, dropping the lowest-magnitude ones (traces the copy: for
    scripts and benches; the loop's uniform planner cuts its step's graph instead).

    Under ``protect``, flow groups (interfaces between components) keep their width; under ``joint`` or
    ``owner`` they are cut once, consistently in every component that touches them (``joint`` combines the
    components' normalised importance by ``flow_combine``: ``min`` or ``mean``). ``component_ratios`` caps
    the ratio per component (a per-component budget); a flow group takes the smallest cap of its components.
    """
    counts = uniform_counts(plan, ratio, granule, flow_policy, component_ratios)
    return prune_to_counts(model, plan, counts, example_inputs, flow_policy, flow_combine, components, output_layers)


def prune_to_counts(
    model: nn.Module,
    plan: Plan,
    counts: Mapping[str, int],
    example_inputs: tuple[torch.Tensor, ...],
    flow_policy: FlowPolicy = "protect",
    flow_combine: Combine = "min",
    components: Mapping[str, Sequence[str]] | None = None,
    output_layers: Sequence[str] = (),
) -> tuple[nn.Module, Plan]:
    """Prune a traced copy of ``model`` (described by ``plan``) to ``counts`` by magnitude (:func:`cut_to_counts`)."""
    graph = ComponentGraph(copy.deepcopy(model), example_inputs, components, output_layers)
    return graph.model, cut_to_counts(graph, plan, counts, MagnitudeImportance(flow_policy, flow_combine))
