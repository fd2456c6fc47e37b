"""The benchmark page: every strategy side by side, from the CSVs the benchmarks wrote. ``python bench/compare.py``

Not a benchmark itself (it measures nothing, and ``make bench`` runs it after the benchmarks): it reads
``bench/results/*.csv`` and writes ``bench/results/index.md``, a self-contained ``index.html`` and ``figures/``:
the headline table (latency budgets: verdict, measured speed-up and metric per method), metric against measured
speed-up per task and budget with the Pareto front, the soft-coefficient sweep and the cost model's accuracy.
``--headline`` prints only the headline table and where its numbers come from; ``--readme README.md`` also writes
that block into the README (between its headline markers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from edgeprune.core.budgets import LatencyBudget, MetricBudget
from edgeprune.report.figures import pareto_figure, sweep_figure
from edgeprune.report.page import Page, check, fmt, fmt_ms, markdown_table, staging

RESULTS = Path(__file__).parent / "results"
#: the README's generated block lies between these two lines
README_START = "<!-- headline: start (written by `python bench/compare.py --readme README.md`; edits here are lost) -->"
README_END = "<!-- headline: end -->"
LEGEND = ("Each cell: ✓ both budgets hold / ✗ one breaks, measured speed-up over dense (measured in alternation with "
          "it), the task's metric; where a row was run with several seeds, the verdict most of them reached, how many "
          "met both budgets, and the medians.")


def intro(results: Path, name: str) -> list[str]:
    """A benchmark's own account of how it was run, as Markdown blocks: the title and first paragraph (or list)
    of its Markdown."""
    path = results / f"{name}.md"
    if not path.is_file():
        return [f"(no {name}.md beside the CSV)"]
    blocks = [b.strip() for b in path.read_text().split("\n\n") if b.strip()]
    title = f"**{blocks[0].removeprefix('# ')}.**"
    first = blocks[1] if len(blocks) > 1 and not blocks[1].startswith(("|", "#")) else ""
    if not first:
        return [title]
    return [title, first] if first.startswith("- ") else [f"{title} {first}"]


def _verdicts(latency: pd.DataFrame) -> pd.DataFrame:
    """Per row of latency_budget.csv: measured speed-up, both budgets' verdict, the thresholds."""
    frame = latency.copy()  # speedup: measured relative to the dense model (see latency_budget.py)
    frame["met"] = frame["metric_holds"].astype(bool) & frame["latency_holds"].astype(bool)
    frame["required_speedup"] = [1.0 / LatencyBudget.parse(b).value for b in frame["budget"]]
    budgets = [MetricBudget.parse(b) for b in frame["metric_budget"]]
    frame["metric_threshold"] = [b.threshold(d) for b, d in zip(budgets, frame["dense_metric"], strict=True)]
    frame["metric_name"] = [b.metric for b in budgets]
    frame["higher_is_better"] = [b.op.startswith(">") for b in budgets]
    return frame


def method_cell(runs: pd.DataFrame) -> str:
    """One method's cell of a task and budget: ✓/✗, measured speed-up, metric — of its one run, or over the runs of
    several seeds the verdict most of them reached (with how many met) and the medians."""
    if len(runs) == 1:
        run = runs.iloc[0]
        return f"{check(bool(run['met']))} {run['speedup']:.2f}× · {fmt(run['metric'])}"
    return (f"{check(mostly_met(runs))} {int(runs['met'].sum())}/{len(runs)} · {runs['speedup'].median():.2f}× · "
            f"{fmt(runs['metric'].median())}")


def mostly_met(runs: pd.DataFrame) -> bool:
    """The verdict of a method's runs over several seeds: both budgets met in most of them."""
    return 2 * int(runs["met"].sum()) > len(runs)


