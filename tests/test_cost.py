"""Cost model and profile store on real ONNX Runtime measurements of a small encoder–decoder CNN.

No timing is asserted here (bench/cost_model.py measures accuracy); these tests check which layers a cut reaches,
how LUTs are read, how calibration is fitted, what resumes, and what is reused.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.core.task import Task
from edgeprune.measure.cost import (
    Calibration,
    CostModel,
    CostModelBuilder,
    CostModelError,
    GroupLUT,
    fixed_costs,
    sample_counts,
    with_residuals,
)
from edgeprune.measure.store import ProfileStore, profile_key, profile_task
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


def test_sample_counts_follow_the_granule() -> None:
    assert sample_counts(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert sample_counts(64, 8, stride=3) == [8, 32, 56, 64]
    assert sample_counts(100, 8, stride=4) == [8, 40, 72, 100]  # a width off the granule is its own last step
    assert sample_counts(8, 8) == [8] and sample_counts(4, 8) == [4]


def hand_model() -> CostModel:
    """Two groups reshaping one conv between them (in and out channels), plus a layer only ``a`` reaches."""
    return CostModel(
        task="t", granule=8, dense_ms=1.0,
        dense_layers={"conv": 0.8, "head": 0.1, "other": 0.1},
        groups={
            "a": GroupLUT(width=32, kept=(8, 16, 24, 32), layers={"conv": (0.2, 0.4, 0.6, 0.8), "head": (0.05, 0.05, 0.1, 0.1)}),
            "b": GroupLUT(width=32, kept=(8, 24, 32), layers={"conv": (0.2, 0.6, 0.8)}),  # a sparser sweep
        },
    )


def test_prediction_multiplies_ratios_per_layer_and_reads_steps() -> None:
    model = hand_model()
    assert model.predict_ms({}) == pytest.approx(1.0)
    # a and b at half width: the conv between them keeps a quarter, not nothing (which summed deltas would say)
    assert model.layer_ms({"a": 16, "b": 16})["conv"] == pytest.approx(0.8 * 0.5 * 0.5)
    # inside a step a count costs what the step's upper end costs; never interpolated across a step
    assert model.layer_ms({"a": 17})["head"] == pytest.approx(0.1) and model.layer_ms({"a": 16})["head"] == pytest.approx(0.05)
    # b was sampled every other step: its 16 lies between samples 8 and 24, so it is interpolated between them
    assert model.layer_ms({"b": 16})["conv"] == pytest.approx(0.4)
    assert model.layer_ms({"a": 8})["other"] == pytest.approx(0.1)
    with pytest.raises(CostModelError, match="no LUT for groups c"):
        model.predict_ms({"c": 8})


def test_a_layer_between_two_groups_keeps_its_fixed_cost() -> None:
    """conv = 0.2 + 0.6·x·y (x, y: kept fractions of its input and output groups), sampled along each axis."""
    xs = (0.25, 0.5, 0.75, 1.0)
    lut = GroupLUT(width=32, kept=(8, 16, 24, 32), layers={"conv": tuple(0.2 + 0.6 * x for x in xs)})
    luts = {"a": lut, "b": lut}
    assert fixed_costs(luts) == {"conv": pytest.approx(0.2)}
    model = CostModel(task="t", granule=8, dense_ms=0.8, dense_layers={"conv": 0.8}, groups=luts,
                      fixed_layers=fixed_costs(luts))
    assert model.layer_ms({"a": 16, "b": 16})["conv"] == pytest.approx(0.2 + 0.6 * 0.25)
    assert model.layer_ms({"a": 8})["conv"] == pytest.approx(0.2 + 0.6 * 0.25)  # one axis: the measured time


def test_calibration_fits_the_whole_model_measurements() -> None:
    points = [(1.0, 0.9), (0.5, 0.5), (0.25, 0.3)]  # measured = 0.8 x + 0.1
    calibration = Calibration.fit(points)
    assert calibration.scale == pytest.approx(0.8) and calibration.offset_ms == pytest.approx(0.1)
    assert max(calibration.errors()) < 1e-9
    model = hand_model().calibrated(points)
    assert model.predict_ms({"a": 16, "b": 16}) == pytest.approx(0.8 * (0.2 + 0.05 + 0.1) + 0.1)
    assert Calibration.fit([(2.0, 1.0)]).scale == pytest.approx(0.5)


def test_whole_model_timings_add_what_the_layer_profile_misses() -> None:
    """An overhead-dominated model: group ``a``'s layers barely change in the profile, yet the whole model gets
    0.3 ms faster per quarter of ``a`` cut (e.g. per-node overhead the profiler hides). ``b`` measures what its
    layers predict, so it gets no residual."""
    model = hand_model()  # dense: layers 1.0 ms = 1.0 ms measured
    flat_a = GroupLUT(width=32, kept=(8, 16, 24, 32), layers={"head": (0.09, 0.09, 0.1, 0.1)})
    model = model.model_copy(update={"groups": {"a": flat_a, "b": model.groups["b"]}})
    assert model.predict_ms({"a": 8}) == pytest.approx(0.99)  # the profile alone: cutting a saves nothing
    b_measured = [model.predict_ms({"b": k}) for k in (8, 24)]
    # noisy measurements around 1.0 - 0.4·(fraction cut): the line's least-squares slope, not any single point
    fitted = with_residuals(model, {"a": [0.71 - 0.01, 0.81 + 0.01, 0.91], "b": b_measured, "c": [0.5]})
    cut = [0.75, 0.5, 0.25]
    slope = sum(c * ((m - 1.0) - (p - 1.0)) for c, m, p in zip(cut, [0.70, 0.82, 0.91], [0.99, 0.99, 1.0], strict=True)) \
        / sum(c * c for c in cut)
    assert fitted.groups["a"].residual_ms == pytest.approx((*(slope * c for c in cut), 0.0))
    assert fitted.predict_ms({"a": 16}) == pytest.approx(0.99 + slope * 0.5)
    assert fitted.predict_ms({"a": 16}) < 0.85  # the whole-model timing now prices the cut
    assert fitted.groups["b"].residual_ms == pytest.approx((0.0, 0.0, 0.0))
    assert fitted.predict_ms({"a": 32}) == pytest.approx(1.0)  # dense width: nothing added
    # a group without whole-model timings (an older journal) keeps no residual
    assert with_residuals(model, {"a": [0.7, None, 0.9]}).groups["a"].residual_ms == ()


def test_a_stored_cost_model_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.cost.json"
    path.write_text(hand_model().model_copy(update={"format": "edgeprune.cost/1"}).model_dump_json())
    with pytest.raises(CostModelError, match="format 'edgeprune.cost/1'.*measure it again"):
        CostModel.load(path)


def test_builder_finds_the_layers_a_cut_reshapes_and_resumes(two_part, image, runtime, tmp_path: Path) -> None:
    builder = CostModelBuilder("two-part", ComponentGraph(two_part, image, **GRAPH_ARGS), image, runtime, 8, tmp_path)
    model = builder.build(stride=4, groups=["encoder.3"], calibration_plans=2)
    lut = model.groups["encoder.3"]
    assert lut.width == 64 and lut.kept == (8, 40, 64)
    ops = {layer: op for layer, op in zip(builder.done["dense"]["layers"], runtime.profile(
        builder.folder / "dense.onnx", [image[0].numpy()])["op_type"], strict=False)}
    # cutting the stride-2 conv's 64 channels reshapes that conv and the bottleneck conv reading them, nothing else
    assert len(lut.layers) == 2 and {ops[layer] for layer in lut.layers} <= {"Conv", "FusedConv"}
    assert all(len(times) == 3 and times[-1] == model.dense_layers[layer] for layer, times in lut.layers.items())
    assert len(lut.residual_ms) == 3 and lut.residual_ms[-1] == 0.0  # every cut was also timed end to end
    assert len(model.calibration.points) == 3 and model.dense_ms == model.calibration.points[0][1]
    journal = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in journal] == ["dense", "encoder.3@8", "encoder.3@40", "dense-end", "latency-dense",
                                          "calibration-0", "calibration-1"]
    # a second builder on the same folder measures nothing again: a killed build resumes from its journal
    before = (CountingOrt.profiles, CountingOrt.latencies)
    again = CostModelBuilder("two-part", ComponentGraph(two_part, image, **GRAPH_ARGS), image, runtime, 8, tmp_path).build(
        stride=4, groups=["encoder.3"], calibration_plans=2)
    assert (CountingOrt.profiles, CountingOrt.latencies) == before and again == model
    with pytest.raises(CostModelError, match="not prunable groups of this model: decoder.3"):
        builder.build(groups=["decoder.3"])


def test_plan_prediction_uses_the_plans_keep_counts(two_part, image) -> None:
    plan = Plan.dense("two-part", ComponentGraph(copy.deepcopy(two_part), image, **GRAPH_ARGS))
    _, pruned = prune_to_counts(two_part, plan, {"encoder.0": 16}, image, **GRAPH_ARGS)
    model = CostModel(task="t", granule=8, dense_ms=1.0, dense_layers={"x": 1.0},
                      groups={"encoder.0": GroupLUT(width=32, kept=(8, 16, 24, 32), layers={"x": (0.25, 0.5, 0.75, 1.0)}),
                              **{k: GroupLUT(width=g.width, kept=(g.width,), layers={}) for k, g in plan.groups.items()
                                 if k != "encoder.0"}})
    assert model.predict_ms(pruned) == pytest.approx(0.5)


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


def test_profile_command(tmp_path: Path) -> None:
    target = tmp_path / "quick.toml"
    target.write_text('name = "quick"\nruntime = "onnxruntime"\n[measure]\nwarmup = 5\nruns = 20\nrepeats = 2\n'
                      'profile_runs = 10\n')
    args = ["profile", "--task", "digits-autoencoder", "--target", str(target), "--store", str(tmp_path / "p")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "encoder" in result.output and "decoder.conv0" in result.output and "stored in" in result.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "reused from" in again.output
    bad = CliRunner().invoke(app, ["profile", "--task", "nope", "--store", str(tmp_path / "p")])
    assert bad.exit_code == 2 and bad.stderr.strip().startswith("error: task 'nope'")


def test_differentiable_prediction_matches_the_staircase_at_samples() -> None:
    model = hand_model().calibrated([(1.0, 0.9), (0.5, 0.5)])
    for counts in ({}, {"a": 16}, {"a": 8, "b": 24}, {"b": 16}):
        assert float(model.torch_ms(counts)) == pytest.approx(model.predict_ms(counts))
    keep = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    ms = model.torch_ms({"a": keep, "b": 24})
    ms.backward()
    # between the samples 16 and 24 of a: conv 0.4 -> 0.6 (times b's 0.75) and head 0.05 -> 0.1, per 8 channels
    assert float(keep.grad) == pytest.approx(0.8 * (0.2 * 0.75 + 0.05) / 8)
