from pathlib import Path

import pytest

import edgeprune
from edgeprune.core.targets import SHIPPED, Target, TargetError, find_targets, list_targets, load_target, target_path


def test_cpu_target_loads_with_its_settings() -> None:
    cpu = load_target("cpu")
    assert Target.model_validate(cpu.model_dump()) == cpu
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


NEW_TARGETS = ["jetson-orin-agx", "jetson-orin-nx", "jetson-orin-nano", "desktop-gpu-tensorrt", "gpu-torch"]


@pytest.mark.parametrize("name", NEW_TARGETS)
def test_shipped_gpu_targets_load(name: str) -> None:
    target = load_target(name)
    assert target.name == name
    assert target.granule % {"fp16": 8, "int8": 32}.get(target.precision, 1) == 0
    if name.startswith("jetson"):
        assert (target.runtime, target.precision, target.granule) == ("trtexec", "fp16", 8)
        assert target.device.startswith("ssh://") and target.power.jetson_clocks
        assert isinstance(target.power.nvpmodel, str)  # a mode name: ids differ per module and JetPack
        assert target.tensorrt.trtexec == "/usr/src/tensorrt/bin/trtexec"
    found = {path.stem: t for path, t in list_targets()}
    assert not isinstance(found[name], TargetError)
    assert Target.model_validate(target.model_dump()) == target  # a manifest's copy of the target loads again


def test_gpu_targets_settings() -> None:
    desktop, torch_gpu = load_target("desktop-gpu-tensorrt"), load_target("gpu-torch")
    assert (desktop.runtime, desktop.device, desktop.precision) == ("tensorrt", "local", "fp16")
    assert desktop.tensorrt.timing_cache and 0 <= desktop.tensorrt.builder_optimization_level <= 5
    assert (torch_gpu.runtime, torch_gpu.precision, torch_gpu.torch_cuda.device) == ("torch-cuda", "fp32", 0)
    assert load_target("jetson-orin-nano").tensorrt.dla_core is None  # the Nano has no DLA


def test_digest_ignores_tables_the_runtime_does_not_read() -> None:
    """The CPU target's digest did not change when GPU runtimes arrived (run keys of existing runs still match); it
    changed on purpose when [measure] gained repeat_s and the sweep settings (2026-12-01: they change measurements)."""
    cpu = load_target("cpu")
    assert cpu.digest() == "bda594f9e4481466"
    agx = load_target("jetson-orin-agx")
    assert agx.digest() != agx.model_copy(update={"power": agx.power.model_copy(update={"nvpmodel": "15W"})}).digest()
    assert agx.digest() != agx.model_copy(update={"tensorrt": agx.tensorrt.model_copy(update={"workspace_mib": 1})}).digest()


TRT = "name = 'x'\nruntime = 'tensorrt'\nprecision = 'fp16'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'x'\nruntime = 'torch-cuda'\nprecision = 'int8'\ngranule = 32\n",
         "precision 'int8' on runtime 'torch-cuda'"),
        ("name = 'x'\nruntime = 'torch-cuda'\nprecision = 'fp16'\n", "precision 'fp16' on runtime 'torch-cuda'"),
        ("name = 'x'\nruntime = 'onnxruntime'\nprecision = 'fp16'\n", "'fp16' on ONNX Runtime's CPU provider"),
        ("name = 'x'\nruntime = 'tensorrt'\nprecision = 'int8'\n", "granule 8 with precision 'int8'.*multiples of 32"),
        (TRT + "granule = 12\n", "granule 12 with precision 'fp16'.*multiples of 8"),
        ("name = 'x'\nruntime = 'trtexec'\n[tensorrt]\ndla_core = 0\n", "DLA runs fp16 and int8 only"),
        (TRT + "[tensorrt]\ntrtexec = '/usr/bin/trtexec'\n", "trtexec is a path for runtime 'trtexec'"),
        (TRT + "[onnxruntime]\nintra_op_threads = 2\n", r"\[onnxruntime\] has no effect on runtime 'tensorrt'"),
        ("name = 'x'\nruntime = 'onnxruntime'\n[tensorrt]\nworkspace_mib = 64\n",
         r"\[tensorrt\] has no effect on runtime 'onnxruntime'"),
        (TRT + "[torch_cuda]\ndevice = 1\n", r"\[torch_cuda\] has no effect on runtime 'tensorrt'"),
        (TRT + "agent_python = '/opt/venv/bin/python'\n", "agent_python is the Python .* device is 'local'"),
        (TRT + "device = 'ssh://me@board'\nagent_python = 'python3; rm -rf ~'\n", "give an absolute path or a bare"),
        ("name = 'x'\nruntime = 'trtexec'\ndevice = 'ssh://-oProxyCommand=x@h'\n", "expected 'local' or 'ssh://"),
        ("name = 'x'\nruntime = 'trtexec'\ndevice = 'jetson'\n", "device 'jetson': expected 'local' or 'ssh://"),
        (TRT + "[tensorrt]\nworkspace = 64\n", "tensorrt.workspace: Extra inputs are not permitted"),
        (TRT + "[tensorrt]\nbuilder_optimization_level = 6\n", "builder_optimization_level: Input should be less"),
        (TRT + "[tensorrt]\ntiming_cache = 'sometimes'\n", "tensorrt.timing_cache: Input should be a valid boolean"),
        (TRT + "[power]\nnvpmode = 0\n", "power.nvpmode: Extra inputs are not permitted"),
        (TRT + "[power]\nnvpmodel = ''\n", "power.nvpmodel"),
        ("name = 'x'\nruntime = 'torch-cuda'\n[torch_cuda]\ndevice = -1\n", "torch_cuda.device: Input should be greater"),
        ("name = 'x'\nruntime = 'torch-cuda'\n[torch_cuda]\nindex = 0\n", "torch_cuda.index: Extra inputs"),
    ],
)
def test_bad_gpu_targets_are_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match=message) as err:
        load_target(str(path))
    assert "\n" not in str(err.value)


