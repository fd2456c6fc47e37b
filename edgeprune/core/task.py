"""Task: what the user brings — a model factory, example inputs, an evaluation, optional fine-tuning.

A task is loaded from a built-in name (``edgeprune tasks``), an installed module (``pkg.mod:factory``) or a
file (``path/to/file.py:factory``); the factory takes no arguments and returns a :class:`Task`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


class TaskError(ValueError):
    """A task cannot be loaded or is malformed, or its own code (factory, evaluate, finetune) raised."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its first line, whitespace collapsed)."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else "no message"


@dataclass(frozen=True)
class Task:
    """Everything edgeprune needs to know about one user model.

    ``model.forward(*example_inputs)`` is the computation that is traced for dependency groups, exported to ONNX
    and timed on the target, so a multi-component model's forward should exercise every component the way it is
    deployed (an agent: encode, then a multi-step latent rollout through dynamics, reward, policy and critics).
    """

    name: str
    build: Callable[[], nn.Module]
    """Returns the dense model with its trained weights, in eval mode; a fresh object on every call."""
    example_inputs: Callable[[], tuple[torch.Tensor, ...]]
    """Deterministic inputs of the deployed shape (batch included)."""
    evaluate: Callable[[nn.Module], dict[str, float]]
    """Application metrics of a model, deterministic (fixed seeds / fixed held-out split)."""
    metric: str
    """The primary metric's key in ``evaluate``'s result."""
    default_metric_budget: str
    """A budget expression such as ``"psnr>=27"``, used when the user names none."""
    output_layers: Sequence[str] = ()
    """Module names whose output width is the model's interface to the world: never pruned."""
    components: Mapping[str, Sequence[str]] | None = None
    """Component name -> module-name prefixes; ``None`` means the model's top-level children."""
    finetune: Callable[[nn.Module, int], None] | None = None
    """Trains the model in place for a number of optimiser steps (deterministic)."""
    loss: Callable[[nn.Module, object], torch.Tensor] | None = None
    """``loss(model, batch)``: a differentiable surrogate of the metric (lower is better)."""
    loss_terms: Callable[[nn.Module, object], Mapping[str, torch.Tensor]] | None = None
    """``loss_terms(model, batch)``: ``loss`` split into its named terms (their sum), where it is a sum of several
    objectives (a world model's consistency, reward, value and policy terms). Application importance then weighs
    each term by its own scale, so a head is worth what its own objective says, not what that objective's weight
    in training happens to be."""
    batches: Callable[[int], Iterator[object]] | None = None
    """``batches(seed)``: an endless, seeded stream of training batches for ``loss``."""
    description: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)


BUILTIN: dict[str, str] = {
    "digits-autoencoder": "edgeprune.zoo.autoencoder:digits_autoencoder",
    "digits-resnet": "edgeprune.zoo.resnet:digits_resnet",
    "fashion-autoencoder": "edgeprune.zoo.autoencoder:fashion_autoencoder",
    "pendulum-agent": "edgeprune.zoo.pendulum:pendulum_agent",
    "torchvision-resnet18": "edgeprune.zoo.vision:resnet18",
    "torchvision-resnet50": "edgeprune.zoo.vision:resnet50",
    "torchvision-mobilenet_v2": "edgeprune.zoo.vision:mobilenet_v2",
    "fashion-resnet18": "edgeprune.zoo.fashion:resnet18",
    "fashion-mobilenet_v2": "edgeprune.zoo.fashion:mobilenet_v2",
}


def _import_factory(spec: str) -> Callable[[], Task]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise TaskError(f"task {spec!r} is neither a built-in name ({', '.join(BUILTIN)}) nor 'module:factory' / 'file.py:factory'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise TaskError(f"task file {target!r} does not exist")
        name = f"edgeprune_user_task_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise TaskError(f"cannot import task file {target!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: report what broke, in one line
            raise TaskError(f"importing task file {target!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise TaskError(f"cannot import task module {target!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"task factory {attr!r} not found in {target!r}")
    return factory


def load_task(spec: str) -> Task:
    """Load a task by built-in name, ``module:factory`` or ``file.py:factory``."""
    factory = _import_factory(BUILTIN.get(spec, spec))
    try:
        task = factory()
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"task factory {spec!r} raised {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(task, Task):
        raise TaskError(f"task factory for {spec!r} returned {type(task).__name__}, not edgeprune.core.task.Task")
    return task
