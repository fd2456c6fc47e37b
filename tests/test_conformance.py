"""Conformance: networks written the way users write them prune to valid models, or name the group that cannot be
cut and why; a failed run is not an interrupted one; no user sees a traceback."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conformance_models import HEADER, IN_TESTS, LATENCY_IN_TESTS, MODELS, Row, check
from typer.testing import CliRunner

from edgeprune import cli
from edgeprune.core.targets import target_path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Row]:
    folder = tmp_path_factory.mktemp("conformance")
    pytest.importorskip("timm")
    pytest.importorskip("ultralytics")
    return {name: check(name, folder, latency=name in LATENCY_IN_TESTS) for name in IN_TESTS}


@pytest.mark.parametrize("name", IN_TESTS)
def test_every_network_prunes_to_a_valid_model(rows: dict[str, Row], name: str) -> None:
    row = rows[name]  # check() itself fails on a forward that breaks or an ONNX model that differs from PyTorch
    assert row.groups > 0 and row.pruned_params < row.params and row.outputs_kept
    assert row.planned_kept is (True if name in LATENCY_IN_TESTS else None)


def test_patterns_torch_pruning_gets_wrong_are_frozen_with_the_reason(rows: dict[str, Row]) -> None:
    world = rows["world-model"]
    # a Linear viewed as a 32x4x4 feature map: Torch-Pruning offers its 512 outputs as a plain group
    assert "breaks the forward pass" in world.frozen["decoder_fc.0"] and "invalid for input" in world.frozen["decoder_fc.0"]
    assert world.boundaries == ("dynamics",)  # the GRUCell: Torch-Pruning's grouping never ends on it
    vae = rows["vae"]
    assert "unflatten" in vae.frozen["decoder.0"]
    # heads the task forgot to declare as outputs are frozen by the output-shape check, not silently narrowed
    assert "changes the model's output shapes" in vae.frozen["mean"]
    assert not rows["unet"].frozen and rows["unet"].flows == 3  # skip concatenations cross encoder and decoder
    assert rows["siamese"].flows == 1  # the shared embedding feeds the head twice
    # classifiers loaded from torchvision and timm: nobody named their output layer; the validation finds it
    for name, head in (("torchvision mobilenet_v3_small", "classifier.3"), ("timm convnext_atto", "head.fc")):
        assert list(rows[name].frozen) == [head] and "output shapes" in rows[name].frozen[head]
    # YOLOv8n's C2f split/concat blocks prune; the neck's three feature maps, which the detector also returns, keep
    # their widths (and one Detect-head conv whose cut breaks the box decoding)
    yolo = rows["ultralytics yolov8n"]
    assert yolo.groups > 30 and len(yolo.frozen) == 4
    assert all("output shapes" in yolo.frozen[k] for k in ("model.15.cv2.conv", "model.18.cv2.conv", "model.21.cv2.conv"))


def test_the_readme_table_is_the_suites(rows: dict[str, Row]) -> None:
    spec = importlib.util.spec_from_file_location("bench_conformance", ROOT / "bench" / "conformance.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(bench.README_START), readme.index(bench.README_END)
    table = readme[start:end]
    stale = "README's conformance table is stale: python bench/conformance.py --readme README.md"
    assert all(f"| {name} |" in table for name in MODELS), stale
    lines = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in table.splitlines()}
    planned = HEADER.index(next(h for h in HEADER if h.startswith("latency-planned")))
    for name in IN_TESTS:  # every cell, but the latency-planned prune's where the suite did not run it
        ours = bench.table([rows[name]]).splitlines()[-1].split(" | ")
        assert [c for i, c in enumerate(lines[name]) if i != planned or name in LATENCY_IN_TESTS] == [
            c for i, c in enumerate(ours) if i != planned or name in LATENCY_IN_TESTS], stale


TASK = '''
import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, {tests!r})
from conformance_models import MODELS

from edgeprune.artifact.export import flat_outputs
from edgeprune.core.task import Task


def make():
    model, inputs, components, outputs = MODELS[{name!r}]()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        targets = flat_outputs(reference(*inputs))

    def distance(m):
        return sum(F.mse_loss(a, b) for a, b in zip(flat_outputs(m(*inputs)), targets))

    def evaluate(m):
        with torch.no_grad():
            return {{"fidelity": -float(distance(m))}}

    def finetune(m, steps):
        if os.environ.get("TASK_FINETUNE_RAISES"):
            raise RuntimeError("simulated crash in the task's finetune")
        optimiser = torch.optim.Adam(m.parameters(), 1e-3)
        for _ in range(steps):
            loss = distance(m)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    return Task({task!r}, lambda: copy.deepcopy(model), lambda: inputs, evaluate, "fidelity", {metric!r},
                output_layers=outputs, finetune=finetune)
'''


def tune_args(tmp_path: Path, name: str, task: str, metric: str, finetune_steps: int) -> list[str]:
    """``edgeprune tune`` on a conformance network as a user's task file: fidelity to the dense model's outputs."""
    spec = tmp_path / f"{task}.py"
    spec.write_text(TASK.format(tests=str(TESTS), name=name, task=task, metric=metric))
    quick = tmp_path / "cpu-quick.toml"
    text = target_path("cpu").read_text().replace("runs = 300", "runs = 50").replace("repeats = 5", "repeats = 2")
    quick.write_text(text.replace('name = "cpu"', 'name = "cpu-quick"'))
    return ["tune", "--task", f"{spec}:make", "--target", str(quick), "--latency-budget", "0.9x",
            "--finetune-steps", str(finetune_steps), "--step", "0.3", "--out", str(tmp_path / "run")]


@pytest.fixture
def world(tmp_path: Path) -> list[str]:
    return tune_args(tmp_path, "world-model", "world-model", "fidelity>=-1", 2)


def one_line_error(result: object) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    return stderr


def test_the_world_model_tunes_or_says_why_and_a_failed_run_starts_over(world: list[str], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("TASK_FINETUNE_RAISES", "1")
    crashed = runner.invoke(cli.app, world)
    assert crashed.exit_code == 2
    assert ("task 'world-model': finetune raised RuntimeError on the model pruned at step 1: simulated crash"
            in one_line_error(crashed))
    staging = tmp_path / ".run.partial"
    assert (staging / "failed.txt").read_text().startswith("TaskError: task 'world-model': finetune raised")
    monkeypatch.delenv("TASK_FINETUNE_RAISES")
    # a failure is not an interruption: the next run says so and starts over (no "add --resume")
    again = runner.invoke(cli.app, world)
    assert "the last run into" in again.stdout and "failed (TaskError" in again.stdout and "starting over" in again.stdout
    assert again.exit_code in (0, cli.INFEASIBLE_EXIT), again.output
    if again.exit_code:
        assert one_line_error(again).startswith("error: budgets cannot both hold:")
    assert (tmp_path / "run" / "manifest.json").is_file() and not staging.exists()
    frozen = (tmp_path / "run" / "report.md").read_text()
    assert "decoder_fc.0" in frozen and "breaks the forward pass" in frozen  # the report names the frozen group


def test_yolov8n_tunes_or_says_why(tmp_path: Path) -> None:
    """The issue's report: Torch-Pruning's magnitude importance crashed on YOLOv8n's C2f split at the first step.
    Built from ultralytics' yaml (random weights), it now prunes step by step, or stops with one line."""
    pytest.importorskip("ultralytics")
    args = [*tune_args(tmp_path, "ultralytics yolov8n", "yolov8n", "fidelity>=-1e6", 0), "--strategy", "magnitude"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code in (0, cli.INFEASIBLE_EXIT), result.output
    if result.exit_code:
        assert one_line_error(result).startswith("error: budgets cannot both hold:")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    accepted = [s for s in manifest["steps"] if s["status"] == "accepted"]
    assert accepted and manifest["pruned"]["params"] < manifest["dense"]["params"]


def test_a_task_factory_that_raises_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "broken.py"
    spec.write_text("def make():\n    raise RuntimeError('no such dataset here')\n")
    result = CliRunner().invoke(cli.app, ["graph", "--task", f"{spec}:make"])
    assert result.exit_code == 2
    assert "task factory" in one_line_error(result) and "raised RuntimeError: no such dataset here" in result.stderr


def test_an_internal_error_is_one_line_and_a_saved_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> None:
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setattr(cli, "CRASH_LOGS", tmp_path / "logs")
    monkeypatch.setattr(sys, "argv", ["edgeprune", "tune"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "internal error: ZeroDivisionError: a bug of ours" in stderr
    (log,) = (tmp_path / "logs").iterdir()
    assert str(log) in " ".join(stderr.split()) and "Traceback" in log.read_text() and "command: edgeprune tune" in log.read_text()


def test_a_group_whose_cut_the_exporter_refuses_is_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for an exporter failure (none of the suite's networks has one): the export of a model whose trunk
    lost channels raises; bisection finds that group alone and leaves every other one prunable."""
    from edgeprune.prune import graph as graph_module

    export = graph_module.export_onnx
    calls: list[int] = []

    def refusing(model, inputs, path):  # type: ignore[no-untyped-def]
        calls.append(1)
        if model.trunk[0].out_features < 128:
            raise RuntimeError("unsupported: a stand-in exporter failure")
        return export(model, inputs, path)

    monkeypatch.setattr(graph_module, "export_onnx", refusing)
    model, inputs, components, outputs = MODELS["actor-critic"]()
    graph = graph_module.ComponentGraph(model, inputs, components, outputs)
    frozen = graph.validate(inputs, 8)
    assert frozen == {"trunk.0": "frozen: cutting 8 of its channels breaks the ONNX export "
                                 "(RuntimeError: unsupported: a stand-in exporter failure)"}
    assert set(graph.groups) == {"policy.0", "trunk.2", "critic.0"} and graph.skipped["trunk.0"] == frozen["trunk.0"]
    assert len(calls) <= 1 + 2 * 2  # all at once, then halves: never one export per group and pair


def test_a_validation_is_reused_for_the_same_architecture_and_only_for_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The world model's verdicts (its Linear viewed as a feature map is frozen) are stored once; a fresh model of
    the same architecture takes them without a single trial cut; other weights still match, other inputs do not."""
    from edgeprune.prune.graph import ComponentGraph

    def graph(batch: int = 2) -> tuple[ComponentGraph, tuple]:
        model, inputs, components, outputs = MODELS["world-model"]()
        inputs = tuple(t[:1].expand(batch, *t.shape[1:]).clone() for t in inputs)
        return ComponentGraph(model, inputs, components, outputs), inputs

    first, inputs = graph()
    frozen = first.validate(inputs, 8, tmp_path)
    assert "decoder_fc.0" in frozen and first.validated_from is None
    assert [p.name for p in tmp_path.iterdir()] == [f"{first.validation_key(inputs, 8)}.json"]

    def no_trial_cut(self: ComponentGraph) -> ComponentGraph:
        raise AssertionError("a cached validation trial-cut again")

    again, inputs = graph()
    with torch.no_grad():
        for p in again.model.parameters():
            p.mul_(0.5)  # other weights, same architecture
    monkeypatch.setattr(ComponentGraph, "fork", no_trial_cut)
    assert again.validate(inputs, 8, tmp_path) == frozen and again.validated_from == next(tmp_path.iterdir())
    assert again.frozen == first.frozen and set(again.groups) == set(first.groups)
    other, inputs = graph(batch=3)
    with pytest.raises(AssertionError, match="trial-cut again"):
        other.validate(inputs, 8, tmp_path)
    assert other.validation_key(inputs, 4) != other.validation_key(inputs, 8)
