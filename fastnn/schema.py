"""Declarative checks of JSON values read from files: types, ranges, finiteness, sizes.

A spec describes what a value may be; ``spec.check(value, where)`` returns
the value (cleaned: ints stay ints, reals become floats, records become
dicts with their optional fields filled in) or raises ``SchemaError``
saying where, what was expected and what was found::

    >>> Record({"sizes": ListOf(Int(1, 100), 2, 10)}).check({"sizes": [3, 30.5]}, "network")
    Traceback (most recent call last):
    SchemaError: network.sizes[1] must be an integer in 1..100, not 30.5

The values come from ``fastnn.reading.load_json``, whose nesting depth is
already bounded, so specs recurse without risk. fastnn's model header is
described with these specs in ``fastnn.modelfile`` (one schema per format version).
"""
import json
import math
import re


class SchemaError(ValueError):
    """A value that does not fit its spec; str() is one line."""

    def __init__(self, where, expected, value, message=None):
        self.where, self.expected, self.value = where, expected, value
        super().__init__(message or f"{where} must be {expected}, not {short(value)}")


def short(value, limit=60):
    """value as JSON (ASCII), cut to about `limit` characters, for messages."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _join(where, key):
    return f"{where}.{key}" if where else str(key)


class Spec:
    """Base class: `check(value, where)` returns the value or raises SchemaError."""

    description = "a value"

    def check(self, value, where):
        raise NotImplementedError

    def fail(self, value, where):
        raise SchemaError(where, self.description, value)


class Int(Spec):
    """An integer (not a bool, not a float) in lo..hi."""

    def __init__(self, lo=None, hi=None):
        self.lo, self.hi = lo, hi
        if lo is not None and hi is not None:
            self.description = f"an integer in {_bound(lo)}..{_bound(hi)}"
        elif lo is not None:
            self.description = f"an integer >= {_bound(lo)}"
        else:
            self.description = "an integer"

    def check(self, value, where):
        if (isinstance(value, bool) or not isinstance(value, int)
                or (self.lo is not None and value < self.lo)
                or (self.hi is not None and value > self.hi)):
            self.fail(value, where)
        return value


def _bound(n):
    """A bound for messages: 2**62 rather than nineteen digits."""
    if n > 2 ** 40 and n & (n - 1) == 0:
        return f"2**{n.bit_length() - 1}"
    return str(n)


class Real(Spec):
    """A number (int or float, not a bool), returned as a float; finite unless
    finite=False (then infinities are allowed, and NaN too with nan=True);
    within [lo, hi] (open ends with lo_open/hi_open)."""

    def __init__(self, lo=None, hi=None, finite=True, lo_open=False, hi_open=False, nan=False):
        self.lo, self.hi, self.finite, self.lo_open, self.hi_open = lo, hi, finite, lo_open, hi_open
        self.nan = nan and not finite
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if lo_open else '>='} {lo:g}")
        if hi is not None:
            bounds.append(f"{'<' if hi_open else '<='} {hi:g}")
        self.description = (("a finite number" if finite else "a number")
                            + (" " + " and ".join(bounds) if bounds else ""))

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(value, where)
        try:
            x = float(value)
        except OverflowError:
            self.fail(value, where)
        if math.isnan(x):
            if self.nan:
                return x
            self.fail(value, where)
        if self.finite and math.isinf(x):
            self.fail(value, where)
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            self.fail(value, where)
        if self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)):
            self.fail(value, where)
        return x


class Bool(Spec):
    description = "true or false"

    def check(self, value, where):
        if not isinstance(value, bool):
            self.fail(value, where)
        return value


class Text(Spec):
    """A string of at most max_len characters; one of `choices` (any
    container of names, such as a registry) or matching `pattern`, if given."""

    def __init__(self, max_len=4096, choices=None, pattern=None, description=None):
        self.max_len, self.choices = max_len, choices
        self.pattern = re.compile(pattern) if pattern else None
        if description:
            self.description = description
        elif choices is not None:
            self.description = f"one of {sorted(choices)}"
        else:
            self.description = f"a string of at most {max_len} characters"

    def check(self, value, where):
        if not isinstance(value, str) or len(value) > self.max_len:
            self.fail(value, where)
        if self.choices is not None and value not in self.choices:
            self.fail(value, where)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            self.fail(value, where)
        return value


class Maybe(Spec):
    """null, or a value of `spec`."""

    def __init__(self, spec):
        self.spec = spec
        self.description = f"null or {spec.description}"

    def check(self, value, where):
        return None if value is None else self.spec.check(value, where)


class OneOf(Spec):
    """A value of the first of `specs` that accepts it."""

    def __init__(self, *specs):
        self.specs = specs
        self.description = " or ".join(s.description for s in specs)

    def check(self, value, where):
        deeper = None
        for spec in self.specs:
            try:
                return spec.check(value, where)
            except SchemaError as exc:
                # an alternative that failed inside the value fits it best
                if exc.where != where and deeper is None:
                    deeper = exc
        if deeper is not None:
            raise deeper
        self.fail(value, where)


class ListOf(Spec):
    """A list of min_len..max_len values of `item`."""

    def __init__(self, item, min_len=0, max_len=100_000):
        self.item, self.min_len, self.max_len = item, min_len, max_len
        length = (f"{min_len}" if min_len == max_len else f"{min_len}..{max_len}")
        self.description = f"a list of {length} items, each {item.description}"

    def check(self, value, where):
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            self.fail(value, where)
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


class MapOf(Spec):
    """A JSON object of at most max_items entries, each value of `value`."""

    def __init__(self, value, max_items=100_000, key=None):
        self.value, self.max_items, self.key = value, max_items, key or Text(256)
        self.description = f"an object whose values are each {value.description}"

    def check(self, value, where):
        if not isinstance(value, dict) or len(value) > self.max_items:
            self.fail(value, where)
        return {self.key.check(k, where): self.value.check(v, _join(where, k))
                for k, v in value.items()}


class AnyJSON(Spec):
    """Any JSON value (its depth is bounded when it is parsed)."""

    description = "a JSON value"

    def check(self, value, where):
        return value


class Record(Spec):
    """A JSON object with `required` and `optional` fields ({name: spec}).

    Missing optional fields are filled in from `defaults` (or left out).
    Other fields are checked with `extra` (a spec), or refused if extra is
    None.
    """

    description = "a JSON object"

    def __init__(self, required=None, optional=None, extra=None, defaults=None):
        self.required, self.optional = dict(required or {}), dict(optional or {})
        self.extra, self.defaults = extra, dict(defaults or {})

    def check(self, value, where):
        if not isinstance(value, dict):
            self.fail(value, where)
        out = {}
        for name, spec in self.required.items():
            if name not in value:
                raise SchemaError(_join(where, name), f"present ({spec.description})", None)
            out[name] = spec.check(value[name], _join(where, name))
        for name, spec in self.optional.items():
            if name in value:
                out[name] = spec.check(value[name], _join(where, name))
            elif name in self.defaults:
                out[name] = self.defaults[name]
        for name, v in value.items():
            if name in self.required or name in self.optional:
                continue
            if self.extra is None:
                raise SchemaError(_join(where, name), "absent (an unknown field)", v)
            out[name] = self.extra.check(v, _join(where, name))
        return out


class JSONText(Spec):
    """A string holding JSON (safetensors metadata values are strings),
    parsed with bounded depth and checked against `spec`."""

    def __init__(self, spec, max_len=16 << 20):
        self.spec, self.max_len = spec, max_len
        self.description = f"a string of JSON: {spec.description}"

    def check(self, value, where):
        from fastnn.reading import load_json

        if not isinstance(value, str) or len(value) > self.max_len:
            self.fail(value, where)

        class Unparsable(Exception):
            pass

        try:
            parsed = load_json(value, where, error=Unparsable)
        except Unparsable as exc:
            raise SchemaError(where, "a string of valid JSON", value, str(exc)) from None
        return self.spec.check(parsed, where)
