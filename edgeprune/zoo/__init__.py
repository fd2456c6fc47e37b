"""Built-in tasks with shipped checkpoints (see ``edgeprune tasks``) and the scripts that trained them."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch intra-op thread for the block (restored after).

    The zoo's ops are small, so a second thread gains little; and when the other core is busy, torch's 2-thread
    OpenMP regions stall on every op (on a 2-core machine beside a busy process: evaluating 5 pendulum episodes
    took over 200 s on 2 threads, 5.4 s on one; a resnet training step 1.2 s against 0.26 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit(model: nn.Module, loss: Callable[[nn.Module, object], torch.Tensor], batches: Iterator[object], steps: int,
        optimiser: torch.optim.Optimizer, *, cosine: bool = False) -> float:
    """Minimise ``loss`` for ``steps`` batches, in place; returns the mean loss of the last 50 steps.

    ``cosine`` decays the learning rate to zero over the run. Leaves the model in eval mode (BatchNorm uses its
    running statistics from then on).
    """
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, (lambda i: 0.5 * (1 + math.cos(math.pi * i / steps))) if cosine else (lambda _: 1.0))
    model.train()
    recent: list[float] = []
    for _ in range(steps):
        value = loss(model, next(batches))
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        schedule.step()
        recent = [*recent[-49:], value.item()]
    model.eval()
    return sum(recent) / len(recent) if recent else math.nan
