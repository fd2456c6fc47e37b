"""trtexec's and TensorRT's files, parsed: ``--exportProfile``, ``--exportLayerInfo`` (or the engine inspector's JSON),
``--exportOutput``, the log (performance summary, version banner, error line), and the attribution of engine-layer
time to ONNX nodes; plus what a TensorRT build needs to know about its ONNX (:class:`OnnxFacts`, precision flags).

Pure functions of their inputs: no process, no device, no TensorRT import, so the files are produced on the device
and read anywhere, and both the trtexec and the Python-API runtime share these parsers. An engine layer fuses
several ONNX nodes, so its time is mapped to ONNX nodes (from the parser's Metadata stamp when the engine has it,
else from the layer name) and from there to PyTorch modules; format copies TensorRT inserts are folded into the
layer they feed, so their cost lands on the layer whose chosen format caused them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np
import pandas as pd

from edgeprune.runtimes.base import RuntimeFailure

#: The ONNX parser stamps a layer's Metadata with one of these per source node, joined by \x1f when fused.
_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*)\]")
_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$")
_FOREIGN = re.compile(r"^\{ForeignNode\[(.*)\]\}$")
#: Shuffles TensorRT adds around a node (``reshape_after_Gemm_48``) belong to that node.
_AROUND = re.compile(r"^(?:reshape|shuffle|transpose)_(?:after|before)_(.+)$")
#: Separators inside fused names: vertical fusion, ranges, and the PWN(...) pointwise wrapper.
_SPLIT = re.compile(r"\s+\+\s+|\s*->\s*|\s*,\s*|PWN\(|[()]")
#: trtexec's performance-summary lines: ``[I] GPU Compute Time: min = 0.9 ms, ...`` / ``[I] Throughput: 1020 qps``.
_SUMMARY_KEYS = (
    "Throughput", "Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency",
    "Total Host Walltime", "Total GPU Compute Time",
)
_SUMMARY = re.compile(r"\[I\] (" + "|".join(map(re.escape, _SUMMARY_KEYS)) + r"): (.*)$")
_STAT = re.compile(r"([\w()%]+) = ([-+\d.eE]+)")
_NUMBER = re.compile(r"^([-+\d.eE]+)")
_VERSION = re.compile(r"\[TensorRT v(\d+)\]")
_DEVICE_LINE = re.compile(r"\[I\] (?:Selected Device|Device): (.+)$", re.MULTILINE)


def _read_json(path: Path | str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None


def load_profile_json(path: Path | str) -> pd.DataFrame:
    """``--exportProfile`` JSON -> one row per engine layer; ``time_ms`` is trtexec's per-inference average."""
    return parse_profile(_read_json(path), str(path))


def parse_profile(data: Any, source: str) -> pd.DataFrame:
    """A parsed ``--exportProfile`` list (or the same built from ``IProfiler`` callbacks) -> one row per layer."""
    if not (isinstance(data, list) and data and isinstance(data[0], dict) and "count" in data[0]):
        raise ValueError(f"{source}: not a trtexec profile (expected a list starting with {{'count': N}})")
    rows = []
    for i, entry in enumerate(data[1:], start=1):
        if not isinstance(entry, dict) or not {"name", "averageMs"} <= entry.keys():
            raise ValueError(f"{source}: entry {i} lacks 'name'/'averageMs': {str(entry)[:80]}")
        rows.append({
            "layer": entry["name"],
            "time_ms": float(entry["averageMs"]),
            "median_ms": float(entry.get("medianMs", math.nan)),
            "percentage": float(entry.get("percentage", math.nan)),
        })
    frame = pd.DataFrame(rows, columns=["layer", "time_ms", "median_ms", "percentage"])
    frame.attrs.update(count=int(data[0]["count"]), source=source)
    return frame


def metadata_nodes(metadata: str) -> list[str]:
    """ONNX node names from a layer's Metadata (``[ONNX Layer: a]\\x1f[ONNX Layer: b]``); [] when absent."""
    return [m.group(1) for part in metadata.split("\x1f") if (m := _ONNX_LAYER.search(part))]


def _tensor_format(tensor: dict[str, Any]) -> str:
    """TRT ≤ 10 writes one "Format/Datatype" string; TRT 11 splits it into "Format" and "Datatype"."""
    if "Format/Datatype" in tensor:
        return str(tensor["Format/Datatype"])
    return " ".join(str(tensor[k]) for k in ("Format", "Datatype") if k in tensor)


def load_layer_info(path: Path | str) -> pd.DataFrame:
    """``--exportLayerInfo`` JSON -> one row per engine layer (see :func:`parse_layer_info`)."""
    return parse_layer_info(_read_json(path), str(path))


