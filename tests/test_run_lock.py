"""The run lock: one live process per run id, stale locks of killed runs taken over (local and S3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from personahub.tasks.core.run_lock import LockHolder, RunLock, RunLocked


def _holder(**changes) -> bytes:
    base = {"token": "t" * 32, "host": "another-host", "pid": 1, "started": time.time(), "heartbeat": time.time()}
    return json.dumps({**base, **changes}).encode()


def test_a_second_process_on_the_same_run_is_refused(store):
    with RunLock(store, "r1") as first:
        with pytest.raises(RunLocked, match=rf"run r1 is in use: process {os.getpid()}"):
            RunLock(store, "r1").acquire()
        assert first.took_over is None
        assert RunLock(store, "r2").acquire() is not None  # another run id is free
    assert not store.exists("runs/r1/.lock")  # released
    with RunLock(store, "r1"):
        pass


def test_a_live_holder_elsewhere_is_respected_and_a_silent_one_taken_over(store):
    store.write_bytes("runs/r/.lock", _holder())
    with pytest.raises(RunLocked, match="another-host"):
        RunLock(store, "r").acquire()
    store.write_bytes("runs/r/.lock", _holder(heartbeat=time.time() - 1000))
    lock = RunLock(store, "r", stale_after=60).acquire()
    assert lock.took_over is not None and lock.took_over.host == "another-host"
    assert LockHolder.decode(store.read_bytes("runs/r/.lock")).pid == os.getpid()
    lock.release()


def test_the_heartbeat_refreshes_the_lock(store):
    with RunLock(store, "r", heartbeat=0.05):
        first = LockHolder.decode(store.read_bytes("runs/r/.lock"))
        deadline = time.monotonic() + 60
        while LockHolder.decode(store.read_bytes("runs/r/.lock")).heartbeat == first.heartbeat:
            assert time.monotonic() < deadline, "no heartbeat within 60 s"
            time.sleep(0.05)


def test_a_killed_runs_lock_is_taken_over_on_the_same_host(tmp_path):
    """SIGKILL leaves the lock behind (no release); its process is gone, so the next run takes it at once."""
    from personahub.tasks.core.store import Store

    root = tmp_path / "store"
    script = (
        "import sys, time\n"
        "from personahub.tasks.core.store import Store\n"
        "from personahub.tasks.core.run_lock import RunLock\n"
        f"RunLock(Store({str(root)!r}), 'r').acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        store = Store(str(root))
        with pytest.raises(RunLocked, match=f"process {child.pid}"):
            RunLock(store, "r").acquire()
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert store.exists("runs/r/.lock")
        lock = RunLock(store, "r").acquire()
        assert lock.took_over is not None and lock.took_over.pid == child.pid
        lock.release()
    finally:
        child.kill()
        child.wait()
