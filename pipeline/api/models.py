"""The API's wire shapes (pydantic models): what a client sends and what it gets back.

The same models validate requests, serialise responses and produce the OpenAPI document
(pipeline/api/openapi.py), so the document cannot drift from what the code does. Field names
are Twilio's: PascalCase parameters in, snake_case resource fields out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.records import RANK

__all__ = ["STATUSES", "ErrorBody", "Message", "MessageCreate", "MessagePage"]

STATUSES = tuple(RANK)  # Twilio's status vocabulary, as the pipeline ranks it


class MessageCreate(BaseModel):
    """POST body (JSON object or form fields). Length and range rules that depend on the channel
    (body length, validity period, send-at window) are ingest's and answered with its codes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    to: str = Field(alias="To", min_length=1, max_length=64,
                    description="E.164 number; whatsapp:+E164 or messenger:<psid> for chat.")
    from_: str | None = Field(None, alias="From", min_length=1, max_length=64)
    messaging_service_sid: str | None = Field(
        None, alias="MessagingServiceSid", pattern=r"^MG[0-9a-fA-F]{32}$",
        description="Sends from the service's sender; used when From is absent.")
    body: str | None = Field(None, alias="Body", max_length=4096)
    media_url: list[str] = Field(default_factory=list, alias="MediaUrl", max_length=10)
    status_callback: str | None = Field(None, alias="StatusCallback", max_length=2048)
    validity_period: int | None = Field(None, alias="ValidityPeriod",
                                        ge=-(2**31), le=2**31 - 1, description="Seconds.")
    send_at: datetime | None = Field(None, alias="SendAt", description="RFC 3339 time.")

    @model_validator(mode="after")
    def _a_sender(self) -> MessageCreate:
        if self.from_ is None and self.messaging_service_sid is None:
            raise ValueError("From or MessagingServiceSid is required")
        return self


class Message(BaseModel):
    """The message resource."""

    sid: str = Field(description="Message id: TX + 32 hex digits, derived from the account "
                     "and the Idempotency-Key.")
    account_sid: str
    to: str
    from_: str = Field(alias="from")
    messaging_service_sid: str | None
    body: str | None
    num_segments: int
    num_media: int
    media_urls: list[str]
    status: Literal[STATUSES]  # type: ignore[valid-type]
    error_code: int | None
    error_message: str | None
    direction: Literal["outbound-api"] = "outbound-api"
    validity_period: int | None
    date_created: datetime
    date_updated: datetime
    date_send_at: datetime | None = Field(description="SendAt of a scheduled message.")
    price: None = None
    price_unit: None = None
    uri: str

    model_config = ConfigDict(populate_by_name=True)


class MessagePage(BaseModel):
    """One page of a list, newest first; ``next_page_uri`` is null on the last page."""

    messages: list[Message]
    page_size: int
    next_page_uri: str | None
    uri: str


class ErrorBody(BaseModel):
    """Every error answer: the code (Twilio's numbering), a message and where to read more."""

    code: int
    message: str
    more_info: str
    status: int
