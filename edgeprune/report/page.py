"""Pages: a document as blocks rendered to Markdown (figures linked) and one self-contained HTML file (figures
embedded), numbers formatted one way everywhere, and a headless-Chromium screenshot as proof a page renders.

The run report (:mod:`edgeprune.report.report`) and the benchmark page (``bench/compare.py``) are both pages.
Files are written under temporary names and renamed, so a reader never sees half a page.
"""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FIGURES = "figures"
SCREENSHOT = "report-screenshot.png"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ReportError(ValueError):
    """A report cannot be made: no run in the folder, or no browser to render it."""


# -- numbers, formatted one way everywhere ---------------------------------------------------------------------
def fmt(value: float) -> str:
    """A measured or computed quantity: four significant digits."""
    return f"{value:.4g}"


def fmt_ms(value: float) -> str:
    return f"{value:.4g} ms"


def fmt_share(value: float) -> str:
    return f"{value:.1%}"


def check(holds: bool) -> str:
    return "✓" if holds else "✗"


# -- a page: Markdown and self-contained HTML from the same blocks ---------------------------------------------
_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\[([^\]]+)\]\(((?![a-z][a-z0-9+.-]*:)[^)\s]+)\)"), r'<a href="\2">\1</a>'),  # relative links only
]
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a202c;max-width:1180px;
margin:2em auto;padding:0 1.2em;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #2b6cb0;padding-bottom:.3em}h2{margin-top:1.8em;color:#2c5282}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #cbd5e0;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#ebf4ff}tr:nth-child(even) td{background:#f7fafc}
code{background:#edf2f7;padding:.05em .3em;border-radius:3px;font-size:.92em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e2e8f0}figcaption{color:#4a5568;font-size:.9em}
.callout{border-left:4px solid #c53030;background:#fff5f5;padding:.6em 1em}
"""


def _inline(text: str) -> str:
    out = html.escape(str(text), quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


@dataclass
class Page:
    """A document as a list of blocks, rendered to Markdown (figures linked) or HTML (figures embedded)."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, markdown: str, callout: bool = False) -> None:
        """A paragraph, or a list when every line starts with ``- ``; inline ``**bold**``, code and links."""
        self.blocks.append(("callout" if callout else "text", markdown))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(("table", (list(header), [[str(c) for c in row] for row in rows])))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", (path, caption)))

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                parts.append(f"{'#' * level} {text}")
            elif kind == "table":
                parts.append(markdown_table(*value))
            elif kind == "figure":
                path, caption = value
                parts.append(f"![{caption}]({FIGURES}/{path.name})\n\n*{caption}*")
            else:
                parts.append(f"> {value}" if kind == "callout" else str(value))
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                body.append(f"<h{level}>{_inline(text)}</h{level}>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            elif kind == "figure":
                path, caption = value
                data = base64.b64encode(path.read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(caption)}</figcaption></figure>")
            else:
                lines = str(value).splitlines()
                if lines and all(line.startswith("- ") for line in lines):
                    body.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>")
                else:
                    css = ' class="callout"' if kind == "callout" else ""
                    body.append(f"<p{css}>{_inline(value)}</p>")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

    def write(self, folder: Path, stem: str) -> Path:
        """``STEM.md``, ``STEM.html`` and ``figures/*.png`` into ``folder``, each written under a temporary name and
        renamed (the figures, drawn into a :func:`staging` folder, are moved into place). ``figures/`` then holds
        this page's figures only: one left from an earlier rendering (a staircase, a screenshot) would mislead."""
        texts = {f"{stem}.md": self.markdown(), f"{stem}.html": self.html()}  # reads the figures before moving them
        figures = folder / FIGURES
        figures.mkdir(parents=True, exist_ok=True)
        drawn = [value[0] for kind, value in self.blocks if kind == "figure"]
        for stale in set(figures.glob("*.png")) - {figures / path.name for path in drawn}:
            stale.unlink()
        for path in drawn:
            if path.parent != figures:
                os.replace(path, figures / path.name)
        for name, text in texts.items():
            tmp = folder / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(folder / name)
        return folder / f"{stem}.md"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A temporary folder inside ``folder`` for figures in the making; removed on exit whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".report-", dir=folder))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def find_chromium() -> str:
    """The headless browser that renders reports; a clear error when there is none."""
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    raise ReportError("no Chromium to render the report with (looked for " + ", ".join(CHROMIUM) +
                      "): `make setup` installs it (Debian package chromium)")


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 3000, timeout_s: float = 120) -> Path:
    """Render an HTML file in headless Chromium and save a screenshot: proof the page renders, not just parses."""
    browser = find_chromium()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    with tempfile.TemporaryDirectory(prefix="edgeprune-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={tmp}", f"--window-size={width},{height}",
               page.resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ReportError(f"Chromium did not render {page} within {timeout_s:g} s") from exc
    if not tmp.is_file() or tmp.stat().st_size == 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReportError(f"Chromium wrote no screenshot of {page} (exit {done.returncode}): {last}")
    tmp.replace(png)
    return png
