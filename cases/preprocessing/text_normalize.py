"""Unicode normalization of text before tokenization: NFKC, as SentencePiece's default ``nmt_nfkc``.

NFKC folds compatibility characters: the ligature "ﬁ" to "fi", full-width "Ｔｏｋｙｏ１２" to ASCII,
half-width katakana to full-width, "²" to "2", "Ⅳ" to "IV", and composes "e" + U+0301 to "é"
(UAX #15). It is by definition NFKD followed by canonical composition, the second implementation.
NFC composes but keeps compatibility characters, so a tokenizer trained on NFKC text meets
"ﬁnance" as an unknown token when serving normalizes with NFC: declared a known divergence.
"""

import unicodedata

import numpy as np

from detharness import case

WIDTH = 16
TEXTS = [
    "caf\u00e9", "cafe\u0301",  # composed and decomposed e-acute
    "\ufb01nance",  # fi ligature
    "\uff34\uff4f\uff4b\uff59\uff4f\uff11\uff12",  # full-width "Tokyo12"
    "x\u00b2+y\u00b2", "\u2163. Akt", "\uff76\uff80\uff76\uff85",  # superscript 2, roman IV, half-width katakana
    "\u212b", "A\u030a",  # Angstrom sign and A + combining ring: both become U+00C5
    "\u00bd cup", "na\u00efve", "\u01c5emal",  # one half, i-diaeresis, the Dz digraph
]


def _code_points(strings):
    return np.array(strings, dtype=f"<U{WIDTH}").view(np.uint32).reshape(len(strings), WIDTH)


def _strings(code_points):
    return np.ascontiguousarray(code_points).view(f"<U{WIDTH}")[:, 0].tolist()


c = case(
    "preprocessing/text_normalize",
    tags={"preprocessing"},
    description="NFKC-normalize 200 strings with ligatures, full-width, decomposed and compatibility characters",
    inputs=lambda rng: {"text": _code_points(rng.choice(TEXTS, size=200))},
)


@c.impl("nfkc", backend="numpy", reference=True, dtypes=("uint32",))
def _(text):
    return {"y": np.array([unicodedata.normalize("NFKC", s) for s in _strings(text)])}


@c.impl("nfkd+nfc", backend="numpy", dtypes=("uint32",))
def _(text):
    return {"y": np.array([unicodedata.normalize("NFC", unicodedata.normalize("NFKD", s)) for s in _strings(text)])}


@c.impl("nfc", backend="numpy", dtypes=("uint32",))
def _(text):
    return {"y": np.array([unicodedata.normalize("NFC", s) for s in _strings(text)])}


c.known_divergence(
    "NFC keeps compatibility characters that NFKC folds (ligatures, full-width and half-width forms, "
    "superscripts): a tokenizer trained on NFKC text sees unknown tokens",
    variants="*[nfc:*",
    checks=("backend",),  # against the reference; elsewhere it matches itself
)
