"""The HTML report without a browser: its structure, escaping, Content-Security-Policy, determinism,
size bounds and plot data (tests/report/test_html_browser.py opens it in Chromium)."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detharness import report
from detharness.checks import new_result
from detharness.errors import UsageError
from detharness.report import figures, html, svg
from detharness.results import Status

pytest.importorskip("jinja2")

HOSTILE = ("<script>window.__pwned=1</script> <img src=x onerror=\"window.__pwned=2\"> "
           "</script><script>window.__pwned=3</script> \"'><svg onload=window.__pwned=4> &amp; {{ 7*7 }}")


class _Page(HTMLParser):
    """Every start tag with its attributes, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def _results(text: str = "y") -> list[Any]:
    return [
        new_result("backend", "a/b", "a/b[u:cpu:float32:eager]", Status.DIVERGED, f"DIVERGED | {text}", output=text,
                   max_ulp=12, max_abs=float("inf"), max_scaled=float("nan"), reproduce=f"detharness run -k '{text}'",
                   ulp_histogram={"0": 10, "1": 4, "2-3": 1}, total=15, mismatched=1,
                   min_passing={"ulp": 12, "rtol": 0.5, "atol": 1.0, "scaled": 0.1}),
        new_result("backend", "a/c", "a/c[u:cpu:float32:eager]", Status.ERROR, f"ValueError: {text}",
                   traceback=f"Traceback (most recent call last):\nValueError: {text}\n"),
        new_result("backend", "a/d", "a/d[t:cuda:float32:eager]", Status.SKIPPED, "no cuda device seen by torch"),
        new_result("backend", "a/b", "a/b[v:cpu:float32:eager]", Status.IDENTICAL, "IDENTICAL", output="y"),
    ]


def _html(results: list[Any] | None = None, env: dict[str, Any] | None = None, **extra: Any) -> str:
    built = report.build(results if results is not None else _results(), env or {"e" * 64: {"torch.version": "2.13"}},
                         title="detharness run", extra=extra or None)
    return report.render(built, "html")


def test_the_page_has_the_sections_in_order_and_the_counts_of_the_summary() -> None:
    page = _html()
    order = [page.index(f'<section id="{name}"') for name in ("verdict", "cases", "skipped", "environments")]
    assert order == sorted(order)
    parsed = _parse(page)
    counts = {a["data-status"]: None for t, a in parsed.tags if t == "span" and "count" in (a.get("class") or "")}
    assert set(counts) == {"diverged", "error", "identical", "skipped"}
    cases = [a for t, a in parsed.tags if t == "details" and a.get("class") == "case"]
    assert [(c["data-case"], c["data-status"], "open" in c) for c in cases] == [
        ("a/c", "error", True), ("a/b", "diverged", True), ("a/d", "skipped", False)]
    assert "grid" not in [a.get("id") for _, a in parsed.tags]  # one environment: no grid


