"""Target: where a model must run — runtime, device, precision, channel granule, measurement settings.

Targets are TOML files validated on load: unknown keys, wrong types and missing fields are errors, because a
typo in a target silently changes every measurement made with it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: A device URL. User and host start with a word character: ``ssh://-oProxyCommand=…@x`` would otherwise be an ssh
#: option.
SSH_URL = re.compile(r"^ssh://(?P<user>\w[\w.-]*)@(?P<host>\w[\w.-]*)(?::(?P<port>\d{1,5}))?\Z")
#: An agent Python: an absolute path or a bare command name, of characters no shell treats specially.
PYTHON_NAME = re.compile(r"^(/[\w./+-]+|[\w.+-]+)\Z")

#: The targets shipped inside the package (package data: ``edgeprune/targets/*.toml``).
SHIPPED = Path(__file__).resolve().parents[1] / "targets"


class TargetSource(NamedTuple):
    """A folder searched for ``NAME.toml``, and how ``edgeprune targets`` names it."""

    label: str
    folder: Path


def target_sources() -> list[TargetSource]:
    """Folders searched for ``NAME.toml``, first match wins: $EDGEPRUNE_TARGETS, ./targets, the shipped ones.

    Read at each call, so setting $EDGEPRUNE_TARGETS or changing folder takes effect without a re-import.
    """
    env = os.environ.get("EDGEPRUNE_TARGETS")
    candidates = [*([TargetSource("env", Path(env))] if env else []), TargetSource("./targets", Path("targets")),
                  TargetSource("shipped", SHIPPED)]
    sources: dict[Path, TargetSource] = {}
    for source in candidates:  # a folder reached twice (run from inside the package) counts once, the first time
        sources.setdefault(source.folder.resolve(), source)
    return list(sources.values())


class TargetError(ValueError):
    """A target cannot be found or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrtSettings(_Strict):
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(1, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "extended"


class MeasureSettings(_Strict):
    warmup: int = Field(50, ge=0)
    runs: int = Field(300, ge=1)
    repeats: int = Field(5, ge=1)
    profile_runs: int = Field(100, ge=1)
    #: A repetition's timed runs stop after this many seconds (but never before 10 runs), and its warm-up after a
    #: third of it: a 80 ms ResNet-50 would otherwise spend two minutes on one latency.
    repeat_s: float = Field(3.0, gt=0)
    #: Sweep graphs (many layer variants in one graph, see measure/tables.py) take seconds per run; their per-layer
    #: profile is the median over this many runs after ``sweep_warmup`` runs.
    sweep_runs: int = Field(20, ge=1)
    sweep_warmup: int = Field(3, ge=0)


class TensorRTSettings(_Strict):
    """How an engine is built and timed, for the ``tensorrt`` (Python API) and ``trtexec`` runtimes."""

    workspace_mib: int = Field(1024, ge=1)
    builder_optimization_level: int = Field(3, ge=0, le=5)  # TensorRT's default is 3; 5 is the current maximum
    timing_cache: bool = True  # kept in the build folder, so rebuilding a pruned variant reuses kernel timings
    trtexec: str | None = None  # path; None: /usr/src/tensorrt/bin/trtexec, else trtexec on PATH
    device: int = Field(0, ge=0)  # CUDA device index
    dla_core: int | None = Field(None, ge=0)  # run on this DLA core (Jetson AGX/NX) instead of the GPU
    allow_gpu_fallback: bool = True  # with a DLA core: layers the DLA cannot run go to the GPU
    sparse_weights: bool = False  # let the builder pick 2:4 structured-sparse kernels where weights allow
    warmup_ms: int = Field(200, ge=0)  # trtexec warms up for a time, not a number of runs (its default: 200 ms)
    timeout_s: float = Field(1800.0, gt=0)  # one trtexec call (an engine build on a Nano takes minutes)


class PowerSettings(_Strict):
    """Jetson power state a measurement needs; applying it is the device layer's job, a report records it."""

    nvpmodel: int | Annotated[str, Field(min_length=1)] | None = None  # mode id, or mode NAME looked up on the device
    jetson_clocks: bool = False  # lock clocks to the mode's maxima: steadier timings


class TorchCudaSettings(_Strict):
    device: int = Field(0, ge=0)  # CUDA device index


RuntimeName = Literal["onnxruntime", "tensorrt", "trtexec", "torch-cuda"]
#: Which runtimes read which settings table; a table given for another runtime is an error.
RUNTIME_TABLES: dict[str, frozenset[str]] = {
    "onnxruntime": frozenset({"onnxruntime"}),
    "tensorrt": frozenset({"tensorrt", "trtexec"}),
    "torch_cuda": frozenset({"torch-cuda"}),
}
#: TensorRT pads channels to these multiples (FP16 formats: % 8, INT8 tensor-core kernels: % 32).
_TRT_GRANULE = {"fp16": 8, "int8": 32}


class Target(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    runtime: RuntimeName
    device: str = "local"
    #: The Python that runs edgeprune's agent on a remote device (a venv's python where edgeprune is installed);
    #: None: python3. Not part of the digest: it says how to reach the runtime, and the runtime's versions are keyed.
    agent_python: str | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    granule: int = Field(8, ge=1)
    batch: int | None = Field(None, ge=1)
    onnxruntime: OrtSettings = Field(default_factory=OrtSettings)
    tensorrt: TensorRTSettings = Field(default_factory=TensorRTSettings)
    torch_cuda: TorchCudaSettings = Field(default_factory=TorchCudaSettings)
    power: PowerSettings = Field(default_factory=PowerSettings)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)

    @model_validator(mode="after")
    def _coherent(self) -> Target:
        """Reject settings that cannot mean what they say on this runtime (they would silently do nothing)."""
        for table, runtimes in RUNTIME_TABLES.items():  # a dumped target carries every table, at its defaults
            if self.runtime not in runtimes and getattr(self, table) != type(getattr(self, table))():
                raise ValueError(f"[{table}] has no effect on runtime {self.runtime!r} (it is read by {sorted(runtimes)})")
        if self.device != "local" and not SSH_URL.match(self.device):
            raise ValueError(f"device {self.device!r}: expected 'local' or 'ssh://user@host[:port]'")
        if self.agent_python is not None:
            if self.device == "local":
                raise ValueError("agent_python is the Python edgeprune's agent runs with on a remote device; "
                                 "device is 'local'")
            if not PYTHON_NAME.match(self.agent_python):
                raise ValueError(f"agent_python {self.agent_python!r}: give an absolute path or a bare command name")
        if self.runtime == "torch-cuda" and self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} on runtime 'torch-cuda': it runs the exported program "
                             "as it is (fp32); use a TensorRT target for fp16/int8")
        if self.runtime == "onnxruntime" and self.precision == "fp16" and set(self.onnxruntime.providers) == {
            "CPUExecutionProvider"
        }:
            raise ValueError("precision 'fp16' on ONNX Runtime's CPU provider: it has no fp16 kernels worth "
                             "measuring; use fp32, or a GPU provider")
        if self.runtime in RUNTIME_TABLES["tensorrt"]:
            step = _TRT_GRANULE.get(self.precision)
            if step and self.granule % step:
                raise ValueError(f"granule {self.granule} with precision {self.precision!r}: TensorRT pads channels "
                                 f"to multiples of {step}, so prune at a multiple of {step}")
            if self.tensorrt.dla_core is not None and self.precision == "fp32":
                raise ValueError("dla_core with precision 'fp32': the DLA runs fp16 and int8 only")
            if self.tensorrt.trtexec is not None and self.runtime != "trtexec":
                raise ValueError("[tensorrt] trtexec is a path for runtime 'trtexec'; runtime 'tensorrt' uses the "
                                 "Python API")
        return self

    def with_measure(self, **changes: object) -> Target:
        """This target with some ``[measure]`` settings changed (a sweep graph's profile, one repetition)."""
        return self.model_copy(update={"measure": self.measure.model_copy(update=changes)})

    def for_sweeps(self) -> Target:
        """This target with the profile's warm-up and runs those of a sweep graph."""
        return self.with_measure(warmup=self.measure.sweep_warmup, profile_runs=self.measure.sweep_runs)

    def on_device(self, device: str | None, agent_python: str | None = None) -> Target:
        """This target run on another device (validated like a target file); unchanged when both are None."""
        if device is None and agent_python is None:
            return self
        update = {"device": device or self.device, "agent_python": agent_python or self.agent_python}
        try:
            return Target.model_validate({**self.model_dump(), **update})
        except ValidationError as exc:
            raise TargetError(f"target {self.name}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None

    def digest(self) -> str:
        """A short hash of every setting that can change a measurement: different settings, different runs.

        Tables this runtime does not read, and an untouched [power] table, are left out, so adding a runtime to
        edgeprune does not change the digest (and the run keys) of existing targets.
        """
        skip = {table for table, runtimes in RUNTIME_TABLES.items() if self.runtime not in runtimes}
        skip.add("agent_python")
        if self.power == PowerSettings():
            skip.add("power")
        return hashlib.sha256(self.model_dump_json(exclude=skip).encode()).hexdigest()[:16]


class FoundTarget(NamedTuple):
    """A target file found by name: where it came from, and the target (or why it does not load)."""

    name: str
    path: Path
    source: str  # the label of its TargetSource: "env", "./targets" or "shipped"
    target: Target | TargetError
    shadows: tuple[str, ...] = ()  # sources further down that hold a file of the same name, which this one hides


def target_path(spec: str) -> Path:
    """The file a target name (``cpu``) or path (``my/targets/x.toml``) stands for."""
    path = Path(spec)
    if path.suffix == ".toml" or path.parent != Path("."):
        if not path.is_file():
            raise TargetError(f"target file {spec!r} does not exist")
        return path
    for source in target_sources():
        candidate = source.folder / f"{spec}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for s in target_sources() if s.folder.is_dir() for p in s.folder.glob("*.toml")})
    raise TargetError(f"unknown target {spec!r}; known targets: {', '.join(known) or 'none'}")


def load_target(spec: str) -> Target:
    """Load and validate a target by name (``cpu``) or path (``my/targets/x.toml``)."""
    path = target_path(spec)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target {path}: malformed TOML: {exc}") from exc
    try:
        return Target.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise TargetError(f"target {path}: {where}: {first['msg']} ({exc.error_count()} error(s))") from exc


def find_targets() -> list[FoundTarget]:
    """Every target name found, from the first source that holds it, loaded (or the error that stops it loading)."""
    found: dict[str, list[tuple[TargetSource, Path]]] = {}
    for source in target_sources():
        if source.folder.is_dir():
            for p in sorted(source.folder.glob("*.toml")):
                found.setdefault(p.stem, []).append((source, p))
    out: list[FoundTarget] = []
    for name, [(source, path), *hidden] in sorted(found.items()):
        try:
            target: Target | TargetError = load_target(str(path))
        except TargetError as exc:
            target = exc
        out.append(FoundTarget(name, path, source.label, target, tuple(s.label for s, _ in hidden)))
    return out


def list_targets() -> list[tuple[Path, Target | TargetError]]:
    """Every target file found (the first of each name), loaded, or the error that stops it loading."""
    return [(f.path, f.target) for f in find_targets()]
