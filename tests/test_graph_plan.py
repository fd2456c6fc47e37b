"""Dependency groups by component, and plans that replay bit-for-bit on a fresh model."""

import copy
from pathlib import Path

import pytest
import torch

from edgeprune.prune.graph import ComponentGraph, GraphError
from edgeprune.prune.importance import (
    ApplicationImportance,
    application_scores,
    balanced,
    component_importance,
    group_scores,
    mask_sensitivity,
    sensitivity_scales,
)
from edgeprune.prune.plan import Plan, PlanError, keep_count, prune_uniform

OUT = ("decoder.3",)


def test_groups_are_classified_by_component(two_part, image) -> None:
    graph = ComponentGraph(two_part, image, output_layers=OUT)
    assert graph.components == {"encoder": ["encoder"], "decoder": ["decoder"]}
    kinds = {key: (g.kind, g.producers, g.consumers, g.width) for key, g in graph.groups.items()}
    assert kinds == {
        "encoder.0": ("intra", ("encoder",), ("encoder",), 32),
        "encoder.3": ("intra", ("encoder",), ("encoder",), 64),
        "encoder.5": ("flow", ("encoder",), ("decoder",), 16),
        "decoder.1": ("intra", ("decoder",), ("decoder",), 48),
    }
    assert "encoder.1" in graph.groups["encoder.0"].modules  # the BatchNorm goes with its conv


def test_unknown_output_layer_is_an_error(two_part, image) -> None:
    with pytest.raises(GraphError, match="output layers not in the model: decoder.9"):
        ComponentGraph(two_part, image, output_layers=("decoder.9",))


