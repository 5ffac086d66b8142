"""A small word tokenizer with a vocabulary: lowercase, split into words and punctuation, look up ids.

BERT's basic tokenizer shape: words are runs of word characters, each other non-space character is
a token of its own; ids come from a fixed vocabulary, ``[UNK]`` (1) for the rest, padded with
``[PAD]`` (0) or truncated to 12 tokens. Training uses a regex; the service a hand-written
character scanner. Python's ``\\w`` is ``str.isalnum()`` *or* the underscore (re docs), so the
scanner checks both: ``isalnum()`` alone would split "user_id" in three.
"""

import re

import numpy as np

from detharness import case

WIDTH = 64
MAX_TOKENS = 12
VOCABULARY = ["[PAD]", "[UNK]", "the", "a", "to", "of", "and", "order", "user_id", "café", "zürich", "2024",
              "shipped", "late", "is", "my", "was", "not", ",", ".", "!", "?", "'", "-", "s", "it"]
SENTENCES = ["The order was shipped late!", "My user_id is 2024, not 2042.", "Café in Zürich? Not late.",
             "It's the ORDER of the café", "Order-2024 was NOT shipped...", "naïve  tokens\tand\nnewlines",
             "ＦＵＬＬ width, and ünïcödé"]


def _code_points(strings):
    return np.array(strings, dtype=f"<U{WIDTH}").view(np.uint32).reshape(len(strings), WIDTH)


def _strings(code_points):
    return np.ascontiguousarray(code_points).view(f"<U{WIDTH}")[:, 0].tolist()


def _ids(token_lists):
    index = {token: i for i, token in enumerate(VOCABULARY)}
    ids = np.zeros((len(token_lists), MAX_TOKENS), dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        found = [index.get(t, 1) for t in tokens[:MAX_TOKENS]]
        ids[row, :len(found)] = found
    return {"ids": ids, "length": np.array([min(len(t), MAX_TOKENS) for t in token_lists], dtype=np.int64)}


c = case(
    "preprocessing/text_tokenize",
    tags={"preprocessing"},
    description="tokenize 100 sentences into 12 ids from a 26-entry vocabulary ([UNK] = 1, [PAD] = 0)",
    inputs=lambda rng: {"text": _code_points(rng.choice(SENTENCES, size=100))},
)


@c.impl("regex", backend="numpy", reference=True, dtypes=("uint32",))
def _(text):
    return _ids([re.findall(r"\w+|[^\w\s]", s.lower()) for s in _strings(text)])


@c.impl("scanner", backend="numpy", dtypes=("uint32",))
def _(text):
    token_lists = []
    for s in _strings(text):
        tokens, word = [], ""
        for ch in s.lower():
            if ch.isalnum() or ch == "_":
                word += ch
                continue
            if word:
                tokens.append(word)
                word = ""
            if not ch.isspace():
                tokens.append(ch)
        token_lists.append([*tokens, word] if word else tokens)
    return _ids(token_lists)
