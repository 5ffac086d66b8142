"""Tolerances: the rule an element must meet, and how many elements may miss it.

A tolerance is written as text in case files, on the command line and in reports, so the text form
is the primary one. Grammar (whitespace is free; ``&`` binds tighter than ``|``)::

    tolerance := rule [ "@" fraction ]
    rule      := all ( "|" all )*                  an element passes if any alternative passes
    all       := term ( "&" term )*                an element passes if every part passes
    term      := "exact"                           the same bytes
               | "ulp(" count ")"                  at most count representable values apart
               | "close(" rtol "," atol ")"        |actual - expected| <= atol + rtol * |expected|
               | "scaled(" k ")"                   |actual - expected| <= k * max|expected|
               | "(" rule ")"
    fraction  := number [ "%" ]                    the share of elements allowed to miss the rule

``close`` also takes keywords, ``close(rtol=1e-5, atol=1e-6)``, and ``close(rtol)`` means atol 0.
``@ 0.001`` and ``@ 0.1%`` both allow one element in a thousand to miss the rule (rounded down: an
output of 999 elements may then have none). The fraction applies to the whole rule, never to one
alternative; it never excuses a structural mismatch (a NaN against a number, an infinity against a
finite value), which no tolerance accepts.

``scaled(k)`` divides the error by the largest finite magnitude of the expected output: the judge
for sums that cancel near zero, where ULP counts and relative errors explode though the result is
as good as the arithmetic allows.

``exact`` means the same bytes, so it tells ``+0`` from ``-0`` and one NaN payload from another;
``ulp(0)`` is the same check with those two differences forgiven. Across dtypes (a float16
candidate against a float64 reference) it compares with the reference rounded to the candidate's
dtype. On integers and bools ``ulp(n)`` allows ``|actual - expected| <= n`` (the spacing of integers
is 1); on strings only equality exists, and every rule is read as ``exact``.

``str(tolerance)`` is the canonical form, and ``Tolerance.parse(str(t)) == t`` always holds:
numbers are written in Python's shortest round-trip form (``1e-05`` as ``1e-5``), nested
alternatives are flattened (``a | (b | c)`` is ``a | b | c``), and a fraction of 0 is left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import NoReturn

from detharness.dtypes import ALL_DTYPES
from detharness.errors import DtypeError, ToleranceError


def format_number(value: float) -> str:
    """The shortest text that reads back as exactly ``value``: ``1e-5``, ``0.016``, ``2``."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    mantissa, exponent_marker, exponent = text.partition("e")
    if exponent_marker:
        sign = "-" if exponent.startswith("-") else ""
        text = f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"
    return text


class Rule:
    """What one element must satisfy. Subclasses are frozen dataclasses, compared by value."""

    # How tightly the rule's text binds: an alternative inside a conjunction needs parentheses.
    precedence = 3

    def leaves(self) -> Iterator[Rule]:
        """The ``exact``, ``ulp``, ``close`` and ``scaled`` rules this rule is made of."""
        yield self


@dataclass(frozen=True)
class Exact(Rule):
    """The same bytes."""

    def __str__(self) -> str:
        return "exact"


@dataclass(frozen=True)
class Ulp(Rule):
    """At most ``budget`` representable values apart (see :func:`~detharness.compare.ulp_distance`)."""

    budget: int

    def __str__(self) -> str:
        return f"ulp({self.budget})"


@dataclass(frozen=True)
class Close(Rule):
    """``|actual - expected| <= atol + rtol * |expected|``, computed in float64."""

    rtol: float
    atol: float

    def __str__(self) -> str:
        return f"close({format_number(self.rtol)}, {format_number(self.atol)})"


@dataclass(frozen=True)
class Scaled(Rule):
    """``|actual - expected| <= factor * max|expected|`` (largest finite magnitude of the reference)."""

    factor: float

    def __str__(self) -> str:
        return f"scaled({format_number(self.factor)})"


