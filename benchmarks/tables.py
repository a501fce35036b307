"""What the benchmarks share: a Markdown table of strings, columns padded to their widest cell."""

from __future__ import annotations


def table(rows: list[list[str]]) -> str:
    """``rows`` (the header first) as a Markdown table."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
