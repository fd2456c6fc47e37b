"""Plan: per group, the dense-model channel indices to keep — the single source of truth for what was pruned.

Indices refer to the dense model, so a plan replays on a fresh model with one prune per group (each group's
channel dimension is independent of the others'); Torch-Pruning's own history is never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from edgeprune.graph import ComponentGraph

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

    def apply(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], **graph_args: object) -> nn.Module:
        """Prune a dense ``model`` in place to this plan and return it."""
        graph = ComponentGraph(model, example_inputs, **graph_args)  # type: ignore[arg-type]
        for key, group in self.pruned_groups.items():
            if key not in graph.groups:
                raise PlanError(f"plan group {key!r} is not a prunable group of this model")
            if graph.groups[key].width != group.width:
                raise PlanError(f"plan group {key!r} has width {group.width}, the model's has {graph.groups[key].width}")
            keep = set(group.keep)
            graph.prune(key, [i for i in range(group.width) if i not in keep])
        return model


@dataclass
class PlanState:
    """A plan together with the model object it describes (pruned, possibly fine-tuned)."""

    plan: Plan
    model: nn.Module
    notes: list[str] = field(default_factory=list)
