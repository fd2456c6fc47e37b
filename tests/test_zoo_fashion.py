"""The Fashion-MNIST tasks on torchvision's ResNet-18 and MobileNetV2: shipped fp16 checkpoints that reach the
accuracy their training note records, on the real data, through the task interface the loop uses."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune.core.task import load_task
from edgeprune.prune.graph import ComponentGraph
from edgeprune.zoo import CHECKPOINTS
from edgeprune.zoo.autoencoder import FashionMnistMissing
from edgeprune.zoo.fashion import MODELS, check_labels

pytest.importorskip("torchvision")


@pytest.fixture(scope="module", params=list(MODELS))
def name(request: pytest.FixtureRequest) -> str:
    try:
        check_labels()
    except FashionMnistMissing as exc:
        pytest.skip(str(exc))
    return request.param


def test_the_shipped_checkpoint_reaches_its_recorded_accuracy(name: str) -> None:
    note = json.loads((CHECKPOINTS / f"fashion-{name}.json").read_text())
    task = load_task(f"fashion-{name}")
    model = task.build()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 storage, fp32 model
    assert sum(p.numel() for p in model.parameters()) == note["parameters"] > 2_000_000
    metrics = task.evaluate(model)
    assert metrics["accuracy"] == pytest.approx(note["heldout_accuracy_fp16"], abs=1e-9)
    assert metrics["accuracy"] > 0.8 and note["heldout_images"] == 2000
    (x,) = task.example_inputs()
    assert x.shape == (1, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])  # gray, repeated to the 3 channels


def test_batches_loss_and_finetune_serve_the_loop(name: str) -> None:
    task = load_task(f"fashion-{name}")
    assert task.batches is not None and task.loss is not None and task.finetune is not None
    images, labels = next(task.batches(0))
    again, _ = next(task.batches(0))
    assert images.shape == (64, 3, 32, 32) and labels.shape == (64,) and torch.equal(images, again)  # seeded
    model = task.build()
    graph = ComponentGraph(model, task.example_inputs(), task.components, task.output_layers)
    assert len(graph.groups) > 10 and task.output_layers[0] not in graph.groups
    assert {info.kind for info in graph.groups.values()} == {"intra"}  # one network, one component: no interfaces
    with torch.no_grad():
        before = float(task.loss(model, (images, labels)))
    task.finetune(model, 3)
    with torch.no_grad():
        assert not model.training and float(task.loss(model, (images, labels))) != before