@dataclass(frozen=True)
class AnyOf(Rule):
    """Passes where at least one of ``rules`` passes."""

    rules: tuple[Rule, ...]
    precedence = 1

    def leaves(self) -> Iterator[Rule]:
        for rule in self.rules:
            yield from rule.leaves()

    def __str__(self) -> str:
        return " | ".join(str(rule) for rule in self.rules)


@dataclass(frozen=True)
class AllOf(Rule):
    """Passes where every one of ``rules`` passes."""

    rules: tuple[Rule, ...]
    precedence = 2

    def leaves(self) -> Iterator[Rule]:
        for rule in self.rules:
            yield from rule.leaves()

    def __str__(self) -> str:
        return " & ".join(f"({rule})" if rule.precedence < self.precedence else str(rule) for rule in self.rules)


def any_of(rules: list[Rule]) -> Rule:
    """An :class:`AnyOf`, flattened, so that equal text always means an equal object."""
    flat: list[Rule] = []
    for rule in rules:
        flat.extend(rule.rules if isinstance(rule, AnyOf) else (rule,))
    return flat[0] if len(flat) == 1 else AnyOf(tuple(flat))


def all_of(rules: list[Rule]) -> Rule:
    """An :class:`AllOf`, flattened like :func:`any_of`."""
    flat: list[Rule] = []
    for rule in rules:
        flat.extend(rule.rules if isinstance(rule, AllOf) else (rule,))
    return flat[0] if len(flat) == 1 else AllOf(tuple(flat))


# torch.testing.assert_close's defaults (rtol, atol), the table users already know. Complex
# dtypes take the tolerance of their components, as torch does.
_DEFAULT_CLOSE: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}
_EXACT_DTYPES = frozenset(ALL_DTYPES) - frozenset(_DEFAULT_CLOSE) | {"str"}


