"""Bisecting intermediates: the first layer whose output leaves bitwise equality, and the error curve.

Pure numpy and :mod:`detharness.compare`; knows nothing of backends, bundles or cases. A run with
intermediates gives, per variant and output, a list of ``(layer name, array)`` in program order
(:data:`Layer`); two such lists, a baseline and a candidate, are paired by name and compared layer
by layer:

* :func:`curve` gives one JSON-safe row per layer: its status under the tolerance, its ULP and
  scaled error, whether it is bitwise identical (the error curve of the HTML report).
* :func:`first_divergence` gives the first layer in program order that is not bitwise identical,
  with its error, the first layer beyond the tolerance, and, where shadow outputs were recorded
  (each candidate layer re-run on the baseline's input to it), how much of the error that layer
  introduces itself and how much it inherits from upstream. ``None`` when every paired layer is
  bitwise identical.
* :func:`line` is the short line the text and markdown reports print.
* :func:`introduced_by_layer` gives introduced and inherited error for every layer with a shadow.

Pairing: the baseline's order is program order. A name on one side only is listed with status
``missing`` and left out of the search. A name that occurs more than once (a module called twice)
is paired by occurrence and labelled ``name#1``, ``name#2``, ... from its second call on; shadow
outputs are looked up under the same labels. Shapes, and dtypes that :func:`~detharness.compare.compare`
cannot judge against each other (float against int, int32 against int64), give ``mismatch``; two
float dtypes are compared as ``compare`` does (ULPs in the candidate's format), at best ``close``.

Scaled errors are :attr:`Verdict.max_scaled <detharness.compare.Verdict.max_scaled>`: the largest
absolute error divided by the largest finite magnitude of the reference side. ``introduced`` is
``shadow[layer]`` against ``baseline[layer]`` (the layer's own error on identical inputs);
``inherited`` is ``candidate[layer]`` against ``shadow[layer]`` (what changed upstream did to it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from detharness._io import to_jsonable
from detharness.compare import Status, Tolerance, Verdict, compare
from detharness.compare.scan import CHUNK_ELEMENTS
from detharness.dtypes import dtype_name

__all__ = ["Layer", "curve", "first_divergence", "introduced_by_layer", "line"]

Layer = tuple[str, np.ndarray]
ToleranceArg = str | Tolerance | Mapping[str, str | Tolerance | None] | None

_BEYOND = (Status.DIVERGED, Status.MISMATCH)


# -- pairing -------------------------------------------------------------------------------------


def _labelled(layers: Iterable[Layer]) -> list[tuple[str, np.ndarray]]:
    """``(label, array)`` in order, a repeated name labelled ``name#k`` from its second occurrence."""
    seen: dict[str, int] = {}
    out: list[tuple[str, np.ndarray]] = []
    for name, array in layers:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append((name if count == 0 else f"{name}#{count}", np.asarray(array)))
    return out


def _pairs(
    baseline: Sequence[Layer], candidate: Sequence[Layer]
) -> list[tuple[str, int | None, np.ndarray | None, np.ndarray | None]]:
    """``(label, index in the baseline, baseline array, candidate array)``: the baseline's order, then
    names only in the candidate (index None). A side without the name holds None."""
    base = _labelled(baseline)
    cand = dict(_labelled(candidate))
    base_labels = {label for label, _ in base}
    rows: list[tuple[str, int | None, np.ndarray | None, np.ndarray | None]] = [
        (label, index, array, cand.get(label)) for index, (label, array) in enumerate(base)
    ]
    rows += [(label, None, None, array) for label, array in cand.items() if label not in base_labels]
    return rows


def _tolerance_for(tolerance: ToleranceArg, array: np.ndarray) -> str | Tolerance | None:
    """The tolerance for one layer: a text or Tolerance as is; a mapping looked up by the layer's
    dtype name, then ``"default"`` (a case's per-dtype tolerance); None is the dtype's default."""
    if tolerance is None or isinstance(tolerance, (str, Tolerance)):
        return tolerance
    try:
        name = dtype_name(array.dtype)
    except Exception:  # an unsupported dtype: compare() says why
        name = ""
    for key in (name, "default"):
        if key in tolerance:
            return tolerance[key]
    return None


