"""edgeprune's agent on a device: ``python -m edgeprune.agent COMMAND …``, one JSON object on stdout.

The host drives a device by running this module there over SSH (see :mod:`edgeprune.devices.transport`). On error it
exits non-zero with one line on stderr. It is the top of the stack: nothing in the library imports it, and it imports
the installed edgeprune lazily, inside its commands: the device's facts from :mod:`edgeprune.devices.probe` (which the
host can also feed alone to a bare ``python3 -`` on a board where edgeprune is not installed), the runtimes
configured by the target the host sends (with ``device = "local"``).

Deploying keeps the service's file valid at every instant: the new file is verified, the current one is hard-linked
to ``NAME.previous``, and the new one is renamed over it (one atomic rename).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from edgeprune.core.hashing import sha256_file

RECORD = "deployed.json"


class AgentError(RuntimeError):
    """A command cannot do what it was asked; the message is the one line the host shows."""


# --- commands that use edgeprune's runtimes -----------------------------------------------------------------------

def _runtime(target_json: str) -> Any:
    """The target's runtime on this machine: the host's target, run here (device local)."""
    from edgeprune.core.targets import Target
    from edgeprune.runtimes import get_runtime

    data = json.loads(target_json)
    data.pop("digest", None)
    data.update(device="local", agent_python=None)
    return get_runtime(Target.model_validate(data))


def _inputs(path: str) -> list[Any]:
    """Arrays ``input_0…`` of an .npz file, or of a base64 .npz on stdin (``-``: saves the host a round trip)."""
    import base64
    import io

    import numpy as np

    source = io.BytesIO(base64.b64decode(sys.stdin.read())) if path == "-" else path
    with np.load(source) as archive:
        return [archive[f"input_{i}"] for i in range(len(archive.files))]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build(target: str, model: str, folder: str) -> dict[str, Any]:
    """Build ``model`` into ``folder`` (one folder per target and device, so TensorRT's timing cache there is shared
    by every variant); a build already done, marked by ``<stem>.built.json``, is reused."""
    marker = Path(folder) / f"{Path(model).stem}.built.json"
    if marker.is_file():
        built = json.loads(marker.read_text())["built"]
        if Path(built).is_file():
            return {"built": built, "cached": True}
    Path(folder).mkdir(parents=True, exist_ok=True)
    built = str(_runtime(target).build(Path(model), Path(folder)))
    _atomic_write(marker, json.dumps({"built": built}))
    return {"built": built, "cached": False}


def run(target: str, model: str, inputs: str, out: str | None) -> dict[str, Any]:
    """Outputs ``output_0…`` to the .npz ``out``, or (no ``out``) as a base64 .npz in the JSON answer."""
    import base64
    import io

    import numpy as np

    outputs = _runtime(target).run(Path(model), _inputs(inputs))
    arrays = {f"output_{i}": o for i, o in enumerate(outputs)}
    if out is None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return {"outputs": len(outputs), "npz_base64": base64.b64encode(buffer.getvalue()).decode()}
    tmp = f"{out}.{uuid.uuid4().hex[:8]}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return {"outputs": len(outputs)}


def latency(target: str, model: str, inputs: str) -> dict[str, Any]:
    return _runtime(target).latency(Path(model), _inputs(inputs)).to_dict()


def compare(target: str, model: str, reference: str, inputs: str) -> dict[str, Any]:
    return _runtime(target).compare(Path(model), Path(reference), _inputs(inputs))._asdict()


def profile(target: str, model: str, inputs: str, out: str | None) -> dict[str, Any]:
    """Per-layer profile as JSON (columns, rows, attrs: list cells survive); with ``out`` also written there as
    ``profile.json`` and ``profile.csv``."""
    frame = _runtime(target).profile(Path(model), _inputs(inputs))
    payload = {"columns": list(frame.columns), "rows": frame.to_dict(orient="records"), "attrs": frame.attrs}
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "profile.json", json.dumps(payload, default=_plain))
        frame.to_csv(folder / "profile.csv", index=False)
    return payload


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def verify(path: str, sha256: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise AgentError(f"{path} is not there")
    got = sha256_file(path)
    if got != sha256:
        raise AgentError(f"checksum mismatch: {path} has sha256 {got[:16]}…, expected {sha256[:16]}…")
    return {"path": path, "sha256": got, "ok": True}


def _keep_previous(current: Path) -> bool:
    """Make ``NAME.previous`` a copy of ``NAME`` (a hard link where the file system has them) without ever removing
    ``NAME``; False when there is no current file."""
    if not current.exists():
        return False
    tmp = current.with_name(f".{current.name}.{uuid.uuid4().hex[:8]}.prev")
    try:
        os.link(current, tmp)
    except OSError:
        shutil.copy2(current, tmp)
    os.replace(tmp, current.with_name(current.name + ".previous"))
    return True


def install(upload: str, sha256: str, dest: str, name: str, record: str, target: str | None = None,
            build_engine: bool = False) -> dict[str, Any]:
    """Verify the uploaded file, build the engine from it where the runtime needs one, keep the current version as
    ``NAME.previous`` and rename the new one over ``NAME``; then the record ``deployed.json`` the same way."""
    folder, uploaded = Path(dest), Path(upload)
    try:
        verify(upload, sha256)
    except AgentError as exc:
        uploaded.unlink(missing_ok=True)
        raise AgentError(f"{exc} (a corrupted or cut-short upload); the deployed version is untouched") from None
    files = {name: uploaded}
    staging = folder / f".build-{uuid.uuid4().hex[:8]}"
    try:
        if build_engine:
            if target is None:
                raise AgentError("install --build needs --target")
            from edgeprune.runtimes.trtexec_formats import facts_path

            built = _runtime(target).build(uploaded, staging)
            files = {name: built}
            if facts_path(built).is_file():  # a plan's inputs and node names, needed to run it
                files[facts_path(Path(name)).name] = facts_path(built)
        installed = sha256_file(files[name])
        data = {**json.loads(record), "file": name, "files": sorted(files), "sha256": installed,
                "uploaded_sha256": sha256, "installed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        had_previous = False
        for fname, source in files.items():
            had_previous = _keep_previous(folder / fname) or had_previous
            os.replace(source, folder / fname)
        _keep_previous(folder / RECORD)
        _atomic_write(folder / RECORD, json.dumps(data, indent=1))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if build_engine:
            uploaded.unlink(missing_ok=True)
    return {"installed": str(folder / name), "sha256": installed,
            "previous": str(folder / f"{name}.previous") if had_previous else None}


def rollback(dest: str, name: str) -> dict[str, Any]:
    """Swap ``NAME`` and ``NAME.previous`` (and their records); ``NAME`` exists at every instant."""
    folder = Path(dest)
    previous = folder / f"{name}.previous"
    if not previous.is_file():
        raise AgentError(f"nothing to roll back to: {previous} does not exist")
    current_record = folder / RECORD
    names = json.loads(current_record.read_text()).get("files", [name]) if current_record.is_file() else [name]
    for fname in [*names, RECORD]:
        current, prev = folder / fname, folder / f"{fname}.previous"
        if not prev.is_file():
            continue
        tmp = current.with_name(f".{fname}.{uuid.uuid4().hex[:8]}.swap")
        if current.exists():
            os.link(current, tmp)
        os.replace(prev, current)
        if tmp.exists():
            os.replace(tmp, prev)
    record = json.loads(current_record.read_text()) if current_record.is_file() else {}
    return {"installed": str(folder / name), "sha256": record.get("sha256") or sha256_file(folder / name)}


def smoke(dest: str) -> dict[str, Any]:
    """One inference of the deployed file on zeros of its recorded input shapes, with the recorded target's runtime."""
    import numpy as np

    record = json.loads((Path(dest) / RECORD).read_text())
    inputs = [np.zeros(spec["shape"], dtype=spec["dtype"]) for spec in record["inputs"]]
    outputs = _runtime(json.dumps(record["target"])).run(Path(dest) / record["file"], inputs)
    return {"outputs": [list(o.shape) for o in outputs], "finite": bool(all(np.isfinite(o).all() for o in outputs)),
            "sha256": record.get("sha256")}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgeprune.agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("facts")
    p = sub.add_parser("versions")
    p.add_argument("--target", required=True)
    p = sub.add_parser("build")
    for flag in ("--target", "--model", "--folder"):
        p.add_argument(flag, required=True)
    for command in ("run", "latency", "compare", "profile"):
        p = sub.add_parser(command)
        for flag in ("--target", "--model", "--inputs"):
            p.add_argument(flag, required=True, help="--inputs -: a base64 .npz on stdin" if flag == "--inputs" else None)
        if command in ("run", "profile"):
            p.add_argument("--out")
        if command == "compare":
            p.add_argument("--reference", required=True)
    p = sub.add_parser("verify")
    p.add_argument("path")
    p.add_argument("sha256")
    p = sub.add_parser("install")
    for flag in ("--upload", "--sha256", "--dest", "--name", "--record"):
        p.add_argument(flag, required=True)
    p.add_argument("--target")
    p.add_argument("--build", action="store_true")
    p = sub.add_parser("rollback")
    p.add_argument("--dest", required=True)
    p.add_argument("--name", required=True)
    p = sub.add_parser("smoke")
    p.add_argument("--dest", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from edgeprune.devices.probe import facts

        if args.command == "facts":
            result = facts()
        elif args.command == "versions":
            result = {"versions": _runtime(args.target).versions(), "facts": facts()}
        elif args.command == "build":
            result = build(args.target, args.model, args.folder)
        elif args.command == "run":
            result = run(args.target, args.model, args.inputs, args.out)
        elif args.command == "latency":
            result = latency(args.target, args.model, args.inputs)
        elif args.command == "compare":
            result = compare(args.target, args.model, args.reference, args.inputs)
        elif args.command == "profile":
            result = profile(args.target, args.model, args.inputs, args.out)
        elif args.command == "verify":
            result = verify(args.path, args.sha256)
        elif args.command == "install":
            result = install(args.upload, args.sha256, args.dest, args.name, args.record, args.target, args.build)
        elif args.command == "rollback":
            result = rollback(args.dest, args.name)
        else:
            result = smoke(args.dest)
    except Exception as exc:  # noqa: BLE001 - the host shows one line, whatever failed here
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        known = type(exc).__name__ in ("AgentError", "RuntimeFailure", "RuntimeMissing", "TargetError")
        print(f"error: {lines[0] if known else f'{type(exc).__name__}: {lines[0]}'}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=_plain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
