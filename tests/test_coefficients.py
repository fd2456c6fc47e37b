"""Soft coefficients: grid and gradient land inside rho ± epsilon, respect the policy, and give valid plans."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.coefficients import ChoiceInfo, CoefficientError, GradientSettings, GridSettings, choose, policy_sparsity
from edgeprune.graph import ComponentGraph
from edgeprune.masks import channel_masks
from edgeprune.plan import Plan, keep_count, prune_uniform
from edgeprune.task import Task, load_task

OUT = ("decoder.3",)
GRANULE = 4  # TwoPart has 144 prunable channels: one granule of 4 moves the sparsity by 0.028 < 2 epsilon


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _distil_task(reference: nn.Module, with_loss: bool = True) -> Task:
    """A cheap task on TwoPart: match the dense model's outputs (metric: MSE, lower is better)."""
    reference = copy.deepcopy(reference).eval()
    x_eval = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y_eval = reference(x_eval)

    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(F.mse_loss(model(x_eval), y_eval))}

    def batches(seed: int) -> Iterator[object]:
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield torch.rand(8, 1, 32, 32, generator=generator)

    def loss(model: nn.Module, batch: object) -> torch.Tensor:
        assert isinstance(batch, torch.Tensor)
        with torch.no_grad():
            target = reference(batch)
        return F.mse_loss(model(batch), target)

    return Task(name="two-part", build=lambda: copy.deepcopy(reference), example_inputs=lambda: (x_eval[:1],),
                evaluate=evaluate, metric="mse", default_metric_budget="mse<=1", output_layers=OUT,
                loss=loss if with_loss else None, batches=batches if with_loss else None)


def _dense_plan(task: Task, model: nn.Module) -> Plan:
    return Plan.dense(task.name, ComponentGraph(copy.deepcopy(model), task.example_inputs(),
                                                components=task.components, output_layers=task.output_layers))


def _run(task: Task, model: nn.Module, plan: Plan, rho: float, strategy: str = "gradient",
         granule: int = GRANULE, **kwargs: object) -> tuple[nn.Module, Plan, ChoiceInfo]:
    kwargs.setdefault("gradient", GradientSettings(steps=20))
    return choose(strategy, task, model, plan, rho, inputs=task.example_inputs(), granule=granule,  # type: ignore[arg-type]
                  components=task.components, output_layers=task.output_layers, **kwargs)


def _same_outputs(task: Task, pruned: nn.Module, plan: Plan) -> None:
    """The plan replayed on a fresh dense model computes exactly what the returned pruned model computes."""
    fresh = plan.apply(task.build(), task.example_inputs(), components=task.components, output_layers=task.output_layers)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(*task.example_inputs()), pruned.eval()(*task.example_inputs()))


def _in_band(info: ChoiceInfo, plan: Plan, flow_policy: str = "protect") -> None:
    achieved = policy_sparsity(plan, flow_policy)  # type: ignore[arg-type]
    assert achieved == pytest.approx(info.sparsity)
    assert info.rho - info.epsilon - 1e-9 <= achieved <= info.rho + info.epsilon + 1e-9
    assert info.within_tolerance


# -- the real autoencoder: one gradient run and one small grid, shared by several checks --------------------------
@pytest.fixture(scope="module")
def digits() -> Task:
    task = load_task("digits-autoencoder")
    stream = task.batches
    assert stream is not None
    return dataclasses.replace(task, batches=lambda seed: (b[:16] for b in stream(seed)))  # 4x cheaper steps


@pytest.fixture(scope="module")
def digits_gradient(digits: Task) -> tuple[nn.Module, Plan, ChoiceInfo]:
    model = digits.build()
    return _run(digits, model, _dense_plan(digits, model), 0.5, granule=8, gradient=GradientSettings(steps=60))


def test_gradient_lands_in_the_band_lowers_its_objective_and_ends_binary(digits, digits_gradient) -> None:
    pruned, plan, info = digits_gradient
    _in_band(info, plan)
    trace = info.objective
    assert len(trace) == 60 and info.evaluations == 0
    first, last = sum(trace[:5]) / 5, sum(trace[-5:]) / 5
    assert last < 0.9 * first, f"objective did not go down: {first:.3f} -> {last:.3f}"
    assert info.masks_binary is True
    assert info.hard_objective == pytest.approx(last, rel=0.1)  # annealed to the cut the plan makes
    assert plan.kept("encoder.latent") == 4  # protect: the interface keeps its width
    for key, group in plan.pruned_groups.items():
        assert len(group.keep) % 8 == 0 and group.kind == "intra", key
    assert len({round(c, 3) for k, c in info.coefficients.items() if k != "encoder.latent"}) > 1  # not uniform
    _same_outputs(digits, pruned, plan)


def test_hard_masks_compute_what_the_pruned_model_computes(digits, digits_gradient) -> None:
    """Masks sit after the BatchNorm: a 0 there is a removed channel, so the gradient search sees the real cut."""
    pruned, plan, _ = digits_gradient
    dense = digits.build()
    graph = ComponentGraph(dense, digits.example_inputs(), output_layers=digits.output_layers)
    masks = {k: torch.zeros(g.width).index_fill_(0, torch.tensor(g.keep), 1.0) for k, g in plan.pruned_groups.items()}
    x = digits.batches(3).__next__()
    with torch.no_grad(), channel_masks(graph, masks):
        masked = dense(x)
    with torch.no_grad():
        assert torch.allclose(masked, pruned(x), atol=1e-5)


