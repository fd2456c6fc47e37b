"""Soft coefficients: grid and gradient land inside rho ± epsilon, respect the policy, and give valid plans."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.task import Task, load_task
from edgeprune.measure.cost import CostModel, GroupAxis, LayerCost, granule_counts
from edgeprune.planners import (
    GradientSettings,
    GridSettings,
    LatencyTarget,
    PlannerError,
    Proposal,
    SparsityTarget,
    StepContext,
    get_planner,
    policy_sparsity,
)
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.importance import ApplicationImportance
from edgeprune.prune.masks import channel_masks
from edgeprune.prune.plan import Plan, keep_count, prune_uniform

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


FEW_STEPS, GRID = GradientSettings(steps=20), GridSettings()  # frozen: safe as defaults


def _context(task: Task, model: nn.Module, plan: Plan, granule: int = GRANULE, importance_batches: int = 8,
             flow_policy: str = "protect", **settings: object) -> StepContext:
    importance = ApplicationImportance.for_task(task, flow_policy,  # type: ignore[arg-type]
                                                n_batches=importance_batches)
    return StepContext.trace(task, model, plan, task.example_inputs(), granule=granule, importance=importance,
                             flow_policy=flow_policy, **settings)


def _run(task: Task, model: nn.Module, plan: Plan, rho: float, strategy: str = "gradient",
         granule: int = GRANULE, epsilon: float = 0.02, budget_ms: float | None = None,
         gradient: GradientSettings = FEW_STEPS, grid: GridSettings = GRID, **settings: object
         ) -> tuple[nn.Module, Plan, Proposal]:
    """One planner call, as the loop makes it: a sparsity target rho ± epsilon, or a latency target of budget_ms."""
    context = _context(task, model, plan, granule, **settings)
    target = SparsityTarget(rho, epsilon) if budget_ms is None else LatencyTarget(budget_ms, epsilon)
    proposal = get_planner(strategy, gradient=gradient, grid=grid).propose(context, target)
    return proposal.model, proposal.plan, proposal


def _knapsack(task: Task, model: nn.Module, plan: Plan, budget_ms: float, best_effort: bool = False,
              **settings: object) -> tuple[nn.Module, Plan, Proposal]:
    proposal = get_planner("knapsack").propose(_context(task, model, plan, **settings),
                                                LatencyTarget(budget_ms, best_effort=best_effort))
    return proposal.model, proposal.plan, proposal


def _same_outputs(task: Task, pruned: nn.Module, plan: Plan) -> None:
    """The plan replayed on a fresh dense model computes exactly what the returned pruned model computes."""
    fresh = plan.apply(task.build(), task.example_inputs(), components=task.components, output_layers=task.output_layers)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(*task.example_inputs()), pruned.eval()(*task.example_inputs()))


def _in_band(info: Proposal, plan: Plan, flow_policy: str = "protect") -> None:
    achieved = policy_sparsity(plan, flow_policy)  # type: ignore[arg-type]
    assert achieved == pytest.approx(info.sparsity)
    target = info.target
    assert isinstance(target, SparsityTarget)
    assert target.rho - target.epsilon - 1e-9 <= achieved <= target.rho + target.epsilon + 1e-9
    assert info.within_tolerance


# -- the real autoencoder: one gradient run and one small grid, shared by several checks --------------------------
@pytest.fixture(scope="module")
def digits() -> Task:
    task = load_task("digits-autoencoder")
    stream = task.batches
    assert stream is not None
    return dataclasses.replace(task, batches=lambda seed: (b[:16] for b in stream(seed)))  # 4x cheaper steps


@pytest.fixture(scope="module")
def digits_gradient(digits: Task) -> tuple[nn.Module, Plan, Proposal]:
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
def test_component_caps_hold_for_global_grid_and_gradient(two_part) -> None:
    task = _distil_task(two_part)
    plan = _dense_plan(task, two_part)
    for strategy in ("global", "grid", "gradient"):
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
    with pytest.raises(PlannerError, match="'gradient' needs the task's differentiable loss"):
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
    with pytest.raises(PlannerError, match=r"0.680..0.720 is unreachable: this model and plan allow 0.000..0.194"):
        _run(task, two_part, plan, 0.7, component_ratios={"encoder": 0.2, "decoder": 0.2})


def test_global_ranking_is_normalised_per_component(two_part) -> None:
    """Scaling every decoder weight by 100 changes no decision: each component's scores are divided by their mean,
    so one global ranking neither spares the loud decoder nor wipes out the quiet encoder."""
    task = _distil_task(two_part, with_loss=False)  # magnitude importance: the scale is all it sees
    pruned, plan, info = _run(task, two_part, _dense_plan(task, two_part), 0.5, "global")
    _in_band(info, plan)
    _same_outputs(task, pruned, plan)
    loud = copy.deepcopy(two_part)
    with torch.no_grad():
        for parameter in loud.decoder.parameters():
            parameter.mul_(100.0)
    loud_task = _distil_task(loud, with_loss=False)
    _, loud_plan, _ = _run(loud_task, loud, _dense_plan(loud_task, loud), 0.5, "global")
    assert loud_plan.groups == plan.groups
    assert plan.kept("decoder.1") < 48 and plan.kept("encoder.3") < 64  # both components give channels


def _hand_cost() -> CostModel:
    """A cost model written by hand for TwoPart, in the real format: encoder.0's layer and decoder.1's layer get
    faster with fewer channels; encoder.3's layer takes the same time at any width (as a memory-bound or
    launch-bound layer does on real targets)."""
    def layer(key: str, width: int, dense: float, component: str, flat: bool = False) -> LayerCost:
        grid = tuple(range(GRANULE, width + 1, GRANULE))
        return LayerCost(layer=f"layer-{width}", dense_ms=dense, component=component, axes=(key,), grid=(grid,),
                         table=tuple(dense if flat else dense * k / width for k in grid))
    widths = {"encoder.0": 32, "encoder.3": 64, "decoder.1": 48}
    return CostModel(task="two-part", granule=GRANULE, dense_ms=4.0,
                     groups={k: GroupAxis(width=w, kept=granule_counts(w, GRANULE)) for k, w in widths.items()},
                     layers=(layer("encoder.0", 32, 1.0, "encoder"), layer("encoder.3", 64, 1.0, "encoder", flat=True),
                             layer("decoder.1", 48, 2.0, "decoder")))


def test_latency_knapsack_cuts_where_the_target_spends_time(two_part) -> None:
    task, cost = _distil_task(two_part), _hand_cost()
    plan = _dense_plan(task, two_part)
    args = {"cost": cost}
    pruned, new_plan, info = _knapsack(task, two_part, plan, 2.0, **args)
    assert info.predicted_ms is not None and info.predicted_ms <= 2.0
    assert cost.predict_ms(new_plan) == pytest.approx(info.predicted_ms)
    assert new_plan.kept("encoder.3") == 64  # removing its channels buys nothing on this target
    assert new_plan.kept("encoder.0") < 32 and new_plan.kept("decoder.1") < 48
    assert list(info.objective) == sorted(info.objective, reverse=True)  # every removal saved time, none went back
    _same_outputs(task, pruned, new_plan)
    # at 2.6 ms the decoder alone gives the time; once the encoder may take at most 60 % of the budget, its
    # time-saving group is cut too (and its flat one still is not)
    _, loose, _ = _knapsack(task, two_part, plan, 2.6, **args)
    _, shared, _ = _knapsack(task, two_part, plan, 2.6, component_shares={"encoder": 0.6}, **args)
    assert loose.kept("encoder.0") == 32 and cost.component_ms(loose)["encoder"] > 0.6 * 2.6
    assert cost.component_ms(shared)["encoder"] <= 0.6 * 2.6 + 1e-9
    assert shared.kept("encoder.0") < 32 and shared.kept("encoder.3") == 64
    with pytest.raises(PlannerError, match="out of reach for the budget: the cost model predicts"):
        _knapsack(task, two_part, plan, 1.0, **args)
    # best effort (what the tune loop asks for): the plan at the bounds, for a measurement to decide
    _, bounds, effort = _knapsack(task, two_part, plan, 1.0, best_effort=True, **args)
    assert any("out of reach" in note for note in effort.notes)
    assert bounds.kept("decoder.1") == keep_count(48, 0.9, GRANULE) and bounds.kept("encoder.0") == keep_count(32, 0.9, GRANULE)
    with pytest.raises(PlannerError, match="out of reach for component 'encoder'"):
        _knapsack(task, two_part, plan, 2.6, component_shares={"encoder": 0.1}, **args)
    with pytest.raises(PlannerError, match="unknown components: policy"):
        _knapsack(task, two_part, plan, 2.6, component_shares={"policy": 0.5}, **args)


class _Louder:
    """The application importance with one group's scores times ``factor``: what a loss that much more sensitive
    to that group's channels would measure. ``comparable=False`` says they are per-group units (as magnitudes are)."""

    def __init__(self, inner: ApplicationImportance, key: str, factor: float, comparable: bool) -> None:
        self.inner, self.key, self.factor, self.comparable = inner, key, factor, comparable
        self.description, self.notes = inner.description, inner.notes

    def scores(self, graph: ComponentGraph, keys: list[str], batches: Iterator[object] | None = None
               ) -> dict[str, torch.Tensor]:
        scores = self.inner.scores(graph, keys, batches)
        return {k: v * (self.factor if k == self.key else 1.0) for k, v in scores.items()}

    def __call__(self, graph: ComponentGraph, key: str) -> torch.Tensor:
        return self.scores(graph, [key])[key]


