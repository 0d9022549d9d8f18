"""Shared fixtures. The S3 tests run against moto's ThreadedMotoServer: offline, real HTTP."""

from __future__ import annotations

import os
import tempfile

# Before anything imports Prefect: no telemetry, quiet logs, and a fresh PREFECT_HOME (its parent
# must exist) so the tests never touch a developer's Prefect database.
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["HF_HUB_OFFLINE"] = "1"  # datasets.load_dataset on a local folder must not look for a hub repo
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="personahub-test-prefect-")
# The ephemeral API server's 20 s start budget is too tight on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
for _name in [n for n in os.environ if n.startswith("PERSONAHUB_") and n != "PERSONAHUB_SHARED_DATA"]:
    del os.environ[_name]  # a developer's own configuration must not leak into the tests

import uuid
from collections.abc import Callable, Iterator

import pytest

from personahub.tasks.core.store import Store

S3_BUCKET = "personahub-test"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free local port with one bucket; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        # Keep a developer's own AWS set-up out of the tests.
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        try:
            # No CreateBucketConfiguration: the bucket gets the default region, like a MinIO set-up.
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
            yield endpoint
        finally:
            _drop_cached_s3fs()
            server.stop()


def _drop_cached_s3fs() -> None:
    """fsspec caches one S3FileSystem per arguments; drop them so none outlives the server."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str | None]:
    """(root URL, S3 endpoint or None) of a fresh, empty store on each backend."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    endpoint = request.getfixturevalue("s3_server")  # started only when an s3 case runs
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}", endpoint


@pytest.fixture
def store(store_url: tuple[str, str | None]) -> Store:
    """A fresh Store on local disk and on S3 (moto), one test case each."""
    url, endpoint = store_url
    return Store(url, s3_endpoint_url=endpoint)


@pytest.fixture
def reopen_store(store_url: tuple[str, str | None]) -> Callable[[], Store]:
    """Builds another Store on the same root with its own filesystem instance, as a new process would."""
    url, endpoint = store_url

    def reopen() -> Store:
        options = {"skip_instance_cache": True} if endpoint else None
        return Store(url, s3_endpoint_url=endpoint, storage_options=options)

    return reopen


@pytest.fixture
def embedded_model() -> tuple:
    """(llama-server binary, GGUF path) of the embedded default.

    Skipped where they are absent on a developer's machine; under CI (CI set) a missing piece is a
    failure, because scripts/setup.sh must have installed both and a skip would hide that.
    """
    from personahub.tasks.serving import llama_server as ls
    from personahub.tasks.core.settings import Settings

    binary = ls.llama_server_binary(Settings())
    try:
        model = ls.gguf_model_path()
    except ls.EmbeddedLLMError as exc:
        model, missing = None, str(exc)
    else:
        missing = "" if binary else "llama-server is not built: run `personahub llm build`"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the embedded model (scripts/setup.sh): {missing}")
        pytest.skip(missing)
    return binary, model


@pytest.fixture(scope="session")
def fake_llm():
    """One fake OpenAI-compatible server for the flow tests (tests/fake_openai.py)."""
    from fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def server(fake_llm):
    """The fake server, reset: default responder, no recorded requests."""
    return fake_llm.reset()
