"""SMPP 3.4: our own PDU codec, text encoding, receipt parsing and an asyncio ESME client."""

from connectors.smpp.client import SmppClient, SmppConfig
from connectors.smpp.receipt import parse_receipt_text, receipt_from_deliver_sm

__all__ = ["SmppClient", "SmppConfig", "parse_receipt_text", "receipt_from_deliver_sm"]
