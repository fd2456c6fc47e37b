"""Built-in tasks ``torchvision-resnet18``, ``torchvision-resnet50``, ``torchvision-mobilenet_v2``: the standard
architectures at 224×224, batch 1, loaded the way users load them (``torchvision.models.NAME``), with random
weights (``weights=None``: nothing can be downloaded here).

They exist for latency work at real size (layer tables, cost models, the knapsack's first step): their latency does
not depend on the weights. With random weights there is no accuracy to keep, so the metric is ``agreement``: the
share of 32 fixed random images whose top-1 class the pruned model still gives as the dense one does (1.0 dense).
No finetune: tune them with ``--finetune-steps 0``. Needs torchvision (the Makefile installs torch 2.14.1 with
torchvision 0.29.1).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from edgeprune.core.task import Task, TaskError

SIZE = 224
EVAL_IMAGES = 32
SEED = 0
#: name -> the classifier layer (the model's interface: its 1000 outputs are never pruned)
MODELS = {"resnet18": "fc", "resnet50": "fc", "mobilenet_v2": "classifier.1"}


def build_model(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:
        raise TaskError(f"task torchvision-{name} needs torchvision (pip install torchvision, matching torch)") from exc
    torch.manual_seed(SEED)
    return getattr(torchvision.models, name)(weights=None).eval()


def example_inputs() -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED)),)


@functools.cache
def _images() -> torch.Tensor:
    return torch.randn(EVAL_IMAGES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED + 1))


@functools.cache
def _dense_classes(name: str) -> torch.Tensor:
    with torch.no_grad():
        return build_model(name)(_images()).argmax(1)


def _evaluate(name: str, model: nn.Module) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        classes = model(_images()).argmax(1)
    return {"agreement": float((classes == _dense_classes(name)).float().mean())}


def vision_task(name: str) -> Task:
    if name not in MODELS:
        raise TaskError(f"no torchvision task {name!r}; there are {', '.join(MODELS)}")
    return Task(
        name=f"torchvision-{name}",
        build=functools.partial(build_model, name),
        example_inputs=example_inputs,
        evaluate=functools.partial(_evaluate, name),
        metric="agreement",
        default_metric_budget="agreement>=0.5",
        output_layers=(MODELS[name],),
        description=f"torchvision {name}, random weights, {SIZE}x{SIZE}, batch 1 (latency work; metric: top-1 "
                    f"agreement with the dense model on {EVAL_IMAGES} fixed random images)",
    )


resnet18 = functools.partial(vision_task, "resnet18")
resnet50 = functools.partial(vision_task, "resnet50")
mobilenet_v2 = functools.partial(vision_task, "mobilenet_v2")
