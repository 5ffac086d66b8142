"""Escaping of text that comes from user code or from bundles made elsewhere (case ids, output names,
exception messages, skip reasons, environment values) before it reaches a terminal or a markdown page.

:func:`terminal_safe` (in :mod:`detharness._io`, so lower layers use it too) is the one function for everything that goes to a terminal: it shows escape
sequences, control characters and bidirectional overrides as visible escapes (``\\x1b``, ``\\u202e``)
instead of passing them on. The ``md_*`` functions make text inert in each markdown context the
reports use (plain text, a code span, a table cell, raw HTML, a fenced code block).
"""

from __future__ import annotations

import html
import re

from detharness._io import terminal_safe

__all__ = ["md_code", "md_fence", "md_html", "md_text", "terminal_safe"]

# -- markdown ---------------------------------------------------------------------------------

# ASCII punctuation that starts or ends markdown markup anywhere in a line: escapes, code, emphasis,
# links and images, table cells, strikethrough and GitHub's math (``$``); ``_`` unless it is inside a
# word (``cpu_capability``), where it cannot be emphasis. ``<``, ``>`` and ``&``
# become entities (no raw HTML, no autolink, no entity). CommonMark allows a backslash before any
# ASCII punctuation, so an escape that was not needed costs nothing.
_MD_INLINE = re.compile(r"([\\`*\[\]|~$]|(?<![^\W_])_|_(?![^\W_]))")
# What starts a block when it begins a line (a list item's or a paragraph's text): a heading, a list,
# a thematic break, a setext underline, a block quote; and ``1.`` or ``1)`` (an ordered list).
_MD_LINE_START = re.compile(r"^([#+\-=]|\d+[.)](?=\s|$))")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_HTML_CHARS = re.compile("[&<>]")


def md_text(text: object) -> str:
    """``text`` as inert markdown inline text on one line: markup characters backslash-escaped,
    ``<``, ``>`` and ``&`` as entities (no raw HTML, no autolink), line breaks shown as ``\\n``.
    Safe in a paragraph, a list item, a heading and a table cell."""
    escaped = _MD_INLINE.sub(r"\\\1", terminal_safe(text).strip())
    escaped = _MD_LINE_START.sub(lambda m: m.group()[:-1] + "\\" + m.group()[-1], escaped)
    return _HTML_CHARS.sub(lambda m: _HTML[m.group()], escaped)


def md_code(text: object) -> str:
    """``text`` as an inline code span on one line, safe in a table cell: the span's backtick fence
    is longer than any run of backticks in the text, and ``|`` is escaped (GFM tables split cells
    before they parse code spans, and take ``\\|`` back to ``|`` inside them)."""
    content = terminal_safe(text)
    if not content:
        return ""
    fence = "`" * (_longest_run(content, "`") + 1)
    if content.startswith("`") or content.endswith("`") or (content.startswith(" ") and content.endswith(" ")):
        content = f" {content} "
    return fence + content.replace("|", "\\|") + fence


def md_html(text: object) -> str:
    """``text`` on one line as the content of an HTML element (``<summary>``, ``<code>``): HTML-escaped,
    so it can neither open nor close a tag."""
    return html.escape(terminal_safe(text), quote=False)


def md_fence(text: object, info: str = "") -> list[str]:
    """``text`` as a fenced code block (its lines, fences included) that nothing in the text can
    close: the fence is longer than any run of backticks in it."""
    content = terminal_safe(text, multiline=True)
    fence = "`" * max(3, _longest_run(content, "`") + 1)
    return [fence + info, content, fence]


def _longest_run(text: str, char: str) -> int:
    runs = re.findall(f"{re.escape(char)}+", text)
    return max((len(run) for run in runs), default=0)