def _check_budget(value: float, what: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ToleranceError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class Tolerance:
    """An element-wise rule plus the share of elements allowed to miss it.

    Build one from text with :meth:`parse` (grammar in the module docstring) or from the
    constructors ``Tolerance.exact()``, ``.ulp(n)``, ``.close(rtol, atol)``, ``.scaled(k)``,
    combined with ``|`` and ``&`` and relaxed with :meth:`allowing`. Immutable and hashable;
    ``str()`` gives the canonical text.
    """

    rule: Rule
    fraction: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise ToleranceError(f"a Tolerance needs a Rule, got {self.rule!r}")
        fraction = float(self.fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ToleranceError(
                f"the allowed fraction of mismatching elements must be in [0, 1], got {self.fraction!r}"
            )
        object.__setattr__(self, "fraction", fraction)

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def exact(cls) -> Tolerance:
        return cls(Exact())

    @classmethod
    def ulp(cls, budget: int) -> Tolerance:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ToleranceError(f"ulp() needs a whole number >= 0, got {budget!r}")
        return cls(Ulp(budget))

    @classmethod
    def close(cls, rtol: float, atol: float = 0.0) -> Tolerance:
        return cls(Close(_check_budget(rtol, "rtol"), _check_budget(atol, "atol")))

    @classmethod
    def scaled(cls, factor: float) -> Tolerance:
        return cls(Scaled(_check_budget(factor, "scaled()'s factor")))

    def allowing(self, fraction: float) -> Tolerance:
        """The same rule with ``fraction`` of the elements allowed to miss it."""
        return Tolerance(self.rule, fraction)

    def _combinable(self, other: object) -> Tolerance:
        if not isinstance(other, Tolerance):
            raise ToleranceError(f"cannot combine a Tolerance with {other!r}")
        if self.fraction or other.fraction:
            raise ToleranceError(
                "a fraction applies to a whole tolerance: combine the rules first, then call .allowing()"
            )
        return other

    def __or__(self, other: object) -> Tolerance:
        return Tolerance(any_of([self.rule, self._combinable(other).rule]))

    def __and__(self, other: object) -> Tolerance:
        return Tolerance(all_of([self.rule, self._combinable(other).rule]))

    # -- text ----------------------------------------------------------------------------------

    def __str__(self) -> str:
        if self.fraction:
            return f"{self.rule} @ {format_number(self.fraction)}"
        return str(self.rule)

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """The tolerance ``text`` describes; :class:`~detharness.errors.ToleranceError` if none."""
        if not isinstance(text, str):
            raise ToleranceError(f"a tolerance is text like 'ulp(4) | close(1e-5, 1e-6)', got {text!r}")
        return _Parser(text).tolerance()

    @classmethod
    def default_for(cls, dtype_name: str) -> Tolerance:
        """torch.testing's default for float dtypes, ``exact`` for integers, bools and strings."""
        if dtype_name in _DEFAULT_CLOSE:
            rtol, atol = _DEFAULT_CLOSE[dtype_name]
            return cls(Close(rtol, atol))
        if dtype_name in _EXACT_DTYPES:
            return cls(Exact())
        raise DtypeError(
            f"no default tolerance for unknown dtype {dtype_name!r}; "
            f"known: {', '.join(sorted(_EXACT_DTYPES | set(_DEFAULT_CLOSE)))}"
        )

    @classmethod
    def coerce(cls, value: str | Tolerance | None, dtype_name: str) -> Tolerance:
        """``value`` as a Tolerance: parsed if text, the dtype's default if None."""
        if value is None:
            return cls.default_for(dtype_name)
        if isinstance(value, Tolerance):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        raise ToleranceError(f"a tolerance is text like 'ulp(4)' or a Tolerance, got {value!r}")

    # -- what the comparator asks ----------------------------------------------------------------

    def leaves(self) -> tuple[Rule, ...]:
        return tuple(self.rule.leaves())

    @property
    def needs_scale(self) -> bool:
        """Whether judging an element needs the reference's largest magnitude first."""
        return any(isinstance(leaf, Scaled) for leaf in self.rule.leaves())

    def allowed_mismatches(self, total: int) -> int:
        """How many of ``total`` elements may miss the rule: ``floor(fraction * total)``, exactly."""
        return floor_share(self.fraction, total)


_TOKEN = re.compile(
    r"\s*(?:(?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<word>[A-Za-z_]+)|(?P<symbol>[()|&@,%=]))"
)


def floor_share(fraction: float, total: int) -> int:
    """``floor(fraction * total)``, exactly: ``Fraction(repr(0.29)) * 100`` is 29 where floats give
    28.999... (the rounding of tolerance fractions and decision budgets alike)."""
    return math.floor(Fraction(repr(fraction)) * total)


class TokenParser:
    """The scanner and the token steps of the text grammars here (tolerances, and decisions in
    :mod:`detharness.compare.decision`): numbers, words and the symbols of ``token_re``. A
    subclass says what a failure raises (:meth:`_error`)."""

    def __init__(self, text: str, token_re: re.Pattern[str]) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        position = 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position == len(text):
                break
            match = token_re.match(text, position)
            if match is None:
                raise self._error(f"unexpected {text[position]!r}", position)
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            position = match.end()
        self.index = 0
        self.number_position = 0  # where the last number read starts, for errors about its value

    def _error(self, what: str, position: int) -> Exception:
        raise NotImplementedError

    def _fail(self, what: str, position: int | None = None) -> NoReturn:
        if position is None:
            position = self.tokens[self.index][2] if self.index < len(self.tokens) else len(self.text)
        raise self._error(what, position)

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _describe_next(self) -> str:
        token = self._peek()
        return "end of text" if token is None else repr(token[1])

    def _accept(self, symbol: str) -> bool:
        token = self._peek()
        if token is not None and token[0] in ("symbol", "word") and token[1].lower() == symbol:
            self.index += 1
            return True
        return False

    def _expect(self, symbol: str) -> None:
        if not self._accept(symbol):
            self._fail(f"expected {symbol!r} but found {self._describe_next()}")

    def _number(self, what: str) -> str:
        token = self._peek()
        if token is None or token[0] != "number":
            self._fail(f"expected {what} but found {self._describe_next()}")
        self.index += 1
        self.number_position = token[2]
        return token[1]


class _Parser(TokenParser):
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str) -> None:
        super().__init__(text, _TOKEN)

    def _error(self, what: str, position: int) -> Exception:
        return ToleranceError(
            f"cannot parse tolerance {self.text!r}: {what} at position {position}; expected something like "
            "'exact', 'ulp(4)', 'close(1e-5, 1e-6)', 'scaled(1e-6)', joined by | or &, optionally '@ 0.001'"
        )

    def tolerance(self) -> Tolerance:
        if not self.tokens:
            self._fail("empty text")
        rule = self._any()
        fraction = 0.0
        if self._accept("@"):
            fraction_text = self._number("a fraction of elements")
            fraction = float(fraction_text)
            if self._accept("%"):
                fraction = float(Fraction(fraction_text) / 100)
            if not 0.0 <= fraction <= 1.0:
                self._fail(
                    f"the allowed fraction must be between 0 and 1 (0% and 100%), got {fraction_text}",
                    self.number_position,
                )
        if self._peek() is not None:
            self._fail(f"unexpected {self._describe_next()}")
        return Tolerance(rule, fraction)

    def _any(self) -> Rule:
        rules = [self._all()]
        while self._accept("|"):
            rules.append(self._all())
        return any_of(rules)

    def _all(self) -> Rule:
        rules = [self._term()]
        while self._accept("&"):
            rules.append(self._term())
        return all_of(rules)

    def _term(self) -> Rule:
        if self._accept("("):
            inner = self._any()
            self._expect(")")
            return inner
        token = self._peek()
        if token is None or token[0] != "word":
            self._fail(f"expected a rule but found {self._describe_next()}")
        assert token is not None
        name = token[1].lower()
        self.index += 1
        if name == "exact":
            return Exact()
        self._expect("(")
        rule: Rule
        if name == "ulp":
            budget_text = self._number("a whole number of ULPs")
            if not budget_text.lstrip("+").isdigit():
                self._fail(f"ulp() takes a whole number >= 0, got {budget_text}", self.number_position)
            rule = Ulp(int(budget_text))
        elif name == "close":
            values = self._keyword_numbers(("rtol", "atol"), required=1)
            atol = values.get("atol", ("0", 0))
            rule = Close(self._budget(*values["rtol"], "rtol"), self._budget(*atol, "atol"))
        elif name == "scaled":
            factor = self._number("a factor")
            rule = Scaled(self._budget(factor, self.number_position, "scaled()'s factor"))
        else:
            self._fail(f"unknown rule {token[1]!r}", token[2])
        self._expect(")")
        return rule

    def _keyword_numbers(self, names: tuple[str, ...], required: int) -> dict[str, tuple[str, int]]:
        """Arguments given by position or as ``name=value``: each one's text and position."""
        values: dict[str, tuple[str, int]] = {}
        for position, name in enumerate(names):
            if position > 0 and not self._accept(","):
                break
            token = self._peek()
            following = self.tokens[self.index + 1] if self.index + 1 < len(self.tokens) else None
            if token is not None and token[0] == "word" and following is not None and following[1] == "=":
                keyword = token[1].lower()
                if keyword not in names or keyword in values:
                    self._fail(f"unexpected argument {token[1]!r}")
                self.index += 1
                self._expect("=")
                values[keyword] = (self._number(keyword), self.number_position)
            else:
                values[name] = (self._number(name), self.number_position)
        missing = [name for name in names[:required] if name not in values]
        if missing:
            self._fail(f"missing {', '.join(missing)}")
        return values

    def _budget(self, text: str, position: int, what: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < 0:
            self._fail(f"{what} must be a finite number >= 0, got {text}", position)
        return value
