"""The JSON Schemas in ``schemas/`` and the msgspec models accept and reject the same documents.

Three kinds of evidence, each able to fail on its own:

* structure: every schema names the same properties, required fields, and nested objects as
  its model, and ``schemas/`` holds exactly one file per wire model;
* valid documents generated from each schema by hypothesis-jsonschema decode with the codec
  and round-trip (``encode(decode(x)) == x`` up to omitted ``null`` optionals);
* invalid documents - every single-point mutation of a hand-written example (drop a required
  field, wrong type, out-of-range number, too long string or array, extra property, unknown
  enum value, NaN/Infinity, ...) and random near-miss and arbitrary JSON - get the same verdict
  from ``jsonschema.Draft202012Validator`` and from the codec.

Both sides judge the same *bytes*. The schema side parses them strictly (``NaN`` and
``Infinity`` tokens are not JSON, whatever Python's ``json`` module accepts), then validates.

Two differences are irreducible and pinned by their own tests, so a change in either library
shows up here: an integral float (``5.0``) for an ``integer`` field is an integer to JSON Schema
but not to msgspec's strict decoder, and a lone UTF-16 surrogate escape (``"\\ud800"``) is a
string to Python's ``json`` but malformed to msgspec. The random generators avoid both.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as conjecture_utils
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator

from streamer.events import (
    BundleOffer,
    ClickEvent,
    DeadLetter,
    EventCodec,
    InvalidEvent,
    PurchaseEvent,
    RewardWindow,
)
from streamer.events import models as wire_models

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
CODEC = EventCodec()

Json = Any
Decoder = Callable[[bytes], object]

#: One entry per wire model: schema file stem -> (model, decoder).
CONTRACTS: dict[str, tuple[type[msgspec.Struct], Decoder]] = {
    "click_event": (ClickEvent, CODEC.decode_click),
    "purchase_event": (PurchaseEvent, CODEC.decode_purchase),
    "bundle_offer": (BundleOffer, CODEC.decode_offer),
    "reward_window": (RewardWindow, CODEC.decode_reward),
    "dead_letter": (DeadLetter, CODEC.decode_dead_letter),
}
NAMES = sorted(CONTRACTS)

# A valid document per contract with every optional field set, so every field's mutations run.
EXAMPLES: dict[str, Json] = {
    "click_event": {
        "event_id": "ck-1",
        "ts": 1_700_000_000_000,
        "user_id": "u1",
        "session_id": "s1",
        "item_id": "i1",
        "kind": "offer_impression",
        "offer_id": "of-1",
        "variant": 2,
        "propensity": 0.25,
        "price": 19.99,
    },
    "purchase_event": {
        "event_id": "pu-1",
        "ts": 1_700_000_000_000,
        "user_id": "u1",
        "session_id": "s1",
        "order_id": "o1",
        "items": [
            {"item_id": "i1", "quantity": 2, "unit_price": 3.5},
            {"item_id": "i2", "quantity": 1, "unit_price": 0.0},
        ],
        "offer_id": "of-1",
    },
    "bundle_offer": {
        "offer_id": "of-1",
        "ts": 1_700_000_000_000,
        "anchor_item_id": "i1",
        "segment": "all",
        "policy_version": "v1",
        "variants": [
            {
                "items": ["i1", "i2", "i3"],
                "discount_pct": 10.0,
                "bundle_price": 27.0,
                "probability": 0.7,
                "score": -1.5,
                "evidence": {"support": 12.5, "confidence": 0.4, "lift": 3.2},
            },
            {
                "items": ["i1", "i4"],
                "discount_pct": 0,
                "bundle_price": 12,
                "probability": 0.3,
                "score": 0.0,
                "evidence": {"support": 0.0, "confidence": 0.0, "lift": 0.0},
            },
        ],
        "expires_at": 1_700_000_600_000,
    },
    "reward_window": {
        "window_start": 1_700_000_000_000,
        "window_end": 1_700_000_060_000,
        "policy_version": "v1",
        "impressions": 100,
        "offer_clicks": 7,
        "conversions": 3,
        "revenue": 81.5,
        "reward_rate": 0.815,
        "ci95": [0.1, 1.6],
        "anchor_item_id": "i1",
        "segment": "all",
        "direct_conversions": 2,
        "direct_revenue": 60.0,
    },
    "dead_letter": {
        "ts": 1_700_000_000_000,
        "source_topic": "clicks",
        "partition": 3,
        "offset": 12_345,
        "kind": "schema",
        "reason": "Object missing required field `ts`",
        "value_b64": "eyJldmVudF9pZCI6ImUxIn0=",
        "key_b64": "czE=",
        "last_offset": 12_347,
    },
}


def _load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    return schema


SCHEMAS: dict[str, dict[str, Any]] = {name: _load(name) for name in NAMES}
VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --- the two judges --------------------------------------------------------------------------


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


def schema_accepts(name: str, raw: bytes) -> bool:
    """Strict JSON parse (no NaN/Infinity tokens), then draft 2020-12 validation."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # also UnicodeDecodeError and JSONDecodeError
        return False
    return bool(VALIDATORS[name].is_valid(doc))


