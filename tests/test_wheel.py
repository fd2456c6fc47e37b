"""edgeprune as a user installs it: the wheel built from this tree, installed into a fresh virtual environment, run
from a folder outside the repository — the shipped targets are found, `tune --help` works."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_installed_wheel_finds_its_targets_outside_the_repository(tmp_path: Path) -> None:
    # build from a copy of the tree, so the build leaves nothing (build/, *.egg-info) in the repository
    source = tmp_path / "source"
    shutil.copytree(REPO / "edgeprune", source / "edgeprune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", dist], cwd=source)
    [wheel] = dist.glob("edgeprune-*.whl")

    # a fresh environment holding only the wheel; its dependencies (torch, …) come from this test's environment
    # through a .pth line (a path in a .pth is added as it is: this environment's editable edgeprune stays out)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).strip())
    parents = dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (purelib / "parent-environment.pth").write_text("".join(f"{p}\n" for p in parents))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"  # no targets/, no profiles/, not the repository
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEPRUNE_TARGETS", "EDGEPRUNE_PROFILES")}
    env["COLUMNS"] = "80"
    code = ("import edgeprune; from edgeprune.core.targets import load_target; "
            "print(edgeprune.__file__); print(load_target('jetson-orin').runtime)")
    where = run([python, "-c", code], cwd=elsewhere, env=env)
    assert where.split() == [str(purelib / "edgeprune" / "__init__.py"), "trtexec"], where

    edgeprune = venv / "bin" / "edgeprune"
    listed = run([edgeprune, "targets"], cwd=elsewhere, env=env)
    rows = {line.split()[0]: line.split() for line in listed.splitlines() if line.strip()}
    for name, runtime in (("cpu", "onnxruntime"), ("jetson-orin", "trtexec"), ("jetson-orin-agx", "trtexec"),
                          ("jetson-orin-nx", "trtexec"), ("jetson-orin-nano", "trtexec")):
        assert name in rows and rows[name][1] == runtime and rows[name][-1] == "shipped", listed
    assert all(len(line) <= 80 for line in listed.splitlines()) and "…" not in listed, listed  # fits 80 columns

    assert "--latency-budget" in run([edgeprune, "tune", "--help"], cwd=elsewhere, env=env)
    assert "--target" in run([edgeprune, "tune", "--target", "jetson-orin", "--help"], cwd=elsewhere, env=env)
