"""A runtime on another machine: the target's own runtime, run there by edgeprune's agent over the device layer.

Files go to the device once, under content-addressed names in its work folder (``files/<sha256>.onnx``), so a
model measured twice is pushed once. Builds go to ``builds/<target>-<key>/`` where the key hashes the target's
settings and the device's facts (board, L4T, TensorRT, power mode, versions): an engine is reused only on the same
kind of device in the same state, and TensorRT's timing cache in that folder is shared by every pruned variant.
Plans never move between machines: they are built, kept and run on the device.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from edgeprune.core.hashing import digest_json, sha256_file
from edgeprune.devices.probe import key_facts
from edgeprune.devices.transport import Device, run_agent, safe_name, workdir
from edgeprune.runtimes.base import Latency, Paired

if TYPE_CHECKING:
    from edgeprune.core.targets import Target

#: Suffix of the local stand-in for a file built on the device: JSON naming the remote file.
HANDLE = ".remote.json"


class RemoteRuntime:
    """The target's runtime (ONNX Runtime, TensorRT, torch-CUDA) on a remote device, through the agent."""

    def __init__(self, target: Target, device: Device) -> None:
        self.name = target.runtime
        self.source: Literal["onnx", "pt2"] = "pt2" if target.runtime == "torch-cuda" else "onnx"
        self.device = device
        self.timeout = max(600.0, target.tensorrt.timeout_s)
        self.target_json = target.model_copy(update={"device": "local", "agent_python": None}).model_dump_json()
        self.work = workdir(device)
        # checks now that the agent is there and the runtime starts on the device (rather than mid-run), and brings
        # the device's facts in the same round trip
        answer = run_agent(device, "versions", "--target", self.target_json, timeout=300)
        self._versions: dict[str, str] = {k: str(v) for k, v in answer["versions"].items()}
        self.facts: dict[str, Any] = answer["facts"]
        key = digest_json([target.digest(), key_facts(self.facts)], 16)
        self.builds = f"{self.work}/builds/{safe_name(target.name)}-{key}"
        self._pushed: set[str] = set()

    def versions(self) -> dict[str, str]:
        """The runtime's versions on the device plus the device's keyed facts (``device_model``, ``device_l4t``…)."""
        return {**self._versions, **key_facts(self.facts)}

    def device_facts(self) -> dict[str, Any]:
        """Every fact of the device, clocks included: provenance."""
        return self.facts

    def _agent(self, command: str, *args: str, inputs: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
        """An agent command with this target; ``inputs`` travel on its stdin (a base64 .npz), saving round trips."""
        stdin = None
        if inputs is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **{f"input_{i}": np.ascontiguousarray(a) for i, a in enumerate(inputs)})
            stdin, args = base64.b64encode(buffer.getvalue()).decode(), (*args, "--inputs", "-")
        return run_agent(self.device, command, "--target", self.target_json, *args, timeout=self.timeout, input=stdin)

    def _push(self, local: Path, suffix: str | None = None) -> str:
        """The file's content-addressed path on the device, uploaded unless it is there already."""
        remote = f"{self.work}/files/{sha256_file(local)}{suffix or local.suffix}"
        if remote not in self._pushed:
            if not self.device.exists(remote):
                self.device.put(local, remote)
            self._pushed.add(remote)
        return remote

    def _model(self, model: Path) -> str:
        """Where ``model`` is on the device: a handle names a file built there; anything else is pushed."""
        if model.name.endswith(HANDLE):
            return json.loads(model.read_text())["remote"]
        return self._push(model)

    def build(self, exported: Path, folder: Path) -> Path:
        """Build on the device (or reuse its earlier build); returns ``exported`` when the runtime runs it as it is,
        else a local handle ``<name>.remote.json`` naming the file built there."""
        remote = self._push(exported)
        built = self._agent("build", "--model", remote, "--folder", self.builds)["built"]
        if built == remote:
            return exported
        handle = folder / f"{exported.stem}{HANDLE}"
        handle.write_text(json.dumps({"device": self.device.url, "remote": built, "exported_sha256": remote}))
        return handle

    def run(self, model: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        answer = self._agent("run", "--model", self._model(model), inputs=inputs)
        with np.load(io.BytesIO(base64.b64decode(answer["npz_base64"]))) as archive:
            return [archive[f"output_{i}"] for i in range(len(archive.files))]

    def latency(self, model: Path, inputs: Sequence[np.ndarray]) -> Latency:
        return Latency.from_dict(self._agent("latency", "--model", self._model(model), inputs=inputs))

    def compare(self, model: Path, reference: Path, inputs: Sequence[np.ndarray]) -> Paired:
        answer = self._agent("compare", "--model", self._model(model), "--reference", self._model(reference),
                             inputs=inputs)
        return Paired(answer["ratio"], answer["model_ms"], answer["reference_ms"], tuple(answer["ratios"]))

    def profile(self, model: Path, inputs: Sequence[np.ndarray]) -> pd.DataFrame:
        data = self._agent("profile", "--model", self._model(model), inputs=inputs)
        frame = pd.DataFrame.from_records(data["rows"], columns=data["columns"])
        frame.attrs.update(data["attrs"])
        return frame
