"""The bundle: a finished loop's plan, weights, measured model, profiles, manifest and report, published as one folder."""

from __future__ import annotations

import datetime as dt
import glob
import importlib.metadata
import platform
import shutil
from pathlib import Path

import onnx
import torch
from torch import nn

import edgeprune
from edgeprune.artifact.export import Artifact, to_numpy
from edgeprune.core.hashing import sha256_file, state_dict_hash
from edgeprune.core.manifest import (
    Budgets,
    CalibrationRecord,
    CostModelRecord,
    GraphRecord,
    LatencyBudgetRecord,
    Manifest,
    ManifestError,
    MetricBudgetRecord,
    PrunedRecord,
    TaskRecord,
)
from edgeprune.core.task import Task, load_task
from edgeprune.loop.loop import Loop
from edgeprune.loop.settings import RunFolderError, TuneSettings, run_components, target_inputs
from edgeprune.loop.state import CHECKPOINT, CHECKPOINT_WEIGHTS, Outcome
from edgeprune.measure.profile import attribute, save_profile
from edgeprune.prune.plan import Plan
from edgeprune.runtimes import Runtime

#: The published model's name in the bundle: ``model.onnx`` (or ``model.pt2``), and ``model.plan`` where the runtime
#: builds an engine.
MODEL = "model"


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


def existing_run(out: Path, key: str) -> Manifest | None:
    """The manifest of a finished identical run in ``out``; an error if ``out`` holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise RunFolderError(f"output {out} exists and is not a folder")
    try:
        manifest = Manifest.load(out)
    except ManifestError as exc:
        if exc.kind != "no-manifest":
            raise RunFolderError(f"output folder {out} holds no readable edgeprune run ({exc}); choose another "
                                 f"--out or remove it") from None
        if any(out.iterdir()):
            raise RunFolderError(f"output folder {out} is not empty and holds no edgeprune run; choose another --out") from None
        return None
    if manifest.run_key != key:
        s = manifest.settings
        raise RunFolderError(
            f"output folder {out} already holds a different run (task {s.get('task')}, target {s.get('target')}, "
            f"latency {s.get('latency_budget')}, metric {s.get('metric_budget')}); choose another --out or remove it"
        )
    return manifest


def publish(artifact: Artifact, folder: Path, name: str = MODEL) -> Artifact:
    """Copy a measured artefact into ``folder`` as ``NAME.*``: the exported model and, where the runtime built
    something else from it (an engine, a remote build's handle), that too, with the files the runtime keeps beside
    it (ONNX facts, layer info) — every file named after the export. Build caches stay behind."""
    stem = artifact.exported.stem
    built = artifact.built
    if built != artifact.exported and (built.parent != artifact.exported.parent or not built.name.startswith(f"{stem}.")):
        raise ValueError(f"cannot publish {built}: a built model is expected beside {artifact.exported}, named after it")

    def renamed(path: Path) -> Path:
        return folder / f"{name}{path.name[len(stem):]}"

    for path in sorted(artifact.exported.parent.glob(f"{glob.escape(stem)}.*")):
        if path.is_file():
            shutil.copy2(path, renamed(path))
    return Artifact(renamed(artifact.exported), renamed(built), artifact.max_abs_error)


def write_bundle(loop: Loop, folder: Path, key: str, outcome: Outcome, wall_s: float) -> Manifest:
    """Plan, weights, the measured model, profiles, steps, manifest and report of a finished loop, written into
    ``folder``. The model is the one the loop exported, built, checked and measured: published, never exported
    again."""
    from edgeprune.report.page import FIGURES
    from edgeprune.report.report import write_report

    model, plan, final, graph = outcome.model, outcome.plan, outcome.final, outcome.graph
    loop.log("writing the bundle: the measured model, profiles, report")
    plan.save(folder / "plan.json")
    torch.save(model.state_dict(), folder / "weights.pt")
    artifact = publish(outcome.artifact, folder)
    components = graph.components
    provenance = {"target": loop.target.name, "runtime": loop.runtime.name, **loop.runtime.versions(),
                  "device": loop.target.device, "precision": loop.target.precision, "task": loop.task.name,
                  "input_shapes": [list(t.shape) for t in loop.inputs]}
    for name, built, weights in (("profile-dense", loop.baseline.dense_artifact, loop.baseline.dense_hash),
                                 ("profile", artifact, state_dict_hash(model))):
        frame = loop.runtime.profile(built.built, to_numpy(loop.inputs))
        onnx_path = built.exported if loop.runtime.source == "onnx" else None
        save_profile(attribute(frame, onnx_path, components, {**provenance, "model_hash": weights}),
                     folder / f"{name}.csv")
    metric = loop.metric_budget.metric
    pruned_value = final.metrics[metric]
    manifest = Manifest(
        status=outcome.status,
        reason=outcome.reason,
        run_key=key,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        wall_s=round(wall_s, 2),
        settings=loop.settings.model_dump(),
        task=TaskRecord(name=loop.task.name, spec=loop.settings.task, metric=metric,
                        dense_weights_sha256=loop.baseline.dense_hash),
        target=loop.target,
        target_digest=loop.target.digest(),
        versions=versions(loop.runtime),
        budgets=Budgets(
            latency=LatencyBudgetRecord(expression=str(loop.latency_budget), threshold_ms=loop.baseline.budget_ms,
                                        holds=final.latency_ms <= loop.baseline.budget_ms),
            metric=MetricBudgetRecord(expression=str(loop.metric_budget), threshold=loop.baseline.metric_threshold,
                                      holds=loop.metric_budget.holds(pruned_value, loop.baseline.dense_value)),
        ),
        dense=outcome.dense,
        pruned=PrunedRecord(**final.model_dump(), max_abs_error=artifact.max_abs_error,
                            pruned_groups=len(plan.pruned_groups), groups=len(plan.groups)),
        graph=GraphRecord(components=components, not_pruned=graph.skipped, torch_pruning_notes=graph.notes),
        steps=outcome.steps,
        measurements=sum(1 for s in outcome.steps if s.latency is not None),
        cost_model=(CostModelRecord(
            path=str(loop.baseline.cost_path), calibration=CalibrationRecord.model_validate(
                outcome.state.cost.calibration.model_dump(mode="json"))) if outcome.state.cost is not None else None),
    )
    write_report(folder, manifest)
    bundle = [*folder.glob("*"), *folder.glob(f"{FIGURES}/*")]  # not the staging folder's work files
    manifest = manifest.model_copy(update={"files": {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(bundle)
        if p.is_file() and p.name not in (CHECKPOINT, CHECKPOINT_WEIGHTS)}})
    manifest.save(folder)
    return manifest


def load_pruned(run_dir: Path) -> tuple[Task, nn.Module]:
    """Rebuild a run's pruned model: dense task model, plan replayed, weights loaded (no pickled modules)."""
    manifest = Manifest.load(run_dir)
    settings = TuneSettings.model_validate(manifest.settings)
    task = load_task(settings.task)
    model = task.build()
    Plan.load(run_dir / "plan.json").apply(model, target_inputs(task, manifest.target), run_components(settings, task),
                                           task.output_layers)
    model.load_state_dict(torch.load(run_dir / "weights.pt", weights_only=True))
    return task, model.eval()
