"""Built-in tasks ``fashion-resnet18`` and ``fashion-mobilenet_v2``: torchvision's ResNet-18 and MobileNetV2, as
users load them (``torchvision.models.NAME(num_classes=10)``), trained here on the real Fashion-MNIST.

Why they exist: the latency-aware loop must win on networks of standard architecture and real size (11.2 M and
2.2 M parameters), trained on real data, not only on the small zoo models.

Data: Debian's ``dataset-fashion-mnist`` IDX files; 28×28 images zero-padded to 32×32 (the smallest input these
stems take without collapsing: layer4 / the last block then runs at 1×1), repeated to the 3 input channels the
architectures expect and normalised with the training set's mean and std. Training draws from all 60 000 training
images (random horizontal flip and a shift of up to 2 px); the metric is ``accuracy`` on the first 2000 test
images (``loss``: their mean cross-entropy). Deployed at batch 1.

Checkpoints ship in fp16 (half the size; the task loads them as fp32): retrain with
``python -m edgeprune.zoo.train fashion-resnet18`` (the json beside each checkpoint says how long it took).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.task import Task, TaskError
from edgeprune.zoo import CHECKPOINTS, fit, single_thread
from edgeprune.zoo.autoencoder import (
    FASHION_LABELS,
    FashionMnistMissing,
    check_fashion,
    fashion_images,
    fashion_labels,
)
from edgeprune.zoo.resnet import classification_loss, held_out_metrics, shift

SIZE = 32
PAD = (SIZE - 28) // 2
HELD_OUT = 2000
EVAL_BATCH = 500
BATCH_SIZE = 64
MEAN, STD = 0.2860, 0.3530
"""Fashion-MNIST's training-set pixel mean and std (in [0, 1])."""
FINETUNE_LR = 0.01
FINETUNE_MOMENTUM = 0.9
#: name -> the classifier layer (the model's interface: its 10 outputs are never pruned)
MODELS = {"resnet18": "fc", "mobilenet_v2": "classifier.1"}
#: name -> its top-level modules: one network is one component (else every top-level child would be a component of
#: its own, and the residual widths between ResNet's stages interfaces that ``--flow-policy protect`` keeps)
NETWORK = {"resnet18": ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"],
           "mobilenet_v2": ["features", "classifier"]}


@dataclass(frozen=True)
class TrainConfig:
    """From-scratch training: SGD-Nesterov with a cosine decay over about two epochs (one epoch reached 84.8 % /
    81.9 % held-out; the checkpoint's json says what two reached and how long they took on one thread here)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class Fashion:
    """Padded, normalised one-channel images (N, 1, 32, 32) with their classes; repeated to 3 channels per batch."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str


def check_labels() -> Path:
    folder = check_fashion()
    if not all((folder / name).is_file() for name in FASHION_LABELS):
        raise FashionMnistMissing(f"Fashion-MNIST labels ({', '.join(FASHION_LABELS)}) not found in {folder}")
    return folder


@functools.cache
def fashion() -> Fashion:
    folder = check_labels()
    images = fashion_images(folder, HELD_OUT)
    train_y, test_y = fashion_labels(folder, HELD_OUT)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return ((F.pad(x, (PAD,) * 4) - MEAN) / STD).contiguous()

    return Fashion(prepare(images.train), train_y, prepare(images.test), test_y,
                   f"{images.source}; padded to {SIZE}x{SIZE}, normalised (mean {MEAN}, std {STD})")


def rgb(x: torch.Tensor) -> torch.Tensor:
    """One gray channel as the three the architectures take."""
    return x.expand(-1, 3, -1, -1)


