"""Layer tables, sweep graphs and the cost model, on real exports and real ONNX Runtime profiles.

No timing is asserted beyond orders of magnitude (bench/cost_model.py measures accuracy); these tests check which
layers a cut reaches, what a signature holds, how sweeps map back to variants, how tables are read, what is
stored, reused and resumed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn
from typer.testing import CliRunner

from edgeprune.artifact.export import export_onnx, to_numpy
from edgeprune.cli import app
from edgeprune.core.task import Task
from edgeprune.measure import tables as tables_module
from edgeprune.measure.cost import (
    Calibration,
    CostModel,
    CostModelBuilder,
    CostModelError,
    GroupAxis,
    LayerCost,
    granule_counts,
)
from edgeprune.measure.profile import attribute
from edgeprune.measure.sites import LayerSignature, Operand, probe_counts
from edgeprune.measure.store import ProfileStore, profile_key, profile_task, table_store
from edgeprune.measure.tables import TableStore, axis_grid, batches, sweep_graph, variant_times
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.plan import Plan, prune_to_counts
from edgeprune.runtimes.onnxruntime import OrtRuntime

GRAPH_ARGS = {"components": {"encoder": ["encoder"], "decoder": ["decoder"]}, "output_layers": ("decoder.3",)}


class CountingOrt(OrtRuntime):
    """The real ONNX Runtime, counting how often it is asked to profile (to see what is reused)."""

    profiles = 0
    latencies = 0

    def profile(self, model, inputs):
        type(self).profiles += 1
        return super().profile(model, inputs)

    def latency(self, model, inputs):
        type(self).latencies += 1
        return super().latency(model, inputs)


@pytest.fixture
def runtime(fast_target) -> CountingOrt:
    CountingOrt.profiles = CountingOrt.latencies = 0
    return CountingOrt(fast_target)


def test_axis_grid_is_a_ladder_of_granules_ending_at_the_width() -> None:
    assert axis_grid(64, 8) == (8, 16, 24, 32, 40, 48, 64)
    assert axis_grid(100, 8)[-1] == 100 and all(k % 8 == 0 for k in axis_grid(100, 8)[:-1])
    assert axis_grid(2048, 8)[-2:] == (1536, 2048) and len(axis_grid(512, 8)) == 16  # sparser where few plans go
    assert axis_grid(8, 8) == (8,) and axis_grid(4, 8) == (4,)
    assert granule_counts(32, 8) == (8, 16, 24, 32) and granule_counts(20, 8) == (8, 16, 20)


def test_probe_widths_are_unused_and_multiples_of_the_groups_divisor() -> None:
    """A GroupNorm of 4 groups over 16 channels cannot run at 15 or 14: its group probes at a multiple of 4."""
    assert probe_counts({"a": 16, "b": 16}, {15}) == {"a": 14, "b": 13}
    assert probe_counts({"a": 16, "b": 16}, {12}, {"a": 4}) == {"a": 8, "b": 15}


def _linear_table(axes: tuple[str, ...], grid: tuple[tuple[int, ...], ...], dense: float) -> tuple[float, ...]:
    """A table proportional to the product of its axes' counts, ``dense`` at the widths."""
    points = np.array(np.meshgrid(*grid, indexing="ij")).reshape(len(grid), -1).T
    widths = np.array([g[-1] for g in grid])
    return tuple(float(dense * np.prod(p / widths)) for p in points)


