"""The run report and the benchmark comparison page, rendered from real data and opened in headless Chromium.

One short tune run (digits autoencoder, a lenient budget, measured with ONNX Runtime on this CPU) gives a finished
run folder; a cost model for the same dense weights and target is written into a private profile store (its
tables are made from the run's own dense profile, so drawing it costs no measurement), and the report must show
every section, figure and number as the manifest and that cost model have them.
"""

from __future__ import annotations

import html
import importlib.util
import re
import shutil
from pathlib import Path

import matplotlib.image
import pytest
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.core.manifest import CalibrationRecord, CostModelRecord, Manifest
from edgeprune.core.targets import target_path
from edgeprune.loop import TuneSettings, tune
from edgeprune.measure.cost import CostModel, GroupAxis, LayerCost, granule_counts
from edgeprune.measure.profile import load_profile
from edgeprune.measure.tables import axis_grid
from edgeprune.prune.plan import Plan
from edgeprune.report.page import SCREENSHOT, ReportError, find_chromium

pytestmark = pytest.mark.slow

SECTIONS = ("Budgets", "Dense vs pruned", "Steps", "Latency by component", "Cost model: latency staircase per group",
            "Slowest layers before and after", "Groups", "Provenance")
FIGURES = ("steps.png", "components.png", "staircase.png", "layers.png")
BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run; tune writes its report into a store-less environment (no cost model to find)."""
    root = tmp_path_factory.mktemp("report")
    text = target_path("cpu").read_text()
    for old, new in (('name = "cpu"', 'name = "cpu-quick"'), ("warmup = 50", "warmup = 20"), ("runs = 300", "runs = 50"),
                     ("repeats = 5", "repeats = 3"), ("profile_runs = 100", "profile_runs = 30")):
        assert old in text, f"the cpu target changed: no {old!r}"
        text = text.replace(old, new)
    target = root / "cpu-quick.toml"
    target.write_text(text)
    # without fine-tuning the first step (30 %) breaks this PSNR budget and the next (15 %) holds: both kinds of step
    settings = TuneSettings(task="digits-autoencoder", target=str(target), latency_budget="0.8x",
                            metric_budget="psnr>=12.5", step=0.3, finetune_steps=0, strategy="magnitude")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEPRUNE_PROFILES", str(root / "empty-store"))
        tune(settings, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def store(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CostModel]:
    """A profile store holding a cost model of the run's dense model on its target: each group's layers scale
    with its kept channels, from the run's dense profile."""
    manifest = Manifest.load(run)
    plan = Plan.load(run / "plan.json")
    dense = load_profile(run / "profile-dense.csv")
    granule = manifest.target.granule
    layers = []
    for row in dense.itertuples():
        grid = axis_grid(plan.groups[row.module].width, granule) if row.module in plan.groups else ()
        cut = len(grid) > 1
        layers.append(LayerCost(layer=row.layer, dense_ms=float(row.time_ms), component=row.component or "",
                                axes=(row.module,) if cut else (), grid=(grid,) if cut else (),
                                table=tuple(float(row.time_ms) * k / grid[-1] for k in grid) if cut else ()))
    groups = {key: GroupAxis(width=g.width, kept=granule_counts(g.width, granule)) for key, g in plan.groups.items()}
    cost = CostModel(task=manifest.task.name, granule=granule, layers=tuple(layers),
                     dense_ms=manifest.dense.latency_ms, groups=groups,
                     provenance={"model_hash": manifest.task.dense_weights_sha256,
                                 "target_digest": manifest.target_digest, "host_cpu": "test CPU"})
    root = tmp_path_factory.mktemp("store")
    (root / cost.task).mkdir()
    cost.save(root / cost.task / f"{manifest.target.name}-test.cost.json")
    return root, cost


