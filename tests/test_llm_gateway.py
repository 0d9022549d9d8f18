"""The LLM gateway against a real HTTP fake endpoint (tests/fake_openai.py): cache, retries,
concurrency, structured output with fallback, lenient parsing, secrets, accounting."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from fake_openai import FakeOpenAIServer, FakeReply
from personahub.tasks.llm.endpoint_breaker import EndpointDown
from personahub.tasks.llm.gateway import (
    ChatRequest,
    LLMGateway,
    Usage,
    cache_key,
)
from personahub.tasks.llm.json_parsing import parse_json_lenient
from personahub.tasks.core.settings import Settings
from personahub.tasks.core.store import Store

SCHEMA = {"type": "object", "properties": {"persona": {"type": "string"}}, "required": ["persona"]}
SECRET = "sk-test-SuperSecretKey1234567890"


def run(coro, timeout: float = 20.0):
    """asyncio.run with a hard deadline, so a bug cannot hang the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def request(text: str = "Who reads this?", template: str = "text_to_persona@v1", **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], template=template, **kw)


request_for = request  # the name `request` is taken by pytest's fixture inside tests that use it


def gateway(server: FakeOpenAIServer, store: Store | None = None, **kw) -> LLMGateway:
    options = {"model": None, "max_retries": 3, "timeout_s": 5.0, "max_concurrency": 4} | kw
    return LLMGateway(base_url=server.base_url, store=store, **options)


def echo(body: dict) -> FakeReply:
    return FakeReply(content=f"echo: {body['messages'][-1]['content']}", prompt_tokens=10, completion_tokens=5)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


def cached_entries(store: Store) -> dict[str, dict]:
    """Every entry in the store's cache segments, read with pyarrow alone (not the cache's code)."""
    out: dict[str, dict] = {}
    for path in store.list("cache/llm/segments"):
        table = store.read_parquet(path)
        for key, raw in zip(table["key"].to_pylist(), table["entry"].to_pylist()):
            out[key] = json.loads(raw)
    return out


# --- cache --------------------------------------------------------------------------------------


def test_cache_hit_and_misses(server, store):
    async def go():
        async with gateway(server, store) as gw:
            first = await gw.chat(request(json_schema=SCHEMA))
            again = await gw.chat(request(json_schema=SCHEMA))
            other_template = await gw.chat(request(json_schema=SCHEMA, template="text_to_persona@v2"))
            other_params = await gw.chat(request(json_schema=SCHEMA, params={"temperature": 0.2}))
            return gw, first, again, other_template, other_params

    gw, first, again, other_template, other_params = run(go())
    assert first.ok and not first.cached and first.model == "fake-model"
    assert first.data["persona"].startswith("A ") and len(first.data["persona"].split()) >= 12
    assert again.cached and again.text == first.text and again.data == first.data and again.key == first.key
    assert not other_template.cached and not other_params.cached
    assert len({first.key, other_template.key, other_params.key}) == 3
    assert server.calls == 3
    assert gw.usage.calls == 3 and gw.usage.cache_hits == 1
    entry = cached_entries(store)[first.key]
    assert entry["text"] == first.text and entry["model"] == "fake-model" and entry["template"] == "text_to_persona@v1"


def test_cache_survives_a_new_gateway_and_depends_on_model(server, store):
    first = run(gateway(server, store).chat(request()))
    second = run(gateway(server, store).chat(request()))
    assert second.cached and second.text == first.text and server.calls == 1
    other_model = run(gateway(server, store, model="another-model").chat(request()))
    assert not other_model.cached and server.calls == 2
    assert server.requests[-1]["model"] == "another-model"


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_cache_on_each_store_backend(server, tmp_path, backend, request):
    """The cache through the Store API on local disk and on S3 (moto, from tests/conftest.py)."""
    if backend == "local":
        reopen = lambda: Store(str(tmp_path / "store"))  # noqa: E731
    else:
        try:
            endpoint = request.getfixturevalue("s3_server")
        except pytest.FixtureLookupError:
            pytest.skip("no s3_server fixture in tests/conftest.py")
        url = f"s3://personahub-test/{uuid.uuid4().hex}"
        reopen = lambda: Store(url, s3_endpoint_url=endpoint, storage_options={"skip_instance_cache": True})  # noqa: E731
    first = run(gateway(server, reopen()).chat(request_for("cached on " + backend)))
    second = run(gateway(server, reopen()).chat(request_for("cached on " + backend)))
    assert first.ok and second.cached and second.text == first.text and server.calls == 1
    assert cached_entries(reopen())[first.key]["text"] == first.text


def test_no_store_means_no_cache(server):
    gw = gateway(server, None)
    run(gw.chat(request()))
    assert not run(gw.chat(request())).cached
    assert server.calls == 2


