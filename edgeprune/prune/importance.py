"""Group importance: per-channel magnitude, split by component so flow groups can be scored fairly.

A flow group couples layers of several components (an encoder's output and every consumer's input); one score
summed over all of them lets the widest component decide for the others. Scoring each component's layers on
their own, normalising each to mean 1 and combining them (min: a channel is only as important as the component
that needs it least; mean: a weighted vote) keeps each component's voice.

Application importance (:func:`application_scores`) adds what the task's own differentiable loss says: the
measured sensitivity of that loss to zeroing each channel (:func:`mask_sensitivity`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.prune.graph import ComponentGraph, GraphError, component_of
from edgeprune.prune.masks import channel_masks, frozen

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


# -- application importance: what the task's own loss says each channel is worth ----------------------------------
def mask_sensitivity(graph: ComponentGraph, keys: Sequence[str], loss: Callable[[nn.Module, object], torch.Tensor],
                     batches: Iterator[object], n_batches: int) -> dict[str, torch.Tensor]:
    """Per channel of each group, the RMS over ``n_batches`` of dL/dm at a channel mask m = 1.

    dL/dm is the first-order change of the task's loss when the channel is zeroed — Taylor importance on a
    channel gate (Molchanov et al., 2019), which equals the activation times its gradient summed over the batch.
    Measured on ``graph.model`` as it is (eval mode: BatchNorm keeps its running statistics), weights frozen.
    """
    if not keys:  # every group at its bound: nothing to rank
        return {}
    model = graph.model
    masks = {k: torch.ones(graph.groups[k].width, requires_grad=True) for k in keys}
    total = {k: torch.zeros(graph.groups[k].width) for k in keys}
    was_training = model.training
    model.eval()
    try:
        with frozen(model), channel_masks(graph, masks), torch.enable_grad():
            for _ in range(n_batches):
                grads = torch.autograd.grad(loss(model, next(batches)), [masks[k] for k in keys], allow_unused=True)
                for k, g in zip(keys, grads, strict=True):
                    if g is not None:
                        total[k] += g.detach() ** 2
    finally:
        model.train(was_training)
    return {k: (v / max(n_batches, 1)).sqrt() for k, v in total.items()}


def application_scores(graph: ComponentGraph, key: str, sensitivity: torch.Tensor | None,
                       flow_policy: FlowPolicy = "joint", how: Combine = "min", weight: float = 0.5) -> torch.Tensor:
    """Channel importance for the application: the group's magnitude score (:func:`group_scores`) and its
    measured loss sensitivity, each normalised to mean 1, mixed as ``(1 - weight)·magnitude + weight·sensitivity``.

    Magnitude alone does not know which channels the task uses; sensitivity alone is a first-order estimate from
    a few batches that ranks near-zero-gradient channels by noise. The mix keeps both voices; ``sensitivity=None``
    (a task without a loss) is plain magnitude.
    """
    magnitude = normalised(group_scores(graph, key, flow_policy, how))
    if sensitivity is None or weight == 0.0:
        return magnitude
    return (1.0 - weight) * magnitude + weight * normalised(sensitivity)
