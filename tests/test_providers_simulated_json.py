"""JSON for a schema (providers/simulated_json.py): what the simulated model writes as tool arguments and
structured answers always validates, with jsonschema and with the pydantic model a client parses it into."""

from __future__ import annotations

import enum
from datetime import date
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from pydantic import BaseModel, Field

from providers.simulated_json import Material, SchemaUnsupported, instance_for

MATERIAL = Material(
    words=("Paris", "weather", "forecast"),
    phrase="weather forecast Paris",
    sentence="It will be sunny in Paris.",
    numbers=(3.0,),
)


def assert_valid(schema: dict[str, Any], value: Any) -> None:
    cls = validator_for(schema)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(value)


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(BaseModel):
    city: str
    country: str | None = None


class Forecast(BaseModel):
    """Nested models, an enum with a default, optional fields, lists, a Literal, bounds."""

    place: Place
    unit: Unit = Unit.CELSIUS
    days: int = Field(ge=1, le=14)
    stops: list[Place]
    tags: list[str] = Field(default_factory=list, max_length=3)
    when: Literal["now", "tomorrow"]
    note: str | None = None
    starts: date
    contact: str = Field(json_schema_extra={"format": "email"})
    code: str = Field(pattern=r"^[A-Z]{3}-\d{2}$")
    chance: float = Field(gt=0, le=1, multiple_of=0.05)


class Node(BaseModel):
    """A recursive model: a tree of nodes."""

    name: str
    children: list[Node]
    parent: Node | None


def test_a_pydantic_model_with_nested_models_enums_optionals_and_lists_gets_a_valid_instance() -> None:
    schema = Forecast.model_json_schema()
    assert "$defs" in schema  # the model's schema refers to its parts, as pydantic writes it
    value = instance_for(schema, MATERIAL)
    assert_valid(schema, value)
    forecast = Forecast.model_validate(value)
    assert forecast.place.city == "Paris"  # the user's words fill strings
    assert forecast.days == 3  # and the user's numbers, where they fit
    assert forecast.unit is Unit.CELSIUS  # an optional field's default
    assert forecast.stops  # lists get an item while nesting is shallow
    assert "note" not in value  # an optional field whose default is null is left out


def test_a_recursive_model_ends() -> None:
    schema = Node.model_json_schema()
    value = instance_for(schema, MATERIAL)
    Node.model_validate(value)
    depth, node = 0, value
    while node["children"]:
        depth, node = depth + 1, node["children"][0]
    assert 0 < depth < 10


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "email"},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "uri"},
        {"type": "string", "format": "uuid"},
        {"type": "string", "format": "ipv4"},
        {"type": "string", "minLength": 40, "maxLength": 45},
        {"type": "string", "maxLength": 2},
        {"type": "string", "pattern": "^[a-z]+_[0-9]{4}$"},
        {"type": "string", "pattern": r"^\w+@\w+\.com$"},
        {"type": "string", "enum": ["a", "b"]},
        {"const": {"fixed": [1, 2]}},
        {"type": "integer", "minimum": 10, "maximum": 12},
        {"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 7},
        {"type": "integer", "multipleOf": 7, "minimum": 20},
        {"type": "number", "minimum": -1.5, "maximum": -1.25},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
        {"type": "number", "multipleOf": 0.1, "minimum": 0.25},
        {"type": "boolean"},
        {"type": "null"},
        {"type": ["string", "null"]},
        {"type": "array", "items": {"type": "integer"}, "minItems": 4, "uniqueItems": True},
        {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 3, "uniqueItems": True},
        {"type": "array", "maxItems": 0},
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
        {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "null"}]},
        {"oneOf": [{"type": "string", "maxLength": 1}, {"type": "integer"}]},
        {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"required": ["b"]}]},
        {"type": "object", "required": ["x"], "additionalProperties": {"type": "integer"}},
        {"type": "object", "minProperties": 2, "additionalProperties": {"type": "boolean"}},
        {"type": "object", "properties": {"q": {"type": "string"}}, "additionalProperties": False},
        {},
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"point": {"type": "array", "items": [{"type": "number"}, {"type": "number"}]}},
            "type": "object",
            "properties": {"at": {"$ref": "#/definitions/point"}},
            "required": ["at"],
        },
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "integer",
            "minimum": 5,
            "exclusiveMinimum": True,
        },
    ],
)
def test_each_supported_keyword_gets_a_valid_value(schema: dict[str, Any]) -> None:
    assert_valid(schema, instance_for(schema, MATERIAL))


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "string", "minLength": 5, "maxLength": 2}, "string"),
        ({"type": "integer", "minimum": 1, "maximum": 0}, "integer"),
        ({"type": "object", "required": ["missing"], "additionalProperties": False}, "additionalProperties"),
        ({"not": {}}, "no string fits"),
        ({"type": "string", "enum": ["a"], "not": {"const": "a"}}, "enum"),
        ({"$ref": "#/$defs/nowhere"}, "cannot resolve"),
        ({"type": "string", "pattern": "^(alpha|beta)[0-9]$"}, "string"),
        ({"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}, "required": ["a"]}, "itself"),
        (
            {
                "$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}, "minItems": 1}},
                "$ref": "#/$defs/n",
            },
            "deeper",
        ),
    ],
)
def test_a_schema_it_cannot_satisfy_fails_clearly(schema: dict[str, Any], reason: str) -> None:
    with pytest.raises(SchemaUnsupported, match=reason):
        instance_for(schema, MATERIAL)


