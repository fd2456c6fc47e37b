"""TensorRTRuntime against FakeTensorRT (TensorRT itself cannot exist here) fed real trtexec fixtures."""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.core.targets import Target, load_target
from edgeprune.runtimes import RuntimeFailure, RuntimeMissing, get_runtime
from edgeprune.runtimes.trtexec_formats import (
    OnnxFacts,
    attribute_engine,
    facts_path,
    load_layer_info,
    load_profile_json,
)

REAL = Path(__file__).parent / "fixtures" / "trtexec" / "resnet18-a100-fp16"  # real trtexec outputs (see its README)
DOC = Path(__file__).parent / "fixtures" / "trtexec-documented"
ENGINE = "resnet.onnx.engine"
GPU = "NVIDIA A100-SXM4-40GB"


class Severity(enum.Enum):
    ERROR = 1
    WARNING = 2


class FakeCudart(types.ModuleType):
    """Stands in for cuda-python's ``cuda.bindings.runtime``: every call returns ``(error, *values)`` like the real
    binding; "device" memory is host memory, so the fake TensorRT can read and write it by pointer."""

    def __init__(self, devices: int = 1) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        self.memory: dict[int, np.ndarray] = {}
        self.handles = 0
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def _handle(self) -> int:
        self.handles += 1
        return self.handles

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return (0, self.devices) if self.devices else (100, 0)  # 100: cudaErrorNoDevice

    def cudaGetErrorName(self, err: int) -> tuple[int, bytes]:
        return 0, b"cudaErrorNoDevice" if err == 100 else b"cudaErrorUnknown"

    def cudaSetDevice(self, device: int) -> tuple[int]:
        return (0,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:
        return 0, types.SimpleNamespace(name=GPU.encode() + b"\x00" * 8)

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        buffer = np.zeros(size, dtype=np.uint8)
        self.memory[buffer.ctypes.data] = buffer
        return 0, buffer.ctypes.data

    def cudaFree(self, ptr: int) -> tuple[int]:
        del self.memory[ptr]
        return (0,)

    def cudaMemcpy(self, dst: int, src: int, size: int, kind: int) -> tuple[int]:
        ctypes.memmove(dst, src, size)
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, self._handle()

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaEventCreate(self) -> tuple[int, int]:
        return 0, self._handle()

    def cudaEventRecord(self, event: int, stream: int) -> tuple[int]:
        return (0,)

    def cudaEventSynchronize(self, event: int) -> tuple[int]:
        return (0,)

    def cudaEventElapsedTime(self, start: int, end: int) -> tuple[int, float]:
        return 0, 0.5

    def cudaEventDestroy(self, event: int) -> tuple[int]:
        return (0,)


class FakeTensorRT(types.ModuleType):
    """Stands in for NVIDIA TensorRT, which cannot exist without an NVIDIA GPU and driver (its wheels also come from
    NVIDIA's own index). It offers only the API surface TensorRTRuntime uses, shaped like TensorRT 10.x or, with
    ``version="11.0.0"``, 11.x (no precision BuilderFlags). It records what the runtime asks for, "executes" an
    engine by doubling its input, and feeds the attached IProfiler ``layer_times`` once per execution, like
    TensorRT does; the engine inspector returns ``layer_info`` (a real or documented JSON)."""

    def __init__(self, cudart: FakeCudart, version: str = "10.3.0") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.cudart = cudart
        self.layer_times: list[tuple[str, float]] = []
        self.layer_info = '{"Layers": []}'
        self.cache_blobs: list[bytes] = []  # every blob given to create_timing_cache
        self.configs: list[FakeConfig] = []
        self.network_flags: list[int] = []
        self.fail_build = False
        self.executions = 0
        self.contexts = 0
        self.inspected_contexts: list[Any] = []
        flags = ["GPU_FALLBACK", "SPARSE_WEIGHTS"] + (["FP16", "INT8"] if version.startswith("10.") else [])
        self.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED", LAYER_NAMES_ONLY="LAYER_NAMES_ONLY")
        self.LayerInformationFormat = types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE")
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
        self.ILogger = type("ILogger", (), {"__init__": lambda self: None, "Severity": Severity})
        self.IProfiler = type("IProfiler", (), {"__init__": lambda self: None})
        fake = self

        class Builder:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def create_network(self, flags: int) -> FakeNetwork:
                fake.network_flags.append(flags)
                return FakeNetwork()

            def create_builder_config(self) -> FakeConfig:
                config = FakeConfig()
                fake.configs.append(config)
                return config

            def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
                if fake.fail_build:
                    self.logger.log(Severity.ERROR, "[virtualMemoryBuffer.cpp::resizePhysical]\nError Code 2: OOM")
                    return None
                if config.cache is not None:
                    config.cache.entries += 1  # this build timed kernels the cache did not hold
                return json.dumps({"io": network.io}).encode()

        class OnnxParser:
            supported = ("Relu", "QuantizeLinear", "DequantizeLinear")

            def __init__(self, network: FakeNetwork, logger: Any) -> None:
                self.network, self.errors = network, []

            def parse_from_file(self, path: str) -> bool:
                graph = onnx.load(path).graph
                for i, node in enumerate(graph.node):
                    if node.op_type not in self.supported:
                        self.errors.append(f"In node {i} with name: {node.name} and operator: {node.op_type} "
                                           f"(checkFallbackPluginImporter): INVALID_NODE: creator &&\n"
                                           '"Plugin not found, are the plugin name, version, and namespace correct?"')
                dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input,
                                                                                          *graph.output]}
                kinds = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF"}
                self.network.io = [{"name": v.name, "mode": mode, "shape": dims[v.name],
                                    "dtype": kinds[v.type.tensor_type.elem_type]}
                                   for mode, values in (("INPUT", graph.input), ("OUTPUT", graph.output))
                                   for v in values]
                return not self.errors

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> str:
                return self.errors[i]

        class FakeConfig:
            def __init__(self) -> None:
                self.flags: set[str] = set()
                self.pools: dict[str, int] = {}
                self.builder_optimization_level: int | None = None
                self.profiling_verbosity: str | None = None
                self.default_device_type, self.DLA_core = "GPU", None
                self.cache: FakeCache | None = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                self.pools[pool] = size

            def set_flag(self, flag: str) -> None:
                self.flags.add(flag)

            def create_timing_cache(self, blob: bytes) -> FakeCache:
                fake.cache_blobs.append(bytes(blob))
                return FakeCache(int(blob.decode().rsplit(":", 1)[1]) if blob else 0)

            def set_timing_cache(self, cache: FakeCache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def get_timing_cache(self) -> FakeCache | None:
                return self.cache

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
                try:
                    return FakeEngine(json.loads(plan)["io"])
                except ValueError:
                    self.logger.log(Severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader] Error Code 1: "
                                                    "Serialization (Serialization assertion magicTagRead failed.)")
                    return None

        class FakeEngine:
            def __init__(self, io: list[dict[str, Any]]) -> None:
                self.io = {t["name"]: t for t in io}
                self.num_io_tensors = len(io)
                self.names = [t["name"] for t in io]

            def get_tensor_name(self, i: int) -> str:
                return self.names[i]

            def get_tensor_mode(self, name: str) -> str:
                return self.io[name]["mode"]

            def get_tensor_dtype(self, name: str) -> str:
                return self.io[name]["dtype"]

            def create_execution_context(self) -> FakeContext:
                fake.contexts += 1
                return FakeContext(self)

            def create_engine_inspector(self) -> Any:
                inspector = types.SimpleNamespace(execution_context=None)

                def information(fmt: str) -> str:
                    assert fmt == "JSON"
                    fake.inspected_contexts.append(inspector.execution_context)
                    return fake.layer_info

                inspector.get_engine_information = information
                return inspector

        class FakeContext:
            def __init__(self, engine: FakeEngine) -> None:
                self.engine, self.addresses, self.profiler = engine, {}, None

            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                assert list(shape) == self.engine.io[name]["shape"]
                return True

            def get_tensor_shape(self, name: str) -> list[int]:
                return self.engine.io[name]["shape"]

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream: int) -> bool:
                fake.executions += 1
                inputs = [t for t in self.engine.io.values() if t["mode"] == "INPUT"]
                outputs = [t for t in self.engine.io.values() if t["mode"] == "OUTPUT"]
                for source, target in zip(inputs, outputs, strict=True):
                    dtype = fake.nptype(source["dtype"])
                    x = fake.cudart.memory[self.addresses[source["name"]]].view(dtype)
                    fake.cudart.memory[self.addresses[target["name"]]].view(dtype)[:] = 2 * x
                if self.profiler is not None:
                    for name, ms in fake.layer_times:
                        self.profiler.report_layer_time(name, ms)
                return True

        class FakeCache:
            def __init__(self, entries: int) -> None:
                self.entries = entries

            def serialize(self) -> bytes:
                return f"fake-timing-cache:{self.entries}".encode()

        class FakeNetwork:
            def __init__(self) -> None:
                self.io: list[dict[str, Any]] = []

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @staticmethod
    def nptype(dtype: str) -> type:
        return {"FLOAT": np.float32, "HALF": np.float16}[dtype]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    return _install(monkeypatch, "10.3.0")


