"""Command line: parses, calls the library, renders with rich. ``edgeprune --help``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from edgeprune.artifact.export import ExportMismatch
from edgeprune.core.budgets import BudgetError
from edgeprune.core.progress import Progress
from edgeprune.core.targets import SSH_URL, TargetError, find_targets
from edgeprune.core.task import BUILTIN, TaskError, load_task, one_line
from edgeprune.devices.transport import DeviceError
from edgeprune.measure.cost import CostModelError
from edgeprune.planners import DEFAULT_STRATEGY, PLANNERS, PlannerError
from edgeprune.prune.graph import GraphError
from edgeprune.prune.importance import COMBINES, FLOW_POLICIES
from edgeprune.prune.plan import PlanError
from edgeprune.runtimes import RuntimeFailure, RuntimeMissing

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False,
                  help="Prune trained PyTorch models until a measured latency budget and a metric budget both hold.")
console = Console()
errors = Console(stderr=True)

#: Errors that are the user's input, not a bug: one line, exit code 2.
USER_ERRORS = (TaskError, TargetError, BudgetError, GraphError, PlanError, ExportMismatch, RuntimeMissing,
               RuntimeFailure, CostModelError, PlannerError, DeviceError)
INFEASIBLE_EXIT = 3


@contextlib.contextmanager
def activity(first: str) -> Iterator[tuple[Callable[[str], None], Progress]]:
    """A live display for a long command: a status line that ``log`` updates (each message is also logged above it)
    and one bar per measurement phase that ``progress`` opens (counts done/total, elapsed, ETA)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with RichProgress(*columns, console=console) as bars:
        status = bars.add_task(first, total=None)

        def log(message: str) -> None:
            console.log(message, highlight=False)
            bars.update(status, description=message if len(message) <= 40 else message[:39] + "…")

        def progress(description: str, total: int) -> Callable[[int], None]:
            phase = bars.add_task(description, total=total)
            return lambda n: bars.advance(phase, n)

        yield log, progress


def fail(message: str, code: int = 2) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def check_choice(option: str, value: str, choices: Iterable[str]) -> None:
    """Fail with the choices listed from the one place that defines them (a registry, a ``Literal``'s arguments)."""
    choices = list(choices)
    if value not in choices:
        fail(f"{option} {value!r}: choose one of {', '.join(choices)}")