def headline_table(latency: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """A row per task and latency budget, a column per method: ✓/✗ (both budgets hold), measured speed-up,
    metric (:func:`method_cell`)."""
    frame = _verdicts(latency)
    methods = list(dict.fromkeys(frame["method"]))
    rows = []
    for (task, budget), cell in frame.groupby(["task", "budget"], sort=False):
        first = cell.iloc[0]
        by_method = {method: method_cell(runs) for method, runs in cell.groupby("method", sort=False)}
        rows.append([task, budget, first["metric_budget"], fmt(first["dense_metric"]),
                     *(by_method.get(m, "—") for m in methods)])
    return ["task", "latency budget", "metric budget", "dense metric", *methods], rows


def headline(latency: pd.DataFrame) -> str:
    """The headline table in Markdown."""
    return markdown_table(*headline_table(latency))


MARGINS_LEGEND = ("Margin: edgeprune's median metric minus that of the best baseline (every other method but "
                  "edgeprune's own select) whose runs mostly met both budgets (positive: edgeprune's is better; for "
                  "a metric where lower is better, the sign is turned), beside the spread of edgeprune's own runs "
                  "(largest − smallest metric over its seeds): a margin inside that spread is not a ranking. Paired: "
                  "of the seeds both ran, in how many edgeprune's run met both budgets with a metric at least that "
                  "baseline's run of the same seed. The last column is the same margin for select (the default until "
                  "2026-12-04: the knapsack raced against two rankings), against the same baseline.")


def signed_margin(runs: pd.DataFrame, best: float, sign: float, method: str) -> str:
    """``runs``' median metric minus ``best``, signed so that positive favours ``runs``; no margin for a method whose
    runs mostly did not meet the budgets."""
    return f"{sign * (float(runs['metric'].median()) - best):+.4g}" if mostly_met(runs) else f"{method} does not meet"


def paired(mine: pd.DataFrame, theirs: pd.DataFrame, sign: float) -> str:
    """Seed by seed: in how many of the seeds both ran ``mine`` met both budgets with a metric at least ``theirs``'
    (a median hides which way each pair went, and so whether a margin inside the spread is noise)."""
    both = mine.merge(theirs[["seed", "metric"]], on="seed", suffixes=("", "_theirs"))
    ahead = both["met"] & (sign * (both["metric"] - both["metric_theirs"]) >= 0)
    return f"{int(ahead.sum())}/{len(both)}"


def margins_table(latency: pd.DataFrame, ours: str = "edgeprune", own: tuple[str, ...] = ("select",)
                  ) -> tuple[list[str], list[list[str]]]:
    """Per task and latency budget: ``ours`` against the best baseline (a method not in ``own``, edgeprune's other
    strategies) that meets both budgets (in most of its runs), by median metric — what the issue's "metric ≥ every
    baseline that also meets" asks, with the run-to-run spread that says whether a margin means anything — and each
    of ``own`` against the same baseline."""
    frame = _verdicts(latency)
    rows = []
    for (task, budget), cell in frame.groupby(["task", "budget"], sort=False):
        sign = 1.0 if cell["higher_is_better"].iloc[0] else -1.0
        runs = dict(tuple(cell.groupby("method", sort=False)))
        if ours not in runs:
            continue
        mine, others = runs.pop(ours), {m: runs.pop(m) for m in own if m in runs}
        spread = fmt(mine["metric"].max() - mine["metric"].min()) if len(mine) > 1 else "— (one run)"
        meeting = {m: float(r["metric"].median()) for m, r in runs.items() if mostly_met(r)}
        if not meeting:
            rows.append([task, budget, method_cell(mine), "none meets", "—", "—", spread, *("—" for _ in own)])
            continue
        best = max(meeting, key=lambda m: sign * meeting[m])
        rows.append([task, budget, method_cell(mine), f"{best} {fmt(meeting[best])}",
                     signed_margin(mine, meeting[best], sign, ours), paired(mine, runs[best], sign), spread,
                     *(signed_margin(others[m], meeting[best], sign, m) if m in others else "—" for m in own)])
    return (["task", "latency budget", ours, "best baseline that meets", "margin", "paired", f"{ours}'s spread",
             *(f"{m}'s margin" for m in own)], rows)


def headline_block(results: Path) -> str:
    """The README's section body: the table, its legend and the commands that reproduce it."""
    latency = pd.read_csv(results / "latency_budget.csv")
    return (f"{headline(latency)}\n\n{LEGEND}\n\n{markdown_table(*margins_table(latency))}\n\n{MARGINS_LEGEND}"
            f"\n\nReproduce: " + intro(results, "latency_budget")[-1].split("** ", 1)[-1] +
            "\n\nRefresh: `make bench` (every benchmark, then this table and the page), or after rerunning one "
            "benchmark `make bench-page`. Every strategy side by side, with figures: "
            "[bench/results/index.md](bench/results/index.md) (self-contained HTML: `bench/results/index.html`).")


def update_readme(readme: Path, block: str) -> None:
    """Replace what lies between the README's headline markers with ``block`` (written atomically)."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no block between {README_START!r} and {README_END!r}")
    tmp = readme.with_name(f".{readme.name}.tmp")
    tmp.write_text(f"{text[:start + len(README_START)]}\n{block}\n{text[end:]}")
    tmp.replace(readme)


def cost_accuracy(cost: pd.DataFrame) -> list[list[str]]:
    """Per task: prediction error of the cost model and of a MAC-proportional guess on unseen variants (against
    latencies measured relative to the dense model, see cost_model.md), table points measured and build time."""
    rows = []
    for task, rows_ in cost.groupby("task", sort=False):
        error, mac = rows_["paired_error"], rows_["mac_paired_error"]
        rows.append([task, str(len(rows_)), f"{100 * error.median():.1f} %", f"{100 * error.quantile(0.9):.1f} %",
                     f"{100 * error.max():.1f} %", f"{100 * mac.median():.1f} %",
                     f"{int(rows_['new_table_points'].iloc[0])} in {int(rows_['sweep_graphs'].iloc[0])}",
                     f"{rows_['cost_model_build_s'].iloc[0]:.0f} s"])
    return rows


def soft_curves(soft: pd.DataFrame) -> pd.DataFrame:
    """soft_coefficients.csv as one metric per task (the columns ``NAME_oneshot`` / ``NAME_finetuned`` it fills)."""
    parts = []
    for task, rows in soft.groupby("task", sort=False):
        name = next(c.removesuffix("_oneshot") for c in rows.columns if c.endswith("_oneshot") and rows[c].notna().any())
        parts.append(pd.DataFrame({"task": task, "x": rows["rho"], "method": rows["method"],
                                   "oneshot": rows[f"{name}_oneshot"], "finetuned": rows[f"{name}_finetuned"],
                                   "metric_name": name, "x_name": "target channel sparsity ρ"}))
    return pd.concat(parts, ignore_index=True)


def build_page(results: Path, figures: Path) -> Page:
    page = Page("edgeprune benchmarks")
    page.text("Every number here is read from `bench/results/*.csv`, written by the scripts in `bench/` "
              "(`make bench` runs them all, then this page: `python bench/compare.py`). Latencies are measured.")
    latency_csv = results / "latency_budget.csv"
    if latency_csv.is_file():
        latency = pd.read_csv(latency_csv)
        page.heading("Latency budgets: strategies side by side")
        for block in intro(results, "latency_budget"):
            page.text(block)
        page.table(*headline_table(latency))
        page.text(f"{LEGEND} Details: [latency_budget.md](latency_budget.md).")
        page.table(*margins_table(latency))
        page.text(MARGINS_LEGEND)
        points = _verdicts(latency)
        dense = points.drop_duplicates(["task", "budget"]).assign(
            method="dense", speedup=1.0, metric=lambda f: f["dense_metric"], met=False)
        page.figure(pareto_figure(pd.concat([dense, points], ignore_index=True), figures / "pareto.png"),
                    "metric vs measured speed-up per task and latency budget; filled: both budgets hold; "
                    "dashed: the speed-up the latency budget asks; dotted: the metric budget")
    soft_csv = results / "soft_coefficients.csv"
    if soft_csv.is_file():
        page.heading("Soft coefficients at equal channel sparsity")
        for block in intro(results, "soft_coefficients"):
            page.text(block)
        page.figure(sweep_figure(soft_curves(pd.read_csv(soft_csv)), figures / "soft_coefficients.png",
                                 "metric vs target sparsity per coefficient strategy (solid: fine-tuned; dashed: "
                                 "one-shot)"),
                    "each strategy prunes the dense model once at ρ, then fine-tunes")
        page.text("Details: [soft_coefficients.md](soft_coefficients.md).")
    cost_csv = results / "cost_model.csv"
    if cost_csv.is_file():
        page.heading("Cost model accuracy")
        for block in intro(results, "cost_model"):
            page.text(block)
        page.table(["task", "variants", "median error", "p90 error", "max error", "MAC-proportional median error",
                    "new table points in sweeps", "build"], cost_accuracy(pd.read_csv(cost_csv)))
    component_csv = results / "component_vs_depgraph.csv"
    if component_csv.is_file():
        frame = pd.read_csv(component_csv)
        page.heading("Component-aware vs plain DepGraph pruning")
        for block in intro(results, "component_vs_depgraph"):
            page.text(block)
        page.text("Details: [component_vs_depgraph.md](component_vs_depgraph.md).")
        metrics = [c for c in ("psnr", "return", "accuracy") if c in frame]
        page.table(["task", "ratio", "method", "metric", "latency", "parameter sparsity", "outputs intact"], [
            [r["task"], f"{r['ratio']:.3g}", r["method"],
             next(f"{m} {fmt(r[m])}" for m in metrics if pd.notna(r[m])), fmt_ms(r["latency_ms"]),
             f"{r['param_sparsity']:.1%}", "yes" if r["outputs_intact"] else "**no**"]
            for _, r in frame.iterrows()
        ])
    return page


def write_comparison(results: Path = RESULTS) -> Path:
    """index.md, index.html and figures/ in ``results``; returns index.md's path."""
    with staging(results) as tmp:
        return build_page(results, tmp).write(results, "index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmarks' CSVs")
    parser.add_argument("--headline", action="store_true", help="print the README's headline block and stop")
    parser.add_argument("--readme", type=Path, help="also write the headline block into this README, between its "
                                                     "headline markers")
    args = parser.parse_args()
    if args.headline:
        print(headline_block(args.results))
        return
    path = write_comparison(args.results)
    print(f"wrote {path} and {path.with_suffix('.html')} (figures in {path.parent / 'figures'})")
    if args.readme:
        update_readme(args.readme, headline_block(args.results))
        print(f"updated the headline table in {args.readme}")


if __name__ == "__main__":
    main()
