"""Avro encoding of Telex events: single-object encoding, or Confluent Schema Registry framing.

Single-object encoding (Avro spec, "Single-object encoding") is the default because it needs no
service: ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing
Canonical Form + the Avro binary body. The fingerprint tells a consumer which event it holds, so a
record on the wrong topic is rejected instead of being misread. With a registry URL the codec
writes the Confluent framing instead (``00`` + 4-byte big-endian schema id + body) and reads both.

Budget: every stage decodes and encodes each message, and the pipeline must pass 10k msg/s on two
cores, so nothing is parsed per call. Headers, fingerprints and record checks are built once;
fastavro's own ``validate`` costs about 80 us per MessageAccepted, several times the encoding, so
records are checked by a checker compiled from the schema instead.

Timestamps (``*_ms``, logicalType ``timestamp-millis``) stay ``int`` epoch milliseconds in Python:
the codec reads and writes with logical types stripped, which leaves the canonical form and so the
fingerprint unchanged.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Mapping
from enum import StrEnum
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from pipeline.errors import (
    CodecError,
    ConfigError,
    RegistryError,
    SchemaMismatchError,
    SchemaViolationError,
    UnknownSchemaError,
)

__all__ = [
    "SCHEMAS",
    "SCHEMA_DIR",
    "SINGLE_OBJECT_MARKER",
    "AvroCodec",
    "ConfluentRegistry",
    "RegistryClient",
    "SchemaName",
    "load_schemas",
]

# ``pipeline/schemas`` links to the repository's ``schemas/`` (where the layout keeps them), so
# the same path works from a checkout and from an installed wheel, which ships them as
# package data.
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_SINGLE_OBJECT_HEADER_LEN = 10  # marker (2) + fingerprint (8)
_REGISTRY_MAGIC = b"\x00"
_REGISTRY_HEADER_LEN = 5  # magic (1) + schema id (4, big-endian)

Schema = dict[str, Any]


class SchemaName(StrEnum):
    """Short names of the Telex events: the ``schemas/<name>.avsc`` file stems."""

    MESSAGE_REQUESTED = "message_requested"
    MESSAGE_ACCEPTED = "message_accepted"
    DISPATCH_JOURNAL_ENTRY = "dispatch_journal_entry"
    CARRIER_RECEIPT = "carrier_receipt"
    DELIVERY_STATUS = "delivery_status"
    DEAD_LETTER_ENVELOPE = "dead_letter_envelope"
    RATELIMIT_DEFERRAL = "ratelimit_deferral"
    REQUEST_REJECTED = "request_rejected"
    STATUS_UPDATE = "status_update"
    CALLBACK_ATTEMPT = "callback_attempt"
    CALLBACK_ENDPOINT = "callback_endpoint"


def _load_raw(directory: Path) -> dict[str, Schema]:
    files = sorted(directory.glob("*.avsc"))
    if not files:
        raise ConfigError(f"no *.avsc schemas in {directory}")
    raw: dict[str, Schema] = {}
    for path in files:
        try:
            raw[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read schema {path}: {exc}") from exc
    return raw


def _parse(raw: Any, origin: str) -> Schema:
    try:
        parsed: Schema = fastavro.parse_schema(raw)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise ConfigError(f"invalid Avro schema {origin}: {exc}") from exc
    return parsed


def load_schemas(directory: Path | None = None) -> dict[str, Schema]:
    """Parse every ``*.avsc`` in ``directory`` (default: the repo's ``schemas/``), by file stem."""
    directory = directory or SCHEMA_DIR
    return {
        name: _parse(raw, str(directory / f"{name}.avsc"))
        for name, raw in _load_raw(directory).items()
    }


@functools.cache
def _default_schemas() -> Mapping[str, Schema]:
    return MappingProxyType(load_schemas())


if TYPE_CHECKING:
    SCHEMAS: Mapping[str, Schema]


def __getattr__(name: str) -> Any:
    # SCHEMAS is loaded on first use so that importing the codec does no file I/O.
    if name == "SCHEMAS":
        return _default_schemas()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- record checks ---------------------------------------------------------------------------
# fastavro's writer lets some wrong values through silently (1.5 or True into an int, 2**40 into
# an int, unknown keys), so records are checked before writing. A check returns None when the
# value is valid, otherwise a message naming the field.

_Check = Callable[[Any], str | None]


def _is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_PRIMITIVE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: v is True or v is False,
    "int": lambda v: _is_integer(v) and -(2**31) <= v <= 2**31 - 1,
    "long": lambda v: _is_integer(v) and -(2**63) <= v <= 2**63 - 1,
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, bytes | bytearray),
}


