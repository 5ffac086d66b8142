"""Reports that cannot be injected: case ids, output names, messages, skip reasons and environment
values come from user code and from bundles made elsewhere, so neither a terminal nor a markdown
renderer may take them for anything but text."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from detharness import report
from detharness.checks import new_result
from detharness.errors import CaseError
from detharness.report._escape import md_code, md_fence, md_text, terminal_safe
from detharness.results import Result
from tests.conftest import run_cli

# Everything a terminal or a browser must not receive raw from a report.
ESC_SEQ = "\x1b[31mred\x1b[0m \x1b]8;;https://evil.example\x07link\x1b]8;;\x07 \x9b2J"
BIDI = "\u202eevil\u202c \u2066iso\u2069 \u200e\u200f\u061c"
HTML = "<script>alert(1)</script> <img src=x onerror=alert(2)> </details></summary> &amp; <b>"
MARKDOWN = "| cell | break |\n\n# heading\n```\n`code` **bold** [link](javascript:x) ~~s~~ $x$"
HOSTILE = f"{HTML} {ESC_SEQ} {BIDI} {MARKDOWN}"
# The characters terminal_safe must never let through (tab and newline aside, where layout puts them).
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


# -- terminal_safe ------------------------------------------------------------------------------


def test_terminal_safe_shows_escapes_controls_and_bidi_visibly() -> None:
    assert terminal_safe("a\x1b[31mb") == "a\\x1b[31mb"
    assert terminal_safe("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert terminal_safe("c1 \x9b and \x85 del \x7f nul \x00") == "c1 \\x9b and \\x85 del \\x7f nul \\x00"
    assert terminal_safe("a\u202eb\u2066c\u2069\u200e\u200f\u061c") == "a\\u202eb\\u2066c\\u2069\\u200e\\u200f\\u061c"
    assert terminal_safe("one\ntwo\tthree\r\n") == "one\\ntwo\\tthree\\r\\n"
    assert terminal_safe("x\u2028y") == "x\\u2028y"
    # Ordinary text, non-ASCII letters and backslashes are left as they are.
    assert terminal_safe("café ü 日本 C:\\Users\\me") == "café ü 日本 C:\\Users\\me"


def test_terminal_safe_multiline_keeps_lines_and_tabs_only() -> None:
    text = "line one\r\n\tline two\x1b[2K\rover"
    assert terminal_safe(text, multiline=True) == "line one\n\tline two\\x1b[2K\\rover"


def test_terminal_safe_is_idempotent_and_leaves_nothing_raw() -> None:
    every = "".join(map(chr, range(0x300))) + BIDI + "\u2028\u2029"
    for multiline in (False, True):
        once = terminal_safe(every, multiline=multiline)
        assert terminal_safe(once, multiline=multiline) == once
        assert not RAW_CONTROL.search(once)
    assert "\n" not in terminal_safe(every) and "\t" not in terminal_safe(every)


# -- the hostile report -------------------------------------------------------------------------


def _hostile_results() -> list[Result]:
    case = f"evil/{HOSTILE}"
    variant = f"{case}[t:cpu:float32:eager]"
    tb = f"Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: {HOSTILE}\n"
    return [
        new_result("backend", case, variant, "diverged", f"DIVERGED\n{HOSTILE}\n```` after the fence ````",
                   output=f"out {HOSTILE}", reproduce=f"detharness run -k '{HOSTILE}'", max_ulp=3,
                   env_diff={f"env.{HTML}": [f"{ESC_SEQ}", f"{BIDI} |"]}),
        new_result("backend", case, f"{variant}2", "error", f"ValueError: {HOSTILE}", traceback=tb),
        new_result("backend", case, f"{variant}3", "identical", "same bytes", output=HTML),
        new_result("backend", "plain/case", "plain/case[t:cpu:float32:eager]", "identical", "same bytes", output="y"),
        new_result("backend", case, f"{variant}4", "skipped", f"skip reason {HOSTILE}"),
    ]


def _hostile_report() -> dict[str, Any]:
    envs = {f"{'e' * 60}{HTML}": {"torch.version": HOSTILE, "python.version": "3.12 | <img src=x onerror=y>",
                                  "cpu.model": ESC_SEQ}}
    built = report.build(_hostile_results(), envs, title=f"detharness {HTML}", seconds=1.0)
    label = f"env {HTML} |"
    members = [{"variant": f"v{i} {HTML}", "output": f"o {HTML}", "status": "diverged"} for i in range(5)]
    built.update({
        "profiles": [{"name": f"p {HOSTILE}", "status": "ok", "changes": HTML, "environment_id": "ab" * 32,
                      "seconds": 1.0, "reason": f"why {HOSTILE}"}],
        "matrix": {"baseline": f"base {HOSTILE}", "environments": [label],
                   "cases": {f"case {HOSTILE}": {label: "diverged"}, "fine": {label: "identical"}},
                   "variants": {f"variant {HOSTILE}": {label: "diverged"}},
                   "pairs": [{"a": f"base {HOSTILE}", "b": label, "differing": 1, "compared": 2}]},
        "attribution": [{"line": f"- # {HOSTILE}", "members": members}],
    })
    return built


def _shown(built: dict[str, Any]) -> int:
    return sum(r["status"] != "skipped" for r in built["results"])


# -- text ---------------------------------------------------------------------------------------


def test_brief_text_report_passes_no_escape_sequence_control_or_bidi_character() -> None:
    built = _hostile_report()
    text = report.render(built, "text")
    assert not RAW_CONTROL.search(text)
    assert "\\x1b[31mred" in text and "\\u202eevil" in text
    # One line per failure: a message's newline is shown as \n, never a new line.
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("failures ("))
    count = int(lines[start][len("failures ("):-2])
    assert count == sum(r["status"] in ("diverged", "mismatch", "error") for r in built["results"])
    assert all(line.startswith("  ") and "<script>" in line for line in lines[start + 1:start + 1 + count])
    assert lines[start + 1 + count] == ""


def test_text_report_passes_no_escape_sequence_control_or_bidi_character() -> None:
    built = _hostile_report()
    text = report.render(built, "text", verbose=True)
    assert not RAW_CONTROL.search(text)
    assert "\\x1b[31mred" in text and "\\u202eevil" in text and "\\x9b2J" in text
    # The results table has one line per result shown: a cell's newline is shown as \n.
    lines = text.splitlines()
    dashes = next(i for i, line in enumerate(lines) if line.startswith("---------"))
    table = lines[dashes + 1:lines.index("", dashes)]
    assert len(table) == _shown(built)
    assert all("\\n" in row for row in table if "evil/" in row)
    # A failure's message keeps its own lines; its title, traceback lines and reproduce line are one line each.
    assert "\nDIVERGED\n<script>alert(1)</script>" in text
    assert "reproduce: detharness run -k '<script>" in text
    reproduce = next(line for line in lines if line.startswith("reproduce: "))
    assert "\\n# heading" in reproduce


# -- markdown -----------------------------------------------------------------------------------

_TAG = re.compile(r"<\s*/?\s*(script|img|b|summary|details)\b", re.IGNORECASE)


def _tags(html: str, name: str) -> list[str]:
    return re.findall(rf"<\s*(/?)\s*{name}\b", html, flags=re.IGNORECASE)


def test_markdown_report_keeps_its_structure_whatever_the_results_hold() -> None:
    built = _hostile_report()
    md = report.render(built, "md")
    assert not RAW_CONTROL.search(md)
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    # No tag from the results: every <script>, <img> and <b> in them arrives as text.
    assert not re.search(r"<\s*(script|img|b)\b", html, flags=re.IGNORECASE)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # Every <details> opened is closed, in order, and each has its one <summary>.
    depth = 0
    for slash in _tags(html, "details"):
        depth += -1 if slash else 1
        assert depth >= 0
    assert depth == 0
    opened = [s for s in _tags(html, "details") if not s]
    assert len(opened) == len([s for s in _tags(html, "summary") if not s]) == len(_tags(html, "/summary"))
    # 2 cases, environments, attribution members, variants, pairs, 2 failures, a traceback, skipped
    assert len(opened) == 10


def test_markdown_tables_have_one_row_per_result_and_the_columns_they_name() -> None:
    built = _hostile_report()
    tokens = MarkdownIt("commonmark").enable("table").parse(report.render(built, "md"))
    headings = [_text(tokens[i + 1]) for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[-1] == "Results by case" and headings[0] == "detharness <script>alert(1)</script> <img src=x " \
        "onerror=alert(2)> </details></summary> &amp; <b>"
    tables = _tables(tokens)
    # The results by case (one table per case), the skip reasons, the environments last.
    case_tables = [t for t in tables if t[0][:3] == ["status", "check", "variant"]]
    assert sum(len(t) - 1 for t in case_tables) == _shown(built)
    assert all(len(row) == 8 for t in case_tables for row in t)
    variants = [row[2] for t in case_tables for row in t[1:]]
    assert variants[0].startswith("evil/<script>alert(1)</script>") and "| cell | break |\\n\\n# heading" in variants[0]
    skip_table = tables[-2]
    assert len(skip_table) == 2 and skip_table[1][1].startswith("skip reason <script>")
    for table in tables:  # no table lost a column or gained one
        assert len({len(row) for row in table}) == 1


def test_markdown_code_blocks_hold_the_whole_message_and_traceback() -> None:
    tokens = MarkdownIt("commonmark").enable("table").parse(report.render(_hostile_report(), "md"))
    fences = [t.content for t in tokens if t.type == "fence"]
    assert any(f.startswith("DIVERGED\n<script>") and f.rstrip().endswith("```` after the fence ````") for f in fences)
    assert any(f.startswith("Traceback") and "ValueError: <script>" in f for f in fences)
    assert any(f.startswith("detharness run -k '<script>") for f in fences)


def _tables(tokens: list[Any]) -> list[list[list[str]]]:
    """Each table as its rows of cell texts (markdown-it's inline content, unescaped)."""
    tables: list[list[list[str]]] = []
    for previous, t in zip([None, *tokens], tokens, strict=False):
        if t.type == "table_open":
            tables.append([])
        elif t.type == "tr_open":
            tables[-1].append([])
        elif t.type == "inline" and previous is not None and previous.type in ("th_open", "td_open"):
            tables[-1][-1].append(_text(t))
    return tables


def _text(inline: Any) -> str:
    """The text of an inline token: only text and code, no HTML, link, emphasis or line break."""
    children = inline.children or []
    assert {c.type for c in children} <= {"text", "code_inline"}, [(c.type, c.content) for c in children]
    return "".join(c.content for c in children)


@pytest.mark.parametrize("text", [HOSTILE, "`", "a_b _c_ __d__ e_ *f* cpu_capability", "``a``", " x ", "a\\|b", "\\", "| |", "1. x", "2)", "3.5", "- x", "---", "# x", "=", "+ y", "> q", ""])
def test_each_markdown_escape_renders_back_to_its_text(text: str) -> None:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    shown = terminal_safe(text)
    row = f"| h | h2 |\n| --- | --- |\n| {md_text(text)} | {md_code(text)} |\n"
    tokens = md.parse(row)
    cells = [_text(t) for t in tokens if t.type == "inline"][2:]
    assert cells == [shown.strip(), shown]
    if shown.strip():  # a list item's text stays one paragraph of that text (no heading, list or quote in it)
        item = md.parse(f"- {md_text(text)}\n")
        assert [t.type for t in item][:4] == ["bullet_list_open", "list_item_open", "paragraph_open", "inline"]
        assert _text(item[3]) == shown.strip()
    fence = md.parse("\n".join(md_fence(text)) + "\n\nafter\n")
    assert fence[0].type == "fence" and fence[0].content == terminal_safe(text, multiline=True) + "\n"


# -- one-line errors ----------------------------------------------------------------------------

_RAISING_CASE = 'raise RuntimeError("first line\\n\\x1b[31msecond\\x1b[0m line\\n\\u202ethird")\n'


def test_a_case_file_import_error_is_one_escaped_line(tmp_path: Path) -> None:
    from detharness.cases import Registry, load_case_file

    bad = tmp_path / "bad_cases.py"
    bad.write_text(_RAISING_CASE)
    with pytest.raises(CaseError) as info:
        load_case_file(bad, Registry())
    message = str(info.value)
    assert message == (f"case file {bad} failed to import (line 1): RuntimeError: "
                       "first line\\n\\x1b[31msecond\\x1b[0m line\\n\\u202ethird")


@pytest.mark.slow
def test_the_cli_prints_a_case_file_import_error_as_one_escaped_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad_cases.py"
    bad.write_text(_RAISING_CASE)
    result = run_cli("run", "--cases", str(bad), cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n")
    assert result.stderr.startswith(f"detharness: error: case file {bad} failed to import (line 1): RuntimeError: ")
    assert "\\x1b[31msecond" in result.stderr and "\\u202ethird" in result.stderr
    assert not RAW_CONTROL.search(result.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "line"), [
    (["frobnicate"], "detharness: error: argument command: invalid choice: 'frobnicate'"),
    (["run", "--repeat", "x"], "detharness: error: run: argument --repeat: invalid int value: 'x'"),
    (["run", "--cases", "a\x1b[31m\nb"], "detharness: error: --cases a\\x1b[31m\\nb: "),
])
def test_usage_errors_name_detharness_once_on_one_escaped_line(args: list[str], line: str, tmp_path: Path) -> None:
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line), result.stderr
    assert result.stderr.count("\n") == 1 and "error: detharness" not in result.stderr
    assert not RAW_CONTROL.search(result.stderr)


def test_cli_main_escapes_any_error_it_prints(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from detharness import cli

    monkeypatch.setattr(sys, "argv", ["detharness"])
    assert cli.main(["run", "--report", f"{tmp_path}/r\x1b[2J\u202e.pdf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "r\\x1b[2J\\u202e.pdf" in err and not RAW_CONTROL.search(err)


@pytest.mark.parametrize("fmt", ["text", "md"])
def test_a_registered_section_that_forgets_to_escape_still_reaches_no_terminal_raw(fmt: str) -> None:
    section = report.Section("careless", lambda rep: [f"raw {ESC_SEQ} {BIDI}"])
    report.register_section(fmt, section)
    try:
        rendered = report.render(_hostile_report(), fmt)
    finally:
        report.SECTIONS[fmt].remove(section)
    assert "raw \\x1b[31mred" in rendered and not RAW_CONTROL.search(rendered)