def parse_components(specs: list[str]) -> dict[str, list[str]]:
    """``["encoder=enc,proj", "decoder=dec"]`` -> ``{"encoder": ["enc", "proj"], "decoder": ["dec"]}``."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, prefixes = spec.partition("=")
        if not sep or not name.strip() or not prefixes.strip():
            fail(f"--components {spec!r}: write NAME=PREFIX[,PREFIX...]")
        out[name.strip()] = [p.strip() for p in prefixes.split(",") if p.strip()]
    return out


def parse_ratios(specs: list[str], option: str) -> dict[str, float]:
    """``["encoder=0.2"]`` -> ``{"encoder": 0.2}``."""
    out: dict[str, float] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            fail(f"{option} {spec!r}: write NAME=VALUE with VALUE a number")
    return out


@app.command()
def tune(
    task: Annotated[str, typer.Option(help="built-in task name, module:factory or file.py:factory")] = "digits-autoencoder",
    target: Annotated[str, typer.Option(help="target name (edgeprune targets lists them) or a .toml path")] = "cpu",
    latency_budget: Annotated[str, typer.Option(help="e.g. 2.5ms, 800us, or 0.5x (of dense, measured)")] = "0.5x",
    metric: Annotated[str | None, typer.Option(help="metric budget, e.g. 'psnr>=27'; default: the task's")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder; default runs/TASK")] = None,
    finetune_steps: Annotated[int, typer.Option(help="task fine-tune steps after each pruning step (select spends a "
                                                       "share of them racing its cuts)")] = 100,
    final_finetune_steps: Annotated[int, typer.Option(
        help="task fine-tune steps on the final model (kept if its metric is no worse)")] = 0,
    step: Annotated[float, typer.Option(help="first increment of the pruning ratio")] = 0.1,
    seed: Annotated[int, typer.Option(help="seed for fine-tuning and the coefficient search")] = 0,
    strategy: Annotated[str, typer.Option(
        help="the planner choosing each step's channels: "
             + "; ".join(f"{name} ({planner.summary})" for name, planner in PLANNERS.items()))] = DEFAULT_STRATEGY,
    epsilon: Annotated[float, typer.Option(help="grid: sparsity tolerance around each step's ratio; gradient: relative latency tolerance")] = 0.02,
    flow_policy: Annotated[str, typer.Option(
        help=f"inter-component groups: {', '.join(FLOW_POLICIES)} (last: kept until a latency planner's step cannot "
             f"reach its target without cutting them or breaks the metric budget with them kept, then joint)")] = "last",
    flow_combine: Annotated[str, typer.Option(
        help=f"joint: combine components' importance by {' or '.join(COMBINES)}")] = "min",
    components: Annotated[list[str] | None, typer.Option(
        help="NAME=PREFIX[,PREFIX…], repeatable; default: the task's components or top-level children")] = None,
    component_ratio: Annotated[list[str] | None, typer.Option(
        help="NAME=R, repeatable: remove at most the fraction R of that component's channels")] = None,
    component_share: Annotated[list[str] | None, typer.Option(
        help="NAME=S, repeatable (select, knapsack): that component may take at most the share S of the latency budget")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run of the same settings")] = False,
) -> None:
    """Prune TASK for TARGET until both budgets hold; write plan, weights, ONNX, profile, manifest and report."""
    from edgeprune.loop import RunFolderError, TuneSettings
    from edgeprune.loop import tune as run_tune
    from edgeprune.report.report import comparison_rows

    check_choice("--strategy", strategy, PLANNERS)
    check_choice("--flow-policy", flow_policy, FLOW_POLICIES)
    check_choice("--flow-combine", flow_combine, COMBINES)
    try:
        settings = TuneSettings(task=task, target=target, latency_budget=latency_budget, metric_budget=metric,
                                finetune_steps=finetune_steps, final_finetune_steps=final_finetune_steps, step=step, seed=seed, strategy=strategy,
                                epsilon=epsilon, flow_policy=flow_policy,
                                flow_combine=flow_combine,
                                components=parse_components(components) if components else None,
                                component_ratios=parse_ratios(component_ratio, "--component-ratio") if component_ratio else None,
                                component_shares=parse_ratios(component_share, "--component-share") if component_share else None)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = str(first["loc"][0]) if first["loc"] else "strategy"
        option = {"metric_budget": "metric", "component_ratios": "component-ratio",
                  "component_shares": "component-share"}.get(where, where).replace("_", "-")
        fail(f"--{option}: {first['msg'].removeprefix('Value error, ')}")
    folder = out or Path("runs") / Path(task.split(":")[-1]).name
    try:
        with activity("starting") as (log, progress):
            result = run_tune(settings, folder, log=log, resume=resume, progress=progress)
    except (*USER_ERRORS, RunFolderError) as exc:
        fail(str(exc))
    manifest = result.manifest
    table = Table(title=f"{manifest.task.name} on {manifest.target.name}: {result.status}")
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column("pruned", justify="right")
    for row in comparison_rows(manifest):
        table.add_row(*row)
    console.print(table)
    console.print(f"{result.reason}. Run folder: {result.out} (report.md, report.html, manifest.json)", highlight=False)
    if result.status != "met":
        fail(f"budgets cannot both hold: {result.reason}; the best plan found is saved in {result.out}", INFEASIBLE_EXIT)


@app.command()
def graph(
    task: Annotated[str, typer.Option(help="built-in task name, module:factory or file.py:factory")] = "digits-autoencoder",
    picture: Annotated[Path | None, typer.Option(help="write the component graph here (PNG)")] = None,
    flow_policy: Annotated[str, typer.Option(help=f"policy shown for flow groups: {', '.join(FLOW_POLICIES)}")] = "protect",
    components: Annotated[list[str] | None, typer.Option(help="NAME=PREFIX[,PREFIX…], repeatable")] = None,
    granule: Annotated[int, typer.Option(min=1, help="channels each group's trial cut removes (the target's "
                                                      "granule): a group whose cut breaks the model is frozen")] = 8,
) -> None:
    """Print TASK's components and dependency groups (intra or flow, frozen with the reason), and draw the component
    graph."""
    from edgeprune.measure.store import ProfileStore
    from edgeprune.prune.graph import ComponentGraph
    from edgeprune.report.figures import component_graph_figure

    check_choice("--flow-policy", flow_policy, FLOW_POLICIES)
    try:
        t = load_task(task)
        g = ComponentGraph(t.build(), t.example_inputs(), parse_components(components) if components else t.components,
                           t.output_layers)
        g.validate(t.example_inputs(), granule, ProfileStore().validated)
    except USER_ERRORS as exc:
        fail(str(exc))
    comp = Table("component", "module prefixes", "intra groups", "flow groups", title=f"{t.name}: components")
    for name, prefixes in g.components.items():
        comp.add_row(name, ", ".join(prefixes), str(sum(x.components == (name,) for x in g.groups.values())),
                     str(sum(x.kind == "flow" and name in x.components for x in g.groups.values())))
    console.print(comp)
    groups = Table(title="groups")
    for name in ("group (root)", "channels", "layers", "class", "producers → consumers", "policy"):
        groups.add_column(name, no_wrap=name != "producers → consumers")  # narrow terminals wrap only the flows
    for x in g.groups.values():
        groups.add_row(x.key, str(x.width), str(len(x.modules)), x.kind,
                       f"{', '.join(x.producers)} → {', '.join(x.consumers)}", flow_policy if x.kind == "flow" else "prune")
    console.print(groups)
    for name, why in g.skipped.items():
        console.print(f"not pruned: {name}: {why}", highlight=False)
    for note in g.notes:
        console.print(f"torch-pruning: {note}", highlight=False)
    if g.validated_from is not None:
        console.print(f"group validation reused from {g.validated_from}", highlight=False)
    path = component_graph_figure(g, picture or Path(f"{t.name}-graph.png"), title=f"{t.name}: components and flows")
    console.print(f"component graph written to {path}", highlight=False)


@app.command()
def profile(
    task: Annotated[str, typer.Option(help="built-in task name, module:factory or file.py:factory")] = "digits-autoencoder",
    target: Annotated[str, typer.Option(help="target name (edgeprune targets lists them) or a .toml path")] = "cpu",
    store: Annotated[Path | None, typer.Option(help="profile store folder; default $EDGEPRUNE_PROFILES or ./profiles")] = None,
    cost_model: Annotated[bool, typer.Option("--cost-model", help="also build the cost model (per-layer latency "
                                                                 "tables, shared by every task on the target)")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="measure again even if a stored profile matches")] = False,
    components: Annotated[list[str] | None, typer.Option(help="NAME=PREFIX[,PREFIX…], repeatable")] = None,
    device: Annotated[str | None, typer.Option(help="run on this device instead of the target's: local or "
                                                    "ssh://user@host[:port]")] = None,
    agent_python: Annotated[str | None, typer.Option(help="remote device: the Python with edgeprune installed "
                                                          "(default: the target's agent_python, else python3)")] = None,
) -> None:
    """Profile TASK's dense model on TARGET: per-component and per-group time; stored and reused by key."""
    from edgeprune.core.targets import load_target
    from edgeprune.loop import target_inputs
    from edgeprune.measure.store import ProfileStore, profile_task
    from edgeprune.prune.graph import ComponentGraph
    from edgeprune.runtimes import get_runtime

    try:
        t, tg = load_task(task), load_target(target).on_device(device, agent_python)
        runtime = get_runtime(tg)
        inputs = target_inputs(t, tg)
        dense = ComponentGraph(t.build(), inputs, parse_components(components) if components else t.components,
                               t.output_layers)
        profiles = ProfileStore(store)
        dense.validate(inputs, tg.granule, profiles.validated)
        with activity("profiling") as (log, progress):
            result = profile_task(t, tg, runtime, inputs, dense, profiles,
                                  refresh=refresh, cost_model=cost_model, log=log, progress=progress)
    except USER_ERRORS as exc:
        fail(str(exc))
    frame = result.profile
    total = float(frame["time_ms"].sum())
    by_component = frame.groupby("component", sort=False)["time_ms"].sum().sort_values(ascending=False)
    comp = Table("component", "ms", "share", title=f"{t.name} on {tg.name} ({frame.attrs.get('runtime')}): "
                                                   f"{total:.4g} ms over {len(frame)} layers")
    for name, ms in by_component.items():
        comp.add_row(name or "(unattributed)", f"{ms:.4f}", f"{ms / total:.1%}")
    console.print(comp)
    columns = ["group", "kind", "components", "width", "layers ms"]
    if result.cost is not None:
        columns.append("half width saves ms")
    groups = Table(title="groups (a layer between two groups counts in both)")
    for name in columns:  # narrow terminals wrap the component lists and headers, never a group's name or a number
        groups.add_column(name, no_wrap=name in ("group", "kind"), justify="left" if name in ("group", "kind",
                          "components") else "right")
    for row in result.groups.itertuples():
        cells = [row.group, row.kind, row.components.replace(",", ", "), str(row.width), f"{row.layers_ms:.4f}"]
        if result.cost is not None:
            cells.append(f"{getattr(row, 'half_width_saves_ms', float('nan')):.4f}")
        groups.add_row(*cells)
    console.print(groups)
    console.print(f"profile {'reused from' if result.reused else 'stored in'} {result.profile_path}", highlight=False)
    if result.cost is not None:
        errors_pct = [100 * e for e in result.cost.calibration.errors()]
        console.print(f"cost model {'reused from' if result.cost_reused else 'stored in'} {result.cost_path}; "
                      f"calibration: {len(errors_pct)} whole-model measurements, largest error {max(errors_pct):.1f} %",
                      highlight=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder (holds manifest.json)")],
    out: Annotated[Path | None, typer.Option(help="write the report here; default: the run folder")] = None,
    screenshot: Annotated[bool, typer.Option(
        "--screenshot", help="render the HTML in headless Chromium and save figures/report-screenshot.png")] = False,
    profiles: Annotated[Path | None, typer.Option(
        help="profile store searched for a cost model when the run used none; default $EDGEPRUNE_PROFILES or ./profiles")] = None,
) -> None:
    """Write RUN_DIR's report: Markdown and a self-contained HTML page with figures (PNGs also in figures/)."""
    from edgeprune.core.manifest import Manifest, ManifestError
    from edgeprune.report.page import FIGURES, SCREENSHOT, ReportError
    from edgeprune.report.page import screenshot as render
    from edgeprune.report.report import write_report

    try:
        markdown = write_report(run_dir, Manifest.load(run_dir), out, profiles)
        page = markdown.with_suffix(".html")
        console.print(f"report written: {markdown} and {page} (figures in {markdown.parent / FIGURES})", highlight=False)
        if screenshot:
            shot = render(page, markdown.parent / FIGURES / SCREENSHOT)
            console.print(f"rendered in headless Chromium: {shot}", highlight=False)
    except (ManifestError, ReportError, *USER_ERRORS) as exc:
        fail(str(exc))


