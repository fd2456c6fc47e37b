"""PyTorch on a CUDA GPU, running a ``torch.export`` program (.pt2, from :func:`edgeprune.artifact.export.export_pt2`).

The baseline before TensorRT, and the runtime for models that do not go through ONNX. Per-layer times come from
the exported program itself: ``torch.export.unflatten`` restores the original module tree, and a pair of timer
marks around every leaf module's forward times it. The timer is injected (CUDA events on the GPU, a wall clock on
the CPU), so the module mapping is testable without a GPU.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.utils._pytree as pytree
from torch import nn

from edgeprune.core.targets import Target
from edgeprune.runtimes.base import (
    Latency,
    Paired,
    RuntimeFailure,
    RuntimeMissing,
    TimedSession,
    paired_loop,
    timing_loop,
)

#: The profile row holding forward time spent outside every leaf module (functional ops in a parent's forward).
OUTSIDE = "(outside leaf modules)"


class Timer(Protocol):
    """Marks points in the stream of work and measures between them once :meth:`synchronize` returned."""

    def mark(self) -> Any: ...

    def elapsed_ms(self, start: Any, end: Any) -> float: ...

    def synchronize(self) -> None: ...


class CudaEventTimer:
    """CUDA events on the current stream: GPU time between marks (including gaps where the GPU waits on Python)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return float(start.elapsed_time(end))

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class WallTimer:
    """Host wall clock: right for CPU execution (and for testing the module mapping without a GPU)."""

    def mark(self) -> int:
        return time.perf_counter_ns()

    def elapsed_ms(self, start: int, end: int) -> float:
        return (end - start) / 1e6

    def synchronize(self) -> None:
        pass


def load_program(path: Path) -> torch.export.ExportedProgram:
    with warnings.catch_warnings():  # torch's own deprecation chatter while deserialising
        warnings.simplefilter("ignore")
        return torch.export.load(str(path))


def module_classes(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Module path -> class name, from the ``nn_module_stack`` torch.export records on every node."""
    classes: dict[str, str] = {}
    for node in program.graph.nodes:
        for path, qualname in (node.meta.get("nn_module_stack") or {}).values():
            classes.setdefault(path, str(qualname).rsplit(".", 1)[-1])
    return classes


def program_outputs(outputs: object) -> list[torch.Tensor]:
    """A program's outputs as a flat list of tensors in the program's own order: torch.export flattens outputs as a
    pytree, so its leaves are the export's outputs (the order ``export_onnx`` and ``check_export`` use too)."""
    leaves = pytree.tree_leaves(outputs)
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"unsupported model output type {type(leaf).__name__}")
    return leaves


def _base(name: str) -> str:
    """unflatten names a module's second call ``path@1``; its time belongs to ``path``."""
    return ".".join(part.split("@", 1)[0] for part in name.split("."))


