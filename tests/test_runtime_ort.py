"""ONNX export check and the ONNX Runtime runtime, measured for real on this CPU."""

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import numpy_helper

from edgeprune.artifact.export import ExportMismatch, check_export, export_onnx, to_numpy
from edgeprune.measure.profile import attribute, load_profile, node_modules, save_profile
from edgeprune.runtimes import get_runtime
from edgeprune.runtimes.onnxruntime import node_times


def test_export_matches_torch(tmp_path: Path, two_part, image, fast_target) -> None:
    for dynamo in (True, False):
        path = export_onnx(two_part, image, tmp_path / f"m{dynamo}.onnx", dynamo=dynamo)
        assert check_export(two_part, image, path, get_runtime(fast_target)) < 1e-4


def test_export_mismatch_is_detected(tmp_path: Path, two_part, image, fast_target) -> None:
    path = export_onnx(two_part, image, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    weight = next(w for w in model.graph.initializer if w.name == "decoder.1.weight")  # the ConvTranspose
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.05, weight.name))
    onnx.save(model, str(path))
    with pytest.raises(ExportMismatch, match="output 0: ONNX differs from PyTorch by up to"):
        check_export(two_part, image, path, get_runtime(fast_target))


def test_latency_is_the_median_of_fresh_session_medians(tmp_path: Path, two_part, image, fast_target) -> None:
    """One repetition per fresh session; the latency is their median, the spread their range over it. (How
    repeatable the numbers are on a machine is a benchmark question, not a test's: this VM drifts by 30 %.)"""
    runtime = get_runtime(fast_target)
    latency = runtime.latency(export_onnx(two_part, image, tmp_path / "m.onnx"), to_numpy(image))
    repeats = sorted(latency.repeats_ms)
    assert len(repeats) == fast_target.measure.repeats and repeats[0] > 0
    assert latency.median_ms == repeats[len(repeats) // 2]
    assert latency.spread == pytest.approx((repeats[-1] - repeats[0]) / latency.median_ms)
    assert 0 < latency.p10_ms <= latency.p90_ms
    assert latency.to_dict()["repeats_ms"] == list(latency.repeats_ms)


def test_compare_times_two_models_in_alternation(tmp_path: Path, two_part, image, fast_target) -> None:
    """A model against itself is 1.0 within noise; against a model doing 18 more Relu passes over a 256k tensor it is
    clearly faster: the ratio is the median over alternating calls, per fresh pair of sessions."""
    import onnx
    from onnx import TensorProto, helper

    def relus(count: int, path: Path) -> Path:
        nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(count)]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [256, 1024])],
                                  [helper.make_tensor_value_info(f"t{count}", TensorProto.FLOAT, [256, 1024])])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
        return path

    runtime = get_runtime(fast_target)
    x = [np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)]
    light, heavy = relus(2, tmp_path / "light.onnx"), relus(20, tmp_path / "heavy.onnx")
    same = runtime.compare(light, light, x)
    assert len(same.ratios) == fast_target.measure.repeats and 0.8 < same.ratio < 1.25
    faster = runtime.compare(light, heavy, x)
    assert faster.ratio < 0.6 and faster.model_ms < faster.reference_ms
    assert faster.ratio == sorted(faster.ratios)[len(faster.ratios) // 2]
    record = faster.latency(10.0)  # on the scale of a reference measured at 10 ms
    assert record["median_ms"] == pytest.approx(10.0 * faster.ratio) and record["relative"] == faster.ratio


def test_profile_attributes_nodes_to_modules(tmp_path: Path, two_part, image, fast_target) -> None:
    runtime = get_runtime(fast_target)
    path = export_onnx(two_part, image, tmp_path / "m.onnx")
    nodes = runtime.profile(path, to_numpy(image))
    assert set(nodes.columns) >= {"layer", "op_type", "time_ms"} and (nodes["time_ms"] > 0).all()
    frame = attribute(nodes, path, {"encoder": ["encoder"], "decoder": ["decoder"]}, {"target": "cpu"})
    convs = frame[frame["op_type"].str.contains("Conv")]
    assert set(convs["module"]) == {"encoder.0", "encoder.3", "encoder.5", "decoder.1", "decoder.3"}
    assert set(convs["component"]) == {"encoder", "decoder"}
    assert frame["share"].sum() == pytest.approx(1.0)
    # the profile is a real measurement of the same model: its node times are of the order of the end-to-end
    # latency (the profiler's own overhead and a busy machine move them, hence the wide band)
    ratio = frame["time_ms"].sum() / runtime.latency(path, to_numpy(image)).median_ms
    assert 0.25 < ratio < 3.0, ratio
    save_profile(frame, tmp_path / "p.csv")
    again = load_profile(tmp_path / "p.csv")
    assert again.attrs["target"] == "cpu" and np.allclose(again["time_ms"], frame["time_ms"])


def test_module_paths_from_both_exporters(tmp_path: Path, two_part, image) -> None:
    dynamo = node_modules(export_onnx(two_part, image, tmp_path / "d.onnx", dynamo=True))
    script = node_modules(export_onnx(two_part, image, tmp_path / "s.onnx", dynamo=False))
    for mapping in (dynamo, script):
        assert {"encoder.0", "encoder.3", "encoder.5", "decoder.1", "decoder.3"} <= set(mapping.values())


def test_conv_with_folded_batch_norm_is_attributed_to_the_conv(tmp_path: Path, two_part, image) -> None:
    """The dynamo exporter folds encoder.1 (BatchNorm) into encoder.0 and scopes the node as the BN's."""
    modules = node_modules(export_onnx(two_part, image, tmp_path / "d.onnx"))
    assert "encoder.1" not in modules.values()
    assert sum(m == "encoder.0" for m in modules.values()) == 1


def test_node_times_drop_warm_up_and_resist_a_preempted_run() -> None:
    """Events in ORT's profile format: two warm-up inferences, then three timed ones, one of them preempted."""
    events = []
    for run, (conv, relu) in enumerate([(900.0, 90.0), (800.0, 80.0), (100.0, 10.0), (5000.0, 12.0), (110.0, 11.0)]):
        ts = 1000 * run
        events.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": 500})
        events.append({"cat": "Node", "name": "node_Conv_0_kernel_time", "ts": ts + 1, "dur": conv,
                       "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"}})
        events.append({"cat": "Node", "name": "node_relu_kernel_time", "ts": ts + 2, "dur": relu,
                       "args": {"op_name": "Relu", "provider": "CPUExecutionProvider"}})
    table = node_times(events, runs=3).set_index("layer")
    assert table.loc["node_Conv_0", "time_ms"] == pytest.approx(0.110)  # median of 100, 5000, 110 µs
    assert table.loc["node_relu", "time_ms"] == pytest.approx(0.011) and table.loc["node_relu", "op_type"] == "Relu"
    with pytest.raises(ValueError, match="holds 5 inferences, expected at least 6"):
        node_times(events, runs=6)