@app.command()
def tasks() -> None:
    """List the built-in tasks."""
    table = Table("task", "metric", "default budget", "description")
    for name in BUILTIN:
        try:
            t = load_task(name)
            table.add_row(name, t.metric, t.default_metric_budget, t.description)
        except TaskError as exc:
            table.add_row(name, "—", "—", f"unavailable: {exc}")
    console.print(table)


def device_cell(device: str) -> str:
    """A target's device, short: ``local``, or the host (and port) of ``ssh://user@host[:port]``."""
    match = SSH_URL.match(device)
    if match is None:
        return device
    return match["host"] + (f":{match['port']}" if match["port"] else "")


@app.command()
def targets(
    wide: Annotated[bool, typer.Option("--wide", help="also show the full device URL, the power settings, the "
                                                      "description and each target's file")] = False,
) -> None:
    """List the targets ($EDGEPRUNE_TARGETS, then ./targets, then the shipped ones) and where each came from."""
    found = find_targets()
    # one space between columns, a rule under the header: fits 80 columns with the longest shipped name and host
    table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)
    columns = ["target", "runtime", "precision", "granule", "device", "source"]
    if wide:
        columns += ["power", "description", "file"]
    for name in columns:
        table.add_column(name, no_wrap=True)
    for f in found:
        source = f.source + ("*" if f.shadows else "")
        if isinstance(f.target, TargetError):
            cells = [f.name, "[red]invalid[/]", "", "", "", source]
            table.add_row(*cells, *(["", "", str(f.path)] if wide else []))
            continue
        t = f.target
        cells = [f.name, t.runtime, t.precision, str(t.granule), t.device if wide else device_cell(t.device), source]
        if wide:
            power = ", ".join(p for p in (f"nvpmodel {t.power.nvpmodel}" if t.power.nvpmodel is not None else "",
                                          "jetson_clocks" if t.power.jetson_clocks else "") if p)
            cells += [power or "—", t.description, str(f.path)]
        table.add_row(*cells)
    if wide:  # the table at its full width: the terminal wraps longer lines (or pipe to `less -S`)
        full = console.measure(table, options=console.options.update(width=10_000)).maximum
        Console(width=max(console.width, full)).print(table)
    else:
        console.print(table)
    for f in found:
        if f.shadows:
            console.print(f"* {f.name}: this file hides the {' and '.join(f.shadows)} one of the same name",
                          highlight=False)
        if isinstance(f.target, TargetError):
            console.print(f"[red]invalid[/] {f.name}: {f.target}", highlight=False)
        elif f.target.name != f.name:
            console.print(f"{f.name}: its file names the target {f.target.name!r} (runs and profiles use that name)",
                          highlight=False)
    if not wide:
        console.print("To change one, copy its file (--wide) into ./targets/ or $EDGEPRUNE_TARGETS.", highlight=False)


