"""profiles/: stored profiles and cost models, keyed by everything that changes a measurement.

A profile is reused only when the task, the dense weights, the input shapes, every target setting, the runtime's
versions and the host all match; anything else is a new measurement. Files are written under a temporary name and
renamed, so a killed run never leaves a half-written profile that a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from edgeprune.artifact.export import Artifact, build_artifact, to_numpy
from edgeprune.core.hashing import digest_json, state_dict_hash
from edgeprune.core.progress import Progress, silent
from edgeprune.core.targets import Target
from edgeprune.core.task import Task
from edgeprune.devices.probe import cpu_model
from edgeprune.measure.cost import CostModel, CostModelBuilder
from edgeprune.measure.profile import attribute, load_profile, save_profile
from edgeprune.measure.tables import TableStore
from edgeprune.prune.graph import ComponentGraph
from edgeprune.prune.plan import keep_count
from edgeprune.runtimes import Runtime


def default_root() -> Path:
    """Where profiles live unless told otherwise: $EDGEPRUNE_PROFILES, else ./profiles."""
    return Path(os.environ.get("EDGEPRUNE_PROFILES", "profiles"))


def host_facts() -> dict[str, object]:
    """What identifies a local machine's speed: CPU model, core count and architecture (a profile from another box
    is not ours; the kernel release is not part of it, so a stored profile serves every machine of the same kind)."""
    return {"host_cpu": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine()}


def profile_key(facts: dict[str, object]) -> str:
    return digest_json(facts, 16)


class ProfileStore:
    """``ROOT/TASK/TARGET-KEY.csv`` (+ ``.json`` provenance) and ``TARGET-KEY.cost.json``; ``ROOT/validated/KEY.json``
    the groups' validations (:meth:`ComponentGraph.validate`), shared by every target."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_root()
        self.validated = self.root / "validated"

    def _stem(self, task: str, target: str, key: str) -> Path:
        return self.root / task / f"{target}-{key}"

    def profile_path(self, task: str, target: str, key: str) -> Path:
        return self._stem(task, target, key).with_suffix(".csv")

    def cost_path(self, task: str, target: str, key: str) -> Path:
        return self._stem(task, target, key).with_suffix(".cost.json")

    def load_profile(self, task: str, target: str, key: str) -> pd.DataFrame | None:
        path = self.profile_path(task, target, key)
        return load_profile(path) if path.is_file() and path.with_suffix(".json").is_file() else None

    def save_profile(self, frame: pd.DataFrame, task: str, target: str, key: str) -> Path:
        path = self.profile_path(task, target, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.csv")
        save_profile(frame, tmp)
        tmp.with_suffix(".json").replace(path.with_suffix(".json"))
        tmp.replace(path)
        return path

    def load_cost(self, task: str, target: str, key: str) -> CostModel | None:
        path = self.cost_path(task, target, key)
        return CostModel.load(path) if path.is_file() else None

    def save_cost(self, model: CostModel, task: str, target: str, key: str) -> Path:
        path = self.cost_path(task, target, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        return path

    def others(self, task: str, target: str, key: str, kind: str = "profile") -> list[tuple[Path, dict[str, object]]]:
        """The stored profiles (``kind="profile"``) or cost models (``"cost"``) of the same task and target under
        another key — measured on another host, with other weights or runtime versions — with the facts each was
        measured with (a profile's ``.json`` provenance; a cost model's ``provenance`` field), newest first."""
        suffix = r"\.cost\.json" if kind == "cost" else r"\.csv"
        pattern = re.compile(rf"{re.escape(target)}-([0-9a-f]{{16}}){suffix}")
        folder = self.root / task
        found = []
        for path in folder.iterdir() if folder.is_dir() else ():
            match = pattern.fullmatch(path.name)
            if match is None or match[1] == key:
                continue
            try:
                data = json.loads((path if kind == "cost" else path.with_suffix(".json")).read_text())
                facts = data.get("provenance", {}) if kind == "cost" else data
            except (OSError, ValueError, AttributeError):
                continue  # unreadable or without provenance: nothing to compare with
            if isinstance(facts, dict):
                found.append((path, facts))
        return sorted(found, key=lambda item: item[0].stat().st_mtime, reverse=True)

    def mismatches(self, task: str, target: str, key: str, facts: dict[str, object], kind: str = "profile",
                   shown: int = 3) -> list[str]:
        """One line per stored profile (or cost model) of this task and target under another key: the facts of
        this measurement it differs in, there and here (e.g. another host's CPU model and core count)."""
        def fact(value: object) -> str:
            return "(none)" if value is None else str(value)

        notes = []
        others = self.others(task, target, key, kind)
        for path, theirs in others[:shown]:
            differ = [name for name in facts if fact(theirs.get(name)) != fact(facts[name])]
            if not differ:  # the facts agree but the key does not: stored by another version of edgeprune
                notes.append(f"{path}: stored under another key with the same facts (by another edgeprune?)")
                continue
            there = ", ".join(f"{name}={fact(theirs.get(name))}" for name in differ)
            here = ", ".join(f"{name}={fact(facts[name])}" for name in differ)
            notes.append(f"{path}: measured with {there}; here {here}")
        if len(others) > shown:
            notes.append(f"{len(others) - shown} more stored {kind}s of {task} on {target} under other keys")
        return notes


@dataclass
class ProfileResult:
    key: str
    profile: pd.DataFrame
    profile_path: Path
    reused: bool
    groups: pd.DataFrame
    cost: CostModel | None = None
    cost_path: Path | None = None
    cost_reused: bool = False


def target_facts(target: Target, runtime: Runtime) -> dict[str, object]:
    """What a layer's time on this target depends on, whatever the model: the target's settings, the runtime's
    versions and the machine. The key of the shared layer tables.

    On a remote device the runtime's versions carry the device's keyed facts (``device_model``, ``device_l4t``,
    ``device_tensorrt``, ``device_nvpmodel``…), so a profile from another board, JetPack or power mode is never
    reused; this machine's CPU is then irrelevant and left out.
    """
    return {"target": target.name, "target_digest": target.digest(), "runtime": runtime.name, **runtime.versions(),
            "device": target.device, "precision": target.precision,
            **(host_facts() if target.device == "local" else {})}


def measurement_facts(task: Task, target: Target, runtime: Runtime, model_hash: str,
                      inputs: tuple) -> dict[str, object]:
    """Everything a profile depends on (the target's facts, the task, the weights, the input shapes); its hash is the
    store key, and it is the profile's provenance."""
    return {"task": task.name, "model_hash": model_hash, "input_shapes": [list(t.shape) for t in inputs],
            **target_facts(target, runtime)}


def table_store(root: Path, target: Target, runtime: Runtime) -> TableStore:
    """The layer tables of this target, runtime and machine under ``root`` (shared by every task)."""
    return TableStore(root, target.name, target_facts(target, runtime))


def device_provenance(runtime: Runtime) -> dict[str, object]:
    """All facts of a remote device, clocks included, for a profile's provenance (not its key: clocks move)."""
    facts = getattr(runtime, "device_facts", lambda: None)()
    return {} if facts is None else {"device_facts": facts}


def group_table(frame: pd.DataFrame, graph: ComponentGraph, cost: CostModel | None, granule: int) -> pd.DataFrame:
    """Per group: time of the runtime layers whose channels it sets (a layer between two groups counts in both)
    and, with a cost model, the measured latency that halving the group buys."""
    rows = []
    for key, info in graph.groups.items():
        modules = set(info.modules)
        layers_ms = float(frame.loc[frame["module"].isin(modules), "time_ms"].sum())
        row: dict[str, object] = {"group": key, "kind": info.kind, "components": ",".join(info.components),
                                  "width": info.width, "layers_ms": layers_ms}
        if cost is not None and key in cost.groups:
            half = keep_count(info.width, 0.5, granule)
            row["half_width_saves_ms"] = cost.predict_ms({}) - cost.predict_ms({key: half})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("layers_ms", ascending=False, ignore_index=True) if rows else table


@contextlib.contextmanager
def exclusive(work: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``work`` (a store's work folder) alone: two runs profiling one task on one target at once would write the
    same journal, and the first to finish would remove it under the other. The lock file lies in the system's
    temporary folder (named by the folder's path), so the store holds only what was measured."""
    lock = FileLock(Path(tempfile.gettempdir()) / f"edgeprune-{digest_json(str(work.resolve()), 16)}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another run is profiling in {work}: waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def profile_task(task: Task, target: Target, runtime: Runtime, inputs: tuple, graph: ComponentGraph,
                 store: ProfileStore, *, refresh: bool = False, cost_model: bool = False, work: Path | None = None,
                 artifact: Artifact | None = None, dense_ms: float | None = None,
                 log: Callable[[str], None] = lambda _: None, progress: Progress = silent) -> ProfileResult:
    """Profile the task's dense model on the target (or reuse the stored profile with the same key); optionally
    build (or reuse) its cost model. ``graph`` is the task's dense model, traced (by the caller, once; nothing here
    prunes it); ``artifact``, when given, is that model already exported and built (the loop's), profiled as it
    is, and ``dense_ms`` its measured latency. ``work`` holds exports and the cost model's journal until both are
    stored, so a killed cost-model build resumes where it stopped; layer tables are saved after every sweep."""
    model = graph.model
    facts = measurement_facts(task, target, runtime, state_dict_hash(model), inputs)
    key = profile_key(facts)
    work = work or store.root / task.name / f".{target.name}-{key}.work"
    with exclusive(work, log):  # a second run of the same task and target waits, then reuses the store
        work.mkdir(parents=True, exist_ok=True)
        frame = None if refresh else store.load_profile(task.name, target.name, key)
        reused = frame is not None
        if frame is None and not refresh:
            for note in store.mismatches(task.name, target.name, key, facts):
                log(f"{note}: not reused, measuring anew")
        if frame is None or cost_model:
            artifact = artifact or build_artifact(model, inputs, runtime, work, "dense", target.precision)
        if frame is None:
            log("profiling the dense model")
            frame = attribute(runtime.profile(artifact.built, to_numpy(inputs)),
                              artifact.exported if runtime.source == "onnx" else None, graph.components,
                              {**facts, **device_provenance(runtime)})
            store.save_profile(frame, task.name, target.name, key)
        cost = None if refresh or not cost_model else store.load_cost(task.name, target.name, key)
        cost_reused = cost is not None
        if cost_model and cost is None and not refresh:
            for note in store.mismatches(task.name, target.name, key, facts, kind="cost"):
                log(f"{note}: not reused, building the cost model anew")
        if cost_model and cost is None:
            assert artifact is not None
            log("building the cost model from per-layer latency tables")
            builder = CostModelBuilder(task.name, graph, inputs, target, runtime, work / "cost",
                                       table_store(store.root, target, runtime), log, progress)
            if dense_ms is None:
                dense_ms = runtime.latency(artifact.built, to_numpy(inputs)).median_ms
            cost = builder.build(artifact.exported, frame, dense_ms)
            cost = cost.model_copy(update={"provenance": {**facts, **cost.provenance}})
            store.save_cost(cost, task.name, target.name, key)
        groups = group_table(frame, graph, cost, target.granule)
        shutil.rmtree(work, ignore_errors=True)  # everything worth keeping is in the store now
    return ProfileResult(key, frame, store.profile_path(task.name, target.name, key), reused, groups, cost,
                         store.cost_path(task.name, target.name, key) if cost else None, cost_reused)