@pytest.fixture(scope="module")
def rendered(run: Path, store: tuple[Path, CostModel], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``edgeprune report RUN --out OUT --screenshot``, finding the stored cost model."""
    out = tmp_path_factory.mktemp("rendered") / "report"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out), "--profiles", str(store[0]),
                                      "--screenshot"])
    assert result.exit_code == 0, result.output
    return out


def png_pixels(path: Path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return matplotlib.image.imread(path)[..., :3]


def test_tune_writes_the_report_with_figures(run: Path) -> None:
    assert {"report.md", "report.html"} <= {p.name for p in run.iterdir()}
    figures = {p.name for p in (run / "figures").iterdir()}
    assert figures == set(FIGURES) - {"staircase.png"}, "no cost model was stored: no staircase"
    assert "No staircase: this run (strategy magnitude) planned without a cost model" in (run / "report.md").read_text()
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_every_section_figure_and_table_is_present(rendered: Path) -> None:
    markdown, page = (rendered / "report.md").read_text(), (rendered / "report.html").read_text()
    for section in SECTIONS:
        assert f"\n## {section}" in markdown and f"<h2>{section}" in page
    for name in FIGURES:
        pixels = png_pixels(rendered / "figures" / name)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600 and pixels.std() > 0.05, name
        assert f"](figures/{name})" in markdown
    # every figure is embedded once, and the tables are tables in both
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert markdown.count("\n|---|") == page.count("<table>") >= len(SECTIONS)


def test_the_html_is_self_contained(rendered: Path) -> None:
    page = (rendered / "report.html").read_text()
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may hold '//'
    assert not re.search(r"(https?:|file:|ftp:)?//[a-z0-9]", text, re.IGNORECASE), "an external reference"
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_numbers_match_the_manifest_and_the_cost_model(run: Path, rendered: Path,
                                                       store: tuple[Path, CostModel]) -> None:
    manifest = Manifest.load(run)
    markdown, page = (rendered / "report.md").read_text(), (rendered / "report.html").read_text()
    dense, pruned, budgets, metric = manifest.dense, manifest.pruned, manifest.budgets, "psnr"
    lat, met = budgets.latency, budgets.metric
    expected = [
        f"| latency | {lat.expression} | {lat.threshold_ms:.4g} ms | {pruned.latency_ms:.4g} ms",
        (f"{'✓' if lat.holds else '✗'} {pruned.latency_ms:.4g} {'≤' if lat.holds else '>'} "
        f"{lat.threshold_ms:.4g} ms"),
        (f"| {metric} | {met.expression} | {met.threshold:.4g} | {pruned.metrics[metric]:.4g} | "
        f"{'✓' if met.holds else '✗'}"),
        f"| latency (measured, median) | {dense.latency_ms:.4g} ms",
        f"| {metric} | {dense.metrics[metric]:.4g} | {pruned.metrics[metric]:.4g} |",
        f"| parameters | {dense.params:,} | {pruned.params:,}",
        f"| MACs per input sample (Torch-Pruning count) | {dense.macs:,} | {pruned.macs:,}",
    ]
    steps = manifest.steps
    accepted = sum(s.status == "accepted" for s in steps)
    expected.append(f"{len(steps) - 1} pruning steps after the dense model: {accepted} accepted, "
                    f"{len(steps) - 1 - accepted} rolled back; {manifest.measurements} latency measurements "
                    f"(dense included); {sum(s.finetune_steps for s in steps):,} fine-tune steps in all.")
    expected += [f"| {s.index} | {s.ratio:.3g} | {s.status} | {s.metrics[metric]:.4g} |"
                 for s in steps if metric in s.metrics]
    expected += [f"| {k} | {v} |" for k, v in manifest.versions.items()]
    expected += [manifest.run_key, manifest.task.dense_weights_sha256, manifest.target_digest]
    for text in expected:
        assert text in markdown, text
    assert f"{dense.latency_ms:.4g} ms" in page and f"{pruned.metrics[metric]:.4g}" in page
    section = check_staircase(markdown, store[1], Plan.load(run / "plan.json"))
    assert "shown is the one stored for the same dense weights and target" in section


def check_staircase(markdown: str, cost: CostModel, plan: Plan) -> str:
    """The staircase table has the cost model's predictions at the dense width and at the plan's keep count."""
    section = markdown.split("## Cost model")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| group")]
    assert rows and "](figures/staircase.png)" in section
    for row in rows:
        group, width = row.split(" | ")[0][2:], int(row.split(" | ")[1])
        keep = len(plan.groups[group].keep)
        assert width == cost.groups[group].width
        assert row.endswith(f"| {cost.predict_ms({}):.4g} ms | {keep} | {cost.predict_ms({group: keep}):.4g} ms |")
    return section


def test_the_html_renders_in_headless_chromium(rendered: Path) -> None:
    try:
        find_chromium()
    except ReportError as exc:  # the set-up installs it: a missing browser is a broken set-up, not a skip
        pytest.fail(str(exc))
    pixels = png_pixels(rendered / "figures" / SCREENSHOT)
    assert pixels.shape[:2] == (3000, 1280)
    assert pixels.std() > 0.05, "the screenshot is blank"
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.05, "hardly anything drawn"


def copy_run(run: Path, to: Path) -> tuple[Path, Manifest]:
    """The run folder without its report and heavy files, to render an edited manifest."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("figures", "report.*", "*.onnx", "weights.pt"))
    return to, Manifest.load(to)


def test_a_runs_own_cost_model_is_drawn_as_the_run_left_it(run: Path, store: tuple[Path, CostModel],
                                                           tmp_path: Path) -> None:
    copy, manifest = copy_run(run, tmp_path / "planned")
    root, cost = store
    points = [(cost.raw_ms({}), 2 * cost.raw_ms({}))]  # the run's calibration: every prediction doubled
    own = CostModelRecord(path=str(next(root.rglob("*.cost.json"))), calibration=CalibrationRecord(points=points))
    manifest.model_copy(update={"cost_model": own}).save(copy)
    result = CliRunner().invoke(app, ["report", str(copy), "--profiles", str(tmp_path / "no-store")])
    assert result.exit_code == 0, result.output
    markdown = (copy / "report.md").read_text()
    section = check_staircase(markdown, cost.calibrated(points), Plan.load(copy / "plan.json"))
    assert "The cost model this run planned on" in section and "on 1 whole-model measurement." in section


def test_an_infeasible_run_renders_with_its_explanation(run: Path, tmp_path: Path) -> None:
    copy, manifest = copy_run(run, tmp_path / "infeasible")
    reason = "the metric budget breaks before the latency budget holds: the best plan measures 9 ms > 1 ms"
    latency = manifest.budgets.latency.model_copy(update={"holds": False})
    manifest = manifest.model_copy(update={"status": "infeasible", "reason": reason,
                                           "budgets": manifest.budgets.model_copy(update={"latency": latency})})
    manifest.save(copy)
    result = CliRunner().invoke(app, ["report", str(copy), "--profiles", str(tmp_path / "no-store")])
    assert result.exit_code == 0, result.output
    markdown, page = (copy / "report.md").read_text(), (copy / "report.html").read_text()
    assert markdown.startswith(f"# edgeprune: {manifest.task.name} on cpu-quick — infeasible")
    assert f"**Infeasible:** {reason}." in markdown and f"<strong>Infeasible:</strong> {html.escape(reason)}." in page
    assert f"✗ {manifest.pruned.latency_ms:.4g} >" in markdown
    assert "No staircase" in markdown and not (copy / "figures" / "staircase.png").exists()


def test_a_folder_without_a_run_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path} holds no finished edgeprune run (no manifest.json)"
    assert not list(tmp_path.iterdir())