def parse_layer_info(data: Any, source: str) -> pd.DataFrame:
    """Parsed layer-info JSON (``--exportLayerInfo`` or the engine inspector's) -> one row per engine layer.

    Layers may be plain names (no detailed profiling verbosity): then only ``layer`` is filled. Engine I/O
    names go to ``attrs["io_tensors"]`` from TRT ≤ 10's "Bindings" list or TRT 11's "I/O Tensors" objects.
    """
    if not (isinstance(data, dict) and isinstance(data.get("Layers"), list)):
        msg = f"{source}: not a TensorRT layer-info JSON (expected an object with a 'Layers' list)"
        raise ValueError(msg)  # noqa: TRY004 - a malformed file, not a caller's type error
    rows = []
    for i, layer in enumerate(data["Layers"]):
        if isinstance(layer, str):
            layer = {"Name": layer}
        if not isinstance(layer, dict) or "Name" not in layer:
            raise ValueError(f"{source}: layer {i} has no 'Name': {str(layer)[:80]}")
        tensors = [*layer.get("Inputs", []), *layer.get("Outputs", [])]
        rows.append({
            "layer": layer["Name"],
            "layer_type": layer.get("LayerType", ""),
            "inputs": [t["Name"] for t in layer.get("Inputs", [])],
            "outputs": [t["Name"] for t in layer.get("Outputs", [])],
            "formats": [_tensor_format(t) for t in tensors],
            "onnx_nodes": metadata_nodes(str(layer.get("Metadata", ""))),
            "tactic": layer.get("TacticName", layer.get("TacticValue", "")),
        })
    frame = pd.DataFrame(rows, columns=["layer", "layer_type", "inputs", "outputs", "formats", "onnx_nodes", "tactic"])
    io = data.get("I/O Tensors", data.get("Bindings", []))
    frame.attrs.update(io_tensors=[t["Name"] if isinstance(t, dict) else str(t) for t in io], source=source)
    return frame


def onnx_nodes_of_layer(name: str, metadata_nodes: list[str] | None = None) -> tuple[list[str], str]:
    """(ONNX nodes, kind) of an engine layer; kind is "layer", "reformat", "foreign" or "unknown".

    Metadata is exact and wins when given. From the name alone a range ``A -> B`` or a ForeignNode
    ``[first...last]`` only yields its endpoints: expanding it needs the ONNX graph. A reformat copy
    yields the nodes of the layer it feeds.
    """
    if m := _REFORMAT.match(name):
        return (list(metadata_nodes) if metadata_nodes else onnx_nodes_of_layer(m.group(1))[0]), "reformat"
    if m := _FOREIGN.match(name):
        return (list(metadata_nodes) if metadata_nodes else [n for n in m.group(1).split("...") if n]), "foreign"
    if metadata_nodes:
        return list(metadata_nodes), "layer"
    nodes = []
    for token in _SPLIT.split(name):
        token = token.strip()
        if token:
            around = _AROUND.match(token)
            nodes.append(around.group(1) if around else token)
    return (nodes, "layer") if nodes else ([], "unknown")


def consumer_of(name: str) -> str | None:
    """The layer a "Reformatting CopyNode ... to X" copy serves (X), None for any other layer."""
    m = _REFORMAT.match(name)
    return m.group(1) if m else None


def attribute_engine(
    profile: pd.DataFrame, layer_info: pd.DataFrame | None = None, node_modules: dict[str, str] | None = None
) -> pd.DataFrame:
    """One row per engine layer: measured ``own_ms`` and attributed ``time_ms`` with its ONNX nodes and module.

    A reformat copy's time moves to its consumer's row (``time_ms`` 0 on the copy, ``attributed_to`` the
    consumer), so summing ``time_ms`` still gives the measured total. A copy whose consumer is not in the
    profile keeps its own time. Module is '' when no node of the layer has a known module: that time is
    reported as unattributed by :func:`summarize`, never dropped.
    """
    stamped = dict(zip(layer_info["layer"], layer_info["onnx_nodes"])) if layer_info is not None else {}
    types = dict(zip(layer_info["layer"], layer_info["layer_type"])) if layer_info is not None else {}
    modules = node_modules or {}
    layers = list(profile["layer"])
    present = set(layers)
    parsed = [onnx_nodes_of_layer(name, stamped.get(name)) for name in layers]
    owners = [c if (c := consumer_of(name)) in present else name for name in layers]
    own = [float(t) for t in profile["time_ms"]]
    attributed = dict.fromkeys(layers, 0.0)
    for owner, ms in zip(owners, own):
        attributed[owner] += ms
    frame = pd.DataFrame({
        "layer": layers,
        "op_type": [types.get(name, "") for name in layers],
        "own_ms": own,
        "time_ms": [attributed[name] if owner == name else 0.0 for name, owner in zip(layers, owners)],
        "onnx_nodes": [nodes for nodes, _ in parsed],
        "kind": [kind for _, kind in parsed],
        "attributed_to": owners,
    })
    frame["module"] = [next((modules[n] for n in nodes if modules.get(n)), "") for nodes in frame["onnx_nodes"]]
    total = frame["time_ms"].sum()
    frame["share"] = frame["time_ms"] / total if total > 0 else 0.0
    frame.attrs.update(profile.attrs)
    return frame


