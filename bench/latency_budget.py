"""The fair bench: edgeprune's latency loop against the baselines' channel choices, every method through the same loop.

    python bench/latency_budget.py [--tasks …] [--budgets 0.5x 0.35x] [--methods …]

Per task and latency budget (relative to the dense model on the ``cpu`` target), with the task's default metric
budget. The loop methods run ``edgeprune tune`` with the same settings — the same latency schedule (a share of the
dense latency per step, larger while the metric has headroom, halved after a rollback), the same fine-tune steps
after every pruning step and on the final widths (a step aimed at the budget that breaks the metric gets the final
ones before it is judged), the same rollback on the metric, the same measurements (each
step timed in alternation with the dense model), the same cost model — and differ only in which channels go:

- ``edgeprune``: tune's default ``--strategy knapsack``: least application importance (the task loss's sensitivity
  with magnitude, normalised per component) lost per millisecond the measured cost model says a block saves;
- ``select``: the default until 2026-12-04: each step plans the knapsack's cut and global rankings by Taylor and by
  L2 magnitude against the same latency target on the measured cost model, races them (each fine-tuned a twelfth of
  the step's fine-tune steps, paid from them: the kept cut gets the rest) and keeps the one the task's loss then
  rises least from (held-out training batches, each cut's BatchNorm statistics re-estimated for the score only).
  Both edgeprune rows keep interfaces between components until a step's target is out of reach without cutting them
  or a step that kept them breaks the metric budget (tune's default ``--flow-policy last``; ``joint`` on
  digits-resnet, whose components are stages of one CNN; the fashion tasks' networks are one component each, so they
  have no interface);
- ``tp-local``: the same ratio in every group, Torch-Pruning's L2 group magnitude (local pruning);
- ``tp-global``: one global ranking of blocks by that magnitude (Torch-Pruning's global pruning);
- ``tp-taylor``: one global ranking by first-order Taylor importance;
- ``halp``: a latency knapsack on Taylor importance, without components or application importance (HALP-like).
  The four baselines size each step on the same cost model and may cut every interface (``--flow-policy joint``).

Two one-shot rows (labelled so) keep the old comparison: Torch-Pruning's MetaPruner from the dense model at ratio
0.1, 0.2, … (global / local magnitude): the first that measures within the budget (or 0.9) is fine-tuned once with the
total fine-tune steps of edgeprune's run on that row and seed; the metric budget is reported, not enforced.

Every latency is relative to the dense model measured in alternation with it (``Runtime.compare``), so a row's
speed-ups are free of this machine's drift; ``latency_ms`` is that ratio × the dense latency the run measured.
Writes bench/results/latency_budget.csv and .md; rows are journalled so a killed run resumes. ``--seeds 0 1 2``
runs every method once per seed (one run per row says little where reruns move a row's metric and speed-up; the
headline then shows the verdict most seeds reached and the medians), and ``--keep`` merges the CSVs of runs made
apart (one bench per core) into one table.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import math
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
from edgeprune.devices.probe import cpu_model
from edgeprune.loop import TuneSettings, tune
from edgeprune.loop.loop import OPENED, UNTUNED
from edgeprune.planners import DEFAULT_STRATEGY
from edgeprune.runtimes import get_runtime

RESULTS = Path(__file__).parent / "results"
FINETUNE = {"digits-autoencoder": 100, "digits-resnet": 40, "pendulum-agent": 200, "fashion-resnet18": 100,
            "fashion-mobilenet_v2": 100}
FINAL_FINETUNE = {task: 4 * steps for task, steps in FINETUNE.items()}
"""Fine-tune steps on the final widths, after the last pruning step (``--final-finetune-steps``): kept only where
the metric does not get worse, and counted in the method's fine-tune steps."""
FLOW_POLICY = {"digits-resnet": "joint"}  # see the module docstring
EDGEPRUNE = {"edgeprune": DEFAULT_STRATEGY, "select": "select"}  # method -> strategy
LOOP = [*EDGEPRUNE, "tp-local", "tp-global", "tp-taylor", "halp"]
ONE_SHOT = {"tp-global one-shot": True, "tp-local one-shot": False}  # method -> global pruning
TARGET = "cpu"


def macs_of(model: nn.Module, task: Task) -> int:
    return int(tp.utils.count_ops_and_params(copy.deepcopy(model).eval(), task.example_inputs())[0])


