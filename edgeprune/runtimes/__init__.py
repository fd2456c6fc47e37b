"""Runtimes: the one place that knows an inference engine. Each runtime is a small class with the same methods.

Nothing outside this package imports onnxruntime, TensorRT or CUDA bindings; optional ones are imported lazily
by their runtime, and a missing one names the extra to install.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from edgeprune.targets import Target


class RuntimeMissing(RuntimeError):
    """An optional dependency of a runtime (a package, an executable, a CUDA device) is not there."""


class RuntimeFailure(RuntimeError):
    """A runtime was there but could not build or run the model; the message is one line saying why."""


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
    """What every runtime offers: build, run, end-to-end latency, per-layer profile, and its own versions.

    A runtime starts from an exported model of its ``source`` format ("onnx": ``export_onnx``; "pt2":
    ``export_pt2``), turns it into what it executes with ``build`` (the ONNX itself, a TensorRT plan, the .pt2),
    and ``run``/``latency``/``profile`` take that built artefact.
    """

    name: str
    source: Literal["onnx", "pt2"]

    def versions(self) -> dict[str, str]: ...

    def build(self, exported: Path, folder: Path) -> Path:
        """The artefact this runtime executes, made from ``exported``; build products go to ``folder``."""
        ...

    def run(self, model: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency: ...

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        """One row per runtime layer/node: ``layer``, ``op_type``, ``time_ms`` (mean per inference).

        Engine runtimes add ``onnx_nodes`` (list of the ONNX nodes a layer covers) and keep time that maps to no
        node as rows of their own, totalled in ``attrs["unattributed_ms"]``.
        """
        ...


def get_runtime(target: Target) -> Runtime:
    """The runtime a target names, configured by the target; optional dependencies are imported here, lazily.

    On a remote device, trtexec runs there through the device (it needs nothing else there); the other runtimes run
    inside edgeprune's agent there (:class:`edgeprune.runtimes.remote.RemoteRuntime`).
    """
    if target.device != "local":
        from edgeprune.devices import open_device

        device = open_device(target.device, target.agent_python)
        if target.runtime == "trtexec":
            from edgeprune.runtimes.trtexec import TrtexecRuntime

            return TrtexecRuntime(target, device)
        from edgeprune.runtimes.remote import RemoteRuntime

        return RemoteRuntime(target, device)
    if target.runtime == "onnxruntime":
        from edgeprune.runtimes.onnxruntime import OrtRuntime

        return OrtRuntime(target)
    if target.runtime == "tensorrt":
        from edgeprune.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime(target)
    if target.runtime == "trtexec":
        from edgeprune.runtimes.trtexec import TrtexecRuntime

        return TrtexecRuntime(target)
    if target.runtime == "torch-cuda":
        from edgeprune.runtimes.torch_cuda import TorchCudaRuntime

        return TorchCudaRuntime(target)
    raise RuntimeMissing(f"runtime {target.runtime!r} is not available in this edgeprune")
