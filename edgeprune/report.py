"""The run report: a short Markdown page written from the manifest, the plan and the stored profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from edgeprune.profiling import load_profile

FLOW_POLICIES = {
    "protect": "Flow policy `protect`: they keep their width.",
    "joint": "Flow policy `joint`: they are pruned consistently in every component, on each component's "
             "normalised importance combined (min or mean, see the manifest's settings).",
    "owner": "Flow policy `owner`: they are pruned in every component, on the producing component's importance.",
}


def _fmt_search(search: dict) -> str:
    """A step's coefficient search in a few words: strategy, sparsity reached, cost."""
    if not search:
        return "—"
    cost = f", {search['evaluations']} evaluations" if search.get("evaluations") else ""
    predicted = f", predicted {search['predicted_ms']:.4g} ms" if search.get("predicted_ms") is not None else ""
    return f"{search['strategy']} → sparsity {search['sparsity']:.3f}{predicted} ({search['search_s']:.1f} s{cost})"


def _fmt_latency(latency: dict | None) -> str:
    if not latency:
        return "not measured"
    return f"{latency['median_ms']:.4g} ms (±{100 * latency['spread'] / 2:.1f} %)"


def comparison_rows(manifest: dict) -> list[tuple[str, str, str]]:
    """(quantity, dense, pruned) rows shared by the report and the CLI's closing table."""
    dense, pruned, metric = manifest["dense"], manifest["pruned"], manifest["task"]["metric"]
    speedup = dense["latency"]["median_ms"] / pruned["latency"]["median_ms"] if pruned["latency"] else float("nan")
    return [
        ("latency (measured, median)", _fmt_latency(dense["latency"]), _fmt_latency(pruned["latency"]) + f" — {speedup:.2f}× faster"),
        (metric, f"{dense['metrics'][metric]:.4g}", f"{pruned['metrics'][metric]:.4g}"),
        ("parameters", f"{dense['params']:,}", f"{pruned['params']:,} ({pruned['params'] / dense['params']:.1%})"),
        ("MACs per input sample (Torch-Pruning count)", f"{dense['macs']:,}", f"{pruned['macs']:,} ({pruned['macs'] / dense['macs']:.1%})"),
        ("channel sparsity", "0", f"{pruned['channel_sparsity']:.1%}"),
    ]


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _component_shares(dense: pd.DataFrame, pruned: pd.DataFrame) -> str:
    def by(frame: pd.DataFrame) -> pd.Series:
        return frame.assign(component=frame["component"].replace("", "(unattributed)")).groupby("component")["time_ms"].sum()

    a, b = by(dense), by(pruned)
    rows = [[c, f"{a.get(c, 0):.4f}", f"{b.get(c, 0):.4f}", f"{b.get(c, 0) / a.get(c, 1):.0%}" if a.get(c, 0) else "—"]
            for c in sorted(set(a.index) | set(b.index))]
    rows.append(["**sum of node times**", f"{a.sum():.4f}", f"{b.sum():.4f}", f"{b.sum() / a.sum():.0%}"])
    return _table(["component", "dense ms", "pruned ms", "pruned / dense"], rows)


def _not_pruned(graph: dict) -> list[str]:
    """Layers no group prunes, and Torch-Pruning's own warnings: never left silent."""
    parts = []
    if graph["not_pruned"]:
        parts += ["### Layers no group prunes", _table(["layer", "why"], [[k, v] for k, v in graph["not_pruned"].items()])]
    if graph["torch_pruning_notes"]:
        parts += ["### Torch-Pruning warnings", "\n".join(f"- {n}" for n in graph["torch_pruning_notes"])]
    return parts


def write_report(folder: Path, manifest: dict) -> Path:
    """Write ``report.md`` into a run folder (reads plan.json and the profiles beside it)."""
    budgets, metric = manifest["budgets"], manifest["task"]["metric"]
    plan = json.loads((folder / "plan.json").read_text())
    dense_profile, pruned_profile = load_profile(folder / "profile-dense.csv"), load_profile(folder / "profile.csv")
    target = manifest["target"]
    parts = [
        f"# edgeprune: {manifest['task']['name']} on {target['name']} — {manifest['status']}",
        manifest["reason"] + ".",
        "## Budgets",
        _table(["budget", "asked", "threshold", "achieved", "holds"], [
            ["latency", budgets["latency"]["expression"], f"{budgets['latency']['threshold_ms']:.4g} ms",
             _fmt_latency(manifest["pruned"]["latency"]), "yes" if budgets["latency"]["holds"] else "**no**"],
            [metric, budgets["metric"]["expression"], f"{budgets['metric']['threshold']:.4g}",
             f"{manifest['pruned']['metrics'][metric]:.4g}", "yes" if budgets["metric"]["holds"] else "**no**"],
        ]),
        "## Dense vs pruned",
        _table(["", "dense", "pruned"], [list(r) for r in comparison_rows(manifest)]),
        "## Steps",
        _table(["step", "ratio", "status", metric, "latency", "MACs", "search", "note"], [
            [s["index"], f"{s['ratio']:.3g}", s["status"],
             f"{s['metrics'][metric]:.4g}" if metric in s["metrics"] else "—", _fmt_latency(s["latency"]),
             f"{s['macs']:,}" if s["macs"] else "—", _fmt_search(s.get("search") or {}), s["note"]]
            for s in manifest["steps"]
        ]),
        f"## Latency by component ({manifest['target']['runtime']} profile, per inference)",
        _component_shares(dense_profile, pruned_profile),
        "## Slowest nodes after pruning",
        _table(["node", "op", "module", "ms", "share"], [
            [r.layer, r.op_type, r.module or "(unattributed)", f"{r.time_ms:.4f}", f"{r.share:.1%}"]
            for r in pruned_profile.sort_values("time_ms", ascending=False).head(10).itertuples()
        ]),
        "## Groups",
        _table(["group (root)", "class", "components", "dense width", "kept"], [
            [k, g["kind"], ", ".join(g["components"]), g["width"], len(g["keep"])] for k, g in plan["groups"].items()
        ]),
        "Flow groups cross a component boundary (an interface). " + FLOW_POLICIES[manifest["settings"]["flow_policy"]],
        *_not_pruned(manifest["graph"]),
        "## Provenance",
        _table(["", ""], [
            *([k, v] for k, v in manifest["versions"].items()),
            ["target", (f"{target['name']} (runtime {target['runtime']}, device {target['device']}, "
                        f"precision {target['precision']}, granule {target['granule']})")],
            ["created", manifest["created"]],
            ["wall time", f"{manifest['wall_s']} s"],
        ]),
        (f"Latencies are measured with {target['runtime']} on this machine ({target['measure']['repeats']} fresh "
         f"sessions × {target['measure']['runs']} runs, median of medians; ± is half the spread between "
         "repetitions). No TensorRT engine was built or timed in this run."),
    ]
    path = folder / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path
