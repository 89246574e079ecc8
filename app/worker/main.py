"""The standalone flusher process: ``tally flush`` and ``python -m app.worker``.

Exit codes: 0 done (or stopped by a signal after its final flush), 1 could not run
(dependency unreachable at start), 3 halted (Redis went back in time; see the README).
SIGTERM/SIGINT: finish the cycle in flight, one final flush within TALLY_SHUTDOWN_GRACE,
exit 0. A second signal cancels at once; whatever it leaves pending, the next start resumes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import anyio
import structlog
from redis.exceptions import RedisError

from app.hotpath.client import check_redis, create_redis
from app.hotpath.keys import HEARTBEAT
from app.hotpath.redis_errors import RedisUnavailableError, redis_errors
from app.repo.pool import create_pool
from app.settings import Settings
from app.worker.faults import checkpoint_from_env
from app.worker.flusher import Flusher

log = structlog.get_logger("tally.flusher")

EXIT_OK, EXIT_UNAVAILABLE, EXIT_HALTED = 0, 1, 3
# When `tally serve` dies, the kernel can send its flusher child PDEATHSIG's SIGTERM twice
# (once per reparenting, with a thread in between): a SIGTERM repeated this soon is the
# same request to stop, not the operator's second signal, which cancels the final flush.
DUPLICATE_SIGNAL_WINDOW = 1.0


async def heartbeat_is_fresh(settings: Settings) -> bool:
    """True when some flusher wrote its heartbeat within its TTL.

    Raises :class:`RedisUnavailableError` when Redis cannot be reached, redis-py's
    ``RedisError`` when it answers with an error, ``ValueError`` for a ``REDIS_URL`` that
    redis-py refuses.
    """
    redis = create_redis(settings)
    try:
        async with redis_errors():
            return bool(await redis.exists(HEARTBEAT))
    finally:
        await redis.aclose()


async def _run(settings: Settings, once: bool) -> int:
    redis = create_redis(settings)
    try:
        await check_redis(redis, settings.startup_timeout)
        pool = await create_pool(settings, min_size=0)
    except Exception as exc:
        await redis.aclose()
        log.error("flusher.start_failed", error=str(exc))
        return EXIT_UNAVAILABLE
    flusher = Flusher(settings, redis, pool, checkpoint=checkpoint_from_env(os.environ))
    try:
        if once:
            return await _once(flusher)
        return await _loop(flusher)
    finally:
        with anyio.CancelScope(shield=True):
            await pool.close()
            await redis.aclose()


async def _once(flusher: Flusher) -> int:
    from app.repo.usage import SequenceAnomalyError

    try:
        results = await flusher.flush_all()
    except SequenceAnomalyError as exc:
        log.error("flush.halted", reason=str(exc))
        print(f"tally flush: halted: {exc}", file=sys.stderr)
        return EXIT_HALTED
    # One roll-up batch, so a deployment that only runs --once (from cron) rolls up too.
    rolled_up = await flusher.roll_up()
    log.info(
        "flush.once_done",
        fields=sum(r.fields for r in results),
        flushes=sum(1 for r in results if r.committed),
        rolled_up=rolled_up,
    )
    return EXIT_OK


async def _loop(flusher: Flusher) -> int:
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                first: tuple[int, float] | None = None
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if first is None:
                        first = (signum, time.monotonic())
                        log.info("flusher.stopping", signal=name)
                        flusher.request_stop()
                    elif (
                        signum == first[0] == signal.SIGTERM
                        and time.monotonic() - first[1] < DUPLICATE_SIGNAL_WINDOW
                    ):
                        log.info("flusher.duplicate_signal_ignored", signal=name)
                    else:
                        log.warning("flusher.cancelled", signal=name)
                        tg.cancel_scope.cancel()
                        return

        tg.start_soon(on_signals)
        log.info(
            "flusher.started", flusher=flusher.flusher_id, interval=flusher.settings.flush_interval
        )
        await flusher.run_until_stopped()
        tg.cancel_scope.cancel()
    if flusher.status.halted:
        print(f"tally flush: halted: {flusher.status.halt_reason}", file=sys.stderr)
        return EXIT_HALTED
    return EXIT_OK


def run_flush_command(
    settings: Settings,
    *,
    once: bool = False,
    check: bool = False,
    interval: float | None = None,
    metrics_port: int = 0,
) -> int:
    """Entry point shared by ``tally flush`` and ``python -m app.worker``."""
    if interval is not None:
        settings = dataclasses.replace(settings, flush_interval=interval)
    if check:
        try:
            fresh = anyio.run(heartbeat_is_fresh, settings)
        except (RedisUnavailableError, RedisError, ValueError) as exc:
            # A probe's answer, not a crash: one line saying why, and not healthy. Besides
            # outages: a server that answers an error (a missing database, an ACL) or is
            # not Redis, and a REDIS_URL redis-py refuses (a port out of range).
            reason = (
                str(exc)
                if isinstance(exc, RedisUnavailableError)
                else f"{type(exc).__name__}: {exc}"
            )
            reason = " ".join(reason.split())
            print(f"tally flush: cannot check the heartbeat: {reason}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print("heartbeat fresh" if fresh else "no fresh heartbeat")
        return 0 if fresh else 1
    if metrics_port:
        from app.metrics import serve_metrics

        serve_metrics(metrics_port)
    code: int = anyio.run(_run, settings, once)
    return code
