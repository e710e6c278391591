"""AvroCodec: wire layout, round trips, and refusal of anything it cannot decode cleanly."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codec import (
    SCHEMA_DIR,
    SCHEMAS,
    AvroCodec,
    ConfluentRegistry,
    SchemaName,
    load_schemas,
)
from pipeline.errors import (
    CodecError,
    SchemaMismatchError,
    SchemaViolationError,
    UnknownSchemaError,
)
from tests.fixtures.samples import NAMES, sample

SCHEMA_FILES = sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc"))


# --- CRC-64-AVRO, written from the spec's reference algorithm ("Schema Fingerprints") ---------

_EMPTY = 0xC15D213AA4D7A795


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    """The spec's ``fingerprint64``, as an unsigned 64-bit int."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def _signed_to_le(value: int) -> bytes:
    return (value & (2**64 - 1)).to_bytes(8, "little")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


class FakeRegistry:
    """In-memory RegistryClient: ids are handed out in registration order, from 100."""

    def __init__(self) -> None:
        self.by_id: dict[int, str] = {}
        self.calls: list[tuple[str, Any]] = []

    def register(self, subject: str, schema_str: str) -> int:
        self.calls.append(("register", subject))
        for schema_id, known in self.by_id.items():
            if known == schema_str:
                return schema_id
        schema_id = 100 + len(self.by_id)
        self.by_id[schema_id] = schema_str
        return schema_id

    def lookup(self, schema_id: int) -> str:
        self.calls.append(("lookup", schema_id))
        try:
            return self.by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"no schema id {schema_id}") from None


def _without_optionals(name: str) -> dict[str, Any]:
    """The sample with every nullable field set to null and every list or map empty."""
    record = sample(name)
    for field in json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())["fields"]:
        if isinstance(field["type"], list) and "null" in field["type"]:
            record[field["name"]] = None
        elif field.get("default") in ([], {}):
            record[field["name"]] = type(field["default"])()
    return record


# --- catalogue --------------------------------------------------------------------------------


def test_every_schema_file_has_a_name_constant_and_a_sample(codec: AvroCodec) -> None:
    """SchemaName, the samples and the schemas/ directory list the same events."""
    assert sorted(SchemaName) == sorted(NAMES) == SCHEMA_FILES == sorted(codec.names)


def test_schemas_mapping_is_loaded_lazily_from_the_repo() -> None:
    """SCHEMAS maps every short name to its parsed schema."""
    assert sorted(SCHEMAS) == SCHEMA_FILES
    assert SCHEMAS["message_accepted"]["name"] == "telex.v1.MessageAccepted"
    assert load_schemas(SCHEMA_DIR).keys() == SCHEMAS.keys()


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_sample_round_trips(codec: AvroCodec, name: str) -> None:
    """Every schema's sample decodes to exactly what was encoded, timestamps as int ms."""
    record = sample(name)
    assert codec.decode(codec.encode(name, record), expected=name) == record


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_sample_without_optionals_round_trips(codec: AvroCodec, name: str) -> None:
    """Null branches of unions and empty collections survive the round trip too."""
    record = _without_optionals(name)
    assert codec.decode_with_name(codec.encode(name, record)) == (name, record)


def test_missing_fields_with_defaults_decode_as_their_defaults(codec: AvroCodec) -> None:
    """A producer may omit defaulted fields; consumers see the schema defaults."""
    record = sample("message_accepted")
    for field in ("body", "media_urls", "metadata", "attempt", "trace_id"):
        del record[field]
    decoded = codec.decode(codec.encode("message_accepted", record))
    assert (decoded["body"], decoded["media_urls"], decoded["metadata"]) == (None, [], {})
    assert (decoded["attempt"], decoded["trace_id"]) == (0, None)


def test_encode_accepts_schema_name_constants(codec: AvroCodec) -> None:
    """SchemaName members are plain strings to the codec."""
    data = codec.encode(SchemaName.DELIVERY_STATUS, sample("delivery_status"))
    assert codec.decode_with_name(data)[0] == "delivery_status"


# --- wire layout ------------------------------------------------------------------------------


