"""Markdown report, shaped for a GitHub job summary: counts, failures with details, all results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from detharness.report._format import PASSING, env_diff_text, headline, number, skipped_reasons, summary_line
from detharness.report._format import markdown_cell as _cell
from detharness.report._matrix import markdown_sections

MAX_ROWS = 1000


def render(report: Mapping[str, Any]) -> str:
    results = [r for r in report["results"] if r["status"] != "skipped"]
    out = [f"## {report.get('title', 'detharness')}", "", f"**{summary_line(report)}**", ""]
    envs = report.get("environments") or {}
    if envs:
        keys = ["python.version", "machine.arch", "cpu.model", "numpy.version", "torch.version",
                "torch.cpu_capability", "onnxruntime.version", "jax.version", "gpu.name"]
        rows = [[f"`{eid[:12]}`", *[_cell(str(fp.get(k, ""))) for k in keys]] for eid, fp in envs.items()]
        out += ["<details><summary>Environments</summary>", "",
                tabulate(rows, headers=["id", *keys], tablefmt="github"), "", "</details>", ""]
    # N-way sections (profiles, attribution, matrix) come before the failures: with many
    # environments they say in a few lines what hundreds of failure rows repeat.
    out += markdown_sections(report)
    failures = [r for r in results if r["status"] not in PASSING]
    if failures:
        out += ["### Failures", ""]
        for r in failures:
            title = f"{r['status']} · {r['check']} · `{r['variant']}`" + (f" · `{r['output']}`" if r["output"] else "")
            out += [f"<details><summary>{title}</summary>", "", "```", (r.get("message") or "").rstrip(), "```", ""]
            if r.get("env_diff"):
                out += [f"Environment differs: {_cell(env_diff_text(r['env_diff'], limit=12))}", ""]
            if r.get("reproduce"):
                out += ["Reproduce:", "", "```sh", r["reproduce"], "```", ""]
            out += ["</details>", ""]
    if results:
        rows = [[r["status"], r["check"], f"`{_cell(r['variant'] or '')}`", r["output"] or "", number(r.get("max_ulp")),
                 number(r.get("max_abs")), number(r.get("max_scaled")),
                 _cell(headline(r.get("message")) if r["status"] not in ("identical", "close") else "")]
                for r in results[:MAX_ROWS]]
        out += ["### Results", "", tabulate(rows, headers=["status", "check", "variant", "output", "max ulp", "max abs",
                                                            "max scaled", "note"], tablefmt="github",
                                            disable_numparse=True), ""]
        if len(results) > MAX_ROWS:
            out += [f"_{len(results) - MAX_ROWS} more results in the JSON report._", ""]
    skipped = skipped_reasons(report["results"])
    if skipped:
        out += ["<details><summary>Skipped</summary>", "", tabulate([[n, _cell(reason)] for reason, n in skipped],
                                                                    headers=["count", "reason"], tablefmt="github"),
                "", "</details>", ""]
    return "\n".join(out)
