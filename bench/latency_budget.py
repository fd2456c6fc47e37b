"""edgeprune's latency loop against Torch-Pruning baselines, at a 2× speed-up budget and a tighter one.

    python bench/latency_budget.py [--tasks digits-autoencoder digits-resnet pendulum-agent] [--budgets 0.5x 0.35x]

For each built-in task and latency budget (relative to the dense model measured on the CPU target), with the
task's default metric budget and the same fine-tune steps after every pruning step:
- ``edgeprune``: ``tune --strategy knapsack`` — component-aware (flow groups protected), planned on the target's
  measured cost model (built on the first budget, reused from profiles/ on the next), rolled back when the metric
  breaks, recalibrated by every measurement;
- ``edgeprune-gradient``: ``tune --strategy gradient`` — the same loop and cost model, each step's per-group cut
  learnt by gradient descent on the task's loss against the cost model's differentiable latency;
- ``knapsack-flat``: the same loop and cost model with the whole model as one component (no interfaces protected
  but the output layers, importance not normalised per component);
- ``tp-global`` / ``tp-uniform``: Torch-Pruning's MetaPruner (global magnitude ranking / the same ratio in every
  group), one-shot from the dense model at ratio 0.1, 0.2, …, each candidate fine-tuned, evaluated and measured,
  until the measured latency meets the budget (the metric budget is reported, not enforced: they do not roll back).

digits-resnet's components are the stages of one CNN and its residual additions are flow groups, so both
edgeprune methods run it with ``--flow-policy joint`` (interfaces cut consistently in every stage): under the
default ``protect`` every stage keeps its width and 0.35x is out of reach (the 2026-11-21 run).

``--methods`` reruns only those methods; rows of the other methods are kept from the previous results (their
``measured`` column says when).

Writes bench/results/latency_budget.csv and .md; rows are journalled so a killed run resumes.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch_pruning as tp
from torch import nn

from edgeprune.artifact.export import export_onnx, to_numpy
from edgeprune.core.budgets import LatencyBudget, MetricBudget
from edgeprune.core.targets import load_target
from edgeprune.core.task import Task, load_task
from edgeprune.loop import TuneSettings, tune
from edgeprune.runtimes import get_runtime

RESULTS = Path(__file__).parent / "results"
FINETUNE = {"digits-autoencoder": 40, "digits-resnet": 40, "pendulum-agent": 200}
FLOW_POLICY = {"digits-resnet": "joint"}  # see the module docstring
EDGEPRUNE = {"edgeprune": "knapsack", "edgeprune-gradient": "gradient", "knapsack-flat": "knapsack"}
TARGET = "cpu"


def macs_of(model: nn.Module, task: Task) -> int:
    return int(tp.utils.count_ops_and_params(copy.deepcopy(model).eval(), task.example_inputs())[0])


def tp_prune(task: Task, model: nn.Module, ratio: float, granule: int, global_pruning: bool) -> nn.Module:
    model = copy.deepcopy(model)
    names = dict(model.named_modules())
    tp.pruner.MetaPruner(model, task.example_inputs(), importance=tp.importance.GroupMagnitudeImportance(p=2),
                         global_pruning=global_pruning, pruning_ratio=ratio, round_to=granule,
                         ignored_layers=[names[n] for n in task.output_layers]).step()
    return model


def baseline(task: Task, method: str, budget_ms: float, metric: MetricBudget, dense_value: float) -> dict[str, object]:
    """The first MetaPruner ratio whose fine-tuned model measures within the budget (or the last one tried)."""
    target = load_target(TARGET)
    runtime = get_runtime(target)
    dense = task.build()
    started, measurements, row = time.perf_counter(), 0, {}
    with tempfile.TemporaryDirectory() as tmp:
        for step in range(1, 10):
            ratio = step / 10
            model = tp_prune(task, dense, ratio, target.granule, method == "tp-global")
            torch.manual_seed(0)
            assert task.finetune is not None
            task.finetune(model, FINETUNE[task.name])
            model.eval()
            value = task.evaluate(model)[task.metric]
            latency = runtime.latency(export_onnx(model, task.example_inputs(), Path(tmp) / "m.onnx"),
                                      to_numpy(task.example_inputs())).median_ms
            measurements += 1
            row = {"ratio": ratio, "metric": value, "latency_ms": latency, "macs": macs_of(model, task),
                   "metric_holds": metric.holds(value, dense_value), "latency_holds": latency <= budget_ms}
            if latency <= budget_ms:
                break
    return {**row, "measurements": measurements, "wall_s": time.perf_counter() - started}


def judge(row: dict[str, object]) -> dict[str, object]:
    """Every method judged the same way: its measured latency against the budget on this bench's own dense
    measurement (a tune run measures its dense model again, and a slow dense measurement there loosens its budget)."""
    budget_ms = LatencyBudget.parse(str(row["budget"])).threshold_ms(float(row["dense_ms"]))  # type: ignore[arg-type]
    latency_holds = float(row["latency_ms"]) <= budget_ms  # type: ignore[arg-type]
    status = "met" if latency_holds and row["metric_holds"] else (
        "metric broken" if latency_holds else "latency not reached")
    return {**row, "latency_holds": latency_holds, "status": status}


def edgeprune_run(task: Task, method: str, budget: str, work: Path) -> dict[str, object]:
    components = None
    if method == "knapsack-flat":
        components = {"model": [name for name, child in task.build().named_children()
                                if any(True for _ in child.parameters())]}
    settings = TuneSettings(task=task.name, target=TARGET, latency_budget=budget, strategy=EDGEPRUNE[method],
                            finetune_steps=FINETUNE[task.name],
                            components=components, step=0.5,
                            flow_policy="protect" if components else FLOW_POLICY.get(task.name, "protect"))
    result = tune(settings, work / f"{task.name}-{method}-{budget}")
    manifest = result.manifest
    pruned = manifest.pruned
    return {"ratio": None, "metric": pruned.metrics[task.metric], "latency_ms": pruned.latency_ms,
            "macs": pruned.macs, "metric_holds": manifest.budgets.metric.holds, "run_status": result.status,
            "run_dense_ms": manifest.dense.latency_ms, "measurements": manifest.measurements,
            "wall_s": manifest.wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits-autoencoder", "digits-resnet", "pendulum-agent"])
    parser.add_argument("--budgets", nargs="+", default=["0.5x", "0.35x"])
    parser.add_argument("--methods", nargs="+",
                        default=["edgeprune", "edgeprune-gradient", "knapsack-flat", "tp-global", "tp-uniform"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = RESULTS / ".latency_budget-work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EDGEPRUNE_PROFILES", str(work / "profiles"))
    journal = work / "rows.jsonl"
    done = {(r["task"], r["budget"], r["method"]): r
            for r in (json.loads(line) for line in journal.read_text().splitlines())} if journal.is_file() else {}
    for name in args.tasks:
        task = load_task(name)
        runtime = get_runtime(load_target(TARGET))
        dense = task.build()
        dense_ms = runtime.latency(export_onnx(dense, task.example_inputs(), work / "dense.onnx"),
                                   to_numpy(task.example_inputs())).median_ms
        dense_value, dense_macs = task.evaluate(dense)[task.metric], macs_of(dense, task)
        metric = MetricBudget.parse(task.default_metric_budget)
        for budget in args.budgets:
            budget_ms = LatencyBudget.parse(budget).threshold_ms(dense_ms)
            for method in args.methods:
                if (name, budget, method) in done:
                    continue
                print(f"{name} {budget} {method} …", flush=True)
                if method in EDGEPRUNE:
                    row = edgeprune_run(task, method, budget, work)
                else:
                    row = baseline(task, method, budget_ms, metric, dense_value)
                row = {"task": name, "budget": budget, "method": method, "measured": dt.date.today().isoformat(),
                       "dense_ms": dense_ms,
                       "dense_metric": dense_value, "metric_budget": str(metric), **row,
                       "speedup": dense_ms / row["latency_ms"], "mac_reduction": dense_macs / row["macs"]}
                row["speedup_per_mac_reduction"] = row["speedup"] / row["mac_reduction"]
                with journal.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                done[(name, budget, method)] = row
                print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    frame = pd.DataFrame([judge(done[k]) for k in done if k[0] in args.tasks])
    previous = RESULTS / "latency_budget.csv"
    if previous.is_file():  # rows of methods not rerun stay as they were measured
        old = pd.read_csv(previous)
        old = old[~old.set_index(["task", "budget", "method"]).index.isin(frame.set_index(["task", "budget", "method"]).index)]
        frame = pd.concat([old.assign(measured=old.get("measured", "2026-11-21")), frame], ignore_index=True)
    order = {m: i for i, m in enumerate(["edgeprune", "edgeprune-gradient", "knapsack-flat", "tp-global", "tp-uniform"])}
    frame = frame.sort_values(["task", "budget", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                              ascending=[True, False, True], ignore_index=True)
    frame.to_csv(previous, index=False)
    shown = frame[["task", "budget", "method", "status", "metric", "dense_metric", "latency_ms", "dense_ms", "speedup",
                   "mac_reduction", "speedup_per_mac_reduction", "measurements", "wall_s", "measured", "run_status",
                   "run_dense_ms"]]
    text = (f"# Latency budget: edgeprune vs Torch-Pruning baselines\n\n"
            f"`python bench/latency_budget.py --tasks {' '.join(args.tasks)} --budgets {' '.join(args.budgets)}"
            f"{' --methods ' + ' '.join(args.methods) if args.methods != parser.get_default('methods') else ''}` — "
            f"target `{TARGET}` ({platform.processor() or platform.machine()}, ONNX Runtime, 1 thread), "
            f"{dt.date.today().isoformat()}. Fine-tune steps after every pruning step: {FINETUNE}. Latencies are "
            f"medians of fresh-session medians, measured; `wall_s` of edgeprune includes building the cost model on "
            f"a task's first budget. `status` judges every method against the budget on this bench's dense "
            f"measurement (`dense_ms`); `run_status` is what the edgeprune run itself concluded against its own dense "
            f"measurement (`run_dense_ms`). digits-resnet runs edgeprune with `--flow-policy joint` (its residual additions "
            f"are flow groups between the stages of one network). `measured`: the day a row was measured (rows of "
            f"methods not rerun are kept).\n\n{shown.to_markdown(index=False, floatfmt='.4g')}\n")
    (RESULTS / "latency_budget.md").write_text(text)
    print(text)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
