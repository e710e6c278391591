"""Error answers: one JSON shape ({code, message, more_info, status}) for every refusal, with
codes from the one table in pipeline.errors."""

from __future__ import annotations

from starlette.responses import Response

from pipeline.api.models import ErrorBody
from pipeline.errors import Code, error_title

__all__ = ["MORE_INFO", "problem"]

# Codes follow Twilio's numbering (pipeline/errors.py), so Twilio's page for a code explains it.
MORE_INFO = "https://www.twilio.com/docs/errors/{code}"


def problem(status: int, code: int, message: str | None = None,
            headers: dict[str, str] | None = None) -> Response:
    """A JSON error response; ``message`` defaults to the code's title."""
    body = ErrorBody(code=int(code), message=message or error_title(code),
                     more_info=MORE_INFO.format(code=int(code)), status=status)
    return Response(body.model_dump_json(), status_code=status, headers=headers,
                    media_type="application/json")


def unauthorized() -> Response:
    return problem(401, Code.AUTHENTICATE, "Authenticate with an API key (HTTP Basic: key id "
                   "and secret)", {"WWW-Authenticate": 'Basic realm="telex"'})


def not_found() -> Response:
    return problem(404, Code.NOT_FOUND)