def _first_difference(expected: np.ndarray, actual: np.ndarray) -> list[int] | None:
    """The index of the first element that is not bitwise equal (None where all are, or shapes differ)."""
    if expected.shape != actual.shape:
        return None
    if expected.dtype != actual.dtype:
        # Across dtypes, "bitwise" means against the reference rounded to the candidate's dtype.
        return compare(expected, actual, "exact").first_mismatch_index
    size = int(expected.size)
    if size == 0:
        return None
    itemsize = expected.dtype.itemsize
    flat_expected = np.ascontiguousarray(expected).reshape(-1).view(np.uint8).reshape(size, itemsize)
    flat_actual = np.ascontiguousarray(actual).reshape(-1).view(np.uint8).reshape(size, itemsize)
    for start in range(0, size, CHUNK_ELEMENTS):
        stop = start + CHUNK_ELEMENTS
        differ = np.flatnonzero((flat_expected[start:stop] != flat_actual[start:stop]).any(axis=1))
        if differ.size:
            return [int(i) for i in np.unravel_index(start + int(differ[0]), expected.shape)]
    return None


def _row(label: str, index: int | None, verdict: Verdict | None, first: list[int] | None) -> dict[str, Any]:
    if verdict is None:
        return {
            "layer": label,
            "index": index,
            "status": Status.MISSING.value,
            "max_ulp": None,
            "max_scaled": None,
            "first_mismatch_index": None,
            "identical": False,
        }
    row = {
        "layer": label,
        "index": index,
        "status": verdict.status.value,
        "max_ulp": verdict.max_ulp,
        "max_scaled": verdict.max_scaled,
        "first_mismatch_index": first,
        "identical": verdict.status is Status.IDENTICAL,
    }
    result: dict[str, Any] = to_jsonable(row)
    return result


def _compared(
    baseline: Sequence[Layer], candidate: Sequence[Layer], tolerance: ToleranceArg
) -> list[tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]]:
    out: list[tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]] = []
    for label, index, expected, actual in _pairs(baseline, candidate):
        if expected is None or actual is None:
            out.append((_row(label, index, None, None), expected, actual))
            continue
        verdict = compare(expected, actual, _tolerance_for(tolerance, actual))
        first = None if verdict.status is Status.IDENTICAL else _first_difference(expected, actual)
        out.append((_row(label, index, verdict, first), expected, actual))
    return out


# -- the API -------------------------------------------------------------------------------------


def curve(baseline: Sequence[Layer], candidate: Sequence[Layer], *, tolerance: ToleranceArg) -> list[dict[str, Any]]:
    """One row per layer: ``{"layer", "index", "status", "max_ulp", "max_scaled",
    "first_mismatch_index", "identical"}``, JSON-safe (non-finite numbers as ``"inf"``, ``"nan"``).

    Rows come in the baseline's order (``index`` is the position in the baseline's list), then the
    layers only in the candidate (``index`` None); a layer on one side only has status ``missing``
    and no figures. ``first_mismatch_index`` is the first element that is not bitwise equal (None
    where the layer is identical or the shapes differ). ``tolerance`` is a tolerance text (or
    :class:`~detharness.compare.Tolerance`), a mapping of dtype names (and ``"default"``) to one,
    or None for each dtype's default.
    """
    return [row for row, _, _ in _compared(baseline, candidate, tolerance)]


def _scaled(expected: np.ndarray | None, actual: np.ndarray | None) -> Any:
    if expected is None or actual is None:
        return None
    return to_jsonable(compare(expected, actual).max_scaled)