# -- the benchmark comparison page, from the committed CSVs ------------------------------------------------------
def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_compare():
    return load_bench("compare")


def test_bench_provenance_names_each_run_with_its_cpu() -> None:
    """Sessions get different machines: the latency bench says per task which run, on which CPU, measured its rows
    (rows journalled before the CPU was recorded say so)."""
    import pandas as pd

    provenance = load_bench("latency_budget").provenance
    rows = pd.DataFrame({"task": ["a", "a", "b"], "run": ["r1", "r2", "r1"], "host": ["Xeon", None, "Xeon"]})
    assert provenance(rows) == ("rows by the run they were measured in: a r1 (Xeon), r2 (CPU not recorded); "
                                "b r1 (Xeon)")
    assert provenance(rows[rows["run"] == "r1"]) == "every row in one run (started r1 (Xeon))"
    assert provenance(rows.drop(columns="host").iloc[:1]) == "every row in one run (started r1 (CPU not recorded))"


def test_comparison_page_puts_strategies_side_by_side(tmp_path: Path) -> None:
    import pandas as pd

    compare = load_compare()
    results = tmp_path / "results"
    shutil.copytree(BENCH / "results", results, ignore=shutil.ignore_patterns("index.*", "figures", ".*"))
    markdown_path = compare.write_comparison(results)
    markdown, page = markdown_path.read_text(), (results / "index.html").read_text()
    latency = pd.read_csv(results / "latency_budget.csv")
    headline = compare.headline(latency)
    assert headline in markdown
    # every cell of the headline: verdict, speed-up and metric from the CSV (over seeds: majority and medians)
    for (task, budget, _), runs in latency.groupby(["task", "budget", "method"]):
        met = int((runs["metric_holds"] & runs["latency_holds"]).sum())
        verdict = "✓" if 2 * met > len(runs) else "✗"
        count = f"{met}/{len(runs)} · " if len(runs) > 1 else ""
        cell = f"{verdict} {count}{runs['speedup'].median():.2f}× · {runs['metric'].median():.4g}"
        line = next(line for line in headline.splitlines() if line.startswith(f"| {task} | {budget} |"))
        assert cell in line, (cell, line)
    cost = pd.read_csv(results / "cost_model.csv")
    for task, rows in cost.groupby("task"):
        assert f"| {task} | {len(rows)} | {100 * rows['paired_error'].median():.1f} % |" in markdown
    for name in ("pareto.png", "soft_coefficients.png"):
        assert png_pixels(results / "figures" / name).std() > 0.05
        assert f"](figures/{name})" in markdown
    assert page.count('src="data:image/png;base64,') == markdown.count("](figures/")
    assert not re.search(r"https?://", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page))


