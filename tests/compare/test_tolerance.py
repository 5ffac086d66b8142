"""Tolerance text: parsing, the canonical form, errors, defaults, combination."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detharness.compare import Tolerance
from detharness.compare.tolerance import AllOf, AnyOf, Close, Exact, Rule, Scaled, Ulp, format_number
from detharness.errors import DtypeError, ToleranceError, UsageError


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("exact", "exact"),
        ("EXACT", "exact"),
        ("ulp(4)", "ulp(4)"),
        (" ulp ( 4 ) ", "ulp(4)"),
        ("close(1e-5, 1e-6)", "close(1e-5, 1e-6)"),
        ("close(1.0E-05,0.000001)", "close(1e-5, 1e-6)"),
        ("close(rtol=1e-5, atol=1e-6)", "close(1e-5, 1e-6)"),
        ("close(atol=1e-6, rtol=1e-5)", "close(1e-5, 1e-6)"),
        ("close(1e-3)", "close(0.001, 0)"),
        ("close(1, 2)", "close(1, 2)"),
        ("scaled(1e-6)", "scaled(1e-6)"),
        ("ulp(4) | close(1e-5, 1e-6)", "ulp(4) | close(1e-5, 1e-6)"),
        ("ulp(4)|(close(1e-5,1e-6)|scaled(1e-7))", "ulp(4) | close(1e-5, 1e-6) | scaled(1e-7)"),
        ("ulp(4) & close(1e-5, 1e-6)", "ulp(4) & close(1e-5, 1e-6)"),
        ("ulp(4) | exact & scaled(1e-6)", "ulp(4) | exact & scaled(1e-6)"),
        ("(ulp(4) | exact) & scaled(1e-6)", "(ulp(4) | exact) & scaled(1e-6)"),
        ("ulp(4) @ 0.001", "ulp(4) @ 0.001"),
        ("ulp(4) @ 0.1%", "ulp(4) @ 0.001"),
        ("ulp(4) | close(1e-5, 1e-6) @ 1e-4", "ulp(4) | close(1e-5, 1e-6) @ 0.0001"),
        ("exact @ 0", "exact"),
        ("ulp(1) @ 100%", "ulp(1) @ 1"),
    ],
)
def test_parse_gives_the_canonical_form(text: str, canonical: str) -> None:
    assert str(Tolerance.parse(text)) == canonical
    assert Tolerance.parse(canonical) == Tolerance.parse(text)


def test_parse_builds_the_rule_tree() -> None:
    tolerance = Tolerance.parse("ulp(4) | close(1e-5, 1e-6) & scaled(2e-7) @ 0.5%")
    assert tolerance == Tolerance(AnyOf((Ulp(4), AllOf((Close(1e-5, 1e-6), Scaled(2e-7))))), 0.005)
    assert tolerance.leaves() == (Ulp(4), Close(1e-5, 1e-6), Scaled(2e-7))
    assert tolerance.needs_scale
    assert not Tolerance.parse("ulp(4)").needs_scale


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cannot parse tolerance '': empty text at position 0"),
        ("ulp", "cannot parse tolerance 'ulp': expected '(' but found end of text at position 3"),
        ("ulp(4", "cannot parse tolerance 'ulp(4': expected ')' but found end of text at position 5"),
        ("ulp(-1)", "cannot parse tolerance 'ulp(-1)': ulp() takes a whole number >= 0, got -1 at position 4"),
        ("ulp(1.5)", "cannot parse tolerance 'ulp(1.5)': ulp() takes a whole number >= 0, got 1.5 at position 4"),
        ("close()", "cannot parse tolerance 'close()': expected rtol but found ')' at position 6"),
        (
            "close(-1e-5, 0)",
            "cannot parse tolerance 'close(-1e-5, 0)': rtol must be a finite number >= 0, got -1e-5 at position 6",
        ),
        ("close(1e-5, inf)", "cannot parse tolerance 'close(1e-5, inf)': expected atol but found 'inf' at position 12"),
        (
            "close(rtol=1, rtol=2)",
            "cannot parse tolerance 'close(rtol=1, rtol=2)': unexpected argument 'rtol' at position 14",
        ),
        ("near(3)", "cannot parse tolerance 'near(3)': unknown rule 'near' at position 0"),
        ("ulp(4) ulp(5)", "cannot parse tolerance 'ulp(4) ulp(5)': unexpected 'ulp' at position 7"),
        ("ulp(4) |", "cannot parse tolerance 'ulp(4) |': expected a rule but found end of text at position 8"),
        (
            "ulp(4) @ 2",
            "cannot parse tolerance 'ulp(4) @ 2': the allowed fraction must be between 0 and 1 (0% and 100%), got 2 at position 9",
        ),
        (
            "ulp(4) @ 101%",
            "cannot parse tolerance 'ulp(4) @ 101%': the allowed fraction must be between 0 and 1 (0% and 100%), got 101 at position 9",
        ),
        ("ulp(4) @ 0.1 | exact", "cannot parse tolerance 'ulp(4) @ 0.1 | exact': unexpected '|' at position 13"),
        ("ulp(4); exact", "cannot parse tolerance 'ulp(4); exact': unexpected ';' at position 6"),
    ],
    ids=repr,
)
def test_bad_text_is_one_line_naming_the_text_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ToleranceError) as raised:
        Tolerance.parse(text)
    hint = (
        "; expected something like 'exact', 'ulp(4)', 'close(1e-5, 1e-6)', 'scaled(1e-6)', "
        "joined by | or &, optionally '@ 0.001'"
    )
    assert str(raised.value) == message + hint
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, UsageError) and isinstance(raised.value, ValueError)


def test_parse_refuses_what_is_not_text() -> None:
    with pytest.raises(ToleranceError, match="a tolerance is text like"):
        Tolerance.parse(4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dtype", "canonical"),
    [
        ("float16", "close(0.001, 1e-5)"),
        ("bfloat16", "close(0.016, 1e-5)"),
        ("float32", "close(1.3e-6, 1e-5)"),
        ("float64", "close(1e-7, 1e-7)"),
        ("complex64", "close(1.3e-6, 1e-5)"),
        ("complex128", "close(1e-7, 1e-7)"),
        ("int8", "exact"),
        ("int64", "exact"),
        ("uint32", "exact"),
        ("bool", "exact"),
        ("str", "exact"),
    ],
)
def test_defaults_are_torch_testings_table(dtype: str, canonical: str) -> None:
    assert str(Tolerance.default_for(dtype)) == canonical


def test_default_for_an_unknown_dtype_is_an_error() -> None:
    with pytest.raises(DtypeError, match="no default tolerance for unknown dtype 'flaot32'"):
        Tolerance.default_for("flaot32")


def test_coerce() -> None:
    assert Tolerance.coerce(None, "float32") == Tolerance.close(1.3e-6, 1e-5)
    assert Tolerance.coerce("ulp(2)", "float32") == Tolerance.ulp(2)
    same = Tolerance.scaled(1e-6)
    assert Tolerance.coerce(same, "int32") is same
    with pytest.raises(ToleranceError, match=r"a tolerance is text like 'ulp\(4\)' or a Tolerance, got 3\.0"):
        Tolerance.coerce(3.0, "float32")  # type: ignore[arg-type]


def test_constructors_and_operators_match_the_text() -> None:
    built = (Tolerance.ulp(4) | Tolerance.close(1e-5, 1e-6) & Tolerance.scaled(1e-7)).allowing(0.001)
    assert built == Tolerance.parse("ulp(4) | close(1e-5, 1e-6) & scaled(1e-7) @ 0.001")
    assert Tolerance.exact() == Tolerance.parse("exact")
    assert hash(Tolerance.ulp(3)) == hash(Tolerance.parse("ulp(3)"))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Tolerance.ulp(-1), "ulp() needs a whole number >= 0, got -1"),
        (lambda: Tolerance.ulp(1.5), "ulp() needs a whole number >= 0, got 1.5"),  # type: ignore[arg-type]
        (lambda: Tolerance.close(float("nan")), "rtol must be a finite number >= 0, got nan"),
        (lambda: Tolerance.close(0, -1), "atol must be a finite number >= 0, got -1"),
        (lambda: Tolerance.scaled(float("inf")), "scaled()'s factor must be a finite number >= 0, got inf"),
        (
            lambda: Tolerance.exact().allowing(1.5),
            "the allowed fraction of mismatching elements must be in [0, 1], got 1.5",
        ),
        (
            lambda: Tolerance.exact().allowing(0.1) | Tolerance.ulp(1),
            "a fraction applies to a whole tolerance: combine the rules first, then call .allowing()",
        ),
        (lambda: Tolerance.exact() | "ulp(1)", "cannot combine a Tolerance with 'ulp(1)'"),
    ],
)
def test_constructor_errors(build: object, message: str) -> None:
    with pytest.raises(ToleranceError) as raised:
        build()  # type: ignore[operator]
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("fraction", "total", "allowed"),
    [(0.0, 1000, 0), (0.001, 999, 0), (0.001, 1000, 1), (0.29, 100, 29), (0.1, 30, 3), (1.0, 7, 7)],
)
def test_allowed_mismatches_rounds_down_exactly(fraction: float, total: int, allowed: int) -> None:
    assert Tolerance.exact().allowing(fraction).allowed_mismatches(total) == allowed


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-5, "1e-5"),
        (1.3e-6, "1.3e-6"),
        (0.016, "0.016"),
        (2.0, "2"),
        (1e16, "1e16"),
        (1e22, "1e22"),
        (0.0, "0"),
        (123.5, "123.5"),
    ],
)
def test_format_number_is_short_and_exact(value: float, text: str) -> None:
    assert format_number(value) == text
    assert float(text) == value


budgets = st.floats(min_value=0, max_value=1e30, allow_nan=False, allow_infinity=False)
leaves: st.SearchStrategy[Rule] = st.one_of(
    st.just(Exact()),
    st.builds(Ulp, st.integers(0, 2**64)),
    st.builds(Close, budgets, budgets),
    st.builds(Scaled, budgets),
)
rules = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda parts: AnyOf(tuple(parts)), st.lists(children, min_size=2, max_size=3)),
        st.builds(lambda parts: AllOf(tuple(parts)), st.lists(children, min_size=2, max_size=3)),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(rule=rules, fraction=st.one_of(st.just(0.0), st.floats(min_value=0, max_value=1)))
def test_canonical_text_parses_back_to_an_equal_tolerance(rule: Rule, fraction: float) -> None:
    tolerance = Tolerance(rule, fraction)
    text = str(tolerance)
    again = Tolerance.parse(text)
    assert str(again) == text
    # Nested alternatives flatten, so compare through the canonical text, and once more parsed.
    assert Tolerance.parse(str(again)) == again
    if not any(isinstance(part, type(rule)) for part in getattr(rule, "rules", ())):
        assert again.fraction == tolerance.fraction