def test_latency_knapsack_weighs_groups_by_what_the_loss_says_they_are_worth(two_part) -> None:
    """The application importance is in the loss's units across groups, so the knapsack compares it as it is: a
    decoder the loss needs three times more keeps its channels, and the encoder gives the time instead. Dividing
    each component's scores by their mean (right for magnitudes) would cancel that wholly here, decoder.1 being its
    component's only group: the knapsack then cuts as if the loss had said nothing."""
    task, cost = _distil_task(two_part), _hand_cost()
    plan = _dense_plan(task, two_part)

    def knapsack(factor: float, comparable: bool = True) -> Plan:
        context = _context(task, two_part, plan, cost=cost)
        context.importance = _Louder(context.importance, "decoder.1", factor, comparable)  # type: ignore[arg-type]
        return get_planner("knapsack").propose(context, LatencyTarget(2.6)).plan

    plain, loud, cancelled = knapsack(1.0), knapsack(3.0), knapsack(3.0, comparable=False)
    assert plain.kept("encoder.0") == 32 and plain.kept("decoder.1") < 48  # per ms, the decoder is cheapest
    assert loud.kept("encoder.0") < 32 and loud.kept("decoder.1") > plain.kept("decoder.1")
    assert cancelled.groups == plain.groups


def test_latency_knapsack_gives_back_what_its_last_cut_overshot(two_part) -> None:
    """With encoder.0's channels worth little to the loss, the knapsack takes them first, down to its bound, and then
    decoder.1's: at 3.1 ms the last of those (0.167 ms) overshoots by more than an encoder.0 block costs (0.125 ms).
    That block goes back, so the plan keeps all it can: no removed block fits back under the target."""
    task, cost = _distil_task(two_part), _hand_cost()
    context = _context(task, two_part, _dense_plan(task, two_part), cost=cost)
    context.importance = _Louder(context.importance, "encoder.0", 0.3, True)  # type: ignore[arg-type]
    proposal = get_planner("knapsack").propose(context, LatencyTarget(3.1))
    plan, trace = proposal.plan, list(proposal.objective)
    assert cost.predict_ms(plan) == pytest.approx(proposal.predicted_ms) and proposal.predicted_ms <= 3.1
    counts = {key: plan.kept(key) for key in ("encoder.0", "decoder.1")}
    assert counts["encoder.0"] > keep_count(32, 0.9, GRANULE) and counts["decoder.1"] < 48
    assert all(cost.predict_ms({**counts, key: kept + GRANULE}) > 3.1 for key, kept in counts.items())
    given_back = trace.index(min(trace))  # removals lower the prediction, then what goes back raises it
    assert 0 < given_back < len(trace) - 1 and trace[given_back] < trace[-1] <= 3.1


