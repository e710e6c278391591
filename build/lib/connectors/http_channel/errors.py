"""WhatsApp Cloud API error codes → error kinds (codes in connectors.base.CLASSIFICATION).

Used for both send responses and ``failed`` status webhooks, so a code means the same thing
whichever way it arrives. Codes not listed fall back on the HTTP status (429 throttled, 5xx
server error, other 4xx rejected). Codes marked [unverified] come from memory of Meta's error
reference, not from a primary source read for this module.
"""

from __future__ import annotations

from connectors.base import ErrorKind

WA_KIND: dict[int, ErrorKind] = {
    # Recipient cannot receive WhatsApp messages (not a WhatsApp user, old client, ...).
    131026: ErrorKind.INVALID_DESTINATION,
    1002: ErrorKind.INVALID_DESTINATION,  # per REFERENCE-CODES (WA 1002/1026 → 63024)
    1026: ErrorKind.INVALID_DESTINATION,
    131030: ErrorKind.INVALID_DESTINATION,  # recipient not in the test allow-list [unverified]
    # Free-form message outside the 24 h customer-service window: a template is needed.
    131047: ErrorKind.OUTSIDE_WINDOW,
    470: ErrorKind.OUTSIDE_WINDOW,
    # Rate limits: API calls, pair rate, spam rate.
    130429: ErrorKind.THROTTLED,
    131056: ErrorKind.THROTTLED,  # pair rate limit [unverified]
    131048: ErrorKind.THROTTLED,  # spam rate limit [unverified]
    80007: ErrorKind.THROTTLED,  # [unverified]
    4: ErrorKind.THROTTLED,  # application request limit [unverified]
    471: ErrorKind.THROTTLED,
    1015: ErrorKind.THROTTLED,
    # Meta-side failures worth retrying.
    131000: ErrorKind.SERVER_ERROR,  # "something went wrong" [unverified]
    131016: ErrorKind.SERVER_ERROR,  # service unavailable [unverified]
    2: ErrorKind.SERVER_ERROR,  # API service temporarily unavailable [unverified]
    # Content problems.
    131051: ErrorKind.REJECTED_CONTENT,  # unsupported message type [unverified]
    131052: ErrorKind.REJECTED_CONTENT,  # media download error [unverified]
    131053: ErrorKind.REJECTED_CONTENT,  # media upload error [unverified]
}


def kind_for(wa_code: int | None, http_status: int | None = None) -> ErrorKind:
    """Error kind of a WhatsApp error code, else of the HTTP status, else ``rejected``."""
    if wa_code is not None and wa_code in WA_KIND:
        return WA_KIND[wa_code]
    if http_status == 429:
        return ErrorKind.THROTTLED
    if http_status == 408:
        return ErrorKind.TIMEOUT
    if http_status is not None and http_status >= 500:
        return ErrorKind.SERVER_ERROR
    return ErrorKind.REJECTED
