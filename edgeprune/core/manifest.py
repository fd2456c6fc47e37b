"""The run manifest: what a tune run asked, measured and published — typed, written once, read by one loader.

``manifest.json`` is :class:`Manifest` dumped as JSON; :meth:`Manifest.load` is the one way to read it back (the
bundle, the report, deploy and the command line all use it), and every way a folder can fail to hold a run is one
:class:`ManifestError` line. Only ``core`` lives here: the run's settings are the loop's ``TuneSettings`` dumped as
a plain dict, and the cost model's calibration is recorded, not imported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from edgeprune.core.targets import Target

MANIFEST = "manifest.json"
FORMAT = "edgeprune.manifest/1"


class ManifestError(ValueError):
    """A folder holds no readable run manifest; the message is one line saying why.

    ``kind``: ``no-folder`` (missing, or not a folder), ``no-manifest`` (no manifest.json), ``not-json`` or
    ``invalid`` (not an edgeprune run manifest of this format) — for callers that word the first two their own way.
    """

    def __init__(self, message: str, kind: Literal["no-folder", "no-manifest", "not-json", "invalid"]) -> None:
        super().__init__(message)
        self.kind = kind


class StepRecord(BaseModel):
    """One step of the loop, as it lands in the manifest and the report."""

    model_config = ConfigDict(extra="forbid")

    index: int
    ratio: float
    status: Literal["dense", "accepted", "rolled-back"]
    metrics: dict[str, float]
    latency: dict[str, object] | None = None
    macs: int = 0
    params: int = 0
    channel_sparsity: float = 0.0
    note: str = ""
    seconds: float = 0.0
    plan_digest: str = ""
    search: dict[str, object] = Field(default_factory=dict)
    """How the planner chose this step's channels: target, sparsity or prediction reached, search cost."""
    finetune_steps: int = 0
    """Fine-tune steps this step spent (kept or not): what a run's fine-tune budget adds up from."""

    @property
    def latency_ms(self) -> float:
        return float(self.latency["median_ms"]) if self.latency else math.nan  # type: ignore[arg-type]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrunedRecord(StepRecord):
    """The step the run ends on (the published model), with what the bundle adds about it."""

    max_abs_error: float
    """largest output difference of the published (built) model against PyTorch"""
    pruned_groups: int
    groups: int


class TaskRecord(_Record):
    name: str
    spec: str
    """the task as the run was asked for it (built-in name, module:factory or file.py:factory)"""
    metric: str
    dense_weights_sha256: str


class LatencyBudgetRecord(_Record):
    expression: str
    threshold_ms: float
    holds: bool


class MetricBudgetRecord(_Record):
    expression: str
    threshold: float
    holds: bool


class Budgets(_Record):
    latency: LatencyBudgetRecord
    metric: MetricBudgetRecord


class GraphRecord(_Record):
    """The final model's traced component graph: what the report shows and must never leave silent."""

    components: dict[str, list[str]]
    not_pruned: dict[str, str]
    torch_pruning_notes: list[str]


class CalibrationRecord(BaseModel):
    """The cost model's calibration as the run left it (``measure.cost.Calibration`` dumped: that module owns its
    schema, so other keys are kept as they come); the report replays ``points``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    scale: float = 1.0
    offset_ms: float = 0.0
    points: list[tuple[float, float]] = Field(default_factory=list)
    """(Σ predicted layer ms, measured ms) pairs"""


class CostModelRecord(_Record):
    path: str
    calibration: CalibrationRecord


class Manifest(_Record):
    """Everything a tune run asked, measured and published. In JSON the target's digest sits inside ``target``
    (``target.digest``); here the target is a :class:`Target` and its digest at the time of the run
    ``target_digest``."""

    format: Literal["edgeprune.manifest/1"] = FORMAT
    status: Literal["met", "infeasible"]
    reason: str
    run_key: str
    created: str
    """ISO 8601, UTC, to the second"""
    wall_s: float
    settings: dict[str, Any]
    """the run's ``TuneSettings``, dumped"""
    task: TaskRecord
    target: Target
    target_digest: str
    versions: dict[str, str]
    budgets: Budgets
    dense: StepRecord
    pruned: PrunedRecord
    graph: GraphRecord
    steps: list[StepRecord]
    measurements: int
    """latency measurements of whole models, the dense one included"""
    cost_model: CostModelRecord | None
    """the latency planners' cost model (path and final calibration); None for the ratio strategies"""
    files: dict[str, str] = Field(default_factory=dict)
    """sha256 of every published file, by path in the run folder (empty until the bundle is complete)"""

    @model_validator(mode="before")
    @classmethod
    def _digest_out_of_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("target"), dict) and "digest" in data["target"]:
            target = dict(data["target"])
            data = {**data, "target": target, "target_digest": target.pop("digest")}
        return data

    @model_serializer(mode="wrap")
    def _digest_into_target(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if "target_digest" in data and isinstance(data.get("target"), dict):
            data["target"] = {**data["target"], "digest": data.pop("target_digest")}
        return data

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        """The manifest of the run in ``run_dir``; a one-line :class:`ManifestError` when there is none."""
        path = run_dir / MANIFEST
        if not run_dir.exists():
            raise ManifestError(f"run folder {run_dir} does not exist", "no-folder")
        if not run_dir.is_dir():
            raise ManifestError(f"run folder {run_dir} is not a folder", "no-folder")
        if not path.is_file():
            raise ManifestError(f"{run_dir} holds no finished edgeprune run (no {MANIFEST})", "no-manifest")
        try:
            data = json.loads(path.read_bytes())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})", "not-json") from None
        except (OSError, ValueError) as exc:  # unreadable, or not UTF-8
            raise ManifestError(f"{path}: cannot be read ({' '.join(str(exc).split())})", "not-json") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ManifestError(f"{path} is not an edgeprune run manifest ({FORMAT}): {where}: "
                                f"{first['msg']} ({exc.error_count()} error(s))", "invalid") from None

    def save(self, folder: Path) -> Path:
        """Write ``folder/manifest.json`` (under a temporary name, then renamed: never half a manifest)."""
        path, tmp = folder / MANIFEST, folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(self.model_dump(), indent=2))
        tmp.replace(path)
        return path
