"""The HTML report: one self-contained file that opens offline, from disk or a CI artifact.

What it holds, in order: a verdict banner (counts, what failed, one sentence per failure), the
case x environment grid and the attribution (compare of several bundles, matrix), one collapsed
section per case (opened where something failed) with its figures, plots, tracebacks and reproduce
commands, the skip reasons, and the environments with the keys that differ marked.

How it stays trustworthy:

- every style is inline and every plot a hand-written inline SVG (:mod:`detharness.report.svg`), so
  the page makes no request; a ``Content-Security-Policy`` meta tag allows nothing else: no
  source but inline styles, ``data:`` images and the one script whose SHA-256 it names, so even an
  escaping mistake could not run code;
- the Jinja2 environment autoescapes every template (set explicitly: ``select_autoescape`` leaves an
  unknown extension unescaped), so a case id, output name, message, traceback or environment value
  from user code or a foreign bundle is text, never markup;
- nothing depends on the script: sections are ``<details>`` and the plots are SVG, so the page reads
  the same with JavaScript off; the script only adds a filter box;
- the same report gives the same bytes: no timestamps, stable order, numbers formatted one way.

jinja2 is imported here only, when an HTML report is asked for: everything else runs without it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from detharness.errors import UsageError
from detharness.report._format import (
    accuracy_line,
    as_float,
    decision_line,
    headline,
    notable,
    number,
    shift_line,
    skipped_reasons,
)
from detharness.report.sections import (
    IDENTICAL_ROWS,
    between,
    emulated_environments,
    environment_labels,
    known_reasons,
)
from detharness.results import QUIET, Status

#: Failures that get a sentence in the banner (the first BANNER_OPEN shown, the others folded); the
#: rest are counted.
BANNER_FAILURES = 200
BANNER_OPEN = 12
#: Results that differ and get a detail block (message, histogram, plots) in report order, worst
#: first; the others keep their table row. A matrix has thousands of close results.
MAX_DETAILED = 400
#: Fingerprint keys shown first in the environments table.
_ENV_FIRST = ("python.version", "machine.arch", "machine.emulated", "cpu.model", "numpy.version", "torch.version",
              "torch.cpu_capability", "onnxruntime.version", "jax.version", "gpu.name")
_COLOURS = {"identical": "#d8f0dc", "close": "#eaf6d6", "known": "#e3e8f0", "skipped": "#eeeeee", "missing": "#fff1c2",
            "flipped": "#ffd8a8", "diverged": "#ffc9c9", "mismatch": "#ffb4a2", "error": "#e8b4d8"}
_INSTALL = "the HTML report needs jinja2: pip install 'detharness[html]'"


def _template_text(name: str) -> str:
    return resources.files("detharness.report").joinpath("templates", name).read_text(encoding="utf-8")


def script_hash(script: str) -> str:
    """The CSP source of an inline script: ``'sha256-<base64 of the SHA-256 of its text>'``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy(script: str) -> str:
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src {script_hash(script)}; "
            "base-uri 'none'; form-action 'none'")


