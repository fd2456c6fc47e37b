"""Per-layer latency tables, measured on the target in sweep graphs (the approach of NetAdapt and HALP).

A table is kept per :class:`~edgeprune.measure.sites.LayerSignature` (the sites of a model, found in
:mod:`edgeprune.measure.sites`): layers with the same signature share one table, whatever model or group they come
from, so a 3×3 conv at 56×56 in ResNet-18 and ResNet-50 is measured once.

A table holds the layer's time at a grid of symbol values (multiples of the granule on a roughly geometric ladder,
the dense width always included). Tables are measured in *sweep graphs*: up to :data:`SWEEP_VARIANTS` single-layer
variants as independent branches of one graph, each with its own input (no runtime can fuse them), timed by the
runtime's per-layer profile; one session or one engine build measures them all. Every sweep also holds a few
empty-work nodes whose time is the profiler's per-node floor, subtracted from each variant.

Tables live in ``profiles/tables/TARGET-KEY.json``, keyed by the target's settings, the runtime's versions and the
host (or device) facts; every sweep is saved as it finishes, so a killed build resumes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pandas as pd
from onnx import helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field

from edgeprune.core.hashing import digest_json
from edgeprune.measure.profile import row_nodes
from edgeprune.measure.sites import LayerSignature, Site, dim_value

FORMAT = "edgeprune.tables/1"
#: Variants per sweep graph: one ORT session or one TensorRT engine build measures this many layers.
SWEEP_VARIANTS = 100
#: Bytes of weights and inputs per sweep graph (a 512×512 3×3 conv is 9 MB; ONNX files stop at 2 GB).
SWEEP_BYTES = 384 << 20
#: Multiples of the granule a table axis is sampled at (plus the dense width): dense where pruning starts, sparse
#: where few plans go. Bilinear interpolation between samples is exact for a time proportional to cin × cout.
LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512)
#: Nodes per sweep whose work is nil: their median time is the profiler's per-node floor.
FLOOR_NODES = 4
FLOOR_PREFIX = "floor"
#: Nodes per sweep of one fixed layer (a 3×3 conv, 32 channels at 28×28): the machine's speed during that sweep.
#: Tables are normalised to the first sweep's reference time, so a machine that drifts (a shared VM, a GPU clock)
#: does not bend a table whose points were measured in different sweeps.
REFERENCE_NODES = 2
REFERENCE_PREFIX = "reference"
#: Each variant's activations are written by a Relu right before it: in a model a layer reads what the layer before
#: it just wrote, from cache; a graph input read cold from memory makes a small layer look slower than it is.
WARM_PREFIX = "warm"


def axis_grid(width: int, granule: int) -> tuple[int, ...]:
    """The counts a table axis of dense ``width`` is sampled at: ladder multiples of the granule below the width,
    then the width itself; a width no wider than one granule is never cut."""
    if width <= granule:
        return (width,)
    return (*(granule * step for step in LADDER if granule * step < width), width)


# -- sweep graphs ----------------------------------------------------------------------------------------------

Point = tuple[int, ...]


def point_name(point: Point) -> str:
    return "x".join(map(str, point))


def _make_variant(index: int, signature: LayerSignature, point: Point, rng: np.random.Generator
                  ) -> tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto], list[onnx.TensorProto], list[np.ndarray],
                             list[onnx.ValueInfoProto]]:
    values = dict(zip(signature.symbols, point, strict=True))
    prefix = f"v{index:05d}"
    names, inputs, inits, feeds, warm = [], [], [], [], []
    for j, operand in enumerate(signature.operands):
        if operand.kind == "none":
            names.append("")
            continue
        name = f"{prefix}_x{j}"
        names.append(name)
        dims = [dim_value(d, values) for d in operand.dims]
        dtype = helper.tensor_dtype_to_np_dtype(operand.dtype)
        if operand.kind == "input":  # written by a Relu just before, as a layer's input is (in cache) in a model
            inputs.append(helper.make_tensor_value_info(f"{name}_in", operand.dtype, dims))
            feeds.append(rng.standard_normal(dims, dtype=np.float32).astype(dtype, copy=False))
            warm.append(helper.make_node("Relu", [f"{name}_in"], [name], name=f"{WARM_PREFIX}{index:05d}_{j}"))
        elif operand.kind == "weight":
            inits.append(numpy_helper.from_array(
                (0.05 * rng.standard_normal(dims, dtype=np.float32)).astype(dtype, copy=False), name))
        else:
            inits.append(numpy_helper.from_array(np.array(operand.values, dtype=dtype).reshape(dims), name))
    outputs = [f"{prefix}_y{j}" for j in range(signature.outputs)]
    attributes = {**signature.attributes, **{k: values[s] for k, s in signature.symbolic_attributes.items()}}
    node = helper.make_node(signature.op_type, names, outputs, name=prefix, domain=signature.domain or None,
                            **attributes)
    infos = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs]
    return [*warm, node], inputs, inits, feeds, infos


def sweep_graph(variants: Sequence[tuple[LayerSignature, Point]], opsets: Sequence[onnx.OperatorSetIdProto],
                seed: int = 0) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """One graph of independent single-layer branches ``v00000``, ``v00001``…, each with its own inputs, plus the
    floor nodes; and the inputs to feed it."""
    rng = np.random.default_rng(seed)
    nodes, inputs, inits, feeds, outputs = [], [], [], [], []
    for i, (signature, point) in enumerate(variants):
        variant_nodes, ins, its, fds, outs = _make_variant(i, signature, point, rng)
        nodes += variant_nodes
        inputs += ins
        inits += its
        feeds += fds
        outputs += outs
    for i in range(FLOOR_NODES):  # a Relu of 8 floats: no work, only the profiler's and the executor's cost
        x, y = f"{FLOOR_PREFIX}{i}_x", f"{FLOOR_PREFIX}{i}_y"
        nodes.append(helper.make_node("Relu", [x], [y], name=f"{FLOOR_PREFIX}{i}"))
        inputs.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, 8]))
        outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None))
        feeds.append(rng.standard_normal((1, 8), dtype=np.float32))
    for i in range(REFERENCE_NODES):
        x, w, y = (f"{REFERENCE_PREFIX}{i}_{s}" for s in "xwy")
        nodes.append(helper.make_node("Conv", [x, w], [y], name=f"{REFERENCE_PREFIX}{i}", pads=[1, 1, 1, 1]))
        inputs.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, 32, 28, 28]))
        inits.append(numpy_helper.from_array(0.05 * rng.standard_normal((32, 32, 3, 3), dtype=np.float32), w))
        outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None))
        feeds.append(rng.standard_normal((1, 32, 28, 28), dtype=np.float32))
    graph = helper.make_graph(nodes, "edgeprune-sweep", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=list(opsets), producer_name="edgeprune")
    return model, feeds


class SweepTimes(NamedTuple):
    variants: dict[int, float]
    floor_ms: float
    reference_ms: float


def variant_times(frame: pd.DataFrame, count: int) -> SweepTimes:
    """Per variant index, its time in a sweep's per-layer profile (ORT nodes, or engine layers with the ONNX nodes
    they cover); the per-node floor (median of the floor nodes) and the reference layer's time (floor subtracted).
    In a sweep of one variant, nodes of no known name (the runtime's rewrite of it) are that variant's."""
    times: dict[int, float] = {}
    floors: list[float] = []
    references: list[float] = []
    for row in frame.itertuples():
        names = row_nodes(row)
        for name in names:
            if name.startswith(FLOOR_PREFIX):
                floors.append(float(row.time_ms))
            elif name.startswith(REFERENCE_PREFIX):
                references.append(float(row.time_ms))
            elif not name.startswith(WARM_PREFIX):
                numbered = name.startswith("v") and name[1:6].isdigit()
                index = int(name[1:6]) if numbered else 0
                if (numbered or count == 1) and index < count:
                    times[index] = times.get(index, 0.0) + float(row.time_ms) / len(names)
    floor = float(np.median(floors)) if floors else 0.0
    return SweepTimes(times, floor, max(float(np.median(references)) - floor, 0.0) if references else 0.0)


# -- the store ---------------------------------------------------------------------------------------------------

class Table(BaseModel):
    """One signature's measured times (floor subtracted), at every point measured so far."""

    model_config = ConfigDict(extra="forbid")

    signature: LayerSignature
    points: dict[str, float] = Field(default_factory=dict, description="'a' or 'axb' -> ms")

    def at(self, point: Point) -> float | None:
        return self.points.get(point_name(point))


class TableFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    facts: dict[str, object] = Field(default_factory=dict)
    floor_ms: float = 0.0
    reference_ms: float = Field(0.0, description="the reference layer's time in the first sweep: the tables' scale")
    tables: dict[str, Table] = Field(default_factory=dict)
    sweeps: int = Field(0, description="sweep graphs measured into this file (sessions or engine builds)")


class TableStore:
    """``ROOT/tables/TARGET-KEY.json``: the tables of one target, runtime and host; shared by every task."""

    def __init__(self, root: Path, target: str, facts: dict[str, object]) -> None:
        self.facts = facts
        self.path = root / "tables" / f"{target}-{digest_json(facts, 16)}.json"
        self.data = TableFile(facts=facts)
        if self.path.is_file():
            try:
                data = TableFile.model_validate_json(self.path.read_text())
            except ValueError:
                data = None  # unreadable or of another format: measured anew, written over on the first save
            if data is not None and data.format == FORMAT:
                self.data = data

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(self.data.model_dump_json())
        tmp.replace(self.path)

    def table(self, signature: LayerSignature) -> Table:
        return self.data.tables.setdefault(signature.key, Table(signature=signature))

    def missing(self, sites: Iterable[Site], granule: int) -> list[tuple[LayerSignature, Point]]:
        """Every (signature, grid point) the sites need that no table holds yet, each once."""
        wanted: dict[tuple[str, Point], LayerSignature] = {}
        for site in sites:
            if site.signature is None:
                continue
            table = self.data.tables.get(site.signature.key)
            for point in itertools.product(*(axis_grid(w, granule) for w in site.widths)):
                if table is None or table.at(point) is None:
                    wanted.setdefault((site.signature.key, point), site.signature)
        return [(signature, point) for (_, point), signature in wanted.items()]

    def measure(self, wanted: Sequence[tuple[LayerSignature, Point]], measure_sweep: Callable[[onnx.ModelProto,
                list[np.ndarray], int], pd.DataFrame], opsets: Sequence[onnx.OperatorSetIdProto],
                advance: Callable[[int], None] = lambda _: None) -> int:
        """Measure ``wanted`` in sweep graphs (``measure_sweep(model, feeds, index)`` builds and profiles one),
        saving after each; returns the number of sweeps."""
        sweeps = 0

        def sweep(batch: list[tuple[LayerSignature, Point]]) -> list[tuple[LayerSignature, Point]]:
            """Measure ``batch`` in one sweep graph; returns the variants the profile has no time for."""
            nonlocal sweeps
            model, feeds = sweep_graph(batch, opsets, seed=sweeps)
            times, floor, reference = variant_times(measure_sweep(model, feeds, sweeps), len(batch))
            sweeps += 1
            if not self.data.reference_ms:
                self.data.reference_ms = reference
            scale = self.data.reference_ms / reference if reference > 0 else 1.0
            for i, (signature, point) in enumerate(batch):
                if i in times:
                    self.table(signature).points[point_name(point)] = max(times[i] - floor, 0.0) * scale
            n = self.data.sweeps
            self.data.floor_ms = (self.data.floor_ms * n + floor) / (n + 1)
            self.data.sweeps += 1
            self.save()
            return [variant for i, variant in enumerate(batch) if i not in times]

        for batch in batches(wanted):
            # a variant the runtime rewrote under other node names (ORT expands HardSwish into HardSigmoid and Mul)
            # is measured again alone, where every node not the floor's or the reference's is its own
            for variant in sweep(batch):
                if sweep([variant]):
                    raise ValueError(f"the sweep's profile has no time for {variant[0].describe()} at "
                                     f"{point_name(variant[1])}")
            advance(len(batch))
        return sweeps


def batches(wanted: Sequence[tuple[LayerSignature, Point]]) -> Iterable[list[tuple[LayerSignature, Point]]]:
    """``wanted`` in sweeps of at most :data:`SWEEP_VARIANTS` variants and :data:`SWEEP_BYTES` bytes."""
    batch: list[tuple[LayerSignature, Point]] = []
    size = 0
    for signature, point in wanted:
        nbytes = signature.bytes_at(dict(zip(signature.symbols, point, strict=True)))
        if batch and (len(batch) >= SWEEP_VARIANTS or size + nbytes > SWEEP_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((signature, point))
        size += nbytes
    if batch:
        yield batch