def test_engine_and_torch_rows_are_attributed_too(tmp_path: Path, two_part, image) -> None:
    """Engine layers name the ONNX nodes they cover; torch rows carry their module already."""
    path = export_onnx(two_part, image, tmp_path / "d.onnx")
    modules = node_modules(path)
    conv = next(n for n, m in modules.items() if m == "encoder.0")
    relu = next(n for n, m in modules.items() if m != "encoder.0" and m.startswith("encoder"))
    engine = pd.DataFrame({"layer": [f"{conv} + {relu}", "Reformatting CopyNode for Input Tensor 0"],
                           "op_type": ["CaskConvolution", "Reformat"], "time_ms": [0.3, 0.1],
                           "onnx_nodes": [[conv, relu], []]})
    frame = attribute(engine, path, {"encoder": ["encoder"]}, {"runtime": "tensorrt"})
    assert frame["module"].tolist() == ["encoder.0", ""] and frame["component"].tolist() == ["encoder", ""]
    assert frame["share"].tolist() == pytest.approx([0.75, 0.25])
    torch_rows = pd.DataFrame({"layer": ["decoder.1"], "op_type": ["ConvTranspose2d"], "time_ms": [0.2],
                               "module": ["decoder.1"]})
    assert attribute(torch_rows, None, {"decoder": ["decoder"]}, {})["component"].tolist() == ["decoder"]
    with pytest.raises(ValueError, match="needs the ONNX model"):
        attribute(engine.drop(columns="onnx_nodes"), None, {}, {})


def test_a_slow_model_spends_repeat_s_per_repetition_but_never_fewer_than_ten_runs(monkeypatch) -> None:
    """Every inference takes one second of the (fake) clock: warm-up stops after 3 calls (past a third of repeat_s),
    timing after MIN_RUNS calls — not the 50 and 300 a fast model gets."""
    import contextlib

    from edgeprune.core.targets import MeasureSettings
    from edgeprune.runtimes import base

    now = {"s": 0.0}
    monkeypatch.setattr(base.time, "monotonic", lambda: now["s"])
    calls = {"warm": 0, "timed": 0}

    @contextlib.contextmanager
    def fresh():
        def call() -> None:
            calls["warm"] += 1
            now["s"] += 1.0

        def timed() -> float:
            calls["timed"] += 1
            now["s"] += 1.0
            return 1000.0

        yield base.TimedSession(call=call, timed_call=timed)

    latency = base.timing_loop(fresh, MeasureSettings(warmup=50, runs=300, repeats=2, repeat_s=3.0))
    assert latency.repeats_ms == (1000.0, 1000.0)
    assert calls == {"warm": 2 * 3, "timed": 2 * base.MIN_RUNS}
    # a fast model is untouched by the cap: all of its runs
    now["s"], calls["warm"], calls["timed"] = 0.0, 0, 0
    monkeypatch.setattr(base.time, "monotonic", lambda: 0.0)
    base.timing_loop(fresh, MeasureSettings(warmup=50, runs=300, repeats=1, repeat_s=3.0))
    assert calls == {"warm": 50, "timed": 300}