def loop_run(task: Task, method: str, budget: str, work: Path, seed: int) -> dict[str, object]:
    """One tune run of ``method`` (a strategy name, ``edgeprune`` being tune's default)."""
    strategy = EDGEPRUNE.get(method, method)
    flow_policy = FLOW_POLICY.get(task.name, TuneSettings().flow_policy) if method in EDGEPRUNE else "joint"
    settings = TuneSettings(task=task.name, target=TARGET, latency_budget=budget, strategy=strategy,
                            finetune_steps=FINETUNE[task.name], final_finetune_steps=FINAL_FINETUNE[task.name],
                            flow_policy=flow_policy, seed=seed)
    result = tune(settings, work / f"{task.name}-{method}-{budget}-{seed}")
    manifest = result.manifest
    pruned = manifest.pruned
    return {"metric": pruned.metrics[task.metric], "relative": pruned.latency_ms / manifest.dense.latency_ms,
            "run_dense_ms": manifest.dense.latency_ms, "macs": pruned.macs,
            "metric_holds": manifest.budgets.metric.holds, "run_status": result.status,
            "measurements": manifest.measurements, "final_finetune_steps": FINAL_FINETUNE[task.name],
            "finetune_steps": sum(s.finetune_steps for s in manifest.steps),
            "steps_accepted": sum(1 for s in manifest.steps if s.status == "accepted"),
            "steps_rolled_back": sum(1 for s in manifest.steps if s.status == "rolled-back"),
            "steps_untuned": sum(1 for s in manifest.steps if UNTUNED in s.note),  # cuts kept without their fine-tune
            "interfaces_opened": any(OPENED in s.note for s in manifest.steps),  # flow policy last opened them
            "wall_s": manifest.wall_s}


def one_shot(task: Task, method: str, budget: str, metric: MetricBudget, dense_value: float,
             finetune_steps: int, seed: int) -> dict[str, object]:
    """The smallest MetaPruner ratio (0.1, 0.2, …) whose model measures within the budget (or 0.9), fine-tuned once.

    Latency depends on the widths alone, so candidates are measured before any fine-tuning; only the chosen one
    spends the fine-tune steps."""
    target = load_target(TARGET)
    runtime = get_runtime(target)
    dense = task.build()
    inputs = task.example_inputs()
    limit = LatencyBudget.parse(budget).value
    started, measurements = time.perf_counter(), 0
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = export_onnx(dense, inputs, Path(tmp) / "dense.onnx")
        for step in range(1, 10):
            model = copy.deepcopy(dense)
            names = dict(model.named_modules())
            tp.pruner.MetaPruner(model, inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                 global_pruning=ONE_SHOT[method], pruning_ratio=step / 10, round_to=target.granule,
                                 ignored_layers=[names[n] for n in task.output_layers]).step()
            paired = runtime.compare(export_onnx(model, inputs, Path(tmp) / "m.onnx"), dense_path, to_numpy(inputs))
            measurements += 1
            if paired.ratio <= limit:
                break
    torch.manual_seed(seed)
    assert task.finetune is not None
    task.finetune(model, finetune_steps)
    model.eval()
    value = task.evaluate(model)[task.metric]
    return {"metric": value, "relative": paired.ratio, "macs": macs_of(model, task),
            "metric_holds": metric.holds(value, dense_value), "ratio": step / 10, "measurements": measurements,
            "final_finetune_steps": 0, "finetune_steps": finetune_steps, "wall_s": time.perf_counter() - started}


def judge(row: dict[str, object]) -> dict[str, object]:
    """Every method judged the same way: its latency relative to the dense model against the relative budget."""
    latency_holds = float(row["relative"]) <= LatencyBudget.parse(str(row["budget"])).value  # type: ignore[arg-type]
    status = "met" if latency_holds and row["metric_holds"] else (
        "metric broken" if latency_holds else "latency not reached")
    return {**row, "latency_holds": latency_holds, "status": status}


def earlier_rows(path: Path) -> list[dict[str, object]]:
    """The rows of an earlier run's latency_budget.csv as this run journals them (before :func:`judge`)."""
    if not path.is_file():
        raise SystemExit(f"--keep: no such file {path}")
    frame = pd.read_csv(path).drop(columns=["latency_holds", "status"], errors="ignore")
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in frame.to_dict("records")]


def row_key(row: dict[str, object]) -> tuple[object, ...]:
    """A row's task, budget, method and seed (rows journalled before seeds were seed 0)."""
    return row["task"], row["budget"], row["method"], row.setdefault("seed", 0)


