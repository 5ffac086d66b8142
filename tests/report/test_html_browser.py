"""The HTML report in a real browser: headless Chromium opens the written page from a file:// path.

It renders with no console error (a CSP violation is one), asks for nothing beyond itself, shows
every section with the counts of the report dict, shows hostile text as text and runs none of it,
folds passing cases and opens failing ones, and shows every section and figure with JavaScript off.
The tests skip, saying why, where Chromium or chromedriver is missing (see tests/report/browser.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detharness import report
from detharness.checks import new_result
from detharness.results import Result, Status
from tests.conftest import run_cli
from tests.report.browser import Page, chromium, load

# The HTML report needs jinja2 (detharness[html]); without it there is no page to open.
pytest.importorskip("jinja2", reason="the HTML report needs jinja2: pip install 'detharness[html]'")

FAILING = {"diverged", "mismatch", "error"}
PLOT_KINDS = {"ulp-histogram", "scatter", "heatmap"}

# Hostile text from user code and bundles: each must show as these very characters and run nothing.
PAYLOADS = ("<script>window.__pwned=1</script>",
            '<img src=x onerror="window.__pwned=2">',
            "</script><script>window.__pwned=3</script>",
            "\"'><svg onload=window.__pwned=4>")
HOSTILE = " ".join(PAYLOADS) + " \"double\" 'single' `back` &amp; &lt;b&gt;"

# Two cases run with numpy: one a single ULP away from its reference (close), one 0.1% away (diverged).
CASES = """
    import numpy as np

    from detharness import case

    c = case("browser/scale", tolerance="ulp(4)",
             inputs=lambda rng: {"x": rng.standard_normal((16, 8)).astype("float32")})

    @c.impl("numpy", backend="numpy", reference=True)
    def _(x):
        return {"y": x * np.float32(3)}

    @c.impl("numpy_ulp", backend="numpy")
    def _(x):
        return {"y": np.nextafter(x * np.float32(3), np.float32(np.inf))}

    d = case("browser/drift", tolerance="ulp(2)",
             inputs=lambda rng: {"x": rng.standard_normal((16, 8)).astype("float32")})

    @d.impl("numpy", backend="numpy", reference=True)
    def _(x):
        return {"y": np.tanh(x)}

    @d.impl("numpy_drift", backend="numpy")
    def _(x):
        return {"y": np.tanh(x) * np.float32(1.001)}
