"""Plain-text tables for reports and the command line (aligned columns, a dashed rule)."""
from __future__ import annotations


def format_table(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, rule, *rows])
