"""The built-in ``pendulum-agent`` task: shipped checkpoint, planning forward, evaluation, fine-tuning, export, pruning."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgeprune.core.budgets import MetricBudget
from edgeprune.core.task import Task, load_task
from edgeprune.prune.importance import ApplicationImportance
from edgeprune.zoo.pendulum import CHECKPOINT, PendulumAgent, evaluate

COMPONENTS = ["encoder", "dynamics", "reward", "policy", "q1", "q2"]


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("pendulum-agent")


@pytest.fixture(scope="module")
def dense_metrics(task: Task) -> dict[str, float]:
    return task.evaluate(task.build())


def _component_sets(model: nn.Module, inputs: tuple[torch.Tensor, ...], ignored: list[nn.Module]) -> list[set[str]]:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    names = {module: name for name, module in model.named_modules()}
    groups = dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Linear, nn.LayerNorm])
    return [{names[dep.target.module].split(".")[0] for dep, _ in g if dep.target.module in names} for g in groups]


def test_checkpoint_loads_and_builds_fresh_models(task: Task) -> None:
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(state) == set(PendulumAgent().state_dict())
    assert CHECKPOINT.stat().st_size < 2_000_000
    info = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    assert info["env"] == "Pendulum-v1" and info["final_return"] > -200
    first, second = task.build(), task.build()
    assert first is not second and not first.training
    assert [name for name, _ in first.named_children()] == COMPONENTS
    for name in task.output_layers:
        layer = first.get_submodule(name)
        assert isinstance(layer, nn.Linear) and layer.out_features == 1


def test_forward_scores_candidates(task: Task) -> None:
    model = task.build()
    obs, actions = task.example_inputs()
    assert obs.shape == (64, 3) and actions.shape == (64, 3, 1)
    assert all(torch.equal(a, b) for a, b in zip(task.example_inputs(), (obs, actions), strict=True))
    with torch.no_grad():
        out = model(obs, actions)
        assert out.shape == (64, 2) and torch.isfinite(out).all()
        assert out[:, 1].abs().max() <= 2.0 and torch.allclose(out[:, 1], out[0, 1].expand(64))  # one state: one pi(z0)
        assert out[:, 0].std() > 0.1  # candidates are told apart
        # column 0 is sum_t gamma^t r_t + gamma^H min-Q at pi(z_H), along the latent rollout through dynamics
        z, value = model.encoder(obs), torch.zeros(64, 1)
        for t in range(actions.shape[1]):
            za = torch.cat([z, actions[:, t]], -1)
            value += model.gamma**t * model.reward(za)
            z = model.dynamics(za)
        value += model.gamma ** actions.shape[1] * model.q_min(z, model.pi(z))
        torch.testing.assert_close(out[:, :1], value)


def test_evaluate_is_deterministic_and_budget_separates(task: Task, dense_metrics: dict[str, float]) -> None:
    assert task.evaluate(task.build()) == dense_metrics
    budget = MetricBudget.parse(task.default_metric_budget)
    assert budget.metric == task.metric == "return" and not budget.relative
    assert dense_metrics["return"] >= budget.value + 40  # the dense agent clears it with margin
    torch.manual_seed(0)
    untrained = evaluate(PendulumAgent().eval(), seeds=(0, 1))  # two episodes are enough to fail by far
    assert untrained["return"] < -1000 and not budget.holds(untrained["return"], dense_metrics["return"])


def test_finetune_is_deterministic_and_keeps_loss_low(task: Task) -> None:
    assert task.loss is not None and task.batches is not None and task.finetune is not None
    batch = next(task.batches(7))
    again = next(task.batches(7))
    assert torch.equal(batch.obs, again.obs) and torch.equal(batch.actions, again.actions)
    model, twin = task.build(), task.build()
    before = task.loss(model, batch).item()
    assert task.loss_terms is not None
    terms = task.loss_terms(model, batch)  # the loss is the sum of its named terms, each a different objective
    assert list(terms) == ["consistency", "reward", "value", "policy"]
    assert sum(t.item() for t in terms.values()) == pytest.approx(before, rel=1e-5)
    assert ApplicationImportance.for_task(task).loss is task.loss_terms  # what the loop and the benches rank on
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    task.finetune(model, 20)
    task.finetune(twin, 20)
    after = task.loss(model, batch).item()
    assert np.isfinite(before) and np.isfinite(after)
    assert after <= before + 0.1 * abs(before) + 0.1
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, weights[k])}
    assert changed == set(COMPONENTS)  # the surrogate reaches every component
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_onnx_export_matches_torch(task: Task, tmp_path: Path) -> None:
    model, inputs = task.build(), task.example_inputs()
    path = tmp_path / "agent.onnx"
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=False)
        expected = model(*inputs).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs, strict=True)}
    (got,) = session.run(None, feeds)
    # 1e-4 relative to the output's scale: values are ~1e2 (returns), where float32 rounding alone is ~1e-5
    scale = max(1.0, float(np.abs(expected).max()))
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4 * scale
    # every component's nodes keep their module scope, which profiling needs to attribute time
    scopes = {p.value for node in onnx.load(str(path)).graph.node for p in node.metadata_props
              if p.key == "pkg.torch.onnx.name_scopes"}
    for component in COMPONENTS:
        assert any(f"'{component}.6'" in s or f'"{component}.6"' in s for s in scopes), component


def test_dependency_groups_and_pruning(task: Task) -> None:
    """The shared latent is one flow group spanning encoder, dynamics, reward, policy and both critics.

    Traced through the H-step rollout, the encoder's and the dynamics' output channels are coupled (the latent is
    fed back into dynamics), so pruning the latent keeps the rollout consistent.
    """
    model, inputs = task.build(), task.example_inputs()
    ignored = [model.get_submodule(name) for name in task.output_layers]
    groups = _component_sets(model, inputs, ignored)
    assert len(groups) == 13  # two hidden groups per component, plus the latent
    assert [g for g in groups if len(g) > 1] == [set(COMPONENTS)]

    # latent channels that carry zero: pruning them must change nothing (checks the concat with the action)
    with torch.no_grad():
        model.encoder[6].weight[:16] = 0
        model.encoder[6].bias[:16] = 0
        model.dynamics[6].weight[:16] = 0
        model.dynamics[6].bias[:16] = 0
        expected = model(*inputs)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    dg.get_pruning_group(model.encoder[6], tp.prune_linear_out_channels, idxs=list(range(16))).prune()
    assert model.dynamics[0].in_features == 48 + 1 and model.q2[0].in_features == 48 + 1
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), expected, rtol=1e-5, atol=1e-4)

    # 30 % of the hidden channels of a few intra-component groups
    for name in ("encoder.0", "dynamics.3", "reward.0", "policy.3", "q1.0"):
        layer = model.get_submodule(name)
        idxs = list(range(0, layer.out_features, 3))[: int(0.3 * layer.out_features)]
        dg.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=idxs).prune()
        assert layer.out_features == 128 - len(idxs)
    with torch.no_grad():
        assert model(*inputs).shape == (64, 2)
    metrics = evaluate(model, seeds=(0, 1, 2))  # task.evaluate's code path, on fewer episodes to keep this quick
    assert np.isfinite(metrics["return"]) and -1700 < metrics["return"] <= 0
