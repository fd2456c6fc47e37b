"""Component-aware pruning vs plain DepGraph pruning, at the same pruning ratio and the same fine-tune budget.

For each built-in task and channel-pruning ratio, three ways to prune the shipped dense model:
- ``component-aware``: edgeprune's groups, flow groups (interfaces) protected, every intra group cut uniformly
  by magnitude at the target's granule;
- ``depgraph-global``: Torch-Pruning's MetaPruner, global magnitude ranking over every group;
- ``depgraph-local``: MetaPruner, the same ratio in every group (uniform local);
then the task's own fine-tune for the same number of steps, the task metric, parameter sparsity, whether every
output keeps its shape, and latency measured with ONNX Runtime on the CPU target.

    python bench/component_vs_depgraph.py [--tasks pendulum-agent digits-autoencoder] [--ratios 0.3 0.5 0.7]

Writes ``bench/results/component_vs_depgraph.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch_pruning as tp
from torch import nn

from edgeprune.export import export_onnx, flat_outputs, to_numpy
from edgeprune.graph import ComponentGraph
from edgeprune.plan import Plan, prune_uniform
from edgeprune.runtimes import get_runtime
from edgeprune.targets import load_target
from edgeprune.task import Task, load_task

RESULTS = Path(__file__).parent / "results"
FINETUNE = {"pendulum-agent": 200, "digits-autoencoder": 40}


def depgraph(task: Task, model: nn.Module, ratio: float, granule: int, global_pruning: bool) -> nn.Module:
    model = copy.deepcopy(model)
    names = dict(model.named_modules())
    pruner = tp.pruner.MetaPruner(
        model, task.example_inputs(), importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=global_pruning, pruning_ratio=ratio, round_to=granule,
        ignored_layers=[names[n] for n in task.output_layers],
    )
    pruner.step()
    return model


def component_aware(task: Task, model: nn.Module, ratio: float, granule: int) -> nn.Module:
    args = {"components": task.components, "output_layers": task.output_layers}
    plan = Plan.dense(task.name, ComponentGraph(copy.deepcopy(model), task.example_inputs(), **args))
    return prune_uniform(model, plan, ratio, task.example_inputs(), granule, "protect", **args)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["pendulum-agent", "digits-autoencoder"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--target", default="cpu")
    args = parser.parse_args()
    target = load_target(args.target)
    target = target.model_copy(update={"measure": target.measure.model_copy(update={"repeats": 3, "runs": 200})})
    runtime = get_runtime(target)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks:
            task = load_task(name)
            dense = task.build()
            inputs = task.example_inputs()
            with torch.no_grad():
                shapes = [t.shape for t in flat_outputs(dense(*inputs))]
            dense_params = sum(p.numel() for p in dense.parameters())

            def record(method: str, ratio: float, model: nn.Module, seconds: float) -> None:
                model.eval()
                with torch.no_grad():
                    intact = [t.shape for t in flat_outputs(model(*inputs))] == shapes
                path = export_onnx(model, inputs, Path(tmp) / "m.onnx")
                latency = runtime.latency(path, to_numpy(inputs)).median_ms
                metric = task.evaluate(model)[task.metric]
                params = sum(p.numel() for p in model.parameters())
                rows.append({"task": name, "ratio": ratio, "method": method, task.metric: metric, "metric": metric,
                             "param_sparsity": 1 - params / dense_params, "latency_ms": latency,
                             "outputs_intact": intact, "prune_and_finetune_s": seconds})
                print(f"{name:20s} {ratio:4.2f} {method:16s} {task.metric}={metric:9.4g} sparsity="
                      f"{1 - params / dense_params:5.1%} latency={latency:.4g} ms intact={intact}", flush=True)

            record("dense", 0.0, copy.deepcopy(dense), 0.0)
            for ratio in args.ratios:
                for method in ("component-aware", "depgraph-global", "depgraph-local"):
                    start = time.perf_counter()
                    if method == "component-aware":
                        model = component_aware(task, dense, ratio, target.granule)
                    else:
                        model = depgraph(task, dense, ratio, target.granule, method == "depgraph-global")
                    torch.manual_seed(0)
                    if task.finetune is not None:
                        task.finetune(model, FINETUNE.get(name, 100))
                    record(method, ratio, model, time.perf_counter() - start)
    frame = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    frame.drop(columns="metric").to_csv(RESULTS / "component_vs_depgraph.csv", index=False)
    with (RESULTS / "component_vs_depgraph.md").open("w") as f:
        f.write(f"# Component-aware vs plain DepGraph (target {target.name}, fine-tune steps {FINETUNE})\n\n")
        for name, part in frame.groupby("task", sort=False):
            f.write(f"## {name}\n\n")
            f.write(part.drop(columns=["task", "metric"]).dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".4g"))
            f.write("\n\n")
    print(f"wrote {RESULTS / 'component_vs_depgraph.md'}")


if __name__ == "__main__":
    main()
