"""Lowercasing text before tokenization: Python's ``str.lower`` and numpy's ``np.strings.lower``.

Both apply Unicode's full case mapping, final sigma included ("ΟΔΟΣ" -> "οδος", ending in "ς").
Two traps, each declared a known divergence below:

- numpy keeps an array's fixed width, and a mapping can grow: "İ" (U+0130) lowercases to "i" plus
  a combining dot, two code points, so "DİYARBAKIR" at the array's full width loses its last
  letter. Widening the array first makes numpy agree with Python.
- Lowercasing only A-Z (C's ``tolower``, a hand-written serving kernel, here in torch on code
  points) leaves "É", "Σ", "Ö" and full-width "Ａ" as they are.

Strings travel as zero-padded UTF-32 code points; outputs are strings, compared exactly.
"""

import numpy as np

from detharness import case

WIDTH = 12
# Turkish, Greek (final sigma), German (capital sharp s), French, the Dz digraph, full-width Latin.
WORDS = ["DİYARBAKIR", "İZMİR", "ΟΔΟΣ", "Straße", "STRAẞE", "Éclair", "KÖLN", "ǅemal", "Ａｂｃ", "HeLLo",
         "naïve"]


def _code_points(strings):
    return np.array(strings, dtype=f"<U{WIDTH}").view(np.uint32).reshape(len(strings), WIDTH)


def _strings(code_points):
    return np.ascontiguousarray(code_points).view(f"<U{WIDTH}")[:, 0]


c = case(
    "preprocessing/text_lowercase",
    tags={"preprocessing"},
    description="lowercase 200 words in German, Greek, Turkish and full-width Latin",
    inputs=lambda rng: {"text": _code_points(rng.choice(WORDS, size=200))},
)


@c.impl("python", backend="numpy", reference=True, dtypes=("uint32",))
def _(text):
    return {"y": np.array([s.lower() for s in _strings(text).tolist()])}


@c.impl("numpy-widened", backend="numpy", dtypes=("uint32",))
def _(text):
    # Only U+0130 grows when lowercased (to two code points): twice the width always holds the result.
    words = np.array(_strings(text).tolist())
    return {"y": np.strings.lower(words.astype(f"<U{2 * words.dtype.itemsize // 4}"))}


@c.impl("numpy", backend="numpy", dtypes=("uint32",))
def _(text):
    return {"y": np.strings.lower(np.array(_strings(text).tolist()))}


@c.impl("torch-ascii", backend="torch", dtypes=("uint32",))
def _(text):
    import torch

    points = text.long()
    lowered = torch.where((points >= ord("A")) & (points <= ord("Z")), points + 32, points)
    # Decoded back to text, as the service does before tokenizing.
    return {"y": np.ascontiguousarray(lowered.cpu().numpy().astype(np.uint32)).view(f"<U{WIDTH}")[:, 0]}


c.known_divergence(
    "numpy strings keep the array's fixed width: lowercase 'İ' is two code points, so a word at "
    "full width loses its last character",
    variants="*[numpy:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
c.known_divergence(
    "ASCII-only lowercasing (C tolower, a hand-written kernel) leaves non-ASCII capitals as they are",
    variants="*[torch-ascii:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
