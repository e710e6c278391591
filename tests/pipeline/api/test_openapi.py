"""The OpenAPI document: the committed copy is what the code builds, and every route has an
entry in the route table."""

from __future__ import annotations

from pathlib import Path

from pipeline.api.app import ROUTES
from pipeline.api.openapi import ROUTE_TABLE, document_bytes

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def test_committed_document_matches_the_code() -> None:
    """docs/openapi.json == the document built from the models and the route table
    (regenerate: python -m pipeline.api.openapi > docs/openapi.json)."""
    assert COMMITTED.read_bytes() == document_bytes()


def test_every_route_has_an_entry_in_the_route_table() -> None:
    """A route the app serves is documented with the same method and path, and vice versa."""
    served = {(m.lower(), r.path) for r in ROUTES for m in (r.methods or ()) if m != "HEAD"}
    documented = {(op.method, op.path) for op in ROUTE_TABLE}
    assert served == documented
