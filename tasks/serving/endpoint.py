"""The LLM endpoint a flow uses: the configured one, or the embedded server, started on first use.

Every LLM flow (build-hub, synthesize) opens one LLMEndpoint and hands its URL to its LLM stages
through a Deferred, so a rerun whose LLM stages are all done starts no server.
"""

from __future__ import annotations

import contextlib

from prefect import get_run_logger
from prefect.utilities.asyncutils import run_coro_as_sync

from personahub.tasks.core.settings import Settings
from personahub.tasks.llm.gateway import LLMGateway


class LLMEndpoint:
    """The configured endpoint, or the embedded server started on first use and stopped at the end.

    Starting lazily means a rerun whose LLM stages are all done starts nothing.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stack = contextlib.ExitStack()

    @property
    def base_url(self) -> str:
        if self.settings.llm_base_url:
            return self.settings.llm_base_url
        if not hasattr(self, "_server"):
            from personahub.tasks.serving.llama_server import EmbeddedLLMServer

            self._server = self._stack.enter_context(EmbeddedLLMServer(self.settings, log=get_run_logger().info))
        return self._server.base_url

    def __enter__(self) -> "LLMEndpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def resolve_model(settings: Settings) -> str:
    """The model name that goes into cache keys and provenance, known before any stage runs."""
    if settings.llm_model:
        return settings.llm_model
    if not settings.llm_base_url:
        from personahub.tasks.serving.llama_server import MODEL_ALIAS

        return MODEL_ALIAS

    async def ask() -> str:
        async with LLMGateway.from_settings(settings, store=None) as gateway:
            return await gateway.model_name()

    return run_coro_as_sync(ask())