def test_crc64_implementation_matches_the_spec_test_vectors() -> None:
    """Our from-the-spec CRC-64-AVRO gives the values in Avro's share/test/data/schema-tests.txt."""
    assert crc64_avro(b'"null"') == 7195948357588979594
    assert crc64_avro(b'"int"') == 8247732601305521295
    assert _signed_to_le(crc64_avro(b'{"name":"foo","type":"record","fields":[]}')) == (
        _signed_to_le(-4824392279771201922)
    )


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_header_is_marker_then_little_endian_crc64_of_canonical_form(
    codec: AvroCodec, name: str
) -> None:
    """Bytes 0-1 are C3 01, bytes 2-9 the CRC-64-AVRO of the canonical form, little-endian."""
    raw = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    canonical = to_parsing_canonical_form(raw)
    assert '"doc"' not in canonical and "logicalType" not in canonical
    assert canonical.startswith(f'{{"name":"telex.v1.{raw["name"]}","type":"record","fields":[')
    expected = crc64_avro(canonical.encode()).to_bytes(8, "little")
    data = codec.encode(name, sample(name))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected == codec.fingerprint(name)


def test_single_object_layout_matches_the_published_example(tmp_path: Path) -> None:
    """An empty record "foo" encodes as C3 01 + fingerprint(-4824392279771201922) LE + no body."""
    (tmp_path / "foo.avsc").write_text('{"type": "record", "name": "foo", "fields": []}')
    foo = AvroCodec(tmp_path)
    assert foo.encode("foo", {}) == b"\xc3\x01" + _signed_to_le(-4824392279771201922)
    assert foo.decode(foo.encode("foo", {})) == {}


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        (b"", CodecError, "empty payload"),
        (b"{}", UnknownSchemaError, "not the single-object marker"),
        (b"\x00\x00\x00\x00\x01abc", UnknownSchemaError, "no schema registry configured"),
        (b"\xc3\x01\x01\x02", CodecError, "shorter than its 10-byte header"),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x02", UnknownSchemaError, "unknown schema fingerprint"),
    ],
)
def test_payload_without_a_known_schema_is_refused(
    codec: AvroCodec, payload: bytes, error: type[Exception], words: str
) -> None:
    """Empty, foreign, short or unknown-fingerprint payloads raise a CodecError saying which."""
    with pytest.raises(error, match=words):
        codec.decode(payload)


def test_truncated_body_is_refused_with_schema_and_length(codec: AvroCodec) -> None:
    """A body cut short names the schema and the bytes it had."""
    data = codec.encode("message_accepted", sample("message_accepted"))
    body = len(data) - 10 - 7
    with pytest.raises(CodecError, match=f"message_accepted: body of {body} bytes is truncated"):
        codec.decode(data[:-7])


def test_trailing_bytes_are_refused(codec: AvroCodec) -> None:
    """Bytes after a complete body mean the payload is not what it claims to be."""
    data = codec.encode("ratelimit_deferral", sample("ratelimit_deferral"))
    with pytest.raises(CodecError, match="ratelimit_deferral: 3 trailing bytes"):
        codec.decode(data + b"\x00\x01\x02")


def test_unexpected_schema_is_refused(codec: AvroCodec) -> None:
    """decode(expected=...) refuses a valid payload of another event (wrong topic wiring)."""
    data = codec.encode("carrier_receipt", sample("carrier_receipt"))
    with pytest.raises(SchemaMismatchError, match="expected a delivery_status payload, got carri"):
        codec.decode(data, expected="delivery_status")


def test_unknown_schema_name_is_refused(codec: AvroCodec) -> None:
    """Encoding or expecting a schema the codec does not hold is an UnknownSchemaError."""
    with pytest.raises(UnknownSchemaError, match="no schema named 'message_sent'"):
        codec.encode("message_sent", {})
    with pytest.raises(UnknownSchemaError, match="no schema named 'message_sent'"):
        codec.decode(b"", expected="message_sent")


# Module-level because hypothesis cannot use function-scoped fixtures. The registry codec reads
# both framings, so the fuzz reaches the single-object and the registry paths.
_FUZZ_CODEC = AvroCodec(registry=FakeRegistry())
_HEADERS = [b"\xc3\x01" + _FUZZ_CODEC.fingerprint(name) for name in SCHEMA_FILES]
_VALID = [
    codec.encode(name, sample(name))
    for codec in (AvroCodec(), _FUZZ_CODEC)
    for name in SCHEMA_FILES
]
_EDITS = st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=4)


