"""JSON that fits a JSON Schema, for the simulated model: tool-call arguments and structured answers.

`instance_for` builds a value from a schema, filling strings with the user's words and numbers with
the user's numbers where they fit, then validates it with `jsonschema` (formats too, where the installed
checkers know them). It never returns a value that does not validate: a schema it cannot satisfy raises
`SchemaUnsupported`. Each candidate value is checked with `jsonschema` as well, so this module only
proposes values and never judges them itself.

It reads `type` (or a list of types), `const`, `enum`, `$ref` (within the document: `$defs`,
`definitions`), `allOf` (merged), `anyOf` / `oneOf` (the first branch whose value validates; `null`
last, or first once nesting is deep, so that recursive models end), objects (`properties`, `required`,
`additionalProperties`, `minProperties`, and the `default` of an optional property), arrays (`items`,
`prefixItems`, `minItems`, `maxItems`, `uniqueItems`), strings (`format`, `minLength`, `maxLength`, and a
`pattern` made of literals, character classes and quantifiers) and numbers (`minimum`, `maximum`,
`exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

__all__ = ["Material", "SchemaUnsupported", "instance_for"]

Schema = Mapping[str, Any] | bool
# Past this depth optional properties, optional items and nullable values are left out, so that a
# recursive model (a tree of nodes) ends; a schema that still nests deeper cannot be satisfied.
OPTIONAL_DEPTH = 3
MAX_DEPTH = 32
# How many multiples of a fractional `multipleOf` are tried from the lowest candidate up.
FRACTIONAL_MULTIPLES = 24
# Properties whose name asks for prose get a sentence; those that ask for a search get a phrase.
_PROSE = frozenset(
    {"answer", "summary", "text", "content", "description", "explanation", "message", "reply"}
    | {"response", "body", "comment", "note", "notes", "reasoning", "details"}
)
_PHRASE = frozenset({"query", "q", "search", "question", "topic", "keywords", "input", "prompt", "title"})
# A value for each format the checkers know (and a few they do not), `{word}` an ASCII user's word.
_FORMATS = {
    "date": "2025-01-15",
    "date-time": "2025-01-15T09:30:00Z",
    "time": "09:30:00Z",
    "duration": "P1D",
    "email": "{word}@example.com",
    "idn-email": "{word}@example.com",
    "uri": "https://example.com/{word}",
    "url": "https://example.com/{word}",
    "uri-reference": "/{word}",
    "iri": "https://example.com/{word}",
    "hostname": "{word}.example.com",
    "idn-hostname": "{word}.example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_NULL = {"type": "null"}


class SchemaUnsupported(Exception):
    """No value this module can build validates against the schema."""


@dataclass(frozen=True, slots=True)
class Material:
    """What values are made of: the user's telling words (best first), a phrase of them in the order
    the user wrote them, a sentence of the answer for prose fields, and the numbers in the message."""

    words: tuple[str, ...]
    phrase: str = ""
    sentence: str = ""
    numbers: tuple[float, ...] = ()


def instance_for(schema: Schema, material: Material) -> Any:
    """A value valid against `schema` (a JSON Schema document), made from `material`: the same value
    for the same schema and material. `SchemaUnsupported` says what could not be satisfied."""
    document: Mapping[str, Any] = {} if schema is True else {"not": {}} if schema is False else schema
    builder = _Builder(document, material)
    value = builder.build(document, 0)
    error = best_match(builder.validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the value"
        raise SchemaUnsupported(f"{where}: {error.message}")
    return value


def _merged(schemas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`allOf` as one schema: properties and required lists united, other keywords the last one's."""
    merged: dict[str, Any] = {}
    for schema in schemas:
        for key, value in schema.items():
            if key == "properties":
                merged[key] = {**merged.get(key, {}), **value}
            elif key == "required":
                merged[key] = list(dict.fromkeys([*merged.get(key, []), *value]))
            else:
                merged[key] = value
    return merged


