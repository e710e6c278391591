"""Backward-compatibility check between two versions of an Avro schema.

A schema change is safe to deploy when consumers on the new schema (the reader) can still read
every record written with the old one (the writer): records already in topics, retry topics and
dead letters outlive the code that wrote them. The rules are Avro's schema resolution (spec,
"Schema Resolution"), applied to schemas instead of data:

* record fields are matched by name (or a reader field's aliases); a reader field missing from
  the writer needs a default; a writer field missing from the reader is skipped;
* a type may change only by promotion: int to long, float or double; long to float or double;
  float to double; string to bytes and back;
* enum: every writer symbol must exist in the reader, unless the reader has a default;
* unions: every writer branch must resolve into the reader (a union, or the one reader type);
* named types match by unqualified name or a reader alias; fixed sizes must be equal;
* arrays and maps by their items and values.

Stricter than the spec in one place: changing a logicalType (timestamp-millis to -micros) is
reported, since it silently changes what the numbers mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["check_backward"]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_BODIES = _PRIMITIVES | _NAMED | {"array", "map"}
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def check_backward(writer_schema: Any, reader_schema: Any) -> list[str]:
    """Problems that stop ``reader_schema`` reading data written with ``writer_schema``.

    Both are schemas as JSON-decoded from .avsc (not fastavro-parsed). An empty list means
    compatible; each problem names the path of the field it concerns.
    """
    writer, reader = _Names(writer_schema), _Names(reader_schema)
    return list(_Resolver(writer, reader).check(writer_schema, "", reader_schema, "", "$"))


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _full_of(named: dict[str, Any], namespace: str) -> str:
    return _fullname(named["name"], named.get("namespace", namespace))


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Names:
    """Named types defined in one schema, by full name, with the namespace their body uses."""

    def __init__(self, schema: Any) -> None:
        self.types: dict[str, tuple[dict[str, Any], str]] = {}
        self._collect(schema, "")

    def _collect(self, node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                self._collect(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                full = _full_of(node, namespace)
                self.types[full] = (node, namespace)
                for field in node.get("fields", ()):
                    self._collect(field.get("type"), full.rpartition(".")[0])
            elif kind == "array":
                self._collect(node.get("items"), namespace)
            elif kind == "map":
                self._collect(node.get("values"), namespace)
            elif isinstance(kind, dict | list):
                self._collect(kind, namespace)

    def resolve(self, node: Any, namespace: str) -> tuple[Any, str]:
        """Follow references and ``{"type": <schema>}`` wrappers down to a definition.

        Returns the definition and the namespace in effect where it is written.
        """
        while True:
            if isinstance(node, str) and node not in _PRIMITIVES:
                found = self.types.get(_fullname(node, namespace)) or self.types.get(node)
                if found is None:
                    return {"type": "unknown-reference", "name": node}, namespace
                node, namespace = found
            elif isinstance(node, dict) and node.get("type") not in _BODIES:
                node = node.get("type")  # {"type": "telex.v1.Header"} or {"type": {...}}
            else:
                return node, namespace


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, str):
        return node
    kind = node.get("type")
    return "record" if kind == "error" else str(kind)


def _logical(node: Any) -> str | None:
    return node.get("logicalType") if isinstance(node, dict) else None


class _Resolver:
    def __init__(self, writer: _Names, reader: _Names) -> None:
        self._writer = writer
        self._reader = reader
        self._in_progress: set[tuple[str, str]] = set()  # recursive records: assume OK inside

    def check(self, w: Any, w_ns: str, r: Any, r_ns: str, path: str) -> Iterator[str]:
        w, w_ns = self._writer.resolve(w, w_ns)
        r, r_ns = self._reader.resolve(r, r_ns)
        wk, rk = _kind(w), _kind(r)
        if "unknown-reference" in (wk, rk):
            side, node = ("writer", w) if wk == "unknown-reference" else ("reader", r)
            yield f"{path}: {side} refers to undefined type {node['name']!r}"
            return
        if wk == "union":
            for index, branch in enumerate(w):
                yield from self.check(branch, w_ns, r, r_ns, f"{path}<{index}>")
            return
        if rk == "union":
            yield from self._into_union(w, w_ns, r, r_ns, path)
            return
        if not self._matches(w, r):
            yield f"{path}: writer type {_describe(w)} cannot be read as {_describe(r)}"
            return
        wl, rl = _logical(w), _logical(r)
        if wl and rl and wl != rl:
            yield f"{path}: logicalType changed from {wl} to {rl}"
        if wk == "record":
            yield from self._record(w, w_ns, r, r_ns, path)
        elif wk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                yield f"{path}: enum {r['name']} lacks writer symbols {missing} and has no default"
        elif wk == "fixed" and w["size"] != r["size"]:
            yield f"{path}: fixed {r['name']} size changed from {w['size']} to {r['size']}"
        elif wk == "array":
            yield from self.check(w["items"], w_ns, r["items"], r_ns, f"{path}[]")
        elif wk == "map":
            yield from self.check(w["values"], w_ns, r["values"], r_ns, f"{path}{{}}")

    def _into_union(self, w: Any, w_ns: str, r: list[Any], r_ns: str, path: str) -> Iterator[str]:
        # Spec: the first reader branch that matches the writer's type is used.
        for branch in r:
            resolved, _ = self._reader.resolve(branch, r_ns)
            if _kind(resolved) != "union" and self._matches(w, resolved):
                yield from self.check(w, w_ns, branch, r_ns, path)
                return
        yield f"{path}: writer type {_describe(w)} matches no branch of reader union"

    def _record(
        self, w: dict[str, Any], w_ns: str, r: dict[str, Any], r_ns: str, path: str
    ) -> Iterator[str]:
        key = (_full_of(w, w_ns), _full_of(r, r_ns))
        if key in self._in_progress:
            return
        self._in_progress.add(key)
        w_inner, r_inner = key[0].rpartition(".")[0], key[1].rpartition(".")[0]
        w_fields = {f["name"]: f for f in w.get("fields", ())}
        for field in r.get("fields", ()):
            field_path = f"{path}.{field['name']}" if path != "$" else field["name"]
            names = [field["name"], *field.get("aliases", ())]
            source = next((w_fields[n] for n in names if n in w_fields), None)
            if source is None:
                if "default" not in field:
                    yield f"{field_path}: field added without a default"
                continue
            yield from self.check(source["type"], w_inner, field["type"], r_inner, field_path)
        self._in_progress.discard(key)

    @staticmethod
    def _matches(w: Any, r: Any) -> bool:
        """Whether a (non-union) writer type may be read as reader type ``r`` at all."""
        wk, rk = _kind(w), _kind(r)
        if wk in _NAMED:
            if wk != rk:
                return False
            aliases = {_short(a) for a in r.get("aliases", ())}
            return _short(w["name"]) == _short(r["name"]) or _short(w["name"]) in aliases
        return wk == rk or rk in _PROMOTIONS.get(wk, ())


def _describe(node: Any) -> str:
    if isinstance(node, dict):
        kind = _kind(node)
        return f"{kind} {node['name']}" if kind in _NAMED and "name" in node else kind
    if isinstance(node, list):
        return "union"
    return str(node)