"""


# -- the browsers and the pages -----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser_nojs() -> Iterator[Any]:
    with chromium(javascript=False) as driver:
        yield driver


def _variant(case: str, impl: str) -> str:
    return f"{case}[{impl}:cpu:float32:eager]"


def _results() -> list[Result]:
    tb = ('Traceback (most recent call last):\n  File "cases.py", line 9, in _\n'
          "    return x.reshape(5)\nValueError: cannot reshape array of size 4 into shape (5,)\n")
    return [
        new_result("backend", "demo/ok", _variant("demo/ok", "a"), "identical", "same bytes", output="y"),
        new_result("backend", "demo/ok", _variant("demo/ok", "b"), "close", "within ulp(4)", output="y", max_ulp=1,
                   total=64, mismatched=3),
        new_result("backend", "demo/ok", "demo/ok[c:cuda:float32:eager]", "skipped", "no cuda device seen by torch"),
        new_result("backend", "demo/known", _variant("demo/known", "a"), "known", "declared: fused multiply-add",
                   output="y", underlying_status="diverged", known_reason="fused multiply-add"),
        new_result("backend", "demo/known", _variant("demo/known", "b"), "missing", "output 'z' in one side only",
                   output="z"),
        new_result("backend", "demo/diverged", _variant("demo/diverged", "a"), "diverged", "max 812 ulp", output="y",
                   max_ulp=812, total=64, mismatched=40, reproduce="detharness run -k 'demo/diverged[a:cpu:float32:eager]'"),
        new_result("backend", "demo/diverged", _variant("demo/diverged", "b"), "close", "within ulp(4)", output="y"),
        new_result("backend", "demo/mismatch", _variant("demo/mismatch", "a"), "mismatch", "shape (4,) != (5,)",
                   output="y", reproduce="detharness run -k 'demo/mismatch[a:cpu:float32:eager]'"),
        new_result("backend", "demo/error", _variant("demo/error", "a"), "error", "ValueError: cannot reshape",
                   traceback=tb, reproduce="detharness run -k 'demo/error[a:cpu:float32:eager]'"),
    ]


ENVIRONMENTS = {"a" * 64: {"python.version": "3.11.9", "numpy.version": "2.1.0"},
                "b" * 64: {"python.version": "3.11.9", "numpy.version": "2.2.0"}}


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("html")


@pytest.fixture(scope="module")
def sections_report(pages: Path) -> tuple[dict[str, Any], Path]:
    built = report.build(_results(), ENVIRONMENTS, title="detharness run", seconds=2.5)
    path = pages / "sections.html"
    report.write(built, str(path))
    return built, path


@pytest.fixture(scope="module")
def hostile_page(pages: Path) -> Path:
    tb = f'Traceback (most recent call last):\n  File "cases.py", line 3, in _\nValueError: traceback:{HOSTILE}\n'
    case = f"case:{HOSTILE}"
    results = [
        new_result("backend", case, f"{case}[a:cpu:float32:eager]", "error", f"message:{HOSTILE}",
                   output=f"output:{HOSTILE}", traceback=tb, reproduce="detharness run -k x"),
        new_result("backend", case, f"{case}[b:cpu:float32:eager]", "diverged", f"message:{HOSTILE}",
                   output=f"output:{HOSTILE}", max_ulp=9),
        new_result("backend", case, f"{case}[c:cuda:float32:eager]", "skipped", f"reason:{HOSTILE}"),
    ]
    environments = {"a" * 64: {"hostile.value": f"environment:{HOSTILE}", "hostile.key": "same"},
                    "b" * 64: {"hostile.value": "plain", "hostile.key": "same"}}
    path = pages / "hostile.html"
    report.write(report.build(results, environments, title=f"title:{HOSTILE}"), str(path))
    return path


@pytest.fixture(scope="module")
def cli_page(pages: Path) -> tuple[dict[str, Any], Path]:
    """A page the CLI wrote from a real (in-process) run, so with the arrays its figures come from."""
    from detharness.cli import main

    folder = pages / "cli"
    folder.mkdir()
    cases = folder / "cases.py"
    cases.write_text(textwrap.dedent(CASES))
    html = folder / "r.html"
    out = io.StringIO()
    code = main(["run", "--cases", str(cases), "--in-process", "--format", "json", "--report", str(html)], out=out)
    assert code == 1, out.getvalue()  # the diverged case fails the run
    return json.loads(out.getvalue()), html


def _clean(page: Page) -> None:
    assert page.errors == [], f"console errors: {page.errors}"
    assert page.foreign_requests == [], f"requests beyond the page: {page.foreign_requests}"


def _css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements("css selector", selector))


def _open_all(driver: Any) -> None:
    """Unfold every closed <details> the way a reader does: a click on its summary."""
    for details in _css(driver, "details:not([open])"):
        summary = details.find_element("css selector", ":scope > summary")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
        summary.click()


def _check_sections(driver: Any, built: dict[str, Any]) -> None:
    for section in ("verdict", "cases", "environments", "skipped"):
        found = _css(driver, f"section#{section}")
        assert len(found) == 1 and found[0].is_displayed(), f"section#{section}"
    counts = {span.get_dom_attribute("data-status"): span.text.strip()
              for span in _css(driver, "section#verdict span.count[data-status]")}
    assert counts == {status: str(n) for status, n in built["summary"].items()}
    failures = [r for r in built["results"] if r["status"] in FAILING]
    items = _css(driver, "section#verdict ul.failures > li:not(.more)")
    assert len(items) == len(failures)

    cases: dict[str, list[str]] = {}
    for r in built["results"]:
        cases.setdefault(r["case"], []).append(r["status"])
    details = _css(driver, "details.case")
    assert len(details) == len(cases)
    assert {d.get_dom_attribute("data-case") for d in details} == set(cases)
    for d in details:
        statuses = cases[d.get_dom_attribute("data-case")]
        # The worst status of the results that ran: a skip of one variant does not colour a case.
        ran = [s for s in statuses if s != "skipped"] or statuses
        worst = max((Status(s) for s in ran), key=lambda s: s.severity)
        assert d.get_dom_attribute("data-status") == worst.value
        is_open = d.get_dom_attribute("open") is not None
        assert is_open == bool(FAILING & set(statuses)), d.get_dom_attribute("data-case")
        rows = d.find_elements("css selector", "table.results tr.result")
        assert rows and {row.get_dom_attribute("data-status") for row in rows} <= set(statuses)
    assert len(_css(driver, "details.case pre.traceback")) == 1
    assert len(_css(driver, "details.case pre.reproduce")) == sum(1 for r in built["results"] if r["reproduce"])
    assert len(_css(driver, "table.environments tr.differs")) == 1


# -- the tests ----------------------------------------------------------------------------------


def test_renders_with_no_console_error_and_no_request(browser: Any, sections_report: tuple[dict, Path]) -> None:
    _, path = sections_report
    page = load(browser, path)
    _clean(page)
    assert path.resolve().as_uri() in page.requests  # the performance log does see the page's loads
    assert browser.title  # something rendered


def test_sections_show_the_report_counts(browser: Any, sections_report: tuple[dict, Path]) -> None:
    built, path = sections_report
    _clean(load(browser, path))
    _check_sections(browser, built)
    assert "no cuda device seen by torch" in browser.find_element("css selector", "section#skipped").text


def test_a_closed_case_opens_on_a_click(browser: Any, sections_report: tuple[dict, Path]) -> None:
    _, path = sections_report
    _clean(load(browser, path))
    details = browser.find_element("css selector", 'details.case[data-case="demo/ok"]')
    table = details.find_element("css selector", "table.results")
    assert details.get_dom_attribute("open") is None and not table.is_displayed()
    details.find_element("css selector", ":scope > summary").click()
    assert details.get_dom_attribute("open") is not None
    assert table.is_displayed()
    assert "within ulp(4)" in details.text


def test_hostile_text_shows_as_text_and_runs_nothing(browser: Any, hostile_page: Path) -> None:
    page = load(browser, hostile_page)
    _clean(page)  # an injected inline script the CSP blocked would be a console error
    assert browser.execute_script("return window.__pwned") is None
    _open_all(browser)
    text = browser.find_element("css selector", "body").text
    for where in ("case", "output", "message", "traceback", "environment", "reason"):
        assert f"{where}:{HOSTILE}" in text, f"{where} does not show as text"
    assert browser.execute_script("return window.__pwned") is None
    assert len(_css(browser, "script")) <= 1
    assert _css(browser, 'img[src="x"], svg[onload], [onerror], [onload]') == []
    assert browser.get_log("browser") == []


def test_csp_allows_only_the_page_s_own_script(browser: Any, sections_report: tuple[dict, Path]) -> None:
    _, path = sections_report
    source = path.read_text(encoding="utf-8")
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", source, flags=re.DOTALL | re.IGNORECASE)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode("utf-8")).digest()).decode("ascii")
    _clean(load(browser, path))
    metas = _css(browser, 'meta[http-equiv="Content-Security-Policy"]')
    assert len(metas) == 1
    policy = {d.split()[0]: d.split()[1:] for d in metas[0].get_dom_attribute("content").split(";") if d.strip()}
    assert policy["default-src"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert f"'sha256-{digest}'" in policy["script-src"]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", source, flags=re.IGNORECASE)
    # The browser agrees: the script ran (it marks the page), with no CSP violation logged.
    assert browser.find_element("css selector", "html").get_dom_attribute("data-enhanced") == "1"


def test_the_filter_hides_cases_that_do_not_match(browser: Any, sections_report: tuple[dict, Path]) -> None:
    _, path = sections_report
    _clean(load(browser, path))
    browser.find_element("css selector", "input#filter").send_keys("mismatch")
    shown = [d.get_dom_attribute("data-case") for d in _css(browser, "details.case") if d.is_displayed()]
    assert shown == ["demo/mismatch"]
    assert browser.get_log("browser") == []


def test_without_javascript_every_section_shows(browser_nojs: Any, sections_report: tuple[dict, Path]) -> None:
    built, path = sections_report
    _clean(load(browser_nojs, path))
    assert browser_nojs.find_element("css selector", "html").get_dom_attribute("data-enhanced") is None  # JS is off
    _check_sections(browser_nojs, built)
    _open_all(browser_nojs)  # <details> unfold with no script
    assert all(d.get_dom_attribute("open") is not None for d in _css(browser_nojs, "details.case"))
    for table in _css(browser_nojs, "table.results"):
        assert table.is_displayed()


def test_without_javascript_every_figure_shows(browser: Any, browser_nojs: Any,
                                               cli_page: tuple[dict, Path]) -> None:
    _, path = cli_page
    _clean(load(browser, path))
    with_js = len(_css(browser, "figure.plot svg"))
    assert with_js > 0, "the CLI's page has no figure"
    for figure in _css(browser, "figure.plot"):
        kinds = set(figure.get_dom_attribute("class").split()) - {"plot"}
        assert len(kinds) == 1 and kinds <= PLOT_KINDS, kinds
    _clean(load(browser_nojs, path))
    assert browser_nojs.find_element("css selector", "html").get_dom_attribute("data-enhanced") is None
    _open_all(browser_nojs)
    figures = _css(browser_nojs, "figure.plot svg")
    assert len(figures) == with_js
    for svg in figures:
        assert svg.is_displayed()
        assert svg.size["width"] > 0 and svg.size["height"] > 0
    for section in ("verdict", "cases", "environments"):
        assert browser_nojs.find_element("css selector", f"section#{section}").is_displayed()


@pytest.mark.slow
def test_cli_report_in_the_browser_matches_the_json_summary(browser: Any, tmp_path: Path) -> None:
    cases = tmp_path / "cases.py"
    cases.write_text(textwrap.dedent(CASES))
    proc = run_cli("run", "--cases", str(cases), "--in-process", "--format", "json", "--report", "r.html",
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary == {"diverged": 1, "close": 1}
    _clean(load(browser, tmp_path / "r.html"))
    counts = {span.get_dom_attribute("data-status"): span.text.strip()
              for span in _css(browser, "section#verdict span.count[data-status]")}
    assert counts == {status: str(n) for status, n in summary.items()}
    opened = {d.get_dom_attribute("data-case"): d.get_dom_attribute("open") is not None
              for d in _css(browser, "details.case")}
    assert opened == {"browser/drift": True, "browser/scale": False}
