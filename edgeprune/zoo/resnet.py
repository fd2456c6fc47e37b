"""Built-in task ``digits-resnet``: a small residual CNN classifier on scikit-learn's digits.

Why it exists: the other zoo models are small enough that ONNX Runtime's per-node overhead dominates their CPU
latency; this one's dense latency (batch 4, one CPU thread) is about 4.4 ms of real convolution work, and
its residual additions couple channels across blocks and stages — the dependency groups that pruning must cut
together (``layer1``'s identity shortcut ties its width to the stem's; each projection stage ties its blocks).

Data: ``load_digits`` 8×8 images in [0, 1] upsampled bilinearly to 32×32 and the fixed seeded 80/20 split of
:func:`edgeprune.zoo.autoencoder.digits_images` (the same images, so the two digits tasks share one held-out set).
The metric is held-out ``accuracy``; ``loss`` is the held-out mean cross-entropy.

Retrain the checkpoint with ``python -m edgeprune.zoo.train digits-resnet --seed 0`` (about three minutes).
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.modes import evaluating
from edgeprune.core.task import Task, TaskError
from edgeprune.zoo import CHECKPOINTS, fit, single_thread
from edgeprune.zoo.autoencoder import SPLIT_SEED, digits_images

NAME = "digits-resnet"
CHECKPOINT = CHECKPOINTS / f"{NAME}.pt"
CLASSES = 10
SIZE = 32
WIDTHS = (32, 64, 128)
BLOCKS = (1, 1, 1)
DEPLOY_BATCH = 4
"""The deployed batch: the four digit boxes of one meter/PIN reading classified in one call, so the latency budget is
per reading. Latency is linear in the batch here (4.4 ms at 4, 8.9 ms at 8 on one CPU thread): 4 sits well above
timing noise while keeping training and evaluation of this 48.5 M-MAC-per-image model quick on a 2-core box."""
EVAL_BATCH = 512
BATCH_SIZE = 64
MAX_SHIFT = 2
"""Training augmentation: random translation by up to this many pixels (of 32), zero-padded."""
FINETUNE_LR = 0.02
FINETUNE_MOMENTUM = 0.9
"""Fine-tuning is SGD with Nesterov momentum at a small constant rate, as the autoencoder's (its note says why SGD):
measured on 50 %-pruned copies (residual groups cut too), 0.02 repairs to 98.9 % held-out in 100 steps, 0.05 only
to 90.8 %; a 25 %-pruned one is back at 100 % in 40 steps."""
SPLIT = f"train/held-out split: edgeprune.zoo.autoencoder.digits_images (permutation seed {SPLIT_SEED}, 20% held out)"


class BasicBlock(nn.Module):
    """conv3×3–BN–ReLU–conv3×3–BN plus a shortcut, then ReLU; the shortcut is a 1×1 conv–BN projection
    (``downsample``) when the stride or width changes, else the identity."""

    def __init__(self, inp: int, out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(OrderedDict([
                ("0", nn.Conv2d(inp, out, 1, stride=stride, bias=False)), ("1", nn.BatchNorm2d(out))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + shortcut)


class DigitsResNet(nn.Module):
    """A CIFAR-style ResNet for 32×32 single-channel images: ``stem`` (conv3×3–BN–ReLU), ``layer1``..``layer3``
    (basic blocks; ``layer2`` and ``layer3`` open with a stride-2 projection block), global average pool, ``head``.

    Its top-level children with weights are exactly the components: stem, layer1, layer2, layer3, head.
    """

    def __init__(self, widths: tuple[int, int, int] = WIDTHS, blocks: tuple[int, int, int] = BLOCKS,
                 classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(1, widths[0], 3, padding=1, bias=False)),
            ("bn", nn.BatchNorm2d(widths[0])),
            ("relu", nn.ReLU()),
        ]))
        stages: list[nn.Sequential] = []
        inp = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*(BasicBlock(inp if b == 0 else width, width, stride if b == 0 else 1)
                                          for b in range(count))))
            inp = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[2], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(torch.flatten(self.pool(x), 1))


COMPONENTS: dict[str, list[str]] = {
    "stem": ["stem"], "stage1": ["layer1"], "stage2": ["layer2"], "stage3": ["layer3"], "head": ["head"],
}
OUTPUT_LAYERS = ("head",)


# -- data ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Digits:
    """Images (N, 1, 32, 32) in [0, 1] with their int64 labels, split as the autoencoder's digits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@functools.cache
def digits() -> Digits:
    """The autoencoder's upsampled images and split, with the labels permuted as its images are.

    ``digits_images`` returns no labels, so its permutation (seed ``SPLIT_SEED``, the first 20 % held out) is redrawn
    here; the shipped checkpoint's held-out accuracy is the check that images and labels line up.
    """
    from sklearn.datasets import load_digits

    images = digits_images(SIZE)
    labels = torch.from_numpy(load_digits().target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
    n_test = len(images.test)
    return Digits(images.train, labels[order[n_test:]].contiguous(), images.test, labels[order[:n_test]].contiguous())


def shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift]², zero-filled."""
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [n, h, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [n, 1, w]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def batch_stream(seed: int, batch_size: int = BATCH_SIZE, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled ``(images, labels)`` training batches, shifted when ``augment``; everything seeded."""
    data = digits()
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data.train_y), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            x = data.train_x[idx]
            yield (shift(x, generator) if augment else x), data.train_y[idx]


def example_inputs() -> tuple[torch.Tensor, ...]:
    """The first ``DEPLOY_BATCH`` held-out images: real digits of the deployed shape (4, 1, 32, 32)."""
    return (digits().test_x[:DEPLOY_BATCH].clone(),)


