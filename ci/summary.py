#!/usr/bin/env python3
"""The job summaries' helper: the markdown report cut to fit, a link to the HTML report, the Pages site.

    python ci/summary.py reports/compare.md >> "$GITHUB_STEP_SUMMARY"
    ci/summary.py --link URL LABEL >> "$GITHUB_STEP_SUMMARY"
    ci/summary.py --site reports/compare.html _site

The first prints a markdown report cut to fit a GitHub job summary (at most 1 MiB per step). A
report that fits is printed as it is. A longer one is cut at a line boundary, open code fences and
<details> blocks are closed so the rest of the page renders, and a note says how much was left out
and where the whole report is.

--link prints one line that links the HTML report (the determinism-report artifact's download in
the compare job, the GitHub Pages address in the publish job); an empty URL (the step that knows it
did not run) says so instead of printing a dead link.

--site makes DIR/index.html a copy of the HTML report: the folder actions/upload-pages-artifact
publishes. It fails, saying why, when the compare job wrote no HTML report. Standard library only.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# GitHub refuses a step summary over 1 MiB; leave room for the note and for other steps' lines.
LIMIT = 1024 * 1024 - 16 * 1024

USAGE = ("usage: summary.py REPORT.md\n"
         "       summary.py --link URL LABEL\n"
         "       summary.py --site REPORT.html DIR\n")


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


def link(url: str, label: str) -> str:
    """One markdown paragraph linking the HTML report; brackets in the label cannot break the link."""
    label = label.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    if not url.strip():
        return f"\n**HTML report:** {label} (no link: the step that publishes it did not give one).\n"
    return f"\n**HTML report:** [{label}](<{url.strip()}>)\n"


def site(report: Path, folder: Path) -> Path:
    """folder/index.html = report, the one page the GitHub Pages site serves."""
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no HTML report to publish (did the compare job fail before writing it?)")
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "index.html"
    shutil.copyfile(report, index)
    return index


def main(argv: list[str]) -> int:
    args = argv[1:]
    if len(args) == 1 and not args[0].startswith("--"):
        with open(args[0], encoding="utf-8") as f:
            sys.stdout.write(fit(f.read()))
        return 0
    if len(args) == 3 and args[0] == "--link":
        sys.stdout.write(link(args[1], args[2]))
        return 0
    if len(args) == 3 and args[0] == "--site":
        try:
            index = site(Path(args[1]), Path(args[2]))
        except FileNotFoundError as err:
            sys.stderr.write(f"summary.py --site: {err}\n")
            return 1
        sys.stderr.write(f"summary.py --site: wrote {index}\n")
        return 0
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
