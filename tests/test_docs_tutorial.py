"""The docs' executed tutorial: the mkdocs hook runs a percent-cell script and renders its code, printed
output, tables and figures as a page, and a cell that raises (or a build without the data) fails the
build naming where. Tiny scripts here; CI's `mkdocs build --strict` runs the real docs/tutorial.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]
HOOK_PATH = ROOT / "docs" / "hooks" / "tutorial.py"

SCRIPT = """\
# %% [markdown]
# # A tiny tutorial
#
# Some *text*.

# %%
import pandas as pd

frame = pd.DataFrame({"title": ["Fargo (1996)", "Heat (1995)"], "score": [0.5, 0.25]})
print("two rows")
frame

# %%
import matplotlib.pyplot as plt

figure, axes = plt.subplots()
axes.plot(frame["score"])
axes.set_title("Scores")
"""

FAILING = """\
# %%
def first_title(frame):
    return frame["missing"]

# %%
import pandas as pd

first_title(pd.DataFrame({"title": ["Fargo (1996)"]}))
"""


def load_hook():
    spec = importlib.util.spec_from_file_location("tutorial_hook", HOOK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def build(tmp_path: Path, script: str, data_dir: str | None = "data") -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of a site holding only ``script`` as docs/tutorial.py, with the hook."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "tutorial.py").write_text(script)
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\nstrict: true\nhooks:\n  - {HOOK_PATH}\nnav:\n  - tutorial.md\n")
    env = {key: value for key, value in os.environ.items() if key != "MTREC_DATA_DIR"}
    env.update({} if data_dir is None else {"MTREC_DATA_DIR": data_dir})
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    return subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_page_shows_each_cells_code_then_its_output_table_and_figure(tmp_path):
    result = build(tmp_path, SCRIPT)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "site" / "tutorial" / "index.html").read_text()
    assert "<h1 id=" in page and "A tiny tutorial" in page and "<em>text</em>" in page
    code, printed = page.index("print(&quot;two rows&quot;)"), page.index('<code class="language-text">two rows')
    table = page.index('<table class="dataframe">')
    assert code < printed < table < page.index('<img alt="Scores" src="figure-1.png"')
    assert "<td>Fargo (1996)</td>" in page and "<td>0.2500</td>" in page
    # A figure is a PNG file beside the page; the script itself is offered for download.
    assert (tmp_path / "site" / "tutorial" / "figure-1.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "site" / "tutorial.py").read_text() == SCRIPT


@pytest.mark.slow
def test_a_cell_that_raises_fails_the_build_naming_the_cell_and_the_scripts_line(tmp_path):
    result = build(tmp_path, FAILING)
    assert result.returncode == 1
    assert "tutorial.py: code cell 2 failed at line 3: return frame[\"missing\"]\nKeyError: 'missing'" in result.stderr
    assert not (tmp_path / "site" / "tutorial").exists()


@pytest.mark.slow
def test_a_build_without_the_data_directory_fails_in_one_line_saying_to_set_it(tmp_path):
    result = build(tmp_path, SCRIPT, data_dir=None)
    assert result.returncode == 1
    [message] = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert "set MTREC_DATA_DIR to the folder holding ml-100k/" in message


def test_a_syntax_error_names_the_scripts_own_line(tmp_path):
    path = tmp_path / "tutorial.py"
    path.write_text("# %%\nx = 1\n\n# %%\ny = 2\ny = (x +\n")
    with pytest.raises(PluginError, match=r"code cell 2 failed at the cell starting at line 5\nSyntaxError: .*line 6\)"):
        load_hook().execute(path)


def test_cells_run_in_one_namespace_and_only_a_last_expression_is_shown(tmp_path):
    path = tmp_path / "tutorial.py"
    path.write_text("# %%\nx = 41\nx + 1\n\n# %%\ny = x + 1\n")
    page, figures = load_hook().execute(path)
    assert page == "```python\nx = 41\nx + 1\n```\n\n```text\n42\n```\n\n```python\ny = x + 1\n```\n"
    assert figures == {}
