"""The loop's state: the dense model's fixed facts, what changes from step to step, the checkpoint file that
serialises both after every step (so an interrupted run resumes), and how a run ends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgeprune.artifact.export import Artifact
from edgeprune.core.manifest import StepRecord
from edgeprune.measure.cost import CostModel
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.plan import Plan

CHECKPOINT = "checkpoint.json"
CHECKPOINT_WEIGHTS = "checkpoint.pt"


class Baseline(BaseModel):
    """The dense model's facts, fixed by the dense stage: what both budgets resolve against."""

    model_config = ConfigDict(frozen=True)

    dense_value: float
    dense_hash: str
    dense_ms: float
    budget_ms: float
    metric_threshold: float
    dense_artifact: Artifact
    cost_path: Path | None = None
    """Where the stored cost model the run planned on came from (latency planners)."""
    frozen: dict[str, str] = {}
    """Groups a trial cut showed to break the model, with the reason: never offered to the planner."""


class LoopState(BaseModel):
    """What changes from step to step. Everything but the traced graph (rebuilt from the plan and the checkpoint's
    weights) is the checkpoint."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    ratio: float
    """Ratio strategies: the channels cut so far. Latency planners: the share of the dense latency the current model
    measures removed, so each step removes its increment from what was measured; a step aimed at the budget that
    measured short of it is then followed by a smaller one after a rollback, not by the same aim again (the ramp
    only moves past a measurement when a step is swallowed by the granule or measures no faster)."""
    step: float
    """The next increment of ``ratio``: halved after a rollback, adapted after an accepted step (:meth:`Loop.next_step`)."""
    steps: list[StepRecord]
    best: int = 0
    """Index of the step the current model comes from (the dense model, or the last accepted step)."""
    rejected: frozenset[str] = frozenset()
    """Digests of plans rolled back from the current model: not proposed from it again."""
    plan: Plan
    artifact: Artifact
    """The current model exported, built and checked: what the bundle publishes if the run ends here."""
    cost: CostModel | None = None
    """Latency planners: the cost model, recalibrated on every measurement."""
    local: float = 1.0
    """Latency planners: measured / predicted latency at the last measurement (prediction errors are local)."""
    interfaces_open: bool = False
    """Flow policy ``last``: a step's target was out of reach with the interfaces kept, so they are cut from then on."""
    graph: ComponentGraph = Field(exclude=True)
    """The current model, traced."""

    @property
    def model(self) -> nn.Module:
        return self.graph.model

    @property
    def best_step(self) -> StepRecord:
        return self.steps[self.best]

    def rolled_back(self, record: StepRecord, **changes: object) -> LoopState:
        return self.model_copy(update={"steps": [*self.steps, record],
                                       "rejected": self.rejected | {record.plan_digest}, **changes})


class Checkpoint(BaseModel):
    """The checkpoint file: the run's key, its baseline and the state after the last step (weights beside it), and
    how the step loop ended once it has (a resumed run then only finishes)."""

    run_key: str
    baseline: Baseline
    state: LoopState
    ended: tuple[Literal["met", "infeasible"], str] | None = None


@dataclass
class Outcome:
    """How the loop ended, with the state it ends on: the current model (the last accepted step), its graph, plan
    and measured artefact, every step, and the cost model a latency planner planned on."""

    status: Literal["met", "infeasible"]
    reason: str
    state: LoopState

    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def plan(self) -> Plan:
        return self.state.plan

    @property
    def graph(self) -> ComponentGraph:
        return self.state.graph

    @property
    def artifact(self) -> Artifact:
        return self.state.artifact

    @property
    def steps(self) -> list[StepRecord]:
        return self.state.steps

    @property
    def dense(self) -> StepRecord:
        return self.state.steps[0]

    @property
    def final(self) -> StepRecord:
        return self.state.best_step
