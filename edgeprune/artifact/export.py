"""ONNX export with a numerical check against the PyTorch model, and file hashing for manifests."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.runtimes import Runtime

# torch's ONNX exporter warns on every export that torchvision (absent here) is not installed
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ExportMismatch(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond tolerance."""


def flat_outputs(outputs: object) -> list[torch.Tensor]:
    """A model's outputs as a flat list of tensors, in export order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in flat_outputs(item)]
    if isinstance(outputs, dict):
        return [t for key in outputs for t in flat_outputs(outputs[key])]
    raise TypeError(f"unsupported model output type {type(outputs).__name__}")


def to_numpy(inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in inputs]


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, *, dynamo: bool = True) -> Path:
    """Export ``model(*inputs)`` to one self-contained ONNX file (weights inside, fixed shapes).

    The dynamo exporter (torch's default) keeps each node's module path in its metadata, which profiling
    uses to attribute time to modules; its progress chatter is silenced.
    """
    model.eval()
    names = [f"input_{i}" for i in range(len(inputs))]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=False, input_names=names, verbose=False)
        else:
            torch.onnx.export(model, inputs, str(path), dynamo=False, input_names=names)
    return path


def export_pt2(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """``torch.export`` ``model(*inputs)`` to a .pt2 archive (fixed shapes): what the torch-cuda runtime runs.

    The program keeps each node's module path (``nn_module_stack``), so per-module GPU times need no ONNX.
    """
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, inputs)
    torch.export.save(program, str(path))
    return path


def check_export(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    runtime: Runtime,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> float:
    """Run the exported model on ``runtime`` and compare with PyTorch; return the largest absolute error.

    Raises :class:`ExportMismatch` when any output differs by more than ``atol + rtol * |torch|``.
    """
    with torch.no_grad():
        expected = [t.numpy() for t in flat_outputs(model(*inputs))]
    got = runtime.run(path, to_numpy(inputs))
    if len(got) != len(expected):
        raise ExportMismatch(f"ONNX model has {len(got)} outputs, PyTorch {len(expected)}")
    worst = 0.0
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if e.shape != g.shape:
            raise ExportMismatch(f"output {i}: ONNX shape {g.shape} != PyTorch shape {e.shape}")
        err = np.abs(e - g)
        worst = max(worst, float(err.max(initial=0.0)))
        if np.any(err > atol + rtol * np.abs(e)):
            raise ExportMismatch(f"output {i}: ONNX differs from PyTorch by up to {err.max():.3g} (atol {atol}, rtol {rtol})")
    return worst


#: Output tolerance (rtol, atol) of a built model against PyTorch, by the target's precision.
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-3, 1e-4), "fp16": (2e-2, 2e-2), "int8": (1e-1, 1e-1)}


@dataclass(frozen=True)
class Artifact:
    """One model made ready for a runtime: what was exported (ONNX or .pt2: what profiles are attributed
    through) and what the runtime runs (the same file, or a TensorRT engine built from it)."""

    exported: Path
    built: Path
    max_abs_error: float


def build_artifact(model: nn.Module, inputs: tuple[torch.Tensor, ...], runtime: Runtime, folder: Path, name: str,
                   precision: str = "fp32") -> Artifact:
    """Export ``model`` in the runtime's source format, build it, and check its outputs against PyTorch."""
    suffix = ".onnx" if runtime.source == "onnx" else ".pt2"
    exporter = export_onnx if runtime.source == "onnx" else export_pt2
    exported = exporter(model, inputs, folder / f"{name}{suffix}")
    built = runtime.build(exported, folder)
    rtol, atol = TOLERANCES[precision]
    return Artifact(exported, built, check_export(model, inputs, built, runtime, rtol=rtol, atol=atol))