def test_good_gpu_combinations(tmp_path: Path) -> None:
    cases = {
        "dla.toml": "name = 'a'\nruntime = 'trtexec'\nprecision = 'fp16'\ndevice = 'ssh://me@orin:2222'\n"
                    "[tensorrt]\ndla_core = 1\n[power]\nnvpmodel = 3\njetson_clocks = true\n",
        "int8.toml": "name = 'b'\nruntime = 'tensorrt'\nprecision = 'int8'\ngranule = 64\n",
        "ort_int8.toml": "name = 'c'\nruntime = 'onnxruntime'\nprecision = 'int8'\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        load_target(str(tmp_path / name))
    assert load_target(str(tmp_path / "dla.toml")).power.nvpmodel == 3


def test_generic_orin_target_is_its_own_file_beside_the_modules() -> None:
    """`jetson-orin` works on any Orin module: no power-mode name (they differ per module), settings the Nano takes."""
    orin = load_target("jetson-orin")
    assert orin.name == "jetson-orin" and (orin.runtime, orin.precision, orin.granule) == ("trtexec", "fp16", 8)
    assert orin.power.nvpmodel is None and orin.power.jetson_clocks and orin.device.startswith("ssh://")
    nano = load_target("jetson-orin-nano")
    assert orin.tensorrt.workspace_mib <= nano.tensorrt.workspace_mib and orin.tensorrt.timeout_s >= nano.tensorrt.timeout_s
    assert orin.tensorrt.trtexec == nano.tensorrt.trtexec
    assert len({load_target(n).digest() for n in ("jetson-orin", "jetson-orin-agx", "jetson-orin-nx", "jetson-orin-nano")}) == 4


def test_targets_are_shipped_in_the_package_and_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$EDGEPRUNE_TARGETS, then ./targets, then the shipped files; the first of a name wins and says where it is from."""
    assert SHIPPED.parent == Path(edgeprune.__file__).parent and (SHIPPED / "cpu.toml").is_file()
    assert not (Path(edgeprune.__file__).parents[1] / "targets").exists()  # one copy of each target, in the package
    found = {f.name: f for f in find_targets()}
    assert found["cpu"].source == "shipped" and found["cpu"].path == SHIPPED / "cpu.toml" and not found["cpu"].shadows
    assert target_path("cpu") == SHIPPED / "cpu.toml"
    monkeypatch.chdir(SHIPPED.parent)  # ./targets is the shipped folder here: found once, hiding nothing
    assert {(f.source, f.shadows) for f in find_targets()} == {("./targets", ())}

    monkeypatch.chdir(tmp_path)
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "cpu.toml").write_text(
        (SHIPPED / "cpu.toml").read_text().replace("granule = 8 ", "granule = 16"))
    env = tmp_path / "env"
    env.mkdir()
    (env / "cpu.toml").write_text((SHIPPED / "cpu.toml").read_text().replace("granule = 8 ", "granule = 24"))
    (env / "mine.toml").write_text("name = 'mine'\nruntime = 'onnxruntime'\n")
    assert load_target("cpu").granule == 16  # ./targets before the shipped file
    monkeypatch.setenv("EDGEPRUNE_TARGETS", str(env))  # read at each call, not at import
    assert load_target("cpu").granule == 24 and load_target("mine").name == "mine"
    found = {f.name: f for f in find_targets()}
    assert (found["cpu"].source, found["cpu"].shadows, found["cpu"].path) == ("env", ("./targets", "shipped"), env / "cpu.toml")
    assert found["mine"].source == "env" and found["jetson-orin"].source == "shipped"
    assert {f.name for f in find_targets()} == {p.stem for p in SHIPPED.glob("*.toml")} | {"mine"}
    assert dict(list_targets())[env / "cpu.toml"].granule == 24
