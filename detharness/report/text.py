"""Plain-text report: the registered text sections (results table, failures with details, skip
reasons, N-way sections), then the summary line last, where a terminal leaves the eye."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detharness.report import render_sections
from detharness.report._escape import terminal_safe
from detharness.report._format import summary_line


def render(report: Mapping[str, Any]) -> str:
    lines = render_sections("text", report)
    lines += ["", terminal_safe(f"{report.get('title', 'detharness')}: {summary_line(report)}")]
    # The sections escape what they take from results; this catches a registered section that does not.
    return terminal_safe("\n".join(lines), multiline=True) + "\n"
