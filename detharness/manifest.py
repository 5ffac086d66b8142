"""What a bundle's ``manifest.json`` may hold: parsed with limits, then checked field by field.

A manifest is data from elsewhere (a CI artifact, a colleague's upload), so nothing in it is used
before it has been checked here: every field a reader looks at has a type, every string a length
cap, every number a range, the whole document a nesting depth. What does not fit is a
:class:`ManifestError` naming the field (``variants['x[a:cpu:float32:eager]'].tolerances: expected
a mapping of str to str or null, got list``), which the bundle reader turns into a one-line
:class:`~detharness.errors.BundleError` (exit 2).

Keys this version does not know are accepted and ignored: a newer minor version of the same schema
may add them. Keys it reads and that have a default may be missing; the ones without a default
(``environment``, ``environment_id``, ``cases``, ``variants``, a case's ``fingerprint``, a variant's
``case`` ... ``status``) are required. Every check costs time proportional to the manifest's size.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any

from detharness.compare import Status
from detharness.results import Outcome

__all__ = [
    "MAX_DEPTH",
    "MAX_ENV_KEYS",
    "MAX_ENV_VALUE",
    "MAX_INT_DIGITS",
    "MAX_NAME",
    "MAX_TEXT",
    "ManifestError",
    "check_depth",
    "check_record_manifest",
    "parse_json",
]

#: Deepest nesting of objects and lists accepted (a detharness manifest needs about 10).
MAX_DEPTH = 64
#: Longest integer literal, in characters: far beyond any size or count (2**64 has 20 digits), far
#: below Python's own limit (4,300 digits), whose ValueError would otherwise escape ``json.loads``.
MAX_INT_DIGITS = 40
#: Longest id, key, name, version, tag or other short string.
MAX_NAME = 4096
#: Longest free text: an error message, a traceback, a captured stream, a result's message.
MAX_TEXT = 1 << 20
#: Largest environment value (a string's length, or a list's total): the environment is copied
#: into every result's ``env_diff``, so a huge value would be multiplied by the number of results.
MAX_ENV_VALUE = 4096
#: Most keys in the environment (a fingerprint has about a hundred), for the same reason.
MAX_ENV_KEYS = 4096
#: Largest absolute value of an integer that counts or sizes something.
MAX_INT = 2**63 - 1


class ManifestError(ValueError):
    """A manifest that does not fit its schema; ``str()`` is ``"<field>: <problem>"``, one line."""


# ---------------------------------------------------------------------------------------------
# Parsing


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ManifestError(f"an integer literal of {len(text)} characters (at most {MAX_INT_DIGITS} are read)")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 1000:
        raise ManifestError(f"a number literal of {len(text)} characters (at most 1000 are read)")
    value = float(text)
    if not math.isfinite(value):
        raise ManifestError(f"the number {text[:40]} is out of range for a float")
    return value


def _parse_constant(text: str) -> Any:
    raise ManifestError(f"{text} is not JSON (detharness writes non-finite numbers as strings)")


# A \uXXXX escape of a UTF-16 surrogate: JSON allows a lone one, and Python decodes it to a str that
# cannot be encoded (printing it, or writing it to a report, raises UnicodeEncodeError).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str) -> Any:
    """``text`` as JSON, refusing what detharness never writes and Python would choke on.

    Integer literals longer than :data:`MAX_INT_DIGITS`, numbers out of float range, ``NaN`` and
    ``Infinity``, strings with a lone surrogate (``"\\ud800"``) and nesting deeper than
    :data:`MAX_DEPTH` are a :class:`ManifestError`; JSON syntax errors stay
    :class:`json.JSONDecodeError`.
    """
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        raise ManifestError(f"nested more than {MAX_DEPTH} levels deep") from None
    check_depth(value)
    if _SURROGATE_ESCAPE.search(text):
        _check_unicode(value)
    return value


def _check_unicode(value: Any) -> None:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as error:
                bad = repr(node[error.start])[1:-1]
                raise ManifestError(f"a string holds a lone surrogate ({bad}), which is not text") from None


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse ``value`` if its lists and objects nest more than ``limit`` levels; iterative."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise ManifestError(f"nested more than {limit} levels deep")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


# ---------------------------------------------------------------------------------------------
# Field checks


Check = Callable[[Any, str], None]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _show_key(key: str) -> str:
    shown = repr(key)
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in shown)
    return shown if len(shown) <= 80 else shown[:76] + "...'"


def _at(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}[{_show_key(key)}]"


def _dot(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _fail(path: str, expected: str, value: Any) -> ManifestError:
    return ManifestError(f"{path}: expected {expected}, got {_type_name(value)}")


def string(limit: int = MAX_NAME, *, nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, str):
            raise _fail(path, "a string or null" if nullable else "a string", value)
        if len(value) > limit:
            raise ManifestError(f"{path}: a string of {len(value)} characters (at most {limit})")

    return check


def boolean(*, nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, bool):
            raise _fail(path, "true or false" + (" or null" if nullable else ""), value)

    return check


def integer(low: int = -MAX_INT, high: int = MAX_INT, *, nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(path, "an integer" + (" or null" if nullable else ""), value)
        if not low <= value <= high:
            raise ManifestError(f"{path}: {value} is out of range ({low} to {high})")

    return check


def number(low: float = -math.inf, *, nullable: bool = False, strings: bool = False) -> Check:
    """A finite number of at least ``low``; with ``strings``, also "nan", "inf" or "-inf" (the JSON rule)."""

    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if strings and value in ("nan", "inf", "-inf"):
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _fail(path, "a number" + (" or null" if nullable else ""), value)
        if not math.isfinite(value) or value < low:
            raise ManifestError(f"{path}: {value} is out of range")

    return check


def one_of(choices: tuple[str, ...], *, nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, str) or value not in choices:
            shown = _show_key(value) if isinstance(value, str) else _type_name(value)
            raise ManifestError(f"{path}: expected one of {', '.join(choices)}, got {shown}")

    return check


def mapping(values: Check, what: str, *, nullable: bool = False, key_limit: int = MAX_NAME,
            max_items: int | None = None) -> Check:
    """An object whose keys are strings of at most ``key_limit`` and whose values pass ``values``."""

    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, dict):
            raise _fail(path, f"a mapping of str to {what}" + (" or null" if nullable else ""), value)
        if max_items is not None and len(value) > max_items:
            raise ManifestError(f"{path}: {len(value)} entries (at most {max_items})")
        for key, item in value.items():
            if len(key) > key_limit:
                raise ManifestError(f"{path}: a key of {len(key)} characters (at most {key_limit})")
            values(item, _at(path, key))

    return check


def sequence(items: Check, what: str, *, nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, list):
            raise _fail(path, f"a list of {what}" + (" or null" if nullable else ""), value)
        for index, item in enumerate(value):
            items(item, _at(path, index))

    return check


def record(fields: dict[str, Check], *, required: tuple[str, ...] = (), nullable: bool = False,
           what: str = "a mapping") -> Check:
    """An object with the given fields (each checked where present); other keys are ignored."""

    def check(value: Any, path: str) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, dict):
            raise _fail(path, what + (" or null" if nullable else ""), value)
        for name in required:
            if name not in value:
                raise ManifestError(f"{_dot(path, name)}: missing")
        for name, field_check in fields.items():
            if name in value:
                field_check(value[name], _dot(path, name))

    return check


def json_value(limit: int = MAX_TEXT, *, total: int | None = None) -> Check:
    """Any JSON value whose strings (and keys) are at most ``limit`` characters.

    With ``total``, the sum of its strings' lengths and one per number, key or item is at most
    ``total`` too: what an environment value may weigh.
    """

    def check(value: Any, path: str) -> None:
        weight = 0
        stack = [value]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                if len(node) > limit:
                    raise ManifestError(f"{path}: a string of {len(node)} characters (at most {limit})")
                weight += len(node)
            elif isinstance(node, dict):
                for key in node:
                    if len(key) > limit:
                        raise ManifestError(f"{path}: a key of {len(key)} characters (at most {limit})")
                    weight += len(key) + 1
                stack.extend(node.values())
            elif isinstance(node, list):
                weight += len(node)
                stack.extend(node)
            else:
                weight += 1
            if total is not None and weight > total:
                raise ManifestError(f"{path}: a value of more than {total} characters (at most {total})")

    return check


def environment_value(value: Any, path: str) -> None:
    """A fingerprint value: null, a boolean, a number, a string or a flat list of those, small.

    Attribution hashes the values (a list as a tuple), and every result's ``env_diff`` copies them.
    """
    if isinstance(value, dict):
        raise _fail(path, "null, a boolean, a number, a string or a list of those", value)
    for index, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, (dict, list)):
            raise _fail(_at(path, index), "null, a boolean, a number or a string", item)
    json_value(MAX_ENV_VALUE, total=MAX_ENV_VALUE)(value, path)


def array_ref(value: Any, path: str) -> None:
    """The envelope of an array ref; its fields and file are checked where arrays are verified."""
    if not isinstance(value, dict) or not {"format", "sha256", "file"} <= value.keys():
        shown = "a mapping without format, sha256 and file" if isinstance(value, dict) else _type_name(value)
        raise ManifestError(f"{path}: expected an array ref (format, dtype, shape, sha256, file), got {shown}")
    shape = value.get("shape")
    if shape is not None:
        sequence(integer(0), "non-negative integers")(shape, _dot(path, "shape"))
    json_value(MAX_NAME)(value, path)


ARRAYS = mapping(array_ref, "array ref")
NAME = string()
OPTIONAL_NAME = string(nullable=True)
TEXT = string(MAX_TEXT)
OPTIONAL_TEXT = string(MAX_TEXT, nullable=True)
COUNT = integer(0, nullable=True)
#: A distance in ULP or integer units: up to 2**64 - 1 (int64's extremes, a float64 sign flip).
DISTANCE = integer(0, 2**64 - 1, nullable=True)
OPTIONAL_MAPPING = mapping(json_value(), "JSON values", nullable=True)
STATUS = one_of(tuple(s.value for s in Status))

KNOWN_DIVERGENCE = record(
    {"reason": TEXT, "variants": NAME, "checks": sequence(NAME, "str"), "when": mapping(NAME, "str"),
     "against": NAME},
    required=("reason",), what="a known divergence (a mapping with a reason)",
)

CASE = record(
    {
        "fingerprint": NAME, "tags": sequence(NAME, "str"), "location": TEXT, "reference": OPTIONAL_NAME,
        "reference_variant": OPTIONAL_NAME, "kind": NAME, "inputs": ARRAYS, "params": ARRAYS,
        "reference_outputs": mapping(array_ref, "array ref", nullable=True), "inputs_digest": NAME,
        "known": sequence(KNOWN_DIVERGENCE, "known divergences"),
        "decisions": mapping(NAME, "str", nullable=True), "accuracy": OPTIONAL_MAPPING,
    },
    required=("fingerprint",), what="a case (a mapping)",
)

INTERMEDIATES = record(
    {"layers": sequence(record({"name": NAME, "index": COUNT, "dtype": NAME, "sha256": NAME, "array": array_ref},
                               required=("name", "array"), what="a layer (a mapping with a name and an array)"),
                        "layers"),
     "inputs": ARRAYS, "shadow": ARRAYS, "info": OPTIONAL_MAPPING},
    nullable=True, what="the recorded layers (a mapping)",
)

LOG = record(
    {"stdout": TEXT, "stderr": TEXT, "warnings": sequence(TEXT, "str"), "truncated": boolean()},
    nullable=True, what="a log (a mapping of stdout, stderr, warnings, truncated)",
)

ROUNDTRIP = record(
    {"before_outputs": ARRAYS, "changed_params": mapping(ARRAYS, "a mapping of str to array ref")},
    nullable=True, what="a round trip's findings (a mapping)",
)

REPEAT = record(
    {"processes": COUNT, "runs": COUNT, "digests": sequence(json_value(MAX_NAME), "digests"),
     "failures": sequence(json_value(), "failures")},
    nullable=True, what="the repeat record (a mapping)",
)

@functools.lru_cache(maxsize=1024)
def _tolerance_problem(text: str) -> str | None:
    from detharness.compare import Tolerance

    try:
        Tolerance.parse(text)
    except Exception as error:  # the parser's own errors, and any limit it hits on hostile text
        return " ".join(str(error).split())[:200] or type(error).__name__
    return None


def _tolerances_fit(value: Any, path: str) -> None:
    """An ``ok`` variant's tolerances name its outputs and parse (compare would stop on either)."""
    if value.get("status") != "ok":
        return
    outputs = value.get("outputs") or {}
    for name, text in (value.get("tolerances") or {}).items():
        where = _at(_dot(path, "tolerances"), name)
        if name not in outputs:
            raise ManifestError(f"{where}: a tolerance for an output the variant does not have")
        if text is not None and (problem := _tolerance_problem(text)) is not None:
            raise ManifestError(f"{where}: not a tolerance: {problem}")


