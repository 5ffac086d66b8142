"""Reports of results: text for terminals and logs, markdown for job summaries, JSON for scripts,
HTML for people (one self-contained file with plots), JUnit XML for CI test reporters.

A report is built once as a plain JSON-safe dict (:func:`build`) from typed
:class:`~detharness.results.Result` objects; every format renders that dict, so they never
disagree, and a stored JSON report renders again.

The text and markdown reports are a list of :class:`Section` objects (:data:`SECTIONS`): a feature
that adds to the reports registers a section with :func:`register_section` instead of editing the
renderers. Each section renders the report dict to lines, or to nothing where it has nothing to say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detharness._io import atomic_write_text
from detharness.errors import UsageError
from detharness.report.figures import ArraySource, collect
from detharness.results import Result, summarize

REPORT_SCHEMA = 2

Renderer = Callable[[Mapping[str, Any]], list[str]]


@dataclass(frozen=True)
class Section:
    """One part of a text or markdown report: a name, what it renders from the report dict, and
    when it shows: ``always``, only in the ``brief`` text report (the default), or only ``verbose``
    (``-v``). Markdown reports show ``always`` and ``verbose`` sections."""

    name: str
    render: Renderer
    when: str = "always"

    def __post_init__(self) -> None:
        if self.when not in ("always", "brief", "verbose"):
            raise ValueError(f"Section.when must be always, brief or verbose, not {self.when!r}")


#: The sections of the text and the markdown report, in order; see :func:`register_section`.
SECTIONS: dict[str, list[Section]] = {"text": [], "md": []}


def register_section(fmt: str, section: Section, *, before: str | None = None) -> Section:
    """Add ``section`` to format ``fmt``'s report (replacing one of the same name), at the end or
    before the section named ``before``."""
    sections = SECTIONS[fmt]
    sections[:] = [s for s in sections if s.name != section.name]
    names = [s.name for s in sections]
    sections.insert(names.index(before) if before in names else len(sections), section)
    return section


def render_sections(fmt: str, report: Mapping[str, Any], *, verbose: bool = True) -> list[str]:
    lines: list[str] = []
    for section in SECTIONS[fmt]:
        if section.when == "always" or (section.when == "verbose") == verbose:
            lines += section.render(report)
    return lines


def order(results: Sequence[Result]) -> list[Result]:
    """Failures first (worst status first), then by variant id, check and output."""
    return sorted(results, key=lambda r: (-r.status.severity, r.variant or "", r.check, r.output or ""))


def build(results: Sequence[Result], environments: Mapping[str, Mapping[str, Any]], *,
          title: str, seconds: float | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "title": title,
        "summary": summarize(results),
        "environments": {k: dict(v) for k, v in environments.items()},
        "results": [r.to_json() for r in order(results)],
    }
    if seconds is not None:
        report["seconds"] = round(seconds, 3)
    report.update(extra or {})
    return report


#: Format name -> the module under detharness.report that renders it (imported when used: a text
#: report on stdout imports neither jinja2 nor the XML writer).
FORMATS = {"text": "text", "md": "markdown", "json": "json_report", "html": "html", "junit": "junit"}
EXTENSIONS = {".md": "md", ".json": "json", ".txt": "text", ".html": "html", ".xml": "junit"}


def render(report: Mapping[str, Any], fmt: str, *, verbose: bool = False) -> str:
    """``report`` in format ``fmt``; ``verbose`` makes the text report hold every result in full."""
    import importlib

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    module = importlib.import_module(f"detharness.report.{FORMATS[fmt]}")
    if fmt == "text":
        return str(module.render(report, verbose=verbose))
    if fmt == "junit":  # failures are what fails the command: its --fail-on, where it says
        return str(module.render(report, fail_on=report.get("fail_on")))
    return str(module.render(report))


def format_for_path(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise UsageError(f"--report {path}: unknown extension {suffix or '(none)'!r}; use "
                         f"{', '.join(list(EXTENSIONS)[:-1])} or {list(EXTENSIONS)[-1]}")
    return EXTENSIONS[suffix]


def check_paths(paths: Sequence[str]) -> None:
    """Refuse, before anything runs, a report path of an unknown extension, or an HTML report on a
    machine without jinja2 (a run of an hour should not end in "cannot write the report")."""
    for path in paths:
        if format_for_path(path) == "html":
            from detharness.report import html

            html.require()


def html_available() -> bool:
    """Whether this machine can write HTML reports (jinja2 is installed)."""
    import importlib.util

    return importlib.util.find_spec("jinja2") is not None


def with_figures(report: Mapping[str, Any], arrays: ArraySource | None) -> Mapping[str, Any]:
    """``report`` with the plot data of its results (see :mod:`detharness.report.figures`), for the
    HTML report; the other formats never carry it."""
    if arrays is None:
        return report
    figures, more = collect(report["results"], arrays)
    return {**report, "figures": figures, "figures_more": more}


def write(report: Mapping[str, Any], path: str, *, arrays: ArraySource | None = None) -> None:
    """Write a report in the format its extension names, atomically, making its folder if needed;
    an HTML report draws its plots from ``arrays`` where given."""
    fmt = format_for_path(path)
    if fmt == "html":
        report = with_figures(report, arrays)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render(report, fmt))


from detharness.report import sections as _sections  # noqa: E402  (registers the built-in sections)

__all__ = ["EXTENSIONS", "FORMATS", "REPORT_SCHEMA", "SECTIONS", "ArraySource", "Section", "build", "check_paths",
           "format_for_path", "html_available", "order", "register_section", "render", "render_sections",
           "with_figures", "write"]
del _sections
