"""trtexec parsing and attribution: real ResNet-18 outputs (TRT 8.x, A100) plus hand-written newer-format files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper

from edgeprune.core.targets import Target, load_target
from edgeprune.runtimes import RuntimeFailure, RuntimeMissing, get_runtime, trtexec
from edgeprune.runtimes.trtexec import TrtexecRuntime, build_command, profile_command, run_command, timing_command
from edgeprune.runtimes.trtexec_formats import (
    attribute_engine,
    load_layer_info,
    load_profile_json,
    onnx_nodes_of_layer,
    parse_perf_summary,
    summarize,
    trt_version,
)

REAL = Path(__file__).parent / "fixtures" / "trtexec"  # real trtexec outputs (NVIDIA TREx example; see its README)
DOC = Path(__file__).parent / "fixtures" / "trtexec-documented"
ENGINE = "resnet.onnx.engine"


def _real(precision: str) -> Path:
    return REAL / f"resnet18-a100-{precision}"


@pytest.mark.parametrize(("precision", "layers"), [("fp16", 36), ("fp32", 32)])
def test_real_profile_and_layer_info_agree(precision: str, layers: int) -> None:
    folder = _real(precision)
    profile = load_profile_json(folder / f"{ENGINE}.profile.json")
    info = load_layer_info(folder / f"{ENGINE}.graph.json")
    raw = json.loads((folder / f"{ENGINE}.profile.json").read_text())
    assert len(profile) == len(info) == layers == len(raw) - 1
    assert list(profile["layer"]) == list(info["layer"])
    assert profile.attrs["count"] == 1
    assert profile["time_ms"].tolist() == [float(e["averageMs"]) for e in raw[1:]]
    assert info.attrs["io_tensors"] == ["input.1", "191"]
    assert all(nodes == [] for nodes in info["onnx_nodes"])  # TRT 8.x wrote no Metadata


def test_real_fp16_reformats_fold_into_consumers_and_nothing_is_lost() -> None:
    folder = _real("fp16")
    profile = load_profile_json(folder / f"{ENGINE}.profile.json")
    info = load_layer_info(folder / f"{ENGINE}.graph.json")
    assert info.set_index("layer").loc["Conv_0 + Relu_1", "formats"] == [
        "Channel major FP16 format where channel % 4 == 0", "Channel major FP16 format where channel % 8 == 0"
    ]
    modules = {"Conv_0": "conv1", "Relu_1": "relu", "Gemm_48": "fc", "Conv_5": "layer1.0.conv2"}
    frame = attribute_engine(profile, info, modules).set_index("layer")
    copy = "Reformatting CopyNode for Input Tensor 0 to Conv_0 + Relu_1"
    assert frame.loc[copy, "kind"] == "reformat"
    assert frame.loc[copy, "attributed_to"] == "Conv_0 + Relu_1"
    assert frame.loc[copy, "time_ms"] == 0.0
    assert frame.loc["Conv_0 + Relu_1", "time_ms"] == pytest.approx(0.080896 + 0.111616, abs=1e-12)
    assert frame.loc["Conv_0 + Relu_1", "module"] == "conv1"
    assert frame.loc["Conv_0 + Relu_1", "op_type"] == info.set_index("layer").loc["Conv_0 + Relu_1", "layer_type"]
    assert frame.loc["Conv_5 + Add_6 + Relu_7", "onnx_nodes"] == ["Conv_5", "Add_6", "Relu_7"]
    assert frame.loc["reshape_after_Gemm_48", "onnx_nodes"] == ["Gemm_48"]
    assert frame.loc["reshape_after_Gemm_48", "module"] == "fc"
    # the output copy after the last layer folds into it as well
    assert frame.loc["Reformatting CopyNode for Output Tensor 0 to reshape_after_Gemm_48", "attributed_to"] == (
        "reshape_after_Gemm_48"
    )
    assert abs(frame["time_ms"].sum() - profile["time_ms"].sum()) < 1e-9
    assert (frame["kind"] == "reformat").sum() == 12
    stats = summarize(frame)
    assert stats["total_ms"] == pytest.approx(profile["time_ms"].sum(), abs=1e-9)
    assert stats["attributed_ms"] + stats["unattributed_ms"] == pytest.approx(stats["total_ms"], abs=1e-9)
    assert stats["attributed_ms"] > 0 and stats["unattributed_ms"] > 0
    assert frame["share"].sum() == pytest.approx(1.0)


def test_real_fp32_attributes_without_layer_info() -> None:
    profile = load_profile_json(_real("fp32") / f"{ENGINE}.profile.json")
    frame = attribute_engine(profile, None)
    assert abs(frame["time_ms"].sum() - profile["time_ms"].sum()) < 1e-9
    assert summarize(frame)["unattributed_ms"] == pytest.approx(profile["time_ms"].sum(), abs=1e-9)
    row = frame.set_index("layer").loc["Reformatting CopyNode for Output Tensor 0 to MaxPool_2"]
    assert (row["kind"], row["attributed_to"], row["onnx_nodes"]) == ("reformat", "MaxPool_2", ["MaxPool_2"])


@pytest.mark.parametrize(
    ("name", "nodes", "kind"),
    [
        ("Conv_5 + Add_6 + Relu_7", ["Conv_5", "Add_6", "Relu_7"], "layer"),
        ("PWN(PWN(Add_5 + Relu_6), Mul_4)", ["Add_5", "Relu_6", "Mul_4"], "layer"),
        ("Conv_68 + Relu_69 -> Conv_70", ["Conv_68", "Relu_69", "Conv_70"], "layer"),
        ("Reformatting CopyNode for Input Tensor 1 to Conv_5 + Add_6 + Relu_7", ["Conv_5", "Add_6", "Relu_7"],
         "reformat"),
        ("{ForeignNode[/enc/enc.0/Conv.../dec/dec.3/Conv]}", ["/enc/enc.0/Conv", "/dec/dec.3/Conv"], "foreign"),
        ("reshape_after_Gemm_48", ["Gemm_48"], "layer"),
        ("", [], "unknown"),
    ],
)
def test_layer_names(name: str, nodes: list[str], kind: str) -> None:
    assert onnx_nodes_of_layer(name, None) == (nodes, kind)


def test_metadata_wins_over_the_name() -> None:
    assert onnx_nodes_of_layer("fused_thing", ["/a/Gemm", "/a/Relu"]) == (["/a/Gemm", "/a/Relu"], "layer")


def test_trt10_metadata_maps_fused_layer_to_both_nodes() -> None:
    info = load_layer_info(DOC / "trt10-layers.json")
    assert info.loc[0, "onnx_nodes"] == ["/encoder/encoder.0/Gemm", "/encoder/encoder.1/Relu"]
    assert info.loc[1, "onnx_nodes"] == ["/decoder/Gemm"]
    assert info.loc[0, "formats"] == ["Row major linear FP32", "Row major linear FP32"]
    assert info.attrs["io_tensors"] == ["x", "y"]
    profile = pd.DataFrame({"layer": info["layer"], "time_ms": [0.3, 0.1]})
    modules = {"/encoder/encoder.0/Gemm": "encoder.0", "/encoder/encoder.1/Relu": "encoder.1"}
    frame = attribute_engine(profile, info, modules)
    assert frame["module"].tolist() == ["encoder.0", ""]
    assert summarize(frame) == pytest.approx({"total_ms": 0.4, "attributed_ms": 0.3, "unattributed_ms": 0.1})


def test_trt11_io_tensors_split_formats_and_foreign_node() -> None:
    info = load_layer_info(DOC / "trt11-layers.json")
    assert info.attrs["io_tensors"] == ["x", "y"]
    assert info.loc[0, "formats"] == ["Row major linear FP16", "Channel major linear (8 channels) FP16"]
    assert info.loc[1, "layer_type"] == "Myelin"
    profile = load_profile_json(DOC / "trt11-profile.json")
    assert profile.attrs["count"] == 100
    frame = attribute_engine(profile, info, {"/encoder/encoder.0/Conv": "encoder.0"}).set_index("layer")
    foreign = "{ForeignNode[/encoder/encoder.0/Conv.../decoder/decoder.3/Conv]}"
    assert frame.loc[foreign, "kind"] == "foreign"
    assert frame.loc[foreign, "onnx_nodes"] == ["/encoder/encoder.0/Conv", "/decoder/decoder.3/Conv"]
    assert frame.loc[foreign, "time_ms"] == pytest.approx(0.125)
    assert frame.loc[foreign, "module"] == "encoder.0"
    assert frame.iloc[0]["attributed_to"] == foreign


def test_layer_names_only() -> None:
    info = load_layer_info(DOC / "layers-names-only.json")
    assert info["layer"].tolist()[1] == "PWN(PWN(/decoder/Add + /decoder/Relu), /decoder/Mul)"
    assert info.loc[1, "layer_type"] == "" and info.loc[1, "onnx_nodes"] == []


def test_malformed_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    cases = {"a.json": "{not json", "b.json": '[{"name": "x"}]', "c.json": '[{"count": 1}, {"name": "x"}]',
             "d.json": '{"layers": []}'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    for name, loader in [("a.json", load_profile_json), ("b.json", load_profile_json), ("c.json", load_profile_json),
                         ("d.json", load_layer_info), ("a.json", load_layer_info)]:
        with pytest.raises(ValueError) as err:
            loader(tmp_path / name)
        assert "\n" not in str(err.value)


def test_perf_summary_matches_trex_parse_of_the_real_run() -> None:
    summary = parse_perf_summary((DOC / "resnet18-a100-fp16.log").read_text())
    trex_file = REAL / "resnet18-a100-fp16" / f"{ENGINE}.profile.metadata.json"
    assert summary["Throughput"] == 1155.36
    assert summary["Total GPU Compute Time"] == 2.99208
    gpu = summary["GPU Compute Time"]
    assert isinstance(gpu, dict)
    assert gpu == {"min": 0.856049, "max": 0.872559, "mean": 0.86277, "median": 0.862183, "percentile(99%)": 0.871338}
    trex = json.loads(trex_file.read_text())["performance_summary"]
    for key in ("Latency", "GPU Compute Time", "Enqueue Time", "H2D Latency", "D2H Latency"):
        assert list(summary[key].values()) == trex[key]  # type: ignore[union-attr]
    for key in ("Throughput", "Total Host Walltime", "Total GPU Compute Time"):
        assert summary[key] == trex[key]


def test_perf_summary_newer_percentiles_and_timestamps() -> None:
    summary = parse_perf_summary((DOC / "trt10-summary.log").read_text())
    assert summary["Throughput"] == 1020.5
    gpu = summary["GPU Compute Time"]
    assert isinstance(gpu, dict)
    assert (gpu["min"], gpu["median"], gpu["percentile(90%)"], gpu["percentile(99%)"]) == (0.946, 0.97, 1.0, 1.09)
    assert not math.isnan(summary["Total Host Walltime"])  # type: ignore[arg-type]
    assert parse_perf_summary("[I] nothing here") == {}


# --- TrtexecRuntime against a fake trtexec -------------------------------------------------------------------

#: A FAKE trtexec (NVIDIA's real one needs an NVIDIA GPU): a Python script that accepts only real trtexec flags,
#: logs its argv, writes the real fixture files where --exportLayerInfo/--exportProfile point, and prints the
#: real run's log for a timing run. FAKE_TRTEXEC_BANNER sets the version banner; FAKE_TRTEXEC_FAIL makes it fail.
FAKE_TRTEXEC = '''#!{python}
"""FAKE trtexec for edgeprune's tests."""
import array, json, os, shutil, sys
from pathlib import Path
FLAGS = {{"--onnx", "--saveEngine", "--timingCacheFile", "--fp16", "--int8", "--memPoolSize",
         "--builderOptimizationLevel", "--profilingVerbosity", "--exportLayerInfo", "--skipInference", "--loadEngine",
         "--warmUp", "--iterations", "--duration", "--avgRuns", "--percentile", "--noDataTransfers", "--useSpinWait",
         "--dumpProfile", "--separateProfileRun", "--exportProfile", "--loadInputs", "--exportOutput", "--device",
         "--useDLACore", "--allowGPUFallback", "--sparsity", "--help"}}
