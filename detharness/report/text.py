"""Plain-text report: one table row per result, failures first, details, summary line last."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from detharness.report._format import PASSING, env_diff_text, headline, number, skipped_reasons, summary_line
from detharness.report._matrix import text_sections

MAX_DETAILS = 10


def render(report: Mapping[str, Any]) -> str:
    results = [r for r in report["results"] if r["status"] != "skipped"]
    lines: list[str] = []
    if results:
        rows = [
            [r["status"], r["check"], r["variant"], r["output"] or "", number(r.get("max_ulp")),
             number(r.get("max_abs")), number(r.get("max_scaled")), _note(r)]
            for r in results
        ]
        lines.append(tabulate(rows, headers=["status", "check", "variant", "output", "max ulp", "max abs",
                                             "max scaled", "note"], tablefmt="simple", disable_numparse=True))
    failures = [r for r in results if r["status"] not in PASSING]
    for r in failures[:MAX_DETAILS]:
        lines.append("")
        lines.append(f"--- {r['status'].upper()} {r['check']} {r['variant']}" + (f" output {r['output']!r}" if r["output"] else ""))
        lines.append((r.get("message") or "").rstrip())
        if r.get("env_diff"):
            lines.append("environment differs: " + env_diff_text(r["env_diff"], limit=12))
        if r.get("reproduce"):
            lines.append(f"reproduce: {r['reproduce']}")
    if len(failures) > MAX_DETAILS:
        lines.append(f"\n({len(failures) - MAX_DETAILS} more failures: use --format json or --report FILE for all)")
    skipped = skipped_reasons(report["results"])
    if skipped:
        lines.append("")
        lines.append("skipped:")
        lines += [f"  {count:4d}  {reason}" for reason, count in skipped]
    lines += text_sections(report)
    lines.append("")
    lines.append(f"{report.get('title', 'detharness')}: {summary_line(report)}")
    return "\n".join(lines) + "\n"


def _note(r: Mapping[str, Any]) -> str:
    if r["status"] in ("identical", "close"):
        return ""
    note = headline(r.get("message"))
    return note if len(note) <= 80 else note[:77] + "..."
