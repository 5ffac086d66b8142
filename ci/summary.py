#!/usr/bin/env python3
"""Print a markdown report cut to fit a GitHub job summary (at most 1 MiB per step).

    python ci/summary.py reports/compare.md >> "$GITHUB_STEP_SUMMARY"

A report that fits is printed as it is. A longer one is cut at a line boundary, open code fences
and <details> blocks are closed so the rest of the page renders, and a note says how much was left
out and where the whole report is. Standard library only.
"""

from __future__ import annotations

import sys

# GitHub refuses a step summary over 1 MiB; leave room for the note and for other steps' lines.
LIMIT = 1024 * 1024 - 16 * 1024


def fit(text: str, limit: int = LIMIT, where: str = "the determinism-report artifact") -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    cut = data[: limit - 2048].decode("utf-8", errors="ignore")
    cut = cut[: cut.rfind("\n") + 1] if "\n" in cut else cut
    tail = []
    if sum(1 for line in cut.splitlines() if line.lstrip().startswith("```")) % 2:
        tail.append("```")
    tail += ["</details>"] * max(0, cut.count("<details") - cut.count("</details>"))
    shown = len(cut.encode("utf-8"))
    tail += ["", f"> **Cut to fit the job summary:** {shown:,} of {len(data):,} bytes shown. "
                 f"The full report is in {where}.", ""]
    return cut + "\n".join(tail)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: summary.py REPORT.md\n")
        return 2
    with open(argv[1], encoding="utf-8") as f:
        sys.stdout.write(fit(f.read()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
