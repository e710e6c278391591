"""command_status → error classification, per the SMPP table in REFERENCE-CODES.md.

Kannel's rule, which operators expect: MSGQFUL, THROTTLED, RX_T_APPN and SYSERR are temporary,
everything else is a rejection. RINVBNDSTS and RALYBND say the *session* is wrong, not the
message, so they are retryable as connection_lost and the client rebinds.
"""

from __future__ import annotations

from connectors.base import ConnectorError, ErrorKind
from connectors.smpp.pdu import Status, status_name

_KIND: dict[int, ErrorKind] = {
    Status.ESME_RTHROTTLED: ErrorKind.THROTTLED,
    Status.ESME_RMSGQFUL: ErrorKind.QUEUE_FULL,
    Status.ESME_RSYSERR: ErrorKind.SERVER_ERROR,
    Status.ESME_RX_T_APPN: ErrorKind.SERVER_ERROR,
    Status.ESME_RINVBNDSTS: ErrorKind.CONNECTION_LOST,
    Status.ESME_RALYBND: ErrorKind.CONNECTION_LOST,
    Status.ESME_RINVDSTADR: ErrorKind.INVALID_DESTINATION,
}

SESSION_ERRORS = frozenset({Status.ESME_RINVBNDSTS, Status.ESME_RALYBND})


def kind_of(status: int) -> ErrorKind:
    """Error kind of a non-zero command_status; unlisted codes are permanent rejections."""
    return _KIND.get(status, ErrorKind.REJECTED)


def status_error(status: int) -> ConnectorError:
    return ConnectorError(kind_of(status), status_name(status))
