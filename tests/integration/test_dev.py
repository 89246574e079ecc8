"""`tally dev` really starts everything and really stops it (subprocess test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.embedded import descendants, free_port
from tests.servers import scratch_dir

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dev_starts_serves_and_stops_cleanly(sig: int) -> None:
    tmp_path = scratch_dir("tally-dev-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if ready is None or ready.status_code != 200:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"tally dev never became ready:\n{out}\n{err[-3000:]}")
        servers = set(descendants(proc.pid)) - {proc.pid}
        assert len(servers) >= 2  # redis and postgres
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert any(line.startswith("admin key: tly_") for line in lines)
    assert (tmp_path / ".tally").is_dir()
    time.sleep(0.5)
    assert not [pid for pid in servers if _alive(pid)], "embedded servers left running"
