"""Receipt reconciliation decisions (pure): matching carrier receipts to Telex messages."""

from __future__ import annotations


def receipt_key(connector: str, carrier_message_id: str) -> str:
    """Kafka key of ``carrier-receipts``: carrier ids are only unique per connector."""
    return f"{connector}:{carrier_message_id}"
