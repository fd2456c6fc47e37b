"""``magnitude``: the same ratio for every group the flow policy lets go, lowest-magnitude channels first.

The baseline every other planner is measured against; it asks nothing of the task and does not enforce the
sparsity band (after the granule it lands near rho, and says so when it is outside rho ± epsilon).
"""

from __future__ import annotations

import time
from typing import ClassVar

from edgeprune.planners.base import Proposal, SparsityTarget, StepContext, StepTarget, check_target, register
from edgeprune.planners.space import coefficients, policy_sparsity
from edgeprune.prune.importance import MagnitudeImportance
from edgeprune.prune.plan import cut_to_counts, uniform_counts


@register
class UniformPlanner:
    name: ClassVar[str] = "magnitude"
    summary: ClassVar[str] = "the same ratio in every group, lowest magnitude first"
    aims: ClassVar[type] = SparsityTarget
    accepts: ClassVar[tuple[type, ...]] = (SparsityTarget,)

    def propose(self, context: StepContext, target: StepTarget) -> Proposal:
        check_target(self, target)
        assert isinstance(target, SparsityTarget)
        start = time.perf_counter()
        rho, epsilon = target.rho, target.epsilon
        counts = uniform_counts(context.plan, rho, context.granule, context.flow_policy, context.component_ratios)
        graph = context.fork()
        plan = cut_to_counts(graph, context.plan, counts, MagnitudeImportance(context.flow_policy, context.flow_combine))
        sparsity = policy_sparsity(plan, context.flow_policy)
        within = abs(sparsity - rho) <= epsilon + 1e-9
        notes = () if within else ((f"uniform {rho:g} lands at sparsity {sparsity:.4f} after the granule, outside "
                                   f"± {epsilon:g}: magnitude does not enforce the band"),)
        return Proposal(planner=self.name, target=target, model=graph.model, graph=graph, plan=plan,
                        sparsity=sparsity, within_tolerance=within, coefficients=coefficients(plan),
                        searched={key: rho for key in counts}, importance="magnitude",
                        search_s=time.perf_counter() - start, notes=notes)
