"""WhatsApp-Cloud-API-shaped HTTP channel: send client and status-webhook handling."""

from connectors.http_channel.client import WhatsAppClient, WhatsAppConfig
from connectors.http_channel.webhook import (
    SIGNATURE_HEADER,
    WebhookSignatureError,
    parse_status_webhook,
    receipts_from_request,
    sign,
    verify_signature,
    verify_subscription,
)

__all__ = ["SIGNATURE_HEADER", "WebhookSignatureError", "WhatsAppClient", "WhatsAppConfig",
           "parse_status_webhook", "receipts_from_request", "sign", "verify_signature",
           "verify_subscription"]
