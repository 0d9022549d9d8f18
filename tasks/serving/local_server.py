"""A local HTTP server run as a child process for one flow run: the embedded LLM and embeddings.

`LocalServer` owns what both embedded servers share: a free loopback port (retried when another
process takes it first), a log file per start (old ones pruned), a readiness poll that fails fast
with the log's tail when the process dies, and a stop that runs also at interpreter exit and when
the object is dropped. A subclass says what to run (`launch`), how to read the ready answer
(`on_ready`), and whether a process killed by a signal before it was ready is worth one more try
with other options (`on_killed`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx

from personahub.tasks.core.settings import Settings, load_settings

Log = Callable[[str], Any]

STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30
KEEP_SERVER_LOGS = 20
PORT_ATTEMPTS = 3


class PortTaken(Exception):
    """The server lost the race for its port; `LocalServer.start` retries on another."""


class ServerKilled(Exception):
    """The server process died from a signal (SIGSEGV, SIGILL, ...) before it was ready."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


def signal_name(returncode: int) -> str:
    """'SIGSEGV' for a Popen return code of -11 (a negative code is the signal that killed it)."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the server may still lose a race for it: start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Last ``lines`` lines of a text file ('' if it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, wait, then SIGKILL. Safe to call twice and from atexit/finalizers."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
        except ProcessLookupError:
            pass


def prune_logs(log_dir: Path, prefix: str, keep: int = KEEP_SERVER_LOGS) -> None:
    logs = sorted(log_dir.glob(f"{prefix}*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-keep] if keep else logs:
        old.unlink(missing_ok=True)


def wait_ready(process: subprocess.Popen[bytes], log_path: Path, url: str, timeout_s: float, what: str,
               error: type[Exception], port_pattern: str, ready: Callable[[httpx.Response], None]) -> None:
    """Poll `url` until `ready(response)` accepts a 200 answer; fail fast with the log tail if the
    process dies (as ServerKilled when a signal killed it, as PortTaken when its log matches
    `port_pattern`, so the caller can retry), or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:  # loopback: never via a proxy
        while True:
            code = process.poll()
            if code is not None:
                text = tail(log_path)
                found = f"log: {log_path}\n--- last {LOG_TAIL_LINES} lines ---\n{text}"
                if code < 0:
                    name = signal_name(code)
                    raise ServerKilled(f"{what} was killed by {name} before becoming ready; {found}", name)
                cls = PortTaken if re.search(port_pattern, text, re.I) else error
                raise cls(f"{what} exited with code {code} before becoming ready; {found}")
            try:
                response = client.get(url)
                if response.status_code == 200:
                    ready(response)
                    return
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                pass  # not listening yet, still loading the model
            if time.monotonic() > deadline:
                raise error(f"{what} did not answer {url} within {timeout_s:.0f}s; "
                            f"log: {log_path}\n--- last {LOG_TAIL_LINES} lines ---\n{tail(log_path)}")
            time.sleep(0.25)


class LocalServer:
    """An OpenAI-compatible server process on a free loopback port, for one run.

    Subclasses set `what`, `log_prefix`, `error`, `ready_path`, `port_taken_pattern` and implement
    `launch(port) -> (command, extra environment)` and `on_ready(response)`.
    ``with Server(...) as server: OpenAI(base_url=server.base_url, api_key=server.api_key)``.
    """

    what: ClassVar[str] = "local server"
    log_prefix: ClassVar[str] = "server-"
    error: ClassVar[type[Exception]] = RuntimeError
    ready_path: ClassVar[str] = "/v1/models"
    port_taken_pattern: ClassVar[str] = r"address already in use"
    api_key = "sk-embedded"  # the SDK needs some key; these servers check none

    def __init__(self, settings: Settings | None, *, startup_timeout_s: float, log_dir: Path | None = None,
                 log: Log = print) -> None:
        self.settings = settings or load_settings()
        self.startup_timeout_s = startup_timeout_s
        self.log_dir = Path(log_dir) if log_dir is not None else Path(self.settings.cache_dir) / "logs"
        self._log = log
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.log_path: Path | None = None
        self.startup_s: float | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    # --- what a subclass says
    def prepare(self) -> None:
        """Checks before the first spawn (missing files fail here, with what to do)."""

    def launch(self, port: int) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def on_ready(self, response: httpx.Response) -> None:
        """Read what the ready answer says (the served model's name, its dimension …)."""

    def ready_message(self) -> str:
        return f"{self.what} ready at {self.base_url} in {self.startup_s:.1f}s; log: {self.log_path}"

    def on_killed(self, exc: ServerKilled) -> None:
        """The process died from a signal before it was ready. Raise, or change what `launch` will
        run and return to have `start` try once more."""
        raise self.error(str(exc)) from None

    # --- the shared lifecycle
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise self.error(f"{self.what} is not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Any:
        with self._lock:
            if self.running:
                return self
            self.prepare()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            prune_logs(self.log_dir, self.log_prefix)
            started = time.monotonic()
            lost_races = 0
            while True:  # a fresh port per try: another process may grab ours first
                port = free_port(self.host)
                cmd, env = self.launch(port)
                try:
                    self._spawn_and_wait(cmd, env, port)
                except PortTaken as exc:
                    lost_races += 1
                    if lost_races >= PORT_ATTEMPTS:
                        raise self.error(f"no free port after {PORT_ATTEMPTS} tries: {exc}") from None
                    continue
                except ServerKilled as exc:
                    self.on_killed(exc)  # raises, or the next launch runs something else
                    continue
                self.startup_s = round(time.monotonic() - started, 2)
                self._log(self.ready_message())
                return self

    def _spawn_and_wait(self, cmd: list[str], env: dict[str, str], port: int) -> None:
        self.log_path = self.log_dir / f"{self.log_prefix}{time.strftime('%Y%m%d-%H%M%S')}-{port}.log"
        self._log_handle = open(self.log_path, "ab")
        self._log_handle.write(f"$ {' '.join(cmd)}\n".encode())
        self._log_handle.flush()
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, env={**os.environ, **env})
        self.port = port
        # finalize() also runs at interpreter exit (atexit), and references only the process, so a
        # run that dies with an exception or drops the object does not leave the server running.
        self._finalizer = weakref.finalize(self, stop_process, self.process)
        try:
            wait_ready(self.process, self.log_path, f"http://{self.host}:{port}{self.ready_path}",
                       self.startup_timeout_s, self.what, self.error, self.port_taken_pattern, self.on_ready)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the server (SIGTERM, 10 s grace, then SIGKILL). Idempotent."""
        if self.process is not None:
            stop_process(self.process)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