def test_grid_lands_in_the_band_within_its_evaluation_cap(digits) -> None:
    model = digits.build()
    pruned, plan, info = _run(digits, model, _dense_plan(digits, model), 0.5, "grid", granule=8,
                              grid=GridSettings(max_evals=4))
    _in_band(info, plan)
    assert info.evaluations == len(info.objective) == 4
    assert info.best_metric == max(info.objective) == pytest.approx(digits.evaluate(pruned)["psnr"])
    assert "magnitude + loss sensitivity" in info.importance
    _same_outputs(digits, pruned, plan)


def test_magnitude_is_prune_uniform(digits) -> None:
    model = digits.build()
    plan = _dense_plan(digits, model)
    pruned, new_plan, info = _run(digits, model, plan, 0.5, "magnitude", granule=8)
    reference, reference_plan = prune_uniform(model, plan, 0.5, digits.example_inputs(), 8,
                                              output_layers=digits.output_layers)
    assert new_plan == reference_plan
    a, b = pruned.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert info.evaluations == 0 and info.sparsity == pytest.approx(policy_sparsity(new_plan))


def test_pendulum_gradient_is_cheap_protects_the_latent_and_replays() -> None:
    """The cheap path only (no evaluate): a few gradient steps on the TD-MPC surrogate loss."""
    task = load_task("pendulum-agent")
    model = task.build()
    pruned, plan, info = _run(task, model, _dense_plan(task, model), 0.5, granule=8, importance_batches=2,
                              gradient=GradientSettings(steps=8))
    _in_band(info, plan)
    assert plan.kept("encoder.6") == 64 and info.masks_binary and info.evaluations == 0
    _same_outputs(task, pruned, plan)


# -- mechanics on a small synthetic task -------------------------------------------------------------------------
def test_component_caps_hold_for_grid_and_gradient(two_part) -> None:
    task = _distil_task(two_part)
    plan = _dense_plan(task, two_part)
    for strategy in ("grid", "gradient"):
        pruned, new_plan, info = _run(task, two_part, plan, 0.4, strategy, component_ratios={"decoder": 0.25})
        _in_band(info, new_plan)
        assert new_plan.kept("decoder.1") >= keep_count(48, 0.25, GRANULE), strategy
        _same_outputs(task, pruned, new_plan)


def test_joint_counts_the_flow_group_and_stays_valid(two_part) -> None:
    task = _distil_task(two_part)
    pruned, plan, info = _run(task, two_part, _dense_plan(task, two_part), 0.4, flow_policy="joint")
    assert policy_sparsity(plan, "joint") == pytest.approx(plan.channel_sparsity())  # nothing protected
    _in_band(info, plan, "joint")
    _same_outputs(task, pruned, plan)


def test_an_already_pruned_model_is_only_narrowed(two_part) -> None:
    task = _distil_task(two_part)
    dense_plan = _dense_plan(task, two_part)
    first, first_plan = prune_uniform(two_part, dense_plan, 0.25, task.example_inputs(), GRANULE, output_layers=OUT)
    pruned, plan, info = _run(task, first, first_plan, 0.5)
    _in_band(info, plan)
    for key, group in plan.groups.items():
        assert group.width == dense_plan.groups[key].width
        assert set(group.keep) <= set(first_plan.groups[key].keep), key  # never grows back
    _same_outputs(task, pruned, plan)


def test_same_seed_same_plan(two_part) -> None:
    task = _distil_task(two_part)
    plan = _dense_plan(task, two_part)
    assert _run(task, two_part, plan, 0.4)[1] == _run(task, two_part, plan, 0.4)[1]


def test_a_task_without_loss_falls_back_to_magnitude_for_grid_and_refuses_gradient(two_part) -> None:
    task = _distil_task(two_part, with_loss=False)
    plan = _dense_plan(task, two_part)
    _, new_plan, info = _run(task, two_part, plan, 0.4, "grid")
    _in_band(info, new_plan)
    assert info.importance == "magnitude" and any("has no loss" in n for n in info.notes)
    assert info.best_metric == min(info.objective)  # MSE: lower is better
    with pytest.raises(CoefficientError, match="'gradient' needs the task's differentiable loss"):
        _run(task, two_part, plan, 0.4, "gradient")


@pytest.mark.parametrize(("rho", "epsilon", "match"), [
    (0.0, 0.02, "rho must be in"), (1.0, 0.02, "rho must be in"), (-0.2, 0.02, "rho must be in"),
    (0.5, 0.0, "epsilon must be in"), (0.5, 0.7, "epsilon must be in"),
])
def test_bad_rho_or_epsilon_is_a_value_error(two_part, rho: float, epsilon: float, match: str) -> None:
    task = _distil_task(two_part)
    with pytest.raises(ValueError, match=match):
        _run(task, two_part, _dense_plan(task, two_part), rho, epsilon=epsilon)


def test_unknown_strategy_and_unreachable_band_are_value_errors(two_part) -> None:
    task = _distil_task(two_part)
    plan = _dense_plan(task, two_part)
    with pytest.raises(ValueError, match="unknown strategy 'random'"):
        _run(task, two_part, plan, 0.5, "random")
    with pytest.raises(CoefficientError, match=r"0.680..0.720 is unreachable: this model and plan allow 0.000..0.194"):
        _run(task, two_part, plan, 0.7, component_ratios={"encoder": 0.2, "decoder": 0.2})
