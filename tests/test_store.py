"""The profile store says why it does not reuse what it holds for the same task and target under another key."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from pathlib import Path

import torch

from edgeprune.core.task import Task
from edgeprune.devices.probe import cpu_model
from edgeprune.measure.store import ProfileStore, profile_task
from edgeprune.prune.graph import ComponentGraph
from edgeprune.runtimes.onnxruntime import OrtRuntime

COMPONENTS = {"encoder": ["encoder"], "decoder": ["decoder"]}
OTHER_KEY = "0123456789abcdef"


def two_part_task(model) -> Task:
    return Task(name="two-part", build=lambda: copy.deepcopy(model), example_inputs=lambda: (torch.rand(1, 1, 32, 32),),
                evaluate=lambda m: {"zero": 0.0}, metric="zero", default_metric_budget="zero>=0",
                components=COMPONENTS, output_layers=("decoder.3",))


def test_a_profile_from_another_host_is_named_with_the_facts_that_differ(two_part, image, fast_target,
                                                                          tmp_path: Path) -> None:
    task, store, runtime = two_part_task(two_part), ProfileStore(tmp_path / "profiles"), OrtRuntime(fast_target)

    def graph() -> ComponentGraph:
        return ComponentGraph(task.build(), image, COMPONENTS, ("decoder.3",))

    first = profile_task(task, fast_target, runtime, image, graph(), store)
    # what another host stored for the same task and target: its CPU and core count differ, so its key does
    theirs = store.profile_path(task.name, fast_target.name, OTHER_KEY)
    facts = json.loads(first.profile_path.with_suffix(".json").read_text())
    theirs.with_suffix(".json").write_text(json.dumps({**facts, "host_cpu": "Other CPU 9000", "cpu_count": 64}))
    first.profile_path.replace(theirs)
    first.profile_path.with_suffix(".json").unlink()
    # and a cost model another host built (only its provenance is read)
    store.cost_path(task.name, fast_target.name, OTHER_KEY).write_text(
        json.dumps({"provenance": {**facts, "host_cpu": "Other CPU 9000", "stride": 1}}))
    # a longer target name that starts with this one is another target, not another key
    (theirs.parent / f"{fast_target.name}-quick-{OTHER_KEY}.csv").write_text("")

    said: list[str] = []
    again = profile_task(task, fast_target, runtime, image, graph(), store, log=said.append)
    assert not again.reused and again.key == first.key and again.profile_path.is_file()
    here = f"here host_cpu={cpu_model()}, cpu_count={os.cpu_count()}"
    assert (facts["host_cpu"], facts["cpu_count"]) == (cpu_model(), os.cpu_count())
    assert said[0] == f"{theirs}: measured with host_cpu=Other CPU 9000, cpu_count=64; {here}: not reused, measuring anew"
    assert len([line for line in said if "not reused" in line]) == 1, said

    cost = store.mismatches(task.name, fast_target.name, first.key, facts, kind="cost")
    assert cost == [(f"{store.cost_path(task.name, fast_target.name, OTHER_KEY)}: measured with "
                     f"host_cpu=Other CPU 9000; here host_cpu={cpu_model()}")]
    # the profile measured here now matches: reused, nothing to explain
    said.clear()
    assert profile_task(task, fast_target, runtime, image, graph(), store, log=said.append).reused and not said


def test_two_runs_profiling_one_task_at_once_take_turns(two_part, image, fast_target, tmp_path: Path) -> None:
    """The second run waits for the first (which holds the store's work folder) and then reuses what it stored,
    rather than writing into a journal the first removes when it is done."""
    task, store, runtime = two_part_task(two_part), ProfileStore(tmp_path / "profiles"), OrtRuntime(fast_target)
    inside, go = threading.Event(), threading.Event()
    results: dict[str, object] = {}
    second_said: list[str] = []

    def first_log(line: str) -> None:
        if line == "profiling the dense model":  # inside the lock: hold it until the second run waits
            inside.set()
            assert go.wait(60)

    def run(name: str, log) -> None:
        results[name] = profile_task(task, fast_target, runtime, image,
                                     ComponentGraph(task.build(), image, COMPONENTS, ("decoder.3",)), store, log=log)

    first = threading.Thread(target=run, args=("first", first_log))
    first.start()
    assert inside.wait(60)
    second = threading.Thread(target=run, args=("second", second_said.append))
    second.start()
    deadline = time.monotonic() + 60
    while not second_said and time.monotonic() < deadline:
        time.sleep(0.05)
    go.set()
    first.join(60), second.join(60)
    assert second_said[:1] and second_said[0].startswith("another run is profiling in ")
    assert not results["first"].reused and results["second"].reused  # type: ignore[attr-defined]
    assert not [p for p in (store.root / task.name).iterdir() if p.name.endswith(".work")]  # nothing left half-done
