"""Reports of results: text for terminals and logs, markdown for job summaries, JSON for scripts.

A report is built once as a plain dict (:func:`build`) with DESIGN.md's JSON schema; every format
renders that dict, so the three never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detharness.bundle import atomic_write_text
from detharness.checks import summarize
from detharness.compare import Status
from detharness.errors import UsageError
from detharness.report import json_report, markdown, text

REPORT_SCHEMA = 1
FORMATS = {"text": text.render, "md": markdown.render, "json": json_report.render}
EXTENSIONS = {".md": "md", ".json": "json", ".txt": "text"}


def order(results: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Failures first (worst status first), then by variant id, check and output."""
    return sorted(results, key=lambda r: (-Status(r["status"]).severity, r["variant"] or "", r["check"], r["output"] or ""))


def build(results: Sequence[Mapping[str, Any]], environments: Mapping[str, Mapping[str, Any]], *,
          title: str, seconds: float | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "title": title,
        "summary": summarize(results),
        "environments": {k: dict(v) for k, v in environments.items()},
        "results": order(results),
    }
    if seconds is not None:
        report["seconds"] = round(seconds, 3)
    report.update(extra or {})
    return report


def render(report: Mapping[str, Any], fmt: str) -> str:
    try:
        return FORMATS[fmt](report)
    except KeyError:
        raise UsageError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}") from None


def format_for_path(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise UsageError(f"--report {path}: unknown extension {suffix or '(none)'!r}; use .md, .json or .txt")
    return EXTENSIONS[suffix]


def write(report: Mapping[str, Any], path: str) -> None:
    """Write a report in the format its extension names, atomically, making its folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render(report, format_for_path(path)))