def _install(monkeypatch: pytest.MonkeyPatch, version: str, devices: int = 1) -> FakeTensorRT:
    cudart = FakeCudart(devices)
    trt = FakeTensorRT(cudart, version)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart  # type: ignore[attr-defined]
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    return trt


def _target(**changes: Any) -> Target:
    """The shipped desktop TensorRT target, validated again with ``changes`` (and few runs, for speed)."""
    data = load_target("desktop-gpu-tensorrt").model_dump(exclude_unset=True)
    data["measure"] = {"warmup": 2, "runs": 5, "repeats": 3, "profile_runs": 4}
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return Target.model_validate(data)


def _onnx(path: Path, *, op: str = "Relu", half: bool = False, qdq: bool = False) -> Path:
    """A one-node model x[1,4] -> y[1,4] (optionally FP16 I/O, or quantised through Q/DQ nodes)."""
    kind = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    x, y = (helper.make_tensor_value_info(n, kind, [1, 4]) for n in ("x", "y"))
    if qdq:
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dequant")]
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    else:
        nodes, inits = [helper.make_node(op, ["x"], ["y"], name="act")], []
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_missing_tensorrt_or_cuda_python_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeMissing, match=r"pip install 'edgeprune\[tensorrt\]'") as err:
        get_runtime(_target())
    assert "\n" not in str(err.value)
    _install(monkeypatch, "10.3.0")
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(RuntimeMissing, match=r"cuda-python.*pip install 'edgeprune\[tensorrt\]'"):
        get_runtime(_target())


