"""trtexec: parse its outputs (``--exportProfile``, ``--exportLayerInfo``, the log), attribute engine-layer time,
and run it as a runtime (:class:`TrtexecRuntime`).

No TensorRT import: the files are produced on the device and read anywhere, and the parsers serve the Python-API
runtime too. An engine layer fuses several ONNX nodes, so its time is mapped to ONNX nodes (from the parser's
Metadata stamp when the engine has it, else from the layer name) and from there to PyTorch modules; format copies
TensorRT inserts are folded into the layer they feed, so their cost lands on the layer whose chosen format caused
them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import warnings
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from edgeprune.runtimes import Latency, RuntimeFailure, RuntimeMissing

if TYPE_CHECKING:
    from edgeprune.devices import Device
    from edgeprune.targets import MeasureSettings, Target, TensorRTSettings

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


# --- What a TensorRT build needs to know about its ONNX (shared by the trtexec and Python-API runtimes) -------

#: trtexec's own path on JetPack and in NVIDIA's containers; otherwise it is looked up on PATH.
DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
_VERSION = re.compile(r"\[TensorRT v(\d+)\]")
_DEVICE_LINE = re.compile(r"\[I\] (?:Selected Device|Device): (.+)$", re.MULTILINE)


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


def last_log_line(text: str) -> str:
    """The line that says why trtexec failed: its last error line, else its last line that is not the banner."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "[E]" in line or line.startswith("Error")]
    if errors:
        return errors[-1]
    plain = [line for line in lines if not line.startswith("&&&&")]
    return plain[-1] if plain else (lines[-1] if lines else "no output")


# --- trtexec command lines (lists, never shell strings) -----------------------------------------------------

def _device_flags(settings: TensorRTSettings) -> list[str]:
    flags = [f"--device={settings.device}"] if settings.device else []
    if settings.dla_core is not None:
        flags.append(f"--useDLACore={settings.dla_core}")
    return flags


def build_command(exe: str, onnx: PurePath, plan: PurePath, settings: TensorRTSettings, flags: Sequence[str],
                  timing_cache: PurePath | None) -> list[str]:
    """Build a plan from ONNX, exporting the layer info (with ONNX-node Metadata) beside it; no inference."""
    cmd = [exe, f"--onnx={onnx}", f"--saveEngine={plan}"]
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd += [f"--{flag}" for flag in flags]
    cmd += [f"--memPoolSize=workspace:{settings.workspace_mib}M",
            f"--builderOptimizationLevel={settings.builder_optimization_level}",
            "--profilingVerbosity=detailed", f"--exportLayerInfo={layer_info_path(plan)}"]
    cmd += _device_flags(settings)
    if settings.dla_core is not None and settings.allow_gpu_fallback:
        cmd.append("--allowGPUFallback")
    if settings.sparse_weights:
        cmd.append("--sparsity=enable")
    return [*cmd, "--skipInference"]


def timing_command(exe: str, plan: PurePath, settings: TensorRTSettings, measure: MeasureSettings) -> list[str]:
    """End-to-end timing: exactly ``runs`` inferences (``--duration=0``), each reported on its own (``--avgRuns=1``),
    GPU compute only (inputs stay on the device), percentiles 10 and 90 in the summary."""
    return [exe, f"--loadEngine={plan}", f"--warmUp={settings.warmup_ms}", f"--iterations={measure.runs}",
            "--duration=0", "--avgRuns=1", "--percentile=10,90", "--noDataTransfers", "--useSpinWait",
            *_device_flags(settings)]


def profile_command(exe: str, plan: PurePath, profile: PurePath, settings: TensorRTSettings,
                    measure: MeasureSettings) -> list[str]:
    """Per-layer times from a profiling run kept apart from the timed run (the profiler perturbs timing)."""
    return [exe, f"--loadEngine={plan}", f"--warmUp={settings.warmup_ms}", f"--iterations={measure.profile_runs}",
            "--duration=0", "--noDataTransfers", "--dumpProfile", "--separateProfileRun",
            f"--exportProfile={profile}", *_device_flags(settings)]


def run_command(exe: str, plan: PurePath, inputs: Sequence[tuple[str, PurePath]], output: PurePath,
                settings: TensorRTSettings) -> list[str]:
    """One inference on given inputs (raw binary files), outputs written as JSON."""
    spec = ",".join(f"{_quote(name)}:{path}" for name, path in inputs)
    return [exe, f"--loadEngine={plan}", f"--loadInputs={spec}", f"--exportOutput={output}", "--iterations=1",
            "--duration=0", "--warmUp=0", *_device_flags(settings)]


def _quote(name: str) -> str:
    """trtexec splits specs at ',' and the last ':'; a name holding either is wrapped in single quotes."""
    return f"'{name}'" if ("," in name or ":" in name) else name


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


# --- The trtexec runtime ------------------------------------------------------------------------------------

