"""Just enough of Postgres' scalar type system to evaluate shape where-clauses exactly as Postgres would.

Three jobs, all for the built-in types a shape can filter on (int2/4/8, numeric, float4/8, text, varchar,
bpchar, bool, uuid, date, timestamp, timestamptz, jsonb):

* reading a constant written by a user (`'2024-01-01'` compared with a date column) the way the type's input
  function would, refusing anything we are not sure Postgres reads the same way;
* knowing which comparison Postgres picks for a pair of types (operator resolution, implicit casts,
  `select_common_type` for IN lists), reduced to a *domain* in which both sides become comparable Python keys;
* turning the text output of a row (what pgoutput sends; DateStyle ISO, TimeZone UTC, extra_float_digits=1)
  into those keys, fast, because that runs for every change against every shape.

Input parsing deliberately accepts a strict subset of what Postgres accepts (no hex floats, no `1_000`, ISO
dates only …): refusing a literal is a clean 400 for the client, accepting one Postgres reads differently
would make the snapshot and the live stream disagree.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final

Value = Any  # a constant in its type's Python form; see parse_input for the mapping
Key = Any  # something totally ordered (within one domain) that compares like Postgres does


class PgInputError(ValueError):
    """A constant is not valid input for a type, or a cast/comparison does not exist in Postgres."""


# -- type names --------------------------------------------------------------------------------------------

INT_RANGES: Final = {
    "int2": (-(2**15), 2**15 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "int8": (-(2**63), 2**63 - 1),
}
FLOAT_TYPES: Final = frozenset({"float4", "float8"})
STRING_TYPES: Final = frozenset({"text", "varchar", "bpchar"})
DATETIME_TYPES: Final = frozenset({"date", "timestamp", "timestamptz"})
NUMBER_TYPES: Final = frozenset({*INT_RANGES, "numeric", *FLOAT_TYPES})
SCALAR_TYPES: Final = frozenset({*NUMBER_TYPES, *STRING_TYPES, *DATETIME_TYPES, "bool", "uuid", "jsonb", "json"})

# pg_type.typcategory; the types a category prefers (typispreferred) win ties in operator resolution.
CATEGORY: Final = {
    **{t: "N" for t in NUMBER_TYPES},
    **{t: "S" for t in STRING_TYPES},
    **{t: "D" for t in DATETIME_TYPES},
    "bool": "B",
    "uuid": "U",
    "jsonb": "U",
    "json": "U",
}
PREFERRED: Final = frozenset({"float8", "text", "bool", "timestamptz"})

# pg_cast entries with castcontext 'i' among the supported types (checked against a PG 15 catalog).
IMPLICIT_CASTS: Final = frozenset(
    {
        ("int2", "int4"), ("int2", "int8"), ("int2", "numeric"), ("int2", "float4"), ("int2", "float8"),
        ("int4", "int8"), ("int4", "numeric"), ("int4", "float4"), ("int4", "float8"),
        ("int8", "numeric"), ("int8", "float4"), ("int8", "float8"),
        ("numeric", "float4"), ("numeric", "float8"),
        ("float4", "float8"),
        ("text", "bpchar"), ("text", "varchar"),
        ("varchar", "text"), ("varchar", "bpchar"),
        ("bpchar", "text"), ("bpchar", "varchar"),
        ("date", "timestamp"), ("date", "timestamptz"), ("timestamp", "timestamptz"),
    }
)  # fmt: skip

# The spellings a `::type` cast may use. Multi-word SQL-standard names arrive joined by one space.
TYPE_ALIASES: Final = {
    "int2": "int2", "smallint": "int2",
    "int4": "int4", "int": "int4", "integer": "int4",
    "int8": "int8", "bigint": "int8",
    "numeric": "numeric", "decimal": "numeric",
    "float4": "float4", "real": "float4",
    "float8": "float8", "float": "float8", "double precision": "float8",
    "text": "text",
    "varchar": "varchar", "character varying": "varchar",
    "bpchar": "bpchar",
    "bool": "bool", "boolean": "bool",
    "uuid": "uuid",
    "date": "date",
    "timestamp": "timestamp", "timestamp without time zone": "timestamp",
    "timestamptz": "timestamptz", "timestamp with time zone": "timestamptz",
    "jsonb": "jsonb",
    "json": "json",
}  # fmt: skip


def can_coerce_implicitly(source: str | None, target: str) -> bool:
    """Postgres' can_coerce_type(..., COERCION_IMPLICIT) for our types; None is an untyped literal."""
    return source is None or source == target or (source, target) in IMPLICIT_CASTS


