"""The conformance table: every network of the suite through trace, validation, a 30 % prune and the ONNX check.

``python bench/conformance.py`` prints the table; ``--readme README.md`` also writes it into the README between its
conformance markers. The rows are what ``tests/test_conformance.py`` computes (it runs the quicker ones and checks
the README against them), so the README cannot drift from the suite. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conformance_models import HEADER, MODELS, NOT_COVERED, Row, check

from edgeprune.report.page import markdown_table

README_START = "<!-- conformance: start (written by `python bench/conformance.py --readme README.md`) -->"
README_END = "<!-- conformance: end -->"


def table(rows: list[Row]) -> str:
    return markdown_table(HEADER, [row.cells() for row in rows])


def readme_block(rows: list[Row]) -> str:
    left_out = "".join(f"\n- `{name}` is not in the table: {why}." for name, why in NOT_COVERED.items())
    return f"{README_START}\n{table(rows)}\n{left_out}\n{README_END}"


def write_readme(readme: Path, rows: list[Row]) -> None:
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_block(rows) + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="write the table into this README between its markers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for index, name in enumerate(MODELS, 1):
            print(f"[{index}/{len(MODELS)}] {name}", file=sys.stderr, flush=True)
            rows.append(check(name, Path(tmp)))
    print(table(rows))
    if args.readme:
        write_readme(args.readme, rows)


if __name__ == "__main__":
    main()
