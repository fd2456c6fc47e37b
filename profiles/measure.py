"""Measure the built-in tasks' dense profiles and cost models on the `cpu` target into profiles/ (see README.md).

Run it alone on the machine: everything it stores is timed. ``make profiles`` runs it. Each task is one
``edgeprune profile --cost-model --task NAME --target cpu --store profiles``, run from the repository root; a task
whose data is not installed is skipped and said so. A stored profile or cost model with the same key is reused
(``--refresh`` measures again).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main(argv: list[str] | None = None) -> int:
    from edgeprune.core.task import BUILTIN, TaskError, load_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(BUILTIN), default=list(BUILTIN), metavar="TASK",
                        help=f"built-in tasks to measure (default: all of {', '.join(BUILTIN)})")
    parser.add_argument("--target", default="cpu", help="target name or .toml path (default: cpu)")
    parser.add_argument("--refresh", action="store_true", help="measure again even where a stored file matches")
    args = parser.parse_args(argv)

    failed, started = [], time.monotonic()
    for name in args.tasks:
        try:
            load_task(name)
        except TaskError as exc:
            print(f"skipped {name}: {exc}", flush=True)
            continue
        command = [sys.executable, "-m", "edgeprune", "profile", "--cost-model", "--task", name,
                   "--target", args.target, "--store", HERE.name,
                   *(["--refresh"] if args.refresh else [])]
        print(f"$ {shlex.join(command)}", flush=True)
        start = time.monotonic()
        code = subprocess.run(command, cwd=ROOT, check=False).returncode
        print(f"{name}: {'done' if code == 0 else f'FAILED (exit {code})'} in {time.monotonic() - start:.0f} s",
              flush=True)
        if code:
            failed.append(name)
    print(f"{len(args.tasks) - len(failed)} of {len(args.tasks)} tasks done in {time.monotonic() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