def _flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    """``data`` with bytes of its body overwritten; the header is kept to reach the body reader."""
    out = bytearray(data)
    header = 10 if data.startswith(b"\xc3\x01") else 5
    for index, value in edits:
        out[header + index % (len(out) - header)] = value
    return bytes(out)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(_HEADERS), st.binary(max_size=400)).map(b"".join),
        st.builds(_flip, st.sampled_from(_VALID), _EDITS),  # almost-valid bodies
    )
)
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    """Whatever arrives on a topic, decode returns a record or raises a CodecError."""
    with contextlib.suppress(CodecError):
        _FUZZ_CODEC.decode(data)


# --- schema violations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"segments": "1"}, r"MessageAccepted\.segments: expected int, got str"),
        ({"segments": 1.5}, r"MessageAccepted\.segments: expected int, got float"),
        ({"segments": True}, r"MessageAccepted\.segments: expected int, got bool"),
        ({"segments": 2**31}, r"MessageAccepted\.segments: expected int"),
        ({"channel": "fax"}, r"MessageAccepted\.channel: str 'fax' is not a symbol"),
        ({"body": b"hi"}, r"MessageAccepted\.body: expected string, got bytes"),
        ({"media_urls": ["ok", 3]}, r"MessageAccepted\.media_urls\[\]: expected string"),
        ({"metadata": {"k": 1}}, r"MessageAccepted\.metadata\{\}: expected string, got int"),
        ({"accepted_at_ms": None}, r"MessageAccepted\.accepted_at_ms: expected long, got NoneT"),
        ({"smuggled": 1}, r"MessageAccepted: fields not in the schema: \['smuggled'\]"),
    ],
)
def test_schema_violation_names_the_field(
    codec: AvroCodec, change: dict[str, Any], words: str
) -> None:
    """Wrong types, out-of-range ints, unknown symbols and unknown fields are refused by name."""
    with pytest.raises(SchemaViolationError, match=words):
        codec.encode("message_accepted", sample("message_accepted", **change))


def test_missing_required_field_is_a_violation(codec: AvroCodec) -> None:
    """A field without a default must be present."""
    record = sample("message_accepted")
    del record["content_hash"]
    with pytest.raises(SchemaViolationError, match=r"content_hash: missing, .* no default"):
        codec.encode("message_accepted", record)


def test_nested_record_violation_names_the_path(codec: AvroCodec) -> None:
    """A bad header inside a dead letter is reported at headers[].value."""
    record = sample("dead_letter_envelope", headers=[{"key": "k", "value": "not bytes"}])
    with pytest.raises(SchemaViolationError, match=r"headers\[\]\.value: expected bytes"):
        codec.encode("dead_letter_envelope", record)


def test_datetimes_are_not_timestamps(codec: AvroCodec) -> None:
    """*_ms fields carry int epoch milliseconds; a datetime is a bug, not a conversion."""
    record = sample("ratelimit_deferral", deferred_at_ms=dt.datetime.now(dt.UTC))
    with pytest.raises(SchemaViolationError, match="deferred_at_ms: expected long"):
        codec.encode("ratelimit_deferral", record)


# --- Schema Registry framing ------------------------------------------------------------------


def test_registry_framing_round_trips_with_an_injected_registry() -> None:
    """With a registry: 00 + 4-byte big-endian id + body, registered once per record name."""
    registry = FakeRegistry()
    codec = AvroCodec(registry=registry)
    first = codec.encode("message_accepted", sample("message_accepted"))
    second = codec.encode("message_accepted", sample("message_accepted", attempt=1))
    assert first[:5] == b"\x00" + (100).to_bytes(4, "big")
    assert registry.calls == [("register", "telex.v1.MessageAccepted")]
    assert AvroCodec(registry=registry).decode(second, "message_accepted")["attempt"] == 1
    assert first[5:] == AvroCodec().encode("message_accepted", sample("message_accepted"))[10:]


