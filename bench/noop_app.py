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
import signal
import subprocess
import sys
import threading

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.workers import claim_port, reuse_port_socket

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
    """Run the no-op app with ``tally serve``'s uvicorn options and socket layout: with
    ``--workers N`` (N > 1), N processes that each listen on their own ``SO_REUSEPORT``
    socket (``app/workers.py``), so the ceiling is spread over the workers like Tally."""
    parser = argparse.ArgumentParser(prog="python -m bench.noop_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a worker
    args = parser.parse_args()
    if args.workers <= 1 or args.one:
        sock = reuse_port_socket(args.host, args.port)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
        uvicorn.Server(config).run(sockets=[sock])
        return
    with claim_port(args.host, args.port) as holder:
        port = str(holder.getsockname()[1])  # the port claimed, also for --port 0
        one = [sys.executable, "-m", "bench.noop_app", "--host", args.host, "--one"]
        procs = [  # own sessions: a terminal's Ctrl-C reaches them once, through us
            subprocess.Popen([*one, "--port", port], start_new_session=True)
            for _ in range(args.workers)
        ]
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.2) and all(p.poll() is None for p in procs):
            pass
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    serve()