def select_common_type(types: list[str | None]) -> str | None:
    """The type Postgres picks for an IN list (lhs first), or None where it finds none.

    Mirrors select_common_type + verify_common_type: the first typed input is the candidate; a later input of
    the same category replaces it only if the candidate is not a preferred type and converts to it implicitly
    but not back. All-untyped resolves to text. The result matters: `float4_col IN (0.1, 0.2)` compares in
    float4 (the items are rounded) while `float4_col = 0.1` compares in float8.
    """
    typed = [t for t in types if t is not None]
    if not typed:
        return "text"
    if all(t == typed[0] for t in typed):
        return typed[0]
    chosen = typed[0]
    for candidate in typed[1:]:
        if candidate == chosen:
            continue
        if CATEGORY.get(candidate) != CATEGORY.get(chosen) or CATEGORY.get(chosen) is None:
            return None
        if (
            chosen not in PREFERRED
            and can_coerce_implicitly(chosen, candidate)
            and not can_coerce_implicitly(candidate, chosen)
        ):
            chosen = candidate
    if not all(can_coerce_implicitly(t, chosen) for t in typed):
        return None
    return chosen


# -- comparison domains -------------------------------------------------------------------------------------
# Each comparison Postgres would run is reduced to a domain; both operands become keys of that domain and are
# compared with Python's operators. The domain encodes the operator Postgres resolves to (e.g. int4 = float4
# resolves to float48eq, so the int goes to float8 and the float4 is widened).

INT: Final = "int"
NUMERIC: Final = "numeric"
FLOAT: Final = "float"
TEXT: Final = "text"  # texteq & co: only bpchar operands lose trailing spaces (the bpchar -> text cast)
BPCHAR: Final = "bpchar"  # bpchareq & co: trailing spaces of both sides are insignificant
BOOL: Final = "bool"
UUID: Final = "uuid"
TIME: Final = "time"  # date/timestamp/timestamptz as microseconds since 1970-01-01 UTC
JSONB: Final = "jsonb"  # equality only: jsonb ordering is its own can of worms

ORDERED_DOMAINS: Final = frozenset({INT, NUMERIC, FLOAT, TEXT, BPCHAR, BOOL, UUID, TIME})
# Domains whose ordering follows the collation; rendered with COLLATE "C" so Postgres orders by code point,
# which is what Python's str comparison does.
COLLATED_DOMAINS: Final = frozenset({TEXT, BPCHAR})


def comparison_domain(left: str, right: str) -> str:
    """The domain of `left <op> right` for two resolved types; PgInputError if Postgres has no such operator."""
    category = CATEGORY.get(left)
    if category is None or category != CATEGORY.get(right):
        raise PgInputError(f"operator does not exist: {left} = {right}")
    if category == "N":
        if left in FLOAT_TYPES or right in FLOAT_TYPES:
            return FLOAT
        if "numeric" in (left, right):
            return NUMERIC
        return INT
    if category == "S":
        # bpchar against bpchar or varchar resolves to bpchareq (more exact argument matches); against text,
        # texteq wins because text is the preferred string type, and the bpchar side is cast (trimmed).
        if "bpchar" in (left, right) and "text" not in (left, right):
            return BPCHAR
        return TEXT
    if category == "D":
        return TIME
    if left != right:
        raise PgInputError(f"operator does not exist: {left} = {right}")
    if left == "bool":
        return BOOL
    if left == "uuid":
        return UUID
    if left == "jsonb":
        return JSONB
    raise PgInputError(f"operator does not exist: {left} = {right}")


