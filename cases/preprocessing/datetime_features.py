"""Calendar features from epoch seconds (UTC): days since 1970-01-01, weekday, hour, month, day.

Python's ``datetime`` is the reference; numpy uses ``datetime64`` casts; torch and jax integer
arithmetic with Howard Hinnant's ``civil_from_days``. Half the instants are before 1970, where
every division must floor: numpy's ``//``, torch's ``//`` (floor since 1.13) and jax's ``//`` do.
Truncating division (C, C++ and Java ``/``, torch ``rounding_mode="trunc"``), what a port to a
hand-written service often uses, puts a pre-1970 instant on the next day, with the hour mirrored:
the ``torch-trunc`` implementation, declared a known divergence.
"""

from datetime import datetime, timezone

import numpy as np

from detharness import case

DAY = 86_400


def _instants(rng):
    return {"seconds": rng.integers(-631_152_000, 2_208_988_800, size=2000)}  # 1950 to 2040


c = case(
    "preprocessing/datetime_features",
    tags={"preprocessing"},
    description="2000 epoch seconds (1950-2040, UTC) to days, weekday (Monday 0), hour, month, day",
    inputs=_instants,
)


@c.impl("python", backend="numpy", reference=True, dtypes=("int64",))
def _(seconds):
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    stamps = [datetime.fromtimestamp(s, timezone.utc) for s in seconds.tolist()]
    return {
        "days": np.array([(t - epoch).days for t in stamps]),
        "weekday": np.array([t.weekday() for t in stamps]),
        "hour": np.array([t.hour for t in stamps]),
        "month": np.array([t.month for t in stamps]),
        "day": np.array([t.day for t in stamps]),
    }


@c.impl("numpy", backend="numpy", dtypes=("int64",))
def _(seconds):
    stamps = seconds.astype("datetime64[s]")
    days = stamps.astype("datetime64[D]")
    months = stamps.astype("datetime64[M]")
    return {
        "days": days.astype(np.int64),
        "weekday": (days.astype(np.int64) + 3) % 7,  # 1970-01-01 was a Thursday
        "hour": (stamps - days).astype(np.int64) // 3600,
        "month": months.astype(np.int64) % 12 + 1,
        "day": (days - months).astype(np.int64) + 1,
    }


def _civil(seconds, div):
    """Hinnant's civil_from_days with the given integer division; works on torch and jax arrays."""
    days = div(seconds, DAY)
    z = days + 719_468
    era = div(z, 146_097)
    doe = z - era * 146_097
    yoe = div(doe - div(doe, 1460) + div(doe, 36_524) - div(doe, 146_096), 365)
    doy = doe - (365 * yoe + div(yoe, 4) - div(yoe, 100))
    mp = div(5 * doy + 2, 153)
    return {
        "days": days,
        "weekday": (days + 3) % 7,
        "hour": div(seconds - days * DAY, 3600),
        "month": mp + 3 - 12 * (mp >= 10),
        "day": doy - div(153 * mp + 2, 5) + 1,
    }


@c.impl("torch", backend="torch", dtypes=("int64",))
def _(seconds):
    return _civil(seconds, lambda a, b: a // b)


@c.impl("jax", backend="jax", dtypes=("int64",))
def _(seconds):
    return _civil(seconds, lambda a, b: a // b)


@c.impl("torch-trunc", backend="torch", dtypes=("int64",))
def _(seconds):
    import torch

    return _civil(seconds, lambda a, b: torch.div(a, b, rounding_mode="trunc"))


c.known_divergence(
    "truncating integer division (C/C++/Java '/', torch rounding_mode='trunc') rounds pre-1970 "
    "instants toward 1970: the next day, a mirrored hour",
    variants="*[torch-trunc:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
