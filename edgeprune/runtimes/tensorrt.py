"""TensorRT through its Python API (10.x and 11.x): build a plan from ONNX, run it, time it, profile its layers.

``tensorrt`` and the CUDA binding (cuda-python: ``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6) are
imported when the runtime is made, never when edgeprune is imported; a missing one raises :class:`RuntimeMissing`
naming the extra. pycuda is not used: it does not build without the CUDA headers.

The two majors differ in one place, precision (see :func:`~edgeprune.runtimes.trtexec_formats.precision_flags`): 10.x
lowers FP32 to FP16/INT8 by ``BuilderFlag``; 11.x removed those flags and is always strongly typed. Everything else
used here (``create_network``, ``OnnxParser``, memory pools, timing caches, name-based I/O with
``execute_async_v3``, ``IProfiler``, the engine inspector) is the same in both.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd

from edgeprune.core.targets import Target
from edgeprune.runtimes.base import (
    Latency,
    Paired,
    RuntimeFailure,
    RuntimeMissing,
    TimedSession,
    paired_loop,
    timing_loop,
)
from edgeprune.runtimes.trtexec_formats import (
    OnnxFacts,
    engine_profile,
    parse_layer_info,
    parse_profile,
    precision_flags,
)

EXTRA = "pip install 'edgeprune[tensorrt]'"


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the bindings installed without their shared libraries
        raise RuntimeMissing(f"runtime 'tensorrt' needs TensorRT's Python package ({exc}): {EXTRA}") from None
    return tensorrt


def _import_cudart() -> ModuleType:
    try:
        from cuda.bindings import runtime  # cuda-python ≥ 12.6 (13.x has only this)
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError:
            raise RuntimeMissing(f"runtime 'tensorrt' needs cuda-python for buffers and streams: {EXTRA}") from None
    return runtime


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class _Cuda:
    """The few CUDA runtime calls this runtime makes, through cuda-python; each result is checked."""

    def __init__(self, cudart: ModuleType, device: int) -> None:
        self.rt = cudart
        try:
            count = self.call("cudaGetDeviceCount")
        except RuntimeFailure as exc:
            raise RuntimeMissing(f"runtime 'tensorrt': no CUDA device ({exc})") from None
        if device >= count:
            raise RuntimeMissing(f"runtime 'tensorrt': no CUDA device {device} (this machine has {count})")
        self.call("cudaSetDevice", device)
        self.device = device

    def call(self, fn: str, *args: Any) -> Any:
        result = getattr(self.rt, fn)(*args)
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != 0:
            raise RuntimeFailure(f"CUDA {fn} failed: {self._error_name(err)}")
        return values[0] if len(values) == 1 else (values or None)

    def _error_name(self, err: Any) -> str:
        try:
            name = self.rt.cudaGetErrorName(err)[1]
        except Exception:  # noqa: BLE001 - only for a message; the error itself is raised by the caller
            return str(err)
        return name.decode() if isinstance(name, bytes) else str(name)

    def gpu_name(self) -> str:
        name = self.call("cudaGetDeviceProperties", self.device).name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()

    def upload(self, host: np.ndarray) -> int:
        ptr = int(self.call("cudaMalloc", max(host.nbytes, 1)))
        if host.nbytes:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self.call("cudaMemcpy", ptr, host.ctypes.data, host.nbytes, kind)
        return ptr

    def download(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        host = np.empty(shape, dtype=dtype)
        if host.nbytes:
            self.call("cudaMemcpy", host.ctypes.data, ptr, host.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        return host


class _Session:
    """One execution context with a device buffer bound to every I/O tensor (by name, as TensorRT 10+ wants)."""

    def __init__(self, trt: ModuleType, cuda: _Cuda, engine: Any) -> None:
        self.trt, self.cuda, self.engine = trt, cuda, engine
        self.pointers: list[int] = []
        self.outputs: list[tuple[int, tuple[int, ...], np.dtype]] = []
        self.stream: Any = None
        self.context: Any = None

    def open(self, inputs: Sequence[np.ndarray]) -> None:
        trt, cuda, engine = self.trt, self.cuda, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs_named = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs_named) != len(inputs):
            raise ValueError(f"engine takes {len(inputs_named)} inputs, got {len(inputs)}")
        self.context = engine.create_execution_context()
        self.stream = cuda.call("cudaStreamCreate")
        for name, array in zip(inputs_named, inputs, strict=True):
            host = np.ascontiguousarray(array, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            self.context.set_input_shape(name, host.shape)
            self._bind(name, cuda.upload(host))
        for name in names:
            if name not in inputs_named:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                self.outputs.append((self._bind(name, cuda.upload(np.empty(shape, dtype))), shape, dtype))

    def _bind(self, name: str, ptr: int) -> int:
        self.pointers.append(ptr)
        if not self.context.set_tensor_address(name, ptr):
            raise RuntimeFailure(f"TensorRT refused the buffer for tensor {name!r}")
        return ptr

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.stream):  # cuda-python stream objects convert to the handle
            raise RuntimeFailure("TensorRT execute_async_v3 failed")

    def sync(self) -> None:
        self.cuda.call("cudaStreamSynchronize", self.stream)

    def results(self) -> list[np.ndarray]:
        self.sync()
        return [self.cuda.download(ptr, shape, dtype) for ptr, shape, dtype in self.outputs]

    def close(self) -> None:
        for ptr in self.pointers:
            self.cuda.call("cudaFree", ptr)
        if self.stream is not None:
            self.cuda.call("cudaStreamDestroy", self.stream)


def _helpers(trt: ModuleType) -> tuple[type, type]:
    """A logger that keeps TensorRT's error messages and a profiler that keeps every layer time, subclassing the
    imported module's ``ILogger``/``IProfiler`` (which do not exist before the lazy import)."""

    class Logger(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if getattr(severity, "name", str(severity)).rsplit(".", 1)[-1] in ("ERROR", "INTERNAL_ERROR"):
                self.errors.append(_one_line(msg))

        def last(self) -> str:
            return self.errors[-1] if self.errors else "no error logged"

    class LayerTimes(trt.IProfiler):  # type: ignore[name-defined,misc]
        """TensorRT calls ``report_layer_time`` once per engine layer per inference; every call is kept."""

        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.times: dict[str, list[float]] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.times.setdefault(layer_name, []).append(float(ms))

        def exported(self, runs: int) -> list[dict[str, Any]]:
            """The times in trtexec's ``--exportProfile`` layout, so both runtimes share one parser."""
            total = sum(sum(v) for v in self.times.values())
            return [{"count": runs}, *({"name": name, "timeMs": sum(v), "averageMs": sum(v) / runs,
                                        "medianMs": statistics.median(v),
                                        "percentage": 100 * sum(v) / total if total else 0.0}
                                       for name, v in self.times.items())]

    return Logger, LayerTimes


class TensorRTRuntime:
    """TensorRT's Python API configured by a target's ``[tensorrt]``, ``precision`` and ``[measure]``."""

    name = "tensorrt"
    source: Literal["onnx", "pt2"] = "onnx"

    def __init__(self, target: Target) -> None:
        self.trt = _import_tensorrt()
        self.cuda = _Cuda(_import_cudart(), target.tensorrt.device)
        self.settings, self.measure, self.precision = target.tensorrt, target.measure, target.precision
        self.major = int(str(self.trt.__version__).split(".")[0])
        self.Logger, self.LayerTimes = _helpers(self.trt)
        self.gpu = self.cuda.gpu_name()
        self._loader: tuple[Any, Any] | None = None

    def versions(self) -> dict[str, str]:
        return {"tensorrt": str(self.trt.__version__), "gpu": self.gpu, "cuda_device": str(self.cuda.device)}

    # -- build -----------------------------------------------------------------------------------------------
    def timing_cache_path(self, folder: Path) -> Path:
        """Caches hold kernel timings of one TensorRT version on one GPU model: the file name says which."""
        gpu = re.sub(r"[^A-Za-z0-9.]+", "-", self.gpu).strip("-") or "gpu"
        return folder / f"timing-trt{self.trt.__version__}-{gpu}.cache"

    def build(self, exported: Path, folder: Path) -> Path:
        """``folder/<name>.plan`` from the ONNX, built with detailed profiling verbosity (so the inspector names each
        layer's ONNX nodes), and its :class:`OnnxFacts` beside it."""
        trt = self.trt
        facts = OnnxFacts.of(exported)
        if facts.dynamic_inputs():
            raise RuntimeFailure(f"{exported.name}: inputs {facts.dynamic_inputs()} have dynamic dimensions; "
                                 "export with fixed shapes")
        flags = precision_flags(self.precision, self.major, facts)
        folder.mkdir(parents=True, exist_ok=True)
        logger = self.Logger()
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # 10.x: explicit batch is the only mode (flag deprecated); 11.x: also
        parser = trt.OnnxParser(network, logger)  # always strongly typed. No creation flags needed in either.
        if not parser.parse_from_file(str(exported)):
            errors = [_one_line(parser.get_error(i)) for i in range(parser.num_errors)] or [logger.last()]
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            raise RuntimeFailure(f"TensorRT cannot parse {exported.name}: {errors[0]}{more}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.settings.workspace_mib << 20)
        config.builder_optimization_level = self.settings.builder_optimization_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        for flag in flags:  # only ever non-empty on 10.x: precision_flags returns () on 11.x
            config.set_flag(getattr(trt.BuilderFlag, flag.upper()))
        if self.settings.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = self.settings.dla_core
            if self.settings.allow_gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if self.settings.sparse_weights:
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        cache_path = self.timing_cache_path(folder) if self.settings.timing_cache else None
        if cache_path is not None:
            cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
            if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: a foreign cache is refused
                warnings.warn(f"timing cache {cache_path} does not fit this TensorRT/GPU; starting a fresh one",
                              stacklevel=2)
                config.set_timing_cache(config.create_timing_cache(b""), False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeFailure(f"TensorRT could not build an engine from {exported.name}: {logger.last()}")
        if cache_path is not None:
            _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        plan = folder / f"{exported.stem}.plan"
        _write_atomic(plan, bytes(serialized))
        facts.save(plan)
        return plan

    # -- execute ---------------------------------------------------------------------------------------------
    def _engine(self, plan: Path) -> Any:
        if self._loader is None:  # one trt.Runtime for this object's life: it must outlive the engines it made
            logger = self.Logger()
            runtime = self.trt.Runtime(logger)
            if self.settings.dla_core is not None:
                runtime.DLA_core = self.settings.dla_core
            self._loader = (logger, runtime)
        logger, runtime = self._loader
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise RuntimeFailure(f"TensorRT cannot load {plan.name} (plans are tied to one TensorRT version and GPU): "
                                 f"{logger.last()}")
        return engine

    @contextlib.contextmanager
    def _session(self, engine: Any, inputs: Sequence[np.ndarray]) -> Iterator[_Session]:
        session = _Session(self.trt, self.cuda, engine)
        try:
            session.open(inputs)
            yield session
        finally:
            session.close()

    def run(self, model: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        engine = self._engine(model)
        with self._session(engine, inputs) as session:
            session.execute()
            return session.results()

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency:
        """GPU time of ``execute_async_v3`` between CUDA events, inputs already on the device: per fresh execution
        context the median of ``runs`` timed executions after ``warmup``; the median of those over ``repeats``."""
        engine = self._engine(model)
        start, end = self.cuda.call("cudaEventCreate"), self.cuda.call("cudaEventCreate")
        try:
            return timing_loop(lambda: self._timed_session(engine, inputs, start, end), self.measure)
        finally:
            self.cuda.call("cudaEventDestroy", start)
            self.cuda.call("cudaEventDestroy", end)

    def compare(self, model: Path, reference: Path, inputs: Sequence[np.ndarray]) -> Paired:
        """Both engines loaded, their fresh execution contexts timed execution by execution in alternation."""
        mine, theirs = self._engine(model), self._engine(reference)
        start, end = self.cuda.call("cudaEventCreate"), self.cuda.call("cudaEventCreate")
        try:  # one pair of events serves both: the timed calls never overlap
            return paired_loop(lambda: self._timed_session(mine, inputs, start, end),
                               lambda: self._timed_session(theirs, inputs, start, end), self.measure)
        finally:
            self.cuda.call("cudaEventDestroy", start)
            self.cuda.call("cudaEventDestroy", end)

    @contextlib.contextmanager
    def _timed_session(self, engine: Any, inputs: Sequence[np.ndarray], start: Any, end: Any) -> Iterator[TimedSession]:
        """A fresh execution context whose timed call is one execution between the events ``start`` and ``end``."""
        with self._session(engine, inputs) as session:

            def timed_call() -> float:
                self.cuda.call("cudaEventRecord", start, session.stream)
                session.execute()
                self.cuda.call("cudaEventRecord", end, session.stream)
                self.cuda.call("cudaEventSynchronize", end)
                return self.cuda.call("cudaEventElapsedTime", start, end)

            yield TimedSession(call=session.execute, timed_call=timed_call, settle=session.sync)

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        """Per engine layer, the mean ``IProfiler`` time over ``profile_runs`` executions after ``warmup``, joined
        with the engine inspector's layer JSON (TRT 10 Metadata or TRT 11 layout) to name each layer's ONNX nodes."""
        trt = self.trt
        engine = self._engine(model)
        times = self.LayerTimes()
        with self._session(engine, inputs) as session:
            for _ in range(self.measure.warmup):
                session.execute()
            session.sync()
            session.context.profiler = times
            for _ in range(self.measure.profile_runs):
                session.execute()
                session.sync()  # reports arrive once the execution completes
            inspector = engine.create_engine_inspector()
            inspector.execution_context = session.context
            layers = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        if not times.times:
            raise RuntimeFailure(f"TensorRT's profiler reported no layer times for {model.name}")
        profile = parse_profile(times.exported(self.measure.profile_runs), "TensorRT IProfiler")
        info = parse_layer_info(json.loads(layers), "TensorRT engine inspector")
        facts = OnnxFacts.load(model)
        return engine_profile(profile, info, facts.nodes if facts else None)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file, so a killed build never leaves half a plan or cache that loads as garbage."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
