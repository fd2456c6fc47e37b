from pathlib import Path

import pytest

from edgeprune.targets import TargetError, list_targets, load_target


def test_cpu_target_loads_with_its_settings() -> None:
    cpu = load_target("cpu")
    assert cpu.runtime == "onnxruntime" and cpu.granule == 8
    assert cpu.onnxruntime.intra_op_threads == 1 and cpu.onnxruntime.providers == ["CPUExecutionProvider"]
    assert cpu.measure.repeats >= 3 and cpu.measure.runs >= 100


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(TargetError, match=r"unknown target 'jetson-mars'.*known targets: .*cpu"):
        load_target("jetson-mars")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'x'\nruntime = 'onnxruntime'\ngranule = 8\ncolour = 'red'\n", "colour: Extra inputs are not permitted"),
        ("name = 'x'\nruntime = 'onnxruntime'\ngranule = 'eight'\n", "granule: Input should be a valid integer"),
        ("name = 'x'\n", "runtime: Field required"),
        ("name = 'x'\nruntime = 'tflite'\n", "runtime: Input should be 'onnxruntime'"),
        ("name = 'x'\nruntime = 'onnxruntime'\n[measure]\nrepeats = 0\n", "measure.repeats: Input should be greater"),
        ("name = 'x\nruntime = \n", "malformed TOML"),
    ],
)
def test_malformed_targets_are_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match=message):
        load_target(str(path))


def test_list_targets_includes_cpu() -> None:
    found = {path.stem: t for path, t in list_targets()}
    assert "cpu" in found and not isinstance(found["cpu"], TargetError)


def test_digest_changes_with_any_setting() -> None:
    cpu = load_target("cpu")
    assert cpu.digest() != cpu.model_copy(update={"granule": 16}).digest()