def summarize(frame: pd.DataFrame, by: Literal["module", "onnx_nodes"] = "module") -> dict[str, float]:
    """Total measured time and how much of it reached a module (or, ``by="onnx_nodes"``, any ONNX node).

    attributed + unattributed == total, checked: time is moved between rows, never dropped.
    """
    total = float(frame["own_ms"].sum())
    if by == "module":
        reached = frame["module"] != ""
    else:
        reached = frame["onnx_nodes"].map(len) > 0
    attributed = float(frame.loc[reached, "time_ms"].sum())
    unattributed = float(frame.loc[~reached, "time_ms"].sum())
    if not math.isclose(attributed + unattributed, total, rel_tol=1e-9, abs_tol=1e-12):
        raise AssertionError(f"attribution lost time: {attributed} + {unattributed} != {total}")
    return {"total_ms": total, "attributed_ms": attributed, "unattributed_ms": unattributed}


def engine_profile(
    profile: pd.DataFrame, layer_info: pd.DataFrame | None = None, onnx_nodes: Collection[str] | None = None
) -> pd.DataFrame:
    """A runtime profile of an engine, the same for trtexec and the Python API: one row per engine layer.

    Rows are :func:`attribute_engine`'s (``layer``, ``op_type``, ``own_ms``, ``time_ms``, ``onnx_nodes`` as a
    list, ``kind``, ``attributed_to``). With the ONNX graph's node names, names that are not nodes (TensorRT's
    own layers, a parsed name that only looks like one) are dropped from ``onnx_nodes``, so a layer mapping to
    no real node is counted in ``attrs["unattributed_ms"]`` rather than credited to nothing.
    """
    frame = attribute_engine(profile, layer_info)
    if onnx_nodes is not None:
        known = set(onnx_nodes)
        frame["onnx_nodes"] = [[n for n in nodes if n in known] for nodes in frame["onnx_nodes"]]
    frame.attrs.update(summarize(frame, by="onnx_nodes"))
    return frame


def parse_perf_summary(log_text: str) -> dict[str, float | dict[str, float]]:
    """trtexec's performance summary: statistics lines -> {stat: value}, single values (Throughput) -> float.

    Units are trtexec's own (ms for times, qps for throughput, s for walltimes); a key printed twice keeps
    the last one, which is the summary trtexec prints at the end.
    """
    summary: dict[str, float | dict[str, float]] = {}
    for line in log_text.splitlines():
        m = _SUMMARY.search(line.rstrip())
        if not m:
            continue
        key, rest = m.groups()
        stats = _STAT.findall(rest)
        if stats:
            summary[key] = {stat: float(value) for stat, value in stats}
        elif number := _NUMBER.match(rest.strip()):
            summary[key] = float(number.group(1))
    return summary


def trt_version(log_text: str) -> str | None:
    """TensorRT version from trtexec's banner ``[TensorRT v100500]`` (10.5.0) or ``[TensorRT v8601]`` (8.6.1)."""
    m = _VERSION.search(log_text)
    if not m:
        return None
    n = int(m.group(1))
    if n >= 100000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    if n >= 1000:
        return f"{n // 1000}.{n // 100 % 10}.{n % 100}"
    return str(n)


def device_name(log_text: str) -> str | None:
    """The GPU trtexec ran on, from its ``[I] Selected Device: …`` (or ``[I] Device: …``) line."""
    m = _DEVICE_LINE.search(log_text)
    return m.group(1).strip() if m else None


