"""Pure ASGI middleware: request ids, request metrics, access logs, the database budget,
encoded slashes kept inside their path segment.

Pure ASGI (not BaseHTTPMiddleware) keeps the hot path to a few attribute reads and two
metric updates per request. Routes are labelled by their template, found from the
endpoint Starlette matched, so no identifier ever becomes a label value.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import metrics
from app.repo.deadline import database_budget

log = structlog.get_logger("tally.http")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class ObservabilityMiddleware:
    """Adds ``X-Request-ID``, counts and times requests, logs them per ``access_log``.

    ``access_log``: ``all`` (one line per request), ``errors`` (status ≥ 400 only), ``off``.
    """

    def __init__(self, app: ASGIApp, templates: Mapping[Any, str], access_log: str) -> None:
        self.app = app
        self.templates = templates
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(candidate):
                    request_id = candidate
                break
        # 32 random hex digits, as uuid4().hex gave (128 random bits; uuid4 has 122), at a sixth
        # of its cost (no UUID object).
        request_id = request_id or os.urandom(16).hex()
        header = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = self.templates.get(scope.get("endpoint"), "unmatched")
            method = scope["method"]
            requests, duration = metrics().request_series(route, method, status)
            requests.inc()
            duration.observe(elapsed)
            if self.access_log == "all" or (self.access_log == "errors" and status >= 400):
                log.info(
                    "http.request",
                    method=method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                )
            structlog.contextvars.unbind_contextvars("request_id")


class DatabaseBudgetMiddleware:
    """Gives each HTTP request ``seconds`` for all its PostgreSQL work together
    (:mod:`app.repo.deadline`): past it, the request answers 503."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with database_budget(self.seconds):
            await self.app(scope, receive, send)


_ENCODED_SLASH = re.compile(r"%2[fF]")


class EncodedSlashMiddleware:
    """Keeps ``%2F`` inside its path segment (CONTRACT §2: an identifier is one segment,
    decoded once).

    The server decodes the path before routing, so ``/api/v1/usage/a%2Fb`` was routed as
    ``a/b`` (404) and ``/customers/cx%2F`` was redirected to another customer, ``cx``.
    Here such a path is decoded except for its ``%2F``, which stays in the identifier, and
    the identifier's validation refuses it (422).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw and b"%2" in raw:
            text = raw.decode("latin-1")
            if _ENCODED_SLASH.search(text):
                scope = {**scope, "path": unquote(_ENCODED_SLASH.sub("%252F", text))}
        await self.app(scope, receive, send)
