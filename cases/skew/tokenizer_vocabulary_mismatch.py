"""Skew: the serving tokenizer loads a different vocabulary file than the model was trained with.

Training: the tokenizer's ``vocab.txt`` was built from the 2023 corpus, ids by frequency. Serving:
the service image was rebuilt and fetched ``vocab.txt`` from the pipeline's latest run, built from
the 2024 corpus: the same words, re-ranked, plus new ones, so most ids shift by a few places and
the model's embedding rows no longer match the words. The tokenizing code is the same on both
sides; only the file differs. Fix: version the vocabulary with the model artifact (hash it into
the model's metadata and refuse to start on a mismatch).
"""

import re

import numpy as np

from detharness import case

WIDTH = 48
MAX_TOKENS = 10
VOCAB_2023 = ["[PAD]", "[UNK]", "the", "order", "was", "late", "refund", "my", "not", "delivery", ".", "!", "please"]
VOCAB_2024 = ["[PAD]", "[UNK]", "the", "order", "refund", "was", "my", "late", "delivery", "not", ".", "please", "!",
              "tracking"]
SENTENCES = ["The order was late!", "My refund, please.", "Delivery was not late.", "Tracking my order please",
             "The refund was not the order."]


def _code_points(strings):
    return np.array(strings, dtype=f"<U{WIDTH}").view(np.uint32).reshape(len(strings), WIDTH)


def _tokenize(code_points, vocabulary):
    index = {token: i for i, token in enumerate(vocabulary)}
    ids = np.zeros((len(code_points), MAX_TOKENS), dtype=np.int64)
    for row, text in enumerate(np.ascontiguousarray(code_points).view(f"<U{WIDTH}")[:, 0].tolist()):
        found = [index.get(t, 1) for t in re.findall(r"\w+|[^\w\s]", text.lower())[:MAX_TOKENS]]
        ids[row, :len(found)] = found
    return {"ids": ids}


c = case(
    "skew/tokenizer_vocabulary_mismatch",
    tags={"skew"},
    description="the same tokenizer with the 2023 vocabulary (training) and the 2024 one (serving)",
    inputs=lambda rng: {"text": _code_points(rng.choice(SENTENCES, size=200))},
)


@c.impl("training", backend="numpy", reference=True, dtypes=("uint32",))
def _(text):
    return _tokenize(text, VOCAB_2023)


@c.impl("serving", backend="numpy", dtypes=("uint32",))
def _(text):
    return _tokenize(text, VOCAB_2024)


c.known_divergence(
    "serving loads a rebuilt vocabulary: re-ranked and new words shift the token ids",
    variants="*[serving:*",
    checks=("backend",),  # against the training path; serving elsewhere matches itself
)
