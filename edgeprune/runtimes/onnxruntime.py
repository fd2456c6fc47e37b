"""ONNX Runtime: CPU (and CUDA where the provider is installed) inference, latency and per-node profiles."""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import pandas as pd

from edgeprune.core.targets import Target
from edgeprune.runtimes.base import Latency, Paired, TimedSession, paired_loop, timing_loop, wall_clock

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OrtRuntime:
    """ONNX Runtime configured by a target's ``[onnxruntime]`` and ``[measure]`` tables."""

    name = "onnxruntime"
    source: Literal["onnx", "pt2"] = "onnx"

    def __init__(self, target: Target) -> None:
        self.settings = target.onnxruntime
        self.measure = target.measure
        missing = set(self.settings.providers) - set(ort.get_available_providers())
        if missing:
            raise RuntimeError(
                f"target {target.name!r} asks for ONNX Runtime providers {sorted(missing)}, "
                f"this onnxruntime has {ort.get_available_providers()}"
            )

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": ort.__version__, "providers": ",".join(self.settings.providers)}

    def build(self, exported: Path, folder: Path) -> Path:
        """ONNX Runtime executes the ONNX file itself (it optimises the graph when a session opens)."""
        return exported

    def _session(self, model: Path, profile_dir: Path | None = None) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.intra_op_threads
        opts.inter_op_num_threads = self.settings.inter_op_threads
        opts.graph_optimization_level = _LEVELS[self.settings.graph_optimization]
        opts.log_severity_level = 3
        if profile_dir is not None:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(profile_dir / "ort")
        return ort.InferenceSession(str(model), sess_options=opts, providers=list(self.settings.providers))

    @staticmethod
    def _feeds(session: ort.InferenceSession, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        names = [i.name for i in session.get_inputs()]
        if len(names) != len(inputs):
            raise ValueError(f"model takes {len(names)} inputs, got {len(inputs)}")
        return dict(zip(names, inputs, strict=True))

    def run(self, model: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        session = self._session(model)
        return list(session.run(None, self._feeds(session, inputs)))

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency:
        """Median of ``runs`` timed calls in each of ``repeats`` fresh sessions, after ``warmup`` calls each (host
        clock: ``run`` returns when the outputs are there)."""
        return timing_loop(lambda: self._timed_session(model, inputs), self.measure)

    def compare(self, model: Path, reference: Path, inputs: Sequence[np.ndarray]) -> Paired:
        return paired_loop(lambda: self._timed_session(model, inputs), lambda: self._timed_session(reference, inputs),
                           self.measure)

    @contextlib.contextmanager
    def _timed_session(self, model: Path, inputs: Sequence[np.ndarray]) -> Iterator[TimedSession]:
        session = self._session(model)
        run = functools.partial(session.run, None, self._feeds(session, inputs))
        yield TimedSession(call=run, timed_call=wall_clock(run))

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        """Per-node kernel time from ORT's profiler, averaged over the ``profile_runs`` runs after warm-up."""
        with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as tmp:
            session = self._session(model, profile_dir=Path(tmp))
            feeds = self._feeds(session, inputs)
            for _ in range(self.measure.warmup + self.measure.profile_runs):
                session.run(None, feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
        return node_times(events, self.measure.profile_runs)


def node_times(events: list[dict], runs: int) -> pd.DataFrame:
    """Per-node kernel time (ms per inference) over the last ``runs`` inferences of an ORT profile.

    ORT writes one "Session"/"model_run" event per inference and "Node" events named ``<node>_kernel_time``
    with ``dur`` in µs; warm-up inferences are dropped by starting at the ``runs``-th last model_run. A node's
    time is the median of its runs (times its runs per inference): a few runs preempted by another process
    would otherwise double a sub-millisecond node's mean.
    """
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) < runs:
        raise ValueError(f"ORT profile holds {len(starts)} inferences, expected at least {runs}")
    first = starts[-runs]
    rows = [
        {
            "layer": e["name"].removesuffix("_kernel_time"),
            "op_type": e.get("args", {}).get("op_name", ""),
            "provider": e.get("args", {}).get("provider", ""),
            "dur_us": float(e["dur"]),
        }
        for e in events
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first
    ]
    frame = pd.DataFrame(rows, columns=["layer", "op_type", "provider", "dur_us"])
    table = frame.groupby("layer", sort=False).agg(
        op_type=("op_type", "first"), provider=("provider", "first"), median_us=("dur_us", "median"),
        calls=("dur_us", "size"),
    )
    table["time_ms"] = table["median_us"] * (table["calls"] / runs) / 1000.0
    return table.drop(columns=["median_us", "calls"]).reset_index()
