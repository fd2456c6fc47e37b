"""``tune``: stage a run in a hidden sibling folder, drive the loop, publish the bundle atomically."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeprune.core.manifest import Manifest
from edgeprune.core.progress import Progress, silent
from edgeprune.core.targets import load_target
from edgeprune.core.task import one_line
from edgeprune.loop.bundle import existing_run, write_bundle
from edgeprune.loop.loop import CHECKPOINT, CHECKPOINT_WEIGHTS, Loop
from edgeprune.loop.settings import RunFolderError, TuneSettings, run_key

#: In the staging folder of a run that failed (raised): the one-line error; the next run starts over.
FAILED = "failed.txt"


@dataclass
class TuneResult:
    status: Literal["met", "infeasible"]
    reason: str
    out: Path
    manifest: Manifest


def tune(settings: TuneSettings, out: Path, log: Callable[[str], None] = lambda _: None,
         resume: bool = False, progress: Progress = silent) -> TuneResult:
    """Run the loop for ``settings`` and publish the bundle to ``out`` (atomically).

    An identical finished run already in ``out`` is returned as it is; a different one is an error. The run is
    staged in a hidden sibling folder with a checkpoint after every completed step. If it is *interrupted*
    (Ctrl-C, a killed job) the folder stays, and ``resume=True`` continues after the last completed step (without it,
    an interrupted run of the same settings is an error rather than silently thrown away). If it *failed* (raised),
    the folder records why, and the next run says so and starts over: resuming would replay the failure.
    """
    target = load_target(settings.target)
    key = run_key(settings, target)
    previous = existing_run(out, key)
    if previous is not None:
        log(f"{out} already holds this run; nothing to do")
        return TuneResult(previous.status, previous.reason, out, previous)
    staging = out.parent / f".{out.name}.partial"
    interrupted, failed = staging / CHECKPOINT, staging / FAILED
    if failed.is_file():
        log(f"the last run into {out} failed ({failed.read_text().strip()}); starting over")
        shutil.rmtree(staging)
    elif interrupted.is_file() and json.loads(interrupted.read_text()).get("run_key") == key:
        if not resume:
            raise RunFolderError(f"an interrupted run of these settings is in {staging}: add --resume to continue "
                                 f"it, or remove that folder to start over")
    else:
        if resume:
            log(f"nothing to resume in {staging}; starting a new run")
        shutil.rmtree(staging, ignore_errors=True)
    (staging / "work").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        loop = Loop(settings, target, staging / "work", key, log, progress)
        outcome = loop.run(resume=resume)
        manifest = write_bundle(loop, staging, key, outcome, time.perf_counter() - started)
        shutil.rmtree(staging / "work")
        for name in (CHECKPOINT, CHECKPOINT_WEIGHTS):
            (staging / name).unlink()
        if out.exists():
            out.rmdir()  # existing_run allowed only an empty folder
        staging.rename(out)
    except (KeyboardInterrupt, SystemExit):  # an interruption: resumable after the last completed step
        if not interrupted.is_file():  # no step completed: nothing worth resuming, leave nothing behind
            shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as exc:
        if interrupted.is_file():  # a failure: say so to the next run, which starts over
            failed.write_text(f"{type(exc).__name__}: {one_line(exc)}\n")
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return TuneResult(outcome.status, outcome.reason, out, manifest)