def test_a_row_run_with_several_seeds_shows_the_verdict_most_reached_and_the_medians() -> None:
    import pandas as pd

    compare = load_compare()
    base = {"task": "t", "budget": "0.5x", "metric_budget": "psnr>=35", "dense_metric": 43.0}
    latency = pd.DataFrame([
        {**base, "method": "edgeprune", "seed": 0, "metric_holds": True, "latency_holds": True, "speedup": 2.1,
         "metric": 39.0},
        {**base, "method": "edgeprune", "seed": 1, "metric_holds": True, "latency_holds": False, "speedup": 1.8,
         "metric": 40.0},
        {**base, "method": "edgeprune", "seed": 2, "metric_holds": True, "latency_holds": True, "speedup": 2.0,
         "metric": 38.0},
        {**base, "method": "halp", "seed": 0, "metric_holds": False, "latency_holds": True, "speedup": 2.5,
         "metric": 30.0},
    ])
    header, rows = compare.headline_table(latency)
    assert header[-2:] == ["edgeprune", "halp"]
    assert rows == [["t", "0.5x", "psnr>=35", "43", "✓ 2/3 · 2.00× · 39", "✗ 2.50× · 30"]]
    one_failed = latency.assign(latency_holds=[True, False, False, True])
    assert compare.headline_table(one_failed)[1][0][4] == "✗ 1/3 · 2.00× · 39"


def test_margins_compare_medians_with_the_best_baseline_that_meets() -> None:
    """The margin is edgeprune's median minus the best median among the baselines that met in most runs (a method
    that mostly broke a budget is no comparison; edgeprune's own select is no baseline, and gets its own margin
    against the same one), signed so that positive favours edgeprune also where lower is better; paired counts the
    seeds where edgeprune's run met and was at least the baseline's run of that seed; the spread is edgeprune's own
    range over its seeds."""
    import pandas as pd

    compare = load_compare()

    def run(method: str, seed: int, metric: float, met: bool = True) -> dict[str, object]:
        return {"task": "t", "budget": "0.5x", "metric_budget": "psnr>=35", "dense_metric": 43.0, "method": method,
                "seed": seed, "metric_holds": met, "latency_holds": True, "speedup": 2.0, "metric": metric}

    latency = pd.DataFrame([run("edgeprune", 0, 39.0), run("edgeprune", 1, 40.0), run("edgeprune", 2, 38.5),
                            run("tp-local", 0, 41.0, met=False), run("tp-local", 1, 41.5, met=False),
                            run("tp-local", 2, 39.5),
                            run("tp-global", 0, 38.0), run("tp-global", 1, 39.5), run("tp-global", 2, 38.2),
                            run("select", 0, 42.0)])
    header, rows = compare.margins_table(latency)
    assert header[2:] == ["edgeprune", "best baseline that meets", "margin", "paired", "edgeprune's spread",
                          "select's margin"]
    # seed by seed 39 >= 38, 40 >= 39.5, 38.5 >= 38.2
    assert rows == [["t", "0.5x", "✓ 3/3 · 2.00× · 39", "tp-global 38.2", "+0.8", "3/3", "1.5", "+3.8"]]
    lower = latency.assign(metric_budget="mse<=0.5x", dense_metric=50.0)  # lower is better: the sign turns
    assert compare.margins_table(lower)[1][0][3:] == ["tp-global 38.2", "-0.8", "0/3", "1.5", "-3.8"]
    alone = latency[latency["method"] != "tp-global"]
    assert compare.margins_table(alone)[1][0][3:] == ["none meets", "—", "—", "1.5", "—"]
    short = latency.assign(latency_holds=[False, False, True, *[True] * 6, False])  # edgeprune met 1 of 3 runs
    assert compare.margins_table(short)[1][0][3:] == ["tp-global 38.2", "edgeprune does not meet", "1/3", "1.5",
                                                      "select does not meet"]
    one_pair = latency[(latency["method"] != "tp-global") | (latency["seed"] == 1)]  # a baseline run once: one pair
    assert compare.margins_table(one_pair)[1][0][3:6] == ["tp-global 39.5", "-0.5", "1/1"]
    no_select = latency[latency["method"] != "select"]
    assert compare.margins_table(no_select)[1][0][-1] == "—"
