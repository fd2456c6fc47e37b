"""Component-aware groups on multi-component models: classification, protect vs joint, replay."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.plan import Plan, PlanError, prune_uniform


class SkipAutoencoder(nn.Module):
    """Encoder–decoder whose decoder concatenates an encoder feature map (a skip across components)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({
            "stem": nn.Conv2d(1, 32, 3, padding=1),
            "down": nn.Conv2d(32, 64, 3, stride=2, padding=1),
            "hidden": nn.Conv2d(64, 64, 3, padding=1),
            "latent": nn.Conv2d(64, 16, 3, padding=1),
        })
        self.decoder = nn.ModuleDict({
            "up": nn.ConvTranspose2d(16, 32, 4, stride=2, padding=1),
            "fuse": nn.Conv2d(64, 32, 3, padding=1),
            "out": nn.Conv2d(32, 1, 3, padding=1),
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, d = self.encoder, self.decoder
        skip = torch.relu(e["stem"](x))
        z = e["latent"](torch.relu(e["hidden"](torch.relu(e["down"](skip)))))
        up = torch.relu(d["up"](z))
        return torch.sigmoid(d["out"](torch.relu(d["fuse"](torch.cat([up, skip], dim=1)))))


class ActorCritic(nn.Module):
    """A shared trunk feeding an actor and a critic head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.actor = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2), nn.Tanh())
        self.critic = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.actor(h), self.critic(h)


def _kinds(graph: ComponentGraph) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return {k: (g.kind, g.producers, g.consumers) for k, g in graph.groups.items()}


def test_skip_connection_across_components_is_a_flow() -> None:
    torch.manual_seed(0)
    model, x = SkipAutoencoder().eval(), (torch.rand(1, 1, 16, 16),)
    graph = ComponentGraph(model, x, output_layers=("decoder.out",))
    assert _kinds(graph) == {
        "encoder.stem": ("flow", ("encoder",), ("decoder", "encoder")),  # the skip: read by encoder.down and decoder.fuse
        "encoder.down": ("intra", ("encoder",), ("encoder",)),
        "encoder.hidden": ("intra", ("encoder",), ("encoder",)),
        "encoder.latent": ("flow", ("encoder",), ("decoder",)),
        "decoder.up": ("intra", ("decoder",), ("decoder",)),
        "decoder.fuse": ("intra", ("decoder",), ("decoder",)),
    }
    plan = Plan.dense("skip", graph)
    with torch.no_grad():
        shape = model(*x).shape
    protected, _ = prune_uniform(model, plan, 0.5, x, 8, "protect", output_layers=("decoder.out",))
    assert protected.encoder["stem"].out_channels == 32 and protected.decoder["fuse"].in_channels == 16 + 32
    joint, j_plan = prune_uniform(model, plan, 0.5, x, 8, "joint", output_layers=("decoder.out",))
    # the skip is cut once and consistently: the stem, the encoder's next conv and the decoder's concat input
    assert joint.encoder["stem"].out_channels == joint.encoder["down"].in_channels == 16
    assert joint.decoder["fuse"].in_channels == 16 + 16 and joint.decoder["up"].in_channels == 8
    with torch.no_grad():
        assert protected(*x).shape == joint(*x).shape == shape
        assert torch.equal(j_plan.apply(copy.deepcopy(model), x, output_layers=("decoder.out",))(*x), joint(*x))


def test_shared_trunk_feeds_both_heads_through_one_flow() -> None:
    torch.manual_seed(0)
    model, obs = ActorCritic().eval(), (torch.randn(4, 8),)
    outputs = ("actor.2", "critic.2")
    graph = ComponentGraph(model, obs, output_layers=outputs)
    assert _kinds(graph) == {
        "trunk.0": ("intra", ("trunk",), ("trunk",)),
        "trunk.2": ("flow", ("trunk",), ("actor", "critic")),
        "actor.0": ("intra", ("actor",), ("actor",)),
        "critic.0": ("intra", ("critic",), ("critic",)),
    }
    plan = Plan.dense("ac", graph)
    protected, p_plan = prune_uniform(model, plan, 0.5, obs, 8, "protect", output_layers=outputs)
    assert protected.trunk[2].out_features == protected.actor[0].in_features == protected.critic[0].in_features == 64
    joint, j_plan = prune_uniform(model, plan, 0.5, obs, 8, "joint", output_layers=outputs)
    assert joint.trunk[2].out_features == joint.actor[0].in_features == joint.critic[0].in_features == 32
    with torch.no_grad():
        for pruned in (protected, joint):
            action, value = pruned(*obs)
            assert action.shape == (4, 2) and value.shape == (4, 1)
    assert p_plan.kept("trunk.0") == j_plan.kept("trunk.0") == 32


def test_declared_components_override_top_level_children() -> None:
    """Declaring the trunk part of the actor turns the trunk→actor interface into intra-actor channels."""
    model, obs = ActorCritic().eval(), (torch.randn(4, 8),)
    graph = ComponentGraph(model, obs, {"actor": ["trunk", "actor"], "critic": ["critic"]}, ("actor.2", "critic.2"))
    assert graph.groups["trunk.0"].kind == "intra" and graph.groups["trunk.0"].components == ("actor",)
    assert graph.groups["trunk.2"].producers == ("actor",) and graph.groups["trunk.2"].consumers == ("actor", "critic")


def test_per_component_ratio_caps_one_component() -> None:
    torch.manual_seed(0)
    model, obs = ActorCritic().eval(), (torch.randn(4, 8),)
    outputs = ("actor.2", "critic.2")
    plan = Plan.dense("ac", ComponentGraph(copy.deepcopy(model), obs, output_layers=outputs))
    pruned, capped = prune_uniform(model, plan, 0.5, obs, 8, "joint", {"critic": 0.0, "trunk": 0.25},
                                   output_layers=outputs)
    assert capped.kept("critic.0") == 64 and capped.kept("actor.0") == 32 and capped.kept("trunk.0") == 48
    assert capped.kept("trunk.2") == 64  # the trunk→actor/critic flow takes the critic's cap (0)
    assert pruned.critic[0].out_features == 64 and pruned.actor[0].out_features == 32
    with torch.no_grad():
        assert pruned(*obs)[1].shape == (4, 1)
    with pytest.raises(PlanError, match=r"unknown components \(or ones with no prunable group\): policy"):
        prune_uniform(model, plan, 0.5, obs, 8, "joint", {"policy": 0.1}, output_layers=outputs)
