"""ONNX export with a numerical check against the PyTorch model, and file hashing for manifests."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections.abc import Sequence
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_hash(model: nn.Module) -> str:
    """A hash of a model's weights (names, shapes, values), independent of how they were serialised."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