def codec_accepts(name: str, raw: bytes) -> bool:
    try:
        CONTRACTS[name][1](raw)
    except InvalidEvent:
        return False
    return True


def dumps(doc: Json, *, ascii_only: bool = True) -> bytes:
    # allow_nan so that mutations can put NaN/Infinity tokens on the wire on purpose.
    return json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8")


# --- structure -------------------------------------------------------------------------------


def _top_level_models() -> set[type[msgspec.Struct]]:
    """Structs of ``streamer.events.models`` that are not nested inside another Struct."""
    structs = {
        obj
        for obj in vars(wire_models).values()
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj is not msgspec.Struct
    }
    nested: set[type[msgspec.Struct]] = set()
    for info in msgspec.inspect.multi_type_info(list(structs)):
        nested |= {t.cls for t in _struct_types_below(info)} - {info.cls}  # type: ignore[attr-defined]
    return structs - nested


def _struct_types_below(t: msgspec.inspect.Type) -> Iterator[msgspec.inspect.StructType]:
    if isinstance(t, msgspec.inspect.StructType):
        yield t
        for f in t.fields:
            yield from _struct_types_below(f.type)
    elif isinstance(t, msgspec.inspect.UnionType):
        for u in t.types:
            yield from _struct_types_below(u)
    elif isinstance(t, msgspec.inspect.ListType):
        yield from _struct_types_below(t.item_type)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_schema_files_are_exactly_the_wire_models() -> None:
    files = {p.name for p in SCHEMA_DIR.glob("*.json")}
    expected = {f"{_snake(m.__name__)}.schema.json" for m in _top_level_models()}
    assert files == expected
    assert {CONTRACTS[n][0] for n in NAMES} == _top_level_models()


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_draft_2020_12_with_id_title_and_descriptions(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://streamer.dev/schemas/{name}.v1.json"
    assert schema["title"] == CONTRACTS[name][0].__name__
    for obj in [schema, *schema.get("$defs", {}).values()]:
        assert obj["additionalProperties"] is False
        undescribed = [k for k, p in obj["properties"].items() if not p.get("description")]
        assert undescribed == [], f"{obj['title']}: properties without a description"


def _patterns(schema: Json) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            yield schema["pattern"]
        for child in schema.values():
            yield from _patterns(child)
    elif isinstance(schema, list):
        for child in schema:
            yield from _patterns(child)


@pytest.mark.parametrize("name", NAMES)
def test_patterns_mean_the_same_in_python_and_ecma_262(name: str) -> None:
    """Both judges here use Python's ``re``; other validators use ECMA-262, where ``$`` (no
    multiline flag) matches only at the very end and ``\\Z`` / ``\\A`` do not exist."""
    for pattern in _patterns(SCHEMAS[name]):
        assert not re.search(r"(?<!\\)\$|\\[AZz]", pattern), pattern


def _object_schemas(name: str) -> Iterator[tuple[type[msgspec.Struct], dict[str, Any]]]:
    """(model, its object schema) for the top-level model and every nested Struct."""
    root = SCHEMAS[name]
    info = msgspec.inspect.type_info(CONTRACTS[name][0])
    for st_type in _struct_types_below(info):
        schema = root if st_type.cls is CONTRACTS[name][0] else root["$defs"][st_type.cls.__name__]
        yield st_type.cls, schema


@pytest.mark.parametrize("name", NAMES)
def test_schema_properties_and_required_fields_match_the_model(name: str) -> None:
    for model, schema in _object_schemas(name):
        info = msgspec.inspect.type_info(model)
        assert isinstance(info, msgspec.inspect.StructType)
        assert set(schema["properties"]) == {f.encode_name for f in info.fields}, model
        assert set(schema["required"]) == {f.encode_name for f in info.fields if f.required}, model
        assert info.forbid_unknown_fields, model


# --- valid documents -------------------------------------------------------------------------


def _drop_nulls(doc: Json) -> Json:
    """What the codec writes back: ``omit_defaults`` drops unset optionals (no field is
    required and nullable, so every null in a valid document is an unset optional)."""
    if isinstance(doc, dict):
        return {k: _drop_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_drop_nulls(v) for v in doc]
    return doc


def _assert_round_trip(name: str, raw: bytes, doc: Json) -> None:
    model = CONTRACTS[name][1](raw)
    encoded = CODEC.encode(model)
    assert json.loads(encoded) == _drop_nulls(doc)
    assert VALIDATORS[name].is_valid(json.loads(encoded)), "the codec wrote an invalid document"
    assert CONTRACTS[name][1](encoded) == model


@pytest.mark.parametrize("name", NAMES)
def test_examples_are_valid_and_round_trip(name: str) -> None:
    raw = dumps(EXAMPLES[name])
    assert schema_accepts(name, raw)
    _assert_round_trip(name, raw, EXAMPLES[name])


@pytest.mark.parametrize("name", NAMES)
def test_documents_generated_from_the_schema_decode_and_round_trip(name: str) -> None:
    @SETTINGS
    @given(doc=from_schema(SCHEMAS[name]), ascii_only=st.booleans())
    def check(doc: Json, ascii_only: bool) -> None:
        raw = dumps(doc, ascii_only=ascii_only)
        assert schema_accepts(name, raw)
        _assert_round_trip(name, raw, doc)

    check()


# --- invalid documents: schema-directed single-point mutations ------------------------------


def _deref(root: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/$defs/"), ref
    target: dict[str, Any] = root["$defs"][ref.removeprefix("#/$defs/")]
    return target


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema["type"]
    return [t] if isinstance(t, str) else list(t)


# JSON values of every type, as raw tokens where Python cannot produce them from a value.
_WRONG_TYPED: list[tuple[str, Json]] = [
    ("null", None),
    ("boolean", True),
    ("integer", 7),
    ("number", 7.5),
    ("string", "7"),
    ("array", [7]),
    ("object", {"x": 7}),
]


def _fits(type_name: str, allowed: list[str]) -> bool:
    return type_name in allowed or (type_name == "integer" and "number" in allowed)


def _value_mutations(
    root: dict[str, Any], schema: dict[str, Any], value: Json
) -> Iterator[tuple[str, Json]]:
    """Yield (label, replacement) pairs; each replacement violates ``schema`` on its own."""
    schema = _deref(root, schema)
    allowed = _types(schema)
    for type_name, wrong in _WRONG_TYPED:
        if not _fits(type_name, allowed):
            yield f"wrong type {type_name}", wrong
    if "string" in allowed:
        if "enum" in schema:
            yield "unknown enum value", "not-" + "-".join(schema["enum"])
            yield "enum value in another case", schema["enum"][0].upper()
        if schema.get("minLength", 0) > 0:
            yield "too short string", "x" * (schema["minLength"] - 1)
        if "maxLength" in schema:
            yield "too long string", "x" * (schema["maxLength"] + 1)
            # Length counts code points, not UTF-8 bytes or UTF-16 units, on both sides.
            yield "too long astral string", "\U0001f600" * (schema["maxLength"] + 1)
        if "pattern" in schema and isinstance(value, str):
            # Python's `$` (both judges here) matches before a final newline; ECMA-262's, the
            # dialect JSON Schema specifies, does not: a pattern must not leave it to `$`.
            yield "valid string and a final newline", value + "\n"
    numeric = "integer" in allowed or "number" in allowed
    if numeric:
        yield "NaN token", _Token("NaN")
        yield "Infinity token", _Token("Infinity")
        yield "-Infinity token", _Token("-Infinity")
        yield "NaN as a string", "NaN"
        yield "inf as a string", "inf"
        yield "number as a string", "1"
        yield "overflowing number", _Token("1e400")
        step = 1 if "number" not in allowed else 0.5
        if "minimum" in schema:
            yield "below minimum", schema["minimum"] - step
            if "number" in allowed:
                yield "just below minimum", math.nextafter(schema["minimum"], -math.inf)
        if "maximum" in schema:
            yield "above maximum", schema["maximum"] + step
            if "number" in allowed:
                yield "just above maximum", math.nextafter(schema["maximum"], math.inf)
        if "exclusiveMinimum" in schema:
            yield "at exclusive minimum", schema["exclusiveMinimum"]
        if "exclusiveMaximum" in schema:
            yield "at exclusive maximum", schema["exclusiveMaximum"]
        if "integer" in allowed:
            yield "fractional number for an integer", 1.5
    if "array" in allowed and isinstance(value, list):
        if schema.get("minItems", 0) > 0:
            yield "too short array", value[: schema["minItems"] - 1]
        if "maxItems" in schema:
            yield "too long array", (value * (schema["maxItems"] + 1))[: schema["maxItems"] + 1]
    if "object" in allowed and isinstance(value, dict):
        yield "extra property", {**value, "unexpected": 1}
        yield "extra null property", {**value, "unexpected": None}
        for key in schema["required"]:
            yield f"missing {key}", {k: v for k, v in value.items() if k != key}


class _Token:
    """A raw JSON token (NaN, Infinity, 1e400) to splice into a document's text."""

    def __init__(self, text: str) -> None:
        self.text = text


Producer = Callable[[dict[str, Any], dict[str, Any], Json], Iterator[tuple[str, Json]]]


def _single_point(
    root: dict[str, Any], schema: dict[str, Any], value: Json, produce: Producer, path: str = "$"
) -> Iterator[tuple[str, Json]]:
    """Every document made by replacing one value of ``value`` (itself included) with what
    ``produce`` yields for it, as (label, whole document)."""
    for label, replacement in produce(root, schema, value):
        yield f"{path}: {label}", replacement
    schema = _deref(root, schema)
    if isinstance(value, dict):
        for key, child in value.items():
            sub = schema["properties"][key]
            for label, bad in _single_point(root, sub, child, produce, f"{path}.{key}"):
                yield label, {**value, key: bad}
    elif isinstance(value, list):
        for i, child in enumerate(value):
            for label, bad in _single_point(root, schema["items"], child, produce, f"{path}[{i}]"):
                yield label, [*value[:i], bad, *value[i + 1 :]]


def _mutations(
    root: dict[str, Any], schema: dict[str, Any], value: Json
) -> Iterator[tuple[str, Json]]:
    """Every single-point invalid mutation of the valid ``value``, as (label, whole document)."""
    return _single_point(root, schema, value, _value_mutations)


def _boundary_values(
    root: dict[str, Any], schema: dict[str, Any], value: Json
) -> Iterator[tuple[str, Json]]:
    """Yield (label, replacement) pairs; each replacement is valid but at the edge of a bound.

    These catch a schema that is looser than its model; the mutations catch a stricter one.
    """
    schema = _deref(root, schema)
    allowed = _types(schema)
    if "null" in allowed:
        yield "null optional", None
    if "string" in allowed:
        for member in schema.get("enum", []):
            yield f"enum value {member}", member
        if "enum" not in schema:
            yield "shortest string", "x" * schema.get("minLength", 0)
            if "maxLength" in schema:
                yield "longest string", "x" * schema["maxLength"]
                yield "longest astral string", "\U0001f600" * schema["maxLength"]
    integer = "integer" in allowed and "number" not in allowed
    for bound in ("minimum", "maximum"):
        if bound in schema:
            yield f"at {bound}", schema[bound]
    if "exclusiveMinimum" in schema:
        bound = schema["exclusiveMinimum"]
        yield (
            "just above exclusive minimum",
            bound + 1 if integer else math.nextafter(bound, math.inf),
        )
    if "exclusiveMaximum" in schema:
        bound = schema["exclusiveMaximum"]
        yield (
            "just below exclusive maximum",
            bound - 1 if integer else math.nextafter(bound, -math.inf),
        )
    if "array" in allowed and isinstance(value, list) and value:
        for bound in ("minItems", "maxItems"):
            if bound in schema:
                yield f"array at {bound}", (value * schema[bound])[: schema[bound]]
    if "object" in allowed and isinstance(value, dict):
        required_only = {k: v for k, v in value.items() if k in schema["required"]}
        yield "required fields only", required_only


def _dumps_with_tokens(doc: Json) -> bytes:
    tokens: list[str] = []

    def placeholder(obj: object) -> str:
        if isinstance(obj, _Token):
            tokens.append(obj.text)
            return f"__token_{len(tokens) - 1}__"
        raise TypeError(repr(obj))

    text = json.dumps(doc, default=placeholder, ensure_ascii=False)
    for i, token in enumerate(tokens):
        text = text.replace(f'"__token_{i}__"', token)
    return text.encode("utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_every_single_point_mutation_of_the_example_is_rejected_by_both(name: str) -> None:
    mutations = list(_mutations(SCHEMAS[name], SCHEMAS[name], EXAMPLES[name]))
    disagreements = []
    for label, doc in mutations:
        raw = _dumps_with_tokens(doc)
        verdicts = (schema_accepts(name, raw), codec_accepts(name, raw))
        if verdicts != (False, False):
            disagreements.append((label, verdicts))
    assert disagreements == [], "(schema accepts, codec accepts) for invalid documents"
    # The mutator must have exercised every kind of rule, or the test proves little.
    kinds = {label.split(": ", 1)[1].split(" ")[0] for label, _ in mutations}
    assert {"wrong", "missing", "extra", "too"} <= kinds
    mutated_paths = {label.split(": ", 1)[0] for label, _ in mutations}
    assert {f"$.{key}" for key in SCHEMAS[name]["properties"]} <= mutated_paths


@pytest.mark.parametrize("name", NAMES)
def test_every_boundary_value_in_the_example_is_accepted_by_both(name: str) -> None:
    edits = list(_single_point(SCHEMAS[name], SCHEMAS[name], EXAMPLES[name], _boundary_values))
    disagreements = []
    for label, doc in edits:
        raw = dumps(doc, ascii_only=False)
        verdicts = (schema_accepts(name, raw), codec_accepts(name, raw))
        if verdicts != (True, True):
            disagreements.append((label, verdicts))
    assert disagreements == [], "(schema accepts, codec accepts) for valid documents"
    assert {f"$.{key}" for key in SCHEMAS[name]["properties"]} <= {
        label.split(": ", 1)[0] for label, _ in edits
    }


@pytest.mark.parametrize("name", NAMES)
def test_mutations_of_generated_documents_are_rejected_by_both(name: str) -> None:
    @SETTINGS
    @given(doc=from_schema(SCHEMAS[name]), data=st.data())
    def check(doc: Json, data: st.DataObject) -> None:
        mutations = list(_mutations(SCHEMAS[name], SCHEMAS[name], doc))
        label, bad = data.draw(st.sampled_from(mutations), label="mutation")
        raw = _dumps_with_tokens(bad)
        assert not schema_accepts(name, raw), label
        assert not codec_accepts(name, raw), label

    check()


# --- near misses and arbitrary JSON: the verdicts agree ---------------------------------------

# Integral floats are left out on purpose: see test_integral_float_for_an_integer_field_...
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.text(max_size=70),
    st.sampled_from(["", "view", "schema", "NaN", "inf", "0", "x" * 64, "x" * 65]),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _near_miss(name: str) -> st.SearchStrategy[Json]:
    """Objects with the model's keys whose values are each valid or arbitrary."""
    root = SCHEMAS[name]

    def field(prop: dict[str, Any]) -> st.SearchStrategy[Json]:
        sub = {**prop, "$defs": root.get("$defs", {})}
        return st.one_of(from_schema(sub), _json_values)

    props = root["properties"]
    required = {k: field(props[k]) for k in root["required"]}
    optional = {k: field(v) for k, v in props.items() if k not in root["required"]}
    return st.fixed_dictionaries(required, optional=optional)


@pytest.mark.parametrize("name", NAMES)
def test_near_miss_documents_get_the_same_verdict(name: str) -> None:
    @SETTINGS
    @given(doc=_near_miss(name))
    def check(doc: Json) -> None:
        raw = dumps(doc, ascii_only=False)
        assert schema_accepts(name, raw) == codec_accepts(name, raw)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_arbitrary_json_gets_the_same_verdict(name: str) -> None:
    @settings(SETTINGS, max_examples=100)
    @given(doc=_json_values)
    def check(doc: Json) -> None:
        raw = dumps(doc)
        assert schema_accepts(name, raw) == codec_accepts(name, raw)

    check()


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"nul", b"\xff", b'{"ts": NaN}', b"Infinity", b"[1,]", b"{} {}", b"\xef\xbb\xbf{}"],
)
@pytest.mark.parametrize("name", NAMES)
def test_bytes_that_are_not_json_are_rejected_by_both(name: str, raw: bytes) -> None:
    assert (schema_accepts(name, raw), codec_accepts(name, raw)) == (False, False)


# --- the two known, irreducible differences (pinned so a library change shows up) ------------


def test_integral_float_for_an_integer_field_is_an_integer_to_json_schema_only() -> None:
    doc = {**EXAMPLES["click_event"], "ts": 1_700_000_000_000.0}
    raw = dumps(doc)
    assert b"1700000000000.0" in raw
    assert schema_accepts("click_event", raw)
    assert not codec_accepts("click_event", raw)


def test_lone_surrogate_escape_is_a_string_to_python_json_only() -> None:
    raw = dumps({**EXAMPLES["click_event"], "item_id": "\ud800"})
    assert b"\\ud800" in raw
    assert schema_accepts("click_event", raw)
    assert not codec_accepts("click_event", raw)


def test_hypothesis_is_compatible_with_hypothesis_jsonschema() -> None:
    # hypothesis-jsonschema 0.23.1 drives objects with conjecture's many.more(), which
    # hypothesis 6.156 removed: without this check every generator above errors obscurely.
    assert hasattr(conjecture_utils.many, "more"), (
        "hypothesis >= 6.156 breaks hypothesis-jsonschema 0.23.1; pin hypothesis<6.156"
    )
