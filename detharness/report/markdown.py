"""Markdown report, shaped for a GitHub job summary: the title and counts, then the registered
markdown sections (environments, N-way sections, failures with details, all results, skips)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detharness.report import render_sections
from detharness.report._escape import md_text, terminal_safe
from detharness.report._format import summary_line


def render(report: Mapping[str, Any]) -> str:
    """Everything that is not the report's own markup is escaped for where it goes (see
    :mod:`detharness.report._escape`): a case id, a message or an environment value from user code
    or from a bundle made elsewhere can neither break a table nor add HTML."""
    out = [f"## {md_text(report.get('title', 'detharness'))}", "", f"**{md_text(summary_line(report))}**", ""]
    out += render_sections("md", report)
    # The sections escape what they take from results; this catches a registered section that does not.
    return terminal_safe("\n".join(out), multiline=True)
