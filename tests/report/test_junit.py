"""JUnit XML report: valid against the JUnit schema CI reporters follow, counts that agree with the
JSON summary, and a document that parses whatever text the results hold."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detharness import report
from detharness.report import junit
from detharness.results import Result, Status

SCHEMA = xmlschema.XMLSchema(Path(__file__).parent / "data" / "junit.xsd")
HOSTILE = 'a<b>&c"d\'e]]>f \x1b[31mred\x1b[0m nul\x00 \ud800 \ufffe \x85'


def _result(status: str, case: str = "a/b", variant: str = "a/b[t:cpu:float32:eager]", check: str = "backend",
            message: str | None = None, **fields: Any) -> Result:
    return Result(check=check, case=case, variant=variant, status=Status(status),
                  message=message if message is not None else f"{status.upper()} | details\n  more", **fields)


def _all_statuses() -> list[Result]:
    return [
        _result("identical", output="y"),
        _result("close", output="y", variant="a/b[u:cpu:float32:eager]", max_ulp=2, max_abs=1e-7),
        _result("known", output="y", variant="a/b[v:cpu:float32:eager]", known_reason="cuDNN picks another kernel",
                underlying_status=Status.DIVERGED),
        _result("skipped", variant="a/b[t:cuda:float32:eager]", message="no cuda device seen by torch"),
        _result("missing", output="z", message="output 'z' is in the baseline only"),
        _result("diverged", output="y", variant="a/b[w:cpu:float32:eager]", max_ulp=12, max_abs=math.inf,
                max_scaled=float("nan"), tolerance="ulp<=4", env_diff={"torch.version": ["2.12.0", "2.13.0"]},
                reproduce="detharness run -k 'a/b[w:cpu:float32:eager]'"),
        _result("mismatch", output="y", variant="a/b[x:cpu:float32:eager]", message="MISMATCH | shape (2,) vs (3,)"),
        _result("error", check="repeat", message="ValueError: boom\nsecond line",
                traceback='  File "case.py", line 3, in run\nValueError: boom', reproduce="detharness run -k a/b"),
        _result("diverged", check="repeat", case=HOSTILE, variant=HOSTILE, output=HOSTILE, message=HOSTILE,
                reproduce=HOSTILE, env_diff={HOSTILE: [HOSTILE, 1]}),
    ]


def _report(results: list[Result] | None = None, **kw: Any) -> dict[str, Any]:
    built = report.build(_all_statuses() if results is None else results, {"e" * 64: {"torch.version": "2.13.0"}},
                         title=f"detharness run {HOSTILE}", **kw)
    # What --report FILE.json writes and a stored report renders from: non-finite numbers as strings.
    return json.loads(report.render(built, "json"))


def _parse(xml: str) -> ET.Element:
    SCHEMA.validate(xml)
    return ET.fromstring(xml.encode("utf-8"))


def _expected_counts(summary: dict[str, int]) -> dict[str, int]:
    failing = {s.value for s in Status if s.severity > Status.MISSING.severity and s is not Status.ERROR}
    return {"tests": sum(summary.values()), "errors": summary.get("error", 0),
            "failures": sum(n for s, n in summary.items() if s in failing),
            "skipped": sum(summary.get(s, 0) for s in ("skipped", "known", "missing"))}


def test_counts_match_the_json_summary_and_the_document_validates() -> None:
    built = _report(seconds=3.5)
    assert "inf" in [r["max_abs"] for r in built["results"]]  # non-finite numbers come as strings
    root = _parse(junit.render(built))
    assert root.tag == "testsuites" and root.get("name", "").startswith("detharness run a<b>&c\"d'e]]>f \\x1b[31m")
    assert root.get("time") == "3.500"
    expected = _expected_counts(built["summary"])
    suites = root.findall("testsuite")
    totals = {key: sum(int(s.get(key, "0")) for s in suites) for key in expected}
    assert totals == expected == {"tests": 9, "errors": 1, "failures": 3, "skipped": 3}
    assert {key: int(root.get(key, "-1")) for key in ("tests", "failures", "errors")} == {
        key: expected[key] for key in ("tests", "failures", "errors")}
    for suite in suites:  # each suite's counts are those of its own testcases
        cases = suite.findall("testcase")
        assert int(suite.get("tests", "-1")) == len(cases)
        for kind, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            assert int(suite.get(attr, "-1")) == sum(1 for c in cases if c.find(kind) is not None)


def test_mapping_of_statuses_to_elements() -> None:
    root = _parse(junit.render(_report()))
    assert [s.get("name") for s in root.findall("testsuite")] == ["detharness.backend", "detharness.repeat"]
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert len(cases) == 9  # classname + name unique

    def case(check: str, impl: str, output: str | None = "y") -> ET.Element:
        return cases[("a/b", f"{check} a/b[{impl}:cpu:float32:eager]" + (f" [{output}]" if output else ""))]

    assert list(case("backend", "t")) == []
    close = case("backend", "u")
    assert [e.tag for e in close] == ["system-out"] and close.findtext("system-out") == "close: CLOSE | details\n"
    known = case("backend", "v").find("skipped")
    assert known is not None and known.get("message") == "known divergence: cuDNN picks another kernel"
    skipped = cases[("a/b", "backend a/b[t:cuda:float32:eager]")].find("skipped")
    assert skipped is not None and skipped.get("message") == "no cuda device seen by torch"
    missing = case("backend", "t", "z").find("skipped")
    assert missing is not None and missing.get("message") == "missing: output 'z' is in the baseline only"

    diverged = case("backend", "w").find("failure")
    assert diverged is not None and diverged.get("type") == "diverged" and diverged.get("message") == "DIVERGED | details"
    assert diverged.text == ("DIVERGED | details\n  more\nmax ulp: 12; max abs: inf; max scaled: nan; tolerance: ulp<=4\n"
                             "environment differs:\n  torch.version: 2.12.0 -> 2.13.0\n"
                             "reproduce: detharness run -k 'a/b[w:cpu:float32:eager]'\n")
    mismatch = case("backend", "x").find("failure")
    assert mismatch is not None and (mismatch.get("type"), mismatch.get("message")) == ("mismatch", "MISMATCH | shape (2,) vs (3,)")

    error = cases[("a/b", "repeat a/b[t:cpu:float32:eager]")].find("error")
    assert error is not None and (error.get("type"), error.get("message")) == ("error", "ValueError: boom")
    assert error.text is not None and error.text.startswith("ValueError: boom\nsecond line\ntraceback:\n")
    assert error.text.endswith('ValueError: boom\nreproduce: detharness run -k a/b\n')


def test_hostile_text_is_escaped_and_forbidden_characters_are_shown_visibly() -> None:
    xml = junit.render(_report())
    assert "\x1b" not in xml and "\x00" not in xml and "\x85" not in xml and "]]>" not in xml
    root = _parse(xml)
    hostile = [c for c in root.iter("testcase") if c.get("classname", "").startswith("a<b>")]
    assert len(hostile) == 1
    shown = 'a<b>&c"d\'e]]>f \\x1b[31mred\\x1b[0m nul\\x00 \\ud800 \\ufffe \\x85'
    assert hostile[0].get("classname") == shown
    assert hostile[0].get("name") == f"repeat {shown} [{shown}]"
    failure = hostile[0].find("failure")
    assert failure is not None and failure.get("message") == shown
    assert failure.text is not None and failure.text.startswith(f"{shown}\n") and f"reproduce: {shown}" in failure.text


def test_output_is_deterministic_and_independent_of_result_order() -> None:
    built = _report()
    again = _report(list(reversed(_all_statuses())))
    assert junit.render(built) == junit.render(built) == junit.render(again)
    xml = junit.render(built)
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites ') and xml.endswith("</testsuites>\n")
    assert "timestamp" not in xml and "time=" not in xml  # no clock in the document without seconds


def test_duplicate_names_in_a_suite_are_numbered() -> None:
    same = [_result("diverged", output="y"), _result("identical", output="y"), _result("identical", case="c/d", output="y")]
    root = _parse(junit.render(_report(same)))
    names = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    base = "backend a/b[t:cpu:float32:eager] [y]"
    assert sorted(names) == [("a/b", base), ("a/b", f"{base} #2"), ("c/d", base)]


def test_fail_on_decides_what_fails() -> None:
    built = _report()
    root = _parse(junit.render(built, fail_on=["error", "missing"]))
    kinds = [e.tag for c in root.iter("testcase") for e in c if e.tag != "system-out"]
    assert sorted(kinds) == ["error", "failure", "skipped", "skipped"]
    assert (root.get("failures"), root.get("errors")) == ("1", "1")
    tolerated = [c for c in root.iter("testcase") if c.get("name", "").startswith("backend a/b[w:")]
    out = tolerated[0].findtext("system-out") or ""
    assert tolerated[0].find("failure") is None and out.startswith("diverged (not a failure under this --fail-on)\n")
    assert "max ulp: 12" in out
    assert junit.render(built, fail_on=[Status.DIVERGED, Status.MISMATCH, Status.ERROR]) == junit.render(built)


def test_an_empty_report_and_an_unknown_status_still_validate() -> None:
    empty = _parse(junit.render(report.build([], {}, title="nothing")))
    assert (empty.get("tests"), empty.findall("testsuite")) == ("0", [])
    built = _report([_result("identical")])
    built["results"][0]["status"] = "flipped-by-a-newer-writer"
    root = _parse(junit.render(built))
    failure = next(root.iter("failure"))
    assert failure.get("type") == "flipped-by-a-newer-writer" and root.get("failures") == "1"


@pytest.mark.parametrize("broken", [
    '<testsuites><testsuite name="s" tests="1" failures="0" errors="0"><testcase classname="c"/></testsuite></testsuites>',
    '<testsuites><testsuite name="s" failures="0" errors="0"/></testsuites>',
    '<testsuites><testsuite name="s" tests="x" failures="0" errors="0"/></testsuites>',
    '<testsuites skipped="1"/>',
    '<testsuites><testsuite name="s" tests="1" failures="0" errors="0"><testcase name="n"><passed/></testcase>'
    '</testsuite></testsuites>',
])
def test_the_schema_rejects_broken_documents(broken: str) -> None:
    """The validation above cannot pass vacuously: no name, no tests count, a count that is not a
    number, an attribute junit-10.xsd lacks, an element it does not know."""
    ET.fromstring(broken)
    assert not SCHEMA.is_valid(broken)
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        SCHEMA.validate(broken)


# Any character, and often one XML 1.0 cannot hold or one that is markup (st.text has no lone surrogates).
ANY_TEXT = st.one_of(st.characters(), st.sampled_from(
    ["\x00", "\x1b", "\x0b", "\x7f", "\x85", "\x9b", "\ud800", "\udfff", "\ufffe", "\uffff", "\u2028", "\r",
     "<", ">", "]", "&", '"', "\U0001f600"]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.text(ANY_TEXT, max_size=40), message=st.text(ANY_TEXT, max_size=80),
       output=st.one_of(st.none(), st.text(ANY_TEXT, max_size=20)),
       status=st.sampled_from(list(Status)))
def test_any_text_gives_a_document_that_parses_and_validates(case: str, message: str, output: str | None,
                                                             status: Status) -> None:
    result = _result(status.value, case=case, variant=case, output=output, message=message, reproduce=message,
                     known_reason=message or None, traceback=message or None)
    built = report.build([result, _result("identical")], {}, title=message)
    root = _parse(junit.render(built))
    assert int(root.get("tests", "-1")) == 2
    assert sum(len(s.findall("testcase")) for s in root.findall("testsuite")) == 2
