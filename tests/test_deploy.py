# ruff: noqa: F811 - the sshd fixtures are imported by name and then requested as arguments
"""edgeprune deploy against a real OpenSSH server on localhost, the agent running ONNX Runtime on the "device"."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from sshd import Sshd, device_env, sshd  # noqa: F401 - fixtures (a module of its own: two test files use it)
from typer.testing import CliRunner

from edgeprune.artifact.deploy import DeployError, deploy, rollback
from edgeprune.artifact.export import export_onnx
from edgeprune.cli import app
from edgeprune.core.hashing import sha256_file
from edgeprune.core.manifest import (
    Budgets,
    GraphRecord,
    LatencyBudgetRecord,
    Manifest,
    MetricBudgetRecord,
    PrunedRecord,
    StepRecord,
    TaskRecord,
)
from edgeprune.core.targets import load_target
from edgeprune.core.task import load_task
from edgeprune.devices import transport as devices
from edgeprune.devices.transport import DeviceError, SshDevice


def make_run(folder: Path, seed: int, status: str = "met") -> Path:
    """A run folder as tune publishes it, reduced to what deploy reads: manifest.json (a complete one, of a run
    that pruned nothing) and model.onnx."""
    task = load_task("digits-autoencoder")
    model = task.build()
    if seed:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.01 * seed)
    folder.mkdir(parents=True)
    export_onnx(model, task.example_inputs(), folder / "model.onnx", dynamo=False)  # the quick exporter
    target = load_target("cpu")
    dense = StepRecord(index=0, ratio=0.0, status="dense", metrics={task.metric: 0.0}, latency={"median_ms": 1.0})
    Manifest(status=status, reason="a test run", run_key=f"run{seed}", created="2025-01-01T00:00:00+00:00", wall_s=0.0,
             settings={"task": task.name, "target": target.name}, target=target, target_digest=target.digest(),
             task=TaskRecord(name=task.name, spec=task.name, metric=task.metric, dense_weights_sha256=""),
             versions={}, budgets=Budgets(latency=LatencyBudgetRecord(expression="1x", threshold_ms=1.0, holds=True),
                                          metric=MetricBudgetRecord(expression=task.default_metric_budget,
                                                                    threshold=0.0, holds=True)),
             dense=dense, pruned=PrunedRecord(**dense.model_dump(), max_abs_error=0.0, pruned_groups=0, groups=0),
             graph=GraphRecord(components={}, not_pruned={}, torch_pruning_notes=[]), steps=[dense], measurements=1,
             cost_model=None, files={"model.onnx": sha256_file(folder / "model.onnx")}).save(folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    return make_run(root / "one", 0), make_run(root / "two", 1)


def test_deploy_verify_keep_previous_and_roll_back(device_env: Sshd, runs: tuple[Path, Path], tmp_path: Path) -> None:
    one, two = runs
    dest = tmp_path / "robot" / "models"
    url = device_env.url()
    first = deploy(one, url, str(dest), sys.executable)
    sha_one = Manifest.load(one).files["model.onnx"]
    assert first.sha256 == sha_one == sha256_file(dest / "model.onnx")  # checksum verified there, and true
    assert first.previous is None and first.outputs == [[1, 1, 32, 32]]  # smoke inference ran
    record = json.loads((dest / "deployed.json").read_text())
    assert record["sha256"] == sha_one and record["run_key"] == "run0" and record["target"]["device"] == "local"
    text = (dest / "deployed.json").read_text()
    assert "ssh" not in text and str(device_env.config.parent) not in text  # no keys, configs or host paths

    second = deploy(two, url, str(dest), sys.executable)
    sha_two = sha256_file(two / "model.onnx")
    assert second.sha256 == sha_two == sha256_file(dest / "model.onnx")
    assert sha256_file(dest / "model.onnx.previous") == sha_one and second.previous
    assert not [p.name for p in dest.iterdir() if p.name.startswith(".")]  # no temp files left

    back = rollback(two, url, str(dest), sys.executable)
    assert back.action == "rolled back" and sha256_file(dest / "model.onnx") == sha_one
    assert json.loads((dest / "deployed.json").read_text())["sha256"] == sha_one
    assert sha256_file(dest / "model.onnx.previous") == sha_two  # rolling back again rolls forward


def _corrupting_put(transform):  # type: ignore[no-untyped-def]
    """SshDevice.put that uploads ``transform(bytes)`` instead of the file: what a broken or cut transfer leaves."""
    original = SshDevice.put

    def put(self: SshDevice, local: Path, remote: str) -> None:
        bad = local.with_name(f"{local.name}.bad")
        bad.write_bytes(transform(local.read_bytes()))
        try:
            original(self, bad, remote)
        finally:
            bad.unlink()

    return put


@pytest.mark.parametrize(("what", "transform"), [
    ("cut short", lambda data: data[: len(data) // 2]),
    ("corrupted", lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]),
])
def test_a_bad_upload_is_refused_and_the_deployed_version_stays(device_env: Sshd, runs: tuple[Path, Path],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               what: str, transform) -> None:  # type: ignore[no-untyped-def]
    one, two = runs
    dest = tmp_path / "models"
    deploy(one, device_env.url(), str(dest), sys.executable)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    monkeypatch.setattr(SshDevice, "put", _corrupting_put(transform))
    with pytest.raises(Exception, match=r"checksum mismatch: .* the deployed version is untouched") as err:
        deploy(two, device_env.url(), str(dest), sys.executable)
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before  # the bad upload was removed too


def test_an_interrupted_upload_leaves_the_deployed_version(device_env: Sshd, runs: tuple[Path, Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ssh transfer is killed half-way (its source stalls after half the file, then the timeout hits)."""
    one, two = runs
    dest = tmp_path / "models"
    deploy(one, device_env.url(), str(dest), sys.executable)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    original = SshDevice.put

    def stalling_put(self: SshDevice, local: Path, remote: str) -> None:
        data, fifo = local.read_bytes(), tmp_path / "stalling"
        os.mkfifo(fifo)

        def feed() -> None:
            with fifo.open("wb") as sink:
                sink.write(data[: len(data) // 2])
                sink.flush()
                time.sleep(3)

        threading.Thread(target=feed, daemon=True).start()
        monkeypatch.setattr(devices, "sha256_file", lambda _: sha256_file(local))  # the FIFO can be read once
        original(self, fifo, remote, timeout=1.5)

    monkeypatch.setattr(SshDevice, "put", stalling_put)
    with pytest.raises(DeviceError, match="was interrupted after 1.5 s; nothing was replaced"):
        deploy(two, device_env.url(), str(dest), sys.executable)
    time.sleep(0.3)  # the device notices the closed connection, finds the checksum wrong and removes the part
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_deploy_through_the_cli_and_its_one_line_errors(device_env: Sshd, runs: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    one, _ = runs
    dest = tmp_path / f"models; touch {tmp_path}/pwned $(touch {tmp_path}/pwned2)"
    ok = CliRunner().invoke(app, ["deploy", str(one), "--device", device_env.url(), "--dest", str(dest),
                                  "--agent-python", sys.executable])
    assert ok.exit_code == 0, ok.output
    assert "deployed" in ok.stdout and "smoke inference: 1 finite output(s) 1x1x32x32" in ok.stdout
    assert (dest / "model.onnx").is_file() and not list(tmp_path.glob("pwned*"))  # a path, never a command

    infeasible = make_run(tmp_path / "infeasible", 0, status="infeasible")
    cases = [
        ([str(tmp_path / "nothing"), "--device", device_env.url()], "run folder .*nothing does not exist"),
        ([str(tmp_path), "--device", device_env.url()], "holds no manifest.json"),
        ([str(one), "--device", "ssh://root@host;reboot"], "expected 'local' or 'ssh://user@host"),
        ([str(infeasible), "--device", device_env.url()], "deploy it anyway with --allow-infeasible"),
        ([str(one), "--device", device_env.url(), "--dest", str(tmp_path / "empty"), "--rollback",
          "--agent-python", sys.executable], "nothing to roll back to"),
        ([str(one), "--device", device_env.url(), "--agent-python", "/usr/bin/python3"],
         "edgeprune's agent is not installed for /usr/bin/python3"),
        ([str(one), "--device", f"ssh://{device_env.user}@edgeprune-unknown"], "is not in known_hosts"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["deploy", *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, (args, result.output)
        assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines[0]


def test_a_changed_run_folder_is_refused(runs: tuple[Path, Path], tmp_path: Path) -> None:
    one, _ = runs
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "manifest.json").write_text((one / "manifest.json").read_text())
    (copy / "model.onnx").write_bytes((one / "model.onnx").read_bytes() + b"x")
    with pytest.raises(DeployError, match="does not match its manifest's sha256"):
        deploy(copy, "local")
