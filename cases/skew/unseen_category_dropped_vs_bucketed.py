"""Skew: an unseen category bucketed as "other" in training, dropped to all zeros in serving.

Training: categories seen fewer than a threshold number of times, and any new one, go to an
``__other__`` column (sklearn's ``OneHotEncoder(handle_unknown="infrequent_if_exist")`` does the
same), so the model learned a weight for "other". Serving: the service one-hot encodes with
``pd.get_dummies(df).reindex(columns=train_columns, fill_value=0)``, the common recipe: a city the
model never saw matches no column and ``__other__`` stays 0, an all-zero row the model never met.
Fix: ship the fitted encoder (its vocabulary and the "other" rule) with the model and call it in
serving.
"""

import numpy as np

from detharness import case

WIDTH = 16
VOCABULARY = ["Berlin", "Hamburg", "Köln", "München"]  # columns 0..3; column 4 is __other__
UNSEEN = ["Leipzig", "Münster", "Bonn"]


def _code_points(strings):
    return np.array(strings, dtype=f"<U{WIDTH}").view(np.uint32).reshape(len(strings), WIDTH)


def _strings(code_points):
    return np.ascontiguousarray(code_points).view(f"<U{WIDTH}")[:, 0]


def _cities(rng):
    cities = np.where(rng.random(1000) < 0.15, rng.choice(UNSEEN, 1000), rng.choice(VOCABULARY, 1000))
    return {"city": _code_points(cities)}


c = case(
    "skew/unseen_category_dropped_vs_bucketed",
    tags={"skew"},
    description="city one-hot with an __other__ column: unseen cities bucketed vs dropped (15% unseen)",
    inputs=_cities,
)


@c.impl("training", backend="numpy", reference=True, dtypes=("uint32",))
def _(city):
    names = _strings(city)
    known = names[:, None] == np.array(VOCABULARY)
    return {"one_hot": np.concatenate([known, ~known.any(1, keepdims=True)], axis=1).astype(np.int64)}


@c.impl("serving", backend="numpy", dtypes=("uint32",))
def _(city):
    columns = [*VOCABULARY, "__other__"]
    names = _strings(city)
    dummies = {name: names == name for name in np.unique(names)}  # pd.get_dummies
    return {"one_hot": np.stack([dummies.get(col, np.zeros(len(names), bool)) for col in columns], 1).astype(np.int64)}


c.known_divergence(
    "get_dummies + reindex drops an unseen city to an all-zero row; training put it in __other__",
    variants="*[serving:*",
    checks=("backend",),  # against the training path; serving elsewhere matches itself
)