class _NanKey:
    """NaN as Postgres orders it in float and numeric: equal to itself, greater than everything else."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other is self

    def __ne__(self, other: object) -> bool:
        return other is not self

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return other is self

    def __gt__(self, other: object) -> bool:
        return other is not self

    def __ge__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0x7FF8

    def __repr__(self) -> str:
        return "NaN"


NAN_KEY: Final = _NanKey()


def _float_key(value: float) -> Key:
    return NAN_KEY if value != value else value


def _numeric_key(value: int | Decimal) -> Key:
    if isinstance(value, Decimal) and value.is_nan():
        return NAN_KEY
    return value


# -- float4 -------------------------------------------------------------------------------------------------

_FLOAT32: Final = struct.Struct("<f")


def _round_to_float32(value: float) -> float:
    """C's (float) cast of a double: nearest, ties to even; infinity when out of range."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]  # type: ignore[no-any-return]
    except OverflowError:
        return math.copysign(math.inf, value)


def float4_from_text(text: str) -> float:
    """The float4 nearest to a decimal string, as strtof finds it, widened to a Python float.

    Going decimal -> double -> float32 rounds twice and can be off by one float32 ulp when the double lands
    exactly halfway between two float32 values; only then is the exact decimal consulted.
    """
    as_double = float(text)
    rounded = _round_to_float32(as_double)
    if rounded == as_double or math.isinf(rounded) or as_double != as_double:
        return rounded
    other = 2 * as_double - rounded  # the neighbour on the far side, if as_double is exactly a midpoint
    if _round_to_float32(other) != other:
        return rounded
    exact = Fraction(text)
    if exact == Fraction(as_double):
        return rounded
    return max(rounded, other) if exact > Fraction(as_double) else min(rounded, other)


def _float4_from_exact(exact: Fraction) -> float:
    as_double = _fraction_to_double(exact)
    rounded = _round_to_float32(as_double)
    if rounded == as_double or math.isinf(rounded):
        return rounded
    other = 2 * as_double - rounded
    if _round_to_float32(other) != other or exact == Fraction(as_double):
        return rounded
    return max(rounded, other) if exact > Fraction(as_double) else min(rounded, other)


def _fraction_to_double(exact: Fraction) -> float:
    try:
        return float(exact)  # int / int true division: correctly rounded
    except OverflowError:
        return math.copysign(math.inf, exact)


# -- input functions (unknown literal -> typed constant) ----------------------------------------------------

_WS: Final = " \t\n\r\v\f"  # C isspace(), which the input functions skip around a value
_INT_RE: Final = re.compile(r"[ \t\n\r\v\f]*([+-]?[0-9]+)[ \t\n\r\v\f]*", re.ASCII)
_DECIMAL: Final = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
# numeric_in and float8in/float4in take the same shapes: a decimal, NaN (unsigned), or a signed inf[inity].
_NUMBER_RE: Final = re.compile(
    rf"[ \t\n\r\v\f]*(?:({_DECIMAL})|(nan)|([+-]?)(?:inf|infinity))[ \t\n\r\v\f]*", re.ASCII | re.IGNORECASE
)
# Numeric input overflows once weight or scale leave the storage format; staying within +-1000 for the
# exponent keeps every accepted literal well inside that (inputs are short) without modelling the limits.
_MAX_DECIMAL_EXPONENT: Final = 1000
_UUID_RE: Final = re.compile(r"(\{)?(?:[0-9a-fA-F]{4}-?){7}[0-9a-fA-F]{4}(?(1)\})", re.ASCII)