@app.command()
def deploy(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder (holds manifest.json and model.onnx)")],
    device: Annotated[str, typer.Option(help="ssh://user@host[:port] (or local)")],
    dest: Annotated[str | None, typer.Option(help="folder on the device; default ~/edgeprune/deploy/TASK")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="put the previous version back instead")] = False,
    agent_python: Annotated[str | None, typer.Option(help="the device's Python with edgeprune installed "
                                                          "(default: the run target's agent_python, else python3)")] = None,
    allow_infeasible: Annotated[bool, typer.Option("--allow-infeasible",
                                                   help="deploy a run whose budgets do not both hold")] = False,
) -> None:
    """Install RUN_DIR's model on DEVICE: upload, sha256 check there, atomic swap keeping the previous, smoke run."""
    from edgeprune.artifact.deploy import DeployError
    from edgeprune.artifact.deploy import deploy as run_deploy
    from edgeprune.artifact.deploy import rollback as run_rollback

    def log(message: str) -> None:
        console.log(message, highlight=False)

    try:
        if rollback:
            result = run_rollback(run_dir, device, dest, agent_python, log=log)
        else:
            result = run_deploy(run_dir, device, dest, agent_python, allow_infeasible=allow_infeasible, log=log)
    except (DeployError, *USER_ERRORS) as exc:
        fail(str(exc))
    console.print(result.summary(), highlight=False, soft_wrap=True)


#: Where an unexpected error's traceback is saved (the user sees one line naming the file).
CRASH_LOGS = Path(os.environ.get("EDGEPRUNE_LOGS", Path.home() / ".cache" / "edgeprune" / "logs"))


def crash_log(exc: BaseException) -> Path:
    """Save ``exc``'s traceback (with the command line and versions) to a new file under :data:`CRASH_LOGS`."""
    import datetime as dt
    import platform
    import traceback

    import edgeprune

    CRASH_LOGS.mkdir(parents=True, exist_ok=True)
    path = CRASH_LOGS / f"crash-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    path.write_text(f"edgeprune {edgeprune.__version__}, Python {platform.python_version()}, {platform.platform()}\n"
                    f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc)))
    return path


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted; nothing was published (a tune run continues with the same command and --resume)")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line and the saved traceback, never a dump
        errors.print(f"[bold red]internal error:[/] {type(exc).__name__}: {one_line(exc)}; traceback saved to "
                     f"{crash_log(exc)} (please attach it to a bug report)", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
