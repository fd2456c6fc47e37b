"""Cost model: what any plan costs on the target, from per-layer latency tables (:mod:`edgeprune.measure.tables`).

Every runtime layer of the dense model's profile is predicted on its own:

* a layer whose shapes no group sets costs what it cost in the dense profile;
* a layer over a table site costs ``floor + (dense − floor) · T(kept) / T(dense)``: its own dense time, scaled by
  how its table's time changes between the dense widths and the plan's keep counts (``floor`` is the profiler's
  per-node cost, which no cut removes). Anchoring on the layer's own dense time keeps what the table cannot see
  (a fused activation, the cache state inside the real model);
* a layer no table describes (a concat, a reshape of a head split) is scaled by its groups' keep ratios.

A keep count inside a granule step costs what the step's upper end costs; between table samples the time is
interpolated bilinearly (exact for a time proportional to cin × cout), never extrapolated. The sum is calibrated
on whole-model measurements (``latency ≈ scale · Σ layers + offset``: session overhead and the profiler's own
overhead are not in the layer times): the dense model, a few random plans, and every measurement the loop makes.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from edgeprune.artifact.export import export_onnx, to_numpy
from edgeprune.core.progress import Progress, silent
from edgeprune.core.targets import Target
from edgeprune.measure.profile import row_nodes
from edgeprune.measure.sites import Site, all_dims, find_sites, probe_counts
from edgeprune.measure.tables import TableStore, axis_grid, point_name
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.importance import MagnitudeImportance
from edgeprune.prune.plan import Plan, cut_to_counts, keep_count
from edgeprune.runtimes import Runtime, get_runtime

FORMAT = "edgeprune.cost/3"  # /3: per-layer tables from sweep graphs
#: The pruning level of the heaviest calibration plan (the others are spread evenly below it).
HEAVIEST = 0.85


class CostModelError(ValueError):
    """A cost model does not fit the plan or model it is asked about."""


class GroupAxis(BaseModel):
    """A group as the cost model sees it: its dense width and the keep counts it can be cut to (the granule's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int
    kept: tuple[int, ...] = Field(description="keep counts a plan can give it, ascending; the last is the width")


class LayerCost(BaseModel):
    """One runtime layer of the dense profile and how its time follows the groups."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: str
    dense_ms: float
    component: str = ""
    signature: str = Field("", description="the table's signature, described (empty: no table)")
    axes: tuple[str, ...] = Field((), description="the group setting each table axis")
    grid: tuple[tuple[int, ...], ...] = Field((), description="per axis, its sampled counts (the width last)")
    table: tuple[float, ...] = Field((), description="ms at every grid point, row-major")
    scaled: tuple[str, ...] = Field((), description="no table: the groups whose mean keep ratio scales the time")


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = 1.0
    offset_ms: float = 0.0
    points: tuple[tuple[float, float], ...] = Field((), description="(Σ predicted layer ms, measured ms) pairs")

    @classmethod
    def fit(cls, points: list[tuple[float, float]]) -> Calibration:
        """Least squares ``measured = scale · layers + offset``; one point (or one x) gives a pure scale."""
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
    """One dense model on one target: its layers' dense times and tables, calibrated; predicts any plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = FORMAT
    task: str
    granule: int
    dense_ms: float = Field(description="the dense model's measured end-to-end latency")
    floor_ms: float = Field(0.0, description="the profiler's per-layer floor on this target")
    groups: dict[str, GroupAxis]
    layers: tuple[LayerCost, ...]
    calibration: Calibration = Calibration()
    provenance: dict[str, object] = Field(default_factory=dict)

    # -- prediction ------------------------------------------------------------------------------------------
    def _check(self, counts: Mapping[str, object]) -> None:
        unknown = set(counts) - set(self.groups)
        if unknown:
            raise CostModelError(f"the cost model has no group {', '.join(sorted(unknown))}")

    def _step(self, key: str, keep: int) -> int:
        """The count a keep count runs as: the upper end of its granule step (a partly filled block runs full)."""
        width = self.groups[key].width
        return width if width <= self.granule else min(width, math.ceil(keep / self.granule) * self.granule)

    def _steps(self, counts: Mapping[str, int]) -> dict[str, int]:
        self._check(counts)
        return {key: self._step(key, keep) for key, keep in counts.items() if keep < self.groups[key].width}

    def _layer(self, layer: LayerCost, steps: Mapping[str, int]) -> float:
        """One layer's predicted time with the groups in ``steps`` at those counts (the others dense)."""
        ratio = 1.0
        if layer.axes and any(a in steps for a in layer.axes):
            ratio = _table_ratio(layer, [steps.get(a, g[-1]) for a, g in zip(layer.axes, layer.grid, strict=True)],
                                 self.floor_ms)
        elif layer.scaled and any(g in steps for g in layer.scaled):
            ratio = float(np.mean([steps.get(g, self.groups[g].width) / self.groups[g].width for g in layer.scaled]))
        return self._scaled(layer.dense_ms, ratio)

    def layer_ms(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Predicted time of every runtime layer with group ``key`` keeping ``counts[key]`` channels."""
        steps = self._steps(counts)
        return {layer.layer: self._layer(layer, steps) for layer in self.layers}

    def saving_ms(self, counts: Mapping[str, int], key: str, keep: int) -> float:
        """``predict_ms(counts) − predict_ms({**counts, key: keep})``, from the layers ``key`` reaches only (what a
        planner asks for every group at every step: on ResNet-50 ten times faster than two predictions)."""
        before, after = self._steps(counts), self._steps({**counts, key: keep})
        reached = [layer for layer in self.layers if key in layer.axes or key in layer.scaled]
        return self.calibration.scale * sum(self._layer(layer, before) - self._layer(layer, after) for layer in reached)

    def _scaled(self, dense_ms: float, ratio):
        """A layer's time at ``ratio`` of its variable part: the profiler's floor is never cut."""
        if ratio == 1.0:  # exactly as measured (floor + (dense - floor) can be an ulp off)
            return dense_ms
        floor = min(self.floor_ms, dense_ms)
        return floor + (dense_ms - floor) * ratio

    def raw_ms(self, counts: Mapping[str, int] | Plan) -> float:
        """Σ predicted layer times, before calibration: the x of a calibration point."""
        return sum(self.layer_ms(plan_counts(counts) if isinstance(counts, Plan) else counts).values())

    def predict_ms(self, counts: Mapping[str, int] | Plan) -> float:
        """Predicted end-to-end latency of a plan (or of per-group keep counts)."""
        return self.calibration.scale * self.raw_ms(counts) + self.calibration.offset_ms

    def component_ms(self, counts: Mapping[str, int] | Plan) -> dict[str, float]:
        """Predicted time per component (its layers' sum, scaled like the whole model; the offset is nobody's)."""
        times = self.layer_ms(plan_counts(counts) if isinstance(counts, Plan) else counts)
        out: dict[str, float] = {}
        for layer in self.layers:
            out[layer.component] = out.get(layer.component, 0.0) + self.calibration.scale * times[layer.layer]
        return out

    def torch_ms(self, counts: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """:meth:`predict_ms` for continuous keep counts, differentiable in them (the tables read bilinearly without
        the granule's steps). Equal to :meth:`predict_ms` at multiples of the granule."""
        self._check(counts)
        total = torch.zeros((), dtype=torch.float64)
        for layer in self.layers:
            if layer.axes and any(a in counts for a in layer.axes):
                at = [torch.as_tensor(counts.get(a, g[-1]), dtype=torch.float64)
                      for a, g in zip(layer.axes, layer.grid, strict=True)]
                ratio = _table_ratio(layer, at, self.floor_ms)
            elif layer.scaled and any(g in counts for g in layer.scaled):
                ratio = sum(torch.as_tensor(counts.get(g, self.groups[g].width), dtype=torch.float64)
                            / self.groups[g].width for g in layer.scaled) / len(layer.scaled)
            else:
                ratio = 1.0
            total = total + self._scaled(layer.dense_ms, ratio)
        return self.calibration.scale * total + self.calibration.offset_ms

    def staircase(self, key: str) -> list[tuple[int, float]]:
        """Predicted latency of the model with only group ``key`` cut, at each keep count a plan can give it."""
        return [(k, self.predict_ms({key: k})) for k in self.groups[key].kept]

    def calibrated(self, points: list[tuple[float, float]]) -> CostModel:
        """This model recalibrated on ``(Σ predicted layer ms, measured end-to-end ms)`` pairs."""
        return self.model_copy(update={"calibration": Calibration.fit(points)})

    # -- storage ---------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Written under a temporary name and renamed: a killed save never leaves a half-written model."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CostModel:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CostModelError(f"cannot read cost model {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise CostModelError(f"cost model {path} is in format {found!r}, this edgeprune reads {FORMAT!r}; "
                                 f"measure it again (edgeprune profile --cost-model --refresh)")
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise CostModelError(f"cannot read cost model {path}: {str(exc).splitlines()[0]}") from exc


def _table_ratio(layer: LayerCost, at: Sequence, floor: float):
    """``T(at) / T(dense)`` of a layer's table (floats, or tensors for a gradient). A table whose dense time is
    lost in the profiler's noise (under a quarter of the floor) scales with the product of the keep ratios."""
    dense = layer.table[-1]
    if dense <= max(0.25 * floor, 1e-6):
        ratio = 1.0
        for x, grid in zip(at, layer.grid, strict=True):
            ratio = ratio * x / grid[-1]
        return ratio
    return _multilinear(layer.table, layer.grid, at) / dense


def _multilinear(table: Sequence[float], grid: Sequence[Sequence[int]], at: Sequence):
    """Multilinear interpolation of ``table`` (row-major over ``grid``) at ``at``, clamped to the grid; torch tensors
    in ``at`` keep the gradient."""
    corners: list[tuple[int, object]] = [(0, 1.0)]  # (flat index so far, weight)
    for g, x in zip(grid, at, strict=True):
        n = len(g)
        if n == 1:
            corners = [(index * n, w) for index, w in corners]
            continue
        xv = min(max(float(x.detach() if isinstance(x, torch.Tensor) else x), g[0]), g[-1])
        i = min(max(bisect.bisect_right(g, xv), 1), n - 1)
        lo, hi = g[i - 1], g[i]
        t = ((x.clamp(lo, hi) if isinstance(x, torch.Tensor) else xv) - lo) / (hi - lo)
        corners = [c for index, w in corners for c in ((index * n + i - 1, w * (1 - t)), (index * n + i, w * t))]
    return sum(w * table[index] for index, w in corners)


def plan_counts(plan: Plan) -> dict[str, int]:
    """Keep counts of the groups a plan cuts (a group at its dense width costs what the dense model costs)."""
    return {key: len(group.keep) for key, group in plan.pruned_groups.items()}


def granule_counts(width: int, granule: int) -> tuple[int, ...]:
    """Every keep count a plan can give a group: the granule's multiples below its width, then the width."""
    return (width,) if width <= granule else (*range(granule, width, granule), width)


def random_counts(plan: Plan, granule: int, rng: random.Random, groups: list[str] | None = None,
                  level: float | None = None) -> dict[str, int]:
    """A random plan's keep counts: one overall ratio (``level``, else uniform in [0, 0.85)) with per-group jitter,
    at the granule — spread over light to heavy pruning, and never uniform, so predictions are tested off the
    sampled axes."""
    level = rng.uniform(0.0, 0.85) if level is None else level
    return {
        key: keep_count(plan.groups[key].width, min(0.9, max(0.0, level + rng.gauss(0.0, 0.15))), granule)
        for key in (groups if groups is not None else plan.groups)
    }


def layer_costs(profile: pd.DataFrame, sites: Sequence[Site], tables: TableStore, granule: int) -> list[LayerCost]:
    """Every row of the dense profile as a :class:`LayerCost`: the table of the heaviest site it covers, else the
    groups of a scaled site, else a constant."""
    by_node = {site.node: site for site in sites}
    out = []
    for row in profile.itertuples():
        component = str(getattr(row, "component", "") or "")
        covered = [by_node[n] for n in row_nodes(row) if n in by_node]
        tabled = []
        for site in covered:
            if site.signature is None:
                continue
            grid = tuple(axis_grid(w, granule) for w in site.widths)
            table = tables.data.tables[site.signature.key]
            values = tuple(table.points[point_name(p)] for p in itertools.product(*grid))  # row-major
            tabled.append((values[-1], site, grid, values))
        if tabled:
            _, site, grid, values = max(tabled, key=lambda item: item[0])
            out.append(LayerCost(layer=str(row.layer), dense_ms=float(row.time_ms), component=component,
                                 signature=site.signature.describe(), axes=site.axes, grid=grid, table=values))
        else:
            scaled = tuple(dict.fromkeys(g for site in covered for g in site.scaled))
            out.append(LayerCost(layer=str(row.layer), dense_ms=float(row.time_ms), component=component,
                                 scaled=scaled))
    return out


class CostModelBuilder:
    """Builds a cost model: sites from one probe export, missing table points in sweep graphs (stored, shared),
    the dense profile's layers, and a calibration on whole-model measurements (journalled in ``folder``, so a
    killed build resumes)."""

    def __init__(self, task_name: str, graph: ComponentGraph, inputs: tuple, target: Target, runtime: Runtime,
                 folder: Path, tables: TableStore, log: Callable[[str], None] = lambda _: None,
                 progress: Progress = silent) -> None:
        """``graph``: the dense model, traced; never pruned (every cut prunes a fork). ``runtime``: the target's."""
        if runtime.source != "onnx":
            raise CostModelError(f"cost models are measured through ONNX; runtime {runtime.name!r} runs "
                                 f"{runtime.source} (not supported yet)")
        self.task_name, self.graph, self.inputs, self.granule = task_name, graph, inputs, target.granule
        self.runtime, self.folder, self.tables, self.log, self.progress = runtime, folder, tables, log, progress
        self.sweep_runtime = get_runtime(target.for_sweeps())
        self.plan = Plan.dense(task_name, graph)
        folder.mkdir(parents=True, exist_ok=True)
        self.journal = folder / "calibration.jsonl"
        self.done: dict[str, float] = {}
        if self.journal.is_file():
            for line in self.journal.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.done[record["id"]] = record["ratio"]
        self.new_points = 0
        self.sweeps = 0
        self.tables_s = 0.0  # seconds spent measuring table points

    def pruned(self, counts: Mapping[str, int]) -> torch.nn.Module:
        """A fork of the dense model cut to ``counts`` (the highest-magnitude channels kept)."""
        graph = self.graph.fork()
        cut_to_counts(graph, self.plan, counts, MagnitudeImportance("joint", "min"))
        return graph.model

    def sites(self, dense_onnx: Path) -> list[Site]:
        """The dense model's sites, from one probe export (every group cut to a width no tensor has)."""
        dense = onnx.shape_inference.infer_shapes(onnx.load(str(dense_onnx)))
        widths = {key: info.width for key, info in self.graph.groups.items()}
        probes = probe_counts({k: w for k, w in widths.items() if w > 1}, all_dims(dense),
                              {key: info.divisor for key, info in self.graph.groups.items()})
        path = export_onnx(self.pruned(probes), self.inputs, self.folder / "probe.onnx")
        probe = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        path.unlink()
        return find_sites(dense, probe, probes, widths)

    def measure_tables(self, sites: Sequence[Site], opsets: Sequence[onnx.OperatorSetIdProto]) -> None:
        """Measure the table points the sites need and no stored table has, in sweep graphs."""
        wanted = self.tables.missing(sites, self.granule)
        self.new_points = len(wanted)
        if not wanted:
            return

        def measure_sweep(model: onnx.ModelProto, feeds: list[np.ndarray], index: int) -> pd.DataFrame:
            path = self.folder / f"sweep-{index}.onnx"
            onnx.save(model, str(path))
            try:
                return self.sweep_runtime.profile(self.sweep_runtime.build(path, self.folder), feeds)
            finally:
                path.unlink(missing_ok=True)

        advance = self.progress("measuring layer tables (variants)", len(wanted))
        started = time.perf_counter()
        self.sweeps = self.tables.measure(wanted, measure_sweep, opsets, advance)
        self.tables_s = time.perf_counter() - started

    def relative(self, sample_id: str, counts: Mapping[str, int], dense_built: Path) -> float:
        """Latency of the model cut to ``counts`` relative to the dense model's, measured in pairs (journalled)."""
        if sample_id not in self.done:
            path = export_onnx(self.pruned(counts), self.inputs, self.folder / "calibration.onnx")
            self.done[sample_id] = self.runtime.compare(self.runtime.build(path, self.folder), dense_built,
                                                        to_numpy(self.inputs)).ratio
            with self.journal.open("a") as fh:
                fh.write(json.dumps({"id": sample_id, "ratio": self.done[sample_id]}) + "\n")
        return self.done[sample_id]

    def build(self, dense_onnx: Path, dense_profile: pd.DataFrame, dense_ms: float, calibration_plans: int = 3,
              seed: int = 0) -> CostModel:
        """``dense_onnx``/``dense_profile``/``dense_ms``: the dense model exported, profiled (rows attributed to
        components) and timed on the target. Calibration plans are random plans at pruning levels spread evenly up to
        :data:`HEAVIEST`, measured relative to the dense model (:meth:`Runtime.compare`) and scaled by
        ``dense_ms``."""
        sites = self.sites(dense_onnx)
        tabled = sum(site.signature is not None for site in sites)
        signatures = len({site.signature.key for site in sites if site.signature is not None})
        self.log(f"{len(sites)} layers change with the groups: {tabled} in {signatures} layer tables, "
                 f"{len(sites) - tabled} scaled")
        self.measure_tables(sites, onnx.load(str(dense_onnx), load_external_data=False).opset_import)
        self.log(f"layer tables: {self.new_points} new measurements in {self.sweeps} sweep graphs "
                 f"({self.tables_s:.0f} s), the rest reused from {self.tables.path}")
        groups = {key: GroupAxis(width=info.width, kept=granule_counts(info.width, self.granule))
                  for key, info in self.graph.groups.items()}
        model = CostModel(task=self.task_name, granule=self.granule, dense_ms=dense_ms,
                          floor_ms=self.tables.data.floor_ms, groups=groups,
                          layers=tuple(layer_costs(dense_profile, sites, self.tables, self.granule)),
                          provenance={"tables": str(self.tables.path), "new_table_points": self.new_points,
                                      "sweep_graphs": self.sweeps, "tables_s": round(self.tables_s, 1),
                                      "scaled_layers": {
                                          s.node: s.why for s in sites if s.signature is None}})
        rng = random.Random(seed)
        points = [(model.raw_ms({}), dense_ms)]
        advance = self.progress("calibrating on whole-model latencies", calibration_plans)
        dense_built = self.runtime.build(dense_onnx, self.folder)
        for i in range(calibration_plans):  # levels spread to the heaviest pruning: the offset is pinned at both ends
            level = HEAVIEST * (i + 1) / calibration_plans
            counts = random_counts(self.plan, self.granule, rng, sorted(groups), level)
            points.append((model.raw_ms(counts), dense_ms * self.relative(f"calibration-{i}", counts, dense_built)))
            advance(1)
        return model.calibrated(points)
