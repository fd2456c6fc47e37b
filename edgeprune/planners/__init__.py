"""Planners: given a step's context and target, propose which channels go. Each planner is one module that
registers itself; adding one is a file here and its import line below (the order is the order ``--help`` lists)."""

# isort: off
from edgeprune.planners import uniform, global_rank, grid, gradient, knapsack, baselines, select  # noqa: F401  (each registers itself)
# isort: on
from edgeprune.planners.base import (
                                     PLANNERS,
                                     LatencyTarget,
                                     Planner,
                                     PlannerError,
                                     Proposal,
                                     SparsityTarget,
                                     StepContext,
                                     StepTarget,
                                     get_planner,
                                     plans_latency,
)
from edgeprune.planners.gradient import GradientSettings
from edgeprune.planners.grid import GridSettings
from edgeprune.planners.space import policy_sparsity

#: What ``edgeprune tune`` plans with unless told otherwise: the latency knapsack on the target's measured cost model
#: (least application importance lost per predicted millisecond). Over three seeds it met both budgets on every row of
#: the bench and its metric was at least every meeting baseline's on all four Fashion-MNIST rows. Against ``select``
#: (which races it against two rankings), measured side by side, it is ahead on the Fashion-MNIST networks (9 of 12
#: seed pairs) and behind on the small autoencoder and pendulum agent, and it runs faster
#: (bench/results/latency_budget.md, 2026-12-04)
DEFAULT_STRATEGY = "knapsack"

__all__ = ["DEFAULT_STRATEGY", "PLANNERS", "GradientSettings", "GridSettings", "LatencyTarget", "Planner", "PlannerError", "Proposal",
           "SparsityTarget", "StepContext", "StepTarget", "get_planner", "plans_latency", "policy_sparsity"]
