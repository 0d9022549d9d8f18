"""Throughput of the embedded default (llama-server + SmolLM2-135M) through the LLM gateway.

Two workloads, each at several concurrency levels, with the response cache off and a fresh server
per level; prints a Markdown table per workload:
- t2p: the real Text-to-Persona requests for the demo corpus (long prompts, short answers);
- decode: a short prompt answered with max_tokens 128 (generation-bound).

    .venv/bin/python bench/embedded_llm.py [--levels 1 4 8] [--docs 36] [--workloads t2p decode]
                                           [--binary PATH]   # another llama-server build (default: ours)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from pathlib import Path

from personahub.flows.build_hub import demo_corpus
from personahub.tasks.crawl import expand_sources, read_records
from personahub.tasks.crawl.clean import normalise_text
from personahub.tasks.serving.llama_server import EmbeddedLLMServer
from personahub.tasks.llm.gateway import ChatRequest, LLMGateway
from personahub.tasks.llm.templates import load_template
from personahub.tasks.core.settings import load_settings
from personahub.tasks.personas.text_to_persona import build_request


async def measure(base_url: str, model: str, requests: list, concurrency: int) -> dict[str, float]:
    async with LLMGateway(base_url=base_url, model=model, store=None, max_concurrency=concurrency) as gateway:
        started = time.perf_counter()
        results = await gateway.chat_many(requests)
        elapsed = time.perf_counter() - started
    failed = sum(r.error is not None for r in results)
    usage = gateway.usage
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "failed": failed,
        "seconds": elapsed,
        "completion_tok_s": usage.completion_tokens / elapsed,
        "prompt_tok_s": usage.prompt_tokens / elapsed,
        "requests_s": len(requests) / elapsed,
    }


def workload_requests(name: str, n: int) -> list[ChatRequest]:
    if name == "t2p":
        template = load_template("text_to_persona")
        texts = [normalise_text(r.text) for f in expand_sources([demo_corpus()]) for r in read_records(f) if r.text]
        return [build_request(template, text, "read", 2000, {**template.params, "seed": i}) for i, text in enumerate(texts[:n])]
    prompt = "Write a short paragraph about a day in the life of a {}."
    jobs = ["baker", "pilot", "nurse", "teacher", "farmer", "judge", "welder", "chemist"]
    return [
        ChatRequest(messages=[{"role": "user", "content": prompt.format(jobs[i % len(jobs)])}], template="bench-decode",
                    params={"max_tokens": 128, "temperature": 0.8, "seed": i, "ignore_eos": True})
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8], help="concurrency levels")
    parser.add_argument("--docs", type=int, default=36, help="requests per level")
    parser.add_argument("--workloads", nargs="+", default=["t2p", "decode"], choices=["t2p", "decode"])
    parser.add_argument("--binary", type=Path, help="llama-server to measure (default: the one a run would use)")
    args = parser.parse_args()

    settings = load_settings(embedded_parallel=max(args.levels))
    print(f"embedded model, llama-server {args.binary or '(default)'} -np {settings.embedded_parallel}, "
          f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), {args.docs} requests per level, "
          "fresh server per level")
    for workload in args.workloads:
        requests = workload_requests(workload, args.docs)
        rows = []
        for level in args.levels:
            # A fresh server per level: llama-server's prompt cache would otherwise serve the repeated
            # prompts of later levels and flatter them.
            with EmbeddedLLMServer(settings, binary=args.binary, log=lambda *_: None) as server:
                rows.append(asyncio.run(measure(server.base_url, server.model, requests, level)))
        print(f"\n{workload}:\n")
        print("| concurrency | requests | failed | seconds | completion tok/s | prompt tok/s | requests/s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['concurrency']} | {r['requests']} | {r['failed']} | {r['seconds']:.1f} | "
                  f"{r['completion_tok_s']:.0f} | {r['prompt_tok_s']:.0f} | {r['requests_s']:.2f} |")


if __name__ == "__main__":
    main()
