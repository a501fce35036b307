"""What the benchmarks share: a Markdown table of strings, columns padded to their widest cell."""

from __future__ import annotations

import numpy as np


def table(rows: list[list[str]]) -> str:
    """``rows`` (the header first) as a Markdown table."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(values: list[float]) -> str:
    """Mean ± sd (over seeds) of the finite values, or the one value; "–" for none."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "–"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"
