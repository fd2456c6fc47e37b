"""The built-in ``digits-resnet`` task: shipped checkpoint, metric, seeded batches, fine-tuning, residual groups,
and a pruned plan that replays and exports."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from edgeprune.artifact.export import check_export, export_onnx
from edgeprune.core.budgets import MetricBudget
from edgeprune.core.task import Task, load_task
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.plan import Plan, prune_uniform
from edgeprune.runtimes import get_runtime
from edgeprune.zoo import CHECKPOINTS
from edgeprune.zoo.resnet import DEPLOY_BATCH, DigitsResNet


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("digits-resnet")


@pytest.fixture(scope="module")
def dense(task: Task) -> dict[str, float]:
    return task.evaluate(task.build())


@pytest.fixture(scope="module")
def record() -> dict[str, object]:
    return json.loads((CHECKPOINTS / "digits-resnet.json").read_text())


def _graph_args(task: Task) -> dict[str, object]:
    return {"components": task.components, "output_layers": task.output_layers}


def test_checkpoint_is_small_and_reaches_its_recorded_accuracy(task: Task, dense, record) -> None:
    path = CHECKPOINTS / "digits-resnet.pt"
    assert path.stat().st_size < 2_000_000
    assert set(torch.load(path, weights_only=True)) == set(task.build().state_dict())
    assert record["task"] == "digits-resnet" and isinstance(record["seed"], int) and record["steps"] > 0
    assert record["wall_s"] > 0 and record["dense_latency"]["median_ms"] > 0
    assert abs(dense["accuracy"] - record["heldout_accuracy"]) <= 1 / record["heldout_images"] + 1e-9
    assert dense["loss"] == pytest.approx(record["heldout_loss"], rel=1e-3)
    assert dense["accuracy"] >= 0.97


def test_build_is_fresh_eval_mode_with_the_declared_components(task: Task) -> None:
    first, second = task.build(), task.build()
    assert first is not second and not first.training and isinstance(first, DigitsResNet)
    children = {name for name, child in first.named_children() if any(True for _ in child.parameters())}
    assert children == {"stem", "layer1", "layer2", "layer3", "head"}
    assert task.components == {"stem": ["stem"], "stage1": ["layer1"], "stage2": ["layer2"], "stage3": ["layer3"],
                               "head": ["head"]}
    (x,) = task.example_inputs()
    assert x.shape == (DEPLOY_BATCH, 1, 32, 32) and torch.equal(x, task.example_inputs()[0])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    with torch.no_grad():
        assert first(x).shape == (DEPLOY_BATCH, 10)
    assert task.output_layers == ("head",) and dict(first.named_modules())["head"].out_features == 10


def test_evaluate_is_deterministic_restores_mode_and_clears_the_default_budget(task: Task, dense) -> None:
    model = task.build().train()
    assert task.evaluate(model) == dense and model.training, "same numbers, and the caller's mode restored"
    assert set(dense) == {"accuracy", "loss"} and task.metric == "accuracy"
    budget = MetricBudget.parse(task.default_metric_budget)
    assert budget.metric == "accuracy" and budget.relative and budget.holds(dense["accuracy"], dense["accuracy"])
    assert budget.threshold(dense["accuracy"]) <= dense["accuracy"] - 0.01, "room for pruning to cost a little"


def test_batches_are_seeded_augmented_and_the_loss_is_differentiable(task: Task) -> None:
    a, b, c = task.batches(3), task.batches(3), task.batches(4)
    (xa, ya), (xb, yb), (xc, _) = next(a), next(b), next(c)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    assert xa.shape[1:] == (1, 32, 32) and len(xa) == len(ya) > 1 and ya.dtype == torch.int64
    assert 0 <= int(ya.min()) and int(ya.max()) <= 9 and not torch.equal(next(a)[0], xa)
    model = task.build()
    loss = task.loss(model, (xa, ya))
    assert loss.ndim == 0 and loss.requires_grad and 0 < loss.item() < 0.5
    loss.backward()
    assert model.stem.conv.weight.grad is not None and model.stem.conv.weight.grad.abs().sum() > 0


def test_finetune_changes_weights_deterministically(task: Task) -> None:
    start = task.build()
    twins = [copy.deepcopy(start) for _ in range(2)]
    for twin in twins:
        task.finetune(twin, 3)
        assert not twin.training
    first, second = twins[0].state_dict(), twins[1].state_dict()
    assert all(torch.equal(v, second[k]) for k, v in first.items())
    assert not torch.equal(first["layer2.0.conv1.weight"], start.state_dict()["layer2.0.conv1.weight"])


def test_residual_groups_are_flows_across_stages_and_head_is_never_pruned(task: Task) -> None:
    graph = ComponentGraph(task.build(), task.example_inputs(), **_graph_args(task))
    kinds = {key: info.kind for key, info in graph.groups.items()}
    assert kinds == {"layer1.0.conv1": "intra", "layer2.0.conv1": "intra", "layer3.0.conv1": "intra",
                     "stem.conv": "flow", "layer2.0.downsample.0": "flow", "layer3.0.downsample.0": "flow"}
    stem = graph.groups["stem.conv"]  # layer1's identity shortcut ties the stem's width to layer1's output
    assert stem.width == 32 and {"stem.conv", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.downsample.0"} <= set(
        stem.modules)
    assert stem.producers == ("stage1", "stem") and stem.consumers == ("stage1", "stage2")
    stage2 = graph.groups["layer2.0.downsample.0"]  # the projection and the residual branch add: one group
    assert {"layer2.0.conv2", "layer2.0.downsample.0"} <= set(stage2.out_modules)
    assert stage2.producers == ("stage2",) and stage2.consumers == ("stage3",)
    stage3 = graph.groups["layer3.0.downsample.0"]
    assert stage3.width == 128 and stage3.producers == ("stage3",) and stage3.consumers == ("head",)
    assert all("head" not in info.out_modules for info in graph.groups.values())
    assert graph.skipped == {"head": "output layer: its width is the model's interface"}


def test_half_pruned_plan_replays_and_exports_to_onnx(task: Task, tmp_path: Path, fast_target) -> None:
    """``joint`` cuts the residual (flow) groups too, so every coupled add is exercised by replay and export."""
    inputs, args = task.example_inputs(), _graph_args(task)
    dense_model = task.build()
    plan = Plan.dense(task.name, ComponentGraph(copy.deepcopy(dense_model), inputs, **args))
    pruned, half = prune_uniform(dense_model, plan, 0.5, inputs, 8, "joint", **args)
    assert {k: len(g.keep) for k, g in half.groups.items()} == {k: g.width // 2 for k, g in plan.groups.items()}
    assert pruned.head.in_features == 64 and pruned.head.out_features == 10
    replayed = half.apply(task.build(), inputs, **args)
    with torch.no_grad():
        expected = pruned(*inputs)
        assert torch.equal(replayed(*inputs), expected)
    path = export_onnx(replayed, inputs, tmp_path / "pruned.onnx")
    assert check_export(replayed, inputs, path, get_runtime(fast_target), rtol=1e-4, atol=1e-4) < 1e-4
