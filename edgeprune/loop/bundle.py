"""The bundle: a finished loop's plan, weights, ONNX, profiles, manifest and report, published as one folder."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
from pathlib import Path

import onnx
import torch
from torch import nn

import edgeprune
from edgeprune.artifact.export import build_artifact, to_numpy
from edgeprune.core.hashing import sha256_file, state_dict_hash
from edgeprune.core.manifest import MANIFEST
from edgeprune.core.targets import Target
from edgeprune.core.task import Task, load_task
from edgeprune.loop.loop import CHECKPOINT, CHECKPOINT_WEIGHTS, Loop, Outcome
from edgeprune.loop.settings import RunFolderError, TuneSettings, graph_args, target_inputs
from edgeprune.measure.profile import attribute, save_profile
from edgeprune.prune.plan import Plan
from edgeprune.runtimes import Runtime


def versions(runtime: Runtime) -> dict[str, str]:
    return {
        "edgeprune": edgeprune.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": importlib.metadata.version("torch-pruning"),
        "onnx": onnx.__version__,
        **runtime.versions(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def existing_run(out: Path, key: str) -> dict[str, object] | None:
    """The manifest of a finished identical run in ``out``; an error if ``out`` holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise RunFolderError(f"output {out} exists and is not a folder")
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        if any(out.iterdir()):
            raise RunFolderError(f"output folder {out} is not empty and holds no edgeprune run; choose another --out")
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("run_key") != key:
        s = manifest.get("settings", {})
        raise RunFolderError(
            f"output folder {out} already holds a different run (task {s.get('task')}, target {s.get('target')}, "
            f"latency {s.get('latency_budget')}, metric {s.get('metric_budget')}); choose another --out or remove it"
        )
    return manifest


def write_bundle(loop: Loop, folder: Path, key: str, outcome: Outcome, wall_s: float) -> dict[str, object]:
    """Plan, weights, ONNX, profiles, steps, manifest and report of a finished loop, written into ``folder``."""
    from edgeprune.report.report import FIGURES, write_report

    model, plan, final = outcome.model, outcome.plan, outcome.final
    loop.log("writing the bundle: ONNX export, profiles, report")
    plan.save(folder / "plan.json")
    torch.save(model.state_dict(), folder / "weights.pt")
    artifact = build_artifact(model, loop.inputs, loop.runtime, folder, "model", loop.target.precision)
    graph = outcome.graph
    components = graph.components
    provenance = {"target": loop.target.name, "runtime": loop.runtime.name, **loop.runtime.versions(),
                  "device": loop.target.device, "precision": loop.target.precision, "task": loop.task.name,
                  "input_shapes": [list(t.shape) for t in loop.inputs]}
    for name, built, weights in (("profile-dense", loop.dense_artifact, loop.dense_hash),
                                 ("profile", artifact, state_dict_hash(model))):
        frame = loop.runtime.profile(built.built, to_numpy(loop.inputs))
        onnx_path = built.exported if loop.runtime.source == "onnx" else None
        save_profile(attribute(frame, onnx_path, components, {**provenance, "model_hash": weights}),
                     folder / f"{name}.csv")
    metric = loop.metric_budget.metric
    pruned_value = final.metrics[metric]
    manifest: dict[str, object] = {
        "format": "edgeprune.manifest/1",
        "status": outcome.status,
        "reason": outcome.reason,
        "run_key": key,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 2),
        "settings": loop.settings.model_dump(),
        "task": {"name": loop.task.name, "spec": loop.settings.task, "metric": metric,
                 "dense_weights_sha256": loop.dense_hash},
        "target": {**loop.target.model_dump(), "digest": loop.target.digest()},
        "versions": versions(loop.runtime),
        "budgets": {
            "latency": {"expression": str(loop.latency_budget), "threshold_ms": loop.budget_ms,
                        "holds": final.latency_ms <= loop.budget_ms},
            "metric": {"expression": str(loop.metric_budget), "threshold": loop.metric_threshold,
                       "holds": loop.metric_budget.holds(pruned_value, loop.dense_value)},
        },
        "dense": outcome.dense.model_dump(),
        "pruned": {**final.model_dump(), "max_abs_error": artifact.max_abs_error,
                   "pruned_groups": len(plan.pruned_groups), "groups": len(plan.groups)},
        "graph": {"components": components, "not_pruned": graph.skipped, "torch_pruning_notes": graph.notes},
        "steps": [s.model_dump() for s in loop.steps],
        "measurements": sum(1 for s in loop.steps if s.latency is not None),
        "cost_model": ({"path": str(loop.cost_path), "calibration": loop.cost.calibration.model_dump(mode="json")}
                       if loop.settings.plans_latency else None),
    }
    write_report(folder, manifest)
    bundle = [*folder.glob("*"), *folder.glob(f"{FIGURES}/*")]  # not the staging folder's work files
    manifest["files"] = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(bundle)
                         if p.is_file() and p.name not in (CHECKPOINT, CHECKPOINT_WEIGHTS)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def load_pruned(run_dir: Path) -> tuple[Task, nn.Module]:
    """Rebuild a run's pruned model: dense task model, plan replayed, weights loaded (no pickled modules)."""
    manifest = json.loads((run_dir / MANIFEST).read_text())
    task = load_task(manifest["settings"]["task"])
    target = Target.model_validate({k: v for k, v in manifest["target"].items() if k != "digest"})
    model = task.build()
    settings = TuneSettings.model_validate(manifest["settings"])
    Plan.load(run_dir / "plan.json").apply(model, target_inputs(task, target), **graph_args(settings, task))
    model.load_state_dict(torch.load(run_dir / "weights.pt", weights_only=True))
    return task, model.eval()
