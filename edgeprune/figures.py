"""Figures (matplotlib, no display needed): the component graph with its inter-component flows."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch

from edgeprune.graph import ComponentGraph


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