def provenance(frame: pd.DataFrame) -> str:
    """When and where the rows were measured: in one run, or per task the bench run(s) (their starts and CPUs) its rows
    come from — a task's rows from two runs are a resumed run, or rows merged by hand, and the table says so."""
    runs = frame.assign(host=frame["host"].fillna("CPU not recorded") if "host" in frame else "CPU not recorded")
    where = (runs["run"] + " (" + runs["host"] + ")").groupby(runs["task"], sort=False).unique()
    if frame["run"].nunique() == 1:
        return f"every row in one run (started {where.iloc[0][0]})"
    return "rows by the run they were measured in: " + "; ".join(f"{t} {', '.join(r)}" for t, r in where.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits-autoencoder", "digits-resnet", "pendulum-agent",
                                                       "fashion-resnet18", "fashion-mobilenet_v2"])
    parser.add_argument("--budgets", nargs="+", default=["0.5x", "0.35x"])
    parser.add_argument("--methods", nargs="+", default=[*LOOP, *ONE_SHOT])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="one run per method and seed (the tune runs' --seed, the one-shot fine-tune's); rows "
                             "journalled with other seeds are kept, so a second bench can add seeds to the first")
    parser.add_argument("--keep", nargs="+", type=Path, default=[],
                        help="latency_budget.csv files of earlier runs: their rows join this run's tables (a later "
                             "file's row replacing an earlier one's of the same task, budget, method and seed, and "
                             "this run's replacing both), so runs made apart — one per core — make one table")
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables from the rows journalled so far (a bench stopped part-way); run nothing")
    parser.add_argument("--note", default="", help="a sentence on how this run was made, written under the header")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run, host = dt.datetime.now().strftime("%Y-%m-%d %H:%M"), cpu_model()
    work = RESULTS / ".latency_budget-work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EDGEPRUNE_PROFILES", str(work / "profiles"))
    journal = work / "rows.jsonl"
    journalled = [json.loads(line) for line in journal.read_text().splitlines()] if journal.is_file() else []
    done = {row_key(r): r for r in journalled}
    kept = {row_key(r): r for path in args.keep for r in earlier_rows(path)}
    for name in [] if args.report_only else args.tasks:
        task = load_task(name)
        dense = task.build()
        dense_value, dense_macs = task.evaluate(dense)[task.metric], macs_of(dense, task)
        metric = MetricBudget.parse(task.default_metric_budget)
        for budget, seed, method in itertools.product(args.budgets, args.seeds, args.methods):
            if (name, budget, method, seed) in done:
                continue
            print(f"{name} {budget} {method} seed {seed} …", flush=True)
            if method in ONE_SHOT:  # as many fine-tune steps per candidate as edgeprune's whole run took
                key = (name, budget, "edgeprune", seed)
                edgeprune = done.get(key) or kept.get(key, {})
                steps = int(edgeprune.get("finetune_steps") or 5 * FINETUNE[name])
                row = one_shot(task, method, budget, metric, dense_value, steps, seed)
            else:
                row = loop_run(task, method, budget, work, seed)
            row = {"task": name, "budget": budget, "method": method, "seed": seed,
                   "measured": dt.date.today().isoformat(), "run": run, "host": host, "dense_metric": dense_value,
                   "metric_budget": str(metric), **row,
                   "speedup": 1.0 / float(row["relative"]), "mac_reduction": dense_macs / float(row["macs"])}
            row["speedup_per_mac_reduction"] = row["speedup"] / row["mac_reduction"]
            with journal.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            done[(name, budget, method, seed)] = row
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    rows = {**kept, **done}  # this run's rows win
    frame = pd.DataFrame([judge(row) for key, row in rows.items() if key[0] in args.tasks])
    seeds = sorted(frame["seed"].unique().tolist())
    order = {m: i for i, m in enumerate([*LOOP, *ONE_SHOT])}
    frame = frame.sort_values(["task", "budget", "method", "seed"],
                              key=lambda c: c.map(order) if c.name == "method" else c,
                              ascending=[True, False, True, True], ignore_index=True)
    frame.to_csv(RESULTS / "latency_budget.csv", index=False)
    shown = frame[["task", "budget", "method", "seed", "status", "metric", "dense_metric", "speedup", "mac_reduction",
                   "speedup_per_mac_reduction", "measurements", "final_finetune_steps", "finetune_steps", "wall_s",
                   "run_status"]]
    text = (f"# Latency budget: edgeprune vs the baselines through the same loop\n\n"
            f"`python bench/latency_budget.py --tasks {' '.join(args.tasks)} --budgets {' '.join(args.budgets)}"
            f"{' --methods ' + ' '.join(args.methods) if args.methods != parser.get_default('methods') else ''}"
            f"{' --seeds ' + ' '.join(map(str, seeds)) if seeds != [0] else ''}` — "
            f"target `{TARGET}` ({platform.processor() or platform.machine()}, ONNX Runtime, 1 thread), "
            f"{provenance(frame)}. Fine-tune steps after every pruning step: "
            f"{FINETUNE}; `final_finetune_steps`: on the final widths after the last one (loop methods; kept only "
            f"where the metric holds up). `speedup` = dense / pruned latency, measured in alternation with the dense "
            f"model; `status` judges it against the relative budget and the metric against the task's metric budget; "
            f"`finetune_steps`: all fine-tuning the method spent; `wall_s` of a task's first loop method includes "
            f"building its cost model. `run_status`: what the tune run itself concluded. One-shot rows are "
            f"Torch-Pruning's MetaPruner from dense, not the loop (see bench/latency_budget.py)."
            f"{' ' + args.note if args.note else ''}\n\n"
            f"{shown.to_markdown(index=False, floatfmt='.4g')}\n")
    missing = [f"{t} {b} {m} seed {seed}" for t, b, seed, m in
               itertools.product(args.tasks, args.budgets, args.seeds, args.methods) if (t, b, m, seed) not in rows]
    if missing:
        text += f"\nNot run (the bench was stopped before them; its journal stays, and a rerun continues): " \
                f"{'; '.join(missing)}.\n"
    (RESULTS / "latency_budget.md").write_text(text)
    print(text)
    if not missing:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
