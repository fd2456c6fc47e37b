"""Budgets: the latency budget (``2.5ms``, ``800us``, ``0.5x`` of dense) and the metric budget (``psnr>=27``).

Relative budgets resolve against the dense model's measured numbers, so a run records both the expression the
user wrote and the absolute threshold it meant.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_METRIC = re.compile(rf"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|>|<)\s*({_NUMBER})\s*(x)?\s*$")
_LATENCY = re.compile(rf"^\s*({_NUMBER})\s*(ms|us|µs|s|x)?\s*$")


class BudgetError(ValueError):
    """A budget expression cannot be parsed or does not fit the task."""


@dataclass(frozen=True)
class MetricBudget:
    """``metric OP value``; with a trailing ``x`` the value is a multiple of the dense model's metric."""

    metric: str
    op: str
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> MetricBudget:
        match = _METRIC.match(text)
        if not match:
            raise BudgetError(f"cannot parse metric budget {text!r}; write e.g. 'psnr>=27', 'return>=-250' or 'psnr>=0.95x'")
        name, op, value, rel = match.groups()
        return cls(name, op, float(value), rel is not None)

    def threshold(self, dense: float) -> float:
        if not self.relative:
            return self.value
        if dense <= 0:
            raise BudgetError(f"a relative budget ({self}) needs a positive dense {self.metric}, got {dense:.4g}; use an absolute value")
        return self.value * dense

    def holds(self, value: float, dense: float) -> bool:
        return bool(_OPS[self.op](value, self.threshold(dense)))

    def headroom(self, value: float, dense: float) -> float:
        """How far ``value`` is from the threshold on the side where the budget holds (negative: broken)."""
        margin = value - self.threshold(dense)
        return margin if self.op in (">=", ">") else -margin

    def check_metric(self, available: dict[str, float]) -> None:
        if self.metric not in available:
            raise BudgetError(f"metric {self.metric!r} is not reported by the task; it reports: {', '.join(sorted(available))}")

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'x' if self.relative else ''}"


@dataclass(frozen=True)
class LatencyBudget:
    """A latency ceiling in milliseconds, or a fraction of the dense model's measured latency (``0.5x``)."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> LatencyBudget:
        match = _LATENCY.match(text)
        if not match:
            raise BudgetError(f"cannot parse latency budget {text!r}; write e.g. '2.5ms', '800us' or '0.5x'")
        value, unit = float(match.group(1)), match.group(2) or "ms"
        if value <= 0:
            raise BudgetError(f"latency budget must be positive, got {text!r}")
        if unit == "x":
            if value >= 1:
                raise BudgetError(f"a relative latency budget must be below 1x dense, got {text!r}")
            return cls(value, True)
        return cls(value * {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}[unit])

    def threshold_ms(self, dense_ms: float) -> float:
        return self.value * dense_ms if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:g}x" if self.relative else f"{self.value:g}ms"
