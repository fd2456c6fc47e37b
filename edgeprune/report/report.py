"""The run report: Markdown and a self-contained HTML page (figures embedded) written from a run folder.

Everything comes from the manifest, the plan, the two stored profiles (dense and pruned) and, where there is one,
the cost model: a report can be rendered again at any time. The page format is :mod:`edgeprune.report.page`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from edgeprune.core.budgets import MetricBudget
from edgeprune.core.manifest import GraphRecord, Manifest
from edgeprune.measure.profile import load_profile
from edgeprune.prune.plan import Plan
from edgeprune.report.page import Page, check, fmt, fmt_ms, fmt_share, staging

if TYPE_CHECKING:  # the cost model and figures pull in torch and matplotlib: imported where a report is drawn
    from edgeprune.measure.cost import CostModel
    from edgeprune.report.figures import Staircase

FLOW_POLICIES = {
    "last": "Flow policy `last`: they keep their width until a step's latency target is out of reach without cutting "
            "them (from that step on) or a step that kept them breaks the metric budget (from the next step on); "
            "from then on (the step's note says so) they are pruned as under `joint`.",
    "protect": "Flow policy `protect`: they keep their width.",
    "joint": "Flow policy `joint`: they are pruned consistently in every component, on each component's "
             "normalised importance combined (min or mean, see the manifest's settings).",
    "owner": "Flow policy `owner`: they are pruned in every component, on the producing component's importance.",
}
#: groups drawn in the staircase figure (those whose predicted latency spans most)
STAIRCASE_GROUPS = 6
#: layers in the slowest-layers figure and table
SLOWEST_LAYERS = 12
UNATTRIBUTED = "(unattributed)"


def _fmt_search(search: dict) -> str:
    """A step's coefficient search in a few words: strategy, sparsity reached, cost."""
    if not search:
        return "—"
    cost = f", {search['evaluations']} evaluations" if search.get("evaluations") else ""
    predicted = f", predicted {fmt_ms(search['predicted_ms'])}" if search.get("predicted_ms") is not None else ""
    return f"{search['strategy']} → sparsity {search['sparsity']:.3f}{predicted} ({search['search_s']:.1f} s{cost})"


def _fmt_latency(latency: dict | None) -> str:
    if not latency:
        return "not measured"
    return f"{fmt_ms(latency['median_ms'])} (±{100 * latency['spread'] / 2:.1f} %)"


def comparison_rows(manifest: Manifest) -> list[tuple[str, str, str]]:
    """(quantity, dense, pruned) rows shared by the report and the CLI's closing table."""
    dense, pruned, metric = manifest.dense, manifest.pruned, manifest.task.metric
    speedup = dense.latency_ms / pruned.latency_ms if pruned.latency else float("nan")
    return [
        ("latency (measured, median)", _fmt_latency(dense.latency), _fmt_latency(pruned.latency) + f" — {speedup:.2f}× faster"),
        (metric, fmt(dense.metrics[metric]), fmt(pruned.metrics[metric])),
        ("parameters", f"{dense.params:,}", f"{pruned.params:,} ({pruned.params / dense.params:.1%})"),
        ("MACs per input sample (Torch-Pruning count)", f"{dense.macs:,}", f"{pruned.macs:,} ({pruned.macs / dense.macs:.1%})"),
        ("channel sparsity", "0", f"{pruned.channel_sparsity:.1%}"),
    ]


def budget_rows(manifest: Manifest) -> list[list[str]]:
    """(budget, asked, threshold, achieved, holds) for the latency and the metric budget, each verdict with the
    comparison that decides it."""
    lat, met, metric, pruned = manifest.budgets.latency, manifest.budgets.metric, manifest.task.metric, manifest.pruned
    value, op = pruned.metrics[metric], MetricBudget.parse(met.expression).op
    return [
        ["latency", lat.expression, fmt_ms(lat.threshold_ms), _fmt_latency(pruned.latency),
         f"{check(lat.holds)} {fmt(pruned.latency_ms)} {'≤' if lat.holds else '>'} {fmt(lat.threshold_ms)} ms"],
        [metric, met.expression, fmt(met.threshold), fmt(value),
         f"{check(met.holds)} {fmt(value)} {op if met.holds else 'not ' + op} {fmt(met.threshold)}"],
    ]


