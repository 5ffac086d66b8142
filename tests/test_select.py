from __future__ import annotations

import pytest

from detharness.errors import UsageError
from detharness.select import compile_expression

ID = "models/softmax[torch:cpu:float16:eager]"
KEYWORDS = {"model", "torch", "cpu", "float16", "eager"}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("softmax", True),
        ("SOFTMAX", True),
        ("layer_norm", False),
        ("softmax and torch", True),
        ("softmax and not torch", False),
        ("jax or float16", True),
        ("not (jax or numpy)", True),
        ("models/softmax[torch:cpu:float16:eager]", True),
        ("model and (cuda or float16)", True),
        ("[torch:cpu", True),
    ],
)
def test_expression_matches_ids_and_keywords(expression: str, expected: bool) -> None:
    assert compile_expression(expression)(ID, KEYWORDS) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "-k: empty expression"),
        ("softmax and", "-k 'softmax and': unexpected end of expression"),
        ("(softmax", "-k '(softmax': unexpected end of expression"),
        ("softmax)", "-k 'softmax)': unexpected ')'"),
        ("or torch", "-k 'or torch': unexpected 'or'"),
    ],
)
def test_bad_expressions_are_usage_errors(expression: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        compile_expression(expression)
    assert str(info.value) == message