def test_gradient_trades_the_loss_against_the_differentiable_latency(two_part) -> None:
    """With a cost model and a budget, the gradient strategy aims at a predicted latency, not a sparsity: it ends
    at or under budget · (1 + epsilon) and spends its cuts where they save time."""
    task, cost = _distil_task(two_part), _hand_cost()
    plan = _dense_plan(task, two_part)
    pruned, new_plan, info = _run(task, two_part, plan, 0.3, cost=cost, budget_ms=2.4, epsilon=0.05,
                                  gradient=GradientSettings(steps=80))
    assert info.predicted_ms == pytest.approx(cost.predict_ms(new_plan))
    assert info.within_tolerance and info.predicted_ms <= 2.4 * 1.05
    assert len(info.latency_trace) == 80 and info.latency_trace[-1] == pytest.approx(2.4, rel=0.1)
    # encoder.3 saves nothing on this target: the loss alone decides it, and it gives up the fewest channels
    cut = {key: 1 - new_plan.kept(key) / new_plan.groups[key].width for key in ("encoder.0", "encoder.3", "decoder.1")}
    assert cut["encoder.3"] < min(cut["encoder.0"], cut["decoder.1"])
    _same_outputs(task, pruned, new_plan)
    with pytest.raises(PlannerError, match="latency target needs strategy 'gradient'"):
        _run(task, two_part, plan, 0.3, "grid", cost=cost, budget_ms=2.4)


