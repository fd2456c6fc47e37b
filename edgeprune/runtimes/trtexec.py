"""trtexec as a runtime (:class:`TrtexecRuntime`): find the executable, build its command lines, run it here or on a
device. What it writes (profiles, layer info, outputs, logs) is parsed by :mod:`edgeprune.runtimes.trtexec_formats`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from edgeprune.core.hashing import digest_json
from edgeprune.runtimes.base import Latency, Paired, RuntimeFailure, RuntimeMissing
from edgeprune.runtimes.trtexec_formats import (
    OnnxFacts,
    device_name,
    engine_profile,
    facts_path,
    last_log_line,
    layer_info_path,
    load_layer_info,
    load_outputs,
    load_profile_json,
    parse_perf_summary,
    precision_flags,
    trt_version,
)

if TYPE_CHECKING:
    from edgeprune.core.targets import MeasureSettings, Target, TensorRTSettings
    from edgeprune.devices.transport import Device

#: trtexec's own path on JetPack and in NVIDIA's containers; otherwise it is looked up on PATH.
DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


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
        from edgeprune.devices.transport import LocalDevice, workdir

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
        if (gpu := device_name(log)) is not None:
            self._gpu = gpu
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
            from edgeprune.devices.probe import key_facts

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
                from edgeprune.devices.probe import key_facts
                from edgeprune.devices.transport import safe_name

                state = digest_json(key_facts(self.device.facts()), 12)
                cache = PurePosixPath(self.work, f"timing-{safe_name(cache.name)}-{state}")
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
            return load_outputs(out, facts)

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency:
        """GPU compute time per inference: per fresh trtexec process the median of ``runs`` inferences.

        trtexec feeds its own random inputs (an engine's time does not depend on the values) and reports
        statistics, not samples: p10/p90 are the medians over repetitions of each process's 10th/90th percentile
        (its min/max when an older trtexec prints no such percentiles).
        """
        medians, p10s, p90s = [], [], []
        for _ in range(self.measure.repeats):
            gpu = self._timing(model)
            medians.append(gpu["median"])
            if not {"percentile(10%)", "percentile(90%)"} <= gpu.keys():
                warnings.warn(f"{self.exe} printed no 10/90 % percentiles (TensorRT < 8.6?): p10/p90 are its min/max",
                              stacklevel=2)
            p10s.append(gpu.get("percentile(10%)", gpu.get("min", gpu["median"])))
            p90s.append(gpu.get("percentile(90%)", gpu.get("max", gpu["median"])))
        return Latency(tuple(medians), statistics.median(p10s), statistics.median(p90s))

    def _timing(self, model: Path) -> dict[str, float]:
        """One trtexec process timing ``model``: its "GPU Compute Time" statistics (ms)."""
        log = self._call(timing_command(self.exe, self._push(model, if_missing=True), self.settings, self.measure),
                         f"timing of {model.name}")
        gpu = parse_perf_summary(log).get("GPU Compute Time")
        if not isinstance(gpu, dict) or "median" not in gpu:
            raise RuntimeFailure(f"trtexec timing of {model.name} printed no 'GPU Compute Time' summary: "
                                 f"{last_log_line(log)}")
        return gpu

    def compare(self, model: Path, reference: Path, inputs: Sequence[np.ndarray]) -> Paired:
        """trtexec times whole processes, so the alternation is per process (``repeats`` of each, which goes first
        alternating): coarser than in-process runtimes' alternation per call."""
        mine, theirs = [], []
        for i in range(self.measure.repeats):
            first, second = (model, reference) if i % 2 == 0 else (reference, model)
            a, b = self._timing(first)["median"], self._timing(second)["median"]
            mine.append(a if first is model else b)
            theirs.append(b if first is model else a)
        ratios = tuple(float(r) for r in np.array(mine) / np.array(theirs))
        return Paired(statistics.median(ratios), statistics.median(mine), statistics.median(theirs), ratios)

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
