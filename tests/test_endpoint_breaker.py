"""The gateway's circuit breaker: a dead endpoint ends calls at once, flaky ones only after N in a row,
and a build stopped by it resumes once the endpoint is back."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.states import Failed

from fake_openai import FakeReply
from personahub.tasks.llm.endpoint_breaker import EndpointDown, retry_unless_endpoint_down
from personahub.tasks.llm.gateway import ChatRequest, LLMGateway


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def request(text: str = "Who reads this?") -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], template="t@v1", params={"max_tokens": 8})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize("status, reason", [(401, "refused the API key"), (403, "denied access"),
                                            (404, "has no such model or path")])
def test_a_refused_key_or_model_ends_the_call_without_retries(server, status: int, reason: str) -> None:
    server.enqueue(FakeReply.error(status, "no"))
    gw = LLMGateway(base_url=server.base_url, model="m", store=None, max_retries=6)
    with pytest.raises(EndpointDown, match=rf"^the endpoint {server.base_url} {reason}: HTTP {status} from "):
        run(gw.chat(request()))
    assert server.calls == 1 and gw.usage.retries == 0
    with pytest.raises(EndpointDown):  # tripped: the next call is not even sent
        run(gw.chat(request("another")))
    assert server.calls == 1


def test_failures_trip_the_breaker_only_when_they_come_in_a_row(server) -> None:
    gw = LLMGateway(base_url=server.base_url, model="m", store=None, max_retries=0, max_consecutive_failures=3)
    server.enqueue(FakeReply.error(500, "a"), FakeReply.error(500, "b"), "fine", FakeReply.error(500, "c"),
                   FakeReply.error(500, "d"))
    results = [run(gw.chat(request(f"q{i}"))) for i in range(5)]
    assert [r.error is None for r in results] == [False, False, True, False, False]  # a success resets the count
    server.enqueue(FakeReply.error(503, "still down"))
    with pytest.raises(EndpointDown, match=r"failed 3 calls in a row \(each after its retries\); the last: HTTP 503"):
        run(gw.chat(request("q5")))
    assert server.calls == 6


def test_a_transient_failure_is_still_retried(server) -> None:
    server.enqueue(FakeReply.error(503, "busy", retry_after=0), FakeReply.error(429, "slow", retry_after=0), "ok")
    gw = LLMGateway(base_url=server.base_url, model="m", store=None, max_retries=3, max_consecutive_failures=1)
    result = run(gw.chat(request()))
    assert result.ok and gw.usage.retries == 2 and gw.breaker.tripped is None


def test_a_dead_endpoint_stops_a_batch_without_sending_the_rest(server) -> None:
    server.responder = lambda body: FakeReply.error(401, "bad key", delay=0.05)
    gw = LLMGateway(base_url=server.base_url, model="m", store=None, max_concurrency=4)
    with pytest.raises(EndpointDown, match="refused the API key"):
        run(gw.chat_many([request(f"q{i}") for i in range(40)]))
    assert server.calls <= 4, "only the calls already in flight were sent"


def test_model_listing_and_embeddings_go_through_the_breaker() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EndpointDown, match="is unreachable"):
        run(LLMGateway(base_url=url, model=None, store=None).model_name())
    gw = LLMGateway(base_url=url, model="m", store=None)
    with pytest.raises(EndpointDown, match="is unreachable"):
        gw.embed_many(["a", "b", "c"], model="e", batch_size=1)
    assert gw.usage.retries == 0


def test_prefect_does_not_retry_a_task_the_breaker_stopped() -> None:
    assert retry_unless_endpoint_down(None, None, Failed(data=EndpointDown("dead"))) is False
    assert retry_unless_endpoint_down(None, None, Failed(data=OSError("disk hiccup"))) is True


def write_corpus(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i}.txt").write_text(f"Tide table {i}: the ferry captain checks the {i}th slack water before "
                                          "the dredger crosses the channel at dawn.")
    return root


def test_a_build_against_a_dead_endpoint_stops_at_once_and_resumes_when_it_is_back(server, tmp_path: Path) -> None:
    from personahub.flows.build_hub import BuildHubParams, build_hub
    from personahub.flows.persona_graph import GraphParams
    from personahub.tasks.core.store import Store

    corpus = write_corpus(tmp_path / "corpus", 3)
    common = dict(corpus=[str(corpus)], store=str(tmp_path / "store"), run_id="dead-then-back", llm_model="m",
                  relations=["read"], graph=GraphParams(hops=0), embedding_base_url=server.base_url)
    dead = BuildHubParams(llm_base_url=f"http://127.0.0.1:{closed_port()}/v1", **common)
    with pytest.raises(EndpointDown, match="is unreachable"):
        build_hub(dead)
    store = Store(str(tmp_path / "store"))
    assert store.exists("runs/dead-then-back/crawl/manifest.json")
    assert not store.list("runs/dead-then-back/text_to_persona/_done"), "a stopped shard is not marked done"

    summary = build_hub(BuildHubParams(llm_base_url=server.base_url, **common))
    by_stage = {s["stage"]: s for s in summary["stages"]}
    assert by_stage["crawl"]["skipped"] and by_stage["text_to_persona"]["counts"]["rows_in"] == 3
    assert by_stage["text_to_persona"]["counts"]["quarantined"] == 0, "no llm_error rows left by the dead endpoint"
    assert server.calls == 3 and summary["personas"] == 3


def test_the_cli_says_it_in_one_line_without_a_traceback(server, tmp_path: Path) -> None:
    """As a user sees it: the real command in a process of its own, its whole console output."""
    corpus = write_corpus(tmp_path / "corpus", 2)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = subprocess.run(
        [sys.executable, "-m", "personahub.cli", "build", str(corpus), "--store", str(tmp_path / "store"),
         "--llm-base-url", url, "--llm-model", "m", "--embedding-base-url", server.base_url,
         "--relation", "read", "--hops", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
        env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"},
    )
    output = done.stdout
    assert done.returncode == 1, output
    assert f"personahub build: the endpoint {url} is unreachable" in output
    assert "rerun the same command once the endpoint answers" in output
    assert "Encountered exception during execution: EndpointDown" in output, "Prefect's own line stays"
    assert "Traceback" not in output and "File \"" not in output, output


@pytest.mark.parametrize("error", ["EndpointDown", "EmbeddedLLMError"])
def test_endpoint_errors_turn_a_dead_endpoint_or_server_into_exit_code_1(error: str, capsys) -> None:
    import typer

    from personahub.cli import endpoint_errors
    from personahub.tasks.serving import llama_server

    cls = EndpointDown if error == "EndpointDown" else llama_server.EmbeddedLLMError
    with pytest.raises(typer.Exit) as info, endpoint_errors("build"):
        try:
            raise cls("embedded LLM server was killed by SIGSEGV, also with the safe options")
        except cls as exc:
            raise RuntimeError("wrapped by a flow") from exc  # found through the chain too
    assert info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith("personahub build: embedded LLM server was killed by SIGSEGV, also with the safe options\n")
    with pytest.raises(ValueError), endpoint_errors("build"):
        raise ValueError("a bug is not an endpoint failure: it keeps its traceback")
