"""Bad inputs: each gives one clear line on stderr, a non-zero exit, and leaves nothing behind."""

from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeprune import cli
from edgeprune.cli import app
from edgeprune.core.targets import SHIPPED
from edgeprune.planners import PLANNERS
from edgeprune.prune.importance import COMBINES, FLOW_POLICIES


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_clean_failure(result, out: Path, message: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not out.exists(), "an output folder was left behind"
    assert not list(out.parent.glob(f".{out.name}*")), "a staging folder was left behind"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "no-such-task"], "task 'no-such-task' is neither a built-in name"),
        (["--task", "missing/file.py:make"], "task file 'missing/file.py' does not exist"),
        (["--target", "jetson-mars"], "unknown target 'jetson-mars'"),
        (["--metric", "psnr=>27"], "--metric: cannot parse metric budget 'psnr=>27'"),
        (["--latency-budget", "fast"], "--latency-budget: cannot parse latency budget 'fast'"),
        (["--metric", "ssim>=0.9"], "metric 'ssim' is not reported by the task"),
        (["--metric", "psnr>=99"], "infeasible budgets: the dense model's psnr is"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    assert_clean_failure(run("tune", "--out", str(out), *args), out, message)


@pytest.mark.parametrize(
    ("text", "message"),
    [("name = 'x'\nruntime = 'onnxruntime'\nthreads = 4\n", "threads: Extra inputs are not permitted"),
     ("name = 'x\n", "malformed TOML")],
)
def test_malformed_target_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    out = tmp_path / "run"
    assert_clean_failure(run("tune", "--target", str(tmp_path / "bad.toml"), "--out", str(out)), out, message)


def test_user_task_file_with_a_broken_factory(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text("def make():\n    return 42\n")
    out = tmp_path / "run"
    result = run("tune", "--task", f"{tmp_path / 'mine.py'}:make", "--out", str(out))
    assert_clean_failure(result, out, "returned int, not edgeprune.core.task.Task")


def test_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("tune", "--out", str(out))
    assert result.exit_code == 2 and "is not empty and holds no edgeprune run" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_tasks_and_targets_are_listed() -> None:
    tasks = run("tasks")
    assert tasks.exit_code == 0 and "digits-autoencoder" in tasks.stdout and "pendulum-agent" in tasks.stdout
    targets = run("targets")
    assert targets.exit_code == 0
    for name, runtime in (("cpu", "onnxruntime"), ("desktop-gpu-tensorrt", "tensorrt"), ("gpu-torch", "torch-cuda"),
                          ("jetson-orin-nano", "trtexec")):
        assert any(name in line and runtime in line for line in targets.stdout.splitlines()), targets.stdout


def test_graph_prints_groups_and_draws_the_component_graph(tmp_path: Path) -> None:
    picture = tmp_path / "g.png"
    result = run("graph", "--task", "digits-autoencoder", "--flow-policy", "joint", "--picture", str(picture))
    assert result.exit_code == 0, result.output
    assert "encoder.latent" in result.stdout and "joint" in result.stdout
    assert "not pruned: decoder.out: output layer" in result.stdout
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "option", "choices"),
    [(["tune", "--strategy", "fastest"], "--strategy 'fastest'", PLANNERS),
     (["tune", "--flow-policy", "share"], "--flow-policy 'share'", FLOW_POLICIES),
     (["tune", "--flow-combine", "max"], "--flow-combine 'max'", COMBINES),
     (["graph", "--flow-policy", "share"], "--flow-policy 'share'", FLOW_POLICIES)],
)
def test_a_wrong_choice_lists_the_choices_from_where_they_are_defined(tmp_path: Path, args: list[str], option: str,
                                                                      choices) -> None:
    out = tmp_path / "run"
    result = run(*args, *(["--out", str(out)] if args[0] == "tune" else ["--picture", str(tmp_path / "g.png")]))
    assert_clean_failure(result, out, f"{option}: choose one of {', '.join(choices)}")
    assert result.stderr.strip().endswith(", ".join(choices)) and not (tmp_path / "g.png").exists()
    assert "knapsack" in PLANNERS and "knapsack" in run("tune", "--help").stdout


def test_targets_fit_80_columns_and_say_where_each_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=80))
    listed = run("targets")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in listed.stdout, listed.stdout
    assert lines[0].split() == ["target", "runtime", "precision", "granule", "device", "source"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.split() and "shipped" in line}
    assert rows["cpu"] == ["cpu", "onnxruntime", "fp32", "8", "local", "shipped"]
    assert rows["jetson-orin"] == ["jetson-orin", "trtexec", "fp16", "8", "jetson.local", "shipped"]
    assert rows["jetson-orin-agx"][4] == "jetson-agx.local"  # the host; --wide shows the whole ssh:// URL
    wide = run("targets", "--wide").stdout
    assert str(SHIPPED / "cpu.toml") in wide and "ssh://user@jetson-agx.local" in wide and "nvpmodel MAXN" in wide
    assert "…" not in wide
