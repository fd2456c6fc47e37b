"""Deploy a tune run's artefact onto a device, so that a failure at any point leaves the running version in place.

The artefact is uploaded under a temporary name in the destination folder, checked against the run manifest's
sha256 on the device, built into an engine there where the runtime needs one (plans never move between GPUs or
TensorRT versions), and renamed over the deployed file after the current one is kept as ``NAME.previous``. A smoke
inference on zeros of the model's input shapes follows; if it fails, the previous version is put back. The device's
``deployed.json`` records what is deployed (task, target, run key, hashes, input shapes), never a path or
setting of this machine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edgeprune
from edgeprune.core.hashing import sha256_file
from edgeprune.core.manifest import MANIFEST, Manifest, ManifestError
from edgeprune.devices.transport import Device, DeviceError, open_device, run_agent, safe_name

#: Runtimes whose deployed artefact is an engine built on the device from the run's ONNX.
ENGINE_RUNTIMES = ("tensorrt", "trtexec")


class DeployError(ValueError):
    """A run folder cannot be deployed, or the deployed model failed its smoke inference."""


@dataclass(frozen=True)
class DeployResult:
    device: str
    path: str
    sha256: str
    previous: str | None
    outputs: list[list[int]]
    action: str  # "deployed" or "rolled back"

    def summary(self) -> str:
        kept = f"; previous version kept as {self.previous}" if self.previous else "; no previous version"
        shapes = ", ".join("x".join(map(str, s)) for s in self.outputs)
        return (f"{self.action} {self.path} on {self.device} (sha256 {self.sha256[:12]}…){kept}; smoke inference: "
                f"{len(self.outputs)} finite output(s) {shapes}")


def read_manifest(run_dir: Path) -> Manifest:
    """The run's manifest (:meth:`Manifest.load`), its errors as :class:`DeployError`."""
    try:
        return Manifest.load(run_dir)
    except ManifestError as exc:
        if exc.kind == "no-manifest":
            raise DeployError(f"{run_dir} holds no {MANIFEST}: give the folder of a finished edgeprune tune run") from None
        raise DeployError(str(exc)) from None


def default_dest(manifest: Manifest) -> str:
    """``~/edgeprune/deploy/<task>`` on the device."""
    return f"edgeprune/deploy/{safe_name(manifest.task.name)}"


def _artefact(manifest: Manifest, run_dir: Path) -> tuple[Path, str, bool]:
    """(file to upload, its deployed name, build an engine from it there), checked against the manifest."""
    runtime = manifest.target.runtime
    if runtime == "torch-cuda":
        raise DeployError("deploy takes ONNX Runtime and TensorRT runs; a torch-cuda run's .pt2 runs inside your own "
                          "Python program")
    source = run_dir / "model.onnx"
    expected = manifest.files.get(source.name)
    if not source.is_file() or expected is None:
        raise DeployError(f"{run_dir} has no model.onnx listed in its manifest")
    if sha256_file(source) != expected:
        raise DeployError(f"{source} does not match its manifest's sha256: the run folder was changed after the run")
    engine = runtime in ENGINE_RUNTIMES
    return source, "model.plan" if engine else source.name, engine


def _device_target(manifest: Manifest) -> str:
    return json.dumps({**manifest.target.model_dump(), "device": "local", "agent_python": None})


def deploy(run_dir: Path, url: str, dest: str | None = None, agent_python: str | None = None, *,
           allow_infeasible: bool = False, log: Callable[[str], None] = lambda _: None) -> DeployResult:
    """Upload, verify, (build,) install and smoke-test RUN_DIR's artefact on the device at ``url``."""
    from edgeprune.runtimes.trtexec_formats import OnnxFacts

    manifest = read_manifest(run_dir)
    if manifest.status != "met" and not allow_infeasible:
        raise DeployError(f"{run_dir} is an {manifest.status} run (its budgets do not both hold): "
                          "deploy it anyway with --allow-infeasible")
    source, name, engine = _artefact(manifest, run_dir)
    device = open_device(url, agent_python or manifest.target.agent_python)
    folder = device.path(dest or default_dest(manifest))
    digest = manifest.files[source.name]
    record = {"format": "edgeprune.deployed/1", "task": manifest.task.name, "run_key": manifest.run_key,
              "run_status": manifest.status, "source": source.name, "target": json.loads(_device_target(manifest)),
              "inputs": list(OnnxFacts.of(source).inputs), "edgeprune": edgeprune.__version__}
    upload = f"{folder}/.upload-{uuid.uuid4().hex[:12]}"
    log(f"uploading {source.name} to {device.url}")
    device.put(source, upload)
    log("verifying the upload and installing it" + (" (building the engine on the device)" if engine else ""))
    build = ["--build", "--target", _device_target(manifest)] if engine else []
    installed = run_agent(device, "install", "--upload", upload, "--sha256", digest, "--dest", folder, "--name", name,
                          "--record", json.dumps(record), *build, timeout=3600)
    return _smoke(device, folder, name, installed, "deployed", log)


def rollback(run_dir: Path, url: str, dest: str | None = None, agent_python: str | None = None, *,
             log: Callable[[str], None] = lambda _: None) -> DeployResult:
    """Swap the deployed version and the previous one back, then smoke-test it."""
    manifest = read_manifest(run_dir)
    device = open_device(url, agent_python or manifest.target.agent_python)
    folder = device.path(dest or default_dest(manifest))
    name = "model.plan" if manifest.target.runtime in ENGINE_RUNTIMES else "model.onnx"
    log(f"rolling back {name} on {device.url}")
    restored = run_agent(device, "rollback", "--dest", folder, "--name", name)
    return _smoke(device, folder, name, {**restored, "previous": f"{folder}/{name}.previous"}, "rolled back", log)


def _smoke(device: Device, folder: str, name: str, installed: dict[str, Any], action: str,
           log: Callable[[str], None]) -> DeployResult:
    """One inference of what is now deployed; a failed one puts the previous version back (when there is one)."""
    log("smoke inference on the device")
    try:
        smoke = run_agent(device, "smoke", "--dest", folder)
        if not smoke["finite"]:
            raise DeviceError(f"{device.url}: the smoke inference of {name} gave non-finite outputs")
    except DeviceError as exc:
        if action == "deployed" and installed.get("previous"):
            run_agent(device, "rollback", "--dest", folder, "--name", name)
            raise DeployError(f"{exc}; the previous version was put back") from None
        raise DeployError(f"{exc}; nothing to put back (no previous version)") from None
    return DeployResult(device.url, installed["installed"], installed["sha256"], installed.get("previous"),
                        smoke["outputs"], action)
