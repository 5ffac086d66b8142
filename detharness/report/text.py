"""Plain-text report, summary first: the counts of what was compared here, what could not run here
(grouped by reason), one line per failure, the declared known divergences and the N-way sections.
``-v`` (``verbose``) adds the table of every result and each failure in full."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detharness.report import render_sections
from detharness.report._escape import terminal_safe
from detharness.report._format import summary_line


def render(report: Mapping[str, Any], *, verbose: bool = False) -> str:
    lines = [terminal_safe(f"{report.get('title', 'detharness')}: {summary_line(report)}")]
    lines += render_sections("text", report, verbose=verbose)
    if not verbose and report.get("results"):
        lines += ["", "every result: -v; every field: --format json; plots: --report FILE.html"]
    # The sections escape what they take from results; this catches a registered section that does not.
    return terminal_safe("\n".join(lines), multiline=True) + "\n"