def hand_model(floor_ms: float = 0.0) -> CostModel:
    """A conv between groups ``a`` (its input) and ``b`` (its output); a head only ``a`` reaches, whose time steps
    at 24; a concat of both (no table: scaled); a layer no group reaches."""
    grid = ((8, 16, 24, 32), (8, 24, 32))  # b's axis sampled more sparsely
    layers = (
        LayerCost(layer="conv", dense_ms=0.8, component="encoder", axes=("a", "b"), grid=grid,
                  table=_linear_table(("a", "b"), grid, 0.4)),  # the table's own scale differs from the model's
        LayerCost(layer="head", dense_ms=0.1, component="decoder", axes=("a",), grid=((8, 16, 24, 32),),
                  table=(0.05, 0.05, 0.1, 0.1)),
        LayerCost(layer="cat", dense_ms=0.2, component="decoder", scaled=("a", "b")),
        LayerCost(layer="other", dense_ms=0.1),
    )
    groups = {"a": GroupAxis(width=32, kept=granule_counts(32, 8)), "b": GroupAxis(width=32, kept=granule_counts(32, 8))}
    return CostModel(task="t", granule=8, dense_ms=1.2, floor_ms=floor_ms, groups=groups, layers=layers)


def test_prediction_reads_each_layers_table_against_its_dense_time() -> None:
    model = hand_model()
    assert model.predict_ms({}) == pytest.approx(1.2)
    # a and b at half width: the conv between them keeps a quarter of its time (its own 0.8 ms, not the table's 0.4)
    assert model.layer_ms({"a": 16, "b": 16})["conv"] == pytest.approx(0.8 * 0.25)
    # inside a granule step a count costs what the step's upper end costs; the head's step is kept, not smoothed
    assert model.layer_ms({"a": 17})["head"] == pytest.approx(0.1) and model.layer_ms({"a": 16})["head"] == pytest.approx(0.05)
    # b's 16 lies between its samples 8 and 24: interpolated (exact for a time proportional to the channels)
    assert model.layer_ms({"b": 16})["conv"] == pytest.approx(0.8 * 0.5)
    # no table: the concat scales with the mean keep ratio of its groups; the other layer never moves
    assert model.layer_ms({"a": 16})["cat"] == pytest.approx(0.2 * 0.75)
    assert model.layer_ms({"a": 8, "b": 8})["other"] == pytest.approx(0.1)
    assert model.component_ms({"a": 16, "b": 16}) == pytest.approx({"encoder": 0.2, "decoder": 0.05 + 0.1, "": 0.1})
    calibrated = model.calibrated([(1.2, 1.0), (0.6, 0.55)])
    for counts, key, keep in (({}, "a", 16), ({"b": 16}, "a", 8), ({"a": 24, "b": 8}, "b", 24)):
        assert calibrated.saving_ms(counts, key, keep) == pytest.approx(
            calibrated.predict_ms(counts) - calibrated.predict_ms({**counts, key: keep}))
    with pytest.raises(CostModelError, match="no group c"):
        model.predict_ms({"c": 8})


def test_the_profilers_floor_is_never_cut() -> None:
    model = hand_model(floor_ms=0.04)
    assert model.layer_ms({"a": 16, "b": 16})["conv"] == pytest.approx(0.04 + (0.8 - 0.04) * 0.25)
    # a table whose dense time is lost under the floor scales with the keep ratios instead of its noise
    tiny = model.layers[0].model_copy(update={"table": tuple(t * 1e-4 for t in model.layers[0].table)})
    noisy = model.model_copy(update={"layers": (tiny, *model.layers[1:])})
    assert noisy.layer_ms({"a": 16})["conv"] == pytest.approx(0.04 + (0.8 - 0.04) * 0.5)


def test_calibration_fits_the_whole_model_measurements() -> None:
    points = [(1.0, 0.9), (0.5, 0.5), (0.25, 0.3)]  # measured = 0.8 x + 0.1
    calibration = Calibration.fit(points)
    assert calibration.scale == pytest.approx(0.8) and calibration.offset_ms == pytest.approx(0.1)
    assert max(calibration.errors()) < 1e-9
    model = hand_model().calibrated(points)
    assert model.predict_ms({"a": 16, "b": 16}) == pytest.approx(0.8 * model.raw_ms({"a": 16, "b": 16}) + 0.1)
    assert Calibration.fit([(2.0, 1.0)]).scale == pytest.approx(0.5)


