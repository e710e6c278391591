"""Access log as structlog JSON lines: method, route template, status, duration, account.

Never the concrete path or the query string: a list query carries ``to=<phone number>``, and a
path can carry whatever a client typed. Bodies are never read here.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog"]

log = structlog.get_logger("telex.api.access")


class AccessLog:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self._app, self._router = app, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            log.info("request", method=scope["method"], route=self._route(scope),
                     status=status[0] or 500, account=state.get("account"),
                     duration_ms=round((time.perf_counter() - started) * 1000, 2))

    def _route(self, scope: Scope) -> str:
        for route in self._router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", "?"))
        return "<unmatched>"
