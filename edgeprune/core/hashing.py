"""Hashing: the one place that fingerprints files, weights and settings for manifests, keys and checksums.

The device agent (``edgeprune/agent.py``) uses it too: it needs only the standard library.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def sha256_file(path: Path | str) -> str:
    """Streamed sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_json(payload: object, length: int | None = None) -> str:
    """sha256 of a JSON-serialisable value with sorted keys (``length``: a prefix, for keys in file names)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def state_dict_hash(model: nn.Module) -> str:
    """A hash of a model's weights (names, shapes, values), independent of how they were serialised."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def architecture_facts(model: nn.Module, inputs: Sequence[object]) -> dict[str, object] | None:
    """What a model's structure is, without its weights: every module's type, settings and parameter shapes, the
    source of every layer class not from torch (a user's ``forward`` edited is another architecture), the versions
    of the packages they come from, and the inputs' shapes and dtypes. None when a class's source cannot be read
    (defined interactively): nothing keyed by it may then be reused."""
    sources: dict[str, str] = {}
    for module in model.modules():
        cls = type(module)
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in sources or cls.__module__.split(".")[0] == "torch":
            continue
        try:
            sources[name] = hashlib.sha256(inspect.getsource(cls).encode()).hexdigest()
        except (OSError, TypeError):
            return None
    owners = metadata.packages_distributions()
    packages = sorted({dist for name in ["torch", *sources] for dist in owners.get(name.split(".")[0], [])})
    return {
        "modules": [(name, type(m).__name__, m.extra_repr(), [tuple(p.shape) for p in m.parameters(recurse=False)])
                    for name, m in model.named_modules()],
        "sources": sources,
        "packages": {dist: metadata.version(dist) for dist in packages},
        "inputs": [(tuple(t.shape), str(t.dtype)) for t in inputs],  # type: ignore[attr-defined]
    }
