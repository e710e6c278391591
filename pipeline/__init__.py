"""Telex: the producer SDK is the public surface of this package."""

from pipeline.sdk import (
    OutboundMessage,
    PublishError,
    RequestRejected,
    TelexProducer,
    message_id_for,
)

__all__ = ["OutboundMessage", "PublishError", "RequestRejected", "TelexProducer", "message_id_for"]
