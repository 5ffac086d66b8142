"""The built-in sections of the text and markdown reports (see :func:`detharness.report.register_section`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from detharness.report import Section, register_section
from detharness.report._escape import md_code, md_fence, md_html, md_text, terminal_safe
from detharness.report._format import env_diff_text, headline, number, skipped_reasons
from detharness.report._matrix import markdown_sections, text_sections
from detharness.results import QUIET, Status

#: Failures shown in full in the text report; the rest are counted.
MAX_DETAILS = 10
#: Rows of the markdown results table; the rest are in the JSON report.
MAX_ROWS = 1000
#: Lines of a traceback the text report shows (the last ones: the user's frame and the error).
TRACEBACK_LINES = 6
_ENV_KEYS = ["python.version", "machine.arch", "cpu.model", "numpy.version", "torch.version",
             "torch.cpu_capability", "onnxruntime.version", "jax.version", "gpu.name"]
_HEADERS = ["status", "check", "variant", "output", "max ulp", "max abs", "max scaled", "note"]


def _shown(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in report["results"] if r["status"] != Status.SKIPPED]


def _failures(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in _shown(report) if Status(r["status"]) not in QUIET]


def _note(r: Mapping[str, Any], width: int | None = None) -> str:
    if Status(r["status"]).passed:
        return ""
    note = terminal_safe(headline(r.get("message")))
    return note if width is None or len(note) <= width else note[:width - 3] + "..."


def _numbers(r: Mapping[str, Any]) -> list[str]:
    # A stored report or bundle can hold any string where a number belongs: the callers escape these too.
    return [number(r.get("max_ulp")), number(r.get("max_abs")), number(r.get("max_scaled"))]


def _title(r: Mapping[str, Any]) -> str:
    title = f"{r['status'].upper()} {r['check']} {r['variant']}" + (f" output {r['output']!r}" if r["output"] else "")
    return terminal_safe(title)


# -- text -------------------------------------------------------------------------------------


def text_table(report: Mapping[str, Any]) -> list[str]:
    results = _shown(report)
    if not results:
        return []
    rows = [[*map(terminal_safe, (r["status"], r["check"], r["variant"] or "", r["output"] or "", *_numbers(r))),
             _note(r, 80)] for r in results]
    return [tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True)]


def text_failures(report: Mapping[str, Any]) -> list[str]:
    failures = _failures(report)
    lines: list[str] = []
    for r in failures[:MAX_DETAILS]:
        # The message keeps its own lines; everything else is one line.
        lines += ["", f"--- {_title(r)}", terminal_safe((r.get("message") or "").rstrip(), multiline=True)]
        if r.get("traceback"):
            tail = r["traceback"].rstrip().splitlines()[-TRACEBACK_LINES:]
            lines += ["traceback (last lines; all of it in the JSON report and the bundle):",
                      *[f"  {terminal_safe(line)}" for line in tail]]
        if r.get("env_diff"):
            lines.append("environment differs: " + terminal_safe(env_diff_text(r["env_diff"], limit=12)))
        if r.get("reproduce"):
            lines.append(f"reproduce: {terminal_safe(r['reproduce'])}")
    if len(failures) > MAX_DETAILS:
        lines.append(f"\n({len(failures) - MAX_DETAILS} more failures: use --format json or --report FILE for all)")
    return lines


def known_reasons(report: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The declared known divergences that held, each reason once with how many results it covers:
    the table's note cuts a reason; here it is whole."""
    counts: dict[str, int] = {}
    for r in report["results"]:
        if r["status"] == Status.KNOWN:
            reason = r.get("known_reason") or headline(r.get("message")) or "known"
            counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def text_known(report: Mapping[str, Any]) -> list[str]:
    known = known_reasons(report)
    if not known:
        return []
    return ["", "known divergences (declared, still holding):",
            *[f"  {count:4d}  {terminal_safe(reason)}" for reason, count in known]]


def text_skipped(report: Mapping[str, Any]) -> list[str]:
    skipped = skipped_reasons(report["results"])
    if not skipped:
        return []
    return ["", "skipped:", *[f"  {count:4d}  {terminal_safe(reason)}" for reason, count in skipped]]


# -- markdown ---------------------------------------------------------------------------------


def markdown_environments(report: Mapping[str, Any]) -> list[str]:
    envs = report.get("environments") or {}
    if not envs:
        return []
    rows = [[md_code(str(eid)[:12]), *[md_text(fp.get(k, "")) for k in _ENV_KEYS]] for eid, fp in envs.items()]
    return ["<details><summary>Environments</summary>", "",
            tabulate(rows, headers=["id", *_ENV_KEYS], tablefmt="github", disable_numparse=True), "", "</details>", ""]


def markdown_failures(report: Mapping[str, Any]) -> list[str]:
    failures = _failures(report)
    if not failures:
        return []
    out = ["### Failures", ""]
    for r in failures:
        # A <summary> line is raw HTML (not markdown): its text is HTML-escaped, the backticks are literal.
        title = f"{md_html(r['status'])} · {md_html(r['check'])} · `{md_html(r['variant'])}`"
        title += f" · `{md_html(r['output'])}`" if r["output"] else ""
        out += [f"<details><summary>{title}</summary>", "", *md_fence((r.get("message") or "").rstrip()), ""]
        if r.get("traceback"):
            out += ["<details><summary>Traceback</summary>", "", *md_fence(r["traceback"].rstrip()), "",
                    "</details>", ""]
        if r.get("env_diff"):
            out += [f"Environment differs: {md_text(env_diff_text(r['env_diff'], limit=12))}", ""]
        if r.get("reproduce"):
            out += ["Reproduce:", "", *md_fence(r["reproduce"], "sh"), ""]
        out += ["</details>", ""]
    return out


def markdown_table(report: Mapping[str, Any]) -> list[str]:
    results = _shown(report)
    if not results:
        return []
    rows = [[md_text(r["status"]), md_text(r["check"]), md_code(r["variant"] or ""), md_text(r["output"] or ""),
             *map(md_text, _numbers(r)), md_text(_note(r))] for r in results[:MAX_ROWS]]
    out = ["### Results", "", tabulate(rows, headers=_HEADERS, tablefmt="github", disable_numparse=True), ""]
    if len(results) > MAX_ROWS:
        out += [f"_{len(results) - MAX_ROWS} more results in the JSON report._", ""]
    return out


def markdown_known(report: Mapping[str, Any]) -> list[str]:
    known = known_reasons(report)
    if not known:
        return []
    return ["<details><summary>Known divergences (declared, still holding)</summary>", "",
            tabulate([[n, md_text(reason)] for reason, n in known], headers=["count", "reason"], tablefmt="github"),
            "", "</details>", ""]


def markdown_skipped(report: Mapping[str, Any]) -> list[str]:
    skipped = skipped_reasons(report["results"])
    if not skipped:
        return []
    return ["<details><summary>Skipped</summary>", "",
            tabulate([[n, md_text(reason)] for reason, n in skipped], headers=["count", "reason"], tablefmt="github"),
            "", "</details>", ""]


for _section in (Section("results", text_table), Section("failures", text_failures),
                 Section("known", text_known), Section("skipped", text_skipped), Section("n-way", text_sections)):
    register_section("text", _section)
# N-way sections (profiles, attribution, matrix) come before the failures in markdown: with many
# environments they say in a few lines what hundreds of failure rows repeat.
for _section in (Section("environments", markdown_environments), Section("n-way", markdown_sections),
                 Section("failures", markdown_failures), Section("results", markdown_table),
                 Section("known", markdown_known), Section("skipped", markdown_skipped)):
    register_section("md", _section)
