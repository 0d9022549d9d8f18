"""The per-stage report, rendered once: the Prefect artifact's Markdown table and the CLI's table
(rich) come from the same rows.

Input is a flow summary's "stages" list (StageReport.as_dict()), so the CLI renders what a flow
returned, wherever it ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

def report_path(run_id: str) -> str:
    """Where a finished run's report.json is, whatever the flow (build or synthesis)."""
    return f"runs/{run_id}/report.json"


COLUMNS = ("stage", "shards (run now)", "in", "out", "filtered", "quarantined", "reasons", "LLM calls", "tokens")


def stage_rows(stages: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row of strings per stage, in COLUMNS order."""
    rows = []
    for s in stages:
        c, u = s["counts"], s["usage"]
        run_now = "skipped" if s["skipped"] else str(s["shards_run"])
        calls, tokens = (str(u.get("calls", 0)), str(u.get("total_tokens", 0))) if u else ("-", "-")
        reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        rows.append([s["stage"], f"{s['shards']} ({run_now})", str(c["rows_in"]), str(c["rows_out"]),
                     str(c["filtered"]), str(c["quarantined"]), reasons, calls, tokens])
    return rows


def stages_markdown(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The table as Markdown lines (the flows' summary artifacts)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in stage_rows(stages)]
    return lines


def stages_table(stages: Sequence[Mapping[str, Any]]) -> Table:
    """The same table for a terminal."""
    table = Table(show_lines=False)
    short = {"shards (run now)": "shards (run)", "LLM calls": "calls"}  # narrower headers for a terminal
    for i, column in enumerate(COLUMNS):
        # Stage names and numbers never wrap; the reasons column takes what width is left.
        table.add_column(short.get(column, column), no_wrap=column != "reasons", min_width=24 if column == "reasons" else None,
                         justify="right" if 2 <= i <= 5 or i >= 7 else "left")
    for row in stage_rows(stages):
        row[6] = row[6].replace(", ", "\n")  # one reason a line: a terminal is narrower than a page
        table.add_row(*row)
    return table