def _types(schema: Mapping[str, Any], deep: bool) -> list[str]:
    """The types to try, in order: as declared, else as the keywords suggest; `null` last unless deep."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return sorted((str(kind) for kind in declared), key=lambda kind: (kind == "null") != deep)
    if {"properties", "required", "additionalProperties", "minProperties"} & schema.keys():
        return ["object"]
    if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
        return ["array"]
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & schema.keys():
        return ["number"]
    return ["string"]


def _brief(schema: Mapping[str, Any]) -> str:
    text = repr({key: value for key, value in schema.items() if key not in ("$defs", "definitions")})
    return text if len(text) <= 120 else text[:117] + "..."


class _Builder:
    """Builds a value for one document; `$ref`s are resolved within it."""

    def __init__(self, document: Mapping[str, Any], material: Material) -> None:
        cls = validator_for(document)
        self.validator = cls(document, format_checker=cls.FORMAT_CHECKER)
        try:
            resource = Resource.from_contents(document, default_specification=DRAFT202012)
        except Exception:  # an unknown `$schema`: read as the newest draft, as `validator_for` does
            resource = DRAFT202012.create_resource(document)
        self.resolver = Registry().with_resource("", resource).resolver()
        self.material = material
        self.strings = 0  # strings built so far: each takes the next of the user's words

    def valid(self, schema: Schema, value: Any) -> bool:
        return bool(self.validator.evolve(schema=schema).is_valid(value))

    def first_valid(self, schema: Mapping[str, Any], candidates: Iterable[Any], what: str) -> Any:
        for candidate in candidates:
            if self.valid(schema, candidate):
                return candidate
        raise SchemaUnsupported(f"no {what} fits {_brief(schema)}")

    def dereferenced(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """The schema with its `$ref` replaced by what it points to (its other keywords kept)."""
        seen: set[str] = set()
        while isinstance(reference := schema.get("$ref"), str):
            if reference in seen:
                raise SchemaUnsupported(f"$ref {reference!r} refers only to itself")
            seen.add(reference)
            try:
                target = self.resolver.lookup(reference).contents
            except Unresolvable as error:
                raise SchemaUnsupported(f"cannot resolve $ref {reference!r}") from error
            rest = {key: value for key, value in schema.items() if key != "$ref"}
            schema = {**target, **rest} if isinstance(target, Mapping) else {"not": {}}
        return schema

    def build(self, schema: Schema, depth: int, key: str = "", index: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise SchemaUnsupported(f"the schema nests deeper than {MAX_DEPTH} levels")
        if isinstance(schema, bool):
            if not schema:
                raise SchemaUnsupported("the schema `false` admits no value")
            schema = {}
        schema = self.dereferenced(schema)
        if "allOf" in schema:
            parts = [self.dereferenced(part) for part in schema["allOf"] if isinstance(part, Mapping)]
            rest = {name: value for name, value in schema.items() if name != "allOf"}
            return self.build(_merged([*parts, rest]), depth + 1, key, index)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema:
            values = list(schema["enum"])
            turn = index % len(values) if values else 0
            return copy.deepcopy(self.first_valid(schema, values[turn:] + values[:turn], "value of the enum"))
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                return self.branch(schema, keyword, depth, key, index)
        return self.typed(schema, depth, key, index)

    def branch(self, schema: Mapping[str, Any], keyword: str, depth: int, key: str, index: int) -> Any:
        """The first branch whose value validates against the whole schema (for `oneOf`, against
        exactly one branch)."""
        rest = {name: value for name, value in schema.items() if name != keyword}
        deep = depth >= OPTIONAL_DEPTH
        branches = sorted(schema[keyword], key=lambda part: (part == _NULL) != deep)
        for part in branches:
            merged = _merged([rest, self.dereferenced(part)]) if isinstance(part, Mapping) else part
            try:
                value = self.build(merged, depth + 1, key, index)
            except SchemaUnsupported:
                continue
            if self.valid(schema, value):
                return value
        raise SchemaUnsupported(f"no branch of {keyword} fits {_brief(schema)}")

    def typed(self, schema: Mapping[str, Any], depth: int, key: str, index: int) -> Any:
        failures: list[str] = []
        for kind in _types(schema, deep=depth >= OPTIONAL_DEPTH):
            try:
                if kind == "object":
                    return self.object(schema, depth)
                if kind == "array":
                    return self.array(schema, depth)
                if kind == "string":
                    return self.string(schema, key)
                if kind in ("integer", "number"):
                    return self.number(schema, kind == "integer", index)
                if kind == "boolean":
                    return self.first_valid(schema, (index % 2 == 0, index % 2 == 1), "boolean")
                if kind == "null":
                    return self.first_valid(schema, [None], "null")
                failures.append(f"unknown type {kind!r}")
            except SchemaUnsupported as error:
                failures.append(str(error))
        raise SchemaUnsupported("; ".join(failures))

    def object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        """The required properties; the optional ones while nesting is shallow (their default when it
        is not null, else a built value); more from `additionalProperties` for `minProperties`."""
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = [name for name in schema.get("required", []) if isinstance(name, str)]
        value: dict[str, Any] = {}
        for name, part in properties.items():
            if name in required:
                value[name] = self.build(part, depth + 1, name)
            elif isinstance(part, Mapping) and "default" in part:
                if part["default"] is not None and self.valid(part, part["default"]):
                    value[name] = copy.deepcopy(part["default"])
            elif depth < OPTIONAL_DEPTH:
                with contextlib.suppress(SchemaUnsupported):  # an optional property may be left out
                    value[name] = self.build(part, depth + 1, name)
        missing = [name for name in required if name not in value]
        wanted = int(schema.get("minProperties", 0)) - len(value) - len(missing)
        missing += [f"field{number}" for number in range(1, wanted + 1)]
        extra = schema.get("additionalProperties", True)
        for name in missing:
            if extra is False:
                raise SchemaUnsupported(f"{name!r} is required but additionalProperties is false")
            value[name] = self.build(extra, depth + 1, name)
        return value

    def array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        """`minItems` items, or one while nesting is shallow; each built with its index, so that the
        items differ (for `uniqueItems`)."""
        items = schema.get("items", True)
        prefix: Sequence[Any] = schema.get("prefixItems", [])
        if isinstance(items, list):  # drafts before 2020-12: a list of `items` is a tuple's items
            prefix, items = items, schema.get("additionalItems", True)
        count = max(int(schema.get("minItems", 0)), 1 if depth < OPTIONAL_DEPTH else 0)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        if items is False:
            count = min(count, len(prefix))
        return [
            self.build(prefix[index] if index < len(prefix) else items, depth + 1, index=index)
            for index in range(count)
        ]

    def string(self, schema: Mapping[str, Any], key: str) -> str:
        words = self.material.words or ("example",)
        word = words[self.strings % len(words)]
        self.strings += 1
        candidates: list[str] = []
        if isinstance(made := _FORMATS.get(schema.get("format", "")), str):
            candidates.append(made.format(word=re.sub(r"[^a-z0-9]", "", word.lower()) or "example"))
        if key.lower() in _PROSE and self.material.sentence:
            candidates.append(self.material.sentence)
        if key.lower() in _PHRASE and self.material.phrase:
            candidates.append(self.material.phrase)
        candidates += [word, word.lower(), word.upper(), self.material.phrase or word]
        if isinstance(pattern := schema.get("pattern"), str) and (made := _from_pattern(pattern)):
            candidates.append(made)
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        filler = " ".join(words)
        fitted = (_fit(candidate, low, high, filler) for candidate in candidates)
        return str(self.first_valid(schema, fitted, "string"))

    def number(self, schema: Mapping[str, Any], integer: bool, index: int) -> Any:
        """The user's numbers first (the item's index added, so that items differ), then 1 and 0, then
        values at and inside the bounds; snapped to `multipleOf`."""
        preferred = [n for n in self.material.numbers if not integer or float(n).is_integer()]
        candidates: list[float] = [value + index for value in (*preferred, 1, 0)] + _near_bounds(schema)
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            candidates = [multiple for candidate in candidates for multiple in _multiples(candidate, step)]
        if integer:
            whole = (int(candidate) for candidate in candidates if float(candidate).is_integer())
            return self.first_valid(schema, whole, "integer")
        return self.first_valid(schema, candidates, "number")


def _fit(text: str, low: int, high: Any, filler: str) -> str:
    """`text` padded with `filler` to `low` characters and cut to `high`."""
    while len(text) < low:
        text = f"{text} {filler}"
    return text[:high] if isinstance(high, int) else text


def _near_bounds(schema: Mapping[str, Any]) -> list[float]:
    """Values at each bound and just inside it (for exclusive bounds), and between them."""
    low, high = schema.get("minimum"), schema.get("maximum")
    exclusive_low, exclusive_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    # Draft 4 has `exclusiveMinimum: true` beside `minimum`; later drafts give the bound itself.
    if isinstance(exclusive_low, int | float) and not isinstance(exclusive_low, bool):
        low = exclusive_low if low is None else max(low, exclusive_low)
    if isinstance(exclusive_high, int | float) and not isinstance(exclusive_high, bool):
        high = exclusive_high if high is None else min(high, exclusive_high)
    values: list[float] = []
    if isinstance(low, int | float):
        values += [low, math.floor(low) + 1, low + 0.5]
    if isinstance(high, int | float):
        values += [high, math.ceil(high) - 1, high - 0.5]
    if isinstance(low, int | float) and isinstance(high, int | float):
        values.append((low + high) / 2)
    return values


def _multiples(value: float, step: float) -> list[float]:
    """Multiples of `step` from `value` up. For a fractional step, rounded ones too, and more of
    them: `jsonschema` checks by dividing, and in floating point 3 * 0.1 / 0.1 is not 3."""
    count = math.ceil(value / step)
    if isinstance(step, int):
        return [count * step, (count + 1) * step, (count - 1) * step]
    near = [(count + offset) * step for offset in range(-1, FRACTIONAL_MULTIPLES)]
    return [multiple for exact in near for multiple in (exact, round(exact, 12))]


# --- A string for a `pattern` made of literals, character classes and quantifiers -----------------

_SAMPLE = {"d": "1", "w": "a", "s": " ", "D": "a", "W": "-", "S": "a"}
_ATOM = re.compile(
    r"\\(?P<escape>.)|\[(?P<negated>\^?)(?P<members>(?:\\.|[^\]\\])+)\]|(?P<dot>\.)"
    r"|(?P<literal>[^\\\[\](){}|*+?^$.])"
)
_QUANTIFIER = re.compile(r"\{(?P<low>\d+)(?:,\d*)?\}|(?P<symbol>[*+?])")


def _sample(atom: re.Match[str]) -> str | None:
    """A character the atom matches (a guess for classes: `jsonschema` has the last word)."""
    if atom["escape"] is not None:
        return _SAMPLE.get(atom["escape"], atom["escape"])
    members = atom["members"]
    if members is not None:
        if atom["negated"]:
            return next((char for char in "a1_-" if char not in members), None)
        return _SAMPLE.get(members[1], members[1]) if members.startswith("\\") else members[0]
    return "a" if atom["dot"] is not None else str(atom["literal"])


def _from_pattern(pattern: str) -> str | None:
    """A string a simple pattern matches (anchors, literals, classes, quantifiers: each atom repeated
    its least count), or None for a pattern with groups, alternation or anything else."""
    body = pattern.removeprefix("^")
    body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
    made: list[str] = []
    position = 0
    while position < len(body):
        atom = _ATOM.match(body, position)
        sample = _sample(atom) if atom is not None else None
        if atom is None or sample is None:
            return None
        position, count = atom.end(), 1
        quantifier = _QUANTIFIER.match(body, position)
        if quantifier is not None:
            position = quantifier.end()
            symbol = quantifier["symbol"]
            count = int(quantifier["low"]) if symbol is None else int(symbol == "+")
            position += body[position : position + 1] in ("?", "+")  # lazy or possessive
        made.append(sample * count)
    return "".join(made)