def _prune_twice(model, image) -> tuple[torch.nn.Module, Plan]:
    """Two rounds of pruning on one object, as the tune loop does, tracking dense indices in a plan."""
    plan = Plan.dense("t", ComponentGraph(copy.deepcopy(model), image, output_layers=OUT))
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        graph = ComponentGraph(model, image, output_layers=OUT)
        for key in ("encoder.0", "encoder.3", "decoder.1"):
            width = graph.groups[key].width
            keep = sorted(torch.randperm(width, generator=gen)[: width * 3 // 4].tolist())
            graph.prune(key, [i for i in range(width) if i not in keep])
            plan = plan.narrow(key, keep)
    return model, plan


def test_plan_replays_bit_for_bit(tmp_path: Path, two_part, image) -> None:
    dense = copy.deepcopy(two_part)
    pruned, plan = _prune_twice(two_part, image)
    assert plan.kept("encoder.3") == 36 and plan.kept("encoder.5") == 16  # 64 -> 48 -> 36; the flow group untouched
    plan.save(tmp_path / "plan.json")
    replayed = Plan.load(tmp_path / "plan.json").apply(dense, image, output_layers=OUT)
    a, b = pruned.state_dict(), replayed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(pruned(*image), replayed(*image))
    assert plan.channel_sparsity() == pytest.approx(1 - (32 * 9 // 16 + 36 + 16 + 48 * 9 // 16) / (32 + 64 + 16 + 48), abs=0.01)


def test_plan_that_does_not_fit_is_an_error(tmp_path: Path, two_part, image) -> None:
    _, plan = _prune_twice(copy.deepcopy(two_part), image)
    wrong = plan.model_copy(update={"groups": {**plan.groups, "encoder.3": plan.groups["encoder.3"].model_copy(update={"width": 65})}})
    with pytest.raises(PlanError, match="width 65, the model's has 64"):
        wrong.apply(copy.deepcopy(two_part), image, output_layers=OUT)
    (tmp_path / "bad.json").write_text('{"format": "edgeprune.plan/1", "task": "t", "groups": {"a": {"width": 4, "keep": [3, 1]}}}')
    with pytest.raises(PlanError, match="cannot read plan"):
        Plan.load(tmp_path / "bad.json")


def test_silent_torch_pruning_fallbacks_are_reported(image) -> None:
    class Scale(torch.nn.Module):
        """A bare learnable parameter: Torch-Pruning guesses which dimension to prune."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(1, channels, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), Scale(16), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 3)).eval()
    graph = ComponentGraph(model, image, output_layers=("3",))
    assert graph.skipped == {"3": "output layer: its width is the model's interface"}
    assert any("Unwrapped parameters detected: ['1.gain']" in note for note in graph.notes)


@pytest.mark.parametrize(("width", "ratio", "granule", "kept"),
                         [(64, 0.3, 8, 48), (64, 0.0, 8, 64), (64, 0.99, 8, 8), (8, 0.5, 8, 8), (100, 0.5, 8, 48),
                          (128, 0.25, 32, 96)])
def test_keep_count_rounds_to_the_granule(width: int, ratio: float, granule: int, kept: int) -> None:
    assert keep_count(width, ratio, granule) == kept


def test_protect_keeps_interfaces_and_joint_prunes_them_everywhere(two_part, image) -> None:
    plan = Plan.dense("t", ComponentGraph(copy.deepcopy(two_part), image, output_layers=OUT))
    with torch.no_grad():
        dense_out = two_part(*image)
    protected, p_plan = prune_uniform(two_part, plan, 0.5, image, 8, "protect", output_layers=OUT)
    assert protected.encoder[5].out_channels == protected.decoder[1].in_channels == 16
    assert protected.encoder[3].out_channels == 32 and protected.decoder[1].out_channels == 24
    joint, j_plan = prune_uniform(two_part, plan, 0.5, image, 8, "joint", output_layers=OUT)
    assert joint.encoder[5].out_channels == joint.decoder[1].in_channels == 8  # one cut, on both sides
    assert j_plan.kept("encoder.5") == 8 and p_plan.kept("encoder.5") == 16
    with torch.no_grad():
        for model in (protected, joint):
            assert model(*image).shape == dense_out.shape
    replayed = j_plan.apply(copy.deepcopy(two_part), image, output_layers=OUT)
    with torch.no_grad():
        assert torch.equal(replayed(*image), joint(*image))
    assert two_part.encoder[5].out_channels == 16, "prune_uniform must not touch its input model"


def test_joint_importance_listens_to_every_component(two_part, image) -> None:
    """A channel the decoder ignores (zero input weights) but the encoder values is kept under ``joint``
    only if no component calls it unimportant: min over normalised scores."""
    graph = ComponentGraph(two_part, image, output_layers=OUT)
    with torch.no_grad():
        two_part.decoder[1].weight[3].zero_()  # ConvTranspose weight is [in, out, k, k]: decoder ignores channel 3
    per = component_importance(graph, "encoder.5")
    assert set(per) == {"encoder", "decoder"} and per["decoder"][3] == 0 and per["encoder"][3] > 0
    assert int(group_scores(graph, "encoder.5", "joint").argmin()) == 3
    assert group_scores(graph, "encoder.5", "owner")[3] > 0  # the producer alone still values it


def test_application_importance_orders_channels_by_the_mix_and_groups_by_their_sensitivity(two_part, image) -> None:
    """Inside a group the mix of magnitude and sensitivity orders the channels; across groups the sensitivity's
    own scale (the loss's units) decides, so a group the task needs ten times more is worth ten times more."""
    graph = ComponentGraph(two_part, image, output_layers=OUT)
    sensitivity = torch.rand(32, generator=torch.Generator().manual_seed(0)) + 0.1
    scales = sensitivity_scales({"encoder.0": sensitivity, "decoder.1": 10 * sensitivity})
    assert scales == pytest.approx({"encoder.0": 2 / 11, "decoder.1": 20 / 11})
    assert sensitivity_scales({"encoder.0": torch.zeros(32), "decoder.1": torch.zeros(48)}) == {
        "encoder.0": 1.0, "decoder.1": 1.0}  # a loss at its minimum says nothing about groups
    scores = application_scores(graph, "encoder.0", sensitivity, scale=scales["encoder.0"])
    magnitude = group_scores(graph, "encoder.0")
    mixed = 0.5 * magnitude / magnitude.mean() + 0.5 * sensitivity / sensitivity.mean()
    assert torch.allclose(scores, mixed * 2 / 11)
    assert float(application_scores(graph, "encoder.0", None).mean()) == pytest.approx(1.0)  # no loss: magnitude


def test_each_loss_term_is_weighed_on_its_own_scale(two_part, image) -> None:
    """A loss of several objectives: a group only a small term reaches keeps its voice, and how the terms are
    weighted for training does not change what a group is worth; a one-term loss keeps the loss's units."""
    graph = ComponentGraph(two_part, image, output_layers=OUT)
    keys = list(graph.groups)

    def terms(weight: float):
        def loss(model, batch):  # "code" reaches the encoder only; "image" every group
            return {"code": weight * model.encoder(batch).pow(2).mean(), "image": model(batch).pow(2).mean()}
        return loss

    def scales(loss) -> dict[str, float]:
        return sensitivity_scales(balanced(mask_sensitivity(graph, keys, loss, iter(image * 4), 4)))

    heavy, light = scales(terms(1000.0)), scales(terms(1.0))
    assert heavy == pytest.approx(light, rel=1e-4)  # the terms' weights cancel
    summed = scales(lambda m, b: sum(terms(1000.0)(m, b).values()))
    assert summed["decoder.1"] < 0.01 and heavy["decoder.1"] > 0.5  # drowned in the sum; heard on its own scale
    per_term = mask_sensitivity(graph, keys, terms(1.0), iter(image * 4), 4)
    assert float(per_term["code"]["decoder.1"].abs().sum()) == 0.0 and float(per_term["image"]["decoder.1"].sum()) > 0
    one = mask_sensitivity(graph, keys, lambda m, b: m(b).pow(2).mean(), iter(image * 4), 4)
    assert list(one) == ["loss"]
    assert sensitivity_scales(balanced(one)) == pytest.approx(sensitivity_scales(one["loss"]), rel=1e-5)
    importance = ApplicationImportance("t", terms(1000.0), lambda seed: iter(image * 8))
    assert importance.comparable and set(importance.scores(graph, keys)) == set(keys)


def test_joint_mean_is_the_average_of_normalised_component_scores(two_part, image) -> None:
    graph = ComponentGraph(two_part, image, output_layers=OUT)
    per = component_importance(graph, "encoder.5")
    expected = (per["encoder"] / per["encoder"].mean() + per["decoder"] / per["decoder"].mean()) / 2
    assert torch.allclose(group_scores(graph, "encoder.5", "joint", "mean"), expected)
    assert torch.allclose(group_scores(graph, "encoder.5", "joint", "min"),
                          torch.minimum(per["encoder"] / per["encoder"].mean(), per["decoder"] / per["decoder"].mean()))


def test_a_group_with_a_broadcast_one_channel_branch_is_reported_not_pruned(image) -> None:
    class Gated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(1, 32, 3, padding=1)
            self.gate = torch.nn.Conv2d(1, 1, 3, padding=1)  # one channel, broadcast over 32
            self.head = torch.nn.Conv2d(32, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x) * torch.sigmoid(self.gate(x)))

    graph = ComponentGraph(Gated().eval(), image, output_layers=("head",))
    assert graph.groups == {}
    assert graph.skipped == {
        "features": "group cannot be pruned: gate (narrower) is broadcast into its 32 channels",
        "head": "output layer: its width is the model's interface",
    }
