"""JUnit XML report: one testcase per result, one testsuite per check, for CI test reporters.

The shape is that of Jenkins' ``junit-10.xsd`` (what GitLab, Jenkins, Buildkite and GitHub test
reporters read). A status that fails the run is a ``<failure>`` (``<error>`` for ``error``); ``skipped``,
``known`` and ``missing`` are ``<skipped>`` with their reason; ``identical`` and ``close`` pass. Text from
results is made XML 1.0-safe: characters XML cannot hold are written as visible escapes (``\\x1b``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

from detharness.report._format import headline, number
from detharness.results import Status

__all__ = ["render"]

#: Characters XML 1.0 forbids (controls other than tab, newline and carriage return, lone surrogates,
#: U+FFFE, U+FFFF) and the ones it discourages (DEL and the C1 controls): written as ``\xNN``/``\uNNNN``.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_QUIET_SKIPS = (Status.SKIPPED, Status.KNOWN, Status.MISSING)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def xml_safe(text: object) -> str:
    """``text`` as a string XML 1.0 can hold, unsafe characters shown as escapes; ``""`` for ``None``."""
    return "" if text is None else _UNSAFE.sub(_escape, str(text))


def default_failing() -> frozenset[Status]:
    """The statuses that are failures unless ``fail_on`` says otherwise: every one worse than ``missing``."""
    return frozenset(s for s in Status if s.severity > Status.MISSING.severity)


def _status(value: Any) -> Status | None:
    """The result's status; ``None`` for a name this version does not know (a newer writer's)."""
    try:
        return Status(value)
    except ValueError:
        return None


def _env_lines(diff: Any) -> list[str]:
    if not isinstance(diff, Mapping) or not diff:
        return []
    lines = ["environment differs:"]
    for key, value in diff.items():
        if isinstance(value, (list, tuple)) and len(value) == 2:
            lines.append(f"  {key}: {value[0]} -> {value[1]}")
        else:
            lines.append(f"  {key}: {value}")
    return lines


def _details(r: Mapping[str, Any]) -> str:
    """A failure's text: its message, the figures, the environment diff, the reproduce command."""
    lines = [xml_safe(r.get("message")).rstrip()]
    figures = [f"{label}: {number(r.get(key))}" for label, key in
               (("max ulp", "max_ulp"), ("max abs", "max_abs"), ("max scaled", "max_scaled"),
                ("tolerance", "tolerance")) if r.get(key) is not None]
    if figures:
        lines.append("; ".join(figures))
    lines += _env_lines(r.get("env_diff"))
    if r.get("traceback"):
        lines += ["traceback:", xml_safe(r["traceback"]).rstrip()]
    if r.get("reproduce"):
        lines.append(f"reproduce: {r['reproduce']}")
    return "\n".join(line for line in lines if line) + "\n"


def _skip_reason(status: Status, r: Mapping[str, Any]) -> str:
    line = headline(xml_safe(r.get("message")))
    if status is Status.KNOWN:
        return f"known divergence: {r.get('known_reason') or line or 'declared known'}"
    if status is Status.MISSING:
        return f"missing: {line or 'in one side only'}"
    return line or "skipped"


def _testcase(suite: ET.Element, r: Mapping[str, Any], name: str, failing: frozenset[Status]) -> str:
    """Append ``r``'s testcase to ``suite``; return what it counts as (``failure``, ``error``,
    ``skipped`` or ``passed``)."""
    case = ET.SubElement(suite, "testcase", {"name": xml_safe(name), "classname": xml_safe(r.get("case") or "")})
    status = _status(r.get("status"))
    label = str(r.get("status"))
    message = xml_safe(r.get("message"))  # before headline(): NEL and \x1c-\x1e split lines in Python
    if status is None or status in failing:
        kind = "error" if status is Status.ERROR else "failure"
        child = ET.SubElement(case, kind, {"message": xml_safe(headline(message) or label), "type": xml_safe(label)})
        child.text = xml_safe(_details(r))
        return kind
    if status in _QUIET_SKIPS:
        child = ET.SubElement(case, "skipped", {"message": xml_safe(_skip_reason(status, r))})
        if message.strip() and message.strip() != headline(message):
            child.text = xml_safe(message.rstrip() + "\n")
        return "skipped"
    if status is not Status.IDENTICAL:
        # close, or a status the caller's fail_on tolerates: a pass that still says what it saw.
        out = ET.SubElement(case, "system-out")
        if status is Status.CLOSE:
            out.text = xml_safe(f"close: {headline(message)}\n")
        else:
            out.text = xml_safe(f"{label} (not a failure under this --fail-on)\n{_details(r)}")
    return "passed"


def _name(r: Mapping[str, Any]) -> str:
    name = " ".join(str(part) for part in (r.get("check"), r.get("variant")) if part)
    return name + (f" [{r['output']}]" if r.get("output") else "")


def _counts(element: ET.Element, counts: Mapping[str, int]) -> None:
    for key in ("tests", "failures", "errors", "skipped"):
        element.set(key, str(counts.get(key, 0)))


def render(report: Mapping[str, Any], fail_on: Iterable[Status | str] | None = None) -> str:
    """The report as a JUnit XML document (UTF-8 declared); the same report gives the same bytes.

    ``fail_on``: the statuses that are failures (``error`` is an ``<error>``); by default every status
    worse than ``missing``. A status outside it passes, with what it saw in ``<system-out>``."""
    failing = default_failing() if fail_on is None else frozenset(Status(s) for s in fail_on)
    by_check: dict[str, list[Mapping[str, Any]]] = {}
    for r in report.get("results") or []:
        by_check.setdefault(str(r.get("check") or ""), []).append(r)

    root = ET.Element("testsuites", {"name": xml_safe(report.get("title") or "detharness")})
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for check in sorted(by_check):
        suite = ET.Element("testsuite", {"name": xml_safe(f"detharness.{check}" if check else "detharness")})
        # A stable order that does not depend on the statuses (the report lists failures first).
        rows = sorted(by_check[check], key=lambda r: (str(r.get("case") or ""), str(r.get("variant") or ""),
                                                        str(r.get("output") or "")))
        counts = {"tests": len(rows), "failures": 0, "errors": 0, "skipped": 0}
        seen: dict[tuple[str, str], int] = {}
        for r in rows:
            name = _name(r)
            pair = (str(r.get("case") or ""), name)
            seen[pair] = seen.get(pair, 0) + 1
            if seen[pair] > 1:  # reporters key testcases by classname and name: keep the pair unique
                name = f"{name} #{seen[pair]}"
            kind = _testcase(suite, r, name, failing)
            if kind != "passed":
                counts[kind + ("" if kind == "skipped" else "s")] += 1
        _counts(suite, counts)
        if report.get("timestamp"):
            suite.set("timestamp", xml_safe(report["timestamp"]))
        root.append(suite)
        for key in total:
            total[key] += counts[key]
    # junit-10.xsd's <testsuites> has tests, failures and errors but no skipped: each suite has its own.
    for key in ("tests", "failures", "errors"):
        root.set(key, str(total[key]))
    seconds = report.get("seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < float("inf"):
        root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
