"""What every runtime shares: the :class:`Runtime` protocol, :class:`Latency`, the two errors, and the one timing
loop (warm-up, timed runs, repeated in fresh sessions).

A runtime only says how to open a fresh session of a model and how to time one call in it (a host clock for ORT,
CUDA events for TensorRT and torch-CUDA); :func:`timing_loop` owns the rest, so every runtime's latency means the
same statistic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from edgeprune.core.targets import MeasureSettings


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Latency:
        """The inverse of :meth:`to_dict` (derived fields are recomputed): a latency that travelled as JSON."""
        return cls(tuple(data["repeats_ms"]), data["p10_ms"], data["p90_ms"])


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

    def compare(self, model: Path, reference: Path, inputs: Sequence[np.ndarray]) -> Paired:
        """``model``'s latency relative to ``reference``'s, timed alternately (see :func:`paired_loop`)."""
        ...

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        """One row per runtime layer/node: ``layer``, ``op_type``, ``time_ms`` (mean per inference).

        Engine runtimes add ``onnx_nodes`` (list of the ONNX nodes a layer covers) and keep time that maps to no
        node as rows of their own, totalled in ``attrs["unattributed_ms"]``.
        """
        ...


class Paired(NamedTuple):
    """A model timed against a reference, alternately: the median ratio, each side's median latency and the ratio of
    every repetition."""

    ratio: float
    model_ms: float
    reference_ms: float
    ratios: tuple[float, ...] = ()

    def latency(self, reference_ms: float) -> dict[str, object]:
        """The model's latency as a manifest records it, on the scale of a reference latency measured earlier
        (``ratio × reference_ms``: what the reference measured then, this model would have measured then too)."""
        values = self.ratios or (self.ratio,)
        return {"median_ms": self.ratio * reference_ms, "spread": (max(values) - min(values)) / self.ratio,
                "relative": self.ratio, "repeat_ratios": list(values), "model_ms": self.model_ms,
                "reference_ms": self.reference_ms}


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class TimedSession:
    """One fresh session of a model on fixed inputs (an ORT session, a TensorRT execution context, a loaded program),
    as :func:`timing_loop` drives it; the runtime that opened it says how one call is made and timed."""

    #: One inference, untimed (warm-up); it may return before the device has finished it.
    call: Callable[[], object]
    #: One inference and its time in ms, by the runtime's own clock.
    timed_call: Callable[[], float]
    #: Waits until the warm-up inferences have finished (a stream synchronisation); nothing for a synchronous call.
    settle: Callable[[], object] = _nothing


def wall_clock(call: Callable[[], object]) -> Callable[[], float]:
    """``call`` timed by the host's monotonic clock, in ms: right where a call returns once its work is done."""

    def timed() -> float:
        start = time.perf_counter_ns()
        call()
        return (time.perf_counter_ns() - start) / 1e6

    return timed


#: Timed runs a repetition makes even when they take longer than ``repeat_s``.
MIN_RUNS = 10


def timing_loop(fresh: Callable[[], AbstractContextManager[TimedSession]], measure: MeasureSettings) -> Latency:
    """Latency as every runtime reports it: in each of ``repeats`` fresh sessions, ``warmup`` untimed calls, then the
    median of ``runs`` timed calls (both cut short by ``repeat_s``); p10/p90 over every timed call of every
    repetition.

    Fresh sessions make the repetitions independent (allocation, caches, tactic state), so their spread says how
    repeatable the number is; ``fresh`` opens one and closes it when its repetition ends.
    """
    medians: list[float] = []
    samples: list[np.ndarray] = []
    for _ in range(measure.repeats):
        with fresh() as session:
            deadline = time.monotonic() + measure.repeat_s / 3
            for i in range(measure.warmup):
                session.call()
                if i >= 2 and time.monotonic() > deadline:
                    break
            session.settle()
            times = np.empty(measure.runs)
            deadline = time.monotonic() + measure.repeat_s
            count = 0
            while count < measure.runs and (count < MIN_RUNS or time.monotonic() < deadline):
                times[count] = session.timed_call()
                count += 1
            times = times[:count]
        medians.append(float(np.median(times)))
        samples.append(times)
    everything = np.concatenate(samples)
    return Latency(tuple(medians), float(np.percentile(everything, 10)), float(np.percentile(everything, 90)))


def paired_loop(fresh_model: Callable[[], AbstractContextManager[TimedSession]],
                fresh_reference: Callable[[], AbstractContextManager[TimedSession]], measure: MeasureSettings) -> Paired:
    """Two models timed call by call in alternation (which goes first alternates too), in ``repeats`` pairs of fresh
    sessions: the ratio is the median over calls of model time / reference time, then over repetitions.

    A shared machine's speed drifts between seconds (±30 % on the 2-core VM this was written on): two separate
    latencies each catch another speed, while the two calls of one alternation see the same one. Measured
    2026-12-01 on ResNet-50 against one pruned variant: 0.543 four times in a row by call, 0.518–0.551 with whole
    repetitions alternated."""
    ratios: list[float] = []
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(measure.repeats):
        with fresh_model() as model, fresh_reference() as reference:
            deadline = time.monotonic() + 2 * measure.repeat_s / 3
            for i in range(measure.warmup):
                model.call()
                reference.call()
                if i >= 2 and time.monotonic() > deadline:
                    break
            model.settle()
            reference.settle()
            a, b = np.empty(measure.runs), np.empty(measure.runs)
            deadline = time.monotonic() + 2 * measure.repeat_s
            count = 0
            while count < measure.runs and (count < MIN_RUNS or time.monotonic() < deadline):
                if count % 2:
                    b[count] = reference.timed_call()
                    a[count] = model.timed_call()
                else:
                    a[count] = model.timed_call()
                    b[count] = reference.timed_call()
                count += 1
            a, b = a[:count], b[:count]
        ratios.append(float(np.median(a / b)))
        mine.append(float(np.median(a)))
        theirs.append(float(np.median(b)))
    return Paired(statistics.median(ratios), statistics.median(mine), statistics.median(theirs), tuple(ratios))