VARIANT_REQUIRED = ("case", "impl", "backend", "device", "dtype", "mode", "status")
_VARIANT_FIELDS = record(
    {
        **{name: NAME for name in VARIANT_REQUIRED if name != "status"},
        "status": one_of(tuple(o.value for o in Outcome)), "reference": boolean(), "error": OPTIONAL_TEXT,
        "traceback": OPTIONAL_TEXT, "seconds": number(0, nullable=True), "outputs": ARRAYS,
        "tolerances": mapping(OPTIONAL_NAME, "str or null"), "distinct_results": COUNT,
        "repeat_outputs": mapping(array_ref, "array ref", nullable=True), "info": mapping(json_value(), "JSON values"),
        "repeat": REPEAT, "roundtrip": ROUNDTRIP, "log": LOG,
        "intermediates": INTERMEDIATES, "cache": OPTIONAL_MAPPING, "shard": OPTIONAL_MAPPING,
    },
    required=VARIANT_REQUIRED, what="a variant (a mapping)",
)


def _variant(value: Any, path: str) -> None:
    _VARIANT_FIELDS(value, path)
    _tolerances_fit(value, path)


VARIANT: Check = _variant


_STAT = number(nullable=True, strings=True)
_INDEX = sequence(integer(0), "non-negative integers", nullable=True)
RESULT = record(
    {
        "check": NAME, "case": NAME, "variant": NAME, "status": STATUS, "message": TEXT,
        "output": OPTIONAL_NAME, "baseline": OPTIONAL_NAME, "candidate": OPTIONAL_NAME, "tolerance": OPTIONAL_NAME,
        "total": COUNT, "mismatched": COUNT, "max_ulp": DISTANCE, "mean_ulp": _STAT, "p99_ulp": DISTANCE,
        "ulp_histogram": mapping(integer(0), "non-negative integers", nullable=True, key_limit=64),
        "max_abs": _STAT, "max_rel": _STAT, "max_scaled": _STAT,
        "first_mismatch_index": _INDEX, "worst_index": _INDEX,
        "worst_expected": json_value(MAX_NAME), "worst_actual": json_value(MAX_NAME),
        "min_passing": OPTIONAL_MAPPING, "env_diff": OPTIONAL_MAPPING, "reproduce": OPTIONAL_TEXT,
        "distinct_results": COUNT, "underlying_status": one_of(tuple(s.value for s in Status), nullable=True),
        "known_reason": OPTIONAL_TEXT, "stale_known": OPTIONAL_TEXT,
        "param_hashes": mapping(sequence(OPTIONAL_NAME, "str or null"), "lists of str or null", nullable=True),
        "traceback": OPTIONAL_TEXT, "baseline_label": OPTIONAL_TEXT, "candidate_label": OPTIONAL_TEXT,
        "accuracy": OPTIONAL_MAPPING, "decision": OPTIONAL_MAPPING, "shift": OPTIONAL_MAPPING,
        "first_divergence": OPTIONAL_MAPPING,
    },
    required=("check", "case", "variant", "status", "message"), what="a result (a mapping)",
)

