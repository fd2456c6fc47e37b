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

from edgeprune.artifact.export import export_onnx, flat_outputs, to_numpy
from edgeprune.core.targets import load_target
from edgeprune.core.task import Task, load_task
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.plan import Plan, prune_uniform
from edgeprune.runtimes import Runtime, get_runtime

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


def measure(task: Task, model: nn.Module, runtime: Runtime, work: Path, dense: dict[str, object]) -> dict[str, object]:
    """Metric, parameter sparsity, output shapes and measured latency of one (pruned, fine-tuned) model."""
    model.eval()
    inputs = task.example_inputs()
    with torch.no_grad():
        intact = [t.shape for t in flat_outputs(model(*inputs))] == dense["shapes"]
    latency = runtime.latency(export_onnx(model, inputs, work / "m.onnx"), to_numpy(inputs)).median_ms
    params = sum(p.numel() for p in model.parameters())
    return {task.metric: task.evaluate(model)[task.metric], "param_sparsity": 1 - params / dense["params"],
            "latency_ms": latency, "outputs_intact": intact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["pendulum-agent", "digits-autoencoder"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--target", default="cpu")
    args = parser.parse_args()
    target = load_target(args.target)
    target = target.model_copy(update={"measure": target.measure.model_copy(update={"repeats": 3, "runs": 200})})
    runtime = get_runtime(target)
    tables: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks:
            task = load_task(name)
            dense_model = task.build()
            with torch.no_grad():
                shapes = [t.shape for t in flat_outputs(dense_model(*task.example_inputs()))]
            dense = {"shapes": shapes, "params": sum(p.numel() for p in dense_model.parameters())}
            rows = [{"ratio": 0.0, "method": "dense", **measure(task, copy.deepcopy(dense_model), runtime, Path(tmp), dense),
                     "prune_and_finetune_s": 0.0}]
            for ratio in args.ratios:
                for method in ("component-aware", "depgraph-global", "depgraph-local"):
                    start = time.perf_counter()
                    if method == "component-aware":
                        model = component_aware(task, dense_model, ratio, target.granule)
                    else:
                        model = depgraph(task, dense_model, ratio, target.granule, method == "depgraph-global")
                    torch.manual_seed(0)
                    if task.finetune is not None:
                        task.finetune(model, FINETUNE.get(name, 100))
                    seconds = time.perf_counter() - start
                    rows.append({"ratio": ratio, "method": method, **measure(task, model, runtime, Path(tmp), dense),
                                 "prune_and_finetune_s": seconds})
                    print(name, rows[-1], flush=True)
            tables[name] = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    pd.concat([t.assign(task=n) for n, t in tables.items()]).to_csv(RESULTS / "component_vs_depgraph.csv", index=False)
    with (RESULTS / "component_vs_depgraph.md").open("w") as f:
        f.write(f"# Component-aware vs plain DepGraph (target {target.name}, fine-tune steps {FINETUNE})\n\n")
        for name, table in tables.items():
            f.write(f"## {name}\n\n{table.to_markdown(index=False, floatfmt='.4g')}\n\n")
    print(f"wrote {RESULTS / 'component_vs_depgraph.md'}")


if __name__ == "__main__":
    main()
