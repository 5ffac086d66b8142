"""Skew: age computed at the training snapshot's date in training, at "now" in serving.

Training: the feature job computes each customer's age in whole years at the snapshot date the
labels were taken (2023-06-30), vectorized with numpy ``datetime64`` as a pandas notebook would.
Serving: the service computes age at ``date.today()``, here the fixed 2024-11-15 standing in for
"now" so the case is reproducible; the formula is the same calendar age. The model learned from
ages as of the snapshot; in serving every customer is a year or two older, and the gap grows with
the model's age. Fix: compute ages at the request time in both (each training row at its own
event date, point in time), or feed the birth year and let the model learn.
"""

from datetime import date

import numpy as np

from detharness import case

SNAPSHOT = np.datetime64("2023-06-30")
SERVING_NOW = date(2024, 11, 15)  # date.today() in the service; fixed so the case is reproducible


def _birth_dates(rng):
    days = rng.integers(np.datetime64("1940-01-01").astype(int), np.datetime64("2005-12-31").astype(int), size=1000)
    return {"birth_day": days.astype(np.int64)}  # days since 1970-01-01


c = case(
    "skew/age_from_snapshot_vs_now",
    tags={"skew"},
    description="age in whole years from 1000 birth dates, at 2023-06-30 vs at 'now' (2024-11-15)",
    inputs=_birth_dates,
)


@c.impl("training", backend="numpy", reference=True, dtypes=("int64",))
def _(birth_day):
    born = birth_day.astype("datetime64[D]")
    years = SNAPSHOT.astype("datetime64[Y]").astype(int) - born.astype("datetime64[Y]").astype(int)
    # The birthday has not come yet this year when its day of the year is later than the snapshot's.
    day_of_year = born - born.astype("datetime64[Y]")
    not_yet = day_of_year > SNAPSHOT - SNAPSHOT.astype("datetime64[Y]").astype("datetime64[D]")
    return {"age": (years - not_yet).astype(np.int64)}


@c.impl("serving", backend="numpy", dtypes=("int64",))
def _(birth_day):
    today = SERVING_NOW
    ages = []
    for days in birth_day.tolist():
        born = date.fromordinal(date(1970, 1, 1).toordinal() + days)
        ages.append(today.year - born.year - ((today.month, today.day) < (born.month, born.day)))
    return {"age": np.array(ages, dtype=np.int64)}


c.known_divergence(
    "serving computes age at 'now', training at the snapshot date: customers are 1-2 years older",
    variants="*[serving:*",
    checks=("backend",),  # against the training path; serving elsewhere matches itself
)
