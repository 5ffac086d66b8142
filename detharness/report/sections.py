"""The built-in sections of the text and markdown reports (see :func:`detharness.report.register_section`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from detharness.report import Section, register_section
from detharness.report._format import env_diff_text, headline, number, skipped_reasons
from detharness.report._format import markdown_cell as _cell
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
    note = headline(r.get("message"))
    return note if width is None or len(note) <= width else note[:width - 3] + "..."


def _title(r: Mapping[str, Any]) -> str:
    return f"{r['status'].upper()} {r['check']} {r['variant']}" + (f" output {r['output']!r}" if r["output"] else "")


# -- text -------------------------------------------------------------------------------------


def text_table(report: Mapping[str, Any]) -> list[str]:
    results = _shown(report)
    if not results:
        return []
    rows = [[r["status"], r["check"], r["variant"], r["output"] or "", number(r.get("max_ulp")),
             number(r.get("max_abs")), number(r.get("max_scaled")), _note(r, 80)] for r in results]
    return [tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True)]


def text_failures(report: Mapping[str, Any]) -> list[str]:
    failures = _failures(report)
    lines: list[str] = []
    for r in failures[:MAX_DETAILS]:
        lines += ["", f"--- {_title(r)}", (r.get("message") or "").rstrip()]
        if r.get("traceback"):
            tail = r["traceback"].rstrip().splitlines()[-TRACEBACK_LINES:]
            lines += ["traceback (last lines; all of it in the JSON report and the bundle):",
                      *[f"  {line}" for line in tail]]
        if r.get("env_diff"):
            lines.append("environment differs: " + env_diff_text(r["env_diff"], limit=12))
        if r.get("reproduce"):
            lines.append(f"reproduce: {r['reproduce']}")
    if len(failures) > MAX_DETAILS:
        lines.append(f"\n({len(failures) - MAX_DETAILS} more failures: use --format json or --report FILE for all)")
    return lines


def text_skipped(report: Mapping[str, Any]) -> list[str]:
    skipped = skipped_reasons(report["results"])
    if not skipped:
        return []
    return ["", "skipped:", *[f"  {count:4d}  {reason}" for reason, count in skipped]]


# -- markdown ---------------------------------------------------------------------------------


def markdown_environments(report: Mapping[str, Any]) -> list[str]:
    envs = report.get("environments") or {}
    if not envs:
        return []
    rows = [[f"`{eid[:12]}`", *[_cell(str(fp.get(k, ""))) for k in _ENV_KEYS]] for eid, fp in envs.items()]
    return ["<details><summary>Environments</summary>", "",
            tabulate(rows, headers=["id", *_ENV_KEYS], tablefmt="github"), "", "</details>", ""]


def markdown_failures(report: Mapping[str, Any]) -> list[str]:
    failures = _failures(report)
    if not failures:
        return []
    out = ["### Failures", ""]
    for r in failures:
        title = f"{r['status']} · {r['check']} · `{r['variant']}`" + (f" · `{r['output']}`" if r["output"] else "")
        out += [f"<details><summary>{title}</summary>", "", "```", (r.get("message") or "").rstrip(), "```", ""]
        if r.get("traceback"):
            out += ["<details><summary>Traceback</summary>", "", "```", r["traceback"].rstrip(), "```", "",
                    "</details>", ""]
        if r.get("env_diff"):
            out += [f"Environment differs: {_cell(env_diff_text(r['env_diff'], limit=12))}", ""]
        if r.get("reproduce"):
            out += ["Reproduce:", "", "```sh", r["reproduce"], "```", ""]
        out += ["</details>", ""]
    return out


def markdown_table(report: Mapping[str, Any]) -> list[str]:
    results = _shown(report)
    if not results:
        return []
    rows = [[r["status"], r["check"], f"`{_cell(r['variant'] or '')}`", r["output"] or "", number(r.get("max_ulp")),
             number(r.get("max_abs")), number(r.get("max_scaled")), _cell(_note(r))] for r in results[:MAX_ROWS]]
    out = ["### Results", "", tabulate(rows, headers=_HEADERS, tablefmt="github", disable_numparse=True), ""]
    if len(results) > MAX_ROWS:
        out += [f"_{len(results) - MAX_ROWS} more results in the JSON report._", ""]
    return out


def markdown_skipped(report: Mapping[str, Any]) -> list[str]:
    skipped = skipped_reasons(report["results"])
    if not skipped:
        return []
    return ["<details><summary>Skipped</summary>", "",
            tabulate([[n, _cell(reason)] for reason, n in skipped], headers=["count", "reason"], tablefmt="github"),
            "", "</details>", ""]


for _section in (Section("results", text_table), Section("failures", text_failures),
                 Section("skipped", text_skipped), Section("n-way", text_sections)):
    register_section("text", _section)
# N-way sections (profiles, attribution, matrix) come before the failures in markdown: with many
# environments they say in a few lines what hundreds of failure rows repeat.
for _section in (Section("environments", markdown_environments), Section("n-way", markdown_sections),
                 Section("failures", markdown_failures), Section("results", markdown_table),
                 Section("skipped", markdown_skipped)):
    register_section("md", _section)
