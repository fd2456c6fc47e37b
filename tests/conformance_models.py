"""Networks as users build them, for the conformance suite (random weights: what is checked is that pruning keeps
every model valid, not what it computes): multi-component networks written here, and torchvision, timm and
ultralytics architectures loaded through their own constructors.

Each entry builds ``(model, example_inputs, components, output_layers)``; components are the top-level children
unless a network names them. The patterns are the ones Torch-Pruning's grouping gets wrong or incomplete: a Linear
reshaped into a feature map before a transposed conv, recurrent layers, skip concatenations, a module called twice,
shared trunks, heads that must keep their widths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from edgeprune.prune.graph import ComponentGraph

Built = tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, list[str]] | None, Sequence[str]]


class WorldModel(nn.Module):
    """Conv encoder → latent; GRU dynamics over latent + action; reward and value heads; a decoder whose first layer
    is a Linear viewed as a 32×4×4 feature map and then upsampled by transposed convolutions."""

    def __init__(self, latent: int = 64, action: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(32 * 4 * 4, latent))
        self.dynamics = nn.GRUCell(latent + action, latent)
        self.reward = nn.Sequential(nn.Linear(latent, 64), nn.ELU(), nn.Linear(64, 1))
        self.value = nn.Sequential(nn.Linear(latent, 64), nn.ELU(), nn.Linear(64, 1))
        self.decoder_fc = nn.Sequential(nn.Linear(latent, 32 * 4 * 4), nn.ReLU())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(32, 24, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(24, 3, 4, 2, 1))

    def forward(self, image: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.encoder(image)
        z = self.dynamics(torch.cat([z, action], dim=1), z)
        frame = self.decoder(self.decoder_fc(z).view(-1, 32, 4, 4))
        return frame, self.reward(z), self.value(z)


class ActorCritic(nn.Module):
    """A shared trunk feeding a policy head and a critic head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(24, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh())
        self.policy = nn.Sequential(nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 6))
        self.critic = nn.Sequential(nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.policy(h), self.critic(h)


class VAE(nn.Module):
    """Conv encoder to a mean and a log-variance, reparameterised (deterministically: the mean), conv decoder."""

    def __init__(self, latent: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                     nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten())
        self.mean = nn.Linear(64 * 8 * 8, latent)
        self.logvar = nn.Linear(64 * 8 * 8, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, 64 * 8 * 8), nn.ReLU(), nn.Unflatten(1, (64, 8, 8)),
                                     nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mean, logvar = self.mean(h), self.logvar(h)
        return self.decoder(mean), mean, logvar


class UNet(nn.Module):
    """Two down stages, a bottleneck, two up stages that concatenate the skip connections, GroupNorm throughout."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU())

        self.down1, self.down2 = block(3, 16), block(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = block(32, 64)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, 2)
        self.dec2 = block(64, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.dec1 = block(32, 16)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottleneck(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.head(u1)


class Siamese(nn.Module):
    """One embedding network applied to two inputs (a module called twice), compared by a small head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 64))
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.abs(self.embed(a) - self.embed(b)))