def test_unparseable_answer_is_cached_and_reparsed(server, store):
    server.responder = lambda body: "I am not JSON at all"
    first = run(gateway(server, store).chat(request(json_schema=SCHEMA)))
    assert first.error is None and first.text == "I am not JSON at all"
    assert first.data is None and "no JSON" in first.parse_error and not first.ok
    second = run(gateway(server, store).chat(request(json_schema=SCHEMA)))
    assert second.cached and second.parse_error == first.parse_error and server.calls == 1


def test_identical_requests_in_flight_are_sent_once(server, store):
    server.responder = lambda body: FakeReply(content='{"persona": "x"}', delay=0.2)
    gw = gateway(server, store)
    results = run(gw.chat_many([request(json_schema=SCHEMA)] * 3))
    assert server.calls == 1
    assert [r.data for r in results] == [{"persona": "x"}] * 3
    assert sorted(r.cached for r in results) == [False, True, True]
    assert gw.usage.calls == 1 and gw.usage.cache_hits == 2


# --- retries ------------------------------------------------------------------------------------


def test_429_honours_retry_after(server):
    server.enqueue(FakeReply.error(429, "slow down", retry_after=1))
    gw = gateway(server)
    start = time.monotonic()
    result = run(gw.chat(request()))
    elapsed = time.monotonic() - start
    assert result.ok and result.text
    assert elapsed >= 0.95
    assert server.calls == 2 and gw.usage.retries == 1 and gw.usage.failures == 0


def test_500_twice_then_ok(server):
    server.enqueue(FakeReply.error(500, "boom"), FakeReply.error(503, "busy"))
    gw = gateway(server)
    result = run(gw.chat(request()))
    assert result.ok and server.calls == 3 and gw.usage.retries == 2 and gw.usage.calls == 1


def test_400_is_final_and_not_cached(server, store):
    server.enqueue(FakeReply.error(400, "bad things in the request"))
    gw = gateway(server, store)
    result = run(gw.chat(request()))
    assert result.text is None and not result.ok
    assert result.error == f"HTTP 400 from {server.base_url}: bad things in the request"
    assert result.key not in result.error
    assert server.calls == 1 and gw.usage.retries == 0 and gw.usage.failures == 1
    assert result.key not in cached_entries(store)
    assert run(gw.chat(request())).ok and server.calls == 2


def test_timeout_is_retried_then_reported(server):
    server.responder = lambda body: FakeReply(content="too late", delay=0.8)
    gw = gateway(server, timeout_s=0.5, max_retries=1)
    result = run(gw.chat(request()))
    assert result.text is None and result.error == f"timeout after 0.5s from {server.base_url}"
    assert server.calls == 2 and gw.usage.retries == 1 and gw.usage.failures == 1


def test_a_refused_connection_is_not_retried_it_ends_the_call():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed: nothing listens there
    gw = LLMGateway(base_url=f"http://127.0.0.1:{port}/v1", model="m", store=None, max_retries=6, timeout_s=2)
    with pytest.raises(EndpointDown, match=rf"^the endpoint http://127.0.0.1:{port}/v1 is unreachable .*ConnectError"):
        run(gw.chat(request()))
    assert gw.usage.retries == 0 and gw.usage.failures == 1 and gw.usage.calls == 1


# --- concurrency --------------------------------------------------------------------------------


def test_concurrency_is_bounded_and_order_kept(server):
    server.responder = lambda body: FakeReply(content=f"echo: {body['messages'][-1]['content']}", delay=0.15)
    gw = gateway(server, max_concurrency=3)
    results = run(gw.chat_many([request(f"prompt {i}") for i in range(12)]))
    assert [r.text for r in results] == [f"echo: prompt {i}" for i in range(12)]
    assert 1 < server.max_in_flight <= 3


def test_429s_lower_the_requests_in_flight_and_successes_raise_them_again(server):
    """A server that takes 2 requests at a time and answers 429 to more: the gateway halves its
    bound (8 → 4 → 2 ...), every request still succeeds, and once the server takes more, the
    bound climbs back to its configured size."""
    capacity = {"n": 2}

    def responder(body):
        if server.in_flight > capacity["n"]:  # this request included
            return FakeReply.error(429, "slow down", retry_after=0.05)
        return FakeReply(content=f"echo: {body['messages'][-1]['content']}", delay=0.05)

    server.responder = responder
    gw = gateway(server, max_concurrency=8, max_retries=20)
    gw.limit.cooldown_s = 0.0  # every 429 burst counts here; the default spaces decreases 1 s apart
    results = run(gw.chat_many([request(f"prompt {i}") for i in range(40)]))
    assert all(r.ok for r in results) and gw.usage.retries > 0
    assert gw.limit.lowest <= 2, "the 429s halved the bound down to what the server takes"

    capacity["n"] = 100
    for batch in range(6):  # each success run as long as the bound adds one slot, up to 8
        assert all(r.ok for r in run(gw.chat_many([request(f"later {batch} {i}") for i in range(16)])))
        if gw.limit.current == 8:
            break
    assert gw.limit.current == 8 and gw.limit.in_use == 0