def first_divergence(
    baseline: Sequence[Layer],
    candidate: Sequence[Layer],
    *,
    tolerance: ToleranceArg,
    shadow: Mapping[str, np.ndarray] | None = None,
    approximate: bool = False,
) -> dict[str, Any] | None:
    """The first paired layer, in the baseline's order, that is not bitwise identical; None if none.

    Keys: ``layer``, ``layer_index`` (position in the baseline's list, from 0),
    ``first_mismatch_index`` (first element not bitwise equal), ``status`` (``close``,
    ``diverged`` or ``mismatch`` under ``tolerance``), ``max_ulp``, ``max_scaled``,
    ``introduced_scaled`` and ``inherited_scaled`` (None unless ``shadow`` holds that layer),
    ``first_beyond_tolerance`` (``{"layer", "layer_index"}`` of the first layer that is
    ``diverged`` or ``mismatch``, or None), ``approximate`` (copied through: the captures are
    known not to reproduce the compiled output exactly) and ``layers_compared`` (how many layers
    were paired). JSON-safe.
    """
    return _divergence(_compared(baseline, candidate, tolerance), shadow, approximate)


def _divergence(rows: Sequence[tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]],
                shadow: Mapping[str, np.ndarray] | None, approximate: bool) -> dict[str, Any] | None:
    """:func:`first_divergence` from the compared layers of :func:`_compared`."""
    paired = [(row, expected, actual) for row, expected, actual in rows if row["status"] != Status.MISSING.value]
    first = next(((row, e, a) for row, e, a in paired if not row["identical"]), None)
    if first is None:
        return None
    row, expected, actual = first
    beyond = next((r for r, _, _ in paired if r["status"] in _BEYOND), None)
    introduced = inherited = None
    if shadow is not None and row["layer"] in shadow:
        shadowed = np.asarray(shadow[row["layer"]])
        introduced = _scaled(expected, shadowed)
        inherited = _scaled(shadowed, actual)
    return {
        "layer": row["layer"],
        "layer_index": row["index"],
        "first_mismatch_index": row["first_mismatch_index"],
        "status": row["status"],
        "max_ulp": row["max_ulp"],
        "max_scaled": row["max_scaled"],
        "introduced_scaled": introduced,
        "inherited_scaled": inherited,
        "first_beyond_tolerance": None if beyond is None else {"layer": beyond["layer"], "layer_index": beyond["index"]},
        "approximate": bool(approximate),
        "layers_compared": len(paired),
    }


def introduced_by_layer(
    baseline: Sequence[Layer], candidate: Sequence[Layer], shadow: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Per paired layer, in the baseline's order: ``{"layer", "index", "introduced_scaled",
    "inherited_scaled"}`` (both None where ``shadow`` lacks the layer or a structure differs)."""
    out: list[dict[str, Any]] = []
    for label, index, expected, actual in _pairs(baseline, candidate):
        if expected is None or actual is None:
            continue
        shadowed = None if label not in shadow else np.asarray(shadow[label])
        out.append(
            {
                "layer": label,
                "index": index,
                "introduced_scaled": _scaled(expected, shadowed),
                "inherited_scaled": _scaled(shadowed, actual),
            }
        )
    return out


# -- text ----------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    """A scaled error in two significant digits: ``3.1e-7``, ``0``, ``inf``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    number = float(value)
    if number == 0:
        return "0"
    if not math.isfinite(number):
        return str(number)
    text = f"{number:.2g}"
    mantissa, marker, exponent = text.partition("e")
    if marker:
        sign = "-" if exponent.startswith("-") else ""
        text = f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"
    return text


def _where(name: Any, index: Any, total: Any) -> str:
    if index is None:
        return str(name)
    of = f" of {total}" if isinstance(total, int) and total > index else ""
    return f"{name!r} (layer {index + 1}{of})"


