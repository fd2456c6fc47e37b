"""Cost model: per group, what keeping k channels costs on the target — measured, not counted in FLOPs.

Built by perturbing one group at a time from the dense model: the group is cut to each multiple of the target's
granule, the perturbed model is exported and profiled on the target, and every runtime layer whose tensor shapes
the cut changes (found from the ONNX graphs, so unaffected layers never pick up measurement noise) records its
time. That per-group table (a LUT) is sampled at the granule; a keep count inside a step costs what the step's
upper end costs (a partly filled block of channels runs as a full one), and values are interpolated only between
samples of a sparser sweep (``stride`` > 1), never extrapolated.

A plan is predicted layer by layer: a layer's fixed cost plus its variable dense time times, for every group that
reshapes it, that group's measured ratio at its keep count. Products, not sums, because a convolution between two
pruned groups shrinks with both (halving both keeps a quarter of its work); the fixed cost (see
:func:`fixed_costs`) is not scaled. The layer sum is then calibrated against whole-model latency measurements
(``latency ≈ scale · Σ layers + offset``: session overhead and the profiler's own overhead are not in the layer
times).

Per-layer profiles miss what a cut saves outside the layers' own kernels: in a model of many small layers
(an agent's 96 Gemms of 128 channels) the profiler's per-node overhead swamps each layer's change, so the profile
says a cut saves nothing while the whole model gets faster. Every cut is therefore also timed end to end, and
what that measurement sees beyond the layers' prediction becomes the group's *residual*: a straight line in the
channels cut (through zero at the dense width, fitted over the group's samples so one noisy measurement cannot
make a step), added to the layer sum.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgeprune.artifact.export import export_onnx, to_numpy
from edgeprune.measure.profile import ORT_FUSED, node_modules
from edgeprune.prune.graph import ComponentGraph, component_of
from edgeprune.prune.importance import MagnitudeImportance
from edgeprune.prune.plan import Plan, cut_to_counts, keep_count
from edgeprune.runtimes import Runtime

FORMAT = "edgeprune.cost/2"  # /2: residuals from whole-model timings of every cut


class CostModelError(ValueError):
    """A cost model does not fit the plan or model it is asked about."""


class GroupLUT(BaseModel):
    """One group's measured table: per runtime layer it reshapes, the layer's time at each sampled keep count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int
    kept: tuple[int, ...] = Field(description="sampled keep counts, ascending; the last is the dense width")
    layers: dict[str, tuple[float, ...]] = Field(description="layer -> ms at each sampled keep count")
    residual_ms: tuple[float, ...] = Field(
        (), description="at each sampled keep count, what whole-model timing saw beyond the layers (layer-sum ms)")


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = 1.0
    offset_ms: float = 0.0
    points: tuple[tuple[float, float], ...] = Field((), description="(Σ predicted layer ms, measured ms) pairs")

    @classmethod
    def fit(cls, points: list[tuple[float, float]]) -> Calibration:
        """Least squares ``measured = scale · layers + offset``; one point gives a pure scale."""
        if not points:
            return cls()
        x, y = np.array(points).T
        if len(points) == 1 or np.ptp(x) < 1e-9:
            return cls(scale=float(y.mean() / x.mean()), points=tuple(points))
        scale, offset = np.polyfit(x, y, 1)
        return cls(scale=float(scale), offset_ms=float(offset), points=tuple(points))

    def errors(self) -> list[float]:
        """Relative error of the fitted line at each calibration point."""
        return [abs(self.scale * x + self.offset_ms - y) / y for x, y in self.points]