def test_no_cuda_device_is_runtime_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, "10.3.0", devices=0)
    with pytest.raises(RuntimeMissing, match="no CUDA device.*cudaErrorNoDevice"):
        get_runtime(_target())


def test_build_sets_the_targets_flags_and_reuses_the_timing_cache(fake: FakeTensorRT, tmp_path: Path) -> None:
    runtime = get_runtime(_target(tensorrt={"workspace_mib": 512, "builder_optimization_level": 4}))
    assert runtime.versions() == {"tensorrt": "10.3.0", "gpu": GPU, "cuda_device": "0"}
    folder = tmp_path / "build"
    first = runtime.build(_onnx(tmp_path / "a.onnx"), folder)
    assert first == folder / "a.plan" and first.is_file()
    config = fake.configs[0]
    assert config.flags == {"FP16"}  # TensorRT 10: fp16 precision is a builder flag
    assert config.pools == {"WORKSPACE": 512 << 20}
    assert (config.builder_optimization_level, config.profiling_verbosity) == (4, "DETAILED")
    assert fake.network_flags == [0]
    cache = folder / f"timing-trt10.3.0-{GPU.replace(' ', '-')}.cache"
    assert cache.read_bytes() == b"fake-timing-cache:1"
    assert fake.cache_blobs == [b""]  # no cache yet: an empty one was made
    assert OnnxFacts.load(first) == OnnxFacts.of(tmp_path / "a.onnx")

    runtime.build(_onnx(tmp_path / "b.onnx"), folder)
    assert fake.cache_blobs[1] == b"fake-timing-cache:1"  # the second build started from the first one's timings
    assert cache.read_bytes() == b"fake-timing-cache:2"

    no_cache = get_runtime(_target(tensorrt={"timing_cache": False}))
    no_cache.build(_onnx(tmp_path / "c.onnx"), tmp_path / "other")
    assert len(fake.cache_blobs) == 2 and not list((tmp_path / "other").glob("*.cache"))