def line(fd: Mapping[str, Any] | None, *, layers_compared: int | None = None) -> str:
    """The short line of the text and markdown reports for a :func:`first_divergence` result.

    ``first differs at 'encoder.layers.0.self_attn' (layer 7 of 42), 2,077 ULP, introduced 3.1e-7 of
    the output's scale, inherited 0; within tolerance throughout``; layers are counted from 1 here
    (``layer_index`` + 1). For None: ``every layer bitwise identical (42 compared)``, the count
    shown where ``layers_compared`` is given.
    """
    if fd is None:
        if layers_compared == 0:
            return "no layer in common to compare"
        count = f" ({layers_compared} compared)" if layers_compared is not None else ""
        return f"every layer bitwise identical{count}"
    total = fd.get("layers") or fd.get("layers_compared")
    parts = [f"first differs at {_where(fd.get('layer'), fd.get('layer_index'), total)}"]
    if fd.get("status") == Status.MISMATCH.value:
        parts.append("mismatch (shape, dtype or NaN/inf pattern)")
    elif fd.get("max_ulp") is not None:
        ulp = fd["max_ulp"]
        parts.append(f"{ulp:,} ULP" if isinstance(ulp, int) else f"{ulp} ULP")
    if fd.get("introduced_scaled") is not None or fd.get("inherited_scaled") is not None:
        parts.append(f"introduced {_short(fd.get('introduced_scaled'))} of the output's scale")
        parts.append(f"inherited {_short(fd.get('inherited_scaled'))}")
    elif fd.get("max_scaled") is not None:
        parts.append(f"{_short(fd['max_scaled'])} of the output's scale")
    text = ", ".join(parts)
    beyond = fd.get("first_beyond_tolerance")
    if beyond is None:
        text += "; within tolerance throughout"
    elif beyond.get("layer") == fd.get("layer"):
        text += "; beyond tolerance there"
    else:
        text += f"; beyond tolerance from {_where(beyond.get('layer'), beyond.get('layer_index'), total)}"
    if fd.get("approximate"):
        text += " (approximate: the captures do not reproduce the compiled output)"
    fused = [str(name) for name in fd.get("fused") or []]
    if fused:
        text += f"; folded away in an export (fused): {', '.join(repr(name) for name in fused[:6])}"
    if fd.get("fusion_changed"):
        text += "; recording every layer changed ONNX Runtime's fusions"
    return text


# -- between recorded variants ------------------------------------------------------------------


def _layers(v: Any) -> list[Layer]:
    return [(name, np.asarray(v.layers[name])) for name in v.layers]


def variant_divergence(baseline: Any, candidate: Any) -> dict[str, Any] | None:
    """:func:`first_divergence` between two recorded variants (their ``layers``, the candidate's
    ``shadow``), with the error curve (``curve``: max scaled error per layer, in order) for the
    reports; None where either recorded no layers or nothing differs."""
    if baseline is None or candidate is None or not baseline.layers or not candidate.layers:
        return None
    tolerances = [t for t in (candidate.tolerances or {}).values() if t]
    tolerance = tolerances[0] if tolerances else None
    approximate = any(bool((v.intermediates or {}).get("info", {}).get("approximate")) for v in (baseline, candidate))
    base, cand = _layers(baseline), _layers(candidate)
    rows = _compared(base, cand, tolerance)  # each layer compared once: the search and the curve
    found = _divergence(rows, candidate.shadow or None, approximate)
    if found is None:
        return None
    found["curve"] = [{"layer": row["layer"], "max_scaled": row["max_scaled"], "status": row["status"]}
                      for row, _, _ in rows if row["status"] != Status.MISSING.value]
    infos = [(v.intermediates or {}).get("info") or {} for v in (baseline, candidate)]
    found["layers"] = len(base)
    found["fused"] = sorted({str(name) for info in infos for name in info.get("fused") or []})
    found["fusion_changed"] = any(bool(info.get("fusion_changed")) for info in infos)
    return found


def layers_in_common(pairs: Mapping[str, tuple[Any, Any]]) -> dict[str, int]:
    """Per variant id, how many layer names both sides recorded (what a bisect compares)."""
    return {vid: len(set(b.layers) & set(c.layers)) for vid, (b, c) in pairs.items()}


def attach(results: Sequence[Any], pairs: Mapping[str, tuple[Any, Any]]) -> list[Any]:
    """``results`` with ``first_divergence`` filled from the layers of the variants they compare
    (``pairs``: variant id -> (baseline record, candidate record)); computed once per variant."""
    found: dict[str, dict[str, Any] | None] = {}
    out = []
    for result in results:
        if result.variant in pairs and result.output is not None:
            if result.variant not in found:
                found[result.variant] = variant_divergence(*pairs[result.variant])
            if found[result.variant] is not None:
                result = result.replace(first_divergence=found[result.variant])
        out.append(result)
    return out