def step_counts(manifest: Manifest) -> str:
    """One line: how many steps, accepted, rolled back and measured, and the fine-tune steps they spent."""
    steps = manifest.steps[1:]  # the first is the dense model
    accepted = sum(s.status == "accepted" for s in steps)
    measured = sum(1 for s in manifest.steps if s.latency is not None)
    return (f"{len(steps)} pruning steps after the dense model: {accepted} accepted, {len(steps) - accepted} rolled "
            f"back; {measured} latency measurements (dense included); "
            f"{sum(s.finetune_steps for s in steps):,} fine-tune steps in all.")


# -- the run report's pieces -----------------------------------------------------------------------------------
def steps_frame(manifest: Manifest) -> pd.DataFrame:
    """One row per step: index, status, metric, measured latency (NaN where not measured), whether final."""
    metric, final = manifest.task.metric, manifest.pruned.index
    return pd.DataFrame([{
        "index": s.index, "status": s.status, "metric": s.metrics.get(metric, float("nan")),
        "latency_ms": s.latency_ms, "final": s.index == final,
    } for s in manifest.steps])


def component_frame(plan: Plan, dense: pd.DataFrame, pruned: pd.DataFrame, order: Sequence[str] = ()) -> pd.DataFrame:
    """Per component (in ``order``, then the rest): intra groups' dense and kept channels, profiled time dense and
    pruned. Flow groups cross components, so their channels form a row of their own; profile rows no module
    claims form ``(unattributed)``."""
    rows: dict[str, Counter] = {name: Counter() for name in order}
    for group in plan.groups.values():
        name = group.components[0] if group.kind == "intra" else "flow groups (interfaces)"
        row = rows.setdefault(name, Counter())
        row["groups"] += 1
        row["dense_channels"] += group.width
        row["kept_channels"] += len(group.keep)
    times = {label: frame.assign(component=frame["component"].replace("", UNATTRIBUTED))
             .groupby("component")["time_ms"].sum() for label, frame in (("dense_ms", dense), ("pruned_ms", pruned))}
    for label, series in times.items():
        for name, ms in series.items():
            rows.setdefault(name, Counter())[label] = float(ms)
    columns = ["groups", "dense_channels", "kept_channels", "dense_ms", "pruned_ms"]
    frame = pd.DataFrame([{"component": k, **v} for k, v in rows.items()]).reindex(columns=["component", *columns])
    # counts are 0 where no group belongs to a row; times NaN where no layer of that profile does
    return frame.fillna({c: 0 for c in columns[:3]}).astype({c: int for c in columns[:3]})


def layer_times(profile: pd.DataFrame) -> pd.Series:
    """Profiled ms per layer, named so the dense and the pruned profile line up: module and op (numbered when a
    module runs the op more than once); the runtime's own name where no module claims the layer."""
    names = [(r.module or r.layer) + (f" ({r.op_type})" if r.module and r.op_type else "") for r in profile.itertuples()]
    total, seen = Counter(names), Counter()
    labels = []
    for name in names:
        seen[name] += 1
        labels.append(name if total[name] == 1 else f"{name} #{seen[name]}")
    return pd.Series(profile["time_ms"].to_numpy(dtype=float), index=labels)


def slowest_layers(dense: pd.DataFrame, pruned: pd.DataFrame, top: int = SLOWEST_LAYERS) -> pd.DataFrame:
    """The ``top`` layers slowest in either profile, dense time first."""
    both = pd.DataFrame({"dense_ms": layer_times(dense), "pruned_ms": layer_times(pruned)})
    both["slowest"] = both.max(axis=1)
    picked = both.sort_values("slowest", ascending=False).head(top).sort_values("dense_ms", ascending=False)
    return picked.drop(columns="slowest").rename_axis("layer").reset_index()


