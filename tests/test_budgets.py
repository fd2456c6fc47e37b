import pytest

from edgeprune.core.budgets import BudgetError, LatencyBudget, MetricBudget


@pytest.mark.parametrize(
    ("text", "ms", "relative"),
    [("2.5ms", 2.5, False), ("800us", 0.8, False), ("0.5x", 0.5, True), ("3", 3.0, False), (" 1.5e-1 s", 150.0, False)],
)
def test_latency_budget_parses(text: str, ms: float, relative: bool) -> None:
    budget = LatencyBudget.parse(text)
    assert budget.value == pytest.approx(ms) and budget.relative is relative


def test_relative_latency_budget_resolves_against_dense() -> None:
    assert LatencyBudget.parse("0.5x").threshold_ms(3.0) == pytest.approx(1.5)
    assert LatencyBudget.parse("2ms").threshold_ms(3.0) == pytest.approx(2.0)


@pytest.mark.parametrize("text", ["fast", "-1ms", "0ms", "1.5x", "2 parsecs", ""])
def test_bad_latency_budget_is_an_error(text: str) -> None:
    with pytest.raises(BudgetError):
        LatencyBudget.parse(text)


def test_metric_budget_absolute_and_relative() -> None:
    budget = MetricBudget.parse("psnr>=27")
    assert (budget.metric, budget.op, budget.value, budget.relative) == ("psnr", ">=", 27.0, False)
    assert budget.holds(27.0, dense=30.0) and not budget.holds(26.99, dense=30.0)
    relative = MetricBudget.parse("psnr >= 0.95x")
    assert relative.threshold(30.0) == pytest.approx(28.5)
    assert MetricBudget.parse("return>=-250").holds(-200.0, dense=-180.0)
    assert not MetricBudget.parse("mse<0.01").holds(0.02, dense=0.005)


@pytest.mark.parametrize("text", ["psnr", "psnr=>27", ">=27", "psnr>=abc", "psnr>=27dB"])
def test_unparsable_metric_budget_is_an_error(text: str) -> None:
    with pytest.raises(BudgetError, match="cannot parse metric budget"):
        MetricBudget.parse(text)


def test_relative_metric_budget_needs_positive_dense_value() -> None:
    with pytest.raises(BudgetError, match="positive dense"):
        MetricBudget.parse("return>=0.95x").threshold(-180.0)


def test_metric_must_be_reported_by_the_task() -> None:
    with pytest.raises(BudgetError, match="it reports: mse, psnr"):
        MetricBudget.parse("ssim>=0.9").check_metric({"psnr": 30.0, "mse": 0.001})