@pytest.mark.parametrize("strategy", ["tp-local", "tp-global", "tp-taylor", "halp"])
def test_latency_baselines_size_their_cut_on_the_cost_model(two_part, strategy: str) -> None:
    """The fair bench's baselines aim at the loop's latency targets on the same cost model as the knapsack: each lands
    in time by the model's prediction, with its own channel choice (none sees components)."""
    task, cost = _distil_task(two_part), _hand_cost()
    plan = _dense_plan(task, two_part)
    proposal = get_planner(strategy).propose(_context(task, two_part, plan, cost=cost),
                                             LatencyTarget(2.6))
    assert proposal.predicted_ms is not None and proposal.predicted_ms <= 2.6
    assert cost.predict_ms(proposal.plan) == pytest.approx(proposal.predicted_ms)
    _same_outputs(task, proposal.model, proposal.plan)
    kept = {key: proposal.plan.kept(key) for key in ("encoder.0", "encoder.3", "decoder.1")}
    if strategy == "tp-local":  # one ratio everywhere, also where cutting buys nothing on this target
        ratio = proposal.searched["encoder.0"]
        assert set(proposal.searched.values()) == {ratio} and kept["encoder.3"] < 64
        assert kept == {k: keep_count(w, ratio, GRANULE) for k, w in zip(kept, (32, 64, 48))}
    if strategy == "halp":  # a knapsack: never pays importance for a block that saves no time
        assert kept["encoder.3"] == 64
    with pytest.raises(PlannerError, match="out of reach"):
        get_planner(strategy).propose(_context(task, two_part, plan, cost=cost), LatencyTarget(0.5))