class CostModel(BaseModel):
    """Per-group latency LUTs of one dense model on one target, calibrated; predicts any plan's latency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = FORMAT
    task: str
    granule: int
    dense_layers: dict[str, float] = Field(description="runtime layer -> ms in the dense model")
    dense_ms: float = Field(description="the dense model's measured end-to-end latency")
    groups: dict[str, GroupLUT]
    fixed_layers: dict[str, float] = Field(
        default_factory=dict, description="layer -> time that no cut removes (kernel launch, the untouched axis)")
    layer_components: dict[str, str] = Field(
        default_factory=dict, description="layer -> the component its module belongs to ('' when none)")
    calibration: Calibration = Calibration()
    provenance: dict[str, object] = Field(default_factory=dict)

    # -- prediction ------------------------------------------------------------------------------------------
    def _at(self, lut: GroupLUT, values: tuple[float, ...], keep: int) -> float:
        """``values`` (one per sampled keep count) at ``keep``: a partly filled granule step costs its upper end."""
        step = lut.width if lut.width <= self.granule else min(lut.width, math.ceil(keep / self.granule) * self.granule)
        if step < lut.kept[0]:
            raise CostModelError(f"keep {keep} is below the smallest sampled count {lut.kept[0]} of this group")
        return float(np.interp(step, lut.kept, values))

    def _ratio(self, lut: GroupLUT, layer: str, keep: int) -> float:
        """Measured ratio of ``layer``'s variable time (above its fixed cost) with its group at ``keep`` channels."""
        times = lut.layers[layer]
        fixed = self.fixed_layers.get(layer, 0.0)
        dense = times[-1] - fixed
        value = self._at(lut, times, keep) - fixed
        return value / dense if dense > 0 else 1.0

    def residual_ms(self, counts: Mapping[str, int]) -> float:
        """Σ over cut groups of what whole-model timing saw beyond the layers (layer-sum ms; see the module doc)."""
        return sum(self._at(self.groups[key], self.groups[key].residual_ms, keep) for key, keep in counts.items()
                   if keep < self.groups[key].width and self.groups[key].residual_ms)

    def layer_ms(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Predicted time of every runtime layer with group ``key`` keeping ``counts[key]`` channels."""
        unknown = set(counts) - set(self.groups)
        if unknown:
            raise CostModelError(f"the cost model has no LUT for groups {', '.join(sorted(unknown))}")
        fixed = self.fixed_layers
        variable = {layer: t - fixed.get(layer, 0.0) for layer, t in self.dense_layers.items()}
        for key, keep in counts.items():
            lut = self.groups[key]
            if keep >= lut.width:
                continue
            for layer in lut.layers:
                variable[layer] *= self._ratio(lut, layer, keep)
        return {layer: fixed.get(layer, 0.0) + t for layer, t in variable.items()}

    def predict_ms(self, counts: Mapping[str, int] | Plan) -> float:
        """Predicted end-to-end latency of a plan (or of per-group keep counts)."""
        return self.calibration.scale * self.raw_ms(counts) + self.calibration.offset_ms

    def component_ms(self, counts: Mapping[str, int] | Plan) -> dict[str, float]:
        """Predicted time per component (its layers' sum, scaled like the whole model; the offset and the groups'
        residuals are nobody's)."""
        times = self.layer_ms(plan_counts(counts) if isinstance(counts, Plan) else counts)
        out: dict[str, float] = {}
        for layer, ms in times.items():
            component = self.layer_components.get(layer, "")
            out[component] = out.get(component, 0.0) + self.calibration.scale * ms
        return out

    def torch_ms(self, counts: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """:meth:`predict_ms` for continuous keep counts, differentiable in them: each LUT is read by linear
        interpolation between its samples instead of as a staircase, so a gradient exists between granule steps.
        Equal to :meth:`predict_ms` wherever every count is a sampled one (e.g. a multiple of the granule)."""
        unknown = set(counts) - set(self.groups)
        if unknown:
            raise CostModelError(f"the cost model has no LUT for groups {', '.join(sorted(unknown))}")
        fixed = self.fixed_layers
        variable: dict[str, torch.Tensor | float] = {layer: t - fixed.get(layer, 0.0) for layer, t in self.dense_layers.items()}
        residual: torch.Tensor | float = 0.0
        for key, keep in counts.items():
            lut = self.groups[key]
            for layer, times in lut.layers.items():
                dense = times[-1] - fixed.get(layer, 0.0)
                if dense > 0:
                    variable[layer] = variable[layer] * (_interp(keep, lut.kept, times) - fixed.get(layer, 0.0)) / dense
            if lut.residual_ms:
                residual = residual + _interp(keep, lut.kept, lut.residual_ms)
        raw = sum(fixed.values()) + sum(variable.values()) + residual
        return self.calibration.scale * torch.as_tensor(raw) + self.calibration.offset_ms

    def staircase(self, key: str) -> list[tuple[int, float]]:
        """Predicted latency of the model with only group ``key`` cut, at each sampled keep count."""
        return [(k, self.predict_ms({key: k})) for k in self.groups[key].kept]

    def calibrated(self, points: list[tuple[float, float]]) -> CostModel:
        """This model recalibrated on ``(Σ predicted layer ms, measured end-to-end ms)`` pairs."""
        return self.model_copy(update={"calibration": Calibration.fit(points)})

    def raw_ms(self, counts: Mapping[str, int] | Plan) -> float:
        """Σ predicted layer times plus the groups' residuals, before calibration: the x of a calibration point."""
        counts = plan_counts(counts) if isinstance(counts, Plan) else counts
        return sum(self.layer_ms(counts).values()) + self.residual_ms(counts)

    # -- storage ---------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Written under a temporary name and renamed: a killed save never leaves a half-written model."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CostModel:
        try:
            model = cls.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise CostModelError(f"cannot read cost model {path}: {str(exc).splitlines()[0]}") from exc
        if model.format != FORMAT:
            raise CostModelError(f"cost model {path} is in format {model.format!r}, this edgeprune reads {FORMAT!r}; "
                                 f"measure it again (edgeprune profile --cost-model --refresh)")
        return model


def _interp(x: torch.Tensor | float, xs: Sequence[float], ys: Sequence[float]) -> torch.Tensor:
    """Piecewise-linear ``ys(xs)`` at ``x``, differentiable in ``x``; held constant outside the samples."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if len(xs) == 1:
        return torch.tensor(float(ys[0]), dtype=torch.float64)
    grid, values = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    x = x.clamp(grid[0], grid[-1])
    i = int(torch.searchsorted(grid, x.detach().reshape(1), right=True).clamp(1, len(xs) - 1))
    return values[i - 1] + (x - grid[i - 1]) / (grid[i] - grid[i - 1]) * (values[i] - values[i - 1])


def plan_counts(plan: Plan) -> dict[str, int]:
    """Keep counts of the groups a plan cuts (a group at its dense width costs what the dense model costs)."""
    return {key: len(group.keep) for key, group in plan.pruned_groups.items()}


def fixed_costs(luts: Mapping[str, GroupLUT]) -> dict[str, float]:
    """Per layer that several groups reshape, the time no cut removes: where its measured time-vs-channels line
    meets zero channels (median over its groups, kept between 0 and 90 % of its fastest measured time).

    A conv whose input and output channels are both halved keeps a quarter of its *work*, but all of its fixed
    cost; ratios of whole times would scale the fixed part too and predict it faster than it is.
    """
    lines: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for lut in luts.values():
        for layer, times in lut.layers.items():
            lines.setdefault(layer, []).append((np.array(lut.kept) / lut.width, np.array(times)))
    fixed: dict[str, float] = {}
    for layer, curves in lines.items():
        if len(curves) < 2:
            continue  # one group: its measured times are used as they are, a fixed part changes nothing
        intercepts = [float(np.polyfit(x, y, 1)[1]) for x, y in curves if len(x) >= 2]
        floor = 0.9 * min(float(y.min()) for _, y in curves)
        fixed[layer] = min(max(float(np.median(intercepts)), 0.0), floor) if intercepts else 0.0
    return fixed


def sample_counts(width: int, granule: int, stride: int = 1) -> list[int]:
    """Keep counts a group is measured at: every ``stride``-th multiple of the granule below its width (the
    smallest always included), then the width. Groups no wider than a granule are never cut (see keep_count)."""
    if width <= granule:
        return [width]
    steps = list(range(granule, width, granule))
    picked = steps[::stride] if stride > 1 else steps
    return sorted({steps[0], *picked, width})


def node_shapes(path: Path) -> dict[str, tuple[tuple[int | str, ...], ...]]:
    """ONNX node name -> the shapes of its inputs and outputs (after shape inference)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes: dict[str, tuple[int | str, ...]] = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return {n.name: tuple(shapes.get(t, ()) for t in [*n.input, *n.output]) for n in graph.node}


def covered_nodes(row: object) -> list[str]:
    """The ONNX nodes a runtime layer (a profile row) covers: an engine layer lists them, an ORT node is one
    (ORT names a node it fused from several after the first)."""
    nodes = getattr(row, "onnx_nodes", None)
    return list(nodes) if nodes is not None else [str(row.layer).removeprefix(ORT_FUSED)]


def random_counts(plan: Plan, granule: int, rng: random.Random, groups: list[str] | None = None) -> dict[str, int]:
    """A random plan's keep counts: one overall ratio in [0, 0.85) with per-group jitter, at the granule —
    spread over light to heavy pruning, and never uniform, so predictions are tested off the sampled axes."""
    level = rng.uniform(0.0, 0.85)
    return {
        key: keep_count(plan.groups[key].width, min(0.9, max(0.0, level + rng.gauss(0.0, 0.15))), granule)
        for key in (groups if groups is not None else plan.groups)
    }


def with_residuals(model: CostModel, cut_ms: Mapping[str, Sequence[float | None]]) -> CostModel:
    """``model`` with each group's residual fitted from ``cut_ms``, the whole-model latencies of its sampled cuts
    (every sampled keep count but the dense width, in order).

    A cut's residual is its measured saving, in layer-sum ms (divided by dense latency / dense layer sum), minus
    the saving its layers predict. The group's residual line is the least-squares slope of those over the fraction
    of channels cut, through zero at the dense width.
    """
    to_layer_ms = model.raw_ms({}) / model.dense_ms
    luts = {}
    for key, lut in model.groups.items():
        measured = list(cut_ms.get(key, ()))
        if len(measured) != len(lut.kept) - 1 or None in measured:  # e.g. a journal from before residuals
            luts[key] = lut
            continue
        cut = np.array([(lut.width - k) / lut.width for k in lut.kept[:-1]])
        gap = np.array([(ms - model.dense_ms) * to_layer_ms - (model.raw_ms({key: k}) - model.raw_ms({}))
                        for k, ms in zip(lut.kept[:-1], measured, strict=True)])
        slope = float(cut @ gap / (cut @ cut)) if len(cut) else 0.0
        luts[key] = lut.model_copy(update={"residual_ms": (*(slope * cut).tolist(), 0.0)})
    return model.model_copy(update={"groups": luts})


class CostModelBuilder:
    """Measures a cost model; every measurement is appended to ``folder/samples.jsonl`` so a killed build resumes
    where it stopped."""

    def __init__(self, task_name: str, graph: ComponentGraph, inputs: tuple, runtime: Runtime, granule: int,
                 folder: Path, log: Callable[[str], None] = lambda _: None, repeats: int = 3) -> None:
        """``graph``: the dense model, traced; it is never pruned (every cut prunes a fork of it)."""
        self.task_name, self.graph, self.model, self.inputs = task_name, graph, graph.model, inputs
        self.runtime, self.granule, self.folder, self.log, self.repeats = runtime, granule, folder, log, repeats
        if runtime.source != "onnx":
            raise CostModelError(f"cost models are measured through ONNX; runtime {runtime.name!r} runs "
                                 f"{runtime.source} (not supported yet)")
        self.plan = Plan.dense(task_name, graph)
        folder.mkdir(parents=True, exist_ok=True)
        self.journal = folder / "samples.jsonl"
        self.done: dict[str, dict] = {}
        if self.journal.is_file():
            for line in self.journal.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.done[record["id"]] = record
        self.dense_onnx = export_onnx(self.model, inputs, folder / "dense.onnx")
        self.dense_shapes = node_shapes(self.dense_onnx)
        self.node_modules = node_modules(self.dense_onnx)

    def _record(self, record: dict) -> dict:
        self.done[record["id"]] = record
        with self.journal.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        return record

    def pruned(self, counts: Mapping[str, int]) -> nn.Module:
        if not counts:
            return self.model
        graph = self.graph.fork()  # the dense graph, traced once: every cut prunes a copy of it
        cut_to_counts(graph, self.plan, counts, MagnitudeImportance("joint", "min"))
        return graph.model

    @functools.cached_property
    def dense_built(self) -> Path:
        return self.runtime.build(self.dense_onnx, self.folder)

    def _export(self, counts: Mapping[str, int], name: str) -> tuple[Path, Path]:
        """The model cut to ``counts``, exported and built; the dense model was exported once, at the start."""
        if not counts:
            return self.dense_onnx, self.dense_built
        path = export_onnx(self.pruned(counts), self.inputs, self.folder / f"{name}.onnx")
        return path, self.runtime.build(path, self.folder)

    def profile(self, sample_id: str, counts: Mapping[str, int]) -> dict:
        """Per-layer times of the model cut to ``counts`` (median over ``repeats`` fresh profiles: one profile of a
        sub-millisecond layer can be off by 20 % when the machine is busy), with the layers the cut reshaped."""
        if sample_id in self.done:
            return self.done[sample_id]
        exported, path = self._export(counts, "sample")
        frames = [self.runtime.profile(path, to_numpy(self.inputs)) for _ in range(self.repeats)]
        latency_ms = self.runtime.latency(path, to_numpy(self.inputs)).median_ms
        times = pd.concat(frames).groupby("layer", sort=False)["time_ms"].median().astype(float).to_dict()
        shapes = node_shapes(exported)
        changed = sorted(row.layer for row in frames[0].itertuples()
                         if any(shapes.get(n, ()) != self.dense_shapes.get(n, ()) for n in covered_nodes(row)))
        # runtime-inserted layers (no ONNX node) are timed but never rescaled
        unmapped = [row.layer for row in frames[0].itertuples()
                    if not any(n in self.dense_shapes for n in covered_nodes(row))]
        components = {row.layer: component_of(next((self.node_modules[n] for n in covered_nodes(row)
                                                    if self.node_modules.get(n)), ""), self.graph.components)
                      for row in frames[0].itertuples()}
        return self._record({"id": sample_id, "counts": dict(counts), "layers": times, "changed": changed,
                             "unmapped": unmapped, "components": components, "latency_ms": latency_ms})

    def latency(self, sample_id: str, counts: Mapping[str, int]) -> dict:
        if sample_id in self.done:
            return self.done[sample_id]
        latency = self.runtime.latency(self._export(counts, "calibration")[1], to_numpy(self.inputs))
        return self._record({"id": sample_id, "counts": dict(counts), "latency_ms": latency.median_ms})

    def build(self, stride: int = 1, groups: list[str] | None = None, calibration_plans: int = 6,
              seed: int = 0) -> CostModel:
        keys = sorted(groups if groups is not None else self.graph.groups)
        unknown = set(keys) - set(self.graph.groups)
        if unknown:
            raise CostModelError(f"not prunable groups of this model: {', '.join(sorted(unknown))}")
        # the dense profile is taken twice (first and last) and averaged: slow drift of the machine cancels
        dense_a = self.profile("dense", {})
        luts: dict[str, GroupLUT] = {}
        cut_ms: dict[str, list[float | None]] = {}
        for key in keys:
            width = self.graph.groups[key].width
            counts = sample_counts(width, self.granule, stride)
            samples = {k: self.profile(f"{key}@{k}", {key: k}) for k in counts[:-1]}
            cut_ms[key] = [samples[k].get("latency_ms") for k in counts[:-1]]
            self.log(f"group {key}: {len(samples)} cuts profiled and timed")
            changed = sorted({layer for s in samples.values() for layer in s["changed"]})
            luts[key] = GroupLUT(width=width, kept=tuple(counts), layers={
                layer: (*(samples[k]["layers"].get(layer, 0.0) for k in counts[:-1]), dense_a["layers"][layer])
                for layer in changed if layer in dense_a["layers"]
            })
        dense_b = self.profile("dense-end", {})
        dense_layers = {layer: (t + dense_b["layers"].get(layer, t)) / 2 for layer, t in dense_a["layers"].items()}
        # the dense LUT column must be the same dense time the ratios are taken against
        luts = {key: lut.model_copy(update={"layers": {
            layer: (*times[:-1], dense_layers[layer]) for layer, times in lut.layers.items()}})
            for key, lut in luts.items()}
        dense_ms = self.latency("latency-dense", {})["latency_ms"]
        model = CostModel(task=self.task_name, granule=self.granule, dense_layers=dense_layers, dense_ms=dense_ms,
                          groups=luts, fixed_layers=fixed_costs(luts), layer_components=dense_a.get("components", {}),
                          provenance={"stride": stride, "profiled_cuts": sum(len(lut.kept) - 1 for lut in luts.values()),
                                      "unmapped_layers": dense_a["unmapped"]})
        model = with_residuals(model, cut_ms)
        rng = random.Random(seed)
        points = [(model.raw_ms({}), dense_ms)]
        for i in range(calibration_plans):
            counts = random_counts(self.plan, self.granule, rng, keys)
            measured = self.latency(f"calibration-{i}", counts)["latency_ms"]
            points.append((model.raw_ms(counts), measured))
        self.log(f"calibrated on {len(points)} whole-model measurements")
        return model.calibrated(points)
