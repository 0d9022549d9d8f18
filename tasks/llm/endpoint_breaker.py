"""The circuit breaker of the LLM gateway: a dead endpoint ends the run in seconds, resumably.

Retries are for what passes (429, 5xx, timeouts, resets). Some failures do not pass, and retrying
them only fills the log: nothing listens at the URL (connection refused, no such host), the key is
refused (401/403), the model or path does not exist (404). Those trip the breaker at once. So do
`max_consecutive_failures` calls in a row that still fail after their retries, whatever the cause.

A tripped breaker raises `EndpointDown` to its caller and to every call after it, so a shard task
fails before it writes its checkpoint: a rerun once the endpoint is back redoes only that shard,
and every answer already received comes from the cache. The message is one line that names the
endpoint (without credentials) and the status; the CLI prints it without a traceback.
"""

from __future__ import annotations

import threading
from typing import Any

import openai


class EndpointDown(RuntimeError):
    """The endpoint cannot answer: the run stops; rerunning it resumes once the endpoint is back."""


def fatal_reason(exc: BaseException) -> str | None:
    """Why `exc` says the endpoint will not answer any call, or None when it may pass."""
    if isinstance(exc, openai.APITimeoutError):
        return None  # a subclass of APIConnectionError, but a slow server is not a dead one
    if isinstance(exc, openai.APIConnectionError) and _caused_by(exc, "ConnectError"):
        return "is unreachable (connection refused, or no such host)"
    if isinstance(exc, openai.AuthenticationError):
        return "refused the API key"
    if isinstance(exc, openai.PermissionDeniedError):
        return "denied access"
    if isinstance(exc, openai.NotFoundError):
        return "has no such model or path"
    return None


def _caused_by(exc: BaseException, class_name: str) -> bool:
    """Whether an exception of that class name is in exc's chain. By name: the openai SDK raises
    from its own copy of httpx (httpx2 in openai 2.x), whose classes are not httpx's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if any(cls.__name__ == class_name for cls in type(current).__mro__):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class CircuitBreaker:
    """Counts final failures of one endpoint's calls; shared by every call of one gateway (all its
    event loops and threads)."""

    def __init__(self, endpoint: str, max_consecutive_failures: int) -> None:
        if max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1")
        self.endpoint = endpoint
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.consecutive_failures = 0
        self.tripped: EndpointDown | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise the breaker's EndpointDown if it has tripped (before each attempt of a call)."""
        if self.tripped is not None:
            raise self.tripped

    def succeeded(self) -> None:
        with self._lock:
            self.consecutive_failures = 0

    def failed(self, exc: BaseException, description: str) -> None:
        """A call failed for good (`description` is its secret-free message). Raises EndpointDown
        when that trips the breaker; returns when the call's failure is the caller's to report."""
        reason = fatal_reason(exc)
        with self._lock:
            if self.tripped is None:
                self.consecutive_failures += 1
                if reason is not None:
                    self.tripped = EndpointDown(f"the endpoint {self.endpoint} {reason}: {description}")
                elif self.consecutive_failures >= self.max_consecutive_failures:
                    self.tripped = EndpointDown(
                        f"the endpoint {self.endpoint} failed {self.consecutive_failures} calls in a row "
                        f"(each after its retries); the last: {description}"
                    )
        self.check()


def retry_unless_endpoint_down(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn` of the LLM shard tasks: a dead endpoint is not retried by
    Prefect either (its retries would only wait longer for the same answer)."""
    return not isinstance(getattr(state, "data", None), EndpointDown)