def test_select_scores_a_cut_with_its_batchnorm_statistics_re_estimated(two_part) -> None:
    """The re-estimate is the plain average of each BatchNorm's batch statistics over the loss's forward passes, on a
    copy: the model itself keeps its statistics, and a model without BatchNorm is scored as it is."""
    from edgeprune.planners.select import recalibrated

    task = _distil_task(two_part)
    stream = task.batches(0)
    batches = [next(stream) for _ in range(3)]
    before = two_part.encoder[1].running_mean.clone()
    fresh = recalibrated(two_part, task.loss, batches)
    with torch.no_grad():
        means = torch.stack([two_part.encoder[0](b).mean(dim=(0, 2, 3)) for b in batches]).mean(dim=0)
    assert torch.allclose(fresh.encoder[1].running_mean, means, atol=1e-6)
    assert torch.equal(two_part.encoder[1].running_mean, before) and not fresh.training
    assert not torch.allclose(before, means, atol=1e-2)  # the fixture's statistics are not these inputs'
    plain = nn.Sequential(nn.Linear(4, 4))
    assert recalibrated(plain, lambda m, b: m(b).sum(), [torch.ones(2, 4)]) is plain


def test_select_keeps_the_cut_the_loss_rises_least_from(two_part) -> None:
    """``select`` plans the knapsack and the Taylor and L2 rankings against one latency target and keeps the one whose
    cut the task's loss rises least from on held-out batches, its BatchNorm statistics re-estimated on the step's
    batches first: that planner's own plan, in time by the cost model, with its own statistics (the re-estimate only
    scores). A target only the knapsack reaches (best effort, at the bounds) is the
    knapsack's; a task without a loss gets the knapsack's cut, and a note says why."""
    from edgeprune.planners.select import HELD_OUT, LOSS_BATCHES, loss_rise, loss_terms, recalibrated

    task, cost = _distil_task(two_part), _hand_cost()
    plan = _dense_plan(task, two_part)
    stream, own = task.batches(HELD_OUT), task.batches(0)  # the step's seed is 0
    held_out, calibration = ([next(s) for _ in range(LOSS_BATCHES)] for s in (stream, own))
    reference = loss_terms(task.loss, two_part, held_out)

    def rises(alone: dict[str, Proposal], recalibrate: bool = True) -> dict[str, float]:
        return {label: loss_rise(loss_terms(task.loss, recalibrated(p.model, task.loss, calibration) if recalibrate
                                            else p.model, held_out), reference) for label, p in alone.items()}

    for ms in (3.0, 2.6):
        chosen = get_planner("select").propose(_context(task, two_part, plan, cost=cost), LatencyTarget(ms))
        alone = {label: get_planner(name).propose(_context(task, two_part, plan, cost=cost), LatencyTarget(ms))
                 for label, name in (("knapsack", "knapsack"), ("taylor", "tp-taylor"), ("magnitude", "tp-global"))}
        rise = rises(alone)
        best = min(rise, key=rise.__getitem__)
        assert chosen.planner == "select" and chosen.plan.groups == alone[best].plan.groups
        assert f"kept the {best} cut" in chosen.notes[-1] and "BatchNorm statistics re-estimated" in chosen.notes[-1]
        assert chosen.predicted_ms is not None and chosen.predicted_ms <= ms
        _same_outputs(task, chosen.model, chosen.plan)
        assert torch.equal(chosen.model.encoder[1].running_mean, alone[best].model.encoder[1].running_mean)
        if ms == 3.0:  # not the knapsack's: it keeps less of decoder.1 than the Taylor ranking
            assert best == "taylor" and alone["knapsack"].plan.kept("decoder.1") < alone[best].plan.kept("decoder.1")
            taylor = alone[best]
        else:  # the re-estimate decides: with the fixture's statistics the Taylor ranking's cut would score best
            plain = rises(alone, recalibrate=False)
            assert best == "knapsack" and min(plain, key=plain.__getitem__) == "taylor"
    # a ranking that leaves the encoder over its share of the target is no candidate
    assert cost.component_ms(taylor.plan)["encoder"] > 0.4 * 3.0
    shared = get_planner("select").propose(_context(task, two_part, plan, cost=cost, component_shares={"encoder": 0.4}),
                                           LatencyTarget(3.0))
    assert cost.component_ms(shared.plan)["encoder"] <= 0.4 * 3.0 + 1e-9
    assert "(knapsack)" in shared.notes[-1] and "(taylor)" not in shared.notes[-1]
    far = get_planner("select").propose(_context(task, two_part, plan, cost=cost), LatencyTarget(1.0, best_effort=True))
    at_bounds = get_planner("knapsack").propose(_context(task, two_part, plan, cost=cost),
                                                LatencyTarget(1.0, best_effort=True))
    assert far.plan.groups == at_bounds.plan.groups and "kept the knapsack cut" in far.notes[-1]
    assert any("out of reach" in note for note in far.notes)
    without_loss = get_planner("select").propose(_context(_distil_task(two_part, with_loss=False), two_part, plan,
                                                          cost=cost), LatencyTarget(2.6))
    assert "no loss/batches to choose by" in without_loss.notes[-1]


