"""Structured logs redact content, addresses and secrets."""

import io
import json

import structlog

from pipeline.observability import configure_logging


def test_json_logs_redact_phone_numbers_bodies_and_secrets():
    """Message ids stay; bodies, numbers (also inside text) and secrets are masked."""
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    structlog.get_logger().info(
        "sent", message_id="TXabc", recipient="+14155550123", body="your code is 123456",
        sasl_password="hunter2", note="carrier refused +44 7911 123456",
    )
    line = json.loads(out.getvalue())
    assert line["message_id"] == "TXabc"
    assert "14155550123" not in out.getvalue()
    assert "123456" not in line["body"] and "7911" not in line["note"]
    assert line["sasl_password"] == "***"
    assert line["event"] == "sent" and line["level"] == "info"
