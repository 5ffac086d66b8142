"""The N-way sections of a report: profiles (``detharness matrix``), attribution, matrix, pairs.

Shared by the text and markdown reports; both render only what the report dict holds, so a compare
of two bundles (no ``matrix``) renders as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

from detharness.report._escape import md_code, md_html, md_text, terminal_safe
from detharness.results import Status

# Wide matrices are read row by row; a column per environment is what the reader scans, so the
# statuses get short names.
_SHORT = {Status.IDENTICAL.value: "=", Status.SKIPPED.value: "skip",
          **{s.value: s.value.upper() for s in Status if s.severity > Status.MISSING.severity}}
LEGEND = "= bitwise identical to the baseline; close: within tolerance but not bitwise; skip: not run on one side"


def profile_rows(profiles: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for p in profiles:
        note = p.get("reason") or "; ".join(p.get("notes") or [])
        if p.get("overlay_reused") is not None:
            note = (note + "; " if note else "") + ("overlay reused" if p["overlay_reused"] else "overlay installed")
        rows.append([p["name"], p["status"], p.get("changes") or "", str(p.get("torch_cpu_capability") or ""),
                     (p.get("environment_id") or "")[:12], f"{p.get('seconds', 0):.1f}", note])
    return rows


PROFILE_HEADERS = ["profile", "status", "changes", "torch ran", "environment", "seconds", "note"]


def _differs(cells: Mapping[str, str]) -> bool:
    return any(status != "identical" for status in cells.values())


def matrix_rows(matrix: Mapping[str, Any], table: str, only_differing: bool) -> list[list[str]]:
    envs = matrix["environments"]
    rows = []
    for key, cells in matrix.get(table, {}).items():
        if only_differing and not _differs(cells):
            continue
        rows.append([key, *[_SHORT.get(cells.get(e, ""), cells.get(e, "")) for e in envs]])
    return rows


def pairs_table(matrix: Mapping[str, Any], fmt: str) -> str:
    """A triangle: how many outputs differ bitwise between two environments, of how many both ran."""
    labels = [matrix["baseline"], *matrix["environments"]]
    counts = {(p["a"], p["b"]): p for p in matrix.get("pairs", [])}
    escape = md_text if fmt == "github" else terminal_safe
    rows = []
    for i, a in enumerate(labels):
        row = [escape(a)]
        for j, b in enumerate(labels):
            pair = counts.get((a, b)) or counts.get((b, a))
            row.append("" if j <= i or pair is None else f"{pair['differing']}/{pair['compared']}")
        rows.append(row)
    return str(tabulate(rows, headers=["", *map(escape, labels)], tablefmt=fmt, disable_numparse=True))


def text_sections(report: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    profiles = report.get("profiles")
    if profiles:
        rows = [[terminal_safe(c) for c in row] for row in profile_rows(profiles)]
        lines += ["", "profiles:", tabulate(rows, headers=PROFILE_HEADERS, tablefmt="simple", disable_numparse=True)]
    matrix = report.get("matrix")
    if not matrix:
        return lines
    envs = [terminal_safe(e) for e in matrix["environments"]]
    rows = [[terminal_safe(c) for c in row] for row in matrix_rows(matrix, "cases", only_differing=True)]
    baseline = terminal_safe(repr(matrix["baseline"]))
    lines += ["", f"matrix: worst status of each case against the baseline {baseline} ({LEGEND})"]
    if rows:
        lines.append(tabulate(rows, headers=["case", *envs], tablefmt="simple", disable_numparse=True))
    same = len(matrix.get("cases", {})) - len(rows)
    lines.append(f"{same} case(s) bitwise identical in every environment")
    if matrix.get("pairs"):
        lines += ["", "outputs that differ bitwise between two environments (differing/compared):",
                  pairs_table(matrix, "simple")]
    attribution = report.get("attribution") or []
    lines += ["", "attribution:" if attribution else "attribution: no output differs from the baseline"]
    lines += [f"  - {terminal_safe(entry['line'])}" for entry in attribution]
    return lines


def markdown_sections(report: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    profiles = report.get("profiles")
    if profiles:
        rows = [[md_text(c) for c in row] for row in profile_rows(profiles)]
        out += ["### Profiles", "", tabulate(rows, headers=PROFILE_HEADERS, tablefmt="github", disable_numparse=True), ""]
    matrix = report.get("matrix")
    if not matrix:
        return out
    attribution = report.get("attribution") or []
    out += ["### Attribution", ""]
    for entry in attribution:
        out.append(f"- {md_text(entry['line'])}")
        members = entry.get("members") or []
        if len(members) > 3:  # the line names three; the rest are one click away
            # Raw HTML (a <details> line is not markdown): HTML-escaped text, <code> for code.
            names = ", ".join(f"<code>{md_html(m['variant'])}</code>" + (f" {md_html(m['output'])}" if m.get("output")
                                                                        else "") for m in members)
            out.append(f"  <details><summary>all {len(members)} outputs</summary>{names}</details>")
    if not attribution:
        out.append("No output differs from the baseline.")
    out.append("")
    envs = matrix["environments"]
    headers = [md_code(e) for e in envs]
    rows = [[md_code(r[0]), *map(md_text, r[1:])] for r in matrix_rows(matrix, "cases", only_differing=False)]
    out += [f"### Matrix against {md_code(matrix['baseline'])}", "", f"_{LEGEND}._", "",
            tabulate(rows, headers=["case", *headers], tablefmt="github", disable_numparse=True), ""]
    differing = [[md_code(r[0]), *map(md_text, r[1:])] for r in matrix_rows(matrix, "variants", only_differing=True)]
    if differing:
        out += [f"<details><summary>{len(differing)} variant(s) not bitwise identical somewhere</summary>", "",
                tabulate(differing, headers=["variant", *headers], tablefmt="github", disable_numparse=True), "",
                "</details>", ""]
    if matrix.get("pairs"):
        out += ["<details><summary>Outputs that differ bitwise between two environments (differing/compared)</summary>",
                "", pairs_table(matrix, "github"), "", "</details>", ""]
    return out
