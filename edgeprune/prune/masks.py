"""Channel masks: multiply a group's channels by a per-channel factor without changing any layer.

A mask of 0 on a channel makes the model compute what the pruned model computes when the channel is removed, as
long as the mask sits where the channel's value is final: on the output of the group's *last* producing layer
(after the BatchNorm that follows a conv, not between them — BN would turn a zeroed conv output into its bias).
Every activation in the zoo maps 0 to 0 (ReLU, ELU), so the next layer then sees nothing from the channel. With a
LayerNorm the masked model is an approximation: the pruned LayerNorm normalises over fewer channels.

Masks serve two purposes: gradients with respect to a mask of ones measure how much the task's loss needs each
channel (application importance), and soft masks in (0, 1) make the removal differentiable (soft coefficients).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from edgeprune.prune.graph import ComponentGraph, GraphError

CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                  nn.modules.instancenorm._InstanceNorm)
"""Layers whose outputs hold channels in dimension 1; every other layer (Linear, LayerNorm) in the last one."""


def mask_points(graph: ComponentGraph, key: str) -> tuple[str, ...]:
    """The group's producing layers whose output feeds no other producing layer of the same group directly:
    where each channel's value is final (a conv's BatchNorm, a Linear's LayerNorm, both ends of a flow)."""
    info = graph.groups[key]
    producers = {graph.by_name[n] for n in info.out_modules}
    points = []
    for name in info.out_modules:
        node = graph.dg.module2node.get(graph.by_name[name])
        if node is None or not any(out.module in producers for out in node.outputs):
            points.append(name)
    if not points:
        raise GraphError(f"group {key!r}: no layer produces its channels")
    return tuple(points)


def _hook(key: str, name: str, masks: Mapping[str, torch.Tensor]) -> Callable[[nn.Module, object, torch.Tensor],
                                                                              torch.Tensor]:
    def apply(module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
        mask = masks[key]
        dim = 1 if isinstance(module, CHANNELS_FIRST) else output.dim() - 1
        if output.dim() <= dim or output.shape[dim] != mask.numel():
            raise GraphError(f"group {key!r}: {name} outputs {tuple(output.shape)}, no dimension of "
                             f"{mask.numel()} channels where a {type(module).__name__} keeps them")
        shape = [1] * output.dim()
        shape[dim] = -1
        return output * mask.view(shape)

    return apply


@contextlib.contextmanager
def channel_masks(graph: ComponentGraph, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, multiply every channel of each group in ``masks`` (key -> one factor per current
    channel) on the outputs of its :func:`mask_points`. The tensors are read at each forward, so a caller may
    recompute them between forwards by assigning into the same mapping (the hooks look the key up each time)."""
    handles = []
    try:
        for key in masks:
            for name in mask_points(graph, key):
                handles.append(graph.by_name[name].register_forward_hook(_hook(key, name, masks)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of ``model`` takes a gradient within the block (only masks do); the flags are restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