def test_false_admits_nothing() -> None:
    with pytest.raises(SchemaUnsupported):
        instance_for(False, MATERIAL)


def test_prose_fields_get_the_sentence_and_search_fields_the_phrase() -> None:
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "query": {"type": "string"},
            "city": {"type": "string"},
        },
        "required": ["summary", "query", "city"],
    }
    assert instance_for(schema, MATERIAL) == {
        "summary": "It will be sunny in Paris.",
        "query": "weather forecast Paris",
        "city": "forecast",  # the third string: each string takes the next of the user's words
    }


def test_strings_take_the_users_words_in_turn() -> None:
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 3}
    assert instance_for(schema, MATERIAL) == ["Paris", "weather", "forecast"]


def test_a_users_number_outside_the_bounds_is_not_used() -> None:
    assert instance_for({"type": "integer", "minimum": 10, "maximum": 20}, MATERIAL) == 10


def test_without_words_strings_are_still_valid() -> None:
    assert instance_for({"type": "string", "minLength": 3}, Material(words=())) == "example"


def test_the_same_schema_and_material_give_the_same_value() -> None:
    schema = Forecast.model_json_schema()
    assert instance_for(schema, MATERIAL) == instance_for(schema, MATERIAL)


@given(
    low=st.integers(-1000, 1000),
    span=st.integers(0, 1000),
    step=st.integers(1, 50),
    exclusive=st.booleans(),
)
def test_any_satisfiable_integer_range_gets_a_value(low: int, span: int, step: int, exclusive: bool) -> None:
    high = low + span
    first = -(-low // step) * step  # the least multiple of step at or above low
    schema: dict[str, Any] = {"type": "integer", "multipleOf": step}
    if exclusive:
        schema |= {"exclusiveMinimum": low - 1, "exclusiveMaximum": high + 1}
    else:
        schema |= {"minimum": low, "maximum": high}
    if first > high:
        with pytest.raises(SchemaUnsupported):
            instance_for(schema, MATERIAL)
    else:
        Draft202012Validator(schema).validate(instance_for(schema, MATERIAL))


@given(low=st.integers(0, 300), span=st.integers(0, 300))
def test_any_satisfiable_string_length_gets_a_value(low: int, span: int) -> None:
    schema = {"type": "string", "minLength": low, "maxLength": low + span}
    Draft202012Validator(schema).validate(instance_for(schema, MATERIAL))


@given(
    low=st.floats(-1e6, 1e6, allow_nan=False),
    span=st.floats(0.001, 1e6, allow_nan=False),
    step=st.sampled_from([0.5, 0.25, 0.1, 0.01, 2.5]),
)
def test_fractional_multiples_within_a_range_get_a_value(low: float, span: float, step: float) -> None:
    # jsonschema checks a fractional multipleOf by dividing, so some multiples fail its check: a range
    # holding twenty of them holds some that pass.
    schema = {"type": "number", "minimum": low, "maximum": low + span + 20 * step, "multipleOf": step}
    Draft202012Validator(schema).validate(instance_for(schema, MATERIAL))


def satisfiable_schemas() -> st.SearchStrategy[dict[str, Any]]:
    """Schemas with no contradiction in them, as tools and response formats declare them."""
    lengths = st.tuples(st.integers(0, 30), st.integers(0, 30)).map(sorted)
    bounds = st.tuples(st.integers(-100, 100), st.integers(0, 50))
    leaves = st.one_of(
        lengths.map(lambda pair: {"type": "string", "minLength": pair[0], "maxLength": pair[1]}),
        st.sampled_from(["email", "date", "date-time", "uri", "uuid", "ipv4", "ipv6", "hostname"]).map(
            lambda name: {"type": "string", "format": name}
        ),
        bounds.map(lambda pair: {"type": "integer", "minimum": pair[0], "maximum": pair[0] + pair[1]}),
        bounds.map(lambda pair: {"type": "number", "exclusiveMinimum": pair[0], "maximum": pair[0] + 1}),
        st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True).map(lambda v: {"enum": v}),
        st.sampled_from([{"type": "boolean"}, {"type": "null"}, {}, {"const": "fixed"}]),
    )

    def composites(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        properties = st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), children, max_size=4)
        return st.one_of(
            st.tuples(properties, st.booleans()).map(
                lambda pair: {
                    "type": "object",
                    "properties": pair[0],
                    "required": sorted(pair[0])[: len(pair[0]) // 2 + pair[1]],
                    "additionalProperties": False,
                }
            ),
            st.tuples(children, st.integers(0, 3), st.integers(0, 3)).map(
                lambda triple: {
                    "type": "array",
                    "items": triple[0],
                    "minItems": triple[1],
                    "maxItems": triple[1] + triple[2],
                }
            ),
            children.map(lambda child: {"anyOf": [child, {"type": "null"}]}),
        )

    return st.recursive(leaves, composites, max_leaves=12)


@given(schema=satisfiable_schemas())
def test_any_satisfiable_schema_gets_a_valid_value(schema: dict[str, Any]) -> None:
    assert_valid(schema, instance_for(schema, MATERIAL))
