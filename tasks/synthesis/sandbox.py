"""The one place where code an LLM wrote runs (program-of-thought solutions, tool implementations).

Each program runs in a fresh Python subprocess:
* in an empty temporary directory (its working directory and HOME), deleted afterwards;
* with an environment of PATH, HOME and LANG only, so no key or setting of ours reaches it;
* isolated (`python -I`: no PYTHON* variables, no user site, not our source tree on its path);
* under rlimits: address space (memory_mb), CPU seconds, file size, open files; a wall-clock
  timeout kills its whole process group;
* without network: in a new network namespace (`unshare -rn`, only a loopback that is down) where
  the system allows unprivileged user namespaces, and always behind a guard that makes creating a
  socket raise (weaker alone: a program could reach the C module; the result says which applied).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Runs first in the child: no socket can be made, even by a library that imported socket already.
_GUARD = '''
import socket as _s, _socket as _c
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the personahub sandbox")
for _m in (_s, _c):
    for _name in ("socket", "socketpair", "create_connection", "create_server", "getaddrinfo", "fromfd"):
        if hasattr(_m, _name):
            setattr(_m, _name, _no_network)
del _s, _c, _m, _name
import runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''
OUTPUT_LIMIT = 64_000  # characters of stdout / stderr kept


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 512
    file_mb: int = 16
    open_files: int = 64


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # None when it was killed for running past the timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    network_isolation: str  # "namespace" (no network device) or "socket-guard" (sockets refused)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@lru_cache(maxsize=1)
def _namespace_command() -> tuple[str, ...]:
    """`unshare -rn` when this system lets an unprivileged process make a network namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    try:
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (unshare, "-rn") if probe.returncode == 0 else ()


def _limit(limits: SandboxLimits):
    def apply() -> None:
        os.setsid()  # its own process group, so a timeout kills its children too
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(limits.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        size = limits.file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), stdin: str = "") -> SandboxResult:
    """Run `code` as a Python program in the sandbox; its output, exit status and whether it timed out."""
    namespace = _namespace_command()
    with tempfile.TemporaryDirectory(prefix="personahub-sandbox-") as work:
        program = Path(work) / "program.py"
        program.write_text(code, encoding="utf-8")
        guard = Path(work) / ".guard.py"
        guard.write_text(_GUARD, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8"}
        command = [*namespace, sys.executable, "-I", str(guard), str(program)]
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=_limit(limits), text=True)
        try:
            out, err = proc.communicate(stdin, timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            timed_out = True
        return SandboxResult(None if timed_out else proc.returncode, out[:OUTPUT_LIMIT], err[:OUTPUT_LIMIT],
                             timed_out, time.monotonic() - started, "namespace" if namespace else "socket-guard")