def find_cost_model(manifest: Manifest, store: Path | None = None) -> tuple[CostModel | None, str]:
    """The cost model to draw and a sentence on where it comes from — or None and a sentence on why there is none.

    A latency-planning run's own cost model (recalibrated as the run left it); otherwise a cost model stored for the
    same dense weights and target settings (``store``, default $EDGEPRUNE_PROFILES or ./profiles), clearly marked as
    not used by the run.
    """
    from edgeprune.measure.cost import CostModel, CostModelError
    from edgeprune.measure.store import default_root

    own = manifest.cost_model
    if own:
        path = Path(own.path)
        try:
            cost = CostModel.load(path)
        except CostModelError:
            return None, f"No staircase: this run planned on the cost model `{path}`, which can no longer be read."
        points = [tuple(p) for p in own.calibration.points]
        return cost.calibrated(points), (f"The cost model this run planned on (`{path}`), calibrated as the run left "
                                         f"it on {len(points)} whole-model measurement{'s' * (len(points) != 1)}.")
    root = store or default_root()
    task, digest, settings = manifest.task, manifest.target_digest, manifest.settings
    for path in sorted((root / task.name).glob(f"{manifest.target.name}-*.cost.json")):
        try:
            cost = CostModel.load(path)
        except CostModelError:
            continue
        facts = cost.provenance
        if facts.get("model_hash") == task.dense_weights_sha256 and facts.get("target_digest") == digest:
            return cost, (f"This run (strategy {settings.get('strategy', 'magnitude')}) planned without a "
                          f"cost model; shown is the one stored for the same dense weights and target, `{path}` "
                          f"(its own calibration).")
    return None, (f"No staircase: this run (strategy {settings.get('strategy', 'magnitude')}) planned without a "
                  f"cost model, and none is stored for its dense weights and target under `{root}`. "
                  f"`edgeprune profile --task {settings['task']} --target {settings['target']} --cost-model` "
                  f"measures one; `edgeprune report` then draws it.")


def staircases(cost: CostModel, plan: Plan, top: int = STAIRCASE_GROUPS) -> list[Staircase]:
    """The ``top`` groups whose predicted latency spans most, each as a :class:`~edgeprune.report.figures.Staircase`."""
    from edgeprune.report.figures import Staircase

    curves = []
    for key, lut in cost.groups.items():
        if len(lut.kept) < 2:
            continue  # never cut (no wider than a granule)
        kept = list(range(lut.kept[0], lut.width + 1))
        group = plan.groups.get(key)
        curves.append(Staircase(key, kept, [cost.predict_ms({key: k}) for k in kept], cost.staircase(key),
                                len(group.keep) if group else None))
    return sorted(curves, key=lambda c: max(c.ms) - min(c.ms), reverse=True)[:top]


def _ms_and_share(ms: float, total: float) -> tuple[str, str]:
    """A profiled time and its share of the profile; dashes where the profile has no such row (NaN)."""
    return ("—", "—") if pd.isna(ms) else (fmt(ms), fmt_share(ms / total))


def _provenance_rows(manifest: Manifest, dense: pd.DataFrame, pruned: pd.DataFrame,
                     cost: CostModel | None) -> list[list[str]]:
    target = manifest.target
    power = target.power.model_dump()
    rows = [[k, str(v)] for k, v in manifest.versions.items()]
    rows += [
        ["target", (f"{target.name} (digest {manifest.target_digest}): runtime {target.runtime}, device "
                   f"{target.device}, precision {target.precision}, granule {target.granule}, batch "
                   f"{target.batch or 'as the task gives'}")],
        ["measurement", ", ".join(f"{k} {v}" for k, v in target.measure.model_dump().items())],
    ]
    if any(v not in (None, False) for v in power.values()):
        rows.append(["power mode", ", ".join(f"{k} {v}" for k, v in power.items() if v not in (None, False))])
    if cost is not None:
        facts = cost.provenance
        rows += [[f"host: {k}", str(facts[k])] for k in ("host_cpu", "cpu_count") if k in facts]
    rows += [
        ["run created", manifest.created], ["wall time", f"{manifest.wall_s} s"],
        ["dense profile", f"{dense.attrs.get('date', '—')}, model {dense.attrs.get('model_hash', '—')}"],
        ["pruned profile", f"{pruned.attrs.get('date', '—')}, model {pruned.attrs.get('model_hash', '—')}"],
        ["run key", manifest.run_key],
        ["dense weights sha256", manifest.task.dense_weights_sha256],
        ["plan digest", manifest.pruned.plan_digest],
    ]
    rows += [[f"sha256 {name}", digest] for name, digest in manifest.files.items() if not name.startswith("report")]
    return rows


