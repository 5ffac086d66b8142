"""The built-in sections of the text and markdown reports (see :func:`detharness.report.register_section`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from detharness.report import Section, register_section
from detharness.report._escape import md_code, md_fence, md_html, md_text, terminal_safe
from detharness.report._format import (
    accuracy_line,
    decision_line,
    env_diff_text,
    headline,
    notable_lines,
    number,
    skipped_reasons,
)
from detharness.report._matrix import markdown_sections, text_sections
from detharness.results import QUIET, Status

#: Failures shown in full in the verbose text report; the rest are counted.
MAX_DETAILS = 10
#: Failures with one line each in the brief text report and the markdown summary.
MAX_BRIEF = 30
#: Failures shown in full in the markdown report (each folded); the rest are listed in the cases.
MAX_MD_DETAILS = 100
#: Skip reasons in the brief text report.
MAX_SKIP_REASONS = 5
#: Bitwise identical results listed per case in the markdown and HTML reports; the rest are counted
#: (a matrix holds thousands; the JSON report lists them all).
IDENTICAL_ROWS = 12
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
    return ["", tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True)]


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


def _where(r: Mapping[str, Any]) -> str:
    return f"{r['check']} {r['variant']}" + (f" {r['output']!r}" if r.get("output") else "") + between(r)


def between(r: Mapping[str, Any]) -> str:
    """`` (x86 vs arm-n1)``: which two environments an N-way result compares; empty for one run's results.
    Without it, one variant failing in two environments reads as the same line twice."""
    base, cand = r.get("baseline_label"), r.get("candidate_label")
    return f" ({base} vs {cand})" if base and cand else ""


def text_failures_brief(report: Mapping[str, Any]) -> list[str]:
    failures = _failures(report)
    if not failures:
        return []
    lines = ["", f"failures ({len(failures)}):"]
    lines += [f"  {terminal_safe(r['status'].upper()):<9} {terminal_safe(_where(r))}: {_note(r, 100)}"
              for r in failures[:MAX_BRIEF]]
    if len(failures) > MAX_BRIEF:
        lines.append(f"  ... {len(failures) - MAX_BRIEF} more (-v, --format json or --report FILE.html for all)")
    return lines


def environment_labels(report: Mapping[str, Any]) -> dict[str, str]:
    """Each environment id's label in an N-way report (a profile's or bundle's name); where several
    labels share one environment (profiles that changed nothing that is recorded), the first."""
    labels: dict[str, str] = {}
    for label, eid in ((report.get("matrix") or {}).get("ids") or {}).items():
        labels.setdefault(eid, label)
    return labels


def emulated_environments(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, what is emulated) for each environment that ran under an emulator (``machine.emulated``):
    the label a matrix gave it, else its id. Said in every report so no one reads it as silicon."""
    envs: Mapping[str, Mapping[str, Any]] = report.get("environments") or {}
    labels = environment_labels(report)
    return [(labels.get(eid) or str(eid)[:12], str(fp["machine.emulated"]))
            for eid, fp in envs.items() if fp.get("machine.emulated")]


def text_emulated(report: Mapping[str, Any]) -> list[str]:
    emulated = emulated_environments(report)
    if not emulated:
        return []
    return ["", "emulated, not silicon (QEMU user mode: real aarch64 builds and kernels, not real hardware):",
            *[f"  {terminal_safe(label)}: {terminal_safe(what)}" for label, what in emulated]]


def markdown_emulated(report: Mapping[str, Any]) -> list[str]:
    emulated = emulated_environments(report)
    if not emulated:
        return []
    named = "; ".join(f"{md_code(label)} ({md_text(what)})" for label, what in emulated)
    return [f"Emulated, not silicon: {named}. QEMU user mode runs the real aarch64 builds and their kernels, "
            "not real hardware.", ""]


def text_skipped_brief(report: Mapping[str, Any]) -> list[str]:
    skipped = skipped_reasons(report["results"])
    if not skipped:
        return []
    lines = ["", f"could not run here ({sum(n for _, n in skipped)} skipped):"]
    lines += [f"  {count:4d}  {terminal_safe(reason)}" for reason, count in skipped[:MAX_SKIP_REASONS]]
    if len(skipped) > MAX_SKIP_REASONS:
        lines.append(f"  ... {len(skipped) - MAX_SKIP_REASONS} more reasons (-v)")
    return lines


def _short(variant: str | None) -> str:
    text = variant or ""
    return text[text.index("["):] if "[" in text else text