def test_dla_and_sparsity_flags(fake: FakeTensorRT, tmp_path: Path) -> None:
    runtime = get_runtime(_target(tensorrt={"dla_core": 1, "sparse_weights": True}))
    runtime.build(_onnx(tmp_path / "a.onnx"), tmp_path)
    config = fake.configs[0]
    assert config.flags == {"FP16", "GPU_FALLBACK", "SPARSE_WEIGHTS"}
    assert (config.default_device_type, config.DLA_core) == ("DLA", 1)


def test_parser_and_build_errors_are_one_line(fake: FakeTensorRT, tmp_path: Path) -> None:
    runtime = get_runtime(_target())
    with pytest.raises(RuntimeFailure) as err:
        runtime.build(_onnx(tmp_path / "bad.onnx", op="NotAnOp"), tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("TensorRT cannot parse bad.onnx: In node 0 with name: act and operator: NotAnOp")
    fake.fail_build = True
    with pytest.raises(RuntimeFailure, match=r"could not build an engine from a.onnx: .*Error Code 2: OOM$") as err:
        runtime.build(_onnx(tmp_path / "a.onnx"), tmp_path)
    assert "\n" not in str(err.value) and not (tmp_path / "a.plan").exists()
    (tmp_path / "junk.plan").write_bytes(b"not a plan")
    with pytest.raises(RuntimeFailure, match="cannot load junk.plan .*magicTagRead"):
        runtime.run(tmp_path / "junk.plan", [np.zeros((1, 4), np.float32)])


def test_int8_needs_a_quantised_onnx(fake: FakeTensorRT, tmp_path: Path) -> None:
    runtime = get_runtime(_target(precision="int8", granule=32))
    with pytest.raises(RuntimeFailure, match="int8 needs an explicitly quantised ONNX"):
        runtime.build(_onnx(tmp_path / "plain.onnx"), tmp_path)
    assert not fake.configs  # refused before TensorRT was asked for anything
    runtime.build(_onnx(tmp_path / "q.onnx", qdq=True), tmp_path)
    assert fake.configs[0].flags == {"INT8"}


def test_run_and_latency_go_through_device_buffers(fake: FakeTensorRT, tmp_path: Path) -> None:
    target = _target()
    runtime = get_runtime(target)
    plan = runtime.build(_onnx(tmp_path / "a.onnx"), tmp_path)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    (y,) = runtime.run(plan, [x])
    np.testing.assert_array_equal(y, 2 * x)
    with pytest.raises(ValueError, match="engine takes 1 inputs, got 2"):
        runtime.run(plan, [x, x])
    fake.executions = fake.contexts = 0
    latency = runtime.latency(plan, [x])
    m = target.measure
    assert latency.repeats_ms == (0.5,) * m.repeats  # the fake's CUDA events say 0.5 ms
    assert fake.contexts == m.repeats and fake.executions == m.repeats * (m.warmup + m.runs)
    assert not fake.cudart.memory  # every buffer was freed
    fake.executions = fake.contexts = 0
    other = runtime.build(_onnx(tmp_path / "b.onnx"), tmp_path)
    paired = runtime.compare(plan, other, [x])  # two contexts open at once, executions alternating
    assert paired.ratios == (1.0,) * m.repeats and paired.model_ms == paired.reference_ms == 0.5
    assert fake.contexts == 2 * m.repeats and fake.executions == 2 * m.repeats * (m.warmup + m.runs)
    assert not fake.cudart.memory


def test_profile_joins_profiler_times_with_the_inspectors_layers(fake: FakeTensorRT, tmp_path: Path) -> None:
    """The fake's IProfiler callbacks carry the real ResNet-18 A100 FP16 profile; the inspector returns its layers."""
    reference = load_profile_json(REAL / f"{ENGINE}.profile.json")
    fake.layer_times = list(zip(reference["layer"], reference["time_ms"], strict=True))
    fake.layer_info = (REAL / f"{ENGINE}.graph.json").read_text()
    target = _target()
    runtime = get_runtime(target)
    plan = runtime.build(_onnx(tmp_path / "a.onnx"), tmp_path)
    facts_path(plan).unlink()  # as for a plan built elsewhere: layer names are not checked against an ONNX
    fake.executions = 0
    frame = runtime.profile(plan, [np.ones((1, 4), np.float32)])
    assert fake.executions == target.measure.warmup + target.measure.profile_runs
    assert fake.inspected_contexts and fake.inspected_contexts[-1] is not None
    assert {"layer", "op_type", "time_ms", "onnx_nodes"} <= set(frame.columns)
    # the profiler saw each layer once per profiled run, so its means are the fixture's; warm-up is not counted
    assert frame["own_ms"].tolist() == pytest.approx(reference["time_ms"].tolist(), abs=1e-12)
    expected = attribute_engine(reference, load_layer_info(REAL / f"{ENGINE}.graph.json"))
    assert frame["time_ms"].tolist() == pytest.approx(expected["time_ms"].tolist(), abs=1e-12)
    assert frame["onnx_nodes"].tolist() == expected["onnx_nodes"].tolist()
    rows = frame.set_index("layer")
    assert rows.loc["Conv_5 + Add_6 + Relu_7", "onnx_nodes"] == ["Conv_5", "Add_6", "Relu_7"]
    assert rows.loc["Conv_0 + Relu_1", "op_type"] == "CaskConvolution"
    copy = "Reformatting CopyNode for Input Tensor 0 to Conv_0 + Relu_1"
    assert (rows.loc[copy, "time_ms"], rows.loc[copy, "attributed_to"]) == (0.0, "Conv_0 + Relu_1")
    total = reference["time_ms"].sum()
    assert frame.attrs["total_ms"] == pytest.approx(total, abs=1e-9)
    assert frame.attrs["attributed_ms"] + frame.attrs["unattributed_ms"] == pytest.approx(total, abs=1e-9)

    # with the ONNX's node names known, a layer whose names are not nodes of it is unattributed, not dropped
    nodes = {n for ns in expected["onnx_nodes"] for n in ns} - {"Gemm_48"}
    facts = OnnxFacts.of(tmp_path / "a.onnx")
    facts_path(plan).write_text(json.dumps({**facts.__dict__, "nodes": sorted(nodes)}))
    again = runtime.profile(plan, [np.ones((1, 4), np.float32)]).set_index("layer")
    assert again.loc["reshape_after_Gemm_48", "onnx_nodes"] == []
    gemm = again.loc[again.index.str.contains("Gemm_48"), "time_ms"].sum()
    assert gemm > 0 and again.attrs["unattributed_ms"] == pytest.approx(gemm, abs=1e-12)
    assert again.attrs["attributed_ms"] + again.attrs["unattributed_ms"] == pytest.approx(total, abs=1e-9)


def test_tensorrt_11_takes_precision_from_the_onnx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _install(monkeypatch, "11.0.0")  # no BuilderFlag.FP16/INT8: touching them would raise
    runtime = get_runtime(_target())
    with pytest.raises(RuntimeFailure, match="TensorRT 11 takes precision from the ONNX.*AutoCast"):
        runtime.build(_onnx(tmp_path / "fp32.onnx"), tmp_path)
    plan = runtime.build(_onnx(tmp_path / "fp16.onnx", half=True), tmp_path)
    assert fake.configs[0].flags == set() and fake.network_flags == [0]
    x = np.linspace(-1, 1, 4, dtype=np.float16).reshape(1, 4)
    (y,) = runtime.run(plan, [x])
    assert y.dtype == np.float16 and np.array_equal(y, 2 * x)

    profile = load_profile_json(DOC / "trt11-profile.json")
    fake.layer_times = list(zip(profile["layer"], profile["time_ms"], strict=True))
    fake.layer_info = (DOC / "trt11-layers.json").read_text()
    facts_path(plan).unlink()
    frame = runtime.profile(plan, [x]).set_index("layer")
    foreign = "{ForeignNode[/encoder/encoder.0/Conv.../decoder/decoder.3/Conv]}"
    assert frame.loc[foreign, "op_type"] == "Myelin" and frame.loc[foreign, "kind"] == "foreign"
    assert frame.loc[foreign, "onnx_nodes"] == ["/encoder/encoder.0/Conv", "/decoder/decoder.3/Conv"]
    assert frame.loc[foreign, "time_ms"] == pytest.approx(0.125)  # the input reformat folded into it
    assert frame.iloc[0]["attributed_to"] == foreign
    assert frame.attrs["attributed_ms"] + frame.attrs["unattributed_ms"] == pytest.approx(0.125)
