"""Local time features in Europe/Berlin from UTC instants, across daylight saving time changes.

The reference asks ``zoneinfo`` for each instant. numpy, torch and jax do what pandas' ``tz_convert``
does: build the zone's table of offset changes from the tz database (here through ``zoneinfo``),
find each instant's entry with ``searchsorted`` and add the offset. A third of the instants lie
within two hours of a change (the last Sundays of March and October, 01:00 UTC). A service
configured with a fixed "CET, UTC+1" is an hour off all summer: the ``fixed-offset``
implementation, declared a known divergence. Needs the system tz database or the ``tzdata`` package;
without one the variants are skipped.
"""

from datetime import datetime, timedelta, timezone

import numpy as np

from detharness import case
from detharness.backends.base import UnsupportedVariant

ZONE = "Europe/Berlin"
START, END = 1_672_531_200, 1_767_225_600  # 2023-01-01 and 2026-01-01, UTC
DAY = 86_400


def _last_sunday_0100_utc(year, month):
    last = datetime(year, month + 1, 1, 1, tzinfo=timezone.utc) - timedelta(days=1)
    return int((last - timedelta(days=(last.weekday() + 1) % 7)).timestamp())


def _instants(rng):
    changes = [_last_sunday_0100_utc(y, m) for y in (2023, 2024, 2025) for m in (3, 10)]
    near = rng.choice(changes, size=1000) + rng.integers(-7200, 7200, size=1000)
    return {"seconds": np.concatenate([near, rng.integers(START, END, size=2000)]).astype(np.int64)}


def _zone():
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(ZONE)
    except ZoneInfoNotFoundError:
        raise UnsupportedVariant(f"no tz database for {ZONE} here (pip install tzdata)") from None


def _offset_table(zone):
    """UTC instants from which the zone's offset holds, and the offsets, for [START, END)."""

    def offset(t):
        return int(datetime.fromtimestamp(t, zone).utcoffset().total_seconds())

    starts, offsets = [START], [offset(START)]
    for day in range(START + DAY, END, DAY):  # offsets change at most once a day
        if offset(day) != offsets[-1]:
            lo, hi = day - DAY, day  # bisect to the second of the change
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offsets[-1] else (lo, mid)
            starts.append(hi)
            offsets.append(offset(hi))
    return np.array(starts, dtype=np.int64), np.array(offsets, dtype=np.int64)


def _features(local_seconds, local_days, offset):
    return {"hour": (local_seconds - local_days * DAY) // 3600, "weekday": (local_days + 3) % 7, "offset": offset}


c = case(
    "preprocessing/datetime_timezone_dst",
    tags={"preprocessing"},
    description="3000 UTC instants (2023-2025) to Europe/Berlin local hour, weekday and UTC offset",
    inputs=_instants,
)


@c.impl("zoneinfo", backend="numpy", reference=True, dtypes=("int64",))
def _(seconds):
    zone = _zone()
    local = [datetime.fromtimestamp(s, zone) for s in seconds.tolist()]
    return {
        "hour": np.array([t.hour for t in local], dtype=np.int64),
        "weekday": np.array([t.weekday() for t in local], dtype=np.int64),
        "offset": np.array([int(t.utcoffset().total_seconds()) for t in local], dtype=np.int64),
    }


@c.impl("numpy", backend="numpy", dtypes=("int64",))
def _(seconds):
    starts, offsets = _offset_table(_zone())
    offset = offsets[np.searchsorted(starts, seconds, side="right") - 1]
    local = seconds + offset
    return _features(local, local // DAY, offset)


@c.impl("torch", backend="torch", dtypes=("int64",))
def _(seconds):
    import torch

    starts, offsets = (torch.from_numpy(a).to(seconds.device) for a in _offset_table(_zone()))
    offset = offsets[torch.searchsorted(starts, seconds, right=True) - 1]
    local = seconds + offset
    return _features(local, local // DAY, offset)


@c.impl("jax", backend="jax", dtypes=("int64",))
def _(seconds):
    import jax.numpy as jnp

    starts, offsets = (jnp.asarray(a) for a in _offset_table(_zone()))
    offset = offsets[jnp.searchsorted(starts, seconds, side="right") - 1]
    local = seconds + offset
    return _features(local, local // DAY, offset)


@c.impl("fixed-offset", backend="numpy", dtypes=("int64",))
def _(seconds):
    local = seconds + 3600
    return _features(local, local // DAY, np.full_like(seconds, 3600))


c.known_divergence(
    "a fixed UTC+1 offset ignores daylight saving time: local hours are one hour off from late March "
    "to late October",
    variants="*[fixed-offset:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
