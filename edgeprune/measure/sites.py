"""Sites: the ONNX nodes of a model whose shapes its groups set, and the layer signatures their tables are keyed by.

A *site* is one ONNX node of a model whose tensor shapes a group sets. Which dims a group sets is read from one
*probe* export: every group is cut to a width no tensor of the dense model has (e.g. 61 of 64), so after shape
inference each changed dim names its group. The node with its changed dims made symbols (``a``, ``b``) is a
:class:`LayerSignature`: op, attributes, operand shapes, dtypes: what a layer's time depends on, and the key of its
latency table (:mod:`edgeprune.measure.tables`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field

from edgeprune.core.hashing import digest_json

SYMBOLS = "ab"


class Operand(BaseModel):
    """One input of a layer: an activation (a graph input of the sweep), a weight (random, stored in the graph as
    runtimes pre-pack weights), a constant (its values copied) or an omitted optional input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["input", "weight", "const", "none"]
    dtype: int = onnx.TensorProto.FLOAT
    dims: tuple[int | str, ...] = ()
    values: tuple[float, ...] | None = None


class LayerSignature(BaseModel):
    """What a layer's time depends on: op, attributes, operands (symbols where a group sets a dim)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op_type: str
    domain: str = ""
    opset: int
    attributes: dict[str, object] = Field(default_factory=dict)
    symbolic_attributes: dict[str, str] = Field(default_factory=dict, description="attribute -> symbol (depthwise)")
    operands: tuple[Operand, ...]
    outputs: int = 1

    @property
    def key(self) -> str:
        return digest_json(self.model_dump(mode="json"), 16)

    @property
    def symbols(self) -> tuple[str, ...]:
        found = {d for o in self.operands for d in o.dims if isinstance(d, str)} | set(self.symbolic_attributes.values())
        return tuple(s for s in SYMBOLS if s in found)

    def describe(self) -> str:
        """E.g. ``Conv 3x3 s2 (1,a,56,56)->(b,a,3,3)``: for tables and reports."""
        shapes = " ".join("(" + ",".join(map(str, o.dims)) + ")" for o in self.operands if o.kind != "none")
        kernel = self.attributes.get("kernel_shape")
        strides = self.attributes.get("strides")
        parts = [self.op_type, *(["x".join(map(str, kernel))] if kernel else []),
                 *([f"s{max(strides)}"] if strides and max(strides) > 1 else []),
                 *(["dw"] if self.symbolic_attributes else []), shapes]
        return " ".join(parts)

    def bytes_at(self, values: Mapping[str, int]) -> int:
        """Bytes of weights and inputs of the variant at ``values``."""
        size = 0
        for operand in self.operands:
            if operand.kind in ("input", "weight"):
                size += 4 * math.prod(dim_value(d, values) for d in operand.dims)
        return size


def dim_value(dim: int | str, values: Mapping[str, int]) -> int:
    """A dim of a signature at ``values`` (a symbol's value, or the fixed size)."""
    return values[dim] if isinstance(dim, str) else dim


class Site(BaseModel):
    """A node of one model and how its shapes follow the groups: a table (``signature`` with a group per symbol) or,
    for a node no table can describe, the groups its time is scaled with (``scaled``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str
    signature: LayerSignature | None = None
    axes: tuple[str, ...] = Field((), description="the group setting each of the signature's symbols")
    widths: tuple[int, ...] = Field((), description="each symbol's dense value")
    scaled: tuple[str, ...] = ()
    why: str = ""


# -- finding sites ---------------------------------------------------------------------------------------------

def probe_counts(widths: Mapping[str, int], taken: set[int], divisors: Mapping[str, int] | None = None
                 ) -> dict[str, int]:
    """Per group a width just below its own that no tensor dim of the dense model has and no other group got, and
    that is a multiple of the group's divisor (a GroupNorm over 16 channels in 4 groups cannot take 14)."""
    counts: dict[str, int] = {}
    used = set(taken)
    for key, width in sorted(widths.items()):
        step = (divisors or {}).get(key, 1)
        for cut in range(step, width, step):
            if width - cut not in used:
                counts[key] = width - cut
                used.add(width - cut)
                break
    return counts


def _tensor_facts(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int], dict[str, np.ndarray]]:
    """Shapes and element types of every tensor (shape-inferred), and the values of every constant."""
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        tensor = info.type.tensor_type
        dtypes[info.name] = tensor.elem_type
        if tensor.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    constants: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        constants[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for name, value in constants.items():
        shapes[name] = tuple(value.shape)
        dtypes[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
    return shapes, dtypes, constants


def all_dims(model: onnx.ModelProto) -> set[int]:
    """Every dim value of every tensor of a (shape-inferred) model: what probe widths must avoid."""
    return {d for shape in _tensor_facts(model)[0].values() for d in shape}


def find_sites(dense: onnx.ModelProto, probe: onnx.ModelProto, probes: Mapping[str, int],
               widths: Mapping[str, int]) -> list[Site]:
    """The sites of ``dense`` (shape-inferred), read against ``probe``: the same model with group ``key`` cut to
    ``probes[key]`` channels (shape-inferred). Nodes no group touches are not sites."""
    group_of = {count: key for key, count in probes.items()}
    d_shapes, d_types, d_consts = _tensor_facts(dense)
    p_shapes, _, p_consts = _tensor_facts(probe)
    d_nodes = [n for n in dense.graph.node if n.op_type != "Constant"]
    p_nodes = [n for n in probe.graph.node if n.op_type != "Constant"]
    if [n.op_type for n in d_nodes] == [n.op_type for n in p_nodes]:
        pairs = list(zip(d_nodes, p_nodes, strict=True))
    else:  # the cut changed the graph's structure: match by name where the op agrees
        by_name = {n.name: n for n in p_nodes}
        pairs = [(n, by_name[n.name]) for n in d_nodes if n.name in by_name and by_name[n.name].op_type == n.op_type]
    opset = next((o.version for o in dense.opset_import if o.domain in ("", "ai.onnx")), 17)
    sites = []
    for node, twin in pairs:
        site = _site(node, twin, opset, group_of, widths, (d_shapes, d_types, d_consts), (p_shapes, p_consts))
        if site is not None:
            sites.append(site)
    return sites


def _site(node: onnx.NodeProto, twin: onnx.NodeProto, opset: int, group_of: Mapping[int, str],
          widths: Mapping[str, int], dense: tuple, probe: tuple) -> Site | None:
    d_shapes, d_types, d_consts = dense
    p_shapes, p_consts = probe
    symbols: dict[str, str] = {}  # group -> symbol, in order of appearance
    touched: list[str] = []
    why = ""

    def template(d: tuple[int, ...], p: tuple[int, ...]) -> tuple[int | str, ...] | None:
        nonlocal why
        if len(d) != len(p):
            why = "its rank changes with a cut"
            return None
        dims: list[int | str] = []
        for a, b in zip(d, p, strict=True):
            if a == b:
                dims.append(a)
            elif b in group_of:
                key = group_of[b]
                touched.append(key)
                symbols.setdefault(key, SYMBOLS[len(symbols)] if len(symbols) < len(SYMBOLS) else "?")
                dims.append(symbols[key])
            else:  # a dim derived from groups' widths (a concat, a head split): no table
                why = why or f"a dim ({a}) that is no single group's width changes"
                dims.append("?")
        return tuple(dims)

    operands = []
    for name, other in zip(node.input, twin.input, strict=False):
        if not name:
            operands.append(Operand(kind="none"))
            continue
        if name not in d_shapes or other not in p_shapes:
            why = why or "an input of unknown shape"
            continue
        dims = template(d_shapes[name], p_shapes[other]) or ()
        symbolic = any(isinstance(d, str) for d in dims)
        if name not in d_consts:
            if d_types.get(name) != onnx.TensorProto.FLOAT:
                why = why or "a non-float activation"
            operands.append(Operand(kind="input", dtype=d_types.get(name, onnx.TensorProto.FLOAT), dims=dims))
            continue
        value = d_consts[name]
        if value.dtype.kind == "f" and (symbolic or value.size > 16):  # weights: random values of the right shape
            operands.append(Operand(kind="weight", dtype=d_types[name], dims=dims))
            continue
        if other not in p_consts or not np.array_equal(value, p_consts[other]):
            why = why or "a constant input (a shape) changes with a cut"
        operands.append(Operand(kind="const", dtype=d_types[name], dims=dims,
                                values=tuple(value.astype(np.float64).ravel().tolist())))
    if operands and not any(o.kind == "input" for o in operands):
        return None  # weights and constants only (a slice of an LSTM's weights): folded when the runtime loads it
    changed_out = False
    for name, other in zip(node.output, twin.output, strict=False):
        a, b = d_shapes.get(name), p_shapes.get(other)
        if a is None or b is None:
            why = why or "an output of unknown shape"
        elif a != b:
            changed_out = True
            template(a, b)
    if not touched and not changed_out:
        return None
    attributes: dict[str, object] = {}
    symbolic: dict[str, str] = {}
    twin_attrs = {a.name: a for a in twin.attribute}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS, onnx.AttributeProto.TENSOR,
                         onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.TENSORS):
            why = why or f"attribute {attr.name!r} holds a tensor or graph"
            continue
        other = helper.get_attribute_value(twin_attrs[attr.name]) if attr.name in twin_attrs else value
        if value != other:
            if isinstance(other, int) and other in group_of and group_of[other] in symbols:
                symbolic[attr.name] = symbols[group_of[other]]
                continue
            why = why or f"attribute {attr.name!r} changes with a cut"
        attributes[attr.name] = value.decode() if isinstance(value, bytes) else (
            [v.decode() if isinstance(v, bytes) else v for v in value] if isinstance(value, list) else value)
    groups = tuple(dict.fromkeys(touched))
    if len(symbols) > len(SYMBOLS):
        why = why or f"{len(symbols)} groups set its shapes (a table has at most {len(SYMBOLS)} axes)"
    if why:
        return Site(node=node.name, scaled=groups, why=why)
    signature = LayerSignature(op_type=node.op_type, domain=node.domain, opset=opset, attributes=attributes,
                               symbolic_attributes=symbolic, operands=tuple(operands), outputs=len(node.output))
    if len(signature.symbols) < len(symbols):  # a group's probe width in an output only: a derived dim (a concat's
        return Site(node=node.name, scaled=groups,  # sum of widths) that happens to equal it
                    why="an output dim that is no single group's width changes")
    axes = tuple(symbols)
    return Site(node=node.name, signature=signature, axes=axes, widths=tuple(widths[k] for k in axes))
