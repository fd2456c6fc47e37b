"""trtexec parsing and attribution: real ResNet-18 outputs (TRT 8.x, A100) plus hand-written newer-format files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from edgeprune.runtimes.trtexec import (
    attribute_engine,
    load_layer_info,
    load_profile_json,
    onnx_nodes_of_layer,
    parse_perf_summary,
    summarize,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "trtexec"
DOC = Path(__file__).parent / "fixtures" / "trtexec-documented"
ENGINE = "resnet.onnx.engine"


def _real(precision: str) -> Path:
    folder = REAL / f"resnet18-a100-{precision}"
    if not (folder / f"{ENGINE}.profile.json").is_file():
        pytest.skip(f"real trtexec fixtures absent: {folder}")
    return folder


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
    if trex_file.is_file():
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
