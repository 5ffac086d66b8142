"""Reports: one dict, three renderings that agree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detharness import report
from detharness.checks import new_result
from detharness.errors import UsageError
from detharness.report import Section, register_section
from detharness.results import FIELDS, Result


def _results() -> list[Result]:
    ok = new_result("backend", "a/b", "a/b[t:cpu:float32:eager]", "identical", "same bytes", output="y")
    bad = new_result("backend", "a/b", "a/b[u:cpu:float32:eager]", "diverged", "DIVERGED | Output: 'y' | big\n  details",
                     output="y", reproduce="detharness run -k 'a/b[u:cpu:float32:eager]'", max_ulp=12,
                     max_abs=math.inf, max_scaled=float("nan"))
    skip = new_result("backend", "a/b", "a/b[t:cuda:float32:eager]", "skipped", "no cuda device seen by torch")
    return [ok, skip, bad]


def _report() -> dict:
    return report.build(_results(), {"e" * 64: {"torch.version": "2.13.0"}}, title="detharness run", seconds=1.25)


def test_failures_come_first_and_summary_counts_by_status() -> None:
    built = _report()
    assert [r["status"] for r in built["results"]] == ["diverged", "skipped", "identical"]
    assert built["summary"] == {"diverged": 1, "skipped": 1, "identical": 1}


def test_text_report_leads_with_the_summary_then_one_line_per_failure() -> None:
    text = report.render(_report(), "text")
    lines = text.rstrip("\n").splitlines()
    # Verdicts on what ran here first; what could not run here after them, by reason.
    assert lines[0] == "detharness run: 1 diverged, 1 identical; 1 skipped in 1.2s"
    assert lines[2:4] == ["could not run here (1 skipped):", "     1  no cuda device seen by torch"]
    assert "  DIVERGED  backend a/b[u:cpu:float32:eager] 'y': DIVERGED | Output: 'y' | big" in lines
    assert "status" not in text.split() and "reproduce:" not in text  # the table and details are -v
    assert lines[-1].startswith("every result: -v")


def test_verbose_text_report_has_the_table_and_each_failure_in_full() -> None:
    text = report.render(_report(), "text", verbose=True)
    lines = text.rstrip("\n").splitlines()
    assert lines[0] == "detharness run: 1 diverged, 1 identical; 1 skipped in 1.2s"
    assert lines[1] == "" and lines[2].split()[:3] == ["status", "check", "variant"]
    assert "--- DIVERGED backend a/b[u:cpu:float32:eager] output 'y'" in text
    assert "reproduce: detharness run -k 'a/b[u:cpu:float32:eager]'" in text
    assert "     1  no cuda device seen by torch" in text


def test_json_report_writes_non_finite_numbers_as_strings() -> None:
    data = json.loads(report.render(_report(), "json"))
    assert data["schema"] == 2
    bad = data["results"][0]
    assert list(bad) == list(FIELDS)  # every field in every result, null where it does not apply
    assert bad["traceback"] is None and bad["accuracy"] is None
    assert bad["max_abs"] == "inf" and bad["max_scaled"] == "nan"
    assert data["environments"] == {"e" * 64: {"torch.version": "2.13.0"}}


def test_markdown_report_has_failure_details_and_skipped_reasons() -> None:
    md = report.render(_report(), "md")
    assert md.startswith("## detharness run\n\n**1 diverged, 1 identical; 1 skipped in 1.2s**\n\n"
                         "Could not run here: 1 no cuda device seen by torch.\n\n"
                         "- **diverged** `backend a/b[u:cpu:float32:eager] 'y'`: DIVERGED \\| Output: 'y' \\| big\n")
    assert "<details><summary>diverged · backend · `a/b[u:cpu:float32:eager]` · `y`</summary>" in md
    assert "<details><summary>Skipped</summary>" in md
    assert "|       1 | no cuda device seen by torch |" in md


def test_report_file_format_follows_the_extension(tmp_path: Path) -> None:
    report.write(_report(), str(tmp_path / "deep" / "r.json"))
    assert json.loads((tmp_path / "deep" / "r.json").read_text())["title"] == "detharness run"
    with pytest.raises(UsageError, match=r"unknown extension '\.pdf'; use \.md, \.json, \.txt, \.html or \.xml"):
        report.write(_report(), str(tmp_path / "r.pdf"))


def test_an_error_shows_the_last_lines_of_its_traceback_and_markdown_folds_all_of_it() -> None:
    tb = "Traceback (most recent call last):\n" + "".join(f'  File "f{i}.py", line {i}, in g\n' for i in range(9))
    tb += '  File "my_cases/scale.py", line 12, in _\n    return x.reshape(5)\nValueError: cannot reshape\n'
    err = new_result("backend", "a/b", "a/b[u:cpu:float32:eager]", "error", "ValueError: cannot reshape",
                     traceback=tb)
    built = report.build([err], {}, title="t")
    text = report.render(built, "text", verbose=True)
    assert 'File "my_cases/scale.py", line 12, in _' in text and 'File "f0.py"' not in text
    md = report.render(built, "md")
    assert "<details><summary>Traceback</summary>" in md and 'File "f0.py"' in md
    assert json.loads(report.render(built, "json"))["results"][0]["traceback"] == tb


def test_a_registered_section_renders_in_its_place() -> None:
    section = Section("demo", lambda rep: [f"demo section: {len(rep['results'])} results"])
    register_section("text", section, before="skipped")
    try:
        text = report.render(_report(), "text", verbose=True)
        assert text.index("demo section: 3 results") < text.index("could not run here (skipped):")
    finally:
        report.SECTIONS["text"].remove(section)


def test_known_reasons_are_listed_whole_once_each() -> None:
    reason = "jax.nn.gelu defaults to the tanh approximation; the reference is the erf form " * 2
    known = [new_result("backend", "a/b", f"a/b[{impl}:cpu:float32:eager]", "known", f"known divergence ({reason})",
                        output="y", known_reason=reason) for impl in ("j1", "j2")]
    built = report.build(known, {}, title="t")
    text = report.render(built, "text")
    assert f"     2  {reason}" in text  # the table's note is cut at 80 characters; this line is not
    assert "Known divergences (declared, still holding)" in report.render(built, "md")


def test_headline_of_an_empty_or_blank_message_is_empty() -> None:
    from detharness.report._format import headline

    assert headline(None) == headline("") == headline("  \n ") == ""
    assert headline("\n  first line\nsecond") == "first line"


def test_markdown_cuts_whole_cases_to_fit_its_budget_and_says_where_the_rest_is() -> None:
    from markdown_it import MarkdownIt

    from detharness.report import markdown

    results = [new_result("backend", f"c{i:03d}", f"c{i:03d}[u:cpu:float32:eager]", "close", "CLOSE | fine",
                          output="y", max_ulp=i) for i in range(300)]
    built = {**report.build(results, {}, title="t"), "html_report": "reports/r.html"}
    whole = markdown.render(built)
    cut = markdown.render(built, budget=20_000)
    assert len(cut.encode()) <= 20_000 < len(whole.encode())
    kept = cut.count("<details><summary><code>c")
    assert 0 < kept < 300
    assert f"_{300 - kept} more cases cut to stay under GitHub's 1 MiB job-summary limit: every result is in " \
           "the HTML report `reports/r.html` and the JSON report._" in cut
    assert cut.count("<details") == cut.count("</details>")
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(cut)
    assert html.count("<table>") == kept  # every case kept whole, its table intact


def test_markdown_lists_a_dozen_identical_results_per_case_and_counts_the_rest() -> None:
    same = [new_result("environment", "a/b", f"a/b[u:cpu:float32:v{i}]", "identical", "IDENTICAL", output="y")
            for i in range(20)]
    md = report.render(report.build(same, {}, title="t"), "md")
    assert md.count("| identical ") == 12
    assert "_8 more bitwise identical results (listed in the JSON report)._" in md


def _measured() -> list:
    flip = {"rule": "argmax", "budget": 0.0, "flips": 1, "total": 32, "indices": [[7]], "margins": [5e-4],
            "near_ties": 1, "exceeds": True}
    worse = {"oracle": "m/a[numpy:cpu:float64:eager]", "metric": "rms", "candidate_error": 3.7e-5,
             "baseline_error": 1e-6, "ratio": 37.0, "reading": "candidate-worse", "baseline": "m/a[cpu]"}
    noise = dict(worse, candidate_error=1.04e-6, ratio=1.04, reading="rounding-noise")
    return [
        new_result("backend", "m/flip", "m/flip[t:cpu:float32:eager]", "flipped", "FLIPPED | argmax", output="y",
                   decision=flip),
        new_result("device", "m/a", "m/a[t:cuda:float32:eager]", "close", "CLOSE", output="y", accuracy=worse),
        new_result("backend", "m/a", "m/a[j:cpu:float32:eager]", "close", "CLOSE", output="y", accuracy=noise),
        new_result("backend", "p/s", "p/s[serving:cpu:float32:eager]", "known", "known", output="z",
                   shift={"psi": 0.31, "wasserstein": 0.42, "jsd": None}),
        new_result("backend", "p/t", "p/t[serving:cpu:float32:eager]", "close", "CLOSE", output="z",
                   shift={"psi": 0.02, "wasserstein": 0.01, "jsd": None}),
        new_result("backend", "p/u", "p/u[x:cpu:float32:eager]", "close", "declared known divergence no longer "
                   "happens (stale): old reason", output="z", stale_known="old reason"),
    ]


def test_brief_reports_name_only_the_cases_whose_measures_matter() -> None:
    built = report.build(_measured(), {}, title="t")
    text = report.render(built, "text")
    section = text.split("does it matter (3 cases):\n")[1].split("\n\n")[0].splitlines()
    assert section == [
        "  m/flip: argmax flips up to 1 of 32 decisions in 1 variant (all near ties; 1 over the budget)",
        "  p/s: [serving:cpu:float32:eager] z: PSI 0.31 (major shift), Wasserstein 0.42 std",
        "  m/a: y: t:cuda:float32:eager is 37x further from float64 than cpu",
    ]
    assert "rounding noise" not in text and "p/t" not in text  # in -v, JSON and HTML only
    md = report.render(built, "md")
    assert "### Does it matter" in md and "`m/a`: y: t:cuda:float32:eager is 37x further from float64" in md
    page = report.render(built, "html")
    assert "both rounding noise: j:cpu:float32:eager is 1.04x as far from float64 as cpu" in page
    assert "PSI 0.02 (stable), Wasserstein 0.01 std" in page


def test_a_stale_known_divergence_says_remove_it_in_text_and_markdown() -> None:
    built = report.build(_measured(), {}, title="t")
    assert "stale known divergences (the outputs agree now: remove these declarations):\n     1  old reason" in \
        report.render(built, "text")
    md = report.render(built, "md")
    assert "### Stale known divergences" in md and "remove these declarations" in md and "| old reason" in md


def test_junit_failures_follow_the_commands_fail_on() -> None:
    import xml.etree.ElementTree as ET

    built = _report()
    default = ET.fromstring(report.render(built, "junit"))
    assert default.get("failures") == "1"
    lenient = ET.fromstring(report.render({**built, "fail_on": ["error"]}, "junit"))
    assert lenient.get("failures") == "0"  # exit 0 under --fail-on error: no red test either


def test_an_n_way_failure_names_the_two_environments_it_compares() -> None:
    """One variant failing against the baseline in two environments reads as two different lines."""
    results = [new_result("environment", "a/b", "a/b[t:cpu:float32:eager]", "diverged", "DIVERGED | big", output="y")
               .replace(baseline_label="x86", candidate_label=label) for label in ("arm-n1", "arm-a64fx")]
    built = report.build(results, {}, title="detharness compare")
    text = report.render(built, "text")
    markdown = report.render(built, "md")
    html = report.render(built, "html")
    for label in ("arm-n1", "arm-a64fx"):
        assert f"environment a/b[t:cpu:float32:eager] 'y' (x86 vs {label}):" in text
        assert f"(x86 vs {label})" in markdown
        assert f"output y (x86 vs {label})" in html
