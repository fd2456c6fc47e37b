"""Target: where a model must run — runtime, device, precision, channel granule, measurement settings.

Targets are TOML files validated on load: unknown keys, wrong types and missing fields are errors, because a
typo in a target silently changes every measurement made with it.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: Folders searched for ``NAME.toml``, in order: $EDGEPRUNE_TARGETS, ./targets, the repository's targets/.
TARGET_DIRS: tuple[Path, ...] = tuple(
    p
    for p in (
        Path(os.environ["EDGEPRUNE_TARGETS"]) if os.environ.get("EDGEPRUNE_TARGETS") else None,
        Path("targets"),
        Path(__file__).resolve().parent.parent / "targets",
    )
    if p is not None
)


class TargetError(ValueError):
    """A target cannot be found or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrtSettings(_Strict):
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(1, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "extended"


class MeasureSettings(_Strict):
    warmup: int = Field(50, ge=0)
    runs: int = Field(300, ge=1)
    repeats: int = Field(5, ge=1)
    profile_runs: int = Field(100, ge=1)


class Target(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    runtime: Literal["onnxruntime"]
    device: str = "local"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    granule: int = Field(8, ge=1)
    batch: int | None = Field(None, ge=1)
    onnxruntime: OrtSettings = Field(default_factory=OrtSettings)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)

    def digest(self) -> str:
        """A short hash of every setting: two runs measured under different settings are different runs."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _find(spec: str) -> Path:
    path = Path(spec)
    if path.suffix == ".toml" or path.parent != Path("."):
        if not path.is_file():
            raise TargetError(f"target file {spec!r} does not exist")
        return path
    for folder in TARGET_DIRS:
        candidate = folder / f"{spec}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for folder in TARGET_DIRS if folder.is_dir() for p in folder.glob("*.toml")})
    raise TargetError(f"unknown target {spec!r}; known targets: {', '.join(known) or 'none'}")


def load_target(spec: str) -> Target:
    """Load and validate a target by name (``cpu``) or path (``my/targets/x.toml``)."""
    path = _find(spec)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target {path}: malformed TOML: {exc}") from exc
    try:
        return Target.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise TargetError(f"target {path}: {where}: {first['msg']} ({exc.error_count()} error(s))") from exc


def list_targets() -> list[tuple[Path, Target | TargetError]]:
    """Every target file found, loaded, or the error that stops it loading."""
    seen: dict[str, Path] = {}
    for folder in TARGET_DIRS:
        if folder.is_dir():
            for p in sorted(folder.glob("*.toml")):
                seen.setdefault(p.stem, p)
    out: list[tuple[Path, Target | TargetError]] = []
    for path in seen.values():
        try:
            out.append((path, load_target(str(path))))
        except TargetError as exc:
            out.append((path, exc))
    return out
