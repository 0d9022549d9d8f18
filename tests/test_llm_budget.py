"""One invocation's meter and budget across processes (as on Dask: the flow's process and workers),
against the fake endpoint: another process's paid calls count towards this one's budget and show in
this process's progress counters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeReply
from personahub.tasks.core import progress
from personahub.tasks.core.store import Store
from personahub.tasks.llm.budget import BudgetExhausted, spend_spec
from personahub.tasks.llm.gateway import ChatRequest, LLMGateway
from personahub.tasks.llm.meter import others_in_progress

WORKER = """
import asyncio, json, sys
from personahub.tasks.core.store import Store
from personahub.tasks.llm.gateway import ChatRequest, LLMGateway

async def main():
    llm = {"base_url": sys.argv[2], "model": None, "concurrency": 1, "spend": json.loads(sys.argv[1])}
    async with LLMGateway.for_worker(llm, Store(sys.argv[3])) as gateway:
        for i in range(int(sys.argv[4])):
            result = await gateway.chat(ChatRequest(messages=[{"role": "user", "content": f"worker call {i}"}], template="t@v1"))
            assert result.error is None, result.error

asyncio.run(main())
"""


def hundred_tokens(body: dict) -> FakeReply:
    return FakeReply(content="fine", prompt_tokens=60, completion_tokens=40)


def worker_calls(spec: dict, server, store_dir: Path, n: int) -> None:
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec), server.base_url, str(store_dir), str(n)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_another_processs_calls_count_towards_the_budget_and_the_progress(server, tmp_path: Path) -> None:
    server.reset(hundred_tokens)
    store_dir = tmp_path / "store"
    spec = spend_spec("run-a", 500, None, {}, "fake-model")
    worker_calls(spec, server, store_dir, 3)  # 300 tokens paid in another process
    assert server.calls == 3

    before = progress.llm_counters()
    with others_in_progress(spec, Store(str(store_dir))):
        seen = progress.llm_counters()
    assert (seen.calls - before.calls, seen.tokens - before.tokens) == (3, 300)
    assert progress.llm_counters() == before, "the source is gone with the block"

    async def here() -> int:
        llm = {"base_url": server.base_url, "model": None, "concurrency": 1, "spend": spec}
        made = 0
        async with LLMGateway.for_worker(llm, Store(str(store_dir))) as gateway:
            with pytest.raises(BudgetExhausted, match="500 of 500 tokens"):
                for i in range(10):
                    await gateway.chat(ChatRequest(messages=[{"role": "user", "content": f"flow call {i}"}], template="t@v1"))
                    made += 1
        return made

    # 500 - 300 leaves two calls of 100 tokens; the third is refused before it is sent.
    assert asyncio.run(here()) == 2 and server.calls == 5


def test_a_cost_budget_prices_every_processs_tokens(server, tmp_path: Path) -> None:
    server.reset(hundred_tokens)
    store_dir = tmp_path / "store"
    prices = {"fake-model": {"prompt": 1000.0, "completion": 2000.0}}  # a call: 60*1000 + 40*2000 per 1e6 = $0.14
    spec = spend_spec("run-b", None, 0.30, prices, "fake-model")
    worker_calls(spec, server, store_dir, 2)  # $0.28 elsewhere

    async def here() -> None:
        llm = {"base_url": server.base_url, "model": None, "concurrency": 1, "spend": spec}
        async with LLMGateway.for_worker(llm, Store(str(store_dir))) as gateway:
            await gateway.chat(ChatRequest(messages=[{"role": "user", "content": "flow call"}], template="t@v1"))
            with pytest.raises(BudgetExhausted, match=r"\$0\.4200 of \$0\.3000"):
                await gateway.chat(ChatRequest(messages=[{"role": "user", "content": "one more"}], template="t@v1"))

    asyncio.run(here())
    assert server.calls == 3
