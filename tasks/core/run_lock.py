"""One process per run id: a lock object in the run folder, refreshed while the run lives.

Two runs writing the same checkpoints would interleave shards and manifests; the second is refused
with who holds the lock. A lock left by a killed run (SIGKILL, a lost machine, a Prefect retry of a
crashed flow run) is taken over: on the same host when its process is gone, anywhere when its
heartbeat is older than `stale_after`. Creation is exclusive on every store (Store.create).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from types import TracebackType

from personahub.tasks.core.store import Store

STALE_AFTER_S = 120.0
HEARTBEAT_S = 20.0


class RunLocked(RuntimeError):
    """Another live process holds this run id."""


@dataclass(frozen=True)
class LockHolder:
    token: str
    host: str
    pid: int
    started: float
    heartbeat: float

    @classmethod
    def me(cls) -> "LockHolder":
        now = time.time()
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> "LockHolder | None":
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None  # a torn or foreign file is no holder

    def is_stale(self, stale_after: float) -> bool:
        if time.time() - self.heartbeat > stale_after:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class RunLock:
    """`with RunLock(store, run_id):` holds runs/<run_id>/.lock for the block's duration."""

    def __init__(self, store: Store, run_id: str, *, stale_after: float = STALE_AFTER_S,
                 heartbeat: float = HEARTBEAT_S):
        self.store = store
        self.run_id = run_id
        self.path = f"runs/{run_id}/.lock"
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.took_over: LockHolder | None = None
        self._holder = LockHolder.me()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "RunLock":
        if not self.store.create(self.path, self._holder.encode()):
            current = self._read()
            if current is not None and not current.is_stale(self.stale_after):
                raise RunLocked(
                    f"run {self.run_id} is in use: process {current.pid} on {current.host} has held "
                    f"{self.store.uri(self.path)} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(current.started))}. "
                    f"Wait for it to finish, or use another run id. A lock whose process is gone is taken "
                    f"over at once on the same host, and after {self.stale_after:.0f} s without a heartbeat elsewhere.")
            # Stale: remove it and race for it again, exclusively, so two takers cannot both win.
            self.store.delete(self.path)
            if not self.store.create(self.path, self._holder.encode()):
                raise RunLocked(f"run {self.run_id}: another process took over the stale lock {self.store.uri(self.path)} first")
            self.took_over = current
        self._thread = threading.Thread(target=self._beat, name=f"run-lock-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self._read()
        if current is not None and current.token == self._holder.token:
            self.store.delete(self.path)

    def _read(self) -> LockHolder | None:
        try:
            return LockHolder.decode(self.store.read_bytes(self.path))
        except FileNotFoundError:
            return None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            current = self._read()
            if current is None or current.token != self._holder.token:
                return  # taken over after we looked stale: never overwrite the new holder
            self._holder = LockHolder(**{**asdict(self._holder), "heartbeat": time.time()})
            self.store.write_bytes(self.path, self._holder.encode())

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