def _not_pruned(page: Page, graph: GraphRecord) -> None:
    """Layers no group prunes, and Torch-Pruning's own warnings: never left silent."""
    if graph.not_pruned:
        page.heading("Layers no group prunes", 3)
        page.table(["layer", "why"], [[k, v] for k, v in graph.not_pruned.items()])
    if graph.torch_pruning_notes:
        page.heading("Torch-Pruning warnings", 3)
        page.text("\n".join(f"- {n}" for n in graph.torch_pruning_notes))


def build_report(folder: Path, manifest: Manifest, figures: Path, store: Path | None = None) -> Page:
    """The report of the run in ``folder`` as a :class:`Page`, its figures drawn into ``figures``."""
    from edgeprune.report.figures import components_figure, layers_figure, staircase_figure, steps_figure

    budgets, metric, target = manifest.budgets, manifest.task.metric, manifest.target
    plan = Plan.load(folder / "plan.json")
    dense_profile, pruned_profile = load_profile(folder / "profile-dense.csv"), load_profile(folder / "profile.csv")
    name = f"{manifest.task.name} on {target.name}"
    page = Page(f"edgeprune: {name} — {manifest.status}")
    if manifest.status == "met":
        page.text(manifest.reason[0].upper() + manifest.reason[1:] + ".")
    else:
        page.text(f"**Infeasible:** {manifest.reason}. The bundle holds the best plan found (step "
                  f"{manifest.pruned.index}); the steps below show where each budget gave way.", callout=True)

    page.heading("Budgets")
    page.table(["budget", "asked", "threshold", "achieved", "holds"], budget_rows(manifest))
    page.heading("Dense vs pruned")
    page.table(["", "dense", "pruned"], comparison_rows(manifest))

    page.heading("Steps")
    page.text(step_counts(manifest))
    page.table(["step", "ratio", "status", metric, "latency", "MACs", "fine-tune", "search", "note"], [
        [s.index, f"{s.ratio:.3g}", s.status, fmt(s.metrics[metric]) if metric in s.metrics else "—",
         _fmt_latency(s.latency), f"{s.macs:,}" if s.macs else "—", s.finetune_steps or "—", _fmt_search(s.search),
         s.note]
        for s in manifest.steps
    ])
    higher = MetricBudget.parse(budgets.metric.expression).op.startswith(">")
    page.figure(steps_figure(steps_frame(manifest), metric, budgets.latency.threshold_ms,
                             budgets.metric.threshold, higher, figures / "steps.png", name),
                f"{metric} against measured latency over the loop's steps; rolled-back steps (✗) appear on the "
                "left only when they were measured (a latency planner's step that measured no faster)")

    page.heading(f"Latency by component ({target.runtime} profile, per inference) and sparsity")
    components = component_frame(plan, dense_profile, pruned_profile, list(manifest.graph.components))
    dense_total, pruned_total = components["dense_ms"].sum(), components["pruned_ms"].sum()
    page.table(["component", "groups", "channels", "kept", "sparsity", "dense ms", "dense share", "pruned ms",
                "pruned share"], [
        [r.component, r.groups or "—", r.dense_channels or "—", r.kept_channels or "—",
         fmt_share(1 - r.kept_channels / r.dense_channels) if r.dense_channels else "—",
         *_ms_and_share(r.dense_ms, dense_total), *_ms_and_share(r.pruned_ms, pruned_total)]
        for r in components.itertuples()
    ] + [["**sum of layer times**", "", "", "", "", fmt(dense_total), "", fmt(pruned_total),
          f"{pruned_total / dense_total:.0%} of dense"]])
    page.figure(components_figure(components, figures / "components.png", name),
                "channels and profiled time per component, dense vs pruned")

    page.heading("Cost model: latency staircase per group")
    cost, source = find_cost_model(manifest, store)
    if cost is None:
        page.text(source)
    else:
        curves = staircases(cost, plan)
        page.text(f"{source} Each panel: predicted end-to-end latency with only that group cut, at every kept "
                  f"count (a partly filled granule costs what the full one does); dots are the granule's steps; "
                  f"dashed, what this run's plan keeps. The {len(curves)} groups whose latency spans most.")
        page.table(["group", "width", "granule steps", "predicted at fewest kept", "predicted at dense width",
                    "plan keeps", "predicted at plan keep"], [
            [c.group, c.kept[-1], len(c.sampled) - 1, fmt_ms(c.ms[0]), fmt_ms(c.ms[-1]),
             c.plan_keep if c.plan_keep is not None else "—",
             fmt_ms(c.ms[c.kept.index(c.plan_keep)]) if c.plan_keep in c.kept else "—"]
            for c in curves
        ])
        if curves:
            page.figure(staircase_figure(curves, figures / "staircase.png", name),
                        "predicted latency vs kept channels, per group (the others dense)")

    page.heading("Slowest layers before and after")
    layers = slowest_layers(dense_profile, pruned_profile)
    page.table(["layer", "dense ms", "dense share", "pruned ms", "pruned share", "pruned / dense"], [
        [r.layer, *_ms_and_share(r.dense_ms, dense_total), *_ms_and_share(r.pruned_ms, pruned_total),
         f"{r.pruned_ms / r.dense_ms:.0%}" if r.dense_ms > 0 and r.pruned_ms >= 0 else "—"]
        for r in layers.itertuples()
    ])
    page.figure(layers_figure(layers, figures / "layers.png", f"{name}: slowest layers, dense vs pruned"),
                "profiled time of the slowest layers (module and op), dense vs pruned")

    page.heading("Groups")
    page.table(["group (root)", "class", "components", "dense width", "kept", "sparsity"], [
        [k, g.kind, ", ".join(g.components), g.width, len(g.keep), fmt_share(1 - len(g.keep) / g.width)]
        for k, g in plan.groups.items()
    ])
    page.text("Flow groups cross a component boundary (an interface). "
              + FLOW_POLICIES[manifest.settings.get("flow_policy", "protect")])
    _not_pruned(page, manifest.graph)

    page.heading("Provenance")
    page.table(["", ""], _provenance_rows(manifest, dense_profile, pruned_profile, cost))
    measure = target.measure
    engine = "" if target.runtime in ("tensorrt", "trtexec") else " No TensorRT engine was built or timed in this run."
    page.text(f"Latencies are measured with {target.runtime} on device `{target.device}` "
              f"({measure.repeats} fresh sessions × {measure.runs} runs, median of medians; ± is half the "
              f"spread between repetitions). Each step is timed in alternation with the dense model, call by call, "
              f"and reported as that ratio × the dense latency: the machine's drift between measurements cancels."
              f"{engine}")
    return page


def write_report(folder: Path, manifest: Manifest, out: Path | None = None, store: Path | None = None) -> Path:
    """Write ``report.md``, ``report.html`` (self-contained) and ``figures/*.png`` for the run in ``folder`` into
    ``out`` (default: the run folder); returns the Markdown's path. ``store``: where to look for a cost model."""
    out = out or folder
    with staging(out) as tmp:
        return build_report(folder, manifest, tmp, store).write(out, "report")


