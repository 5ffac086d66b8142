"""Formatting shared by the text and markdown reports: numbers, headlines, environment diffs, skip reasons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from detharness.results import Status


def number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def headline(message: str | None) -> str:
    """A message's first line ("" for none, or one of white space only)."""
    return next(iter((message or "").strip().splitlines()), "")


def summary_line(report: Mapping[str, Any]) -> str:
    """The verdicts on what ran here, then what could not run here: ``29 known, 243 close, 186
    identical; 277 skipped in 30.1s`` (a CPU runner's skipped CUDA variants are no verdict)."""
    counts = report["summary"]
    parts = [f"{n} {status}" for status, n in counts.items() if status != Status.SKIPPED] or ["nothing compared"]
    line = ", ".join(parts)
    if counts.get(Status.SKIPPED.value):
        line += f"; {counts[Status.SKIPPED.value]} skipped"
    if report.get("seconds") is not None:
        line += f" in {report['seconds']:.1f}s"
    return line


def env_diff_text(diff: Mapping[str, Any] | None, limit: int = 4) -> str:
    if not diff:
        return ""
    items = [f"{k}: {v[0]} -> {v[1]}" for k, v in list(diff.items())[:limit]]
    if len(diff) > limit:
        items.append(f"(+{len(diff) - limit} more)")
    return "; ".join(items)


def as_float(value: Any) -> float | None:
    """A stored number (non-finite ones are the strings "inf", "nan") as a float; None, or anything a
    foreign bundle put there that is not a number, is None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _side(name: str | None) -> str:
    """``models/mlp[torch:cpu:float32:eager]`` -> ``torch:cpu:float32:eager``: the case is said once."""
    text = name or "?"
    return text[text.index("[") + 1:-1] if "[" in text and text.endswith("]") else text


def accuracy_line(r: Mapping[str, Any]) -> str | None:
    acc = r.get("accuracy")
    if not acc:
        return None
    from detharness.compare.accuracy import reading_text

    floats = {**acc, **{k: as_float(acc.get(k)) for k in ("candidate_error", "baseline_error", "ratio")}}
    # Across bundles the sides are the same variant in two environments: name the bundles.
    cand = r.get("candidate_label") or _side(r.get("variant"))
    base = r.get("baseline_label") or _side(acc.get("baseline"))
    if floats.get("reading") is None:
        if floats.get("candidate_error") is None:
            return None
        return (f"{cand} is {floats['candidate_error']:.3g} from float64 ({acc.get('metric', 'rms')}); no baseline "
                "at its dtype to compare with (declare the reference's dtypes=(\"float64\", DTYPE))")
    return reading_text(floats, cand, base)


def decision_line(r: Mapping[str, Any]) -> str | None:
    d = r.get("decision")
    if not d:
        return None
    line = f"{d.get('rule')}: {d.get('flips')} of {d.get('total')} decisions flip"
    budget = as_float(d.get("budget"))
    if budget:
        line += f" (budget {budget:.3g} of them)"
    if d.get("near_ties"):
        line += f"; {d['near_ties']} near ties (the reference's margin within tolerance)"
    return line


def shift_line(r: Mapping[str, Any]) -> str | None:
    if not r.get("shift"):
        return None
    from detharness.compare.shift import shift_text

    return shift_text({k: as_float(r["shift"].get(k)) for k in ("psi", "wasserstein", "jsd")})


def notable_lines(r: Mapping[str, Any]) -> list[str]:
    """What belongs in the brief reports about a result's measures, a sentence each: a decision
    flipped, the candidate is further from float64 than rounding explains, or a feature's PSI reads
    0.1 or more. Empty for everything else (-v, JSON and HTML have it all)."""
    d, acc, shift = r.get("decision"), r.get("accuracy"), r.get("shift")
    psi = as_float(shift.get("psi")) if isinstance(shift, Mapping) else None
    lines = [accuracy_line(r) if isinstance(acc, Mapping) and acc.get("reading") == "candidate-worse" else None,
             decision_line(r) if isinstance(d, Mapping) and d.get("flips") else None,
             shift_line(r) if psi is not None and psi >= 0.1 else None]
    return [line for line in lines if line]


def notable(r: Mapping[str, Any]) -> bool:
    return bool(notable_lines(r))


def measure_lines(r: Mapping[str, Any]) -> list[str]:
    """What the measures say about one result, a sentence each (accuracy, decisions, shift)."""
    return [line for line in (accuracy_line(r), decision_line(r), shift_line(r)) if line]


def skipped_reasons(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """Skipped results grouped by reason, most frequent first: fifty "no cuda device" rows on a
    CPU runner say one thing, so the reports say it once."""
    counts: dict[str, int] = {}
    for r in results:
        if r["status"] == Status.SKIPPED:
            reason = headline(r.get("message")) or "skipped"
            counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
