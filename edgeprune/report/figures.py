"""Figures (matplotlib, no display needed): the component graph, and the report's and benchmark page's plots.

Every function takes plain tables (DataFrames or small dataclasses) rather than manifests, so the report and
``bench/compare.py`` draw from the same code, and writes one PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from edgeprune.prune.graph import ComponentGraph

DENSE, PRUNED, ROLLED_BACK, BUDGET = "#718096", "#2b6cb0", "#c53030", "#c05621"
DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)
    return path


def component_graph_figure(graph: ComponentGraph, path: Path, title: str = "") -> Path:
    """Components on a circle (box: intra groups and channels), an arrow per flow group producer → consumer."""
    names = list(graph.components)
    angle = {n: math.pi / 2 - 2 * math.pi * i / max(1, len(names)) for i, n in enumerate(names)}
    pos = {n: (math.cos(a), math.sin(a)) for n, a in angle.items()}
    fig, ax = plt.subplots(figsize=(7, 6))
    for name in names:
        intra = [g for g in graph.groups.values() if g.kind == "intra" and g.components == (name,)]
        x, y = pos[name]
        ax.text(x, y, f"{name}\n{len(intra)} groups, {sum(g.width for g in intra)} ch", ha="center", va="center",
                fontsize=10, bbox={"boxstyle": "round,pad=0.5", "fc": "#dbe9f6", "ec": "#2b6cb0"})
    flows = [g for g in graph.groups.values() if g.kind == "flow"]
    for i, group in enumerate(flows):
        for src in group.producers:
            for dst in (c for c in group.components if c != src):
                bend = 0.15 + 0.1 * (i % 3)
                arrow = FancyArrowPatch(pos[src], pos[dst], connectionstyle=f"arc3,rad={bend}", arrowstyle="-|>",
                                        mutation_scale=14, color="#c05621", lw=1.4, shrinkA=38, shrinkB=38)
                ax.add_patch(arrow)
                mx, my = (pos[src][0] + pos[dst][0]) / 2, (pos[src][1] + pos[dst][1]) / 2
                ax.text(mx, my + bend / 2, f"{group.key} ({group.width})", fontsize=7, color="#c05621", ha="center")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or "components and inter-component flows")
    return _save(fig, path)


def steps_figure(steps: pd.DataFrame, metric: str, latency_budget_ms: float, metric_threshold: float,
                 higher_is_better: bool, path: Path, title: str = "") -> Path:
    """The loop's path: metric against measured latency (left, measured steps joined in order, the region where
    both budgets hold shaded), and metric and latency over the step number (right, rolled-back steps marked ✗).

    ``steps``: one row per step with ``index``, ``status`` (dense / accepted / rolled-back), ``metric`` and
    ``latency_ms`` (NaN where the step was not measured) and ``final`` (the step the run ends on).
    """
    fig = plt.figure(figsize=(12, 5.2))
    grid = fig.add_gridspec(2, 2, width_ratios=(1.15, 1))
    ax, ax_metric, ax_latency = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    measured = steps[steps["latency_ms"].notna()]
    kept = measured[measured["status"] != "rolled-back"]  # a step rolled back for measuring no faster is measured
    ax.plot(kept["latency_ms"], kept["metric"], color=PRUNED, lw=1, alpha=0.5, zorder=1)
    for row in measured.itertuples():
        color = {"dense": DENSE, "rolled-back": ROLLED_BACK}.get(row.status, PRUNED)
        marker = "*" if row.final else ("x" if row.status == "rolled-back" else "o")
        edge = {"edgecolor": "black"} if row.final else {}  # an unfilled ✗ takes no edge colour
        ax.scatter(row.latency_ms, row.metric, s=110 if row.final else 45, marker=marker, color=color, zorder=3, **edge)
        ax.annotate(str(row.index), (row.latency_ms, row.metric), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(latency_budget_ms, color=BUDGET, ls="--", lw=1.2)
    ax.axhline(metric_threshold, color=BUDGET, ls=":", lw=1.2)
    lo, hi = ax.get_ylim()
    left = ax.get_xlim()[0]
    ax.fill_between([left, latency_budget_ms], metric_threshold, hi if higher_is_better else lo, color="#c6f6d5",
                    alpha=0.5, zorder=0, label="both budgets hold")
    ax.set_xlim(left=left)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms, median)")
    ax.set_ylabel(metric)
    ax.set_title("metric vs measured latency (step numbers)")
    ax.legend(handles=[
        Line2D([], [], marker="o", ls="", color=DENSE, label="dense"),
        Line2D([], [], marker="o", ls="", color=PRUNED, label="accepted step"),
        Line2D([], [], marker="*", ls="", color=PRUNED, markeredgecolor="black", markersize=11, label="final"),
        Line2D([], [], color=BUDGET, ls="--", label=f"latency budget {latency_budget_ms:.4g} ms"),
        Line2D([], [], color=BUDGET, ls=":", label=f"{metric} budget {metric_threshold:.4g}"),
    ], fontsize=8, loc="best")
    for status, marker, color in (("dense", "s", DENSE), ("accepted", "o", PRUNED), ("rolled-back", "x", ROLLED_BACK)):
        rows = steps[(steps["status"] == status) & steps["metric"].notna()]
        ax_metric.scatter(rows["index"], rows["metric"], marker=marker, color=color, label=status, zorder=3)
    ax_metric.axhline(metric_threshold, color=BUDGET, ls=":", lw=1.2)
    ax_metric.set_ylabel(metric)
    ax_metric.legend(fontsize=8, loc="best")
    ax_metric.set_title("over the loop's steps")
    ax_latency.plot(kept["index"], kept["latency_ms"], marker="o", color=PRUNED)
    slower = measured[measured["status"] == "rolled-back"]
    ax_latency.scatter(slower["index"], slower["latency_ms"], marker="x", color=ROLLED_BACK, zorder=3)
    ax_latency.axhline(latency_budget_ms, color=BUDGET, ls="--", lw=1.2)
    ax_latency.set_ylabel("latency (ms)")
    ax_latency.set_xlabel("step")
    for axis in (ax_metric, ax_latency):
        axis.set_xlim(-0.5, max(1, int(steps["index"].max())) + 0.5)
        axis.grid(alpha=0.3)
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def components_figure(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Per component, dense vs pruned: channels (sparsity annotated) and profiled time (share annotated).

    ``table``: ``component``, ``dense_channels``, ``kept_channels``, ``dense_ms``, ``pruned_ms``.
    """
    channels = table[table["dense_channels"] > 0]
    timed = table[(table["dense_ms"] > 0) | (table["pruned_ms"] > 0)]
    fig, (ax_ch, ax_ms) = plt.subplots(1, 2, figsize=(12, 0.9 + 0.75 * max(len(channels), len(timed))))
    _paired_bars(ax_ch, channels["component"], channels["dense_channels"], channels["kept_channels"], "channels")
    _paired_bars(ax_ms, timed["component"], timed["dense_ms"], timed["pruned_ms"], "profiled time (ms per inference)")
    for i, row in enumerate(channels.itertuples()):
        ax_ch.annotate(f"{1 - row.kept_channels / row.dense_channels:.0%} removed", (row.kept_channels, i + 0.2),
                       xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    totals = timed["dense_ms"].sum(), timed["pruned_ms"].sum()
    for i, row in enumerate(timed.itertuples()):
        for value, total, offset in ((row.dense_ms, totals[0], -0.2), (row.pruned_ms, totals[1], 0.2)):
            ax_ms.annotate(f"{value / total:.0%}" if total else "—", (value, i + offset), xytext=(4, 0),
                           textcoords="offset points", va="center", fontsize=8)
    ax_ch.set_title("channels per component (intra groups; flow groups apart)")
    ax_ms.set_title("latency per component (share of the profile)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _paired_bars(ax: plt.Axes, labels: pd.Series, dense: pd.Series, pruned: pd.Series, unit: str) -> None:
    """Horizontal bars, dense above pruned for each label, first label on top."""
    y = range(len(labels))
    ax.barh([i - 0.2 for i in y], dense.fillna(0).astype(float), height=0.4, color=DENSE, label="dense")
    ax.barh([i + 0.2 for i in y], pruned.fillna(0).astype(float), height=0.4, color=PRUNED, label="pruned")
    ax.set_yticks(list(y), list(labels), fontsize=8)
    ax.set_ylim(len(labels) - 0.4, -0.6)
    ax.set_xlim(right=ax.get_xlim()[1] * 1.15)
    ax.set_xlabel(unit)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


@dataclass(frozen=True)
class Staircase:
    """One group's predicted latency against its kept channels (the other groups dense)."""

    group: str
    kept: list[int]
    """every keep count from the smallest sampled one to the dense width"""
    ms: list[float]
    """predicted end-to-end latency at each of ``kept``"""
    sampled: list[tuple[int, float]]
    """the keep counts a plan can give the group (the granule's multiples), with their predicted latency"""
    plan_keep: int | None
    """the keep count this run's plan gives the group (None: not in the plan)"""


def staircase_figure(curves: list[Staircase], path: Path, title: str = "") -> Path:
    """Small multiples, one per group: the cost model's latency staircase, its granule steps and the plan's keep."""
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, curve in zip(axes.flat, curves, strict=False):
        ax.step(curve.kept, curve.ms, where="post", color=PRUNED, lw=1.4, label="cost model")
        ax.scatter(*zip(*curve.sampled, strict=True), color="black", s=16, zorder=3, label="granule step")
        if curve.plan_keep is not None:
            ax.axvline(curve.plan_keep, color=BUDGET, ls="--", lw=1.1, label=f"plan keeps {curve.plan_keep}")
        ax.set_title(curve.group, fontsize=10)
        ax.set_xlabel("kept channels")
        ax.set_ylabel("predicted latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def layers_figure(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """The slowest layers, dense vs pruned, side by side. ``table``: ``layer``, ``dense_ms``, ``pruned_ms``
    (NaN where a profile has no such layer)."""
    fig, ax = plt.subplots(figsize=(10, 1 + 0.42 * len(table)))
    _paired_bars(ax, table["layer"], table["dense_ms"], table["pruned_ms"], "profiled time (ms per inference)")
    ax.set_title(title or "slowest layers before and after pruning")
    return _save(fig, path)


def pareto_figure(points: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Strategies side by side: metric against measured speed-up, a panel per task (rows) and latency budget
    (columns), budget lines drawn, filled markers where both budgets hold, the Pareto front joined.

    ``points``: ``task``, ``budget``, ``method``, ``speedup``, ``metric``, ``met``, ``required_speedup``,
    ``metric_threshold``, ``metric_name``, ``higher_is_better``.
    """
    tasks, budgets = list(dict.fromkeys(points["task"])), list(dict.fromkeys(points["budget"]))
    methods = list(dict.fromkeys(points["method"]))
    colors = method_colors(methods)
    fig, axes = plt.subplots(len(tasks), len(budgets), figsize=(4.6 * len(budgets), 3.6 * len(tasks)), squeeze=False)
    for r, task in enumerate(tasks):
        for c, budget in enumerate(budgets):
            ax = axes[r][c]
            cell = points[(points["task"] == task) & (points["budget"] == budget)]
            if cell.empty:
                ax.axis("off")
                continue
            front = pareto_front(cell, "speedup", "metric")
            ax.plot(front["speedup"], front["metric"], color="#a0aec0", lw=1, zorder=1)
            for row in cell.itertuples():
                ax.scatter(row.speedup, row.metric, s=60, color=colors[row.method], zorder=3,
                           facecolors=colors[row.method] if row.met else "none", linewidths=1.6)
            required, threshold = cell["required_speedup"].iloc[0], cell["metric_threshold"].iloc[0]
            ax.axvline(required, color=BUDGET, ls="--", lw=1.1)
            ax.axhline(threshold, color=BUDGET, ls=":", lw=1.1)
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            if required < x1:
                ax.fill_between([required, x1], threshold, y1 if cell["higher_is_better"].iloc[0] else y0,
                                color="#c6f6d5", alpha=0.5, zorder=0)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_title(f"{task} — budget {budget}", fontsize=10)
            ax.set_xlabel("measured speed-up (dense ms ÷ ms)")
            ax.set_ylabel(cell["metric_name"].iloc[0])
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=colors[m], label=m) for m in methods]
    handles += [Line2D([], [], marker="o", ls="", color="black", markerfacecolor="none", label="a budget broken"),
                Line2D([], [], lw=8, color="#c6f6d5", label="both budgets hold"),
                Line2D([], [], color=BUDGET, ls="--", label="latency budget"),
                Line2D([], [], color=BUDGET, ls=":", label="metric budget"),
                Line2D([], [], color="#a0aec0", label="Pareto front")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8)
    fig.suptitle(title or "metric vs measured speed-up (filled: both budgets hold)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def method_colors(methods: list[str]) -> dict[str, object]:
    """One colour per method, the same on every figure of a page; the dense reference is grey."""
    others = [m for m in methods if m != "dense"]
    return {"dense": DENSE, **{m: plt.get_cmap("tab10")(i) for i, m in enumerate(others)}}


def pareto_front(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows no other row beats on both ``x`` and ``y`` (higher is better on both), sorted by ``x``."""
    ordered = frame.sort_values([x, y], ascending=False)
    keep, best = [], -math.inf
    for index, value in zip(ordered.index, ordered[y], strict=True):
        if value > best:
            keep.append(index)
            best = value
    return frame.loc[keep].sort_values(x)


def sweep_figure(curves: pd.DataFrame, path: Path, title: str = "") -> Path:
    """A metric against a swept setting, a panel per task, a line per method; solid after fine-tuning, dashed
    one-shot. ``curves``: ``task``, ``x``, ``method``, ``oneshot``, ``finetuned``, ``metric_name``, ``x_name``."""
    tasks = list(dict.fromkeys(curves["task"]))
    colors = method_colors(list(dict.fromkeys(curves["method"])))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        cell = curves[curves["task"] == task]
        for method, rows in cell.groupby("method", sort=False):
            rows = rows.sort_values("x")
            ax.plot(rows["x"], rows["finetuned"], marker="o", color=colors[method], label=method)
            ax.plot(rows["x"], rows["oneshot"], ls="--", color=colors[method], alpha=0.6)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(cell["x_name"].iloc[0])
        ax.set_ylabel(cell["metric_name"].iloc[0])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "solid: after fine-tuning; dashed: one-shot")
    return _save(fig, path)
