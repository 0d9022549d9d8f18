"""LocalServer: the child-process lifecycle both embedded servers share (port race, readiness, logs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from personahub.tasks.serving.local_server import LocalServer, port_is_open, prune_logs
from personahub.tasks.core.settings import Settings

READY_SERVER = """
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "tiny"}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


class TinyError(RuntimeError):
    pass


class TinyServer(LocalServer):
    what = "tiny server"
    log_prefix = "tiny-"
    error = TinyError

    def __init__(self, log_dir: Path, lose_races: int) -> None:
        super().__init__(Settings(), startup_timeout_s=20, log_dir=log_dir, log=lambda _: None)
        self.lose_races = lose_races
        self.launches = 0
        self.model = ""

    def launch(self, port: int) -> tuple[list[str], dict[str, str]]:
        self.launches += 1
        if self.launches <= self.lose_races:  # what a server prints when another process took its port
            return [sys.executable, "-c", "import sys; print('bind: Address already in use'); sys.exit(1)"], {}
        return [sys.executable, "-c", READY_SERVER, str(port)], {}

    def on_ready(self, response: httpx.Response) -> None:
        self.model = response.json()["data"][0]["id"]


def test_a_lost_port_race_is_retried_on_another_port(tmp_path: Path) -> None:
    with TinyServer(tmp_path, lose_races=2) as server:
        assert server.launches == 3 and server.model == "tiny" and port_is_open(server.port)
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        port = server.port
    assert not port_is_open(port) and not server.running


def test_losing_every_race_is_the_servers_own_error(tmp_path: Path) -> None:
    server = TinyServer(tmp_path, lose_races=99)
    with pytest.raises(TinyError, match="(?s)no free port after 3 tries.*Address already in use"):
        server.start()
    assert server.launches == 3 and not server.running


def test_old_logs_are_pruned(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"tiny-{i}.log").write_text("x")
        os.utime(tmp_path / f"tiny-{i}.log", (1_000 + i, 1_000 + i))  # oldest first, whatever the clock's resolution
    (tmp_path / "other-0.log").write_text("x")
    prune_logs(tmp_path, "tiny-", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-0.log", "tiny-3.log", "tiny-4.log"]


class CrashingServer(TinyServer):
    """Kills itself with SIGSEGV the first `crashes` starts; its on_killed retries only when told to."""

    def __init__(self, log_dir: Path, crashes: int, retry: bool) -> None:
        super().__init__(log_dir, lose_races=0)
        self.crashes = crashes
        self.retry = retry
        self.killed: list[str] = []

    def launch(self, port: int) -> tuple[list[str], dict[str, str]]:
        self.launches += 1
        if self.launches <= self.crashes:
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], {}
        return [sys.executable, "-c", READY_SERVER, str(port)], {}

    def on_killed(self, exc) -> None:
        self.killed.append(exc.signal_name)
        if not self.retry:
            super().on_killed(exc)


def test_a_server_killed_by_a_signal_is_the_servers_own_error_by_default(tmp_path: Path) -> None:
    server = CrashingServer(tmp_path, crashes=1, retry=False)
    with pytest.raises(TinyError, match=r"tiny server was killed by SIGSEGV before becoming ready; log: "):
        server.start()
    assert server.killed == ["SIGSEGV"] and server.launches == 1 and not server.running


def test_on_killed_that_returns_gets_another_start(tmp_path: Path) -> None:
    with CrashingServer(tmp_path, crashes=2, retry=True) as server:
        assert server.killed == ["SIGSEGV", "SIGSEGV"] and server.launches == 3 and server.model == "tiny"