def parse_input(typname: str, text: str) -> Value:
    """Read `text` as a constant of `typname` the way the type's input function would.

    Python forms: ints -> int; numeric -> Decimal; float4/float8 -> float (float4 already rounded to
    float32); text/varchar/bpchar -> str unchanged; bool -> bool; uuid -> canonical lowercase str; date ->
    days since 1970-01-01; timestamp/timestamptz -> microseconds since 1970-01-01 (UTC for timestamptz,
    assuming TimeZone=UTC when the literal has no zone); infinities as +-math.inf; jsonb -> JsonbValue.
    """
    if "\x00" in text:
        raise PgInputError(f"invalid input for type {typname}: NUL character")
    if typname in INT_RANGES:
        match = _INT_RE.fullmatch(text)
        if match is None:
            raise PgInputError(f'invalid input syntax for type {typname}: "{text}"')
        return check_int_range(int(match.group(1)), typname)
    if typname == "numeric":
        return _parse_numeric(text)
    if typname in FLOAT_TYPES:
        return _parse_float(typname, text)
    if typname in STRING_TYPES:
        return text
    if typname == "bool":
        return _parse_bool(text)
    if typname == "uuid":
        if _UUID_RE.fullmatch(text) is None:
            raise PgInputError(f'invalid input syntax for type uuid: "{text}"')
        digits = text.strip("{}").replace("-", "").lower()
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    if typname in DATETIME_TYPES:
        return _parse_datetime_input(typname, text)
    if typname == "jsonb":
        return JsonbValue.parse(text)
    raise PgInputError(f"constants of type {typname} are not supported")


def check_int_range(value: int, typname: str) -> int:
    low, high = INT_RANGES[typname]
    if not low <= value <= high:
        names = {"int2": "smallint", "int4": "integer", "int8": "bigint"}
        raise PgInputError(f"{names[typname]} out of range: {value}")
    return value


def _parse_numeric(text: str) -> Decimal:
    match = _NUMBER_RE.fullmatch(text)
    if match is None:
        raise PgInputError(f'invalid input syntax for type numeric: "{text}"')
    decimal_text, nan, inf_sign = match.groups()
    if nan:
        return Decimal("NaN")
    if decimal_text is None:
        return Decimal("-Infinity" if inf_sign == "-" else "Infinity")
    value = Decimal(decimal_text)
    _check_decimal_exponent(value, text)
    return value


def _check_decimal_exponent(value: Decimal, text: str) -> None:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and abs(exponent) > _MAX_DECIMAL_EXPONENT:
        raise PgInputError(f'numeric value out of the supported range: "{text}"')


def _parse_float(typname: str, text: str) -> float:
    match = _NUMBER_RE.fullmatch(text)
    if match is None:
        raise PgInputError(f'invalid input syntax for type {typname}: "{text}"')
    decimal_text, nan, inf_sign = match.groups()
    if nan:
        return math.nan
    if decimal_text is None:
        return -math.inf if inf_sign == "-" else math.inf
    value = float4_from_text(decimal_text) if typname == "float4" else float(decimal_text)
    # strtod/strtof report ERANGE on overflow and on underflow to zero; Postgres turns both into errors.
    mantissa = decimal_text.split("e")[0].split("E")[0]
    if math.isinf(value) or (value == 0 and mantissa.strip("+-.0") != ""):
        name = "real" if typname == "float4" else "double precision"
        raise PgInputError(f'"{text.strip(_WS)}" is out of range for type {name}')
    return value


def _parse_bool(text: str) -> bool:
    word = text.strip(_WS).lower()
    if word and word.isascii():
        # Any prefix of true/false/yes/no; "on"/"off" need two letters ("o" alone is ambiguous).
        if "true".startswith(word) or "yes".startswith(word) or word in ("on", "1"):
            return True
        if "false".startswith(word) or "no".startswith(word) or word in ("off", "of", "0"):
            return False
    raise PgInputError(f'invalid input syntax for type boolean: "{text}"')


# -- dates and times ----------------------------------------------------------------------------------------

