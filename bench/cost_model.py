"""How well does the cost model (per-layer latency tables from sweep graphs) predict measured latency?
``python bench/cost_model.py`` — timed: run it alone.

Per task, on one fresh table store shared by all tasks of the run (so a task whose layer shapes an earlier task
already measured shows fewer new measurements):

1. build the cost model as ``edgeprune tune`` does (dense profile and latency, one probe export for the sites,
   the missing table points in sweep graphs, a calibration on a few random plans), timed;
2. measure ``--variants`` random pruned variants the model never saw (one random overall ratio per variant,
   jittered per group, at the granule) and compare the prediction with the measurement, beside a
   MAC-proportional guess (dense latency × MAC ratio: FLOPs are not latency);
3. check the sweep method: ``--alone`` table points measured again each in a graph of its own, against their value
   from the shared sweep.

Writes bench/results/cost_model.csv (every variant), cost_model_alone.csv and cost_model.md (the summary).
Measurements resume: the table store and the variants measured so far live in bench/results/.cost_model-work/
until the run ends. Tasks: built-in names (the torchvision ones need torchvision) or ``module:factory``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import random
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
import torch_pruning as tp

from edgeprune.artifact.export import export_onnx, to_numpy
from edgeprune.core.targets import load_target
from edgeprune.core.task import load_task
from edgeprune.loop import target_inputs
from edgeprune.measure.cost import CostModelBuilder, random_counts
from edgeprune.measure.profile import attribute
from edgeprune.measure.store import table_store
from edgeprune.measure.tables import point_name, sweep_graph, variant_times
from edgeprune.prune.graph import ComponentGraph
from edgeprune.runtimes import get_runtime

RESULTS = Path(__file__).parent / "results"


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def bench_task(name: str, target_name: str, variants: int, alone: int, compare: dict[str, float], work: Path,
               seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    task, target = load_task(name), load_target(target_name)
    runtime = get_runtime(target)
    inputs = target_inputs(task, target)
    folder = work / name.replace(":", "-")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    graph = ComponentGraph(task.build(), inputs, task.components, task.output_layers)
    dense_onnx = export_onnx(graph.model, inputs, folder / "dense.onnx")
    profile = attribute(runtime.profile(dense_onnx, to_numpy(inputs)), dense_onnx, graph.components, {})
    dense_ms = runtime.latency(dense_onnx, to_numpy(inputs)).median_ms
    tables = table_store(work, target, runtime)
    builder = CostModelBuilder(name, graph, inputs, target, runtime, folder / "cost", tables,
                               log=lambda m: print(f"  {name}: {m}", flush=True))
    cost = builder.build(dense_onnx, profile, dense_ms, seed=seed)
    build_s = time.perf_counter() - started
    print(f"  {name}: cost model in {build_s:.0f} s ({builder.new_points} new table points, {builder.sweeps} sweeps)",
          flush=True)
    dense_macs, _ = tp.utils.count_ops_and_params(copy.deepcopy(graph.model), inputs)
    unattributed = float(profile.loc[profile["module"] == "", "time_ms"].sum() / profile["time_ms"].sum())
    journal = folder / "variants.jsonl"
    done = [json.loads(line) for line in journal.read_text().splitlines()] if journal.is_file() else []
    rng = random.Random(seed + 1)  # not the calibration plans' stream
    judge = get_runtime(target.with_measure(**compare))
    rows = []
    for i in range(variants):
        counts = random_counts(builder.plan, target.granule, rng, sorted(cost.groups))
        if i < len(done):
            rows.append(done[i])
            continue
        model = builder.pruned(counts)
        macs, _ = tp.utils.count_ops_and_params(model, inputs)
        path = export_onnx(model, inputs, folder / "variant.onnx")
        paired = judge.compare(path, dense_onnx, to_numpy(inputs))
        measured = paired.model_ms
        row = {"task": name, "variant": i, "measured_ms": measured, "relative_ms": paired.ratio * cost.dense_ms,
               "predicted_ms": cost.predict_ms(counts),
               "mac_ratio": macs / dense_macs, "dense_ms": cost.dense_ms, "cost_model_build_s": build_s,
               "new_table_points": builder.new_points, "sweep_graphs": builder.sweeps, "tables_s": builder.tables_s,
               "tabled_layers": sum(bool(layer.axes) for layer in cost.layers),
               "scaled_layers": sum(bool(layer.scaled) for layer in cost.layers),
               "unattributed_share": unattributed}
        row["mac_predicted_ms"] = cost.dense_ms * row["mac_ratio"]
        with journal.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"  {name} variant {i}: measured {measured:.4f} ms, predicted {row['predicted_ms']:.4f} ms", flush=True)
    frame = pd.DataFrame(rows)
    frame["error"] = (frame["predicted_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"]
    frame["mac_error"] = (frame["mac_predicted_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"]
    frame["paired_error"] = (frame["predicted_ms"] - frame["relative_ms"]).abs() / frame["relative_ms"]
    frame["mac_paired_error"] = (frame["mac_predicted_ms"] - frame["relative_ms"]).abs() / frame["relative_ms"]
    return frame, sweep_check(name, tables, builder.sweep_runtime, folder, alone, seed)


def sweep_check(name: str, tables, runtime, folder: Path, count: int, seed: int) -> pd.DataFrame:
    """``count`` table points (the slowest half of the tables, picked at random) measured alone, each in a graph of
    its own, against the value the shared sweep gave them."""
    rng = random.Random(seed + 2)
    points = [(t, p) for t in tables.data.tables.values() for p in t.points]
    points = sorted(points, key=lambda item: item[0].points[item[1]], reverse=True)[:max(1, len(points) // 2)]
    rows = []
    for table, point in rng.sample(points, min(count, len(points))):
        values = tuple(int(v) for v in point.split("x"))
        model, feeds = sweep_graph([(table.signature, values)], onnx.load(str(folder / "dense.onnx"),
                                   load_external_data=False).opset_import)
        path = folder / "alone.onnx"
        onnx.save(model, str(path))
        times, floor, reference = variant_times(runtime.profile(runtime.build(path, folder), feeds), 1)
        rows.append({"task": name, "layer": table.signature.describe(), "point": point_name(values),
                     "sweep_ms": table.points[point],
                     "alone_ms": max(times[0] - floor, 0.0) * tables.data.reference_ms / reference})
    frame = pd.DataFrame(rows)
    frame["difference"] = (frame["sweep_ms"] - frame["alone_ms"]).abs() / frame["alone_ms"]
    return frame


def summary(frame: pd.DataFrame, alone: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, part in frame.groupby("task", sort=False):
        check = alone[alone["task"] == name]["difference"]
        rows.append({
            "task": name, "variants": len(part), "dense ms": part["dense_ms"].iloc[0],
            "median error": statistics.median(part["paired_error"]),
            "p90 error": p90(part["paired_error"].tolist()),
            "MAC median error": statistics.median(part["mac_paired_error"]),
            "MAC p90 error": p90(part["mac_paired_error"].tolist()),
            "unpaired median / p90": f"{100 * statistics.median(part['error']):.1f} / {100 * p90(part['error'].tolist()):.1f} %",
            "build s": round(float(part["cost_model_build_s"].iloc[0]), 1),
            "of which tables s": round(float(part["tables_s"].iloc[0]), 1) if "tables_s" in part else float("nan"),
            "new table points": int(part["new_table_points"].iloc[0]),
            "sweep graphs": int(part["sweep_graphs"].iloc[0]),
            "layers tabled / scaled": f"{int(part['tabled_layers'].iloc[0])} / {int(part['scaled_layers'].iloc[0])}",
            "sweep vs alone (median)": statistics.median(check) if len(check) else float("nan"),
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits-autoencoder", "pendulum-agent", "digits-resnet",
                                                       "fashion-autoencoder", "torchvision-resnet18",
                                                       "torchvision-resnet50", "torchvision-mobilenet_v2"])
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--variants", type=int, default=30)
    parser.add_argument("--alone", type=int, default=8, help="table points re-measured alone per task")
    parser.add_argument("--repeats", type=int, default=3, help="fresh session pairs per variant/dense comparison")
    parser.add_argument("--repeat-s", type=float, default=1.5, help="seconds of alternating runs per repetition")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = RESULTS / ".cost_model-work"
    compare = {"repeats": args.repeats, "repeat_s": args.repeat_s}
    parts = [bench_task(n, args.target, args.variants, args.alone, compare, work, args.seed) for n in args.tasks]
    frame = pd.concat([p[0] for p in parts], ignore_index=True)
    alone = pd.concat([p[1] for p in parts], ignore_index=True)
    RESULTS.mkdir(exist_ok=True)
    frame.to_csv(RESULTS / "cost_model.csv", index=False)
    alone.to_csv(RESULTS / "cost_model_alone.csv", index=False)
    table = summary(frame, alone)
    percent = [c for c in table.columns if "error" in c or "alone" in c]
    shown = table.assign(**{c: table[c].map(lambda v: f"{100 * v:.1f} %") for c in percent})
    command = f"python bench/cost_model.py --tasks {' '.join(args.tasks)} --variants {args.variants}"
    text = (f"# Cost model: predicted vs measured latency of random pruned variants\n\n"
            f"`{command}` — target `{args.target}`, {platform.processor() or platform.machine()}, "
            f"{dt.date.today().isoformat()}, one fresh table store for the whole run (tasks in this order). "
            f"Error = |predicted − measured| / measured over variants the model never saw, measured relative to the "
            f"dense model (`Runtime.compare`: variant and dense timed run by run in alternation, {args.repeats} pairs "
            f"of fresh sessions × {args.repeat_s:g} s, the median ratio × the dense latency): this machine's speed "
            f"drifts by up to ±30 % between minutes, which separate measurements catch (unpaired: the variant's own "
            f"median latency against the dense latency measured once). MAC = dense latency × MAC ratio. Build s: "
            f"dense profile and latency, probe export, new table points (of which tables s), calibration (3 random "
            f"plans, each compared with the dense model). "
            f"Sweep vs alone: |sweep − alone| / alone of {args.alone} table points measured again each in a graph of "
            f"its own.\n\n{shown.to_markdown(index=False)}\n")
    (RESULTS / "cost_model.md").write_text(text)
    print(text)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