# The run's options as the reproduce lines read them; the others are free-form.
OPTIONS = record(
    {"cases": sequence(TEXT, "str", nullable=True), "repeat": COUNT, "repeat_processes": COUNT,
     "deterministic": boolean(nullable=True), "inputs_from": OPTIONAL_TEXT},
    what="a mapping of str to JSON values",
)
_OPTIONS_VALUES = mapping(json_value(), "JSON values")


def _options(value: Any, path: str) -> None:
    _OPTIONS_VALUES(value, path)
    OPTIONS(value, path)


RECORD = record(
    {
        "version": NAME, "created": NAME,
        "environment": mapping(environment_value, "JSON values", max_items=MAX_ENV_KEYS),
        "environment_id": NAME, "options": _options,
        "cases": mapping(CASE, "case"), "variants": mapping(VARIANT, "variant"),
        "verdicts": sequence(RESULT, "results"),
    },
    required=("environment", "environment_id", "cases", "variants"), what="a manifest (a mapping)",
)


def check_record_manifest(manifest: Any) -> None:
    """Refuse a run record's manifest (schema :data:`~detharness.bundle.SCHEMA`, migrated) that does
    not fit: a :class:`ManifestError` naming the first field found wrong."""
    check_depth(manifest)
    RECORD(manifest, "")
