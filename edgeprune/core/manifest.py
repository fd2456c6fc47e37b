"""The run manifest: what a tune run asked, measured and published — typed, written once, read by one loader."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "manifest.json"


class StepRecord(BaseModel):
    """One step of the loop, as it lands in the manifest and the report."""

    model_config = ConfigDict(extra="forbid")

    index: int
    ratio: float
    status: Literal["dense", "accepted", "rolled-back"]
    metrics: dict[str, float]
    latency: dict[str, object] | None = None
    macs: int = 0
    params: int = 0
    channel_sparsity: float = 0.0
    note: str = ""
    seconds: float = 0.0
    plan_digest: str = ""
    search: dict[str, object] = Field(default_factory=dict)
    """How the planner chose this step's channels: target, sparsity or prediction reached, search cost."""

    @property
    def latency_ms(self) -> float:
        return float(self.latency["median_ms"]) if self.latency else math.nan  # type: ignore[arg-type]
