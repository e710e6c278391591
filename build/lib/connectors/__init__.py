"""Carrier connectors: the protocol dispatch talks to, and one package per carrier protocol.

``connectors.base`` defines the protocol and error classification; ``connectors.smpp`` and
``connectors.http_channel`` implement it; ``connectors.simulators`` holds loopback carriers.
"""

from connectors.base import (
    CLASSIFICATION,
    BindError,
    Connector,
    ConnectorError,
    ErrorKind,
    Health,
    IdBase,
    Receipt,
    ReceiptStatus,
    SubmitRequest,
    SubmitResult,
    error_code_for,
    normalise_message_id,
)

__all__ = ["CLASSIFICATION", "BindError", "Connector", "ConnectorError", "ErrorKind", "Health",
           "IdBase", "Receipt", "ReceiptStatus", "SubmitRequest", "SubmitResult",
           "error_code_for", "normalise_message_id"]
