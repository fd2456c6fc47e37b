"""The device layer against a real OpenSSH server on localhost: remote profiling through the agent, trtexec run
through ssh (a FAKE trtexec: no TensorRT here), and one clear line for every way reaching a device can fail."""

# ruff: noqa: F811 - the sshd fixtures are imported by name and then requested as arguments
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from sshd import Sshd, device_env, sshd  # noqa: F401 - fixtures (a module of its own: two test files use it)
from test_trtexec import DOC, ENGINE, FAKE_TRTEXEC, _real, _tiny_onnx
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.core.targets import Target, TargetError, load_target
from edgeprune.core.task import load_task
from edgeprune.devices import probe
from edgeprune.devices.probe import key_facts
from edgeprune.devices.transport import DeviceError, LocalDevice, SshDevice, open_device
from edgeprune.loop import target_inputs
from edgeprune.measure.store import ProfileStore, profile_task
from edgeprune.prune.graph import ComponentGraph
from edgeprune.runtimes import get_runtime
from edgeprune.runtimes.remote import RemoteRuntime
from edgeprune.runtimes.trtexec import TrtexecRuntime

TINY = {"warmup": 1, "runs": 5, "repeats": 2, "profile_runs": 3}


def remote_cpu(url: str, python: str = sys.executable, name: str = "cpu-remote") -> Target:
    """The shipped CPU target, run on ``url`` by the agent with ``python``, with few runs."""
    data = load_target("cpu").model_dump()
    return Target.model_validate({**data, "name": name, "device": url, "agent_python": python, "measure": TINY})


def test_remote_profile_brings_back_profile_and_device_facts(device_env: Sshd, tmp_path: Path) -> None:
    task = load_task("digits-autoencoder")
    target = remote_cpu(device_env.url())
    runtime = get_runtime(target)
    assert isinstance(runtime, RemoteRuntime)
    inputs = target_inputs(task, target)
    args = {"components": task.components, "output_layers": task.output_layers}
    store = ProfileStore(tmp_path / "profiles")
    result = profile_task(task, target, runtime, inputs, ComponentGraph(task.build(), inputs, **args), store)
    frame = result.profile
    assert not result.reused and result.profile_path.is_file()
    assert len(frame) > 5 and (frame["time_ms"] > 0).all()
    assert set(frame["component"]) >= {"encoder", "decoder"}  # ORT nodes mapped to modules, as locally
    provenance = json.loads(result.profile_path.with_suffix(".json").read_text())
    facts = probe.facts()
    assert provenance["device"] == device_env.url()
    assert provenance["device_cpu"] == facts["cpu"] and provenance["device_onnxruntime"] == facts["onnxruntime"]
    assert provenance["device_facts"]["hostname"] == facts["hostname"]
    assert "host_cpu" not in provenance  # this machine's CPU says nothing about a remote measurement
    # the same device state reuses the profile; another device state (here: another L4T) would not
    again = profile_task(task, target, get_runtime(target), inputs, ComponentGraph(task.build(), inputs, **args), store)
    assert again.reused and again.key == result.key
    assert key_facts({**facts, "l4t": "36.4.0"}) != key_facts(facts)
    # the ONNX went up once, content-addressed; nothing half-written was left in the device's work folder
    assert len(list((device_env.workdir / "files").glob("*.onnx"))) == 1
    assert not list(device_env.workdir.rglob("*.part"))


def test_remote_run_and_latency_match_the_local_runtime(device_env: Sshd, tmp_path: Path) -> None:
    onnx_path = _tiny_onnx(tmp_path / "relu.onnx")
    model = onnx.load(str(onnx_path))
    model.ir_version = 10  # what this onnxruntime reads
    onnx.save(model, str(onnx_path))
    runtime = get_runtime(remote_cpu(device_env.url()))
    built = runtime.build(onnx_path, tmp_path)
    assert built == onnx_path  # ONNX Runtime runs the ONNX itself: no handle needed
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(runtime.run(built, [x])[0], np.maximum(x, 0))
    latency = runtime.latency(built, [x])
    assert len(latency.repeats_ms) == TINY["repeats"] and latency.median_ms > 0
    paired = runtime.compare(built, built, [x])  # the agent times both in alternation on the device
    assert len(paired.ratios) == TINY["repeats"] and 0.5 < paired.ratio < 2.0 and paired.model_ms > 0


