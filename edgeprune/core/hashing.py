"""Hashing: the one place that fingerprints files, weights and settings for manifests, keys and checksums.

The device agent (``edgeprune/agent.py``) uses it too: it needs only the standard library.
"""

from __future__ import annotations

import hashlib
import json
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