class LSTMPolicy(nn.Module):
    """An observation encoder, an LSTM over time, and an action head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(12, 64), nn.ReLU())
        self.memory = nn.LSTM(64, 48, batch_first=True)
        self.policy = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h, _ = self.memory(self.encoder(obs))
        return self.policy(h[:, -1])


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build().eval()


def _inputs(*shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.rand(*s, generator=generator) for s in shapes)


def _library_model(make: Callable[[], nn.Module]) -> Callable[[], Built]:
    """A network built by its library's own constructor on a 64x64 image. No output layers are named: the validation
    must find the classifier (its cut changes the output shape) on its own."""
    return lambda: (_seeded(make), _inputs((1, 3, 64, 64)), None, ())


def torchvision_model(name: str, **kwargs: object) -> Callable[[], Built]:
    """A torchvision classifier as users build it (no weights here), 10 classes."""
    def make() -> nn.Module:
        import torchvision
        return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
    return _library_model(make)


def timm_model(name: str, **kwargs: object) -> Callable[[], Built]:
    """``timm.create_model(name, pretrained=False)``, 10 classes."""
    def make() -> nn.Module:
        import timm
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return _library_model(make)


def ultralytics_model(config: str) -> Callable[[], Built]:
    """An ultralytics detector built from its own yaml (random init: no weights are downloaded). A test-only
    dependency (AGPL): never imported by edgeprune itself."""
    def make() -> nn.Module:
        from ultralytics import YOLO
        return YOLO(config).model
    return _library_model(make)


MODELS: dict[str, Callable[[], Built]] = {
    "world-model": lambda: (_seeded(WorldModel), _inputs((2, 3, 16, 16), (2, 4)), None,
                            ("reward.2", "value.2", "decoder.2")),
    "actor-critic": lambda: (_seeded(ActorCritic), _inputs((4, 24)), None, ("policy.2", "critic.2")),
    "vae": lambda: (_seeded(VAE), _inputs((2, 1, 32, 32)), {"encoder": ["encoder", "mean", "logvar"],
                                                            "decoder": ["decoder"]}, ("decoder.5",)),
    "unet": lambda: (_seeded(UNet), _inputs((1, 3, 32, 32)),
                     {"encoder": ["down1", "down2", "bottleneck"], "decoder": ["up2", "dec2", "up1", "dec1", "head"]},
                     ("head",)),
    "siamese": lambda: (_seeded(Siamese), _inputs((2, 1, 32, 32), (2, 1, 32, 32)), None, ("head.2",)),
    "lstm-policy": lambda: (_seeded(LSTMPolicy), _inputs((2, 5, 12)), None, ("policy.2",)),
    "torchvision resnet50": torchvision_model("resnet50"),
    "torchvision mobilenet_v2": torchvision_model("mobilenet_v2"),
    "torchvision mobilenet_v3_small": torchvision_model("mobilenet_v3_small"),
    "torchvision efficientnet_b0": torchvision_model("efficientnet_b0"),
    "torchvision regnet_y_400mf": torchvision_model("regnet_y_400mf"),
    "torchvision convnext_tiny": torchvision_model("convnext_tiny"),
    "torchvision vit_b_16": torchvision_model("vit_b_16", image_size=64),
    "timm resnet26d": timm_model("resnet26d"),
    "timm mobilenetv3_small_100": timm_model("mobilenetv3_small_100"),
    "timm convnext_atto": timm_model("convnext_atto"),
    "timm deit_tiny_patch16_224": timm_model("deit_tiny_patch16_224", img_size=64),
    "timm regnetx_002": timm_model("regnetx_002"),
    "timm ghostnet_100": timm_model("ghostnet_100"),
    "timm mobilevit_xxs": timm_model("mobilevit_xxs"),
    "ultralytics yolov8n": ultralytics_model("yolov8n.yaml"),
}
#: What the test suite checks itself (the rest take 20-70 s each on 2 cores: bench/conformance.py runs every row and
#: writes the README table, which the suite checks row by row for the ones it ran)
IN_TESTS = ("world-model", "actor-critic", "vae", "unet", "siamese", "lstm-policy", "torchvision mobilenet_v3_small",
            "timm convnext_atto", "ultralytics yolov8n")
#: The rows whose latency-planned prune the test suite runs too (each measures a cost model: 15-30 s for these)
LATENCY_IN_TESTS = ("world-model", "unet", "lstm-policy")
#: Architectures tried and left out of the table, with why
NOT_COVERED = {"torchvision swin_t": "Torch-Pruning's dependency tracing (shape inference) did not finish in 15 min "
                                    "at 64x64 on this machine",
               "ultralytics yolo11n": "Torch-Pruning's grouping (`get_all_groups`, in the flatten index mapping of its "
                                      "C2PSA attention block) had not finished after 8 min at 64x64 on this machine"}


# -- the check every row of the suite runs ---------------------------------------------------------------------------
GRANULE = 8
RATIO = 0.3
#: The latency-planned prune aims the knapsack at this share of the dense model's predicted latency
LATENCY = 0.7


@dataclass(frozen=True)
class Row:
    """One network through the pipeline: its groups, the ones frozen with why, a 30 % magnitude prune and a
    latency-planned one (None where not run), each a model whose outputs keep their shapes and whose ONNX export
    matches PyTorch (``check`` raises otherwise)."""

    name: str
    params: int
    groups: int
    flows: int
    frozen: dict[str, str]
    boundaries: tuple[str, ...]
    """Layers traced as boundaries (recurrent cells Torch-Pruning cannot group)."""
    pruned_params: int
    outputs_kept: bool
    planned_kept: bool | None
    """The latency-planned prune's outputs keep their shapes (None: not run)."""

    def cells(self) -> list[str]:
        by_reason: dict[str, list[str]] = {}
        for key, reason in self.frozen.items():
            by_reason.setdefault(_short(reason), []).append(f"`{key}`")
        frozen = "; ".join(f"{', '.join(keys[:3])}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''} ({why})"
                           for why, keys in by_reason.items())
        return [self.name, f"{self.params:,}", f"{self.groups} ({self.flows} flow)", frozen or "none",
                ", ".join(f"`{b}`" for b in self.boundaries) or "none",
                f"{1 - self.pruned_params / self.params:.0%} fewer parameters", _mark(self.outputs_kept),
                "not run" if self.planned_kept is None else _mark(self.planned_kept), "✓"]