@pytest.mark.filterwarnings("ignore:.*printed no 10/90 % percentiles")
def test_remote_trtexec_runs_its_command_lines_over_ssh(device_env: Sshd, tmp_path: Path) -> None:
    """A FAKE trtexec on the "device" (reached through sshd, which passes no environment: a wrapper sets it)."""
    folder = _real("fp16")
    fake = tmp_path / "bin" / "fake-trtexec"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRTEXEC.format(python=sys.executable, layers=str(folder / f"{ENGINE}.graph.json"),
                                        profile=str(folder / f"{ENGINE}.profile.json"),
                                        log=str(DOC / "resnet18-a100-fp16.log")))
    wrapper = tmp_path / "bin" / "trtexec"
    wrapper.write_text(f"#!/bin/sh\nFAKE_TRTEXEC_ARGV='{tmp_path / 'argv.jsonl'}' exec '{fake}' \"$@\"\n")
    fake.chmod(0o755)
    wrapper.chmod(0o755)
    data = load_target("jetson-orin-agx").model_dump(exclude_unset=True)
    data.update(device=device_env.url(), agent_python=sys.executable, measure={"runs": 20, "repeats": 2,
                                                                                "profile_runs": 10})
    data["tensorrt"] = {**data["tensorrt"], "trtexec": str(wrapper)}
    runtime = get_runtime(Target.model_validate(data))
    assert isinstance(runtime, TrtexecRuntime) and isinstance(runtime.device, SshDevice)
    local = tmp_path / "local"
    local.mkdir()
    plan = runtime.build(_tiny_onnx(local / "m.onnx"), local)
    assert plan.read_bytes() == b"fake plan" and plan.with_suffix(".layers.json").is_file()  # pulled back
    argv = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    build = next(a for a in argv if any(x.startswith("--onnx=") for x in a))
    assert all(str(device_env.workdir) in a.partition("=")[2] for a in build if a.startswith(
        ("--onnx=", "--saveEngine=", "--timingCacheFile=", "--exportLayerInfo=")))  # device paths, not ours
    assert runtime.latency(plan, []).median_ms > 0
    assert len(runtime.profile(plan, [])) > 10
    np.testing.assert_array_equal(runtime.run(plan, [np.arange(4, dtype=np.float32).reshape(1, 4)])[0],
                                  [[0, 2, 4, 6]])
    versions = runtime.versions()
    assert versions["tensorrt"] == "10.3.0" and versions["device_cpu"] == probe.facts()["cpu"]


@pytest.mark.parametrize(
    ("alias", "message"),
    [
        ("no-such-host.invalid", "cannot resolve host name 'no-such-host.invalid'"),
        ("127.0.0.1:1", "cannot connect to 127.0.0.1 port 1: Connection refused"),
        ("edgeprune-stranger", "refused our SSH key for user"),
        ("edgeprune-unknown", "host key of edgeprune-unknown is not in known_hosts: add it with ssh-keyscan"),
    ],
)
def test_reaching_a_device_fails_in_one_clear_line(device_env: Sshd, alias: str, message: str) -> None:
    url = f"ssh://{device_env.user}@{alias}"
    with pytest.raises(DeviceError, match=message) as err:
        open_device(url).run(["true"], timeout=30)
    assert "\n" not in str(err.value) and "client" not in str(err.value)  # no key paths in messages
    with pytest.raises(DeviceError, match=message):
        get_runtime(remote_cpu(url))


def test_missing_agent_and_missing_python(device_env: Sshd, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="edgeprune's agent is not installed for /usr/bin/python3 there"):
        get_runtime(remote_cpu(device_env.url(), "/usr/bin/python3"))
    with pytest.raises(DeviceError, match="/nonexistent/python not found there"):
        get_runtime(remote_cpu(device_env.url(), "/nonexistent/python"))


def test_cli_profile_on_an_unreachable_device_is_one_line(device_env: Sshd, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["profile", "--target", "cpu", "--device", "ssh://me@127.0.0.1:1",
                                      "--agent-python", sys.executable, "--store", str(tmp_path / "p")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to 127.0.0.1 port 1" in lines[0], result.stderr


def test_no_shell_injection_through_arguments_paths_or_names(device_env: Sshd, tmp_path: Path) -> None:
    device = open_device(device_env.url())
    evil = f"x; touch {tmp_path}/pwned1 $(touch {tmp_path}/pwned2) `touch {tmp_path}/pwned3` 'q\" \\"
    done = device.run(["echo", evil], timeout=30)
    assert done.stdout.rstrip("\n") == evil
    source = tmp_path / "source.bin"
    source.write_bytes(b"\x00payload\xff")
    remote = str(tmp_path / f"dir; touch {tmp_path}/pwned4" / f"f $(touch {tmp_path}/pwned5).bin")
    device.put(source, remote)
    assert Path(remote).read_bytes() == source.read_bytes()
    device.get(remote, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    # a task or target name reaches device paths only as one safe component
    runtime = get_runtime(remote_cpu(device_env.url(), name=f"t; touch {tmp_path}/pwned6"))
    assert "; " not in runtime.builds
    assert not list(tmp_path.glob("pwned*"))
    for url in (f"ssh://root@host;touch {tmp_path}/pwned", "ssh://-oProxyCommand=touch@x", "ssh://a@b\n"):
        with pytest.raises(DeviceError, match="expected 'local' or 'ssh://user@host"):
            open_device(url)
        with pytest.raises((TargetError, ValueError)):
            remote_cpu(url)
    with pytest.raises(DeviceError, match="give an absolute path"):
        open_device(device_env.url(), "python3 -c 'import os'")


def test_local_device_is_the_same_interface(tmp_path: Path) -> None:
    device = LocalDevice()
    (tmp_path / "a").write_text("hello")
    device.put(tmp_path / "a", str(tmp_path / "sub" / "b"))
    device.get(str(tmp_path / "sub" / "b"), tmp_path / "c")
    assert (tmp_path / "c").read_text() == "hello" and device.exists(str(tmp_path / "sub" / "b"))
    assert device.run(["echo", "$HOME"]).stdout == "$HOME\n"
    facts = device.facts()
    assert facts["cpu_count"] and facts["l4t"] is None and facts["nvpmodel"] is None  # absent facts are null
