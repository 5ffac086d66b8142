"""Hand-written SVG plots for the HTML report: a ULP histogram, an error scatter, a heatmap.

Each function returns a small, self-contained ``<svg>`` element as a string, drawn from numbers
only: every coordinate is formatted to one decimal and nothing depends on time, ids or a plotting
library's state, so the same data gives the same bytes. Text that comes from data (bucket labels,
shapes) is HTML-escaped here; the HTML template marks the result safe. The heatmap's cells are one
inline PNG (a ``data:`` image, which the page's Content-Security-Policy allows) rather than a
thousand ``<rect>`` elements: a 32 x 32 grid costs a few hundred bytes instead of 60 KB.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 300, 150
_LEFT, _BOTTOM, _TOP, _RIGHT = 44, 30, 8, 8


def _f(value: float) -> str:
    return f"{value:.1f}"


def _svg(body: list[str], label: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
            f"<title>{escape(label)}</title>{''.join(body)}</svg>")


def _power(exponent: int) -> str:
    return "1" if exponent == 0 else f"1e{exponent}"


def histogram(buckets: Mapping[str, int], *, title: str = "ULP distances") -> str:
    """Bars per power-of-two bucket (``0``, ``1``, ``2-3``, ...), heights on a log scale so a
    bucket of one element still shows beside one of a million; each bar's count in its tooltip."""
    items = [(str(k), int(v)) for k, v in buckets.items() if int(v) > 0]
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    body = [f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - _RIGHT}" y2="{_TOP + plot_h}" class="axis"/>']
    if not items:
        body.append(f'<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle">no distances</text>')
        return _svg(body, title)
    top = math.log10(max(v for _, v in items)) + 1
    step = plot_w / len(items)
    for i, (label, count) in enumerate(items):
        h = plot_h * (math.log10(count) + 1) / top
        x = _LEFT + i * step
        body.append(f'<rect x="{_f(x + 1)}" y="{_f(_TOP + plot_h - h)}" width="{_f(max(step - 2, 1))}" '
                    f'height="{_f(h)}" class="bar"><title>{escape(label)} ULP: {count:,}</title></rect>')
        if len(items) <= 12 or i % math.ceil(len(items) / 12) == 0:
            short = label.split("-")[0] if "-" in label else label
            body.append(f'<text x="{_f(x + step / 2)}" y="{HEIGHT - 16}" text-anchor="middle" class="tick">'
                        f"{escape(short if short != 'nan' else 'NaN')}</text>")
    body.append(f'<text x="{_LEFT}" y="{HEIGHT - 3}" class="label">ULP (bucket start, log2 bins); '
                "bar height: log count</text>")
    return _svg(body, title)


def _log_axis(values: Sequence[float]) -> tuple[int, int]:
    positive = [v for v in values if v > 0]
    if not positive:
        return -1, 0
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    return (low, high) if high > low else (low, low + 1)


def scatter(points: Sequence[Sequence[float]], *, title: str = "|error| against |reference|") -> str:
    """|error| against |reference| on log-log axes (exact zeros on the axis lines): errors that grow
    with the value are rounding; a few points far above the rest are outliers."""
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    (x0, x1), (y0, y1) = _log_axis(xs), _log_axis(ys)

    def sx(v: float) -> float:
        return _LEFT + (0.0 if v <= 0 else plot_w * (math.log10(v) - x0) / (x1 - x0))

    def sy(v: float) -> float:
        return _TOP + plot_h - (0.0 if v <= 0 else plot_h * (math.log10(v) - y0) / (y1 - y0))

    body = [f'<path d="M{_LEFT} {_TOP}V{_TOP + plot_h}H{WIDTH - _RIGHT}" class="axis"/>']
    body += [f'<text x="{_LEFT - 3}" y="{_f(sy(10.0 ** e) + 3)}" text-anchor="end" class="tick">{_power(e)}</text>'
             for e in _ticks(y0, y1)]
    body += [f'<text x="{_f(sx(10.0 ** e))}" y="{HEIGHT - 16}" text-anchor="middle" class="tick">{_power(e)}</text>'
             for e in _ticks(x0, x1)]
    # One path of zero-length segments with round caps: a dot per point at a fifth of the bytes of <circle>s.
    dots = "".join(f"M{_f(sx(x))} {_f(sy(y))}h0" for x, y in zip(xs, ys, strict=True))
    if dots:
        body.append(f'<path d="{dots}" class="dots"/>')
    body.append(f'<text x="{_LEFT}" y="{HEIGHT - 3}" class="label">|reference| (x) vs |error| (y), log-log; '
                f"{len(points)} points</text>")
    return _svg(body, title)


