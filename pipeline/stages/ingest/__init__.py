"""Ingest: validation (validate) and dedup by idempotency key (dedup), run by stage."""
