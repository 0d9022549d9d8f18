"""The sandbox for code an LLM wrote: time, memory, network, environment, files."""

from __future__ import annotations

import os
import socket
import textwrap
import threading

import pytest

from personahub.tasks.synthesis import sandbox
from personahub.tasks.synthesis.sandbox import SandboxLimits, run_python


def test_a_program_runs_and_its_output_comes_back() -> None:
    result = run_python("import sympy\nprint(sympy.Rational(1, 2) + sympy.Rational(1, 3))")
    assert result.ok and result.stdout.strip() == "5/6", result.stderr


def test_a_program_past_its_time_is_killed() -> None:
    result = run_python("while True:\n    pass", SandboxLimits(timeout_s=1))
    assert result.timed_out and result.returncode is None and not result.ok


def test_a_program_past_its_memory_fails() -> None:
    result = run_python("block = bytearray(2 * 1024 ** 3)\nprint('allocated')", SandboxLimits(memory_mb=256))
    assert not result.ok and "allocated" not in result.stdout and "MemoryError" in result.stderr


@pytest.mark.parametrize("isolation", ["as available", "socket-guard"])
def test_a_program_cannot_reach_the_network(monkeypatch: pytest.MonkeyPatch, isolation: str) -> None:
    if isolation == "socket-guard":  # a system without unprivileged namespaces: the guard alone
        monkeypatch.setattr(sandbox, "_namespace_command", lambda: ())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    code = textwrap.dedent(f"""
        import socket, _socket
        for make in (lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2),
                     lambda: _socket.socket().connect(("127.0.0.1", {port}))):
            try:
                make()
                print("connected")
            except OSError as exc:
                print("refused", type(exc).__name__)
    """)
    result = run_python(code)
    listener.close()
    assert result.ok, result.stderr
    assert "connected" not in result.stdout and result.stdout.count("refused") == 2
    assert not accepted, "nothing reached the listener"
    if isolation == "socket-guard":
        assert result.network_isolation == "socket-guard"


def test_a_program_sees_no_secret_and_an_empty_directory(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PERSONAHUB_LLM_API_KEY", "sk-test-secret-123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-secret")
    code = "import os, json\nprint(json.dumps({'env': dict(os.environ), 'files': os.listdir('.'), 'cwd': os.getcwd()}))"
    result = run_python(code)
    assert result.ok, result.stderr
    assert "secret" not in result.stdout
    import json

    seen = json.loads(result.stdout)
    assert set(seen["env"]) <= {"PATH", "HOME", "LANG", "LC_CTYPE"}
    assert [f for f in seen["files"] if not f.startswith(".")] == ["program.py"]
    assert not os.path.exists(seen["cwd"]), "the directory is removed afterwards"
