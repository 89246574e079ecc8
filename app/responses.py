"""Response classes rendering with :mod:`app.jsonio` (exact decimals)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from app import jsonio


class JSONResponse(Response):
    """``application/json`` rendered by :func:`app.jsonio.dumps`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return jsonio.dumps(content)
