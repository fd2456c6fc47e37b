"""ComponentGraph: Torch-Pruning dependency groups, each tagged intra-component or inter-component flow.

A group is keyed by its root module's name: the same architecture always yields the same keys, so a plan made
on one model object replays on another. A group whose items span several components is a **flow** (an
interface such as a shared latent); its producers are the components whose output channels it removes, its
consumers those whose input channels it removes.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.artifact.export import export_onnx, flat_outputs
from edgeprune.core.hashing import architecture_facts, digest_json
from edgeprune.core.task import one_line


def component_of(module: str, components: dict[str, list[str]]) -> str:
    """The component owning a module path: the longest matching prefix, '' when none does."""
    best, length = "", -1
    for name, prefixes in components.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = name, len(prefix)
    return best


#: Recurrent cells whose internal ops send Torch-Pruning's grouping into an endless loop (torch-pruning 1.6, seen on
#: GRUCell and LSTMCell even when listed as ignored). They are traced as boundaries: their outputs are detached while
#: tracing, so no group crosses them, and validation freezes any group whose cut would change what they receive.
OPAQUE_CELLS = (nn.GRUCell, nn.LSTMCell)
#: Format of a cached validation (:meth:`ComponentGraph.validate`)
VALIDATION_FORMAT = "edgeprune.validation/1"
#: Recursion limit while :meth:`ComponentGraph.fork` copies a trace (ResNet-50's exceeds Python's default 1000).
FORK_RECURSION = 50_000


class GraphError(ValueError):
    """The model cannot be traced into dependency groups, or a name does not exist in it."""


@dataclass(frozen=True)
class GroupInfo:
    key: str
    width: int
    modules: tuple[str, ...]
    out_modules: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    divisor: int = 1
    """Every width the group keeps must be a multiple of this (the groups of a GroupNorm it normalises)."""

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.producers) | set(self.consumers)))

    @property
    def kind(self) -> Literal["intra", "flow"]:
        return "intra" if len(self.components) <= 1 else "flow"


def default_components(model: nn.Module) -> dict[str, list[str]]:
    """One component per top-level child that holds parameters."""
    return {name: [name] for name, child in model.named_children() if any(True for _ in child.parameters())}


class ComponentGraph:
    """Dependency groups of one model object, classified by component; prunes that object in place."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        components: Mapping[str, Sequence[str]] | None = None,
        output_layers: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.names = {module: name for name, module in model.named_modules()}
        self.by_name = by_name = dict(model.named_modules())
        unknown = [name for name in output_layers if name not in by_name]
        if unknown:
            raise GraphError(f"output layers not in the model: {', '.join(unknown)}")
        self.components = {k: list(v) for k, v in (components or default_components(model)).items()}
        for component, prefixes in self.components.items():
            for prefix in prefixes:
                if not any(n == prefix or n.startswith(prefix + ".") for n in by_name):
                    raise GraphError(f"component {component!r}: no module of the model is named {prefix!r} or below it")
        self.output_layers = tuple(output_layers)
        self.opaque = [name for name, m in by_name.items() if isinstance(m, OPAQUE_CELLS)]
        handles = [by_name[name].register_forward_hook(_detached) for name in self.opaque]
        try:
            with warnings.catch_warnings(record=True) as caught, torch.enable_grad():  # tracing needs autograd
                warnings.simplefilter("always")
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, ignored_layers=[by_name[n] for n in self.opaque])
        except Exception as exc:  # torch tracing errors come in many types
            raise GraphError(f"cannot trace the model into dependency groups: {type(exc).__name__}: {exc}") from exc
        finally:
            for handle in handles:
                handle.remove()
        #: Torch-Pruning's own warnings (e.g. parameters outside any known layer, pruned along a guessed dimension)
        self.notes = [" ".join(str(w.message).split()) for w in caught if "torch_pruning" in w.filename]
        self.groups: dict[str, GroupInfo] = {}
        self.skipped: dict[str, str] = {}
        #: groups a trial cut showed to break the model (:meth:`validate`), with the reason; also in ``skipped``
        self.frozen: dict[str, str] = {}
        #: the cached validation :meth:`validate` reused, if it did
        self.validated_from: Path | None = None
        blocked: set[str] = set()
        for group in self.dg.get_all_groups(ignored_layers=[by_name[n] for n in output_layers]):
            info = self._describe(group)
            narrow = [n for n in info.out_modules if self.dg.get_out_channels(by_name[n]) not in (None, info.width)]
            if narrow:  # e.g. a 1-channel gate broadcast-multiplied into a wider tensor: no channel can go
                self.skipped[info.key] = (f"group cannot be pruned: {', '.join(narrow)} (narrower) is broadcast "
                                          f"into its {info.width} channels")
                blocked.update(info.out_modules)
                continue
            self.groups[info.key] = info
        self.skipped.update(self._skipped(blocked))

    def _skipped(self, blocked: set[str]) -> dict[str, str]:
        """Layers whose channels no group prunes, with the reason — Torch-Pruning skips these silently."""
        covered = {m for g in self.groups.values() for m in g.out_modules} | blocked
        skipped: dict[str, str] = {}
        for name, module in self.by_name.items():
            has_weights = any(True for _ in module.parameters(recurse=False))
            if not has_weights or name in covered:
                continue
            if name in self.output_layers:
                skipped[name] = "output layer: its width is the model's interface"
            elif isinstance(module, OPAQUE_CELLS):
                skipped[name] = (f"recurrent cell {type(module).__name__}: traced as a boundary (Torch-Pruning cannot "
                                 f"group it), its input and hidden widths are kept")
            elif self.dg.get_pruner_of_module(module) is None:
                skipped[name] = f"layer type {type(module).__name__} is unknown to Torch-Pruning"
            elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                skipped[name] = (f"the trace does not reach it from the model's outputs (it feeds only "
                                 f"{', '.join(self.opaque)}): kept at its width"
                                 if self.opaque and module not in self.dg.module2node
                                 else "its group couples an output layer")
        return skipped

    def _describe(self, group: tp.dependency.Group) -> GroupInfo:
        root = group[0].dep.target.module
        modules: list[str] = []
        out_modules: list[str] = []
        producers: set[str] = set()
        consumers: set[str] = set()
        for item in group.items:
            name = self.names.get(item.dep.target.module)
            if name is None:  # Torch-Pruning's internal ops (concat, reshape, element-wise) have no module name
                continue
            modules.append(name)
            component = component_of(name, self.components)
            is_out = getattr(item.dep.handler, "__name__", "") == "prune_out_channels"
            if is_out:
                out_modules.append(name)
            if isinstance(item.dep.target.module, (nn.Linear, nn.modules.conv._ConvNd)):
                (producers if is_out else consumers).add(component)
        return GroupInfo(
            key=self.names[root],
            width=self.dg.get_out_channels(root),
            modules=tuple(dict.fromkeys(modules)),
            out_modules=tuple(dict.fromkeys(out_modules)),
            producers=tuple(sorted(producers)),
            consumers=tuple(sorted(consumers)),
            divisor=math.lcm(*(m.num_groups for m in map(self.by_name.get, modules) if isinstance(m, nn.GroupNorm))),
        )

    def fork(self) -> ComponentGraph:
        """An independent copy of this graph and its model, without tracing again: what a planner prunes while the
        graph it was given stays as it is. The copy shares what is not the model's: the trace's autograd nodes and
        Torch-Pruning's module of ops (neither copyable, neither used after tracing) and its stateless pruners
        (importance criteria recognise a dependency's handler by the pruner it is bound to)."""
        shared: list[object] = [self.dg.ops, *self.dg.REGISTERED_PRUNERS.values(), *self.dg.CUSTOMIZED_PRUNERS.values(),
                                *(node.grad_fn for node in self.dg.module2node.values())]
        memo: dict[int, object] = {id(x): x for x in shared}
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, FORK_RECURSION))  # the dependency graph is a linked chain: deep to copy
        try:
            return copy.deepcopy(self, memo)
        finally:
            sys.setrecursionlimit(limit)

    def validate(self, example_inputs: tuple[torch.Tensor, ...], granule: int, cache: Path | None = None
                 ) -> dict[str, str]:
        """Trial-cut one granule block of every group on a fork and freeze the groups whose cut breaks the model: the
        forward pass fails, or an output changes its shape (a Linear viewed as a feature map, a channel split that
        Torch-Pruning indexes wrongly…). A frozen group leaves ``groups`` for ``frozen`` and ``skipped``, with the
        reason; returns the newly frozen ones. Groups no wider than a granule are never cut, so never tried.

        ``cache``: a folder of earlier verdicts keyed by :meth:`validation_key` (the verdicts depend on the
        architecture, not on the weights): a model validated once is not trial-cut again (ResNet-50 at 224×224
        takes half a minute)."""
        key = self.validation_key(example_inputs, granule) if cache is not None else None
        path = cache / f"{key}.json" if cache is not None and key is not None else None
        self.validated_from = None
        if path is not None and path.is_file():
            record = json.loads(path.read_text())
            if record.get("format") == VALIDATION_FORMAT and set(record["frozen"]) <= set(self.groups):
                self.freeze(record["frozen"])
                self.validated_from = path
                return dict(record["frozen"])
        started = time.perf_counter()
        frozen = self._trial_cuts(example_inputs, granule)
        self.freeze(frozen)
        unexported = self._exports(example_inputs, granule)
        self.freeze(unexported)
        frozen.update(unexported)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps({"format": VALIDATION_FORMAT, "frozen": frozen, "granule": granule,
                                           "seconds": round(time.perf_counter() - started, 2),
                                           "date": dt.date.today().isoformat()}, indent=1))
            partial.replace(path)
        return frozen

    def validation_key(self, example_inputs: tuple[torch.Tensor, ...], granule: int) -> str | None:
        """The key of this model's validation: its architecture facts (:func:`architecture_facts`), the output layers
        (they decide which groups exist), the granule and Torch-Pruning's version. None when the architecture cannot
        be fingerprinted."""
        facts = architecture_facts(self.model, example_inputs)
        if facts is None:
            return None
        return digest_json({"format": VALIDATION_FORMAT, "architecture": facts, "outputs": self.output_layers,
                            "granule": granule, "torch_pruning": metadata.version("torch-pruning")}, 16)

    def _trial_cuts(self, example_inputs: tuple[torch.Tensor, ...], granule: int) -> dict[str, str]:
        """The groups whose trial cut breaks the forward pass or changes an output's shape, with the reason."""
        with torch.no_grad():
            expected = [tuple(t.shape) for t in flat_outputs(self.model(*example_inputs))]
        frozen: dict[str, str] = {}
        for key, info in self.groups.items():
            if info.width <= granule:
                continue
            what = f"cutting {granule} of its {info.width} channels"
            trial = self.fork()
            try:
                trial.prune(key, list(range(info.width - granule, info.width)))
                with torch.no_grad():
                    got = [tuple(t.shape) for t in flat_outputs(trial.model(*example_inputs))]
            except Exception as exc:  # noqa: BLE001 - whatever the model raises, the group cannot be cut
                frozen[key] = f"frozen: {what} breaks the forward pass ({type(exc).__name__}: {one_line(exc)})"
                continue
            if got != expected:
                frozen[key] = f"frozen: {what} changes the model's output shapes from {expected} to {got}"
        return frozen

    def _exports(self, example_inputs: tuple[torch.Tensor, ...], granule: int) -> dict[str, str]:
        """Groups whose trial cut the ONNX exporter refuses: every group cut at once first (one export when all is
        well), then halves of the failing set until single groups are found (a failure that only a combination of
        cuts shows freezes nothing: each of them exports alone)."""

        def exports(keys: list[str]) -> str | None:
            trial = self.fork()
            for key in keys:
                trial.prune(key, list(range(trial.groups[key].width - granule, trial.groups[key].width)))
            with tempfile.TemporaryDirectory(prefix="edgeprune-validate-") as tmp:
                try:
                    export_onnx(trial.model, example_inputs, Path(tmp) / "trial.onnx")
                except Exception as exc:  # noqa: BLE001 - whatever the exporter raises, these cuts do not export
                    return f"{type(exc).__name__}: {one_line(exc)}"
            return None

        def failing(keys: list[str], error: str | None) -> dict[str, str]:
            if error is None:
                return {}
            if len(keys) == 1:
                return {keys[0]: f"frozen: cutting {granule} of its channels breaks the ONNX export ({error})"}
            half = len(keys) // 2
            return {**failing(keys[:half], exports(keys[:half])), **failing(keys[half:], exports(keys[half:]))}

        keys = [key for key, info in self.groups.items() if info.width > granule]
        return failing(keys, exports(keys)) if keys else {}

    def freeze(self, reasons: Mapping[str, str]) -> None:
        """Take groups out of pruning, each with its reason (what :meth:`validate` found, or a checkpoint kept)."""
        for key, reason in reasons.items():
            self.groups.pop(key, None)
            self.frozen[key] = self.skipped[key] = reason

    def pruning_group(self, key: str) -> tp.dependency.Group:
        """The Torch-Pruning group of ``key`` with every channel, for scoring."""
        return self._group(key, range(self.groups[key].width))

    def _group(self, key: str, idxs: Sequence[int]) -> tp.dependency.Group:
        module = self.by_name.get(key)
        if module is None:
            raise GraphError(f"group root {key!r} is not a module of this model")
        return self.dg.get_pruning_group(module, self.dg.get_pruner_of_module(module).prune_out_channels, list(idxs))

    def importance(self, key: str) -> torch.Tensor:
        """Per-channel L2 magnitude importance of a group, summed over every layer it couples."""
        scores = tp.importance.GroupMagnitudeImportance(p=2)(self.pruning_group(key))
        if scores is None:
            raise GraphError(f"group {key!r} has no layer with weights to score")
        return scores.detach()

    def prune(self, key: str, remove: Sequence[int]) -> None:
        """Remove the given channel positions (relative to the group's current width) from every coupled layer."""
        if not remove:
            return
        width = self.groups[key].width
        if max(remove) >= width or min(remove) < 0 or len(set(remove)) >= width:
            raise GraphError(f"group {key!r}: cannot remove positions {sorted(remove)[:5]}… of {width} channels")
        self._group(key, sorted(remove)).prune()
        info = self.groups[key]
        self.groups[key] = dataclasses.replace(info, width=width - len(set(remove)))


def _detached(_module: nn.Module, _args: object, output: object) -> object:
    """Forward hook used while tracing: the outputs of an opaque cell, cut from the autograd graph."""
    return tuple(o.detach() for o in output) if isinstance(output, tuple) else output.detach()  # type: ignore[union-attr]