# -- objectives ----------------------------------------------------------------------------------------------------
def classification_loss(model: nn.Module, batch: object) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on an ``(images, labels)`` batch."""
    images, labels = batch  # type: ignore[misc]
    return F.cross_entropy(model(images), labels)


def held_out_metrics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = EVAL_BATCH,
                     prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a classifier on held-out ``images`` (each chunk through ``prepare`` first),
    in eval mode (the caller's mode is restored); deterministic."""
    with evaluating(model), torch.inference_mode(), single_thread():
        logits = torch.cat([model(prepare(chunk)) for chunk in images.split(batch)])
    return {
        "accuracy": float((logits.argmax(1) == labels).double().mean()),
        "loss": float(F.cross_entropy(logits.double(), labels)),
    }


def evaluate(model: nn.Module) -> dict[str, float]:
    """Held-out accuracy and mean cross-entropy on the digits split."""
    data = digits()
    return held_out_metrics(model, data.test_x, data.test_y)


def finetune(model: nn.Module, steps: int) -> None:
    """SGD-Nesterov on augmented batches from the fixed seed 0: the same model and steps give the same weights."""
    optimiser = torch.optim.SGD(model.parameters(), lr=FINETUNE_LR, momentum=FINETUNE_MOMENTUM, nesterov=True)
    with single_thread():
        fit(model, classification_loss, batch_stream(0), steps, optimiser)


def build() -> DigitsResNet:
    """The dense classifier with the shipped weights, in eval mode (a fresh object on every call)."""
    if not CHECKPOINT.is_file():
        raise TaskError(f"checkpoint {CHECKPOINT} missing; train it with `python -m edgeprune.zoo.train {NAME}`")
    model = DigitsResNet()
    model.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True))
    return model.eval()


def digits_resnet() -> Task:
    """The ``digits-resnet`` task; the data loads on first use (cached), so building the task is cheap."""
    return Task(
        name=NAME,
        build=build,
        example_inputs=example_inputs,
        evaluate=evaluate,
        metric="accuracy",
        default_metric_budget="accuracy>=0.98x",
        output_layers=OUTPUT_LAYERS,
        components=COMPONENTS,
        finetune=finetune,
        loss=classification_loss,
        batches=batch_stream,
        description=(f"residual CNN (widths {WIDTHS}, {BLOCKS} blocks) classifying scikit-learn digits upsampled to "
                     f"32x32, batch {DEPLOY_BATCH}; accuracy on a fixed 20% held-out split"),
        extra={"widths": WIDTHS, "blocks": BLOCKS},
    )


# -- training ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """From-scratch training: ~18 epochs of SGD-Nesterov with a cosine decay reach 100 % held-out in ~2.5 min."""

    steps: int = 400
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


def dense_latency(model: nn.Module) -> dict[str, object]:
    """The dense model's ONNX Runtime latency on the shipped ``cpu`` target with the example inputs (imports the
    export and runtime stack lazily: loading the task should not pull in ONNX Runtime)."""
    from edgeprune.artifact.export import export_onnx, to_numpy
    from edgeprune.core.targets import load_target
    from edgeprune.runtimes import get_runtime

    inputs = example_inputs()
    runtime = get_runtime(load_target("cpu"))
    with tempfile.TemporaryDirectory(prefix="edgeprune-resnet-") as tmp:
        path = export_onnx(model, inputs, Path(tmp) / "dense.onnx")
        latency = runtime.latency(path, to_numpy(inputs))
    return {"target": "cpu", "batch": DEPLOY_BATCH, "median_ms": round(latency.median_ms, 3),
            "spread": round(latency.spread, 3), "p10_ms": round(latency.p10_ms, 3), "p90_ms": round(latency.p90_ms, 3),
            "runtime": runtime.versions()}


def parameters_and_macs(model: nn.Module) -> tuple[int, int]:
    """Parameter count and multiply-accumulates per image (convs and the head)."""
    macs = 0

    def count(module: nn.Module, _: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += out[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, SIZE, SIZE))
    for hook in hooks:
        hook.remove()
    return sum(p.numel() for p in model.parameters()), macs


def train_digits_resnet(seed: int, out: Path, config: TrainConfig | None = None) -> dict[str, object]:
    """Train from scratch (seeded; SGD-momentum, cosine, shift augmentation); write ``digits-resnet.pt``/``.json``."""
    cfg = config or TrainConfig()
    torch.manual_seed(seed)
    model = DigitsResNet()
    optimiser = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    start, cpu_start = time.perf_counter(), time.process_time()
    with single_thread():
        final_loss = fit(model, classification_loss, batch_stream(seed), cfg.steps, optimiser, cosine=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = evaluate(model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"{NAME}.pt")
    params, macs = parameters_and_macs(model)
    data = digits()
    summary: dict[str, object] = {
        "task": NAME,
        "seed": seed,
        "data": f"sklearn.datasets.load_digits (1797 images, 8x8 upsampled to {SIZE}x{SIZE}); {SPLIT}",
        "train_images": len(data.train_y),
        "heldout_images": len(data.test_y),
        "architecture": f"DigitsResNet(widths={WIDTHS}, blocks={BLOCKS})",
        "parameters": params,
        "macs_per_image": macs,
        "steps": cfg.steps,
        "batch_size": BATCH_SIZE,
        "augmentation": f"random shift up to {MAX_SHIFT} px",
        "optimiser": f"SGD nesterov lr={cfg.lr} momentum={cfg.momentum} wd={cfg.weight_decay} cosine to 0",
        "epochs": round(cfg.steps * BATCH_SIZE / len(data.train_y), 1),
        "final_train_loss": final_loss,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "torch": torch.__version__,
        "threads": 1,
        **{f"heldout_{k}": v for k, v in metrics.items()},
        "dense_latency": dense_latency(model),
    }
    (out / f"{NAME}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