def test_select_races_its_cuts_on_part_of_the_steps_fine_tune(two_part) -> None:
    """Given the loop's fine-tune, ``select`` trains every candidate cut 1 / (RACE x candidates) of the step's
    fine-tune budget on the same batches before it scores them, keeps the cut whose loss then rose least, with its
    raced weights, and says what it spent: the loop spends only the rest, so the step trains no more than a
    baseline's. A step only the knapsack reaches races nothing."""
    from edgeprune.planners.select import HELD_OUT, LOSS_BATCHES, RACE, loss_rise, loss_terms, recalibrated
    from edgeprune.zoo import fit

    task, cost = _distil_task(two_part), _hand_cost()
    plan = _dense_plan(task, two_part)
    calls: list[int] = []

    def finetune(model: nn.Module, steps: int) -> None:  # seeded like the loop's: every cut sees the same batches
        calls.append(steps)
        fit(model, task.loss, task.batches(1), steps, torch.optim.SGD(model.parameters(), lr=0.05))

    chosen = get_planner("select").propose(_context(task, two_part, plan, cost=cost, finetune=finetune,
                                                    finetune_steps=60), LatencyTarget(3.0))
    race = 60 // (RACE * 3)
    assert calls == [race] * 3 and chosen.finetune_steps == 3 * race == chosen.summary()["finetune_steps"]
    assert f"after {race} fine-tune steps of each cut" in chosen.notes[-1]
    alone = {label: get_planner(name).propose(_context(task, two_part, plan, cost=cost), LatencyTarget(3.0))
             for label, name in (("knapsack", "knapsack"), ("taylor", "tp-taylor"), ("magnitude", "tp-global"))}
    for proposal in alone.values():
        finetune(proposal.model, race)
    stream, own = task.batches(HELD_OUT), task.batches(0)
    held_out, calibration = ([next(s) for _ in range(LOSS_BATCHES)] for s in (stream, own))
    reference = loss_terms(task.loss, two_part, held_out)
    rise = {label: loss_rise(loss_terms(task.loss, recalibrated(p.model, task.loss, calibration), held_out), reference)
            for label, p in alone.items()}
    best = min(rise, key=rise.__getitem__)
    assert chosen.plan.groups == alone[best].plan.groups and f"kept the {best} cut" in chosen.notes[-1]
    assert all(torch.allclose(a, b) for a, b in zip(chosen.model.state_dict().values(),
                                                    alone[best].model.state_dict().values()))
    calls.clear()
    far = get_planner("select").propose(_context(task, two_part, plan, cost=cost, finetune=finetune,
                                                 finetune_steps=60), LatencyTarget(1.0, best_effort=True))
    assert calls == [] and far.finetune_steps == 0 and "fine-tune steps" not in far.notes[-1]