def _describe(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _compile_check(schema: Any, path: str, compiled: dict[str, _Check]) -> _Check:
    """Build the check for ``schema`` (fastavro-parsed, logical types stripped)."""
    if isinstance(schema, list):
        return _union_check(schema, path, compiled)
    if isinstance(schema, str):
        pred = _PRIMITIVE_CHECKS.get(schema)
        if pred is None:  # a reference to a named type, possibly recursive: resolve at call time
            return lambda v: compiled[schema](v)
        return lambda v: None if pred(v) else f"{path}: expected {schema}, got {_describe(v)}"
    kind = schema["type"]
    if kind == "record" or kind == "error":
        return _record_check(schema, path, compiled)
    if kind == "enum":
        symbols = frozenset(schema["symbols"])

        def enum(v: Any) -> str | None:
            if isinstance(v, str) and v in symbols:
                return None
            return f"{path}: {_describe(v)} is not a symbol of {schema['name']} {sorted(symbols)}"

        compiled[schema["name"]] = enum
        return enum
    if kind == "fixed":
        size = schema["size"]

        def fixed(v: Any) -> str | None:
            if isinstance(v, bytes | bytearray) and len(v) == size:
                return None
            return f"{path}: expected {size} bytes, got {_describe(v)}"

        compiled[schema["name"]] = fixed
        return fixed
    if kind == "array":
        item = _compile_check(schema["items"], f"{path}[]", compiled)

        def array(v: Any) -> str | None:
            if not isinstance(v, list | tuple):
                return f"{path}: expected a list, got {_describe(v)}"
            for x in v:
                if (problem := item(x)) is not None:
                    return problem
            return None

        return array
    if kind == "map":
        value = _compile_check(schema["values"], f"{path}{{}}", compiled)

        def map_(v: Any) -> str | None:
            if not isinstance(v, Mapping):
                return f"{path}: expected a mapping, got {_describe(v)}"
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"{path}: map key {_describe(k)} is not a string"
                if (problem := value(x)) is not None:
                    return problem
            return None

        return map_
    return _compile_check(kind, path, compiled)  # {"type": "long"} and friends


def _union_check(branches: list[Any], path: str, compiled: dict[str, _Check]) -> _Check:
    others = [b for b in branches if b != "null"]
    if "null" in branches and len(others) == 1:  # the common ["null", T]: one check, no loop
        inner = _compile_check(others[0], path, compiled)
        return lambda v: None if v is None else inner(v)
    checks = [_compile_check(b, path, compiled) for b in branches]

    def union(v: Any) -> str | None:
        problems = []
        for check in checks:
            if (problem := check(v)) is None:
                return None
            problems.append(problem)
        return f"{path}: {_describe(v)} matches no branch of the union ({'; '.join(problems)})"

    return union


def _record_check(schema: Schema, path: str, compiled: dict[str, _Check]) -> _Check:
    fields = [
        (f["name"], "default" in f, _compile_check(f["type"], f"{path}.{f['name']}", compiled))
        for f in schema["fields"]
    ]
    known = frozenset(name for name, _, _ in fields)

    def record(v: Any) -> str | None:
        if not isinstance(v, Mapping):
            return f"{path}: expected a mapping for record {schema['name']}, got {_describe(v)}"
        present = 0
        for name, has_default, check in fields:
            if name in v:
                present += 1
                if (problem := check(v[name])) is not None:
                    return problem
            elif not has_default:
                return f"{path}.{name}: missing, and the field has no default"
        if present != len(v):
            return f"{path}: fields not in the schema: {sorted(map(str, set(v) - known))}"
        return None

    compiled[schema["name"]] = record
    return record


# --- schemas as the codec holds them ---------------------------------------------------------


def _fingerprint(parsed: Any) -> bytes:
    # fastavro returns the CRC-64-AVRO value's little-endian bytes as hex: the wire order.
    return bytes.fromhex(_fastavro_fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip_logical_types(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "logicalType" in node and node.get("type") in _PRIMITIVE_CHECKS:
        return node["type"]
    return {
        key: _strip_logical_types(value) if key in ("type", "items", "values", "fields") else value
        for key, value in node.items()
        if key != "logicalType"
    }


class _Entry:
    """One event schema with everything the hot path needs, computed once."""

    __slots__ = ("check", "fingerprint", "full_name", "header", "name", "raw", "schema")

    def __init__(self, name: str, raw: Schema, origin: str) -> None:
        parsed = _parse(raw, origin)
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise ConfigError(f"schema {origin} is not a record")
        self.name = name
        self.raw = raw
        self.full_name: str = parsed["name"]
        self.fingerprint = _fingerprint(parsed)
        self.header = SINGLE_OBJECT_MARKER + self.fingerprint
        self.schema: Schema = _parse(_strip_logical_types(raw), origin)
        self.check = _compile_check(self.schema, self.full_name.rsplit(".", 1)[-1], {})


# --- Schema Registry -------------------------------------------------------------------------


class RegistryClient(Protocol):
    """What the codec needs from a schema registry; injectable so tests need no server."""

    def register(self, subject: str, schema_str: str) -> int:
        """Register ``schema_str`` under ``subject`` (idempotent) and return its id."""
        ...

    def lookup(self, schema_id: int) -> str:
        """Schema text for ``schema_id``; UnknownSchemaError if the registry has no such id."""
        ...


class _RegistrySettings(Protocol):
    @property
    def schema_registry_url(self) -> str | None: ...


class ConfluentRegistry:
    """RegistryClient backed by confluent_kafka's SchemaRegistryClient (which caches ids)."""

    def __init__(self, url: str) -> None:
        # Imported here: the registry client pulls in httpx and authlib, unneeded without a URL.
        # authlib warns about its own httpx integration on import and forces that warning to
        # "always"; record it away so it neither breaks filterwarnings=error nor leaks the filter.
        with warnings.catch_warnings(record=True):
            from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient({"url": url})

    def register(self, subject: str, schema_str: str) -> int:
        from confluent_kafka.schema_registry import Schema as RegistrySchema

        try:
            return int(self._client.register_schema(subject, RegistrySchema(schema_str, "AVRO")))
        except Exception as exc:
            raise RegistryError(f"registering a schema under {subject!r} failed: {exc}") from exc

    def lookup(self, schema_id: int) -> str:
        try:
            return str(self._client.get_schema(schema_id).schema_str)
        except Exception as exc:
            if getattr(exc, "http_status_code", None) == 404:
                raise UnknownSchemaError(f"schema registry has no schema id {schema_id}") from exc
            raise RegistryError(f"looking up schema id {schema_id} failed: {exc}") from exc


# --- the codec -------------------------------------------------------------------------------


class AvroCodec:
    """Encodes and decodes Telex events by short name (``SchemaName``)."""

    def __init__(
        self, schema_dir: Path | None = None, *, registry: RegistryClient | None = None
    ) -> None:
        directory = schema_dir or SCHEMA_DIR
        self._entries = {
            name: _Entry(name, raw, str(directory / f"{name}.avsc"))
            for name, raw in _load_raw(directory).items()
        }
        self._by_fingerprint = {e.fingerprint: e for e in self._entries.values()}
        if len(self._by_fingerprint) != len(self._entries):
            raise ConfigError(f"two schemas in {directory} share a fingerprint")
        self._by_full_name = {e.full_name: e for e in self._entries.values()}
        # Versions we wrote before (schemas/previous/*.avsc): records still on the topics in an
        # older single-object version are read through Avro schema resolution into today's
        # schema instead of being dead-lettered as unknown.
        self._previous = _load_previous(directory / PREVIOUS_DIR, self._by_full_name)
        self._registry = registry
        self._registry_headers: dict[str, bytes] = {}
        # schema id -> (entry, writer schema when it differs from ours, else None)
        self._registry_ids: dict[int, tuple[_Entry, Schema | None]] = {}

    @classmethod
    def from_settings(
        cls, settings: _RegistrySettings | str | None, *, schema_dir: Path | None = None
    ) -> AvroCodec:
        """Single-object codec, or registry framing when a registry URL is configured.

        ``settings`` is the Settings object or just its ``schema_registry_url``.
        """
        if settings is None or isinstance(settings, str):
            url = settings
        else:
            url = settings.schema_registry_url
        return cls(schema_dir, registry=ConfluentRegistry(url) if url else None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def schema(self, name: str) -> Schema:
        """The parsed schema of ``name`` as written in its .avsc file (logical types kept)."""
        entry = self._entry(name)
        return _parse(entry.raw, entry.name)

    def fingerprint(self, name: str) -> bytes:
        """CRC-64-AVRO fingerprint of ``name``'s canonical form, little-endian as on the wire."""
        return self._entry(name).fingerprint

    def subject(self, name: str) -> str:
        """Registry subject of ``name``: the record's full name (record-name strategy)."""
        return self._entry(name).full_name

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Check ``record`` against schema ``name`` and encode it with its wire header."""
        entry = self._entry(name)
        if (problem := entry.check(record)) is not None:
            raise SchemaViolationError(f"{name}: {problem}")
        out = BytesIO()
        out.write(self._header(entry))
        try:
            fastavro.schemaless_writer(out, entry.schema, record)
        except Exception as exc:  # the check above should make this unreachable
            raise SchemaViolationError(f"{name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes, expected: str | None = None) -> dict[str, Any]:
        """Decode one payload; with ``expected``, a payload of another schema is refused."""
        if expected is not None:
            self._entry(expected)
        name, record = self.decode_with_name(data)
        if expected is not None and name != expected:
            raise SchemaMismatchError(f"expected a {expected} payload, got {name}")
        return record

    def decode_with_name(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Decode one payload of any known schema; returns (short name, record)."""
        if data.startswith(SINGLE_OBJECT_MARKER):
            if len(data) < _SINGLE_OBJECT_HEADER_LEN:
                raise CodecError(
                    f"single-object payload of {len(data)} bytes is shorter than its "
                    f"{_SINGLE_OBJECT_HEADER_LEN}-byte header"
                )
            fingerprint = data[2:_SINGLE_OBJECT_HEADER_LEN]
            entry = self._by_fingerprint.get(fingerprint)
            if entry is None and fingerprint in self._previous:
                old, writer = self._previous[fingerprint]
                origin = " (written with a previous version)"
                return old.name, _read(data, _SINGLE_OBJECT_HEADER_LEN, old, writer, origin)
            if entry is None:
                raise UnknownSchemaError(
                    f"unknown schema fingerprint {data[2:_SINGLE_OBJECT_HEADER_LEN].hex()} "
                    f"(known: {', '.join(self._entries)})"
                )
            return entry.name, _read(data, _SINGLE_OBJECT_HEADER_LEN, entry, None)
        if data.startswith(_REGISTRY_MAGIC) and self._registry is not None:
            if len(data) < _REGISTRY_HEADER_LEN:
                raise CodecError(
                    f"registry payload of {len(data)} bytes is shorter than its "
                    f"{_REGISTRY_HEADER_LEN}-byte header"
                )
            schema_id = int.from_bytes(data[1:5], "big")
            entry, writer = self._registry_schema(self._registry, schema_id)
            origin = f" (written with registry schema id {schema_id})"
            return entry.name, _read(data, _REGISTRY_HEADER_LEN, entry, writer, origin)
        if not data:
            raise CodecError("empty payload: expected an Avro single-object or registry header")
        raise UnknownSchemaError(
            f"payload of {len(data)} bytes starts with {data[:2].hex()}, not the single-object "
            f"marker c301" + ("" if self._registry else " (no schema registry configured)")
        )

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownSchemaError(
                f"no schema named {name!r} (known: {', '.join(self._entries)})"
            ) from None

    def _header(self, entry: _Entry) -> bytes:
        if self._registry is None:
            return entry.header
        header = self._registry_headers.get(entry.name)
        if header is None:
            schema_id = self._registry.register(entry.full_name, json.dumps(entry.raw))
            header = _REGISTRY_MAGIC + schema_id.to_bytes(4, "big")
            self._registry_headers[entry.name] = header
            self._registry_ids.setdefault(schema_id, (entry, None))
        return header

    def _registry_schema(
        self, registry: RegistryClient, schema_id: int
    ) -> tuple[_Entry, Schema | None]:
        """Our entry for a registry id; the writer schema too when it is another version."""
        cached = self._registry_ids.get(schema_id)
        if cached is not None:
            return cached
        schema_str = registry.lookup(schema_id)
        try:
            raw = json.loads(schema_str)
            writer = _parse(_strip_logical_types(raw), f"registry id {schema_id}")
        except (ValueError, ConfigError) as exc:
            raise UnknownSchemaError(f"registry schema id {schema_id} is unusable: {exc}") from exc
        found = self._by_fingerprint.get(_fingerprint(writer))
        if found is not None:
            resolved: tuple[_Entry, Schema | None] = (found, None)
        else:  # another version of one of our records: read it through schema resolution
            entry = self._by_full_name.get(writer.get("name") if isinstance(writer, dict) else None)
            if entry is None:
                raise UnknownSchemaError(f"registry schema id {schema_id} is no Telex event")
            resolved = (entry, writer)
        self._registry_ids[schema_id] = resolved
        return resolved


PREVIOUS_DIR = "previous"


def _load_previous(
    directory: Path, current: Mapping[str, _Entry]
) -> dict[bytes, tuple[_Entry, Schema]]:
    """Fingerprint -> (today's entry, writer schema) for every kept previous version."""
    out: dict[bytes, tuple[_Entry, Schema]] = {}
    for path in sorted(directory.glob("*.avsc")) if directory.is_dir() else []:
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        writer = _parse(_strip_logical_types(raw), str(path))
        entry = current.get(writer.get("name") if isinstance(writer, dict) else None)
        if entry is None:
            raise ConfigError(f"{path} is a version of no current schema")
        out[_fingerprint(_parse(raw, str(path)))] = (entry, writer)
    return out


def _read(
    data: bytes, offset: int, entry: _Entry, writer: Schema | None, origin: str = ""
) -> dict[str, Any]:
    body_len = len(data) - offset
    stream = BytesIO(data)
    stream.seek(offset)
    try:
        if writer is None:
            record = fastavro.schemaless_reader(stream, entry.schema, None)
        else:
            record = fastavro.schemaless_reader(stream, writer, entry.schema)
    except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ... all mean "malformed"
        raise CodecError(
            f"{entry.name}: body of {body_len} bytes is truncated or malformed{origin} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if (consumed := stream.tell() - offset) != body_len:
        raise CodecError(
            f"{entry.name}: {body_len - consumed} trailing bytes after a {consumed}-byte body "
            f"({body_len} bytes given)"
        )
    if not isinstance(record, dict):
        raise CodecError(f"{entry.name}: body did not decode to a record")
    return record