args = sys.argv[1:]
with open(os.environ["FAKE_TRTEXEC_ARGV"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
print("&&&& RUNNING TensorRT.trtexec [TensorRT v" + os.environ.get("FAKE_TRTEXEC_BANNER", "100300") + "] # trtexec")
opts = dict(a.partition("=")[::2] for a in args)
for flag in opts:
    if flag not in FLAGS:
        print("[E] Unknown option: " + flag)
        sys.exit(1)
if os.environ.get("FAKE_TRTEXEC_FAIL"):
    print("[I] Loading ...")
    print("[E] Error[4]: [network.cpp::validate::3100] Error Code 4: Internal Error (input: dynamic shape)")
    print("[E] Engine could not be created from network")
    print("&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec " + " ".join(args))
    sys.exit(1)
if "--help" in opts:
    print("=== Model Options ===")
elif "--onnx" in opts:
    assert "--skipInference" in opts and opts["--profilingVerbosity"] == "detailed", args
    Path(opts["--saveEngine"]).write_bytes(b"fake plan")
    shutil.copy({layers!r}, opts["--exportLayerInfo"])
    if "--timingCacheFile" in opts:
        cache = Path(opts["--timingCacheFile"])
        cache.write_text(str(int(cache.read_text()) + 1) if cache.exists() else "1")
elif "--loadEngine" in opts:
    assert Path(opts["--loadEngine"]).read_bytes() == b"fake plan"
    print("[I] Selected Device: NVIDIA Jetson AGX Orin")
    if "--exportProfile" in opts:
        shutil.copy({profile!r}, opts["--exportProfile"])
    elif "--exportOutput" in opts:
        name, _, path = opts["--loadInputs"].partition(":")
        values = [2 * v for v in array.array("f", Path(path).read_bytes())]
        Path(opts["--exportOutput"]).write_text(json.dumps([{{"name": "y", "dimensions": "1x4", "values": values}}]))
    else:
        print(Path({log!r}).read_text())
print("&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec")
'''


@pytest.fixture
def fake_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = _real("fp16")
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable, layers=str(folder / f"{ENGINE}.graph.json"),
                                       profile=str(folder / f"{ENGINE}.profile.json"),
                                       log=str(DOC / "resnet18-a100-fp16.log")))
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_TRTEXEC_ARGV", str(tmp_path / "argv.jsonl"))
    return exe


def _argv(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]


def _jetson(exe: Path | str, **changes: Any) -> Target:
    """The shipped AGX Orin target, made local and pointed at ``exe``, with few runs (validated again)."""
    data = load_target("jetson-orin-agx").model_dump(exclude_unset=True)
    data.update(device="local", measure={"runs": 20, "repeats": 2, "profile_runs": 10})
    data["tensorrt"] = {**data["tensorrt"], "trtexec": str(exe), **changes.pop("tensorrt", {})}
    return Target.model_validate({**data, **changes})


def _tiny_onnx(path: Path) -> Path:
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="act")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_command_lines_are_exact() -> None:
    settings = _jetson("/x/trtexec").tensorrt
    measure = _jetson("/x/trtexec").measure
    assert build_command("trtexec", Path("m.onnx"), Path("o/m.plan"), settings, ("fp16",), Path("o/t.cache")) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=o/m.plan", "--timingCacheFile=o/t.cache", "--fp16",
        "--memPoolSize=workspace:4096M", "--builderOptimizationLevel=3", "--profilingVerbosity=detailed",
        "--exportLayerInfo=o/m.layers.json", "--skipInference",
    ]
    dla = settings.model_copy(update={"dla_core": 1, "sparse_weights": True, "device": 2})
    assert build_command("trtexec", Path("m.onnx"), Path("m.plan"), dla, (), None)[3:] == [
        "--memPoolSize=workspace:4096M", "--builderOptimizationLevel=3", "--profilingVerbosity=detailed",
        "--exportLayerInfo=m.layers.json", "--device=2", "--useDLACore=1", "--allowGPUFallback", "--sparsity=enable",
        "--skipInference",
    ]
    assert timing_command("trtexec", Path("m.plan"), settings, measure) == [
        "trtexec", "--loadEngine=m.plan", "--warmUp=500", "--iterations=20", "--duration=0", "--avgRuns=1",
        "--percentile=10,90", "--noDataTransfers", "--useSpinWait",
    ]
    assert profile_command("trtexec", Path("m.plan"), Path("p.json"), settings, measure) == [
        "trtexec", "--loadEngine=m.plan", "--warmUp=500", "--iterations=10", "--duration=0", "--noDataTransfers",
        "--dumpProfile", "--separateProfileRun", "--exportProfile=p.json",
    ]
    assert run_command("trtexec", Path("m.plan"), [("x", Path("x.bin")), ("in:0", Path("y.bin"))], Path("o.json"),
                       dla) == [
        "trtexec", "--loadEngine=m.plan", "--loadInputs=x:x.bin,'in:0':y.bin", "--exportOutput=o.json",
        "--iterations=1", "--duration=0", "--warmUp=0", "--device=2", "--useDLACore=1",
    ]


def test_trtexec_runtime_builds_times_profiles_and_runs(fake_trtexec: Path, tmp_path: Path) -> None:
    target = _jetson(fake_trtexec)
    runtime = get_runtime(target)
    assert isinstance(runtime, TrtexecRuntime) and runtime.source == "onnx"
    onnx_path = _tiny_onnx(tmp_path / "m.onnx")
    plan = runtime.build(onnx_path, tmp_path / "out")
    cache = tmp_path / "out" / "timing-jetson-orin-agx-trt10.3.0.cache"
    assert plan == tmp_path / "out" / "m.plan" and cache.read_text() == "1"
    runtime.build(onnx_path, tmp_path / "out")
    assert cache.read_text() == "2"  # the second build was handed the first one's cache
    argv = _argv(tmp_path)
    assert argv[0] == ["--help"]  # the version banner decides --fp16 (TensorRT ≤ 10) or not
    assert argv[1] == build_command(str(fake_trtexec), onnx_path, plan, target.tensorrt, ("fp16",), cache)[1:]
    assert "--fp16" in argv[1]

    with pytest.warns(UserWarning, match="no 10/90 % percentiles"):
        latency = runtime.latency(plan, [np.zeros((1, 4), np.float32)])
    # the real run's summary: median of GPU Compute Time per process; it prints no 10/90 % percentiles: min/max
    assert latency.repeats_ms == (0.862183, 0.862183)
    assert (latency.p10_ms, latency.p90_ms) == (0.856049, 0.872559)
    assert _argv(tmp_path)[-1] == timing_command(str(fake_trtexec), plan, target.tensorrt, target.measure)[1:]
    before = len(_argv(tmp_path))
    paired = runtime.compare(plan, plan, [np.zeros((1, 4), np.float32)])
    assert paired.ratio == 1.0 and paired.model_ms == 0.862183  # one timing process per side and repetition
    assert len(_argv(tmp_path)) - before == 2 * target.measure.repeats

    frame = runtime.profile(plan, [np.zeros((1, 4), np.float32)])
    real = _real("fp16")
    expected = attribute_engine(load_profile_json(real / f"{ENGINE}.profile.json"),
                                load_layer_info(real / f"{ENGINE}.graph.json"))
    assert frame["layer"].tolist() == expected["layer"].tolist()
    assert frame["time_ms"].tolist() == pytest.approx(expected["time_ms"].tolist(), abs=1e-12)
    # the engine was built from m.onnx, whose only node is "act": no ResNet layer maps to it, and all of the
    # time is reported as unattributed rather than dropped
    assert all(nodes == [] for nodes in frame["onnx_nodes"])
    assert frame.attrs["unattributed_ms"] == pytest.approx(expected["own_ms"].sum(), abs=1e-9)
    assert frame.attrs["attributed_ms"] == 0.0
    assert (tmp_path / "out" / "m.profile.json").is_file()

    (y,) = runtime.run(plan, [np.array([[1, -2, 3, 4]], np.float32)])
    np.testing.assert_array_equal(y, [[2, -4, 6, 8]])
    assert runtime.versions() == {"trtexec": str(fake_trtexec), "tensorrt": "10.3.0", "gpu": "NVIDIA Jetson AGX Orin"}


def test_trtexec_11_gets_no_precision_flags(fake_trtexec: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRTEXEC_BANNER", "110000")
    runtime = get_runtime(_jetson(fake_trtexec))
    with pytest.raises(RuntimeFailure, match="TensorRT 11 takes precision from the ONNX"):
        runtime.build(_tiny_onnx(tmp_path / "m.onnx"), tmp_path)
    fp32 = get_runtime(_jetson(fake_trtexec, precision="fp32"))
    fp32.build(_tiny_onnx(tmp_path / "m.onnx"), tmp_path)
    assert not any(a in ("--fp16", "--int8") for a in _argv(tmp_path)[-1])


@pytest.mark.parametrize(("banner", "version"), [("[TensorRT v100500] [b18]", "10.5.0"), ("[TensorRT v8601]", "8.6.1"),
                                                 ("[TensorRT v110000]", "11.0.0"), ("[TensorRT v8]", "8"),
                                                 ("TensorRT", None)])
def test_version_from_the_banner(banner: str, version: str | None) -> None:
    assert trt_version(f"&&&& RUNNING TensorRT.trtexec {banner} # trtexec --help") == version


def test_trtexec_errors(fake_trtexec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeMissing, match="trtexec not found at /nonexistent/trtexec"):
        get_runtime(_jetson("/nonexistent/trtexec"))
    monkeypatch.setattr(trtexec, "DEFAULT_TRTEXEC", str(tmp_path / "nowhere" / "trtexec"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    data = _jetson(fake_trtexec).model_dump(exclude_unset=True)
    data["tensorrt"].pop("trtexec")
    with pytest.raises(RuntimeMissing, match="trtexec not found at .*nowhere/trtexec or on PATH"):
        get_runtime(Target.model_validate(data))
    monkeypatch.setenv("PATH", str(fake_trtexec.parent))
    assert get_runtime(Target.model_validate(data)).exe == str(fake_trtexec)  # found on PATH

    runtime = get_runtime(_jetson(fake_trtexec))
    monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "1")
    with pytest.raises(RuntimeFailure) as err:
        runtime.build(_tiny_onnx(tmp_path / "m.onnx"), tmp_path)
    assert str(err.value) == "trtexec build of m.onnx failed (exit 1): [E] Engine could not be created from network"
    (tmp_path / "m.plan").write_bytes(b"fake plan")
    with pytest.raises(RuntimeFailure, match=r"^trtexec profile of m.plan failed \(exit 1\): \[E\] Engine could not"):
        runtime.profile(tmp_path / "m.plan", [])


# --- layer-table sweeps through trtexec ---------------------------------------------------------------------------

#: A FAKE trtexec for sweep graphs (NVIDIA's real one needs an NVIDIA GPU), fed with data in the documented formats:
#: a build reads the ONNX it is given and writes TensorRT 10's detailed layer info (one layer per node, named after
#: it, ONNX-node Metadata, and a reformat copy before every conv as TensorRT inserts for FP16); a profile run writes
#: trtexec's --exportProfile list, each layer taking 0.003 ms plus 1e-6 ms per weight (copies 0.001 ms).
FAKE_SWEEP_TRTEXEC = '''#!{python}
"""FAKE trtexec (sweep graphs) for edgeprune's tests."""
import json, os, sys
from pathlib import Path
import onnx
args = sys.argv[1:]
with open(os.environ["FAKE_TRTEXEC_ARGV"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec")
opts = dict(a.partition("=")[::2] for a in args)
if "--onnx" in opts:
    graph = onnx.load(opts["--onnx"]).graph
    sizes = {{i.name: len(onnx.numpy_helper.to_array(i).ravel()) for i in graph.initializer}}
    layers, times = [], {{}}
    for node in graph.node:
        if node.op_type == "Conv":
            copy = "Reformatting CopyNode for Input Tensor 0 to " + node.name
            layers.append({{"Name": copy, "LayerType": "Reformat", "Inputs": [], "Outputs": [], "Origin": "REFORMAT"}})
            times[copy] = 0.001
        layers.append({{"Name": node.name, "LayerType": "CaskConvolution" if node.op_type == "Conv" else "PointWise",
                       "Inputs": [], "Outputs": [], "Metadata": "[ONNX Layer: " + node.name + "]"}})
        times[node.name] = 0.003 + 1e-6 * sum(sizes.get(i, 0) for i in node.input)
    Path(opts["--saveEngine"]).write_text(json.dumps(times))
    Path(opts["--exportLayerInfo"]).write_text(json.dumps({{"Layers": layers, "Bindings": []}}))
elif "--exportProfile" in opts:
    times = json.loads(Path(opts["--loadEngine"]).read_text())
    count = int(opts["--iterations"])
    total = sum(times.values())
    Path(opts["--exportProfile"]).write_text(json.dumps([{{"count": count}}] + [
        {{"name": n, "timeMs": t * count, "averageMs": t, "medianMs": t, "percentage": 100 * t / total}}
        for n, t in times.items()]))
print("&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec")
'''


def test_a_trtexec_sweep_builds_one_engine_per_hundred_variants_and_maps_layers_back(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from edgeprune.measure.sites import LayerSignature, Operand
    from edgeprune.measure.tables import TableStore

    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(FAKE_SWEEP_TRTEXEC.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_TRTEXEC_ARGV", str(tmp_path / "argv.jsonl"))
    runtime = get_runtime(_jetson(exe).for_sweeps())
    conv = LayerSignature(op_type="Conv", opset=17, attributes={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                          operands=(Operand(kind="input", dims=(1, "a", 8, 8)), Operand(kind="weight", dims=("b", "a", 3, 3))))
    wanted = [(conv, (a, b)) for a in (8, 16, 24, 32, 64) for b in range(8, 408, 8)]
    store = TableStore(tmp_path / "profiles", "jetson", {"device": "fake"})

    def measure(model, feeds, index):
        path = tmp_path / f"sweep-{index}.onnx"
        onnx.save(model, str(path))
        return runtime.profile(runtime.build(path, tmp_path / "engines"), feeds)

    assert store.measure(wanted, measure, [helper.make_opsetid("", 17)]) == 3
    builds = [argv for argv in _argv(tmp_path) if any(a.startswith("--onnx=") for a in argv)]
    assert len(wanted) == 250 and len(builds) == 3  # at most one engine per 100 variants
    # every variant's time came back through its layer's name: the conv's own time plus the reformat copy before it
    # (moved to the conv by the attribution), less the per-layer floor the Relu nodes measured (0.003 ms)
    table = store.data.tables[conv.key]
    assert len(table.points) == 250
    for (a, b) in [(8, 8), (64, 400), (24, 200)]:
        assert table.at((a, b)) == pytest.approx(1e-6 * a * b * 9 + 0.001, rel=1e-6)
