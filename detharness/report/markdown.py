"""Markdown report, shaped for a GitHub job summary: the title and counts, then the registered
markdown sections (summary, N-way sections, failures in full, results by case, known divergences,
skips, environments), cut to stay under GitHub's 1 MiB job-summary limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detharness.report import SECTIONS
from detharness.report._escape import md_code, md_text, terminal_safe
from detharness.report._format import summary_line

#: GitHub refuses a job summary over 1 MiB (per step); the report stays under it with room to spare.
MAX_BYTES = 1024 * 1024 - 24 * 1024


def _size(lines: list[str]) -> int:
    return sum(len(line.encode("utf-8")) + 1 for line in lines)


def _where_else(report: Mapping[str, Any]) -> str:
    html = report.get("html_report")
    return f"the HTML report {md_code(html)} and the JSON report" if html else "the JSON and HTML reports (--report FILE)"


def render(report: Mapping[str, Any], *, budget: int = MAX_BYTES) -> str:
    """Everything that is not the report's own markup is escaped for where it goes (see
    :mod:`detharness.report._escape`): a case id, a message or an environment value from user code
    or from a bundle made elsewhere can neither break a table nor add HTML.

    Past ``budget`` bytes the results by case are cut whole, case by case (worst cases first, so
    what is cut passed), and a note says how many and where the rest is."""
    from detharness.report.sections import markdown_case_blocks

    head = [f"## {md_text(report.get('title', 'detharness'))}", "", f"**{md_text(summary_line(report))}**", ""]
    parts: list[tuple[str, list[str]]] = [(s.name, s.render(report)) for s in SECTIONS["md"] if s.when != "brief"]
    if _size(head) + sum(_size(lines) for _, lines in parts) > budget:
        fixed = _size(head) + sum(_size(lines) for name, lines in parts if name != "cases") + 2048
        blocks = markdown_case_blocks(report)
        kept: list[str] = ["### Results by case", ""]
        for n, block in enumerate(blocks):
            if fixed + _size(kept) + _size(block) > budget:
                kept += [f"_{len(blocks) - n} more cases cut to stay under GitHub's 1 MiB job-summary limit: "
                         f"every result is in {_where_else(report)}._", ""]
                break
            kept += block
        parts = [(name, kept if name == "cases" else lines) for name, lines in parts]
    out = head + [line for _, lines in parts for line in lines]
    if _size(out) > budget:
        out = _cut(out, budget, report)
    # The sections escape what they take from results; this catches a registered section that does not.
    return terminal_safe("\n".join(out), multiline=True)


def _cut(lines: list[str], budget: int, report: Mapping[str, Any]) -> list[str]:
    """The last resort (sections other than the results by case over the budget): cut at a line,
    close what the cut left open (a code fence, ``<details>``), and say so."""
    kept: list[str] = []
    size, fence, details = 0, "", 0
    for line in lines:
        size += len(line.encode("utf-8")) + 1
        if size > budget - 4096:
            break
        kept.append(line)
        stripped = line.strip()
        if fence and stripped == fence:
            fence = ""
        elif not fence and stripped.startswith("```"):
            fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
        elif not fence:
            details += line.count("<details") - line.count("</details>")
    closing = ([fence] if fence else []) + ["</details>"] * max(details, 0)
    return [*kept, *closing, "", f"_The report was cut here to stay under GitHub's 1 MiB job-summary limit: "
                                 f"everything is in {_where_else(report)}._", ""]
