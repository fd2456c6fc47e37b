"""Runtimes: the one place that knows an inference engine. Each runtime is a small class with the same methods.

Nothing outside this package imports onnxruntime, TensorRT or CUDA bindings; optional ones are imported lazily
by their runtime, and a missing one names the extra to install.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from edgeprune.targets import Target


class RuntimeMissing(RuntimeError):
    """An optional dependency of a runtime is not installed."""


@dataclass(frozen=True)
class Latency:
    """End-to-end latency of one model: per repetition (fresh session) the median of its timed runs."""

    repeats_ms: tuple[float, ...]
    p10_ms: float
    p90_ms: float

    @property
    def median_ms(self) -> float:
        """The median of the repetitions' medians: robust to the occasional slow repetition."""
        return statistics.median(self.repeats_ms)

    @property
    def spread(self) -> float:
        """(slowest − fastest repetition) / median: how repeatable this measurement was."""
        return (max(self.repeats_ms) - min(self.repeats_ms)) / self.median_ms

    def to_dict(self) -> dict[str, object]:
        return {
            "median_ms": self.median_ms,
            "spread": self.spread,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "repeats_ms": list(self.repeats_ms),
        }


class Runtime(Protocol):
    """What every runtime offers: run, end-to-end latency, per-layer profile, and its own versions."""

    name: str

    def versions(self) -> dict[str, str]: ...

    def run(self, model: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency: ...

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        """One row per runtime layer/node: ``layer``, ``op_type``, ``time_ms`` (mean per inference)."""
        ...


def get_runtime(target: Target) -> Runtime:
    """The runtime a target names, configured by the target."""
    if target.runtime == "onnxruntime":
        from edgeprune.runtimes.onnxruntime import OrtRuntime

        return OrtRuntime(target)
    raise RuntimeMissing(f"runtime {target.runtime!r} is not available in this edgeprune")