def test_differentiable_prediction_matches_at_the_granule_and_has_the_tables_slope() -> None:
    model = hand_model().calibrated([(1.2, 1.0), (0.6, 0.55)])
    for counts in ({}, {"a": 16}, {"a": 8, "b": 24}, {"b": 16}, {"a": 24, "b": 8}):
        assert float(model.torch_ms(counts)) == pytest.approx(model.predict_ms(counts))
    keep = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    model.torch_ms({"a": keep, "b": 24}).backward()
    # d/da: the conv's 0.8·(a/32)·(24/32), the head's step 0.05 → 0.1 over 16 → 24, the concat's 0.2·(a/32)/2
    slope = 0.8 * (24 / 32) / 32 + 0.1 * (0.05 / 0.1) / 8 + 0.2 / 32 / 2
    assert float(keep.grad) == pytest.approx(model.calibration.scale * slope)


def test_a_stored_cost_model_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.cost.json"
    path.write_text(hand_model().model_copy(update={"format": "edgeprune.cost/2"}).model_dump_json())
    with pytest.raises(CostModelError, match="format 'edgeprune.cost/2'.*measure it again"):
        CostModel.load(path)


def test_plan_prediction_uses_the_plans_keep_counts(two_part, image) -> None:
    plan = Plan.dense("two-part", ComponentGraph(copy.deepcopy(two_part), image, **GRAPH_ARGS))
    _, pruned = prune_to_counts(two_part, plan, {"encoder.0": 16}, image, **GRAPH_ARGS)
    model = CostModel(task="t", granule=8, dense_ms=1.0, layers=(
        LayerCost(layer="x", dense_ms=1.0, axes=("encoder.0",), grid=((8, 16, 24, 32),), table=(0.25, 0.5, 0.75, 1.0)),),
        groups={k: GroupAxis(width=g.width, kept=granule_counts(g.width, 8)) for k, g in plan.groups.items()})
    assert model.predict_ms(pruned) == pytest.approx(0.5)


# -- sites ---------------------------------------------------------------------------------------------------------

