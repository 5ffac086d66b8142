"""Markdown report, shaped for a GitHub job summary: the title and counts, then the registered
markdown sections (environments, N-way sections, failures with details, all results, skips)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detharness.report import render_sections
from detharness.report._format import summary_line


def render(report: Mapping[str, Any]) -> str:
    out = [f"## {report.get('title', 'detharness')}", "", f"**{summary_line(report)}**", ""]
    out += render_sections("md", report)
    return "\n".join(out)
