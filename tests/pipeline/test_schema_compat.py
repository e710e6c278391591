"""check_backward: which schema changes let new readers read old data, and which do not."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from pipeline.codec import SCHEMA_DIR
from pipeline.dev.schema_compat import check_backward


def record(*fields: dict[str, Any], name: str = "Event", **extra: Any) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "telex.test",
        "fields": list(fields),
        **extra,
    }


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


BASE = record(
    field("id", "string"),
    field("count", "int"),
    field("note", ["null", "string"], default=None),
    field("state", {"type": "enum", "name": "State", "symbols": ["A", "B"]}),
    field("tags", {"type": "array", "items": "string"}, default=[]),
    field("attrs", {"type": "map", "values": "long"}, default={}),
    field("at_ms", {"type": "long", "logicalType": "timestamp-millis"}),
)


def changed(field_name: str, /, **changes: Any) -> dict[str, Any]:
    """BASE with field ``field_name`` updated by ``changes``."""
    schema = copy.deepcopy(BASE)
    for f in schema["fields"]:
        if f["name"] == field_name:
            f.update(changes)
    return schema


def without(name: str) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != name]
    return schema


def plus(*fields: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    schema["fields"].extend(fields)
    return schema


# --- compatible changes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        pytest.param(BASE, BASE, id="identical"),
        pytest.param(BASE, plus(field("extra", "int", default=0)), id="add-field-with-default"),
        pytest.param(
            BASE, plus(field("extra", ["null", "string"], default=None)), id="add-optional-field"
        ),
        pytest.param(BASE, without("note"), id="remove-field"),
        pytest.param(BASE, changed("count", type="long"), id="int-to-long"),
        pytest.param(BASE, changed("count", type="double"), id="int-to-double"),
        pytest.param(
            changed("count", type="float"), changed("count", type="double"), id="float-to-double"
        ),
        pytest.param(BASE, changed("id", type="bytes"), id="string-to-bytes"),
        pytest.param(changed("id", type="bytes"), BASE, id="bytes-to-string"),
        pytest.param(BASE, changed("count", type=["null", "int"]), id="type-to-nullable"),
        pytest.param(BASE, changed("count", type=["null", "long"]), id="int-into-union-of-long"),
        pytest.param(
            BASE, changed("note", type=["null", "string", "int"]), id="union-gains-branch"
        ),
        pytest.param(BASE, changed("note", type=["string", "null"]), id="union-reordered"),
        pytest.param(
            BASE,
            changed("state", type={"type": "enum", "name": "State", "symbols": ["A", "B", "C"]}),
            id="enum-gains-symbol",
        ),
        pytest.param(
            BASE,
            changed(
                "state",
                type={"type": "enum", "name": "State", "symbols": ["A", "Z"], "default": "Z"},
            ),
            id="enum-loses-symbol-but-has-default",
        ),
        pytest.param(
            BASE,
            changed("attrs", type={"type": "map", "values": "double"}),
            id="map-values-promoted",
        ),
        pytest.param(
            BASE,
            changed("tags", type={"type": "array", "items": "bytes"}),
            id="array-items-promoted",
        ),
        pytest.param(
            BASE, changed("id", name="key", aliases=["id"]), id="field-renamed-with-alias"
        ),
        pytest.param(
            BASE,
            {**copy.deepcopy(BASE), "name": "Renamed", "aliases": ["Event"]},
            id="record-renamed-with-alias",
        ),
        pytest.param(
            BASE, {**copy.deepcopy(BASE), "namespace": "telex.v2"}, id="namespace-changed"
        ),
        pytest.param(BASE, changed("note", doc="now documented"), id="doc-added"),
    ],
)
def test_compatible_change_reports_nothing(writer: dict[str, Any], reader: dict[str, Any]) -> None:
    """Changes Avro resolution accepts leave no problems."""
    assert check_backward(writer, reader) == []


# --- incompatible changes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("writer", "reader", "problem"),
    [
        pytest.param(
            BASE,
            plus(field("extra", "int")),
            "extra: field added without a default",
            id="add-field-without-default",
        ),
        pytest.param(
            changed("count", type="long"),
            BASE,
            "count: writer type long cannot be read as int",
            id="long-to-int",
        ),
        pytest.param(
            changed("count", type="double"),
            changed("count", type="float"),
            "count: writer type double cannot be read as float",
            id="double-to-float",
        ),
        pytest.param(
            BASE,
            changed("count", type="string"),
            "count: writer type int cannot be read as string",
            id="int-to-string",
        ),
        pytest.param(
            BASE,
            changed("note", type="string"),
            "note<0>: writer type null cannot be read as string",
            id="nullable-to-required",
        ),
        pytest.param(
            changed("note", type=["null", "string", "int"]),
            BASE,
            "note<2>: writer type int matches no branch of reader union",
            id="union-loses-branch",
        ),
        pytest.param(
            BASE,
            changed("state", type={"type": "enum", "name": "State", "symbols": ["A"]}),
            "state: enum State lacks writer symbols ['B'] and has no default",
            id="enum-loses-symbol",
        ),
        pytest.param(
            BASE,
            changed("state", type={"type": "enum", "name": "Phase", "symbols": ["A", "B"]}),
            "state: writer type enum State cannot be read as enum Phase",
            id="enum-renamed",
        ),
        pytest.param(
            BASE,
            changed("attrs", type={"type": "map", "values": "int"}),
            "attrs{}: writer type long cannot be read as int",
            id="map-values-narrowed",
        ),
        pytest.param(
            BASE,
            changed("tags", type={"type": "array", "items": "int"}),
            "tags[]: writer type string cannot be read as int",
            id="array-items-changed",
        ),
        pytest.param(
            BASE,
            changed("tags", type={"type": "map", "values": "string"}),
            "tags: writer type array cannot be read as map",
            id="array-to-map",
        ),
        pytest.param(
            BASE,
            changed("at_ms", type={"type": "long", "logicalType": "timestamp-micros"}),
            "at_ms: logicalType changed from timestamp-millis to timestamp-micros",
            id="logical-type-changed",
        ),
        pytest.param(
            BASE,
            {**copy.deepcopy(BASE), "name": "Other"},
            "$: writer type record Event cannot be read as record Other",
            id="record-renamed",
        ),
        pytest.param(
            BASE,
            changed("id", name="key"),
            "key: field added without a default",
            id="field-renamed-without-alias",
        ),
    ],
)
def test_incompatible_change_is_reported(
    writer: dict[str, Any], reader: dict[str, Any], problem: str
) -> None:
    """Each breaking change is reported once, at the path of the field it breaks."""
    assert check_backward(writer, reader) == [problem]


def test_fixed_size_change_is_reported() -> None:
    """A fixed of another size cannot hold the old bytes."""
    old = record(field("h", {"type": "fixed", "name": "Hash", "size": 16}))
    new = record(field("h", {"type": "fixed", "name": "Hash", "size": 32}))
    assert check_backward(old, new) == ["h: fixed Hash size changed from 16 to 32"]
    assert check_backward(old, old) == []


def test_nested_record_problems_carry_the_full_path() -> None:
    """A field added without default inside array items is reported at headers[].flag."""
    header = {"type": "record", "name": "Header", "fields": [field("key", "string")]}
    new_header = copy.deepcopy(header)
    new_header["fields"].append(field("flag", "boolean"))
    old = record(field("headers", {"type": "array", "items": header}, default=[]))
    new = record(field("headers", {"type": "array", "items": new_header}, default=[]))
    assert check_backward(old, new) == ["headers[].flag: field added without a default"]


def test_named_types_are_resolved_by_reference() -> None:
    """A second use of a named type by (short or full) name is checked against its definition."""
    state = {"type": "enum", "name": "State", "symbols": ["A", "B"]}
    old = record(field("a", state), field("b", "State"))
    new = record(field("a", {**state, "symbols": ["A", "B", "C"]}), field("b", "telex.test.State"))
    assert check_backward(old, new) == []
    narrowed = record(field("a", {**state, "symbols": ["A"]}), field("b", "State"))
    assert check_backward(old, narrowed) == [
        "a: enum State lacks writer symbols ['B'] and has no default",
        "b: enum State lacks writer symbols ['B'] and has no default",
    ]


def test_recursive_records_terminate() -> None:
    """A self-referencing record (a linked list) is checked without infinite recursion."""
    node = record(field("value", "int"), field("next", ["null", "Event"], default=None))
    wider = record(field("value", "long"), field("next", ["null", "Event"], default=None))
    assert check_backward(node, wider) == []
    assert check_backward(wider, node) == ["value: writer type long cannot be read as int"]


def test_undefined_reference_is_reported_not_raised() -> None:
    """A reference to a type the schema never defines is a problem, not a crash."""
    assert check_backward(record(field("x", "Missing")), record(field("x", "Missing"))) == [
        "x: writer refers to undefined type 'Missing'"
    ]


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.stem)
def test_every_repo_schema_is_compatible_with_itself(path: Any) -> None:
    """The checker understands every construct our real schemas use."""
    schema = json.loads(path.read_text())
    assert check_backward(schema, copy.deepcopy(schema)) == []