HEADER = ["network", "parameters", "groups", "frozen (why)", "boundaries", "30 % magnitude prune", "outputs keep shape",
          f"latency-planned prune to {LATENCY}× (outputs keep shape)", "ONNX matches PyTorch"]


def check(name: str, folder: Path, latency: bool = True) -> Row:
    """Trace, validate, prune 30 % of every group by magnitude (flows jointly) and, with ``latency``, plan a prune
    with the knapsack on the measured cost model (ONNX Runtime on this CPU, few timed runs, layer tables shared in
    ``folder``); run each, export and check on ONNX Runtime; raises whatever breaks (the suite's failure)."""
    from edgeprune.artifact.export import flat_outputs
    from edgeprune.prune.graph import ComponentGraph
    from edgeprune.prune.importance import MagnitudeImportance
    from edgeprune.prune.plan import Plan, cut_to_counts, uniform_counts

    model, inputs, components, outputs = MODELS[name]()
    dense = ComponentGraph(model, inputs, components, outputs)
    dense.validate(inputs, GRANULE)
    plan = Plan.dense(name, dense)
    pruned = dense.fork()
    cut_to_counts(pruned, plan, uniform_counts(plan, RATIO, GRANULE, "joint"), MagnitudeImportance("joint"))
    planned = _latency_planned(name, dense, inputs, folder) if latency else None
    with torch.no_grad():
        shapes = [t.shape for t in flat_outputs(model(*inputs))]
    return Row(name, _params(model), len(dense.groups), sum(g.kind == "flow" for g in dense.groups.values()),
               dict(dense.frozen), tuple(dense.opaque), _params(pruned.model),
               _verified(pruned.model, shapes, inputs, folder / f"{name}.onnx"),
               None if planned is None else _verified(planned, shapes, inputs, folder / f"{name}-planned.onnx"))


def _latency_planned(name: str, dense: ComponentGraph, inputs: tuple[torch.Tensor, ...], folder: Path) -> nn.Module:
    """The knapsack's model at :data:`LATENCY` of the dense model's predicted latency, on a cost model measured here
    (the dense graph is left as it is)."""
    from edgeprune.core.targets import load_target
    from edgeprune.core.task import Task
    from edgeprune.measure.store import ProfileStore, profile_task
    from edgeprune.planners.base import LatencyTarget, StepContext
    from edgeprune.planners.knapsack import KnapsackPlanner
    from edgeprune.prune.importance import MagnitudeImportance
    from edgeprune.prune.plan import Plan
    from edgeprune.runtimes import get_runtime

    cpu = load_target("cpu")
    target = cpu.model_copy(update={"measure": cpu.measure.model_copy(update={"runs": 50, "warmup": 5, "repeats": 3,
                                                                               "profile_runs": 10})})
    task = Task(name=name.replace(" ", "-"), build=lambda: dense.model, example_inputs=lambda: inputs,
                evaluate=lambda _: {}, metric="none", default_metric_budget="none>=0",
                output_layers=dense.output_layers, components=dense.components)
    cost = profile_task(task, target, get_runtime(target), inputs, dense, ProfileStore(folder / "profiles"),
                        cost_model=True).cost
    assert cost is not None
    context = StepContext(task=task, graph=dense, plan=Plan.dense(name, dense), inputs=inputs, granule=GRANULE,
                          importance=MagnitudeImportance("joint"), flow_policy="joint", cost=cost)
    return KnapsackPlanner().propose(context, LatencyTarget(LATENCY * cost.predict_ms({}), best_effort=True)).model


def _verified(pruned: nn.Module, shapes: list[torch.Size], inputs: tuple[torch.Tensor, ...], path: Path) -> bool:
    """Whether the pruned model's outputs keep the dense model's ``shapes``; raises when its ONNX export does not
    match it on ONNX Runtime."""
    from edgeprune.artifact.export import check_export, export_onnx, flat_outputs
    from edgeprune.core.targets import load_target
    from edgeprune.runtimes import get_runtime

    with torch.no_grad():
        kept = [t.shape for t in flat_outputs(pruned(*inputs))] == shapes
    check_export(pruned, inputs, export_onnx(pruned, inputs, path), get_runtime(load_target("cpu")))
    return kept


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _short(reason: str) -> str:
    """A frozen group's reason without its details: 'cutting 8 of its 16 channels changes the model's output shapes
    from …' is 'changes the model's output shapes'."""
    return reason.removeprefix("frozen: ").split(" (")[0].split(" from ")[0].split(" channels ", 1)[-1]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