def test_the_adaptive_bound_is_additive_up_and_multiplicative_down() -> None:
    from personahub.tasks.llm.concurrency import SharedLimit

    limit = SharedLimit(8, cooldown_s=0.0)
    limit.congested()
    assert limit.current == 4
    limit.congested()
    limit.congested()
    limit.congested()
    assert limit.current == 1 == limit.lowest
    steps = []
    while limit.current < 8:
        limit.succeeded()
        steps.append(limit.current)
    # one more slot after as many successes in a row as the bound allows: 1 + 2 + ... + 7 = 28
    assert len(steps) == 28 and steps[-1] == 8
    slow = SharedLimit(8, cooldown_s=3600.0)
    slow.congested()
    slow.congested()  # the same burst: no second decrease within the cooldown
    assert slow.current == 4


def test_one_failure_does_not_cancel_the_batch(server):
    def responder(body):
        if body["messages"][-1]["content"] == "bad":
            return FakeReply.error(400, "rejected")
        return echo(body)

    server.responder = responder
    results = run(gateway(server).chat_many([request("a"), request("bad"), request("c")]))
    assert [r.text for r in results] == ["echo: a", None, "echo: c"]
    assert "HTTP 400" in results[1].error


def test_one_gateway_across_event_loops_without_leaking_sockets(server):
    gw = gateway(server)
    assert run(gw.chat(request("one"))).ok
    assert run(gw.chat(request("two"))).ok  # a second asyncio.run: fresh client and semaphore
    if not Path("/proc/self/fd").is_dir():
        return
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for i in range(6):  # each asyncio.run opens up to max_concurrency connections
        assert all(r.ok for r in run(gw.chat_many([request(f"loop {i} request {j}") for j in range(4)])))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before <= 2


# --- structured output --------------------------------------------------------------------------


def test_structured_output_is_requested(server):
    result = run(gateway(server).chat(request(json_schema=SCHEMA, schema_name="persona", params={"max_tokens": 64, "top_k": 20})))
    body = server.requests[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "persona", "schema": SCHEMA, "strict": False},
    }
    assert body["max_tokens"] == 64 and body["top_k"] == 20  # non-SDK params go in the body as is
    assert result.data and isinstance(result.data["persona"], str)
    run(gateway(server, structured_output=False).chat(request("plain", json_schema=SCHEMA)))
    assert "response_format" not in server.requests[1]


def test_json_schema_unsupported_falls_back_to_lenient_parsing(server):
    fenced = 'Sure!\n```json\n{"persona": "A nurse who {likes} braces"}\n```\nAnything else?'
    srv = server.reset(lambda body: fenced, supports_json_schema=False)
    gw = gateway(srv)
    first = run(gw.chat(request("one", json_schema=SCHEMA)))
    second = run(gw.chat(request("two", json_schema=SCHEMA)))
    assert first.data == {"persona": "A nurse who {likes} braces"} and first.error is None
    assert second.data == first.data
    # one rejected request, its retry without response_format, then straight to plain text
    assert srv.calls == 3
    assert "response_format" in srv.requests[0]
    assert "response_format" not in srv.requests[1] and "response_format" not in srv.requests[2]
    assert gw.usage.failures == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ("```\n[1, 2, 3]\n```", [1, 2, 3]),
        ('Here you go: {"persona": "A chef"} Hope this helps!', {"persona": "A chef"}),
        ("{'persona': 'A chef', 'ok': True, 'n': None}", {"persona": "A chef", "ok": True, "n": None}),
        ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),
        ('{"s": "has } and { and \\" inside", "t": "]"}', {"s": 'has } and { and " inside', "t": "]"}),
        ('{"a": {"b": {"c": "}"}}} trailing {"ignored": 1}', {"a": {"b": {"c": "}"}}}),
        ('See [note 1]. {"persona": "A pilot"}', {"persona": "A pilot"}),
        ("{'a': true, 'b': 'it is true',}", {"a": True, "b": "it is true"}),
        ('```json\n{"persona": "A farmer who', None),
    ],
)
def test_parse_json_lenient(text, expected):
    if expected is None:
        with pytest.raises(ValueError, match="truncated"):
            parse_json_lenient(text)
    else:
        assert parse_json_lenient(text) == expected


