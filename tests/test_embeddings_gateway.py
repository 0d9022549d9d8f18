"""LLMGateway.embed_many against the fake endpoint (tests/fake_openai.py): batching, the per-batch
cache, retries, accounting, normalisation, secrets, and the embedding settings and endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from fake_openai import FAKE_EMBEDDING_DIM, FakeOpenAIServer, FakeReply, fake_embedding
from personahub.tasks.serving.embedding_server import EMBEDDING_MODEL_ALIAS, EmbeddedEmbeddingError, EmbeddingEndpoint
from personahub.tasks.llm.endpoint_breaker import EndpointDown
from personahub.tasks.llm.gateway import LLMError, LLMGateway, embedding_cache_key
from personahub.tasks.core.settings import Settings
from personahub.tasks.core.store import Store

SECRET = "sk-test-SuperSecretKey1234567890"
MODEL = "fake-embedder"


def gateway(server: FakeOpenAIServer, store: Store | None = None, **kw) -> LLMGateway:
    options = {"model": None, "max_retries": 3, "timeout_s": 5.0, "max_concurrency": 2} | kw
    return LLMGateway(base_url=server.base_url, store=store, **options)


def texts(n: int) -> list[str]:
    return [f"persona {i}: a teacher from town {i % 7} who likes topic {i % 5}" for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


def test_batches_order_and_vectors(server, store):
    items = texts(10)
    result = gateway(server, store).embed_many(items, model=MODEL, batch_size=4)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (10, FAKE_EMBEDDING_DIM)
    assert result.dim == FAKE_EMBEDDING_DIM and result.model == MODEL
    assert sorted(len(body["input"]) for body in server.embedding_requests) == [2, 4, 4]  # sent concurrently
    assert all(body["model"] == MODEL and body["encoding_format"] == "base64" for body in server.embedding_requests)
    expected = np.array([fake_embedding(t) for t in items], np.float32)
    np.testing.assert_allclose(result.vectors, expected, atol=1e-6)  # input order kept across batches
    assert result.usage.calls == 3 and result.usage.cache_hits == 0 and result.usage.failures == 0
    assert result.usage.prompt_tokens == sum(len(t.split()) for t in items)


def test_second_call_is_served_from_the_cache(server, store):
    items = texts(9)
    first = gateway(server, store).embed_many(items, model=MODEL, batch_size=4)
    again = gateway(server, store).embed_many(items, model=MODEL, batch_size=4)  # a new gateway, as a rerun
    assert server.embedding_calls == 3
    assert again.usage.calls == 0 and again.usage.cache_hits == 3 and again.usage.prompt_tokens == 0
    np.testing.assert_array_equal(first.vectors, again.vectors)
    key = embedding_cache_key(MODEL, items[:4])
    segments = [store.read_parquet(path) for path in store.list("cache/llm/segments")]
    entries = {k: json.loads(raw) for table in segments for k, raw in zip(table["key"].to_pylist(), table["entry"].to_pylist())}
    assert len(segments) == 1  # one embed_many call, one segment (not one object per batch)
    entry = entries[key]
    assert entry["kind"] == "embeddings" and entry["model"] == MODEL and (entry["count"], entry["dim"]) == (4, 384)
    assert isinstance(entry["vectors"], str)  # base64 float32, not a list of floats
    other = gateway(server, store).embed_many(items, model="another-embedder", batch_size=4)
    assert other.usage.calls == 3 and server.embedding_calls == 6  # the model is part of the key


def test_cache_key_covers_model_texts_and_order():
    assert embedding_cache_key("m", ["a", "b"]) == embedding_cache_key("m", ["a", "b"])
    assert len({embedding_cache_key("m", ["a", "b"]), embedding_cache_key("m", ["b", "a"]),
                embedding_cache_key("n", ["a", "b"]), embedding_cache_key("m", ["a"])}) == 4


def test_identical_batches_are_asked_once(server, store):
    result = gateway(server, None).embed_many(["same", "same", "same", "same"], model=MODEL, batch_size=2)
    assert server.embedding_calls == 1 and result.usage.calls == 1 and result.usage.cache_hits == 1
    assert np.allclose(result.vectors @ result.vectors.T, 1.0, atol=1e-6)


def test_retries_on_429_and_500(server, store):
    server.enqueue_embeddings(FakeReply.error(429, "slow down", retry_after=0), FakeReply.error(500, "boom"),
                              FakeReply.error(503, "busy"))
    gw = gateway(server, store, max_concurrency=1)
    result = gw.embed_many(texts(3), model=MODEL, batch_size=2)
    assert result.vectors.shape == (3, 384)
    assert result.usage.calls == 2 and result.usage.retries == 3 and result.usage.failures == 0
    assert server.embedding_calls == 5
    assert gw.usage.retries == 3 and gw.usage.calls == 2  # the gateway's own totals too


def test_failure_after_retries_raises_and_keeps_the_other_batches(server, store):
    server.embedding_responder = lambda body: FakeReply.error(500, "down") if "broken" in body["input"][0] else None
    items = texts(4) + ["broken text", "more"]
    with pytest.raises(LLMError, match=r"1 of 3 embedding requests .* failed.*HTTP 500"):
        gateway(server, store, max_retries=1).embed_many(items, model=MODEL, batch_size=2)
    server.embedding_responder = None
    calls = server.embedding_calls
    result = gateway(server, store).embed_many(items, model=MODEL, batch_size=2)
    assert server.embedding_calls == calls + 1  # the finished batches were cached
    assert result.usage.cache_hits == 2 and result.usage.calls == 1


def test_400_is_final(server):
    server.enqueue_embeddings(FakeReply.error(400, "input too long"))
    gw = gateway(server)
    with pytest.raises(LLMError, match="HTTP 400.*input too long"):
        gw.embed_many(["x"], model=MODEL)
    assert server.embedding_calls == 1 and gw.usage.retries == 0 and gw.usage.failures == 1


def test_wrong_number_of_vectors_is_an_error(server):
    server.enqueue_embeddings(FakeReply(vectors=[[1.0, 0.0]]))
    with pytest.raises(LLMError, match="1 embeddings for 2 inputs"):
        gateway(server).embed_many(["a", "b"], model=MODEL)


def test_vectors_are_normalised_by_the_gateway(server, store):
    # An endpoint that does not normalise (and ignores encoding_format, answering float lists).
    server.embedding_encoding = "float"
    server.enqueue_embeddings(FakeReply(vectors=[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]))
    result = gateway(server, store).embed_many(["a", "b", "c"], model=MODEL)
    np.testing.assert_allclose(result.vectors, [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], atol=1e-7)
    again = gateway(server, store).embed_many(["a", "b", "c"], model=MODEL)  # raw vectors cached, normalised on read
    np.testing.assert_array_equal(again.vectors, result.vectors)


def test_float_answers_are_accepted(server):
    server.embedding_encoding = "float"
    result = gateway(server).embed_many(["the cat sat", "the cat sat on the mat", "stock prices fell"], model=MODEL)
    a, b, c = result.vectors
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-6)
    assert a @ b > a @ c


def test_empty_input_makes_no_call(server):
    result = gateway(server).embed_many([], model=MODEL)
    assert result.vectors.shape == (0, 0) and result.vectors.dtype == np.float32
    assert result.usage.calls == 0 and server.embedding_calls == 0


def test_bad_arguments(server):
    gw = gateway(server)
    with pytest.raises(TypeError):
        gw.embed_many("one string", model=MODEL)
    with pytest.raises(TypeError):
        gw.embed_many(["ok", 3], model=MODEL)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        gw.embed_many(["ok"], model="")
    with pytest.raises(ValueError):
        gw.embed_many(["ok"], model=MODEL, batch_size=0)


def test_concurrency_is_bounded(server):
    server.embedding_responder = lambda body: FakeReply(delay=0.1)
    gateway(server, max_concurrency=2).embed_many(texts(12), model=MODEL, batch_size=2)
    assert server.embedding_calls == 6 and server.max_in_flight == 2


@pytest.mark.parametrize("key", [SECRET, "plain-secret-token-42"])
def test_api_key_never_leaks(server, store, caplog, key):
    server.reset(api_key="the-right-key")  # our key is refused: 401, final
    gw = gateway(server, store, api_key=key)
    with caplog.at_level(logging.DEBUG), pytest.raises(EndpointDown) as info:
        gw.embed_many(["x"], model=MODEL)
    assert "refused the API key: HTTP 401" in str(info.value)
    assert key not in str(info.value) and key not in caplog.text and key not in repr(gw)
    server.reset(api_key=key)
    assert gateway(server, store, api_key=key).embed_many(["x"], model=MODEL).vectors.shape == (1, 384)
    for path in Path(store.root).rglob("*.json"):
        assert key not in path.read_text()


def test_sync_wrapper_works_inside_a_running_loop(server):
    async def go():
        return gateway(server).embed_many(["inside a loop"], model=MODEL)

    assert asyncio.run(go()).vectors.shape == (1, 384)


def test_async_api(server):
    async def go():
        async with gateway(server) as gw:
            return await gw.aembed_many(texts(3), model=MODEL, batch_size=2)

    assert asyncio.run(go()).vectors.shape == (3, 384)


# --- settings and endpoint ----------------------------------------------------------------------


def test_embedding_settings(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings()
    assert settings.embedding_base_url is None and settings.embedding_model is None
    assert (settings.embedding_batch_size, settings.embedding_max_concurrency) == (256, 2)
    assert settings.resolved_embedding_api_key() is None
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert Settings().resolved_embedding_api_key() == "from-env"
    assert Settings(llm_api_key="llm-key").resolved_embedding_api_key() == "llm-key"
    settings = Settings(llm_api_key="llm-key", embedding_api_key=SECRET, embedding_base_url=" ")
    assert settings.resolved_embedding_api_key() == SECRET and settings.embedding_base_url is None
    shown = settings.masked()
    assert shown["embedding_api_key"] == "**********" and SECRET not in str(shown)


def test_gateway_from_settings_and_worker_for_embeddings(server, store, monkeypatch):
    settings = Settings(embedding_base_url=server.base_url, embedding_model=MODEL, embedding_max_concurrency=3,
                        llm_base_url="http://llm.invalid/v1", llm_max_concurrency=9, embedding_api_key="emb-key")
    gw = LLMGateway.from_settings(settings, store, purpose="embeddings")
    assert (gw.base_url, gw.model, gw.max_concurrency) == (server.base_url, MODEL, 3)
    assert gw.embed_many(["x"], model=gw.model).vectors.shape == (1, 384)
    assert LLMGateway.from_settings(settings, store).max_concurrency == 9
    with pytest.raises(ValueError, match="embedding_base_url"):
        LLMGateway.from_settings(Settings(), store, purpose="embeddings")

    server.reset(api_key="emb-key")  # the worker's embedding key, from its own environment
    monkeypatch.setenv("PERSONAHUB_EMBEDDING_API_KEY", "emb-key")
    monkeypatch.setenv("PERSONAHUB_LLM_API_KEY", "llm-key")
    with EmbeddingEndpoint(Settings(embedding_base_url=server.base_url, embedding_model=MODEL)) as endpoint:
        config = endpoint.worker_config()
    assert config == {"base_url": server.base_url, "model": MODEL, "purpose": "embeddings", "concurrency": 2}
    assert LLMGateway.for_worker(config, store).embed_many(["y"], model=MODEL).vectors.shape == (1, 384)
    with pytest.raises(EndpointDown, match="401"):  # the chat key is not the embeddings key here
        LLMGateway.for_worker({**config, "purpose": "chat"}, store).embed_many(["z"], model=MODEL)


def test_endpoint_is_lazy_and_checks_the_model(monkeypatch):
    started, stopped = [], []

    def start(self):
        started.append(self)
        self.port = 4321
        return self

    monkeypatch.setattr("personahub.tasks.serving.embedding_server.EmbeddedEmbeddingServer.start", start)
    monkeypatch.setattr("personahub.tasks.serving.embedding_server.EmbeddedEmbeddingServer.stop", lambda self: stopped.append(self))
    with EmbeddingEndpoint(Settings()) as endpoint:
        assert endpoint.embedded and endpoint.model == EMBEDDING_MODEL_ALIAS and not started
    assert not started and not stopped  # never used: never started
    with EmbeddingEndpoint(Settings()) as endpoint:
        assert endpoint.base_url == endpoint.base_url == "http://127.0.0.1:4321/v1"
        assert len(started) == 1 and not stopped
    assert stopped == started
    with EmbeddingEndpoint(Settings(embedding_model="sentence-transformers/all-MiniLM-L6-v2")) as endpoint:
        assert endpoint.model == EMBEDDING_MODEL_ALIAS  # one cache namespace per model
    with pytest.raises(EmbeddedEmbeddingError, match="embedding_base_url"):
        EmbeddingEndpoint(Settings(embedding_model="text-embedding-3-small"))
