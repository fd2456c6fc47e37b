"""How well does the per-group cost model predict measured latency? ``python bench/cost_model.py``

For each task: build the cost model on the CPU target (one profile per group and keep count, calibrated on a few
whole-model measurements), then measure ``--variants`` random pruned variants that the model never saw (one random
overall ratio per variant, jittered per group, at the granule) and compare prediction with measurement. A
MAC-proportional prediction (dense latency × MAC ratio) is listed beside it: FLOPs are not latency.
Also reports the dense profile's share of time no module could be attributed to.

Writes bench/results/cost_model.csv (every variant) and cost_model.md (the summary). Measurements resume: the
cost model's journal and the variants measured so far live in bench/results/.cost_model-work/ until the run ends.
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
import pandas as pd
import torch
import torch_pruning as tp

from edgeprune.artifact.export import export_onnx, to_numpy
from edgeprune.core.targets import load_target
from edgeprune.core.task import load_task
from edgeprune.loop import target_inputs
from edgeprune.measure.cost import CostModelBuilder, random_counts
from edgeprune.measure.profile import attribute
from edgeprune.prune.graph import ComponentGraph
from edgeprune.runtimes import get_runtime

RESULTS = Path(__file__).parent / "results"


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def bench_task(name: str, target_name: str, variants: int, stride: int, work: Path, seed: int) -> pd.DataFrame:
    task, target = load_task(name), load_target(target_name)
    runtime = get_runtime(target)
    inputs = target_inputs(task, target)
    graph_args = {"components": task.components, "output_layers": task.output_layers}
    dense = task.build()
    started = time.perf_counter()
    builder = CostModelBuilder(name, ComponentGraph(dense, inputs, **graph_args), inputs, runtime, target.granule,
                               work / name / "cost", log=lambda m: print(f"  {name}: {m}", flush=True))
    cost = builder.build(stride=stride, seed=seed)
    build_s = time.perf_counter() - started
    dense_macs, _ = tp.utils.count_ops_and_params(copy.deepcopy(dense), inputs)
    profile = attribute(runtime.profile(work / name / "cost" / "dense.onnx", to_numpy(inputs)),
                        work / name / "cost" / "dense.onnx", graph_args["components"] or {}, {})
    unattributed = float(profile.loc[profile["module"] == "", "time_ms"].sum() / profile["time_ms"].sum())
    journal = work / name / "variants.jsonl"
    done = [json.loads(line) for line in journal.read_text().splitlines()] if journal.is_file() else []
    rng = random.Random(seed + 1)  # not the calibration plans' stream
    rows = []
    for i in range(variants):
        counts = random_counts(builder.plan, target.granule, rng, sorted(cost.groups))
        if i < len(done):
            rows.append(done[i])
            continue
        model = builder.pruned(counts)
        macs, _ = tp.utils.count_ops_and_params(model, inputs)
        path = export_onnx(model, inputs, work / name / "variant.onnx")
        measured = runtime.latency(path, to_numpy(inputs)).median_ms
        row = {"task": name, "variant": i, "measured_ms": measured, "predicted_ms": cost.predict_ms(counts),
               "mac_ratio": macs / dense_macs, "channels_kept": sum(counts.values()) / sum(
                   g.width for g in cost.groups.values()), "dense_ms": cost.dense_ms, "cost_model_build_s": build_s,
               "unattributed_share": unattributed, "profiled_cuts": cost.provenance["profiled_cuts"]}
        row["mac_predicted_ms"] = cost.dense_ms * row["mac_ratio"]
        with journal.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"  {name} variant {i}: measured {measured:.4f} ms, predicted {row['predicted_ms']:.4f} ms", flush=True)
    frame = pd.DataFrame(rows)
    frame["error"] = (frame["predicted_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"]
    frame["mac_error"] = (frame["mac_predicted_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"]
    return frame


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, part in frame.groupby("task", sort=False):
        rows.append({
            "task": name, "variants": len(part), "dense ms": part["dense_ms"].iloc[0],
            "measured ms (min–max)": f"{part['measured_ms'].min():.3f}–{part['measured_ms'].max():.3f}",
            "median error": statistics.median(part["error"]), "p90 error": p90(part["error"].tolist()),
            "MAC-proportional median error": statistics.median(part["mac_error"]),
            "MAC-proportional p90 error": p90(part["mac_error"].tolist()),
            "profiled cuts": int(part["profiled_cuts"].iloc[0]),
            "cost model build s": round(float(part["cost_model_build_s"].iloc[0]), 1),
            "unattributed share (dense profile)": part["unattributed_share"].iloc[0],
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits-autoencoder", "pendulum-agent", "digits-resnet"])
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--variants", type=int, default=30)
    parser.add_argument("--stride", type=int, default=1, help="cost model: measure every STRIDE-th granule step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = RESULTS / ".cost_model-work"
    frame = pd.concat([bench_task(n, args.target, args.variants, args.stride, work, args.seed) for n in args.tasks],
                      ignore_index=True)
    RESULTS.mkdir(exist_ok=True)
    frame.to_csv(RESULTS / "cost_model.csv", index=False)
    table = summary(frame)
    percent = [c for c in table.columns if "error" in c or "share" in c]
    shown = table.assign(**{c: table[c].map(lambda v: f"{100 * v:.1f} %") for c in percent})
    command = f"python bench/cost_model.py --tasks {' '.join(args.tasks)} --variants {args.variants} --stride {args.stride}"
    text = (f"# Cost model: predicted vs measured latency of random pruned variants\n\n"
            f"`{command}` — target `{args.target}`, {platform.processor() or platform.machine()}, "
            f"{dt.date.today().isoformat()}. Error = |predicted − measured| / measured over variants the model never "
            f"saw. MAC-proportional = dense latency × MAC ratio.\n\n{shown.to_markdown(index=False)}\n")
    (RESULTS / "cost_model.md").write_text(text)
    print(text)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