@pytest.mark.parametrize("garbage", ["", "   ", "no json here", "{not: valid: at all}", "[1, 2"])
def test_parse_json_lenient_rejects_garbage(garbage):
    with pytest.raises(ValueError):
        parse_json_lenient(garbage)


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [SECRET, "plain-secret-token-42"])
def test_api_key_never_leaks(server, tmp_path, caplog, key):
    store = Store(str(tmp_path / "store"))
    srv = server.reset(api_key=key)  # requests without this key get 401
    with caplog.at_level(logging.DEBUG):
        srv.enqueue(FakeReply.error(401, f"Incorrect API key provided: {key}. Header was Bearer {key}"))
        gw = LLMGateway(base_url=srv.base_url, model=None, store=store, api_key=key, max_retries=1)
        with pytest.raises(EndpointDown) as failed:  # a refused key ends the run: no call can succeed
            run(gw.chat(request("first")))
        again = LLMGateway(base_url=srv.base_url, model=None, store=store, api_key=key, max_retries=1)
        ok = run(again.chat(request("second", json_schema=SCHEMA)))  # the server checks the key: it was sent
    message = str(failed.value)
    assert message.startswith(f"the endpoint {srv.base_url} refused the API key: HTTP 401 from {srv.base_url}: "
                              "Incorrect API key provided")
    assert key not in message and srv.calls == 2 and gw.usage.retries == 0
    assert ok.ok
    assert key not in repr(gw) and key not in json.dumps(gw.usage.as_dict())
    assert key not in caplog.text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(key.encode() not in p.read_bytes() for p in files)
    entries = cached_entries(store)  # segments are compressed: look inside them too
    assert entries and all(key not in json.dumps(entry) for entry in entries.values())


def test_endpoint_credentials_are_not_shown():
    gw = LLMGateway(base_url="https://user:pa55word@llm.example.com/v1?token=abc", model="m", store=None)
    assert gw.endpoint == "https://llm.example.com/v1"
    assert "pa55word" not in repr(gw) and "abc" not in repr(gw)


# --- accounting and configuration ---------------------------------------------------------------


def test_usage_tokens_add_up(server, store):
    server.responder = echo
    gw = gateway(server, store)
    results = run(gw.chat_many([request("a"), request("b"), request("c")]))
    repeat = run(gw.chat(request("a")))
    assert all(r.prompt_tokens == 10 and r.completion_tokens == 5 for r in results + [repeat])
    assert gw.usage.as_dict() == {
        "calls": 3, "cache_hits": 1, "failures": 0, "retries": 0,
        "prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45,
    }
    before = gw.usage.copy()
    run(gw.chat(request("d")))
    stage = gw.usage - before
    assert (stage.calls, stage.prompt_tokens, stage.completion_tokens) == (1, 10, 5)
    total = Usage.merge([before, stage])
    assert total == gw.usage and before + stage == gw.usage


def test_model_name_is_asked_once(server):
    gw = gateway(server)
    assert run(gw.model_name()) == "fake-model"
    assert gateway(server, model="configured").model is not None
    assert run(gateway(server, model="configured").model_name()) == "configured"


def test_cache_key_is_canonical():
    a = ChatRequest(messages=[{"role": "user", "content": "x"}], template="t@1", params={"temperature": 0.1, "top_p": 1})
    b = ChatRequest(messages=[("user", "x")], template="t@1", params={"top_p": 1, "temperature": 0.1})
    assert cache_key("m", a) == cache_key("m", b)
    assert cache_key("m", a) != cache_key("n", a)
    assert cache_key("m", a) != cache_key("m", ChatRequest(messages=[("user", "x")], template="t@1", params={"temperature": 0.1, "top_p": 1}, json_schema=SCHEMA))


def test_from_settings(server, store):
    settings = Settings(
        llm_base_url="http://unused.invalid/v1", llm_api_key="k-123", llm_model=None,
        llm_max_concurrency=2, llm_timeout_s=7, llm_max_retries=1, llm_structured_output=False,
    )
    gw = LLMGateway.from_settings(settings, store, base_url=server.base_url)
    assert (gw.base_url, gw.max_concurrency, gw.timeout_s, gw.max_retries, gw.structured_output) == (
        server.base_url, 2, 7.0, 1, False,
    )
    assert run(gw.chat(request())).ok
    assert LLMGateway.from_settings(settings, None).endpoint == "http://unused.invalid/v1"
    with pytest.raises(ValueError):
        LLMGateway.from_settings(Settings(llm_base_url=None), None)


def test_fake_server_embeddings(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=5)
    out = client.embeddings.create(model="fake-model", input=["the cat sat", "the cat sat", "stock prices fell"])
    a, b, c = (d.embedding for d in out.data)
    dot = lambda x, y: sum(i * j for i, j in zip(x, y))  # noqa: E731
    assert len(a) == 384 and a == b and abs(dot(a, a) - 1) < 1e-5 and dot(a, c) < 0.99
    client.close()
