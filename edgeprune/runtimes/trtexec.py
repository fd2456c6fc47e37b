"""Parse trtexec's outputs (``--exportProfile``, ``--exportLayerInfo``, the log) and attribute engine-layer time.

Pure parsing, no TensorRT import: the files are produced on the device and read anywhere. An engine layer fuses
several ONNX nodes, so its time is mapped to ONNX nodes (from the parser's Metadata stamp when the engine has it,
else from the layer name) and from there to PyTorch modules; format copies TensorRT inserts are folded into
the layer they feed, so their cost lands on the layer whose chosen format caused them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

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


def _read_json(path: Path | str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None


def load_profile_json(path: Path | str) -> pd.DataFrame:
    """``--exportProfile`` JSON -> one row per engine layer; ``time_ms`` is trtexec's per-inference average."""
    data = _read_json(path)
    if not (isinstance(data, list) and data and isinstance(data[0], dict) and "count" in data[0]):
        raise ValueError(f"{path}: not a trtexec profile (expected a list starting with {{'count': N}})")
    rows = []
    for i, entry in enumerate(data[1:], start=1):
        if not isinstance(entry, dict) or not {"name", "averageMs"} <= entry.keys():
            raise ValueError(f"{path}: entry {i} lacks 'name'/'averageMs': {str(entry)[:80]}")
        rows.append({
            "layer": entry["name"],
            "time_ms": float(entry["averageMs"]),
            "median_ms": float(entry.get("medianMs", math.nan)),
            "percentage": float(entry.get("percentage", math.nan)),
        })
    frame = pd.DataFrame(rows, columns=["layer", "time_ms", "median_ms", "percentage"])
    frame.attrs.update(count=int(data[0]["count"]), source=str(path))
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
    """``--exportLayerInfo`` / engine-inspector JSON -> one row per engine layer.

    Layers may be plain names (no detailed profiling verbosity): then only ``layer`` is filled. Engine I/O
    names go to ``attrs["io_tensors"]`` from TRT ≤ 10's "Bindings" list or TRT 11's "I/O Tensors" objects.
    """
    data = _read_json(path)
    if not (isinstance(data, dict) and isinstance(data.get("Layers"), list)):
        msg = f"{path}: not a TensorRT layer-info JSON (expected an object with a 'Layers' list)"
        raise ValueError(msg)  # noqa: TRY004 - a malformed file, not a caller's type error
    rows = []
    for i, layer in enumerate(data["Layers"]):
        if isinstance(layer, str):
            layer = {"Name": layer}
        if not isinstance(layer, dict) or "Name" not in layer:
            raise ValueError(f"{path}: layer {i} has no 'Name': {str(layer)[:80]}")
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
    frame.attrs.update(io_tensors=[t["Name"] if isinstance(t, dict) else str(t) for t in io], source=str(path))
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


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """Total measured time and how much of it reached a module; attributed + unattributed == total."""
    total = float(frame["own_ms"].sum())
    attributed = float(frame.loc[frame["module"] != "", "time_ms"].sum())
    unattributed = float(frame.loc[frame["module"] == "", "time_ms"].sum())
    if not math.isclose(attributed + unattributed, total, rel_tol=1e-9, abs_tol=1e-12):
        raise AssertionError(f"attribution lost time: {attributed} + {unattributed} != {total}")
    return {"total_ms": total, "attributed_ms": attributed, "unattributed_ms": unattributed}


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