def find_trtexec(configured: str | None) -> str:
    """The trtexec to run: the target's path, else TensorRT's install path, else PATH; missing -> RuntimeMissing."""
    if configured:
        if Path(configured).is_file() and os.access(configured, os.X_OK):
            return configured
        raise RuntimeMissing(f"trtexec not found at {configured} (the target's [tensorrt] trtexec)")
    if Path(DEFAULT_TRTEXEC).is_file() and os.access(DEFAULT_TRTEXEC, os.X_OK):
        return DEFAULT_TRTEXEC
    found = shutil.which("trtexec")
    if found:
        return found
    raise RuntimeMissing(f"trtexec not found at {DEFAULT_TRTEXEC} or on PATH: install TensorRT (JetPack ships it) "
                         "or set [tensorrt] trtexec in the target")


class TrtexecRuntime:
    """TensorRT through its ``trtexec`` executable: no Python bindings needed, what Jetson boards ship.

    Every step is one trtexec process; a repetition of the latency is a fresh process (a fresh context). On a remote
    device the same command lines run there through the device layer: the files trtexec reads are pushed to a mirror
    folder in the device's work folder and the files it writes are pulled back, so the plan, its layer info and its
    profile also sit locally beside the ONNX, as after a local build. The timing cache stays on the device, one per
    device state (board, L4T, TensorRT, power mode).
    """

    name = "trtexec"
    source: Literal["onnx", "pt2"] = "onnx"

    def __init__(self, target: Target, device: Device | None = None) -> None:
        from edgeprune.devices import LocalDevice, workdir

        self.device: Device = device or LocalDevice()
        self.target_name, self.precision = target.name, target.precision
        self.settings, self.measure = target.tensorrt, target.measure
        self.work = None if self.device.local else f"{workdir(self.device)}/trtexec"
        self.exe = find_trtexec(self.settings.trtexec) if self.device.local else self._find_there()
        self._version: str | None = None
        self._gpu: str | None = None

    def _find_there(self) -> str:
        """trtexec on the remote device: the target's path, else TensorRT's install path, else its PATH."""
        path = self.settings.trtexec or DEFAULT_TRTEXEC
        if self.device.run(["test", "-x", path], timeout=60).returncode == 0:
            return path
        if self.settings.trtexec is None:
            found = self.device.run(["sh", "-c", "command -v trtexec"], timeout=60).stdout.strip()
            if found:
                return found
        raise RuntimeMissing(f"trtexec not found at {path} on {self.device.url}: install TensorRT there (JetPack "
                             "ships it) or set [tensorrt] trtexec in the target")

    def _there(self, path: Path) -> PurePath:
        """Where trtexec sees a local file: the file itself here, its mirror in the device's work folder there."""
        if self.work is None:
            return path
        folder = hashlib.sha256(str(path.resolve().parent).encode()).hexdigest()[:16]
        return PurePosixPath(self.work, folder, path.name)

    def _push(self, path: Path, *, if_missing: bool = False) -> PurePath:
        there = self._there(path)
        if self.work is not None and not (if_missing and self.device.exists(str(there))):
            self.device.put(path, str(there))
        return there

    def _pull(self, path: Path) -> None:
        if self.work is not None:
            self.device.get(str(self._there(path)), path)

    def _call(self, cmd: list[str], what: str) -> str:
        try:
            done = self.device.run(cmd, timeout=self.settings.timeout_s)
        except (FileNotFoundError, PermissionError):
            raise RuntimeMissing(f"trtexec not found or not executable at {cmd[0]}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"trtexec {what} took longer than {self.settings.timeout_s:g} s "
                                 "([tensorrt] timeout_s)") from None
        log = done.stdout + done.stderr
        self._version = self._version or trt_version(log)
        if m := _DEVICE_LINE.search(log):
            self._gpu = m.group(1).strip()
        if done.returncode == 127 and not self.device.local:
            raise RuntimeMissing(f"trtexec not found at {cmd[0]} on {self.device.url}")
        if done.returncode != 0:
            raise RuntimeFailure(f"trtexec {what} failed (exit {done.returncode}): {last_log_line(log)}")
        return log

    def version(self) -> str | None:
        """TensorRT version from trtexec's banner (asked with ``--help`` once, else from any earlier call)."""
        if self._version is None:
            try:
                self._call([self.exe, "--help"], "--help")
            except RuntimeFailure:
                pass  # the banner was parsed from the log before the exit code was looked at
        return self._version

    def versions(self) -> dict[str, str]:
        """trtexec's path, TensorRT's version and the GPU; on a remote device also its keyed facts (board, L4T…)."""
        versions = {"trtexec": self.exe, "tensorrt": self.version() or "unknown", "gpu": self._gpu or "unknown"}
        if not self.device.local:
            from edgeprune.devices import key_facts

            versions.update(key_facts(self.device.facts()))
        return versions

    def device_facts(self) -> dict[str, Any] | None:
        """Every fact of a remote device (provenance); None here: a local profile records this host instead."""
        return None if self.device.local else self.device.facts()

    def build(self, exported: Path, folder: Path) -> Path:
        """``folder/<name>.plan`` from the ONNX, with its layer info and ONNX facts beside it.

        The timing cache is ``folder/timing-<target>-trt<version>.cache``: caches are tied to one TensorRT
        version and GPU, and every variant built into the same folder reuses it.
        """
        folder.mkdir(parents=True, exist_ok=True)
        facts = OnnxFacts.of(exported)
        if facts.dynamic_inputs():
            raise RuntimeFailure(f"{exported.name}: inputs {facts.dynamic_inputs()} have dynamic dimensions; "
                                 "export with fixed shapes")
        version = self.version()
        major = int(version.split(".")[0]) if version else None
        if major is None and self.precision != "fp32":
            raise RuntimeFailure(f"cannot tell the TensorRT version of {self.exe} (no [TensorRT vN] banner), and "
                                 f"precision {self.precision} depends on it")
        flags = precision_flags(self.precision, major or 0, facts)
        plan = folder / f"{exported.stem}.plan"
        cache: PurePath | None = None
        if self.settings.timing_cache:
            cache = folder / f"timing-{self.target_name}-trt{version or 'unknown'}.cache"
            if self.work is not None:
                from edgeprune.devices import key_facts, safe_name

                state = hashlib.sha256(json.dumps(key_facts(self.device.facts()), sort_keys=True).encode())
                cache = PurePosixPath(self.work, f"timing-{safe_name(cache.name)}-{state.hexdigest()[:12]}")
        self._call(build_command(self.exe, self._push(exported), self._there(plan), self.settings, flags, cache),
                   f"build of {exported.name}")
        if self.work is not None:
            self._pull(plan)
            self._pull(Path(layer_info_path(plan)))
        if not plan.is_file():
            raise RuntimeFailure(f"trtexec build of {exported.name} exited 0 but wrote no engine at {plan}")
        facts.save(plan)
        return plan

    def run(self, model: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        facts = OnnxFacts.load(model)
        if facts is None:
            raise RuntimeFailure(f"{facts_path(model)} is missing: build {model.name} with edgeprune so its inputs "
                                 "are known")
        if len(facts.inputs) != len(inputs):
            raise ValueError(f"model takes {len(facts.inputs)} inputs, got {len(inputs)}")
        with tempfile.TemporaryDirectory(prefix="edgeprune-trtexec-") as tmp:
            files = []
            for spec, array in zip(facts.inputs, inputs, strict=True):
                path = Path(tmp) / f"input{len(files)}.bin"
                np.ascontiguousarray(array, dtype=spec["dtype"]).tofile(path)
                files.append((spec["name"], self._push(path)))
            out = Path(tmp) / "outputs.json"
            try:
                self._call(run_command(self.exe, self._push(model, if_missing=True), files, self._there(out),
                                       self.settings), f"run of {model.name}")
                self._pull(out)
            finally:
                if self.work is not None:
                    self.device.run(["rm", "-rf", "--", str(self._there(out).parent)], timeout=60)
            return parse_outputs(_read_json(out), facts, str(out))

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency:
        """GPU compute time per inference: per fresh trtexec process the median of ``runs`` inferences.

        trtexec feeds its own random inputs (an engine's time does not depend on the values) and reports
        statistics, not samples: p10/p90 are the medians over repetitions of each process's 10th/90th percentile
        (its min/max when an older trtexec prints no such percentiles).
        """
        medians, p10s, p90s = [], [], []
        for _ in range(self.measure.repeats):
            log = self._call(timing_command(self.exe, self._push(model, if_missing=True), self.settings, self.measure),
                             f"timing of {model.name}")
            gpu = parse_perf_summary(log).get("GPU Compute Time")
            if not isinstance(gpu, dict) or "median" not in gpu:
                raise RuntimeFailure(f"trtexec timing of {model.name} printed no 'GPU Compute Time' summary: "
                                     f"{last_log_line(log)}")
            medians.append(gpu["median"])
            if not {"percentile(10%)", "percentile(90%)"} <= gpu.keys():
                warnings.warn(f"{self.exe} printed no 10/90 % percentiles (TensorRT < 8.6?): p10/p90 are its min/max",
                              stacklevel=2)
            p10s.append(gpu.get("percentile(10%)", gpu.get("min", gpu["median"])))
            p90s.append(gpu.get("percentile(90%)", gpu.get("max", gpu["median"])))
        return Latency(tuple(medians), statistics.median(p10s), statistics.median(p90s))

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        """Per-layer mean time over ``profile_runs`` inferences, joined with the build's layer info (``--exportProfile``
        JSON kept beside the plan as ``<plan>.profile.json``)."""
        out = model.with_suffix(".profile.json")
        self._call(profile_command(self.exe, self._push(model, if_missing=True), self._there(out), self.settings,
                                   self.measure), f"profile of {model.name}")
        self._pull(out)
        info_path = layer_info_path(model)
        info = load_layer_info(info_path) if info_path.is_file() else None
        facts = OnnxFacts.load(model)
        return engine_profile(load_profile_json(out), info, facts.nodes if facts else None)
