"""The tune loop: prune step by step until the measured latency budget and the metric budget both hold.

Each step builds one :class:`~edgeprune.planners.StepContext` (the current model's traced graph, its plan, the
bounds, the run's importance and, for a latency planner, the cost model) and asks the planner for a proposal
against a typed target: a larger pruning ratio (:class:`~edgeprune.planners.SparsityTarget`), or — for the latency
planners — a larger share of the dense latency to remove, predicted on the target's measured cost model
(:class:`~edgeprune.planners.LatencyTarget`). The proposal is fine-tuned, evaluated and — only if the metric budget
still holds — exported, checked and measured on the target (a latency planner then recalibrates its cost model).

``step(state)`` returns the next :class:`LoopState` or the :class:`Outcome`; every way a run ends is a named stop
rule. The state (plan, steps, cost model, rejected plans…) is what the checkpoint serialises after every step, so
an interrupted run resumes where it stopped. The model is traced once, at the dense stage (or when a run resumes):
an accepted proposal's graph becomes the next step's graph.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.artifact.export import Artifact, build_artifact, to_numpy
from edgeprune.core.budgets import BudgetError, LatencyBudget, MetricBudget
from edgeprune.core.hashing import state_dict_hash
from edgeprune.core.manifest import StepRecord
from edgeprune.core.progress import Progress, silent
from edgeprune.core.targets import Target
from edgeprune.core.task import TaskError, load_task, one_line
from edgeprune.loop.settings import RunFolderError, TuneSettings, run_components, target_inputs
from edgeprune.loop.state import CHECKPOINT, CHECKPOINT_WEIGHTS, Baseline, Checkpoint, LoopState, Outcome
from edgeprune.measure.cost import CostModel
from edgeprune.measure.store import ProfileStore, profile_task
from edgeprune.planners import (
    LatencyTarget,
    PlannerError,
    Proposal,
    SparsityTarget,
    StepContext,
    StepTarget,
    get_planner,
)
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.importance import ApplicationImportance, FlowPolicy, cuttable
from edgeprune.prune.plan import Plan
from edgeprune.runtimes import Latency, get_runtime

#: The schedule: an accepted step that used under ``CALM`` of the metric's remaining headroom makes the next increment
#: ``GROW`` times larger (up to ``MAX_STEP``); one that used over ``STRAIN`` of it makes it half as large; a rollback
#: halves it too. Gradual pruning with fine-tuning in between keeps the metric; a jump to the budget breaks it.
CALM, STRAIN, GROW, MAX_STEP = 0.25, 0.75, 1.5, 0.3
FINAL = "final fine-tune"
#: How a step kept without its fine-tune says so (see :meth:`Loop.tuned_metrics`).
UNTUNED = "kept without the fine-tune"
#: How the step that opened the interfaces says so (flow policy ``last``, see :meth:`Loop.interfaces_to_open`).
OPENED = "interfaces opened (flow policy last)"


def next_increment(step: float, used: float) -> float:
    """The schedule's next increment after an accepted step of ``step`` that used ``used`` of the metric's headroom
    (0: the metric did not move, 1: it reached its budget): see :data:`CALM`."""
    if used < CALM:
        return max(step, min(MAX_STEP, step * GROW))
    return step / 2 if used > STRAIN else step


class Loop:
    """One tune run: the facts that do not change from step to step, the planner and the stop rules."""

    def __init__(self, settings: TuneSettings, target: Target, work: Path, key: str,
                 log: Callable[[str], None], progress: Progress = silent) -> None:
        self.settings, self.target, self.work, self.key, self.log = settings, target, work, key, log
        self.progress = progress
        self.task = load_task(settings.task)
        self.runtime = get_runtime(self.target)
        self.latency_budget = LatencyBudget.parse(settings.latency_budget)
        self.metric_budget = MetricBudget.parse(settings.metric_budget or self.task.default_metric_budget)
        if (settings.finetune_steps or settings.final_finetune_steps) and self.task.finetune is None:
            raise BudgetError(f"task {self.task.name!r} has no finetune; use --finetune-steps 0 "
                              f"--final-finetune-steps 0")
        self.inputs = target_inputs(self.task, self.target)
        self.components = run_components(settings, self.task)
        self.planner = get_planner(settings.strategy)
        self.plans_latency = settings.plans_latency
        self.importance = ApplicationImportance.for_task(self.task, settings.flow_policy, settings.flow_combine,
                                                         seed=settings.seed)
        self.baseline: Baseline

    # -- measurements ------------------------------------------------------------------------------------------
    def measure(self, model: nn.Module, name: str) -> tuple[Artifact, Latency]:
        artifact = build_artifact(model, self.inputs, self.runtime, self.work, name, self.target.precision)
        return artifact, self.runtime.latency(artifact.built, to_numpy(self.inputs))

    def measure_step(self, model: nn.Module, name: str) -> tuple[Artifact, dict[str, object]]:
        """A step's latency, timed in alternation with the dense model and put on the dense measurement's scale: a
        machine whose speed drifts (a shared host, a warming device) must not make a step look faster or slower."""
        artifact = build_artifact(model, self.inputs, self.runtime, self.work, name, self.target.precision)
        paired = self.runtime.compare(artifact.built, self.baseline.dense_artifact.built, to_numpy(self.inputs))
        return artifact, paired.latency(self.baseline.dense_ms)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        with self.task_code("evaluate", step):
            return {k: float(v) for k, v in self.task.evaluate(model).items()}

    def finetune(self, model: nn.Module, step: int, steps: int) -> None:
        torch.manual_seed(self.settings.seed)
        with self.task_code("finetune", step):
            self.task.finetune(model, steps)  # type: ignore[misc]
        model.eval()

    @contextlib.contextmanager
    def task_code(self, what: str, step: int) -> Iterator[None]:
        """The task's own code raised: one line naming the task, the call and the step (the model it ran on)."""
        try:
            yield
        except Exception as exc:
            on = "the dense model" if step == 0 else f"the model pruned at step {step}"
            raise TaskError(f"task {self.task.name!r}: {what} raised {type(exc).__name__} on {on}: "
                            f"{one_line(exc)}") from exc

    def count(self, model: nn.Module) -> tuple[int, int]:
        macs, params = tp.utils.count_ops_and_params(model, self.inputs)
        return int(macs), int(params)

    def trace(self, model: nn.Module) -> ComponentGraph:
        return ComponentGraph(model, self.inputs, self.components, self.task.output_layers)

    def cost_model(self, dense: ComponentGraph, artifact: Artifact, dense_ms: float) -> tuple[CostModel, Path | None]:
        """The target's cost model of the dense model: from profiles/ when one with this key is stored, else
        measured (minutes) and stored; then calibrated on this run's own dense measurement too."""
        self.log("cost model: reusing the stored one or building it from per-layer latency tables")
        result = profile_task(self.task, self.target, self.runtime, self.inputs, dense, ProfileStore(),
                              cost_model=True, artifact=artifact, dense_ms=dense_ms, log=self.log,
                              progress=self.progress)
        assert result.cost is not None
        cost = result.cost.calibrated([*result.cost.calibration.points, (result.cost.raw_ms({}), dense_ms)])
        return cost, result.cost_path

    # -- the run -----------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Outcome:
        restored = self.restore() if resume else None
        if restored is None:
            state: LoopState | Outcome = self.dense_stage()
            self.checkpoint(state)
        else:
            state, ended = restored
            self.log(f"resuming after step {state.steps[-1].index} (ratio {state.ratio:.3g})")
            if ended is not None:
                state = Outcome(*ended, state)
        if isinstance(state, LoopState) and state.steps[0].latency_ms <= self.baseline.budget_ms:
            return Outcome("met", "the dense model already meets both budgets", state)
        while not isinstance(state, Outcome):
            state = self.step(state)
            self.checkpoint(state)
        return self.final_finetune(state)

    def final_finetune(self, outcome: Outcome) -> Outcome:
        """``final_finetune_steps`` more fine-tuning of the pruned model the run ends on, as one more step on the
        same widths (so the same measured latency): kept when its metric is no worse, recorded either way."""
        s, steps = outcome.state, self.settings.final_finetune_steps
        if not steps or s.best == 0 or FINAL in s.steps[-1].note or FINAL in s.best_step.note:
            return outcome  # a resumed run already did it, or the step aimed at the budget had it before its judging
        t0, best, index = time.perf_counter(), s.best_step, len(s.steps)
        graph = s.graph.fork()
        self.finetune(graph.model, index, steps)
        metrics = self.evaluate(graph.model, index)
        record = best.model_copy(update={"index": index, "metrics": metrics, "note": f"{FINAL}: {steps} steps on step "
                                         f"{best.index}'s widths, whose latency it keeps", "search": {},
                                         "finetune_steps": steps})
        metric, dense = self.metric_budget.metric, self.baseline.dense_value
        if self.metric_budget.headroom(metrics[metric], dense) < self.metric_budget.headroom(best.metrics[metric], dense):
            state = self.roll_back(s, record, f"{FINAL}: {metric}={metrics[metric]:.4g}, worse than step "
                                              f"{best.index}'s {best.metrics[metric]:.4g}", t0)
        else:
            record.seconds = time.perf_counter() - t0
            artifact = build_artifact(graph.model, self.inputs, self.runtime, self.work, f"step{index}",
                                      self.target.precision)
            self.log(f"step {index}: {FINAL} ({steps} steps), {metric}={metrics[metric]:.4g}")
            state = s.model_copy(update={"steps": [*s.steps, record], "best": index, "graph": graph,
                                         "artifact": artifact})
        final = Outcome(outcome.status, outcome.reason, state)
        self.checkpoint(final)
        return final

    def dense_stage(self) -> LoopState:
        """Evaluate, measure and trace the dense model; fix the budgets' thresholds (and a latency planner's cost
        model)."""
        start = time.perf_counter()
        graph = self.trace(self.task.build())
        frozen = graph.validate(self.inputs, self.target.granule, ProfileStore().validated)
        if graph.validated_from is not None:
            self.log(f"group validation reused from {graph.validated_from}")
        for key, reason in frozen.items():
            self.log(f"group {key}: {reason}")
        plan = Plan.dense(self.settings.task, graph)
        dense_metrics = self.evaluate(graph.model, 0)
        self.metric_budget.check_metric(dense_metrics)
        dense_value = dense_metrics[self.metric_budget.metric]
        if not self.metric_budget.holds(dense_value, dense_value):
            raise BudgetError(
                f"infeasible budgets: the dense model's {self.metric_budget.metric} is {dense_value:.4g}, "
                f"already outside the metric budget {self.metric_budget}"
            )
        self.log(f"dense {self.metric_budget.metric}={dense_value:.4g}; measuring dense latency")
        artifact, latency = self.measure(graph.model, "dense")
        macs, params = self.count(graph.model)
        dense = StepRecord(index=0, ratio=0.0, status="dense", metrics=dense_metrics, latency=latency.to_dict(),
                           macs=macs, params=params, seconds=time.perf_counter() - start, plan_digest=plan.digest())
        cost, cost_path, local = None, None, 1.0
        if self.plans_latency:
            cost, cost_path = self.cost_model(graph, artifact, latency.median_ms)
            local = latency.median_ms / cost.predict_ms({})
        self.baseline = Baseline(dense_value=dense_value, dense_hash=state_dict_hash(graph.model),
                                 dense_ms=latency.median_ms,
                                 budget_ms=self.latency_budget.threshold_ms(latency.median_ms),
                                 metric_threshold=self.metric_budget.threshold(dense_value), dense_artifact=artifact,
                                 cost_path=cost_path, frozen=frozen)
        self.log(f"dense latency {latency.median_ms:.4g} ms; budget {self.baseline.budget_ms:.4g} ms")
        return LoopState(ratio=0.0, step=self.settings.step, steps=[dense], plan=plan, artifact=artifact, cost=cost,
                         local=local, graph=graph)

    def step(self, s: LoopState) -> LoopState | Outcome:
        """One proposal from the current model: the next state, or the outcome when a stop rule ends the run."""
        stop = self.largest_ratio_reached(s) or self.step_below_minimum(s)
        if stop:
            return stop
        # a ratio strategy's ratio is the channels cut, capped like every group; a latency planner's is the share of
        # the dense latency measured removed, and the trial one increment more, until its target is the budget itself
        trial = min(1.0 if self.plans_latency else self.settings.max_ratio, s.ratio + s.step)
        t0, target, opened = time.perf_counter(), self.aim(s, trial), ""
        try:
            proposal = self.planner.propose(self.context(s), target)
            opened = self.interfaces_to_open(s, proposal, target)
            if opened:
                self.log(f"step {len(s.steps)}: {opened}")
                s = s.model_copy(update={"interfaces_open": True})
                proposal = self.planner.propose(self.context(s), target)
        except PlannerError as exc:  # e.g. the sparsity band is unreachable from this plan at the granule
            if self.plans_latency:  # bounds, not step size, keep the budget out of reach
                return Outcome("infeasible", str(exc), s)
            record = StepRecord(index=len(s.steps), ratio=trial, status="rolled-back", metrics={}, note=str(exc),
                                seconds=time.perf_counter() - t0)
            self.log(f"step at ratio {trial:.3g} not proposed: {exc}")
            return s.model_copy(update={"steps": [*s.steps, record], "step": s.step / 2})
        if proposal.plan == s.plan:  # the granule swallowed this increment
            return self.nothing_left_to_cut(s, trial) or s.model_copy(update={"ratio": trial})
        if proposal.plan.digest() in s.rejected:  # the granule made this the plan already rolled back
            return self.only_rejected_plans_left(s, proposal.plan.digest()) or s.model_copy(update={"step": s.step / 2})
        return self.try_proposal(s, proposal, trial, t0, opened)

    def interfaces_to_open(self, s: LoopState, proposal: Proposal, target: StepTarget) -> str:
        """Why this step opens the interfaces (flow policy ``last``), or "": they are still closed, the latency
        planner's plan with them kept falls short of the step's target (short of the target is short of the budget
        too)."""
        if not (isinstance(target, LatencyTarget) and proposal.predicted_ms is not None
                and proposal.predicted_ms > target.ms * (1.0 + target.tolerance) and self.may_open_interfaces(s)):
            return ""
        return f"{OPENED} from this step on: with them kept the plan predicts {proposal.predicted_ms:.4g} ms > the " \
               f"step's target {target.ms:.4g} ms"

    def interfaces_to_open_after(self, s: LoopState) -> str:
        """Why a step that broke the metric budget opens the interfaces for the steps after it, or "": a cut that
        kept every interface's width and still broke the metric over-cut the components' interiors, so the next
        steps may spread the cut over the interfaces too. Measured on the pendulum agent at 0.35x (2026-12-03): aimed
        at the budget with its latent kept at 64 channels, none of select's three cuts held the return after the
        final fine-tune (-282 to -602); with the latent open, the Taylor and L2 rankings cut it to 32 and held
        (-164, -157)."""
        return f"{OPENED} from the next step on: this cut broke the metric with them kept" \
            if self.may_open_interfaces(s) else ""

    def may_open_interfaces(self, s: LoopState) -> bool:
        """A latency planner under flow policy ``last`` with the interfaces still kept, and one of them could lose
        channels (a ratio strategy never opens them)."""
        if not self.plans_latency or self.settings.flow_policy != "last" or s.interfaces_open:
            return False
        opened = self.context(s.model_copy(update={"interfaces_open": True}))
        return any(info.kind == "flow" and opened.fewest(key) < info.width for key, info in s.graph.groups.items())

    def flow_policy(self, s: LoopState) -> FlowPolicy:
        """The policy this step's planner cuts flow groups by: ``last`` is ``joint`` once the interfaces are open."""
        return "joint" if self.settings.flow_policy == "last" and s.interfaces_open else self.settings.flow_policy

    def try_proposal(self, s: LoopState, proposal: Proposal, trial: float, t0: float,
                     opened: str = "") -> LoopState | Outcome:
        """Fine-tune, evaluate and — if the metric holds — measure a proposal; accept it or roll it back. ``opened``:
        why this step opened the interfaces (flow policy ``last``), for its record."""
        candidate, index = proposal.model, len(s.steps)
        metrics, note, steps = self.tuned_metrics(candidate, index, last=self.aims_at_budget(trial),
                                                  spent=proposal.finetune_steps)
        value = metrics[self.metric_budget.metric]

        def noted(*parts: str) -> str:  # the step's notes, the interfaces' opening first
            return "; ".join(n for n in (opened, *parts) if n)

        record = StepRecord(index=index, ratio=trial, status="accepted", metrics=metrics, note=noted(note),
                            channel_sparsity=proposal.plan.channel_sparsity(), plan_digest=proposal.plan.digest(),
                            search=proposal.summary(), finetune_steps=steps)
        if not self.metric_budget.holds(value, self.baseline.dense_value):
            broke = f"{self.metric_budget.metric}={value:.4g} breaks {self.metric_budget}"
            reopen = self.interfaces_to_open_after(s)
            return self.roll_back(s, record, noted(broke, reopen), t0, step=s.step / 2,
                                  **({"interfaces_open": True} if reopen else {}))
        artifact, record.latency = self.measure_step(candidate, f"step{record.index}")
        measured = record.latency_ms
        cost, local = s.cost, s.local
        if cost is not None:
            # every measurement joins the calibration, and sets the local correction: the next plan aims at
            # budget / (measured / predicted) of this one
            cost = cost.calibrated([*cost.calibration.points, (cost.raw_ms(proposal.plan), measured)])
            off = measured / cost.predict_ms(proposal.plan)
            if measured >= s.best_step.latency_ms:
                # planned to be faster, measured no faster: the runtime's kernels for this combination of widths
                # (one cut at a time, the cost model cannot see them). Its point stays in the calibration, but it
                # must not steer the next plan, and nothing is built on a slower model. The metric held, so the
                # ramp goes on past it (a smaller step would plan the same widths again, a larger one others) —
                # and a step aimed at the budget, which cannot go past it, aims at least a tolerance lower next.
                lower = {"local": max(s.local * (1.0 + self.settings.epsilon), off)} if self.aims_at_budget(trial) else {}
                return self.roll_back(s, record, noted(f"measured {measured:.4g} ms, no faster than step "
                                                       f"{s.best}'s {s.best_step.latency_ms:.4g} ms"), t0,
                                      ratio=trial, cost=cost, **lower)
            local = off
        record.macs, record.params = self.count(candidate)
        record.seconds = time.perf_counter() - t0
        self.log(f"step {record.index}: ratio {trial:.3g} accepted, {self.metric_budget.metric}={value:.4g}, "
                 f"{measured:.4g} ms")
        # a new starting model: a plan rejected from the old one may hold from this one
        accepted = s.model_copy(update={
            "steps": [*s.steps, record], "best": record.index, "rejected": frozenset(), "plan": proposal.plan,
            "graph": proposal.graph, "artifact": artifact, "cost": cost, "local": local,
            "ratio": 1.0 - measured / self.baseline.dense_ms if self.plans_latency else trial,
            "step": self.next_step(s, value)})
        return self.budget_met(accepted) or accepted

    def tuned_metrics(self, candidate: nn.Module, index: int, last: bool = False,
                      spent: int = 0) -> tuple[dict[str, float], str, int]:
        """Fine-tune the cut ``candidate`` in place and evaluate it: its metrics, a note, the fine-tune steps spent
        (``spent`` of the step's budget the planner already spent racing its candidates, the rest here).

        A step aimed at the budget (``last``) would be the run's last and get ``final_finetune_steps`` more after it,
        so when it breaks the metric budget it gets them before it is judged: a narrow metric (an episode return)
        may break after the per-step fine-tune and hold after the final one. A rollback is for the cut, not for its
        fine-tune: when the fine-tuned model breaks the metric budget but the cut before it holds it (a task's
        fine-tune can harm a model that already works), the candidate goes back to its weights before the fine-tune
        (with what a planner's race trained it), and a note says so."""
        settings, metric, dense = self.settings, self.metric_budget.metric, self.baseline.dense_value
        if not settings.finetune_steps:
            return self.evaluate(candidate, index), "", 0
        before = {k: v.detach().clone() for k, v in candidate.state_dict().items()}
        self.finetune(candidate, index, settings.finetune_steps - spent)
        metrics, steps = self.evaluate(candidate, index), settings.finetune_steps
        if self.metric_budget.holds(metrics[metric], dense):
            return metrics, "", steps
        if last and settings.final_finetune_steps:
            self.finetune(candidate, index, settings.final_finetune_steps)
            tuned, steps = self.evaluate(candidate, index), steps + settings.final_finetune_steps
            note = (f"{FINAL} before judging: {metric}={metrics[metric]:.4g} after {settings.finetune_steps} steps, "
                    f"{tuned[metric]:.4g} after {steps}")
            self.log(f"step {index}: {note}")
            if self.metric_budget.holds(tuned[metric], dense):
                return tuned, note, steps
            metrics = tuned
        candidate.load_state_dict(before)  # rolled back either way unless the cut before it holds the metric
        untuned = self.evaluate(candidate, index)
        if not self.metric_budget.holds(untuned[metric], dense):
            return metrics, "", steps
        note = (f"its fine-tune broke the metric ({metric}={metrics[metric]:.4g}); the cut before it holds it "
                f"({untuned[metric]:.4g}), {UNTUNED}")
        self.log(f"step {index}: {note}")
        return untuned, note, steps

    def next_step(self, s: LoopState, value: float) -> float:
        """The increment after an accepted step that moved the metric from the best step's to ``value``: larger when
        the step used little of the headroom left to the metric budget, smaller when it used most of it."""
        dense = self.baseline.dense_value
        before = self.metric_budget.headroom(s.best_step.metrics[self.metric_budget.metric], dense)
        return next_increment(s.step, 1.0 - self.metric_budget.headroom(value, dense) / before if before > 0 else 1.0)

    def context(self, s: LoopState) -> StepContext:
        settings = self.settings
        return StepContext(task=self.task, graph=s.graph, plan=s.plan, inputs=self.inputs, granule=self.target.granule,
                           importance=self.importance, flow_policy=self.flow_policy(s),
                           flow_combine=settings.flow_combine, component_ratios=settings.component_ratios or {},
                           max_ratio=settings.max_ratio, component_shares=settings.component_shares or {},
                           cost=s.cost, seed=settings.seed, finetune_steps=settings.finetune_steps,
                           finetune=None if self.task.finetune is None else
                           lambda model, steps: self.finetune(model, len(s.steps), steps))

    def aim(self, s: LoopState, trial: float) -> StepTarget:
        """The step's target at ``trial``: that share of the channels (ratio strategies) or of the dense latency,
        never below the budget, corrected by how far off the last measured prediction was (latency planners)."""
        if not self.plans_latency:
            return SparsityTarget(trial, self.settings.epsilon)
        epsilon = self.settings.epsilon
        if self.aims_at_budget(trial):  # a planner's slack (the gradient's ± epsilon) must sit below the budget
            return LatencyTarget(self.baseline.budget_ms / s.local / (1.0 + epsilon), epsilon, best_effort=True)
        return LatencyTarget(self.baseline.dense_ms * (1.0 - trial) / s.local, epsilon, best_effort=True)

    def aims_at_budget(self, ratio: float) -> bool:
        """A latency planner's ramp at ``ratio`` already aims at the budget itself — or within the planners'
        tolerance of it: a step that close would leave only a sliver of the budget (inside measurement noise) to a
        step of its own."""
        return self.plans_latency and \
            self.baseline.dense_ms * (1.0 - ratio) <= self.baseline.budget_ms * (1.0 + self.settings.epsilon)

    def roll_back(self, s: LoopState, record: StepRecord, note: str, t0: float, **changes: object) -> LoopState:
        """Record ``record`` as rolled back for ``note``; its plan is not proposed again from this model."""
        record.status, record.note, record.seconds = "rolled-back", note, time.perf_counter() - t0
        self.log(f"step {record.index}: ratio {record.ratio:.3g} rolled back ({note})")
        return s.rolled_back(record, **changes)

    # -- stop rules: each a way the run ends, with the reason it gives ----------------------------------------------
    def largest_ratio_reached(self, s: LoopState) -> Outcome | None:
        """A ratio strategy at ``max_ratio`` has nothing more to try (a latency planner's ratio only ramps its
        target)."""
        if self.plans_latency or s.ratio < self.settings.max_ratio - 1e-9:
            return None
        return Outcome("infeasible", f"latency budget not reached: at the largest pruning ratio "
                                     f"{self.settings.max_ratio:g} the model measures {s.best_step.latency_ms:.4g} ms "
                                     f"> {self.baseline.budget_ms:.4g} ms", s)

    def step_below_minimum(self, s: LoopState) -> Outcome | None:
        """Rollbacks halved the increment below ``min_step``: the metric budget breaks before the latency one holds."""
        return self.metric_wall(s) if s.step < self.settings.min_step else None

    def nothing_left_to_cut(self, s: LoopState, trial: float) -> Outcome | None:
        """A latency planner aiming at the budget plans no cut: its cost model finds nothing more that saves time."""
        if not self.aims_at_budget(trial):
            return None
        policy = self.settings.flow_policy  # under ``last`` the loop already opened every interface that could be cut
        protected = sum(1 for g in s.plan.groups.values() if not cuttable(g.kind, policy)) if policy == "protect" else 0
        hint = (f"; {protected} interface (flow) groups keep their width under --flow-policy protect, "
                f"--flow-policy joint lets the planner cut them") if protected else ""
        return Outcome("infeasible", f"the cost model (corrected ×{s.local:.3f} by the last measurement) finds no "
                                     f"further cut that saves time within the groups' bounds; the best plan measures "
                                     f"{s.best_step.latency_ms:.4g} ms > {self.baseline.budget_ms:.4g} ms{hint}", s)

    def only_rejected_plans_left(self, s: LoopState, digest: str) -> Outcome | None:
        """The model already came from a step aimed at the budget itself: every smaller step aims there again and
        plans the same (deterministic) cut that was rolled back — for the reason its step records (a cut that measured
        no faster moved the aim lower first, and the planner had no other cut to offer)."""
        if not self.aims_at_budget(s.ratio):
            return None
        rejected = next(r for r in reversed(s.steps) if r.plan_digest == digest)
        return Outcome("infeasible", f"the plan aimed at the budget was rolled back ({rejected.note}) and is the only "
                                     f"one left from the best model, which measures {s.best_step.latency_ms:.4g} ms "
                                     f"> {self.baseline.budget_ms:.4g} ms", s)

    def budget_met(self, s: LoopState) -> Outcome | None:
        return Outcome("met", "both budgets hold", s) if s.best_step.latency_ms <= self.baseline.budget_ms else None

    def metric_wall(self, s: LoopState) -> Outcome:
        best = s.best_step
        return Outcome("infeasible", f"the metric budget breaks before the latency budget holds: the best plan "
                                     f"measures {best.latency_ms:.4g} ms > {self.baseline.budget_ms:.4g} ms with "
                                     f"{self.metric_budget.metric}={best.metrics[self.metric_budget.metric]:.4g}", s)

    # -- checkpoints: every step lands on disk, so an interrupted run resumes where it stopped --------------------
    def checkpoint(self, at: LoopState | Outcome) -> None:
        """Save the state (and, once the step loop has ended, its status and reason) for a resume."""
        folder = self.work.parent
        s, ended = (at.state, (at.status, at.reason)) if isinstance(at, Outcome) else (at, None)
        torch.save(s.model.state_dict(), folder / ".checkpoint.pt.tmp")
        (folder / ".checkpoint.json.tmp").write_text(
            Checkpoint(run_key=self.key, baseline=self.baseline, state=s, ended=ended).model_dump_json())
        (folder / ".checkpoint.pt.tmp").replace(folder / CHECKPOINT_WEIGHTS)
        (folder / ".checkpoint.json.tmp").replace(folder / CHECKPOINT)

    def restore(self) -> tuple[LoopState, tuple[Literal["met", "infeasible"], str] | None] | None:
        """The state of an interrupted run of these settings and how its step loop ended, if it had (None when there
        is no such run): the plan replayed on a freshly traced dense model, the checkpoint's weights loaded into
        it."""
        path = self.work.parent / CHECKPOINT
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("run_key") != self.key:
            raise RunFolderError(f"{path.parent} holds an interrupted run of other settings; remove it to start over")
        graph = self.trace(self.task.build())
        graph.freeze(data["baseline"]["frozen"])
        Plan.model_validate(data["state"]["plan"]).apply_to(graph)
        graph.model.load_state_dict(torch.load(self.work.parent / CHECKPOINT_WEIGHTS, weights_only=True))
        graph.model.eval()
        checkpoint = Checkpoint.model_validate({**data, "state": {**data["state"], "graph": graph}})
        self.baseline = checkpoint.baseline
        return checkpoint.state, checkpoint.ended