def test_registry_codec_still_reads_single_object_payloads() -> None:
    """Switching a topic to the registry does not strand records already written."""
    data = AvroCodec().encode("delivery_status", sample("delivery_status"))
    assert AvroCodec(registry=FakeRegistry()).decode(data) == sample("delivery_status")


def test_registry_lookups_are_cached() -> None:
    """A schema id is looked up once, not per record."""
    registry = FakeRegistry()
    data = AvroCodec(registry=registry).encode("carrier_receipt", sample("carrier_receipt"))
    reader = AvroCodec(registry=registry)
    for _ in range(3):
        reader.decode(data)
    assert registry.calls.count(("lookup", 100)) == 1


def test_registry_id_of_an_older_version_is_read_through_resolution() -> None:
    """A record written with an older registered version reads with the new fields' defaults."""
    old = json.loads((SCHEMA_DIR / "message_accepted.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("attempt", "client")]
    registry = FakeRegistry()
    registry.by_id[7] = json.dumps(old)
    record = sample("message_accepted")
    del record["attempt"], record["client"]
    data = b"\x00" + (7).to_bytes(4, "big") + _schemaless(old, record)
    assert AvroCodec(registry=registry).decode(data, "message_accepted") == {
        **record,
        "attempt": 0,
        "client": None,
    }


def test_registry_id_of_an_unreadable_version_is_refused() -> None:
    """A registered version lacking a field the current schema requires cannot be decoded."""
    old = json.loads((SCHEMA_DIR / "ratelimit_deferral.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "reason"]
    registry = FakeRegistry()
    registry.by_id[7] = json.dumps(old)
    record = sample("ratelimit_deferral")
    del record["reason"]
    data = b"\x00" + (7).to_bytes(4, "big") + _schemaless(old, record)
    with pytest.raises(CodecError, match=r"ratelimit_deferral: .*registry schema id 7"):
        AvroCodec(registry=registry).decode(data)


def test_registry_id_unknown_or_foreign_is_refused() -> None:
    """Ids the registry lacks, or that name no Telex event, raise UnknownSchemaError."""
    registry = FakeRegistry()
    registry.by_id[9] = json.dumps({"type": "record", "name": "Other", "fields": []})
    codec = AvroCodec(registry=registry)
    with pytest.raises(UnknownSchemaError, match="no schema id 8"):
        codec.decode(b"\x00\x00\x00\x00\x08")
    with pytest.raises(UnknownSchemaError, match="schema id 9 is no Telex event"):
        codec.decode(b"\x00\x00\x00\x00\x09")
    with pytest.raises(CodecError, match="shorter than its 5-byte header"):
        codec.decode(b"\x00\x00\x01")


def test_from_settings_picks_the_wire_format() -> None:
    """No URL: single-object; a URL (or settings holding one): Confluent registry client."""
    data = AvroCodec.from_settings(None).encode("ratelimit_deferral", sample("ratelimit_deferral"))
    assert data[:2] == b"\xc3\x01"
    assert AvroCodec.from_settings(SimpleNamespace(schema_registry_url=None))._registry is None
    # Building the client opens no connection; nothing here talks to a registry.
    with_url = AvroCodec.from_settings(SimpleNamespace(schema_registry_url="http://sr.invalid"))
    assert isinstance(with_url._registry, ConfluentRegistry)


def _schemaless(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def test_record_written_with_previous_version_decodes_into_current(tmp_path: Path) -> None:
    """A single-object record of a kept previous version is read through schema resolution."""
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schemas, ignore=shutil.ignore_patterns("previous"))
    current = json.loads((schemas / "request_rejected.avsc").read_text())
    old = {**current, "fields": [f for f in current["fields"] if f["name"] != "trace_id"]}
    old_dir = tmp_path / "old"
    shutil.copytree(schemas, old_dir)
    (old_dir / "request_rejected.avsc").write_text(json.dumps(old))
    (schemas / "previous").mkdir()
    (schemas / "previous" / "request_rejected.v0.avsc").write_text(json.dumps(old))
    record = sample("request_rejected")
    written = AvroCodec(old_dir).encode(
        "request_rejected", {k: v for k, v in record.items() if k != "trace_id"})
    decoded = AvroCodec(schemas).decode(written, expected="request_rejected")
    assert decoded == {**record, "trace_id": None}