def findings(report: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """The cases whose measures matter (a decision flips, a candidate is further from float64 than
    rounding explains, a feature's PSI reads 0.1 or more), each with its sentences: the flips of
    its variants said once, the others one per result. The rest is in -v, JSON and HTML."""
    cases: dict[str, list[tuple[Mapping[str, Any], list[str]]]] = {}
    for r in report["results"]:
        if lines := notable_lines(r):
            cases.setdefault(r.get("case") or "", []).append((r, lines))
    out = []
    for case_id, items in cases.items():
        flips = [r for r, _ in items if isinstance(r.get("decision"), Mapping) and r["decision"].get("flips")]
        sentences = []
        if flips:
            most = max(flips, key=lambda r: r["decision"]["flips"])
            near = all(r["decision"].get("near_ties") == r["decision"]["flips"] for r in flips)
            over = sum(r["status"] == Status.FLIPPED for r in flips)
            sentences.append(f"{most['decision']['rule']} flips up to {most['decision']['flips']} of "
                             f"{most['decision']['total']} decisions in {len(flips)} variant"
                             f"{'s' if len(flips) != 1 else ''} ({'all near ties' if near else 'not all near ties'}; "
                             f"{f'{over} over the budget' if over else 'within the budget'})")
        for r, lines in items:
            said, decided = accuracy_line(r), decision_line(r)  # the accuracy names the variant itself
            for line in lines:
                if line == decided:
                    continue  # the flips of the case's variants are said once, above
                where = r.get("output") or "" if line == said else f"{_short(r.get('variant'))} {r.get('output') or ''}"
                sentences.append(f"{where.strip()}: {line}" if where.strip() else line)
        out.append((case_id, sentences))
    return out


def text_findings(report: Mapping[str, Any]) -> list[str]:
    found = findings(report)
    if not found:
        return []
    lines = ["", f"does it matter ({len(found)} case{'s' if len(found) != 1 else ''}):"]
    for case_id, sentences in found[:MAX_BRIEF]:
        lines.append(f"  {terminal_safe(case_id)}: {terminal_safe('; '.join(sentences))}")
    if len(found) > MAX_BRIEF:
        lines.append(f"  ... {len(found) - MAX_BRIEF} more (--format json or --report FILE.html for all)")
    return lines


def divergences(report: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], str]]:
    """Results of ``bisect`` with the first layer that differs, a line each (one per variant: every
    output of a variant shares its layers)."""
    from detharness.bisect import line

    bisected: Mapping[str, Any] = report.get("bisected") or {}
    seen: set[str] = set()
    out = []
    for r in report["results"]:
        fd = r.get("first_divergence")
        if r["variant"] in seen or not (isinstance(fd, Mapping) or r["variant"] in bisected):
            continue
        seen.add(r["variant"])
        count = fd.get("layers_compared") if isinstance(fd, Mapping) else bisected.get(r["variant"])
        out.append((r, line(fd if isinstance(fd, Mapping) else None,
                            layers_compared=count if isinstance(count, int) else None)))
    return out


def text_divergences(report: Mapping[str, Any]) -> list[str]:
    found = divergences(report)
    if not found:
        return []
    return ["", "where it starts:", *[f"  {terminal_safe(r['variant'])}: {terminal_safe(text)}" for r, text in found]]


def markdown_divergences(report: Mapping[str, Any]) -> list[str]:
    found = divergences(report)
    if not found:
        return []
    return ["### Where it starts", "", *[f"- {md_code(r['variant'])}: {md_text(text)}" for r, text in found], ""]


