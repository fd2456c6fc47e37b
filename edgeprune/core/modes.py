"""A model in eval mode for one block of code: the loss, the importances and the tasks' metrics read a model the way
it runs once deployed (BatchNorm on its running statistics, no dropout), and hand it back in the caller's mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; its mode before it restored after, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