def require() -> None:
    """Raise a usage error naming the install command where jinja2 is missing."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise UsageError(_INSTALL) from None


def render(report: Mapping[str, Any]) -> str:
    require()
    import jinja2
    from markupsafe import Markup

    # autoescape=True for every template this environment loads, whatever its name.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, loader=jinja2.FunctionLoader(_template_text))
    env.filters["number"] = number
    script = _template_text("report.js")
    template = env.get_template("report.html.j2")
    return template.render(**page(report), script=Markup(script), csp=content_security_policy(script),
                           css=Markup(_css()), svg=lambda text: Markup(text))


def _css() -> str:
    # One rule per status, in the severity order, from the Status enum (a new status gets a colour).
    rules = [f".s-{s.value}{{background:{_COLOURS.get(s.value, '#f0f0f0')}}}" for s in Status]
    return _template_text("report.css") + "\n".join(rules) + "\n"


def _is_failure(result: Mapping[str, Any]) -> bool:
    return Status(result["status"]) not in QUIET


def _share(result: Mapping[str, Any]) -> str:
    total, bad = result.get("total"), result.get("mismatched")
    if not isinstance(total, int) or not isinstance(bad, int) or total <= 0:
        return ""
    return "0" if bad == 0 else f"{100 * bad / total:.3g}%"


def _min_passing(result: Mapping[str, Any]) -> str:
    needed = result.get("min_passing") or {}
    parts = [f"{kind} {number(needed[kind])}" for kind in ("ulp", "rtol", "atol", "scaled") if needed.get(kind) is not None]
    return " · ".join(parts)


def _row(index: int, r: Mapping[str, Any], figures: Mapping[int, Mapping[str, Any]], detailed: bool) -> dict[str, Any]:
    from detharness.report import svg

    plots: list[tuple[str, str, str]] = []
    if detailed and r.get("ulp_histogram") and Status(r["status"]) not in (Status.IDENTICAL, Status.SKIPPED):
        plots.append(("ulp-histogram", "ULP distances (log2 bins)", svg.histogram(r["ulp_histogram"])))
    fd = r.get("first_divergence")
    if detailed and isinstance(fd, Mapping) and isinstance(fd.get("curve"), list) and fd["curve"]:
        points = [(str(row.get("layer")), as_float(row.get("max_scaled"))) for row in fd["curve"]]
        first = next((i for i, (name, _) in enumerate(points) if name == str(fd.get("layer"))), None)
        plots.append(("layer-curve", "max scaled error by layer", svg.layer_curve(points, first)))
    fig = figures.get(index) if detailed else None
    if fig is not None:
        if fig.get("scatter"):
            plots.append(("scatter", "|error| against |reference|", svg.scatter(fig["scatter"])))
        if fig.get("heatmap"):
            plots.append(("heatmap", "|error| by position", svg.heatmap(fig["heatmap"])))
    return {
        "status": r["status"], "check": r["check"], "variant": r["variant"] or "", "output": r.get("output") or "",
        "baseline": r.get("baseline_label") or r.get("baseline") or "",
        "candidate": r.get("candidate_label") or r.get("candidate") or "",
        "figures": [number(r.get(k)) for k in ("max_ulp", "p99_ulp", "max_abs", "max_rel", "max_scaled")]
        + [_share(r), r.get("tolerance") or ""], "min_passing": _min_passing(r),
        "tolerance": r.get("tolerance") or "", "message": (r.get("message") or "").rstrip(),
        "headline": headline(r.get("message")), "failed": _is_failure(r), "traceback": (r.get("traceback") or "").rstrip(),
        "reproduce": r.get("reproduce") if _is_failure(r) else None, "plots": plots,
        "known_reason": r.get("known_reason") or "", "detailed": detailed, "stale": r.get("stale_known") or "",
        "env_diff": [(k, v[0], v[1]) for k, v in (r.get("env_diff") or {}).items()][:12],
        # What the measures and the bisection say, a sentence each.
        "extras": [(name, text) for name, text in zip(("against float64", "decisions", "shift", "where it starts"),
                                                      (accuracy_line(r), decision_line(r), shift_line(r),
                                                       _divergence_line(r)), strict=True) if text],
        "notable": notable(r),
    }


def _divergence_line(r: Mapping[str, Any]) -> str | None:
    fd = r.get("first_divergence")
    if not isinstance(fd, Mapping):
        return None
    from detharness.bisect import line

    return line(fd)


def _detailed(results: list[Mapping[str, Any]]) -> set[int]:
    """Which results get a detail block: every failure, then the others that differ, worst first,
    up to :data:`MAX_DETAILED` in all."""
    differ = [i for i, r in enumerate(results) if r["status"] not in (Status.SKIPPED, Status.IDENTICAL)]
    failing = [i for i in differ if _is_failure(results[i])]
    quiet = [i for i in differ if not _is_failure(results[i])]
    return set(failing) | set(quiet[:max(0, MAX_DETAILED - len(failing))])


def _cases(report: Mapping[str, Any], figures: Mapping[int, Mapping[str, Any]], detailed: set[int]
           ) -> list[dict[str, Any]]:
    grouped: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for index, r in enumerate(report["results"]):
        grouped.setdefault(r.get("case") or "(no case)", []).append((index, r))
    cases = []
    for case_id, items in grouped.items():
        statuses = [Status(r["status"]) for _, r in items]
        ran = [s for s in statuses if s != Status.SKIPPED]
        worst = max(ran or statuses, key=lambda s: s.severity)
        counts: dict[str, int] = {}
        for s in sorted(statuses, key=lambda s: -s.severity):
            counts[s.value] = counts.get(s.value, 0) + 1
        shown = [(i, r) for i, r in items if r["status"] not in (Status.SKIPPED, Status.IDENTICAL)]
        identical = [(i, r) for i, r in items if r["status"] == Status.IDENTICAL]
        skipped = skipped_reasons([r for _, r in items])
        cases.append({
            "id": case_id, "worst": worst.value, "counts": counts, "open": any(_is_failure(r) for _, r in items),
            "rows": [_row(i, r, figures, i in detailed) for i, r in shown + identical[:IDENTICAL_ROWS]],
            "identical_more": max(0, len(identical) - IDENTICAL_ROWS), "skipped": skipped,
        })
    # Worst first, then by id: the order a reader triages in.
    return sorted(cases, key=lambda c: (-Status(c["worst"]).severity, c["id"]))


def _environments(report: Mapping[str, Any]) -> dict[str, Any]:
    envs: Mapping[str, Mapping[str, Any]] = report.get("environments") or {}
    ids = list(envs)
    named = environment_labels(report)
    labels = {e: named.get(e, "") for e in ids}
    keys = sorted({k for fp in envs.values() for k in fp}, key=lambda k: (k not in _ENV_FIRST,
                                                                         _ENV_FIRST.index(k) if k in _ENV_FIRST else 0, k))
    rows, unset = [], []
    for key in keys:
        values = [envs[e].get(key) for e in ids]
        if all(v in (None, "") for v in values):
            unset.append(key)  # a variable set nowhere: named once, not a row of blanks
            continue
        rows.append({"key": key, "values": ["" if v is None else str(v) for v in values],
                     "differs": len({repr(v) for v in values}) > 1})
    rows.sort(key=lambda row: not row["differs"])  # what differs first
    for e in ids:  # an emulated environment says so wherever it is named
        if envs[e].get("machine.emulated"):
            labels[e] = f"{labels[e]} (emulated)".strip()
    return {"columns": [{"id": e[:12], "label": labels[e]} for e in ids], "rows": rows, "unset": unset,
            "differing": sum(row["differs"] for row in rows)}


def _grid(report: Mapping[str, Any]) -> dict[str, Any] | None:
    matrix = report.get("matrix")
    if not matrix:
        return None
    envs = list(matrix["environments"])
    rows = [{"case": case, "cells": [(env, cells.get(env, "")) for env in envs]}
            for case, cells in matrix.get("cases", {}).items()]
    same = sum(all(status == Status.IDENTICAL for _, status in row["cells"]) for row in rows)
    return {"baseline": matrix["baseline"], "environments": envs, "rows": rows, "identical": same,
            "attribution": [{"line": a.get("line", ""), "status": a.get("status", ""), "keys": a.get("keys") or [],
                             "members": len(a.get("members") or [])} for a in report.get("attribution") or []]}


def _banner(report: Mapping[str, Any]) -> dict[str, Any]:
    summary: Mapping[str, int] = report["summary"]
    failures = [r for r in report["results"] if _is_failure(r)]
    sentences = []
    for r in failures[:BANNER_FAILURES]:
        where = f"{r['check']} {r['variant']}" + (f" output {r['output']}" if r.get("output") else "") + between(r)
        sentences.append({"status": r["status"], "where": where, "what": headline(r.get("message"))})
    ran = {s: n for s, n in summary.items() if s != Status.SKIPPED}
    verdict = "failed" if failures else "passed"
    return {"counts": [(s, n) for s, n in summary.items() if s != Status.SKIPPED], "ran": sum(ran.values()), "skipped": summary.get(Status.SKIPPED.value, 0),
            "skip_reasons": skipped_reasons(report["results"]), "failures": sentences,
            "failures_more": max(0, len(failures) - BANNER_FAILURES), "failed": len(failures), "verdict": verdict,
            "known": known_reasons(report), "emulated": emulated_environments(report)}


def page(report: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template shows, computed here so the template only lays it out."""
    figures: Mapping[int, Mapping[str, Any]] = report.get("figures") or {}
    detailed = _detailed(report["results"])
    differing = sum(r["status"] not in (Status.SKIPPED, Status.IDENTICAL) for r in report["results"])
    return {
        # No duration and no timestamp: the same bundles give the same bytes (the text and JSON
        # reports carry the run's seconds).
        "title": report.get("title") or "detharness",
        "bundles": [str(b) for b in report.get("bundles") or ([report["bundle"]] if report.get("bundle") else [])],
        "banner": _banner(report), "grid": _grid(report), "profiles": report.get("profiles") or [],
        "cases": _cases(report, figures, detailed), "environments": _environments(report),
        "figures_more": report.get("figures_more", 0), "figured": len(figures),
        "undetailed": differing - len(detailed),
        "banner_open": BANNER_OPEN,
        "headers": ["max ULP", "p99 ULP", "max abs", "max rel", "max scaled", "outside tolerance", "tolerance"],
    }