def stale_reasons(report: Mapping[str, Any]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for r in report["results"]:
        if r.get("stale_known"):
            counts[r["stale_known"]] = counts.get(r["stale_known"], 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def text_stale(report: Mapping[str, Any]) -> list[str]:
    stale = stale_reasons(report)
    if not stale:
        return []
    return ["", "stale known divergences (the outputs agree now: remove these declarations):",
            *[f"  {count:4d}  {terminal_safe(reason)}" for reason, count in stale]]


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
    return ["", "could not run here (skipped):", *[f"  {count:4d}  {terminal_safe(reason)}" for reason, count in skipped]]


# -- markdown ---------------------------------------------------------------------------------


def markdown_summary(report: Mapping[str, Any]) -> list[str]:
    """What could not run here in one line, and one line per failure: the answer before the detail."""
    out: list[str] = []
    skipped = skipped_reasons(report["results"])
    if skipped:
        reasons = "; ".join(f"{n} {md_text(reason)}" for reason, n in skipped[:MAX_SKIP_REASONS])
        more = f"; {len(skipped) - MAX_SKIP_REASONS} more reasons below" if len(skipped) > MAX_SKIP_REASONS else ""
        out += [f"Could not run here: {reasons}{more}.", ""]
    failures = _failures(report)
    for r in failures[:MAX_BRIEF]:
        out.append(f"- **{md_text(r['status'])}** {md_code(_where(r))}: {md_text(_note(r, 160))}")
    if len(failures) > MAX_BRIEF:
        out.append(f"- _{len(failures) - MAX_BRIEF} more failures below._")
    if failures:
        out.append("")
    return out


def case_groups(report: Mapping[str, Any]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """The results that ran, grouped by case: cases with a failure first (worst first), then by id."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in _shown(report):
        groups.setdefault(r.get("case") or "(no case)", []).append(r)

    def worst(rs: list[Mapping[str, Any]]) -> int:
        return max(Status(r["status"]).severity for r in rs)

    return sorted(groups.items(), key=lambda kv: (-worst(kv[1]), kv[0]))


def markdown_case_blocks(report: Mapping[str, Any]) -> list[list[str]]:
    """One folded block per case (open where something failed): its results in a table."""
    blocks = []
    for case_id, results in case_groups(report):
        counts: dict[str, int] = {}
        for r in results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        tally = ", ".join(f"{n} {md_html(st)}" for st, n in sorted(counts.items(), key=lambda kv: -Status(kv[0]).severity))
        opened = " open" if any(Status(r["status"]) not in QUIET for r in results) else ""
        identical = [r for r in results if r["status"] == Status.IDENTICAL]
        listed = [r for r in results if r["status"] != Status.IDENTICAL] + identical[:IDENTICAL_ROWS]
        rows = [[md_text(r["status"]), md_text(r["check"]), md_code(r["variant"] or ""), md_text(r["output"] or ""),
                 *map(md_text, _numbers(r)), md_text(_note(r))] for r in listed]
        more = len(identical) - IDENTICAL_ROWS
        blocks.append([f"<details{opened}><summary><code>{md_html(case_id)}</code>: {tally}</summary>", "",
                       tabulate(rows, headers=_HEADERS, tablefmt="github", disable_numparse=True), "",
                       *([f"_{more} more bitwise identical results (listed in the JSON report)._", ""] if more > 0 else []),
                       "</details>", ""])
    return blocks


def markdown_cases(report: Mapping[str, Any]) -> list[str]:
    blocks = markdown_case_blocks(report)
    if not blocks:
        return []
    return ["### Results by case", "", *[line for block in blocks for line in block]]


def markdown_findings(report: Mapping[str, Any]) -> list[str]:
    found = findings(report)
    if not found:
        return []
    out = ["### Does it matter", ""]
    out += [f"- {md_code(case_id)}: {md_text('; '.join(sentences))}" for case_id, sentences in found[:MAX_BRIEF]]
    if len(found) > MAX_BRIEF:
        out.append(f"- _{len(found) - MAX_BRIEF} more in the JSON and HTML reports._")
    return [*out, ""]


def markdown_stale(report: Mapping[str, Any]) -> list[str]:
    stale = stale_reasons(report)
    if not stale:
        return []
    return ["### Stale known divergences", "", "_The outputs agree now: remove these declarations._", "",
            tabulate([[n, md_text(reason)] for reason, n in stale], headers=["results", "declaration"],
                     tablefmt="github"), ""]


def markdown_environments(report: Mapping[str, Any]) -> list[str]:
    envs = report.get("environments") or {}
    if not envs:
        return []
    keys = list(_ENV_KEYS)
    if any(fp.get("machine.emulated") for fp in envs.values()):
        keys.insert(keys.index("machine.arch") + 1, "machine.emulated")
    rows = [[md_code(str(eid)[:12]), *[md_text(fp.get(k) or "") for k in keys]] for eid, fp in envs.items()]
    return ["<details><summary>Environments</summary>", "",
            tabulate(rows, headers=["id", *keys], tablefmt="github", disable_numparse=True), "", "</details>", ""]


def markdown_failures(report: Mapping[str, Any]) -> list[str]:
    failures = _failures(report)
    if not failures:
        return []
    out = ["### Failures", ""]
    for r in failures[:MAX_MD_DETAILS]:
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
    if len(failures) > MAX_MD_DETAILS:
        out += [f"_{len(failures) - MAX_MD_DETAILS} more failures: their one-line reasons are in the results by case, "
                "everything in the JSON and HTML reports._", ""]
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


# Text: the brief report (the default) is the summary line (text.render), skip reasons, one line per
# failure, known divergences and the N-way sections; -v adds every result and each failure in full.
for _section in (Section("emulated", text_emulated), Section("skipped-brief", text_skipped_brief, "brief"),
                 Section("failures-brief", text_failures_brief, "brief"),
                 Section("findings", text_findings), Section("divergences", text_divergences),
                 Section("stale", text_stale),
                 Section("results", text_table, "verbose"), Section("failures", text_failures, "verbose"),
                 Section("known", text_known), Section("skipped", text_skipped, "verbose"),
                 Section("n-way", text_sections)):
    register_section("text", _section)
# Markdown: the summary, then the N-way sections (profiles, attribution, matrix: with many
# environments they say in a few lines what hundreds of failure rows repeat), the failures in full,
# every result grouped by case (passing cases folded), and the reference sections last.
for _section in (Section("emulated", markdown_emulated), Section("summary", markdown_summary),
                 Section("findings", markdown_findings),
                 Section("divergences", markdown_divergences),
                 Section("stale", markdown_stale), Section("n-way", markdown_sections),
                 Section("failures", markdown_failures), Section("cases", markdown_cases),
                 Section("known", markdown_known), Section("skipped", markdown_skipped),
                 Section("environments", markdown_environments)):
    register_section("md", _section)
