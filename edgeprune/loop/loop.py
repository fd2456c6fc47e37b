"""The tune loop: prune step by step until the measured latency budget and the metric budget both hold.

Each step proposes a larger pruning ratio — uniform over the groups, one global ranking, or per-group soft
coefficients chosen by grid search against the task (``strategy``); or, for the latency planners (``knapsack``,
and ``gradient``, whose penalty is the cost model's differentiable prediction), a larger share of the dense latency
to remove, planned on the target's measured cost model — honouring the flow policy (by default interfaces keep
their width), at the target's granule, optionally fine-tunes, evaluates the metric and — only if the metric budget
still holds — exports, checks and measures the model on the target (a latency planner then recalibrates its cost
model). A step that breaks the metric budget is rolled back and retried with half
the increment. The run is staged in a hidden sibling folder, checkpointed after every step (so ``resume``
continues an interrupted run), and moved into place only when complete.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.artifact.export import Artifact, build_artifact, to_numpy
from edgeprune.core.budgets import BudgetError, LatencyBudget, MetricBudget
from edgeprune.core.hashing import state_dict_hash
from edgeprune.core.manifest import StepRecord
from edgeprune.core.targets import Target
from edgeprune.core.task import load_task
from edgeprune.loop.settings import RunFolderError, TuneSettings, graph_args, target_inputs
from edgeprune.measure.cost import CostModel
from edgeprune.planners.coefficients import ChoiceInfo, CoefficientError, choose
from edgeprune.planners.knapsack import choose_for_latency
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.plan import Plan
from edgeprune.runtimes import Latency, get_runtime

CHECKPOINT = "checkpoint.json"
CHECKPOINT_WEIGHTS = "checkpoint.pt"


@dataclass
class Outcome:
    """How the loop ended, with the model and plan it ends on (the last accepted step), that model's traced graph
    and its exported, built and measured artefact (what the bundle publishes)."""

    status: Literal["met", "infeasible"]
    reason: str
    model: nn.Module
    plan: Plan
    graph: ComponentGraph
    artifact: Artifact
    dense: StepRecord
    final: StepRecord


class Loop:
    """State of one tune run; ``run`` drives it. Kept as a class so each step's pieces stay small."""

    def __init__(self, settings: TuneSettings, target: Target, work: Path, key: str,
                 log: Callable[[str], None]) -> None:
        self.settings, self.target, self.work, self.key, self.log = settings, target, work, key, log
        self.task = load_task(settings.task)
        self.runtime = get_runtime(self.target)
        self.latency_budget = LatencyBudget.parse(settings.latency_budget)
        self.metric_budget = MetricBudget.parse(settings.metric_budget or self.task.default_metric_budget)
        if settings.finetune_steps and self.task.finetune is None:
            raise BudgetError(f"task {self.task.name!r} has no finetune; use --finetune-steps 0")
        self.inputs = target_inputs(self.task, self.target)
        self.graph_args = graph_args(settings, self.task)
        self.steps: list[StepRecord] = []
        self.local = 1.0  # latency planners: measured / predicted latency at the last measurement

    # -- one measurement -------------------------------------------------------------------------------------
    def measure(self, model: nn.Module, name: str) -> tuple[Artifact, Latency]:
        artifact = build_artifact(model, self.inputs, self.runtime, self.work, name, self.target.precision)
        return artifact, self.runtime.latency(artifact.built, to_numpy(self.inputs))

    def cost_model(self, dense_model: nn.Module) -> CostModel:
        """The target's cost model of the dense model: from profiles/ when one with this key is stored, else
        measured (minutes) and stored; then calibrated on this run's own dense measurement too."""
        from edgeprune.measure.store import ProfileStore, profile_task

        self.log("cost model: reusing the stored one or measuring it (one profile per group and keep count)")
        result = profile_task(self.task, self.target, self.runtime, self.inputs, self.graph_args, ProfileStore(),
                              cost_model=True, stride=self.settings.cost_stride, log=self.log)
        assert result.cost is not None
        self.cost_path = result.cost_path
        return result.cost.calibrated([*result.cost.calibration.points, (result.cost.raw_ms({}), self.dense_ms)])

    def recalibrate(self, plan: Plan, measured_ms: float) -> None:
        """Every full measurement joins the cost model's calibration, and sets the local correction: the next plan
        aims at budget / (measured / predicted) of this one, since prediction errors are local."""
        self.cost = self.cost.calibrated([*self.cost.calibration.points, (self.cost.raw_ms(plan), measured_ms)])
        self.local = measured_ms / self.cost.predict_ms(plan)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {k: float(v) for k, v in self.task.evaluate(model).items()}

    def count(self, model: nn.Module) -> tuple[int, int]:
        macs, params = tp.utils.count_ops_and_params(model, self.inputs)
        return int(macs), int(params)

    def propose(self, model: nn.Module, plan: Plan, ratio: float) -> tuple[nn.Module, Plan, ChoiceInfo]:
        """The next candidate at ``ratio``: of the channels to remove (ratio strategies) or, for the knapsack, of the
        dense latency to remove, never aiming below the budget (before the local correction)."""
        s = self.settings
        # latency planners: the budget, corrected by how far off the last measured prediction was (errors are local)
        target_ms = max(self.budget_ms, self.dense_ms * (1.0 - ratio)) / self.local if s.plans_latency else None
        if s.strategy == "knapsack":
            return choose_for_latency(
                self.task, model, plan, self.cost, target_ms, inputs=self.inputs, granule=self.target.granule,
                flow_policy=s.flow_policy, flow_combine=s.flow_combine, component_ratios=s.component_ratios,
                component_shares=s.component_shares, seed=s.seed, max_group_ratio=s.max_ratio, best_effort=True,
                **self.graph_args)
        # a latency planner's ratio ramps its target up to 1; for the gradient it only sets where the search starts
        rho = min(ratio, s.max_ratio) if s.plans_latency else ratio
        return choose(s.strategy, self.task, model, plan, rho, inputs=self.inputs, granule=self.target.granule,
                      flow_policy=s.flow_policy, flow_combine=s.flow_combine, component_ratios=s.component_ratios,
                      epsilon=s.epsilon, seed=s.seed, max_group_ratio=s.max_ratio,
                      cost=self.cost if s.plans_latency else None, budget_ms=target_ms, **self.graph_args)

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Outcome:
        state = self.restore() if resume else None
        if state is None:
            model, plan, dense = self.dense_stage()
            ratio, step, rejected, best = 0.0, self.settings.step, set(), dense
            self.checkpoint(model, plan, ratio, step, rejected, best)
        else:
            model, plan, ratio, step, rejected, best = state
            dense = self.steps[0]
            self.log(f"resuming after step {self.steps[-1].index} (ratio {ratio:.3g})")
        if dense.latency_ms <= self.budget_ms:
            return self._outcome("met", "the dense model already meets both budgets", model, plan, dense, best)
        outcome = None
        while outcome is None:
            model, plan, ratio, step, best, outcome = self.step(model, plan, ratio, step, rejected, best, dense)
            self.checkpoint(model, plan, ratio, step, rejected, best)
        return outcome

    def dense_stage(self) -> tuple[nn.Module, Plan, StepRecord]:
        """Evaluate and measure the dense model; fix the budgets' thresholds (and, for the knapsack, the cost model)."""
        start = time.perf_counter()
        dense_model = self.task.build()
        plan = Plan.dense(self.settings.task, ComponentGraph(copy.deepcopy(dense_model), self.inputs, **self.graph_args))
        self.dense_hash = state_dict_hash(dense_model)
        dense_metrics = self.evaluate(dense_model)
        self.metric_budget.check_metric(dense_metrics)
        self.dense_value = dense_metrics[self.metric_budget.metric]
        if not self.metric_budget.holds(self.dense_value, self.dense_value):
            raise BudgetError(
                f"infeasible budgets: the dense model's {self.metric_budget.metric} is {self.dense_value:.4g}, "
                f"already outside the metric budget {self.metric_budget}"
            )
        self.log(f"dense {self.metric_budget.metric}={self.dense_value:.4g}; measuring dense latency")
        self.dense_artifact, dense_latency = self.measure(dense_model, "dense")
        macs, params = self.count(dense_model)
        dense = StepRecord(index=0, ratio=0.0, status="dense", metrics=dense_metrics, latency=dense_latency.to_dict(),
                           macs=macs, params=params, seconds=time.perf_counter() - start, plan_digest=plan.digest())
        self.best_artifact = self.dense_artifact
        self.steps.append(dense)
        self.budget_ms = self.latency_budget.threshold_ms(dense_latency.median_ms)
        self.dense_ms = dense_latency.median_ms
        if self.settings.plans_latency:
            self.cost = self.cost_model(dense_model)
            self.local = self.dense_ms / self.cost.predict_ms({})
        self.metric_threshold = self.metric_budget.threshold(self.dense_value)
        self.log(f"dense latency {dense_latency.median_ms:.4g} ms; budget {self.budget_ms:.4g} ms")
        return dense_model, plan, dense

    # -- checkpoints: every step lands on disk, so an interrupted run resumes where it stopped ------------------
    def checkpoint(self, model: nn.Module, plan: Plan, ratio: float, step: float, rejected: set[str],
                   best: StepRecord) -> None:
        folder = self.work.parent
        torch.save(model.state_dict(), folder / ".checkpoint.pt.tmp")
        state = {
            "run_key": self.key, "ratio": ratio, "step": step, "rejected": sorted(rejected), "best": best.index,
            "steps": [s.model_dump() for s in self.steps], "plan": plan.model_dump(mode="json"),
            "dense_value": self.dense_value, "dense_hash": self.dense_hash, "dense_ms": self.dense_ms,
            "budget_ms": self.budget_ms, "metric_threshold": self.metric_threshold,
            "dense_artifact": [str(self.dense_artifact.exported), str(self.dense_artifact.built),
                               self.dense_artifact.max_abs_error],
            "cost": self.cost.model_dump(mode="json") if self.settings.plans_latency else None,
            "cost_path": str(self.cost_path) if self.settings.plans_latency else None,
            "local": self.local,
        }
        (folder / ".checkpoint.json.tmp").write_text(json.dumps(state))
        (folder / ".checkpoint.pt.tmp").replace(folder / CHECKPOINT_WEIGHTS)
        (folder / ".checkpoint.json.tmp").replace(folder / CHECKPOINT)

    def restore(self) -> tuple[nn.Module, Plan, float, float, set[str], StepRecord] | None:
        path = self.work.parent / CHECKPOINT
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if state["run_key"] != self.key:
            raise RunFolderError(f"{path.parent} holds an interrupted run of other settings; remove it to start over")
        self.steps = [StepRecord.model_validate(s) for s in state["steps"]]
        self.dense_value, self.dense_hash, self.dense_ms = state["dense_value"], state["dense_hash"], state["dense_ms"]
        self.budget_ms, self.metric_threshold = state["budget_ms"], state["metric_threshold"]
        exported, built, error = state["dense_artifact"]
        self.dense_artifact = Artifact(Path(exported), Path(built), error)
        if state["cost"] is not None:
            self.cost = CostModel.model_validate(state["cost"])
            self.cost_path = Path(state["cost_path"])
            self.local = state["local"]
        plan = Plan.model_validate(state["plan"])
        model = plan.apply(self.task.build(), self.inputs, **self.graph_args)
        model.load_state_dict(torch.load(self.work.parent / CHECKPOINT_WEIGHTS, weights_only=True))
        best = next(s for s in self.steps if s.index == state["best"])
        return model.eval(), plan, state["ratio"], state["step"], set(state["rejected"]), best

    def _outcome(self, status: Literal["met", "infeasible"], reason: str, model: nn.Module, plan: Plan,
                 dense: StepRecord, final: StepRecord) -> Outcome:
        graph = ComponentGraph(copy.deepcopy(model), self.inputs, **self.graph_args)
        return Outcome(status, reason, model, plan, graph, self.best_artifact, dense, final)

    def roll_back(self, record: StepRecord, note: str, t0: float, rejected: set[str]) -> None:
        """Record ``record`` as rolled back for ``note``; its plan is not proposed again from this model."""
        record.status, record.note, record.seconds = "rolled-back", note, time.perf_counter() - t0
        self.steps.append(record)
        rejected.add(record.plan_digest)
        self.log(f"step {record.index}: ratio {record.ratio:.3g} rolled back ({note})")

    def step(self, model: nn.Module, plan: Plan, ratio: float, step: float, rejected: set[str], best: StepRecord,
             dense: StepRecord) -> tuple[nn.Module, Plan, float, float, StepRecord, Outcome | None]:
        """One proposal: returns the (possibly new) model, plan, ratio, step size and best step, and the outcome
        when the loop ends here. ``rejected`` (plans rolled back from this model) is updated in place."""
        planned = self.settings.plans_latency
        if ratio >= self.settings.max_ratio - 1e-9 and not planned:  # a latency planner's ratio only ramps its target
            reason = (f"latency budget not reached: at the largest pruning ratio {self.settings.max_ratio:g} "
                      f"the model measures {best.latency_ms:.4g} ms > {self.budget_ms:.4g} ms")
            return model, plan, ratio, step, best, self._outcome("infeasible", reason, model, plan, dense, best)
        metric_wall = (f"the metric budget breaks before the latency budget holds: the best plan measures "
                       f"{best.latency_ms:.4g} ms > {self.budget_ms:.4g} ms with {self.metric_budget.metric}="
                       f"{best.metrics[self.metric_budget.metric]:.4g}")
        if step < self.settings.min_step:
            return model, plan, ratio, step, best, self._outcome("infeasible", metric_wall, model, plan, dense, best)
        # a ratio strategy's ratio is the channels cut, capped like every group; a latency planner's is the share of
        # the dense latency it aims to remove, ramped until its target is the budget itself
        trial = min(1.0 if planned else self.settings.max_ratio, ratio + step)
        t0 = time.perf_counter()
        try:
            candidate, candidate_plan, choice = self.propose(model, plan, trial)
        except CoefficientError as exc:  # e.g. the sparsity band is unreachable from this plan at the granule
            if planned:  # bounds, not step size, keep the budget out of reach
                return model, plan, ratio, step, best, self._outcome("infeasible", str(exc), model, plan, dense, best)
            self.steps.append(StepRecord(index=len(self.steps), ratio=trial, status="rolled-back", metrics={}, note=str(exc),
                                         seconds=time.perf_counter() - t0))
            self.log(f"step at ratio {trial:.3g} not proposed: {exc}")
            return model, plan, ratio, step / 2, best, None
        if candidate_plan == plan:  # the granule swallowed this increment
            if planned and self.dense_ms * (1.0 - trial) <= self.budget_ms:
                protected = sum(1 for g in plan.groups.values() if g.kind == "flow") \
                    if self.settings.flow_policy == "protect" else 0
                hint = (f"; {protected} interface (flow) groups keep their width under --flow-policy protect, "
                        f"--flow-policy joint lets the planner cut them") if protected else ""
                reason = (f"the cost model (corrected ×{self.local:.3f} by the last measurement) finds no further cut "
                          f"that saves time within the groups' bounds; the best plan measures {best.latency_ms:.4g} ms "
                          f"> {self.budget_ms:.4g} ms{hint}")
                return model, plan, ratio, step, best, self._outcome("infeasible", reason, model, plan, dense, best)
            return model, plan, trial, step, best, None
        if candidate_plan.digest() in rejected:  # the granule made this the plan already rolled back
            if planned and self.dense_ms * (1.0 - ratio) <= self.budget_ms:
                # the model already came from a step aimed at the budget itself: every smaller step aims there
                # again and plans the same (deterministic) cut
                return model, plan, ratio, step, best, self._outcome("infeasible", metric_wall, model, plan, dense, best)
            return model, plan, ratio, step / 2, best, None
        if self.settings.finetune_steps:
            torch.manual_seed(self.settings.seed)
            self.task.finetune(candidate, self.settings.finetune_steps)  # type: ignore[misc]
            candidate.eval()
        metrics = self.evaluate(candidate)
        value = metrics[self.metric_budget.metric]
        record = StepRecord(index=len(self.steps), ratio=trial, status="accepted", metrics=metrics,
                            channel_sparsity=candidate_plan.channel_sparsity(), plan_digest=candidate_plan.digest(),
                            search=choice.summary())
        if not self.metric_budget.holds(value, self.dense_value):
            self.roll_back(record, f"{self.metric_budget.metric}={value:.4g} breaks {self.metric_budget}", t0, rejected)
            return model, plan, ratio, step / 2, best, None
        artifact, latency = self.measure(candidate, f"step{record.index}")
        record.latency = latency.to_dict()
        if planned:
            local = self.local
            self.recalibrate(candidate_plan, latency.median_ms)
            if latency.median_ms >= best.latency_ms:
                # planned to be faster, measured no faster: the runtime's kernels for this combination of widths
                # (one cut at a time, the cost model cannot see them). Its point stays in the calibration, but it
                # must not steer the next plan, and nothing is built on a slower model. The metric held, so the
                # ramp goes on past it (a smaller step would plan the same widths again, a larger one others).
                self.local = local
                self.roll_back(record, f"measured {latency.median_ms:.4g} ms, no faster than step {best.index}'s "
                                       f"{best.latency_ms:.4g} ms", t0, rejected)
                return model, plan, trial, step, best, None
        record.macs, record.params = self.count(candidate)
        record.seconds = time.perf_counter() - t0
        self.steps.append(record)
        self.log(f"step {record.index}: ratio {trial:.3g} accepted, {self.metric_budget.metric}={value:.4g}, "
                 f"{latency.median_ms:.4g} ms")
        self.best_artifact = artifact
        rejected.clear()  # a new starting model: a plan rejected from the old one may hold from this one
        done = self._outcome("met", "both budgets hold", candidate, candidate_plan, dense, record) \
            if latency.median_ms <= self.budget_ms else None
        return candidate, candidate_plan, trial, step, record, done


