"""Profile: one measurement of one model on one target, a DataFrame with a row per runtime layer/node.

Each row carries the ONNX node it came from and the PyTorch module that node was exported from, so time can be
attributed to modules and components; provenance lives in ``DataFrame.attrs``.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path

import onnx
import pandas as pd

from edgeprune.prune.graph import component_of

#: ONNX Runtime names a node it fused from several ("Gemm + Relu") after the first one, with this prefix.
ORT_FUSED = "fused "


def row_nodes(row: object) -> list[str]:
    """The ONNX nodes a runtime layer (a profile row) covers: an engine layer lists them, an ORT node is one
    (ORT names a node it fused from several after the first)."""
    nodes = getattr(row, "onnx_nodes", None)
    return list(nodes) if isinstance(nodes, (list, tuple)) else [str(row.layer).removeprefix(ORT_FUSED)]


def module_of_node(node: onnx.NodeProto, parameters: frozenset[str] = frozenset()) -> str:
    """The PyTorch module path an ONNX node was exported from ('' for the top-level model or when unknown).

    A node that reads a parameter ``<module>.weight`` belongs to that module: this also attributes a Conv
    with a BatchNorm folded in to the conv, where the exporter's scope names the BN. Otherwise the dynamo
    exporter's ``pkg.torch.onnx.name_scopes`` (e.g. ``['', 'encoder', 'encoder.0', 'linear']``: the last entry
    is the op, the one before it the module) or the TorchScript exporter's scoped name
    (``/encoder/encoder.0/Gemm``) decides.
    """
    for name in node.input:
        if name in parameters and name.endswith(".weight"):
            return name.removesuffix(".weight")
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        parts = ast.literal_eval(scopes)
        return parts[-2] if len(parts) >= 2 else ""
    parts = node.name.strip("/").split("/") if node.name.startswith("/") else []
    return parts[-2] if len(parts) >= 2 else ""


def node_modules(model_path: Path) -> dict[str, str]:
    """ONNX node name -> PyTorch module path, for every node of an exported model."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    parameters = frozenset(init.name for init in graph.initializer)
    return {node.name: module_of_node(node, parameters) for node in graph.node}


def attribute(
    nodes: pd.DataFrame, onnx_path: Path | None, components: dict[str, list[str]], provenance: dict[str, object]
) -> pd.DataFrame:
    """Join a runtime's per-layer times with module paths and components; provenance goes into ``attrs``.

    Three shapes of runtime profile: ORT rows are ONNX nodes (``layer``, possibly ``fused <node>``); engine
    rows list the ONNX nodes they cover (``onnx_nodes``; the first node exported from a module names it); torch
    rows already carry their ``module`` (then ``onnx_path`` is None). A layer the exporter left without a module
    (a decomposed op, a runtime-inserted node) keeps module '' and component '' — reported as unattributed,
    never dropped.
    """
    frame = nodes.copy()
    if "module" not in frame.columns:
        if onnx_path is None:
            raise ValueError("a profile without a module column needs the ONNX model it was measured from")
        modules = node_modules(onnx_path)
        if "onnx_nodes" in frame.columns:
            frame["module"] = [next((modules[n] for n in covered if modules.get(n)), "")
                               for covered in frame["onnx_nodes"]]
        else:
            frame["module"] = [modules.get(layer, modules.get(layer.removeprefix(ORT_FUSED), ""))
                               for layer in frame["layer"]]
    frame["component"] = [component_of(m, components) for m in frame["module"]]
    total = frame["time_ms"].sum()
    frame["share"] = frame["time_ms"] / total if total > 0 else 0.0
    frame.attrs.update(provenance)
    frame.attrs.setdefault("date", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return frame


def save_profile(frame: pd.DataFrame, path: Path) -> None:
    """CSV rows plus a ``.json`` sidecar with provenance (CSV has no place for attrs)."""
    frame.to_csv(path, index=False)
    path.with_suffix(".json").write_text(json.dumps(frame.attrs, indent=2, default=str))


def load_profile(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        frame.attrs.update(json.loads(sidecar.read_text()))
    return frame
