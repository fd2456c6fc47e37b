"""export_pt2 and the torch-cuda runtime: the module mapping on the CPU, the CUDA parts where a GPU exists."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.artifact.export import export_pt2, to_numpy
from edgeprune.core.targets import load_target
from edgeprune.runtimes import RuntimeFailure, RuntimeMissing, get_runtime
from edgeprune.runtimes.torch_cuda import OUTSIDE, TorchCudaRuntime, WallTimer, load_program, module_times

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Shared(nn.Module):
    """A module called twice, a nested Sequential, and functional ops outside any leaf module."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.head = nn.Sequential(nn.Linear(8, 4), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin(torch.relu(self.lin(x))) * 2)


class Ticks:
    """A timer whose marks are 0, 1, 2, ...: every span is the number of marks taken inside it, so times are exact."""

    def __init__(self) -> None:
        self.counter = itertools.count()

    def mark(self) -> int:
        return next(self.counter)

    def elapsed_ms(self, start: int, end: int) -> float:
        return float(end - start)

    def synchronize(self) -> None:
        pass


@pytest.fixture
def shared() -> Shared:
    torch.manual_seed(0)
    return Shared().eval()


def test_export_pt2_round_trips(tmp_path: Path, two_part, image) -> None:
    path = export_pt2(two_part, image, tmp_path / "m.pt2")
    assert path.is_file()
    with torch.no_grad():
        torch.testing.assert_close(load_program(path).module()(*image), two_part(*image), rtol=1e-5, atol=1e-6)


def test_leaf_modules_are_timed_and_named(tmp_path: Path, two_part, image) -> None:
    program = load_program(export_pt2(two_part, image, tmp_path / "m.pt2"))
    frame = module_times(program, image, warmup=1, runs=2, timer=Ticks())
    assert frame["layer"].tolist() == [*(f"encoder.{i}" for i in range(6)), *(f"decoder.{i}" for i in range(4)), OUTSIDE]
    rows = frame.set_index("layer")
    assert rows.loc["encoder.0", "op_type"] == "Conv2d" and rows.loc["encoder.1", "op_type"] == "BatchNorm2d"
    assert rows.loc["decoder.1", "op_type"] == "ConvTranspose2d" and rows.loc["decoder.1", "module"] == "decoder.1"
    # each leaf spans its own two marks (1 tick); the forward spans its 2 * 10 leaf marks and its end mark (21)
    assert (rows.drop(OUTSIDE)["time_ms"] == 1.0).all()
    assert rows.loc[OUTSIDE, "time_ms"] == 21.0 - 10.0 and rows.loc[OUTSIDE, "module"] == ""
    assert frame.attrs == {"total_ms": 21.0, "attributed_ms": 10.0, "unattributed_ms": 11.0}
    assert frame["time_ms"].sum() == frame.attrs["total_ms"]


def test_a_module_called_twice_is_one_row_with_two_calls(tmp_path: Path, shared: Shared) -> None:
    x = torch.rand(2, 8)
    program = load_program(export_pt2(shared, (x,), tmp_path / "s.pt2"))
    rows = module_times(program, (x,), warmup=0, runs=3, timer=Ticks()).set_index("layer")
    assert rows.index.tolist() == ["lin", "head.0", "head.1", OUTSIDE]
    assert rows.loc["lin", "calls"] == 2.0 and rows.loc["lin", "time_ms"] == 2.0  # two calls of one mark span each
    assert rows.loc["head.0", "op_type"] == "Linear" and rows.loc["head.1", "op_type"] == "Tanh"
    wall = module_times(program, (x,), warmup=1, runs=2, timer=WallTimer())
    assert (wall["time_ms"].drop(index=len(wall) - 1) > 0).all()
    assert wall["time_ms"].sum() == pytest.approx(wall.attrs["total_ms"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_without_cuda_the_runtime_is_missing() -> None:
    with pytest.raises(RuntimeMissing, match=r"runtime 'torch-cuda': no CUDA device \(torch .*\)"):
        get_runtime(load_target("gpu-torch"))


@CUDA
def test_cuda_run_latency_and_profile(tmp_path: Path, two_part, image) -> None:
    target = load_target("gpu-torch")
    target = target.model_copy(update={"measure": target.measure.model_copy(
        update={"warmup": 3, "runs": 10, "repeats": 2, "profile_runs": 3})})
    runtime = get_runtime(target)
    assert isinstance(runtime, TorchCudaRuntime) and runtime.source == "pt2"
    path = runtime.build(export_pt2(two_part, image, tmp_path / "m.pt2"), tmp_path)
    with pytest.raises(RuntimeFailure, match="runs a torch.export program"):
        runtime.build(tmp_path / "m.onnx", tmp_path)
    (out,) = runtime.run(path, to_numpy(image))
    with torch.no_grad():
        np.testing.assert_allclose(out, two_part(*image).numpy(), rtol=1e-3, atol=1e-4)
    latency = runtime.latency(path, to_numpy(image))
    assert len(latency.repeats_ms) == 2 and latency.median_ms > 0
    paired = runtime.compare(path, path, to_numpy(image))
    assert len(paired.ratios) == 2 and 0.5 < paired.ratio < 2.0
    frame = runtime.profile(path, to_numpy(image))
    assert {"layer", "op_type", "time_ms"} <= set(frame.columns)
    assert frame.set_index("layer").loc["encoder.0", "op_type"] == "Conv2d"
    assert frame["time_ms"].sum() == pytest.approx(frame.attrs["total_ms"])
    assert "gpu" in runtime.versions()
