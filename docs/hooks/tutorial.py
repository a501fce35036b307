"""The mkdocs hook that runs ``docs/tutorial.py`` at build time and renders it as the page ``tutorial.md``.

The script is in "percent" cells, as Jupytext and editors read them: ``# %%`` starts a code cell,
``# %% [markdown]`` a text cell whose lines are ``#`` comments. The code cells run in order in one
namespace, as in a notebook; each is followed on the page by what it printed, the value of its last
line when that is an expression (a pandas DataFrame as a table, anything else as text), and the
matplotlib figures it drew (PNG files beside the page, in the built site only). A cell that raises
fails the build, naming the cell and the script's line; so does a build without ``MTREC_DATA_DIR``,
which says where MovieLens 100K is.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere: figures are files, never windows

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.artist import Artist
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

SCRIPT = "tutorial.py"
PAGE = "tutorial.md"
FIGURES = "tutorial"  # the figures' folder in the site, beside the page's
DATA_DIR_ENV = "MTREC_DATA_DIR"
MARKER = "# %%"

log = logging.getLogger("mkdocs.hooks.tutorial")


@dataclass
class Cell:
    """A cell of the script: its kind, its lines and the script's line number of its first one."""

    kind: str
    line: int
    lines: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return "\n".join(self.lines).rstrip()


@dataclass
class Output:
    """What a code cell gave: its printed text, its last expression's value, its figures as PNG and
    their titles (the figures' text alternatives)."""

    printed: str
    value: Any
    figures: list[bytes]
    titles: list[str]


def parse_cells(text: str) -> list[Cell]:
    """The non-empty cells of a percent-format script (lines before the first marker are a code cell)."""
    cells = [Cell("code", 1)]
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(MARKER):
            cells.append(Cell("markdown" if "[markdown]" in line else "code", number))
        elif cells[-1].lines or line.strip():
            if not cells[-1].lines:
                cells[-1].line = number  # a cell starts at its first line that is not blank
            cells[-1].lines.append(line)
    return [cell for cell in cells if cell.lines]


def markdown_text(cell: Cell) -> str:
    """A text cell's markdown: its comment lines without the ``#`` and the one space after it."""
    return "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in cell.lines).rstrip()


def run_cell(cell: Cell, namespace: dict[str, Any], path: Path) -> Output:
    """Run a code cell in ``namespace``: the line numbers of errors are the script's own."""
    tree = ast.parse("\n" * (cell.line - 1) + cell.source, filename=str(path))
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(tree, str(path), "exec"), namespace)  # noqa: S102 - running the script is the point
        value = eval(compile(ast.Expression(last.value), str(path), "eval"), namespace) if last else None
    figures = [plt.figure(number) for number in plt.get_fignums()]
    output = Output(printed.getvalue(), value, [_png(f) for f in figures], [_title(f) for f in figures])
    plt.close("all")
    return output


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _title(figure: plt.Figure) -> str:
    """The figure's title, else its plots' titles."""
    title = figure.get_suptitle() or "; ".join(axes.get_title() for axes in figure.axes if axes.get_title())
    return title or "A figure"


def cell_failure(number: int, cell: Cell, path: Path, error: Exception) -> PluginError:
    """The build error for code cell ``number``: where in the script it failed, and why."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == str(path)]
    where = f"line {frames[-1].lineno}: {frames[-1].line}" if frames else f"the cell starting at line {cell.line}"
    return PluginError(f"{path}: code cell {number} failed at {where}\n{type(error).__name__}: {error}")


def render_output(output: Output, figure_names: list[str]) -> list[str]:
    """The markdown blocks showing a cell's output; its figures are linked as ``figure_names``."""
    blocks = []
    if output.printed.strip():
        blocks.append(f"```text\n{output.printed.rstrip()}\n```")
    if isinstance(output.value, pd.DataFrame):
        blocks.append(output.value.to_html(index=False, border=0, justify="left", float_format="{:.4f}".format))
    elif output.value is not None and not isinstance(output.value, Artist):
        blocks.append(f"```text\n{output.value!r}\n```")
    blocks += [f"![{alt}]({name})" for alt, name in zip(output.titles, figure_names)]
    return blocks


def execute(path: Path) -> tuple[str, dict[str, bytes]]:
    """Run the script cell by cell: the page's markdown and its figures by their paths in the site."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    blocks, figures = [], {}
    code_cells = 0
    for cell in parse_cells(path.read_text(encoding="utf-8")):
        if cell.kind == "markdown":
            blocks.append(markdown_text(cell))
            continue
        code_cells += 1
        blocks.append(f"```python\n{cell.source}\n```")
        try:
            output = run_cell(cell, namespace, path)
        except Exception as error:  # noqa: BLE001 - whatever a cell raises fails the build, naming the cell
            raise cell_failure(code_cells, cell, path, error) from None
        names = [f"{FIGURES}/figure-{len(figures) + i}.png" for i in range(1, len(output.figures) + 1)]
        figures.update(zip(names, output.figures))
        blocks += render_output(output, names)
    return "\n\n".join(blocks) + "\n", figures


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the executed tutorial page and its figures to the site's files."""
    if not os.environ.get(DATA_DIR_ENV):
        raise PluginError(
            f"the tutorial trains on MovieLens 100K: set {DATA_DIR_ENV} to the folder holding "
            f"ml-100k/ (e.g. {DATA_DIR_ENV}=../shared/data mkdocs build)"
        )
    started = time.perf_counter()
    page, figures = execute(Path(config.docs_dir) / SCRIPT)
    log.info(f"{SCRIPT} ran in {time.perf_counter() - started:.1f} s")
    files.append(File.generated(config, PAGE, content=page))
    for name, png in figures.items():
        files.append(File.generated(config, name, content=png))
    return files