def module_times(program: torch.export.ExportedProgram, inputs: Sequence[torch.Tensor], *, warmup: int, runs: int,
                 timer: Timer, device: torch.device | None = None) -> pd.DataFrame:
    """Mean time per inference of every leaf module of ``program``, plus one row for the time outside them.

    Rows: ``layer`` and ``module`` (the module path), ``op_type`` (its class), ``calls`` (per inference),
    ``time_ms``. The outside row (``layer`` = :data:`OUTSIDE`, ``module`` '') is the whole forward minus its
    leaves, so the rows sum to the measured forward; ``attrs`` holds that total and the split.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unflat = torch.export.unflatten(program)
    if device is not None:
        unflat = unflat.to(device)
    classes = module_classes(program)
    leaves = [(name, mod) for name, mod in unflat.named_modules() if name and next(mod.children(), None) is None]
    marks: dict[str, list[tuple[Any, Any]]] = {}
    pending: dict[str, Any] = {}
    with torch.inference_mode():
        for _ in range(warmup):
            unflat(*inputs)
        timer.synchronize()
        handles = []
        for name, mod in leaves:
            handles.append(mod.register_forward_pre_hook(lambda *_, n=name: pending.__setitem__(n, timer.mark())))
            handles.append(mod.register_forward_hook(
                lambda *_, n=name: marks.setdefault(_base(n), []).append((pending.pop(n), timer.mark()))))
        try:
            whole = []
            for _ in range(runs):
                start = timer.mark()
                unflat(*inputs)
                whole.append((start, timer.mark()))
            timer.synchronize()
        finally:
            for handle in handles:
                handle.remove()
    total = sum(timer.elapsed_ms(s, e) for s, e in whole) / runs
    rows = [{"layer": path, "module": path, "op_type": classes.get(path, ""), "calls": len(spans) / runs,
             "time_ms": sum(timer.elapsed_ms(s, e) for s, e in spans) / runs} for path, spans in marks.items()]
    inside = sum(r["time_ms"] for r in rows)
    rows.append({"layer": OUTSIDE, "module": "", "op_type": "", "calls": 1.0, "time_ms": total - inside})
    frame = pd.DataFrame(rows, columns=["layer", "module", "op_type", "calls", "time_ms"])
    frame.attrs.update(total_ms=total, attributed_ms=inside, unattributed_ms=total - inside)
    return frame


class TorchCudaRuntime:
    """A .pt2 program on one CUDA device (``[torch_cuda] device``), timed with CUDA events."""

    name = "torch-cuda"
    source: Literal["onnx", "pt2"] = "pt2"

    def __init__(self, target: Target) -> None:
        if not torch.cuda.is_available():
            raise RuntimeMissing(f"runtime 'torch-cuda': no CUDA device (torch {torch.__version__}, built with CUDA "
                                 f"{torch.version.cuda or 'none'})")
        index = target.torch_cuda.device
        if index >= torch.cuda.device_count():
            raise RuntimeMissing(f"runtime 'torch-cuda': no CUDA device {index} "
                                 f"(this machine has {torch.cuda.device_count()})")
        self.device = torch.device("cuda", index)
        self.measure = target.measure

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "cuda": str(torch.version.cuda),
                "gpu": torch.cuda.get_device_name(self.device), "cuda_device": str(self.device.index)}

    def build(self, exported: Path, folder: Path) -> Path:
        """The program runs as exported: nothing to build."""
        if exported.suffix != ".pt2":
            raise RuntimeFailure(f"runtime 'torch-cuda' runs a torch.export program (.pt2, from export_pt2), "
                                 f"got {exported.name}")
        return exported

    def _module(self, model: Path) -> nn.Module:
        return load_program(model).module().to(self.device)

    def _tensors(self, inputs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in inputs]

    def run(self, model: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode(), torch.cuda.device(self.device):
            out = self._module(model)(*self._tensors(inputs))
        return [t.detach().cpu().numpy() for t in program_outputs(out)]

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency:
        """Per repetition a fresh load of the program: ``warmup`` forwards, then ``runs`` forwards each timed with
        CUDA events; latency is the median of the repetitions' medians, p10/p90 over every timed forward."""
        tensors = self._tensors(inputs)
        timer = CudaEventTimer(self.device)
        with torch.inference_mode(), torch.cuda.device(self.device):
            return timing_loop(lambda: self._timed_session(model, tensors, timer), self.measure)

    def compare(self, model: Path, reference: Path, inputs: Sequence[np.ndarray]) -> Paired:
        tensors = self._tensors(inputs)
        timer = CudaEventTimer(self.device)
        with torch.inference_mode(), torch.cuda.device(self.device):
            return paired_loop(lambda: self._timed_session(model, tensors, timer),
                               lambda: self._timed_session(reference, tensors, timer), self.measure)

    @contextlib.contextmanager
    def _timed_session(self, model: Path, tensors: Sequence[torch.Tensor],
                       timer: CudaEventTimer) -> Iterator[TimedSession]:
        """A fresh load of the program whose timed call is one forward between two CUDA events."""
        module = self._module(model)

        def call() -> None:
            module(*tensors)

        def timed_call() -> float:
            start = timer.mark()
            module(*tensors)
            end = timer.mark()
            end.synchronize()
            return timer.elapsed_ms(start, end)

        yield TimedSession(call=call, timed_call=timed_call, settle=timer.synchronize)

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        """Per leaf module, CUDA-event time around its forward, averaged over ``profile_runs`` (see :func:`module_times`)."""
        with torch.cuda.device(self.device):
            return module_times(load_program(model), self._tensors(inputs), warmup=self.measure.warmup,
                                runs=self.measure.profile_runs, timer=CudaEventTimer(self.device), device=self.device)