USEC_PER_DAY: Final = 86_400_000_000
_DATETIME_INPUT_RE: Final = re.compile(
    r"[ \t\n\r\v\f]*([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[ T]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"(Z|[+-][0-9]{2}(?:[0-9]{2}|:[0-9]{2}(?::[0-9]{2})?)?)?)?"
    r"( BC)?[ \t\n\r\v\f]*",
    re.ASCII,
)
_SPECIAL_DATETIMES: Final = {"infinity": math.inf, "-infinity": -math.inf}
_REFUSED_DATETIMES: Final = frozenset({"now", "today", "tomorrow", "yesterday", "epoch", "allballs"})
# Postgres' earliest date/timestamp is 4714-11-24 BC; literals stay within years 4713 BC .. 9999 AD.
_MAX_BC_YEAR: Final = 4713
# TimeZone displacements beyond 15:59:59 are rejected by Postgres.
_MAX_ZONE_SECONDS: Final = 15 * 3600 + 59 * 60 + 59


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar; year is astronomical (1 BC = 0)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """Inverse of days_from_civil: (astronomical year, month, day)."""
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _parse_datetime_input(typname: str, text: str) -> float | int:
    word = text.strip(_WS).lower()
    if word in _SPECIAL_DATETIMES:
        return _SPECIAL_DATETIMES[word]
    if word in _REFUSED_DATETIMES:
        raise PgInputError(f"special {typname} value '{word}' is not supported in a where-clause")
    match = _DATETIME_INPUT_RE.fullmatch(text)
    if match is None:
        raise PgInputError(
            f"unsupported {typname} literal \"{text}\": use ISO 8601, e.g. '2024-01-31' or '2024-01-31 13:45:00+00'"
        )
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction_s, zone_s, bc = match.groups()
    year, month, day = int(year_s), int(month_s), int(day_s)
    if year == 0 or (bc and year > _MAX_BC_YEAR):
        raise PgInputError(f'{typname} out of range: "{text}"')
    if bc:
        year = 1 - year
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise PgInputError(f'date/time field value out of range: "{text}"')
    days = days_from_civil(year, month, day)
    hour, minute = int(hour_s or 0), int(minute_s or 0)
    second = int(second_s or 0)
    # Postgres also takes 24:00:00 and leap second 60 (rolling over); refusing them keeps this simple.
    if hour > 23 or minute > 59 or second > 59:
        raise PgInputError(f'date/time field value out of range: "{text}"')
    # date and timestamp input ignore the zone, but still reject one out of range.
    zone_seconds = _zone_seconds(zone_s, text) if zone_s and zone_s != "Z" else 0
    if typname == "date":
        return days
    usec = int((fraction_s or "").ljust(6, "0"))
    micros = days * USEC_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1_000_000 + usec
    return micros - zone_seconds * 1_000_000 if typname == "timestamptz" else micros


def _zone_seconds(zone: str, text: str) -> int:
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if minutes > 59 or seconds > 59:
        raise PgInputError(f'time zone displacement out of range: "{text}"')
    total = hours * 3600 + minutes * 60 + seconds
    if total > _MAX_ZONE_SECONDS:
        raise PgInputError(f'time zone displacement out of range: "{text}"')
    return sign * total


def format_date(days: float | int) -> str:
    """ISO text of a date value; what the date input function reads back to the same value."""
    if isinstance(days, float):
        return "infinity" if days > 0 else "-infinity"
    year, month, day = civil_from_days(days)
    return f"{year:04d}-{month:02d}-{day:02d}" if year > 0 else f"{1 - year:04d}-{month:02d}-{day:02d} BC"


