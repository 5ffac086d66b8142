"""Every report format names an emulated environment as emulated, and says nothing where none is."""

from __future__ import annotations

from detharness import report as report_mod
from detharness.report.sections import emulated_environments

HOST = {"machine.arch": "x86_64", "python.version": "3.11.7", "machine.emulated": None}
ARM = {"machine.arch": "aarch64", "python.version": "3.11.2", "machine.emulated": "aarch64 qemu-7.2.22 cpu=neoverse-n1"}


def build(environments: dict[str, dict[str, object]], ids: dict[str, str] | None = None) -> dict[str, object]:
    extra = {"matrix": {"baseline": "x86", "environments": [], "ids": ids, "cases": {}}} if ids else {}
    return report_mod.build([], environments, title="t", extra=extra)


def test_emulated_environments_are_named_by_their_matrix_label_else_their_id() -> None:
    assert emulated_environments(build({"a" * 64: HOST, "b" * 64: ARM})) == \
        [("b" * 12, "aarch64 qemu-7.2.22 cpu=neoverse-n1")]
    labelled = build({"a" * 64: HOST, "b" * 64: ARM}, ids={"x86": "a" * 64, "arm-n1": "b" * 64})
    assert emulated_environments(labelled) == [("arm-n1", "aarch64 qemu-7.2.22 cpu=neoverse-n1")]
    assert emulated_environments(build({"a" * 64: HOST})) == []


def test_text_markdown_and_html_say_emulated_not_silicon() -> None:
    report = build({"a" * 64: HOST, "b" * 64: ARM}, ids={"x86": "a" * 64, "arm-n1": "b" * 64})
    text = report_mod.render(report, "text")
    markdown = report_mod.render(report, "md")
    html = report_mod.render(report, "html")
    for page in (text, markdown, html):
        assert "aarch64 qemu-7.2.22 cpu=neoverse-n1" in page
    assert "emulated, not silicon" in text and "arm-n1" in text
    assert "Emulated, not silicon" in markdown and "machine.emulated" in markdown  # a column of the environments
    assert "arm-n1 (emulated)" in html


def test_reports_of_silicon_do_not_mention_emulation() -> None:
    report = build({"a" * 64: HOST})
    for fmt in ("text", "md", "html"):
        page = report_mod.render(report, fmt).lower()
        assert "emulated, not silicon" not in page and "(emulated)" not in page
