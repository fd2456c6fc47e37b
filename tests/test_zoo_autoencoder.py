"""The built-in autoencoder tasks: shipped checkpoints, metric, fine-tuning, pruning and ONNX export."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeprune.artifact.export import check_export, export_onnx
from edgeprune.core.budgets import MetricBudget
from edgeprune.core.task import Task, TaskError, load_task
from edgeprune.prune.graph import ComponentGraph
from edgeprune.runtimes import get_runtime
from edgeprune.zoo import CHECKPOINTS
from edgeprune.zoo.autoencoder import FASHION_ENV, FashionMnistMissing, check_fashion


def _fashion_or_skip() -> None:
    try:
        check_fashion()
    except FashionMnistMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=["digits-autoencoder", "fashion-autoencoder"])
def task(request: pytest.FixtureRequest) -> Task:
    if request.param == "fashion-autoencoder":
        _fashion_or_skip()
    return load_task(request.param)


@pytest.fixture(scope="module")
def dense(task: Task) -> dict[str, float]:
    return task.evaluate(task.build())


def test_checkpoint_is_a_small_state_dict_with_its_record(task: Task) -> None:
    path = CHECKPOINTS / f"{task.name}.pt"
    assert path.stat().st_size < 2_500_000
    state = torch.load(path, weights_only=True)
    assert set(state) == set(task.build().state_dict())
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["task"] == task.name and isinstance(record["seed"], int) and record["steps"] > 0
    assert record["heldout_psnr"] > 0 and record["wall_s"] > 0


def test_build_is_fresh_eval_mode_and_shapes_match(task: Task) -> None:
    first, second = task.build(), task.build()
    assert first is not second and not first.training
    assert set(dict(first.named_children())) == {"encoder", "decoder"} and task.components is None
    (x,) = task.example_inputs()
    assert x.shape[:2] == (1, 1) and x.shape[2] == x.shape[3] and torch.equal(x, task.example_inputs()[0])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.1  # a real image, not blank
    with torch.no_grad():
        y = first(x)
    assert y.shape == x.shape and 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    modules = dict(first.named_modules())
    (out,) = task.output_layers
    assert isinstance(modules[out], nn.Conv2d) and modules[out].out_channels == 1


def test_evaluate_is_deterministic_restores_mode_and_clears_the_default_budget(task: Task, dense) -> None:
    model = task.build().train()
    again = task.evaluate(model)
    assert model.training, "evaluate must restore the caller's train/eval mode"
    assert again == dense and set(dense) == {"psnr", "mse"} and task.metric == "psnr"
    budget = MetricBudget.parse(task.default_metric_budget)
    assert budget.metric == "psnr" and budget.holds(dense["psnr"], dense["psnr"])
    assert dense["psnr"] >= budget.value + 2.0, "the dense model should clear its budget by a margin"
    # PSNR of each image >= PSNR of the mean MSE (Jensen): the metric is the mean of per-image PSNRs
    assert dense["psnr"] >= -10 * torch.log10(torch.tensor(dense["mse"])).item()


def test_batches_are_seeded_training_images(task: Task) -> None:
    a, b, c = task.batches(3), task.batches(3), task.batches(4)
    first = next(a)
    assert torch.equal(first, next(b)) and not torch.equal(first, next(c))
    assert first.ndim == 4 and first.shape[1:] == task.example_inputs()[0].shape[1:] and len(first) > 1
    assert not torch.equal(first, next(a))
    loss = task.loss(task.build(), first)
    assert loss.ndim == 0 and loss.requires_grad and 0 < loss.item() < 0.05


def test_finetune_repairs_a_pruned_model_deterministically(task: Task) -> None:
    """Prune every hidden group by half (as the tune loop does), then a short fine-tune cuts the loss."""
    inputs = task.example_inputs()
    model = task.build()
    graph = ComponentGraph(model, inputs, output_layers=task.output_layers)
    intra = {k: g for k, g in graph.groups.items() if g.kind == "intra"}
    flow = [g for g in graph.groups.values() if g.kind == "flow"]
    assert len(intra) == 6 and len(flow) == 1 and flow[0].key == "encoder.latent"
    for key, info in intra.items():
        keep = set(torch.topk(graph.importance(key), info.width // 2).indices.tolist())
        graph.prune(key, [i for i in range(info.width) if i not in keep])
    batch = next(task.batches(123))
    before = task.loss(model.eval(), batch).item()
    twins = [copy.deepcopy(model) for _ in range(2)]
    for twin in twins:
        task.finetune(twin, 3)
    assert all(torch.equal(v, twins[1].state_dict()[k]) for k, v in twins[0].state_dict().items())
    task.finetune(model, 30)
    assert not model.training
    assert task.loss(model, batch).item() < 0.5 * before


def test_pruned_model_exports_to_onnx_and_matches_torch(task: Task, tmp_path: Path, fast_target) -> None:
    inputs = task.example_inputs()
    model = task.build()
    graph = ComponentGraph(model, inputs, output_layers=task.output_layers)
    for key in ("decoder.conv1", "decoder.conv2", "encoder.conv2"):  # the transposed convs and a BN-fed one
        graph.prune(key, list(range(0, graph.groups[key].width, 3)))
    runtime = get_runtime(fast_target)
    for name, candidate in (("dense", task.build()), ("pruned", model)):
        path = export_onnx(candidate, inputs, tmp_path / f"{name}.onnx", dynamo=True)
        assert check_export(candidate, inputs, path, runtime, rtol=0.0, atol=1e-4) < 1e-4


def test_missing_fashion_mnist_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_ENV, str(tmp_path))
    with pytest.raises(TaskError) as info:
        load_task("fashion-autoencoder")
    message = str(info.value)
    assert isinstance(info.value, FashionMnistMissing) and "\n" not in message
    assert message.startswith(f"Fashion-MNIST not found at {tmp_path};")
    assert "apt-get install dataset-fashion-mnist" in message and FASHION_ENV in message


def test_fashion_env_var_points_at_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fashion_or_skip()
    source = check_fashion()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / name).symlink_to(source / name)
    monkeypatch.setenv(FASHION_ENV, str(tmp_path))
    assert check_fashion() == tmp_path
    assert load_task("fashion-autoencoder").name == "fashion-autoencoder"