def format_timestamp(micros: float | int, with_zone: bool) -> str:
    """ISO text of a timestamp (UTC for timestamptz, with an explicit +00 so no session TimeZone applies)."""
    if isinstance(micros, float):
        return "infinity" if micros > 0 else "-infinity"
    days, rest = divmod(micros, USEC_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, usec = divmod(rest, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    zone = "+00" if with_zone else ""
    era_year, bc = (year, "") if year > 0 else (1 - year, " BC")
    return f"{era_year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}.{usec:06d}{zone}{bc}"


# Text output with DateStyle=ISO: year at least 4 digits, fraction without trailing zeros, zone as +HH[:MM[:SS]].
_DATE_OUTPUT_RE: Final = re.compile(r"([0-9]{4,})-([0-9]{2})-([0-9]{2})( BC)?", re.ASCII)
_TIMESTAMP_OUTPUT_RE: Final = re.compile(
    r"([0-9]{4,})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
    r"(?:([+-])([0-9]{2})(?::([0-9]{2})(?::([0-9]{2}))?)?)?( BC)?",
    re.ASCII,
)


_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_EPOCH_NAIVE: Final = datetime(1970, 1, 1)
_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_USEC: Final = timedelta(microseconds=1)


def date_output_key(text: str) -> float | int:
    """Microseconds (UTC midnight) of a date's text output; +-inf for infinity."""
    if len(text) == 10:
        # The common case (years 1-9999, AD) through the C parser; it runs once per row and shape.
        try:
            return (date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL) * USEC_PER_DAY
        except ValueError:
            pass
    return parse_date_output(text)


def parse_date_output(text: str) -> float | int:
    """date_output_key without the fast path: every year, BC, and infinity."""
    match = _DATE_OUTPUT_RE.fullmatch(text)
    if match is None:
        if text in _SPECIAL_DATETIMES:
            return _SPECIAL_DATETIMES[text]
        raise ValueError(f"not a date in ISO text output: {text!r}")
    year = int(match.group(1))
    if match.group(4):
        year = 1 - year
    return days_from_civil(year, int(match.group(2)), int(match.group(3))) * USEC_PER_DAY


def timestamp_output_key(text: str) -> float | int:
    """Microseconds since 1970-01-01 UTC of a timestamp[tz]'s text output; +-inf for infinity."""
    if not text.endswith(("BC", "y")):  # BC years and infinities are out of datetime's range
        # datetime's C parser is ~8x faster than the regex below and reads every AD 1-9999 output form.
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return (moment - (_EPOCH_NAIVE if moment.tzinfo is None else _EPOCH_UTC)) // _ONE_USEC
    return parse_timestamp_output(text)


def parse_timestamp_output(text: str) -> float | int:
    """timestamp_output_key without the fast path: every year, BC, and infinity."""
    match = _TIMESTAMP_OUTPUT_RE.fullmatch(text)
    if match is None:
        if text in _SPECIAL_DATETIMES:
            return _SPECIAL_DATETIMES[text]
        raise ValueError(f"not a timestamp in ISO text output: {text!r}")
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction_s, sign, zh, zm, zs, bc = match.groups()
    year = 1 - int(year_s) if bc else int(year_s)
    micros = (
        days_from_civil(year, int(month_s), int(day_s)) * USEC_PER_DAY
        + ((int(hour_s) * 60 + int(minute_s)) * 60 + int(second_s)) * 1_000_000
        + (int(fraction_s.ljust(6, "0")) if fraction_s else 0)
    )
    if sign:
        offset = int(zh) * 3600 + int(zm or 0) * 60 + int(zs or 0)
        micros -= offset * 1_000_000 if sign == "+" else -offset * 1_000_000
    return micros


# -- jsonb --------------------------------------------------------------------------------------------------


class JsonbValue:
    """A jsonb constant: its text (sent to Postgres as is) and a key that compares like jsonb equality."""

    __slots__ = ("key", "text")

    def __init__(self, text: str, key: Key) -> None:
        self.text = text
        self.key = key

    @classmethod
    def parse(cls, text: str) -> JsonbValue:
        try:
            key = jsonb_key(text, literal=True)
        except RecursionError:
            raise PgInputError("jsonb literal nested too deeply") from None
        except (ValueError, InvalidOperation) as exc:
            raise PgInputError(f"invalid input syntax for type json: {exc}") from None
        return cls(text, key)


def _refuse_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def jsonb_key(text: str, *, literal: bool = False) -> Key:
    """A hashable structure equal exactly when Postgres' jsonb = says so.

    Numbers are numerics (1.0 = 1), objects compare as key sets, and every scalar is tagged so that Python's
    True == 1 == Decimal(1) does not leak into the comparison. A `literal` is also held to what jsonb input
    accepts; row values come from Postgres and are valid by construction.
    """
    document = json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=_refuse_json_constant)
    return _tag_json(document, literal)


def _tag_json(node: object, literal: bool) -> Key:
    if node is None:
        return ("null",)
    if isinstance(node, bool):
        return ("bool", node)
    if isinstance(node, Decimal):
        if literal:
            _check_decimal_exponent(node, str(node))
        return ("number", node)
    if isinstance(node, str):
        if literal:
            _check_json_string(node)
        return ("string", node)
    if isinstance(node, list):
        return ("array", tuple(_tag_json(item, literal) for item in node))
    assert isinstance(node, dict)
    if literal:
        for name in node:
            _check_json_string(name)
    return ("object", frozenset((name, _tag_json(item, literal)) for name, item in node.items()))


def _check_json_string(text: str) -> None:
    # jsonb refuses \u0000 and unpaired surrogates, which Python's json module lets through.
    if "\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text):
        raise ValueError("unsupported Unicode escape sequence")


# -- coercions between typed constants ----------------------------------------------------------------------


def cast_constant(value: Value, source: str, target: str, *, explicit: bool) -> Value:
    """Convert a typed constant as Postgres' cast would (implicit casts only unless `explicit`).

    NULL (None) casts to anything. Supported beyond the implicit casts: narrowing between integer types,
    numeric/float to integer (numeric rounds half away from zero, float rounds half to even), float8 to
    float4 and float to numeric. Anything else (e.g. 5::text) is refused rather than modelled.
    """
    if value is None or source == target:
        return value
    if not explicit and (source, target) not in IMPLICIT_CASTS:
        raise PgInputError(f"cannot cast {source} to {target} implicitly")
    if source in NUMBER_TYPES and target in NUMBER_TYPES:
        return _cast_number(value, source, target)
    if source in STRING_TYPES and target in STRING_TYPES:
        return value.rstrip(" ") if source == "bpchar" else value
    if source == "date" and target in ("timestamp", "timestamptz"):
        return value if isinstance(value, float) else value * USEC_PER_DAY
    if source == "timestamp" and target == "timestamptz":
        return value  # both are UTC microseconds here (TimeZone=UTC)
    raise PgInputError(f"cast from {source} to {target} is not supported in a where-clause")


def _cast_number(value: int | Decimal | float, source: str, target: str) -> Value:
    if target in INT_RANGES:
        if isinstance(value, int):
            return check_int_range(value, target)
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise PgInputError(f"cannot convert {value} to {target}")
            return check_int_range(int(value.to_integral_value(rounding=ROUND_HALF_UP)), target)
        if math.isnan(value) or math.isinf(value):
            raise PgInputError(f"{target} out of range")
        return check_int_range(round(value), target)  # rint(): ties to even
    if target == "numeric":
        if isinstance(value, float):
            if value != value:
                return Decimal("NaN")
            if math.isinf(value):
                return Decimal("Infinity") if value > 0 else Decimal("-Infinity")
            # float -> numeric prints the float with FLT_DIG / DBL_DIG significant digits first.
            digits = 6 if source == "float4" else 15
            return Decimal(format(value, f".{digits}g"))
        return Decimal(value)
    # target is a float type
    if isinstance(value, float):
        if target == "float8":
            return value
        narrowed = _round_to_float32(value)
        _check_float_range(narrowed, value != 0 and not math.isinf(value), target)
        return narrowed
    if isinstance(value, Decimal):
        if value.is_nan():
            return math.nan
        if value.is_infinite():
            return math.copysign(math.inf, value)
    exact = Fraction(value)
    result = _float4_from_exact(exact) if target == "float4" else _fraction_to_double(exact)
    _check_float_range(result, exact != 0, target)
    return result


def _check_float_range(result: float, nonzero_source: bool, target: str) -> None:
    if (math.isinf(result) and nonzero_source) or (result == 0 and nonzero_source):
        raise PgInputError(f"value out of range for type {'real' if target == 'float4' else 'double precision'}")


def negate_constant(value: Value, typname: str) -> Value:
    """Unary minus on a typed numeric constant (an int at the bottom of its range overflows)."""
    if value is None:
        return None
    if typname in INT_RANGES:
        return check_int_range(-value, typname)
    if typname == "numeric":
        return value.copy_negate()  # exact, unlike -value which rounds to the context precision
    if typname in FLOAT_TYPES:
        return -value
    raise PgInputError(f"operator does not exist: - {typname}")


# -- keys ---------------------------------------------------------------------------------------------------


def constant_key(value: Value, typname: str, domain: str) -> Key:
    """The comparison key of a non-NULL typed constant within `domain`."""
    if domain == INT:
        return value
    if domain == NUMERIC:
        return _numeric_key(value)
    if domain == FLOAT:
        if isinstance(value, float):
            return _float_key(value)
        if isinstance(value, Decimal):
            return _float_key(float(value))  # numeric -> float8: correctly rounded, like strtod
        return float(value)  # int -> float8: nearest, ties to even, like the C conversion
    if domain in (TEXT, BPCHAR):
        return value.rstrip(" ") if typname == "bpchar" or domain == BPCHAR else value
    if domain == TIME:
        if typname == "date" and not isinstance(value, float):
            return value * USEC_PER_DAY
        return value
    if domain == JSONB:
        return value.key
    return value  # bool, uuid (already canonical)


def bool_output(text: str) -> bool:
    return text == "t"


def _rstrip_spaces(text: str) -> str:
    return text.rstrip(" ")


def _float8_output(text: str) -> Key:
    value = float(text)
    return NAN_KEY if value != value else value


def _float4_output(text: str) -> Key:
    if text in ("NaN", "Infinity", "-Infinity"):
        return _float8_output(text)
    return float4_from_text(text)


def _numeric_output(text: str) -> Key:
    if text == "NaN":
        return NAN_KEY
    return Decimal(text)


def _jsonb_output(text: str) -> Key:
    try:
        return jsonb_key(text)
    except RecursionError:
        # Deeper than any literal we accept, so it equals none of them.
        return object()


def _uuid_output(text: str) -> str:
    return text.lower()


def output_key_function(typname: str, domain: str) -> Callable[[str], Key] | None:
    """Converter from a column's text output to its key in `domain`; None where the text is the key."""
    if typname in INT_RANGES:
        if domain == INT:
            return int
        if domain == NUMERIC:
            return int  # Python compares int with Decimal exactly, as numeric does
        return float  # int -> float8 rounds exactly like parsing the decimal digits as a double
    if typname == "numeric":
        return _numeric_output if domain == NUMERIC else _float8_output
    if typname == "float8":
        return _float8_output
    if typname == "float4":
        return _float4_output
    if typname in STRING_TYPES:
        return _rstrip_spaces if typname == "bpchar" or domain == BPCHAR else None
    if typname == "bool":
        return bool_output
    if typname == "uuid":
        return _uuid_output
    if typname == "date":
        return date_output_key
    if typname in ("timestamp", "timestamptz"):
        return timestamp_output_key
    if typname == "jsonb":
        return _jsonb_output
    raise PgInputError(f"values of type {typname} cannot be compared")


def sql_text(value: Value, typname: str) -> str | None:
    """The text sent to Postgres for a constant (as a `$n::typname` parameter) so it reads the same value."""
    if value is None:
        return None
    if typname in INT_RANGES:
        return str(value)
    if typname == "numeric":
        return str(value)
    if typname in FLOAT_TYPES:
        if value != value:
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if typname == "bool":
        return "true" if value else "false"
    if typname == "date":
        return format_date(value)
    if typname in ("timestamp", "timestamptz"):
        return format_timestamp(value, typname == "timestamptz")
    if typname == "jsonb":
        return value.text  # type: ignore[no-any-return]
    return str(value)
