"""Tune settings: everything that defines a run, validated once; two runs with equal settings are the same run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeprune.core.budgets import LatencyBudget, MetricBudget
from edgeprune.core.hashing import digest_json
from edgeprune.core.targets import Target
from edgeprune.core.task import Task
from edgeprune.planners import DEFAULT_STRATEGY, PLANNERS, plans_latency
from edgeprune.prune.importance import Combine, FlowPolicy


class RunFolderError(ValueError):
    """The output folder cannot take this run."""



class TuneSettings(BaseModel):
    """Everything that defines a run: two runs with equal settings (and target file) are the same run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = "digits-autoencoder"
    target: str = "cpu"
    latency_budget: str = "0.5x"
    metric_budget: str | None = Field(None, description="None: the task's default budget")
    step: float = Field(0.1, gt=0, le=1, description="first increment of the uniform pruning ratio")
    min_step: float = Field(0.02, gt=0, description="stop when a rolled-back step would go below this increment")
    max_ratio: float = Field(0.9, gt=0, lt=1, description="largest fraction of a group's channels to remove")
    finetune_steps: int = Field(0, ge=0, description="task.finetune steps at every pruning step (a planner that "
                                  "races its cuts, select, spends a share of them, the loop the rest)")
    final_finetune_steps: int = Field(0, ge=0, description="task.finetune steps on the final model, after the last "
                                                           "step (kept only if its metric is no worse)")
    seed: int = 0
    strategy: str = Field(
        DEFAULT_STRATEGY, description="the planner that chooses each step's channels (a name in "
                                      "edgeprune.planners.PLANNERS): by default the latency knapsack on the target's "
                                      "measured cost model; the knapsack and two rankings raced (select), uniform "
                                      "magnitude, one global ranking, grid search on the metric, gradient descent, or "
                                      "a baseline")
    epsilon: float = Field(0.02, gt=0, lt=0.5, description="grid: sparsity tolerance around each step's ratio; "
                                                          "gradient: relative tolerance around its latency target")
    flow_policy: FlowPolicy = Field(
        "last", description="inter-component groups: keep their width until a latency planner's step cannot reach "
                            "its target without cutting them or breaks the metric budget with them kept, then as "
                            "joint (last); always keep their width "
                            "(protect); prune on every component's combined importance (joint), or on the producing "
                            "component's (owner)")
    flow_combine: Combine = Field("min", description="joint policy: combine components' importance by min or mean")
    components: dict[str, list[str]] | None = Field(None, description="component -> module prefixes; None: the task's")
    component_ratios: dict[str, float] | None = Field(
        None, description="component -> largest fraction of its groups' channels to remove (per-component budget)")
    component_shares: dict[str, float] | None = Field(
        None, description="select, knapsack: component -> largest share of the latency budget its layers may take")

    @property
    def plans_latency(self) -> bool:
        """Whether each step aims at a latency on the target's cost model rather than at a pruning ratio."""
        return plans_latency(self.strategy)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, name: str) -> str:
        if name not in PLANNERS:
            raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(PLANNERS)}")
        return name

    @field_validator("component_shares")
    @classmethod
    def _shares(cls, shares: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (shares or {}).items():
            if not 0 < value <= 1:
                raise ValueError(f"component {name!r}: share must be in (0, 1], got {value:g}")
        return shares

    @model_validator(mode="after")
    def _shares_need_knapsack(self) -> TuneSettings:
        if self.component_shares and self.strategy not in ("select", "knapsack"):
            raise ValueError("component shares of the latency budget need a planner that keeps them: --strategy "
                             "select or knapsack")
        return self

    @field_validator("component_ratios")
    @classmethod
    def _ratios(cls, ratios: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (ratios or {}).items():
            if not 0 <= value < 1:
                raise ValueError(f"component {name!r}: ratio must be in [0, 1), got {value:g}")
        return ratios

    @field_validator("latency_budget")
    @classmethod
    def _latency(cls, text: str) -> str:
        LatencyBudget.parse(text)
        return text

    @field_validator("metric_budget")
    @classmethod
    def _metric(cls, text: str | None) -> str | None:
        if text is not None:
            MetricBudget.parse(text)
        return text


def target_inputs(task: Task, target: Target) -> tuple[torch.Tensor, ...]:
    """The task's example inputs, resized along the batch dimension when the target fixes a batch."""
    inputs = task.example_inputs()
    if target.batch is None:
        return inputs
    return tuple(t[torch.arange(target.batch) % t.shape[0]] for t in inputs)


def run_components(settings: TuneSettings, task: Task) -> Mapping[str, Sequence[str]] | None:
    """The components a run's graph is classified by: the user's override the task's."""
    return settings.components or task.components


def run_key(settings: TuneSettings, target: Target) -> str:
    return digest_json({"settings": settings.model_dump(), "target": target.digest()}, 16)