def batch_stream(seed: int, batch_size: int = BATCH_SIZE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled ``(images, labels)`` training batches, flipped and shifted at random; everything seeded."""
    data = fashion()
    generator = torch.Generator().manual_seed(seed)
    background = -MEAN / STD  # a shifted-in border is black, as the padding
    while True:
        order = torch.randperm(len(data.train_y), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            x = data.train_x[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = shift(x - background, generator) + background
            yield rgb(x), data.train_y[idx]


def example_inputs() -> tuple[torch.Tensor, ...]:
    """The first held-out image, batch 1."""
    return (rgb(fashion().test_x[:1]).clone(),)


def evaluate(model: nn.Module) -> dict[str, float]:
    """Held-out accuracy and mean cross-entropy (eval mode, the caller's mode restored)."""
    data = fashion()
    return held_out_metrics(model, data.test_x, data.test_y, EVAL_BATCH, rgb)


def finetune(model: nn.Module, steps: int) -> None:
    """SGD-Nesterov decayed to zero (cosine) on augmented batches seeded by the model's parameter count.

    The decay ends every fine-tune at rest: at a constant rate, the held-out accuracy of the same pruned model moved
    ±0.5 % with where the last batches happened to leave it, a third of the 0.98× budget. The seed gives each pruned
    shape other batches (with one fixed seed, step after step re-fitted the same few thousand images), and the same
    model the same ones: a run is reproducible.
    """
    optimiser = torch.optim.SGD(model.parameters(), lr=FINETUNE_LR, momentum=FINETUNE_MOMENTUM, nesterov=True)
    seed = sum(p.numel() for p in model.parameters())
    with single_thread():
        fit(model, classification_loss, batch_stream(seed), steps, optimiser, cosine=True)


def architecture(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:
        raise TaskError(f"task fashion-{name} needs torchvision (pip install torchvision, matching torch)") from exc
    return getattr(torchvision.models, name)(weights=None, num_classes=10)


def checkpoint(name: str) -> Path:
    return CHECKPOINTS / f"fashion-{name}.pt"


def build(name: str) -> nn.Module:
    """The trained classifier (fp16 storage loaded as fp32), in eval mode; a fresh object on every call."""
    path = checkpoint(name)
    if not path.is_file():
        raise TaskError(f"checkpoint {path} missing; train it with `python -m edgeprune.zoo.train fashion-{name}`")
    model = architecture(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def fashion_task(name: str) -> Task:
    if name not in MODELS:
        raise TaskError(f"no Fashion-MNIST task for {name!r}; there are {', '.join(MODELS)}")
    check_labels()  # fail at load time with the one-line install hint
    return Task(
        name=f"fashion-{name}",
        build=functools.partial(build, name),
        example_inputs=example_inputs,
        evaluate=evaluate,
        metric="accuracy",
        default_metric_budget="accuracy>=0.98x",
        output_layers=(MODELS[name],),
        components={"network": NETWORK[name]},
        finetune=finetune,
        loss=classification_loss,
        batches=batch_stream,
        description=f"torchvision {name} trained on Fashion-MNIST padded to {SIZE}x{SIZE}, batch 1; accuracy on "
                    f"{HELD_OUT} test images",
    )


def train(name: str, seed: int, out: Path, config: TrainConfig | None = None) -> dict[str, object]:
    """Train from scratch (seeded); write ``fashion-NAME.pt`` (fp16 state dict) and ``.json``; return the summary."""
    cfg = config or TrainConfig()
    torch.manual_seed(seed)
    model = architecture(name)
    optimiser = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    start, cpu_start = time.perf_counter(), time.process_time()
    final_loss = fit(model, classification_loss, batch_stream(seed, cfg.batch_size), cfg.steps, optimiser,
                     cosine=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = evaluate(model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               out / f"fashion-{name}.pt")
    half = architecture(name)  # what the task will load: the accuracy of the fp16 weights
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    data = fashion()
    summary: dict[str, object] = {
        "task": f"fashion-{name}",
        "seed": seed,
        "data": data.source,
        "train_images": len(data.train_y),
        "heldout_images": len(data.test_y),
        "architecture": f"torchvision.models.{name}(weights=None, num_classes=10)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "augmentation": "random horizontal flip, random shift up to 2 px",
        "optimiser": f"SGD nesterov lr={cfg.lr} momentum={cfg.momentum} wd={cfg.weight_decay} cosine to 0",
        "epochs": round(cfg.steps * cfg.batch_size / len(data.train_y), 2),
        "final_train_loss": final_loss,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{f"heldout_{k}": v for k, v in metrics.items()},
        **{f"heldout_{k}_fp16": v for k, v in evaluate(half).items()},
    }
    (out / f"fashion-{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


resnet18 = functools.partial(fashion_task, "resnet18")
mobilenet_v2 = functools.partial(fashion_task, "mobilenet_v2")
train_resnet18 = functools.partial(train, "resnet18")
train_mobilenet_v2 = functools.partial(train, "mobilenet_v2")