def test_what_results_hold_is_text_and_only_the_page_script_runs() -> None:
    page = _html(_results(HOSTILE), env={"e" * 64: {"cpu.model": HOSTILE}})
    parsed = _parse(page)
    assert len(parsed.scripts) == 1 and "__pwned" not in parsed.scripts[0]
    assert not any(name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    assert [t for t, _ in parsed.tags].count("img") == 0
    assert not any(t == "svg" and "onload" in a for t, a in parsed.tags)
    text = "".join(parsed.text)
    assert text.count("<script>window.__pwned=1</script>") >= 4  # output, message, traceback, environment
    assert "{{ 7*7 }}" in text and "49" not in text  # a template expression in data stays text


def test_the_content_security_policy_names_the_hash_of_the_one_script_and_nothing_else() -> None:
    page = _html()
    parsed = _parse(page)
    csp = next(a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp is not None and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "default-src 'none'" in csp and "img-src data:" in csp
    digest = base64.b64encode(hashlib.sha256(parsed.scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    # No request can leave the page: no URL in any src or href but data: images.
    links = [v for _, a in parsed.tags for k, v in a.items() if k in ("src", "href") and v]
    assert all(v.startswith("data:image/png;base64,") for v in links)
    assert not re.search(r"(?:https?:)?//[a-z]", page.replace("http://www.w3.org/2000/svg", ""))


def test_two_renders_of_one_report_are_byte_identical() -> None:
    assert _html() == _html()


def test_a_machine_without_jinja2_gets_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_jinja(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "jinja2" or name.startswith("jinja2."):
            raise ImportError("No module named 'jinja2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jinja)
    with pytest.raises(UsageError, match=r"the HTML report needs jinja2: pip install 'detharness\[html\]'"):
        report.check_paths(["r.md", "r.html"])
    report.check_paths(["r.md", "r.json", "r.xml"])  # everything else works without it


def test_an_unknown_or_future_status_does_not_break_the_page() -> None:
    # Every status of the enum has a colour rule; the template takes any status it is given.
    page = _html()
    for status in Status:
        assert f".s-{status.value}{{" in page


# -- plot data ------------------------------------------------------------------------------------


def test_the_scatter_keeps_the_worst_points_and_an_even_spread_in_index_order() -> None:
    reference = np.linspace(1, 2, 10_000)
    error = np.zeros_like(reference)
    error[[17, 4242, 9999]] = [3.0, 2.0, 1.0]
    points = figures.scatter(reference, error, points=50, worst=5)
    assert len(points) == 50
    assert [p[1] for p in points if p[1] > 0] == [3.0, 2.0, 1.0]  # in index order: 17, 4242, 9999
    assert points[0][0] == 1.0 and points[-1][0] == 2.0  # the spread reaches both ends


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_the_heatmap_is_bounded_and_keeps_the_largest_error(rows: int, cols: int, seed: int) -> None:
    error = np.random.default_rng(seed).random((rows, cols))
    data = figures.heatmap(error, side=8)
    assert data is not None
    cells = np.array(data["cells"], dtype=float)
    assert cells.shape == (min(rows, 8), min(cols, 8))
    assert cells.max() == pytest.approx(error.max(), rel=1e-3)  # a lone outlier is never averaged away
    assert data["shape"] == [rows, cols]


def test_figures_skip_what_has_nothing_to_plot() -> None:
    assert figures.figures(np.arange(4), np.arange(4)) is None  # integers
    assert figures.figures(np.ones(3), np.ones(4)) is None  # shapes differ
    data = figures.figures(np.array([1.0, np.nan, 3.0]), np.array([1.5, np.nan, np.inf]))
    # NaN against NaN is no error; a NaN reference or an infinite error is no point on a log plot.
    assert data is not None and data["heatmap"] is None and data["scatter"] == [[1.0, 0.5]]


def test_figures_are_drawn_for_at_most_the_limit_and_the_rest_counted() -> None:
    results = [dict(new_result("backend", "c", f"c[v{i}]", Status.CLOSE, "close", output="y", baseline="ref",
                               candidate=f"c[v{i}]").to_json()) for i in range(5)]

    class Variant:
        def __init__(self, value: float) -> None:
            self.outputs = {"y": np.full((3, 3), value)}

    class Record:
        environment_id = "f" * 64

        def __init__(self) -> None:
            self.variants = {"ref": Variant(1.0), **{f"c[v{i}]": Variant(1.0 + i) for i in range(5)}}

    plotted, more = figures.collect(results, figures.ArraySource(default=Record()), limit=3)
    assert sorted(plotted) == [0, 1, 2] and more == 2
    assert plotted[1]["heatmap"]["max"] == 1.0


def test_the_heatmap_png_is_a_valid_image_of_the_grid() -> None:
    data = figures.heatmap(np.arange(12, dtype=float).reshape(3, 4))
    assert data is not None
    drawing = svg.heatmap(data)
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", drawing).group(1))  # type: ignore[union-attr]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (4, 3)
    idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    assert len(raw) == 3 * (1 + 4 * 3)
    assert raw[1:4] == bytes((255, 247, 236)) and raw[-3:] == bytes((127, 0, 0))  # none white, largest dark


def test_plots_escape_their_labels_and_take_empty_data() -> None:
    assert "&lt;b&gt;" in svg.histogram({"<b>": 3})
    assert "no distances" in svg.histogram({})
    assert svg.scatter([]).startswith("<svg") and "0 points" in svg.scatter([])


def test_a_report_with_many_results_stays_bounded(tmp_path: Path) -> None:
    """Size grows with the results (a table row each) but the plots stop at figures.MAX_FIGURED."""
    many = [new_result("backend", f"c{i % 40}", f"c{i % 40}[v{i}]", Status.CLOSE, "close", output="y",
                       ulp_histogram={"0": 5, "1": 2}, total=7, mismatched=0) for i in range(2000)]
    built = report.build(many, {}, title="t")
    # The figures the report is handed: figures.collect stops at MAX_FIGURED.
    plotted = {i: figures.figures(np.ones((40, 40)), np.ones((40, 40)) + np.arange(1600).reshape(40, 40) * 1e-7)
               for i in range(figures.MAX_FIGURED)}
    page = report.render({**built, "figures": plotted}, "html")
    assert page.count('class="plot scatter"') == figures.MAX_FIGURED
    assert page.count('class="plot ulp-histogram"') == html.MAX_DETAILED
    assert "1600 more passing results that differ have their table row only" in page
    assert len(page.encode()) < 2_000_000
