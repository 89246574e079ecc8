"""The ceiling for the ingest benchmark: a Starlette app that does nothing per request.

Same stack and same uvicorn options as ``tally serve --workers 2`` (``app/serve.py``:
``log_config=None``, ``access_log=False``, ``server_header=False``), same routes and
bodies, same 202 answer, but no authentication, no parsing and no Redis. Whatever the
real API loses against this is Tally's own work. Run it with
``python -m bench.noop_app --port P [--workers 2]`` (``bench/ingest.py`` does).

It has no ``main()`` on purpose: ``python -m bench`` runs each module's ``main()``.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCEPTED = b'{"status":"accepted"}'


async def accept(request: Request) -> Response:
    """Read the whole body (the real handler must too) and answer 202."""
    await request.body()
    return Response(ACCEPTED, status_code=202, media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b'{"status":"healthy"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/health", health, methods=["GET"]),
        Route("/api/v1/usage", accept, methods=["POST"]),
        Route("/api/v1/usage/batch", accept, methods=["POST"]),
    ]
)


def serve() -> None:
    """Run the no-op app under uvicorn with ``tally serve``'s options."""
    parser = argparse.ArgumentParser(prog="python -m bench.noop_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(
        "bench.noop_app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    serve()