def last_log_line(text: str) -> str:
    """The line that says why trtexec failed: its last error line, else its last line that is not the banner."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "[E]" in line or line.startswith("Error")]
    if errors:
        return errors[-1]
    plain = [line for line in lines if not line.startswith("&&&&")]
    return plain[-1] if plain else (lines[-1] if lines else "no output")


def load_outputs(path: Path | str, facts: OnnxFacts | None) -> list[np.ndarray]:
    """``--exportOutput`` JSON file -> arrays in ONNX order (see :func:`parse_outputs`)."""
    return parse_outputs(_read_json(path), facts, str(path))


def parse_outputs(data: Any, facts: OnnxFacts | None, source: str) -> list[np.ndarray]:
    """``--exportOutput`` JSON (``[{"name", "dimensions": "1x10", "values": [...]}]``) -> arrays in ONNX order."""
    if not isinstance(data, list) or not all(isinstance(d, dict) and {"name", "values"} <= d.keys() for d in data):
        raise RuntimeFailure(f"{source}: not a trtexec --exportOutput file")
    by_name = {d["name"]: d for d in data}
    order = [o["name"] for o in facts.outputs] if facts else list(by_name)
    dtypes = {o["name"]: o["dtype"] for o in facts.outputs} if facts else {}
    missing = [n for n in order if n not in by_name]
    if missing:
        raise RuntimeFailure(f"{source}: trtexec wrote no output named {missing[0]!r}")
    arrays = []
    for name in order:
        entry = by_name[name]
        dims = [int(d) for d in str(entry.get("dimensions", "")).split("x") if d]
        arrays.append(np.asarray(entry["values"], dtype=dtypes.get(name, "float32")).reshape(dims))
    return arrays


# --- What a TensorRT build needs to know about its ONNX (shared by the trtexec and Python-API runtimes) -------

@dataclass(frozen=True)
class OnnxFacts:
    """The ONNX model an engine was built from: its I/O, node names and numeric types.

    Saved beside the plan (``<plan>.onnx.json``) because a plan alone names neither its ONNX nodes nor its inputs'
    order, and trtexec needs both (attribution; ``--loadInputs``).
    """

    onnx: str
    nodes: tuple[str, ...]
    inputs: tuple[dict[str, Any], ...]  # {"name", "shape", "dtype"}
    outputs: tuple[dict[str, Any], ...]
    fp16: bool  # holds FP16 tensors (e.g. converted by ModelOpt AutoCast)
    qdq: bool  # explicitly quantised (QuantizeLinear/DequantizeLinear nodes)

    @classmethod
    def of(cls, path: Path) -> OnnxFacts:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}

        def io(values: Any) -> tuple[dict[str, Any], ...]:
            return tuple(
                {"name": v.name,
                 "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
                for v in values if v.name not in initializers
            )

        half = onnx.TensorProto.FLOAT16
        fp16 = (any(i.data_type == half for i in graph.initializer)
                or any(v.type.tensor_type.elem_type == half for v in [*graph.input, *graph.output, *graph.value_info])
                or any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
                       for n in graph.node))
        qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
        return cls(str(path), tuple(n.name for n in graph.node), io(graph.input), io(graph.output), fp16, qdq)

    def save(self, plan: Path) -> None:
        facts_path(plan).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, plan: Path) -> OnnxFacts | None:
        """The facts saved beside ``plan``; None for a plan built elsewhere."""
        path = facts_path(plan)
        if not path.is_file():
            return None
        data = _read_json(path)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def dynamic_inputs(self) -> list[str]:
        return [i["name"] for i in self.inputs if any(d < 0 for d in i["shape"])]


def facts_path(plan: Path) -> Path:
    return plan.with_suffix(".onnx.json")


def layer_info_path(plan: PurePath) -> PurePath:
    return plan.with_suffix(".layers.json")


def precision_flags(precision: str, trt_major: int, facts: OnnxFacts) -> tuple[str, ...]:
    """Builder precision flags ("fp16"/"int8") for a target's precision, or a one-line error saying what is missing.

    TensorRT ≤ 10 lowers an FP32 ONNX to FP16 by flag. INT8 needs scales: edgeprune brings no calibration data
    (and TensorRT 11 dropped calibrators), so INT8 is accepted only for an explicitly quantised (Q/DQ) ONNX.
    TensorRT 11 removed the flags: networks are strongly typed and the ONNX's own types are the precision.
    """
    if precision == "fp32":
        return ()
    if precision == "int8" and not facts.qdq:
        raise RuntimeFailure(f"precision int8 needs an explicitly quantised ONNX (Q/DQ nodes, e.g. from NVIDIA "
                             f"ModelOpt); {Path(facts.onnx).name} has none and edgeprune does no INT8 calibration")
    if trt_major >= 11:  # TensorRT 11: BuilderFlag.FP16/INT8 and trtexec --fp16/--int8 are gone
        if precision == "fp16" and not facts.fp16:
            raise RuntimeFailure(f"TensorRT {trt_major} takes precision from the ONNX and {Path(facts.onnx).name} is "
                                 "FP32: convert it to FP16 first (ModelOpt AutoCast) or use precision fp32")
        return ()
    return (precision,)
