"""Group importance: per-channel magnitude, split by component so flow groups can be scored fairly.

A flow group couples layers of several components (an encoder's output and every consumer's input); one score
summed over all of them lets the widest component decide for the others. Scoring each component's layers on
their own, normalising each to mean 1 and combining them (min: a channel is only as important as the component
that needs it least; mean: a weighted vote) keeps each component's voice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch_pruning as tp

from edgeprune.graph import ComponentGraph, GraphError
from edgeprune.profiling import component_of

Combine = Literal["min", "mean"]


def component_importance(graph: ComponentGraph, key: str) -> dict[str, torch.Tensor]:
    """Per component, the L2 magnitude of each channel of group ``key`` over that component's layers only."""
    group = graph.pruning_group(key)
    by_component: dict[str, list] = {}
    for item in group.items:
        name = graph.names.get(item.dep.target.module)
        if name is not None:
            by_component.setdefault(component_of(name, graph.components), []).append(item)
    scores: dict[str, torch.Tensor] = {}
    for component, items in by_component.items():
        sub = tp.dependency.Group()
        sub._group, sub._DG = items, group._DG  # a view of the group restricted to one component's layers
        value = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)(sub)
        if value is not None:
            scores[component] = value.detach()
    if not scores:
        raise GraphError(f"group {key!r} has no layer with weights to score")
    return scores


def normalised(scores: torch.Tensor) -> torch.Tensor:
    """Scale to mean 1, so components of different widths and weight scales are comparable."""
    mean = scores.mean()
    return scores / mean if mean > 0 else torch.ones_like(scores)


def combine(per_component: Mapping[str, torch.Tensor], how: Combine = "min",
            weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """One score per channel from per-component scores (each normalised first)."""
    names = sorted(per_component)
    stacked = torch.stack([normalised(per_component[n]) for n in names])
    if how == "min":
        return stacked.min(dim=0).values
    w = torch.tensor([float((weights or {}).get(n, 1.0)) for n in names]).unsqueeze(1)
    return (stacked * w).sum(dim=0) / w.sum()


FlowPolicy = Literal["protect", "joint", "owner"]


def group_scores(graph: ComponentGraph, key: str, flow_policy: FlowPolicy = "joint", how: Combine = "min") -> torch.Tensor:
    """Channel importance of a group: plain magnitude inside a component; for a flow group, every component's
    normalised scores combined by ``how`` (``joint``), or the producing component's alone (``owner``)."""
    info = graph.groups[key]
    if info.kind == "intra":
        return graph.importance(key)
    per_component = component_importance(graph, key)
    if flow_policy == "owner":
        per_component = {c: v for c, v in per_component.items() if c in info.producers} or per_component
    return combine(per_component, how)