def layer_curve(points: Sequence[tuple[str, float | None]], first: int | None, *,
                title: str = "max scaled error by layer") -> str:
    """The error of each layer in program order (log scale; bitwise identical layers on the axis),
    the first that differs marked: an error that jumps at one layer started there, one that grows
    layer by layer is inherited."""
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    values = [v for _, v in points if v is not None and v > 0 and math.isfinite(v)]
    y0, y1 = _log_axis(values)
    step = plot_w / max(len(points) - 1, 1)

    def sy(v: float | None) -> float:
        if v is None or not math.isfinite(v):
            return float(_TOP)
        return _TOP + plot_h - (0.0 if v <= 0 else plot_h * (math.log10(v) - y0) / (y1 - y0))

    path = "".join(f"{'M' if i == 0 else 'L'}{_f(_LEFT + i * step)} {_f(sy(v))}" for i, (_, v) in enumerate(points))
    body = [f'<path d="M{_LEFT} {_TOP}V{_TOP + plot_h}H{WIDTH - _RIGHT}" class="axis"/>',
            *[f'<text x="{_LEFT - 3}" y="{_f(sy(10.0 ** e) + 3)}" text-anchor="end" class="tick">{_power(e)}</text>'
              for e in _ticks(y0, y1)]]
    if path:
        body.append(f'<path d="{path}" class="curve"/>')
    if first is not None and 0 <= first < len(points):
        x = _f(_LEFT + first * step)
        body += [f'<line x1="{x}" y1="{_TOP}" x2="{x}" y2="{_TOP + plot_h}" class="mark"/>',
                 f'<text x="{x}" y="{HEIGHT - 16}" text-anchor="middle" class="tick">{escape(points[first][0])}</text>']
    body.append(f'<text x="{_LEFT}" y="{HEIGHT - 3}" class="label">{len(points)} layers in program order; '
                "the line: the first that differs</text>")
    return _svg(body, title)


def _ticks(low: int, high: int, most: int = 5) -> list[int]:
    step = max(1, math.ceil((high - low) / most))
    return list(range(low, high + 1, step))


def _png(rows: Sequence[Sequence[tuple[int, int, int]]]) -> bytes:
    """An 8-bit RGB PNG of ``rows`` (zlib at a fixed level: the same pixels give the same bytes)."""
    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# Light to dark: no error is white, the largest error dark red, on a square-root scale (an error a
# hundredth of the largest is still visible; a log scale painted rounding noise as dark as the worst).
_LOW, _HIGH = (255, 247, 236), (127, 0, 0)


def _colour(value: Any, top: float) -> tuple[int, int, int]:
    if value == "inf":
        return (0, 0, 0)
    if value <= 0 or top <= 0:
        return _LOW
    t = min(1.0, math.sqrt(value / top))
    return tuple(round(lo + (hi - lo) * t) for lo, hi in zip(_LOW, _HIGH, strict=True))  # type: ignore[return-value]


def heatmap(data: Mapping[str, Any], *, title: str = "|error| by position") -> str:
    """|error| over rows x last axis (max-downsampled), white for none, dark red for the largest,
    black for a NaN or infinity against a number."""
    cells = data["cells"]
    top = float(data["max"])
    png = base64.b64encode(_png([[_colour(v, top) for v in row] for row in cells])).decode("ascii")
    size = 120
    shape = " x ".join(str(n) for n in data["shape"])
    grid = f"{len(cells)} x {len(cells[0])}"
    note = f"{shape}" + ("" if (len(cells), len(cells[0])) == (data["rows"], data["cols"]) else f", as {grid} blocks (max)")
    body = [f'<image x="{_LEFT}" y="{_TOP}" width="{size}" height="{size}" preserveAspectRatio="none" '
            f'style="image-rendering:pixelated" href="data:image/png;base64,{png}"/>',
            f'<rect x="{_LEFT}" y="{_TOP}" width="{size}" height="{size}" class="frame"/>',
            f'<text x="{_LEFT + size + 8}" y="{_TOP + 12}" class="tick">max |error|</text>',
            f'<text x="{_LEFT + size + 8}" y="{_TOP + 26}" class="tick">{escape(_num(top))}</text>',
            f'<text x="{_LEFT}" y="{HEIGHT - 3}" class="label">{escape(note)}</text>']
    return _svg(body, title)


def _num(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"