class Branches(nn.Module):
    """A depthwise conv (its ``group`` attribute follows the channels) and a concat of two groups (a dim that is no
    single group's width)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.side = nn.Conv2d(3, 24, 1)
        self.head = nn.Conv2d(56, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.depthwise(self.stem(x))), self.side(x)], dim=1))


def _builder(model: nn.Module, inputs: tuple, target, runtime, folder: Path, name: str = "t",
             tables: TableStore | None = None) -> CostModelBuilder:
    graph = ComponentGraph(model, inputs, None, ())
    return CostModelBuilder(name, graph, inputs, target, runtime, folder / name, tables or TableStore(folder, "cpu", {}))


def test_sites_name_the_groups_that_set_each_layers_shapes(two_part, image, fast_target, runtime, tmp_path) -> None:
    builder = CostModelBuilder("two-part", ComponentGraph(two_part, image, **GRAPH_ARGS), image, fast_target, runtime,
                               tmp_path / "cost", TableStore(tmp_path, "cpu", {}))
    sites = builder.sites(export_onnx(two_part, image, tmp_path / "dense.onnx"))
    strided = next(s for s in sites if s.signature and s.signature.attributes.get("strides") == [2, 2]
                   and s.signature.op_type == "Conv")
    # the stride-2 conv reads encoder.0's channels and writes encoder.3's: a two-axis table
    assert strided.axes == ("encoder.0", "encoder.3") and strided.widths == (32, 64)
    assert strided.signature.operands[0].dims == (1, "a", 32, 32) and strided.signature.operands[1].dims == ("b", "a", 3, 3)
    assert strided.signature.operands[1].kind == "weight" and strided.signature.symbols == ("a", "b")
    assert not any(s.node.startswith("node_Conv") and s.axes == () for s in sites if s.signature)
    assert not any("decoder.3" in s.axes for s in sites)  # the output layer's width never changes


def test_a_depthwise_conv_is_tabled_and_a_concat_is_scaled(fast_target, runtime, tmp_path) -> None:
    torch.manual_seed(0)
    model, inputs = Branches().eval(), (torch.rand(1, 3, 16, 16),)
    builder = _builder(model, inputs, fast_target, runtime, tmp_path)
    sites = builder.sites(export_onnx(model, inputs, tmp_path / "dense.onnx"))
    group_of = {module: key for key, info in builder.graph.groups.items() for module in info.modules}
    depthwise = next(s for s in sites if s.signature and s.signature.symbolic_attributes)
    # the stem's output channels are the depthwise conv's input and output channels and its group count
    assert depthwise.signature.symbolic_attributes == {"group": "a"} and depthwise.axes == (group_of["stem"],)
    assert depthwise.signature.operands[1].dims == ("a", 1, 3, 3)
    concat = next(s for s in sites if s.signature is None)
    assert set(concat.scaled) == {group_of["stem"], group_of["side"]} and "no single group's width" in concat.why
    # the depthwise variant runs at another width: its group attribute follows
    sweep, feeds = sweep_graph([(depthwise.signature, (8,)), (depthwise.signature, (24,))],
                               onnx.load(str(tmp_path / "dense.onnx")).opset_import)
    onnx.save(sweep, str(tmp_path / "sweep.onnx"))
    outputs = runtime.run(tmp_path / "sweep.onnx", feeds)
    assert outputs[0].shape == (1, 8, 16, 16) and outputs[1].shape == (1, 24, 16, 16)


# -- sweeps and the table store ---------------------------------------------------------------------------------------

def _conv_signature(fast_target, runtime, tmp_path, two_part, image):
    builder = CostModelBuilder("two-part", ComponentGraph(two_part, image, **GRAPH_ARGS), image, fast_target, runtime,
                               tmp_path / "cost", TableStore(tmp_path, "cpu", {}))
    dense = export_onnx(two_part, image, tmp_path / "dense.onnx")
    site = next(s for s in builder.sites(dense) if s.axes == ("encoder.0", "encoder.3"))
    return site.signature, onnx.load(str(dense)).opset_import


def test_one_sweep_graph_times_every_variant(two_part, image, fast_target, runtime, tmp_path) -> None:
    signature, opsets = _conv_signature(fast_target, runtime, tmp_path, two_part, image)
    points = [(8, 8), (32, 64), (16, 24)]
    sweep, feeds = sweep_graph([(signature, p) for p in points], opsets)
    onnx.save(sweep, str(tmp_path / "sweep.onnx"))
    times = variant_times(runtime.profile(tmp_path / "sweep.onnx", feeds), len(points))
    assert sorted(times.variants) == [0, 1, 2] and times.floor_ms > 0 and times.reference_ms > 0
    assert times.variants[1] > 4 * times.variants[0]  # 32 times the work: far slower, whatever the machine does
    assert [o.shape for o in runtime.run(tmp_path / "sweep.onnx", feeds)[:3]] == [(1, 8, 16, 16), (1, 64, 16, 16),
                                                                                 (1, 24, 16, 16)]


def test_a_layer_the_runtime_rewrites_is_measured_alone(runtime, tmp_path) -> None:
    """ONNX Runtime expands a HardSwish (MobileNetV3's activation) into a HardSigmoid and a Mul under names of its
    own: the sweep of several variants cannot tell whose they are, so each is measured again in a sweep of its own."""
    signature = LayerSignature(op_type="HardSwish", opset=17, operands=(Operand(kind="input", dims=(1, "a", 32, 32)),))
    store = TableStore(tmp_path / "store", "cpu", {"host": "x"})
    sizes: list[int] = []

    def measure(model, feeds, index):
        sizes.append(sum(n.op_type == "HardSwish" for n in model.graph.node))
        onnx.save(model, str(tmp_path / "sweep.onnx"))
        return runtime.profile(tmp_path / "sweep.onnx", feeds)

    assert store.measure([(signature, (8,)), (signature, (64,))], measure, [helper.make_opsetid("", 17)]) == 3
    assert sizes == [2, 1, 1]
    points = store.data.tables[signature.key].points
    assert set(points) == {"8", "64"} and points["64"] > points["8"]


def test_tables_are_saved_after_every_sweep_and_a_killed_build_resumes(two_part, image, fast_target, runtime, tmp_path,
                                                                       monkeypatch) -> None:
    signature, opsets = _conv_signature(fast_target, runtime, tmp_path, two_part, image)
    monkeypatch.setattr(tables_module, "SWEEP_VARIANTS", 4)
    store = TableStore(tmp_path / "store", "cpu", {"host": "x"})
    wanted = [(signature, (a, b)) for a in (8, 16, 32) for b in (8, 32, 64)]
    assert len(list(batches(wanted))) == 3
    calls = []

    def measure(model, feeds, index):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second sweep
        path = tmp_path / "sweep.onnx"
        onnx.save(model, str(path))
        return runtime.profile(path, feeds)

    with pytest.raises(KeyboardInterrupt):
        store.measure(wanted, measure, opsets)
    again = TableStore(tmp_path / "store", "cpu", {"host": "x"})
    assert len(again.data.tables[signature.key].points) == 4 and again.data.sweeps == 1
    assert again.data.reference_ms > 0
    left = [w for w in wanted if again.data.tables[signature.key].at(w[1]) is None]
    assert again.measure(left, measure, opsets) == 2 and len(again.data.tables[signature.key].points) == 9
    assert TableStore(tmp_path / "store", "cpu", {"host": "other"}).data.tables == {}  # other facts, other file


def test_builder_measures_tables_once_and_another_task_sharing_shapes_reuses_them(two_part, image, fast_target, runtime,
                                                                                 tmp_path) -> None:
    tables = TableStore(tmp_path, fast_target.name, {"host": "test"})
    dense = export_onnx(two_part, image, tmp_path / "dense.onnx")
    profile = attribute(runtime.profile(dense, to_numpy(image)), dense, GRAPH_ARGS["components"], {})
    first = CostModelBuilder("two-part", ComponentGraph(two_part, image, **GRAPH_ARGS), image, fast_target, runtime,
                             tmp_path / "a", tables)
    model = first.build(dense, profile, 1.0, calibration_plans=2)
    assert first.new_points > 0 and first.sweeps >= 1 and tables.path.is_file()
    assert set(model.groups) == {"encoder.0", "encoder.3", "encoder.5", "decoder.1"}  # the flow group too
    conv = next(layer for layer in model.layers if layer.axes == ("encoder.0", "encoder.3"))
    assert conv.grid == (axis_grid(32, 8), axis_grid(64, 8)) and len(conv.table) == len(conv.grid[0]) * len(conv.grid[1])
    assert conv.component == "encoder" and conv.signature.startswith("Conv 3x3 s2")
    assert sum(layer.dense_ms for layer in model.layers) == pytest.approx(profile["time_ms"].sum())
    assert len(model.calibration.points) == 3 and model.calibration.points[0] == (pytest.approx(model.raw_ms({})), 1.0)
    # cut encoder.0 to a quarter: the layers it reaches get faster, the others do not move
    quarter = model.layer_ms({"encoder.0": 8})
    reached = {layer.layer for layer in model.layers if "encoder.0" in layer.axes + layer.scaled}
    assert all(quarter[layer] < model.layer_ms({})[layer] for layer in reached if model.layer_ms({})[layer] > 0.01)
    assert all(quarter[layer.layer] == layer.dense_ms for layer in model.layers if layer.layer not in reached)
    # a second task with the same layer shapes measures no table point again (its calibration is its own)
    second = CostModelBuilder("copy", ComponentGraph(copy.deepcopy(two_part), image, **GRAPH_ARGS), image, fast_target,
                              runtime, tmp_path / "b", TableStore(tmp_path, fast_target.name, {"host": "test"}))
    again = second.build(dense, profile, 1.0, calibration_plans=2)
    assert second.new_points == 0 and second.sweeps == 0
    assert [layer.table for layer in again.layers] == [layer.table for layer in model.layers]
    # the first task's calibration is journalled: built again (a killed build resumed), it measures nothing
    resumed = CostModelBuilder("two-part", ComponentGraph(copy.deepcopy(two_part), image, **GRAPH_ARGS), image,
                               fast_target, runtime, tmp_path / "a", tables).build(dense, profile, 1.0,
                                                                                   calibration_plans=2)
    assert len((tmp_path / "a" / "calibration.jsonl").read_text().splitlines()) == 2
    assert resumed.calibration == model.calibration


def two_part_task(model) -> Task:
    return Task(name="two-part", build=lambda: copy.deepcopy(model), example_inputs=lambda: (torch.rand(1, 1, 32, 32),),
                evaluate=lambda m: {"zero": 0.0}, metric="zero", default_metric_budget="zero>=0",
                components=GRAPH_ARGS["components"], output_layers=GRAPH_ARGS["output_layers"])


def test_profile_store_reuses_by_key_and_leaves_no_partial_files(two_part, image, runtime, fast_target, tmp_path) -> None:
    task, store = two_part_task(two_part), ProfileStore(tmp_path / "profiles")
    first = profile_task(task, fast_target, runtime, image, ComponentGraph(task.build(), image, **GRAPH_ARGS), store)
    assert not first.reused and first.profile_path.is_file() and CountingOrt.profiles == 1
    assert set(first.profile["component"]) <= {"encoder", "decoder", ""}
    assert first.profile.attrs["model_hash"] and first.profile.attrs["input_shapes"] == [[1, 1, 32, 32]]
    assert first.groups.set_index("group").loc["encoder.3", "layers_ms"] > 0
    second = profile_task(task, fast_target, runtime, image, ComponentGraph(task.build(), image, **GRAPH_ARGS), store)
    assert second.reused and second.key == first.key and CountingOrt.profiles == 1
    assert second.profile["time_ms"].tolist() == pytest.approx(first.profile["time_ms"].tolist())
    files = sorted(p.name for p in (tmp_path / "profiles" / "two-part").iterdir())
    assert files == [f"cpu-{first.key}.csv", f"cpu-{first.key}.json"]  # no temporary or work files left behind
    # another measurement setting is another key
    other = fast_target.model_copy(update={"granule": 16})
    assert profile_task(task, other, runtime, image, ComponentGraph(task.build(), image, **GRAPH_ARGS), store).key != first.key
    assert profile_key({"a": 1}) != profile_key({"a": 2})
    # with a cost model: the tables go to the store's shared tables/ folder, keyed without the task
    costly = profile_task(task, fast_target, runtime, image, ComponentGraph(task.build(), image, **GRAPH_ARGS), store,
                          cost_model=True)
    assert costly.cost is not None and costly.cost_path.is_file()
    assert table_store(store.root, fast_target, runtime).path.is_file()
    assert sorted(p.name for p in (tmp_path / "profiles").iterdir()) == ["tables", "two-part"]


def test_profile_command(tmp_path: Path) -> None:
    target = tmp_path / "quick.toml"
    target.write_text('name = "quick"\nruntime = "onnxruntime"\n[measure]\nwarmup = 5\nruns = 20\nrepeats = 2\n'
                      'profile_runs = 10\nsweep_runs = 5\n')
    args = ["profile", "--task", "digits-autoencoder", "--target", str(target), "--store", str(tmp_path / "p")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "encoder" in result.output and "decoder.conv0" in result.output and "stored in" in result.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "reused from" in again.output
    costly = CliRunner().invoke(app, [*args, "--cost-model"])
    assert costly.exit_code == 0, costly.output
    assert "measuring layer tables" in costly.output and "saves ms" in costly.output
    bad = CliRunner().invoke(app, ["profile", "--task", "nope", "--store", str(tmp_path / "p")])
    assert bad.exit_code == 2 and bad.stderr.strip().startswith("error: task 'nope'")
