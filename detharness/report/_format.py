"""Formatting shared by the text and markdown reports: numbers, headlines, environment diffs, skip reasons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from detharness.results import Status


def number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def headline(message: str | None) -> str:
    """A message's first line ("" for none, or one of white space only)."""
    return next(iter((message or "").strip().splitlines()), "")


def summary_line(report: Mapping[str, Any]) -> str:
    """The verdicts on what ran here, then what could not run here: ``29 known, 243 close, 186
    identical; 277 skipped in 30.1s`` (a CPU runner's skipped CUDA variants are no verdict)."""
    counts = report["summary"]
    parts = [f"{n} {status}" for status, n in counts.items() if status != Status.SKIPPED] or ["nothing compared"]
    line = ", ".join(parts)
    if counts.get(Status.SKIPPED.value):
        line += f"; {counts[Status.SKIPPED.value]} skipped"
    if report.get("seconds") is not None:
        line += f" in {report['seconds']:.1f}s"
    return line


def env_diff_text(diff: Mapping[str, Any] | None, limit: int = 4) -> str:
    if not diff:
        return ""
    items = [f"{k}: {v[0]} -> {v[1]}" for k, v in list(diff.items())[:limit]]
    if len(diff) > limit:
        items.append(f"(+{len(diff) - limit} more)")
    return "; ".join(items)


def skipped_reasons(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """Skipped results grouped by reason, most frequent first: fifty "no cuda device" rows on a
    CPU runner say one thing, so the reports say it once."""
    counts: dict[str, int] = {}
    for r in results:
        if r["status"] == Status.SKIPPED:
            reason = headline(r.get("message")) or "skipped"
            counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
