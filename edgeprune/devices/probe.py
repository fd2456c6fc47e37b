"""What a device is: its facts (board model, L4T/JetPack, TensorRT, power mode, clocks, CPU, versions) and which of
them key a measurement.

Standard library only, Python ≥ 3.8 syntax and no edgeprune import: the host feeds this file to a bare
``python3 -`` on a board where edgeprune is not installed (:meth:`edgeprune.devices.transport.SshDevice.facts`),
and it prints :func:`facts` as JSON. Absent facts are null, never errors.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: Facts that change a measurement: a profile or engine from a device differing in any of them is not reused.
#: Clocks are left out (they move from moment to moment); they go to provenance only.
KEY_FACTS = ("model", "machine", "cpu", "cpu_count", "l4t", "jetpack", "tensorrt", "nvpmodel", "python",
             "edgeprune", "onnxruntime")


def key_facts(facts: dict[str, Any]) -> dict[str, str]:
    """The facts of a device that key profiles and engines, prefixed ``device_`` (absent ones as "none")."""
    return {f"device_{k}": "none" if facts.get(k) is None else str(facts[k]) for k in KEY_FACTS}


def _read(path: str) -> str | None:
    try:
        text = Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None
    return text or None


def _command(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _dist(*names: str) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` says (the architecture at worst)."""
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _l4t() -> str | None:
    """``# R36 (release), REVISION: 3.0, …`` in /etc/nv_tegra_release -> "36.3.0"."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", _read("/etc/nv_tegra_release") or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _dpkg(package: str) -> str | None:
    return _command(["dpkg-query", "-W", "-f=${Version}", package])


def _nvpmodel() -> str | None:
    """``nvpmodel -q`` prints ``NV Power Mode: MAXN`` then the mode id: -> "MAXN (0)"."""
    out = _command(["nvpmodel", "-q"])
    if out is None:
        return None
    name = re.search(r"NV Power Mode:\s*(\S+)", out)
    ids = [line.strip() for line in out.splitlines() if line.strip().isdigit()]
    return " ".join(p for p in (name.group(1) if name else None, f"({ids[-1]})" if ids else None) if p) or out


def _clocks() -> dict[str, Any] | None:
    """Current and maximum GPU clocks (devfreq, Hz) and current CPU clocks (kHz), where the kernel shows them."""
    gpu = {}
    for folder in sorted(glob.glob("/sys/class/devfreq/*")):
        name = os.path.basename(folder)
        if any(k in name for k in ("gpu", "ga10b", "gv11b", "gp10b", "gm20b")):
            gpu[name] = {"cur_hz": _read(f"{folder}/cur_freq"), "max_hz": _read(f"{folder}/max_freq")}
    cpu = [_read(p) for p in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))]
    if not gpu and not any(cpu):
        return None
    return {"gpu": gpu or None, "cpu_khz": cpu or None}


def facts() -> dict[str, Any]:
    """What this machine is: board model, L4T/JetPack, TensorRT, power mode, clocks, CPU and versions."""
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "model": _read("/proc/device-tree/model"),
        "l4t": _l4t(),
        "jetpack": _dpkg("nvidia-jetpack"),
        "tensorrt": _dist("tensorrt", "tensorrt-cu13", "tensorrt-cu12") or _dpkg("tensorrt") or _dpkg("libnvinfer-bin"),
        "nvpmodel": _nvpmodel(),
        "clocks": _clocks(),
        "python": platform.python_version(),
        "edgeprune": _dist("edgeprune"),
        "onnxruntime": _dist("onnxruntime", "onnxruntime-gpu"),
    }


if __name__ == "__main__":
    print(json.dumps(facts()))
