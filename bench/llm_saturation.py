"""Does the flow keep an LLM endpoint busy? Text-to-Persona and Persona-to-Persona through build-hub
against a stand-in server of known capacity, next to a raw asyncio load generator.

    .venv/bin/python bench/llm_saturation.py [--docs 300] [--slots 4] [--latency 0.1] [--shard-docs 37]

The stand-in server (its own process, so it takes no CPU from the client) answers
/v1/chat/completions after `latency` seconds, at most `slots` at a time (more wait in line), so its
capacity is slots / latency requests/s, below what the client's CPU can send. Its answers follow the
request's JSON schema (tests/fake_openai.py's default responder), so personas parse and the graph
grows. The raw generator sends the same number of requests through the openai SDK at the same
concurrency (settings.llm_max_concurrency) from one event loop: what a client can get. The flow's
rate is measured from the server's own log: requests answered per second between a stage's first
and last request. Documents are cut into shards of unequal size (--shard-docs and crawl buckets),
and the frontier into shards of --personas-per-shard, so many shards of each stage are in flight.
Embedding dedup is off: it is not what is measured. It also counts the response cache's objects
written and left in the store per 1,000 calls (segments, tasks/llm/cache.py), and with
--stage-memory prints the process's resident and peak memory after each stage (which stage grows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import multiprocessing
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fake server's schema-following responder

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fake_openai import default_responder  # noqa: E402


class StandInServer:
    """slots x fixed latency; appends "kind time" of every answered chat request to `log_path`."""

    def __init__(self, slots: int, latency: float, log_path: str):
        self.slots, self.latency, self.log_path = slots, latency, log_path

    def app(self) -> Starlette:
        semaphore: asyncio.Semaphore | None = None

        async def models(_: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

        async def chat(request: Request) -> JSONResponse:
            nonlocal semaphore
            semaphore = semaphore or asyncio.Semaphore(self.slots)
            body = await request.json()
            async with semaphore:
                await asyncio.sleep(self.latency)
            reply = default_responder(body)
            content = reply if isinstance(reply, str) else reply.content
            last = body["messages"][-1]["content"]
            kind = "t2p" if last.startswith("Text:") else "p2p" if last.startswith("Person:") else "raw"
            with open(self.log_path, "a") as log:
                log.write(f"{kind} {time.time()}\n")
            return JSONResponse({
                "id": "x", "object": "chat.completion", "created": 0, "model": "stand-in",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            })

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])

    def serve(self, sock: socket.socket) -> None:
        uvicorn.Server(uvicorn.Config(self.app(), log_level="warning", access_log=False, lifespan="off")).run(sockets=[sock])

    def start(self) -> str:
        """Serve in a child process; returns the base URL once it answers."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        multiprocessing.get_context("fork").Process(target=self.serve, args=(sock,), daemon=True).start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        for _ in range(500):
            try:
                httpx.get(f"{url}/v1/models", timeout=1).raise_for_status()
                return f"{url}/v1"
            except httpx.HTTPError:
                time.sleep(0.02)
        raise RuntimeError("the stand-in server did not start")

    def rate(self, kind: str) -> tuple[int, float]:
        with open(self.log_path) as log:
            entries = [line.split() for line in log]
        times = sorted(float(t) for k, t in entries if k == kind)
        if len(times) < 2:
            return len(times), 0.0
        return len(times), (len(times) - 1) / (times[-1] - times[0])


async def raw_load(base_url: str, n: int, concurrency: int) -> float:
    """requests/s of n chat requests at `concurrency` through the openai SDK on one event loop."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await client.chat.completions.create(model="stand-in", messages=[{"role": "user", "content": f"raw {i}"}])

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.monotonic() - start
    await client.close()
    return n / elapsed


def count_cache_writes() -> list[int]:
    """Counts every object the response cache writes in this process (the flow's task threads run
    here): what an object store bills as PUTs, merges included, not only what is left."""
    from personahub.tasks.llm.cache import ResponseCache

    written = [0]
    wrote = ResponseCache._wrote
    lock = threading.Lock()  # many caches, one per task, in several threads

    def counting(self: ResponseCache) -> None:
        with lock:
            written[0] += 1
        wrote(self)

    ResponseCache._wrote = counting  # type: ignore[method-assign]
    return written


def memory_mb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in MB, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def print_stage_memory() -> None:
    """Wrap the stage runner so each stage's memory is printed when it ends (to stderr: the flow's
    log_prints would turn a print into a log line, which the bench's log level hides)."""
    import personahub.flows.stage_runner as runner

    run = runner.run

    def measured(run_ctx, stage):
        rss0, _ = memory_mb()
        result = run(run_ctx, stage)
        rss, peak = memory_mb()
        sys.__stderr__.write(f"stage {stage.name:28s} {len(stage.inputs):5d} shards  RSS {rss0} -> {rss} MB, "
                             f"peak so far {peak} MB\n")
        return result

    runner.run = measured
    for module in ("crawl", "build_hub", "dedup_stages", "persona_graph"):
        flow_module = __import__(f"personahub.flows.{module}", fromlist=["run"])
        flow_module.run = measured


def write_corpus(root: Path, docs: int) -> None:
    """Files of unequal size (1..9 documents each), so crawl buckets and LLM shards differ in size."""
    root.mkdir(parents=True)
    i = f = 0
    while i < docs:
        n = min(docs - i, 1 + (f * 7) % 9)
        lines = [json.dumps({"text": f"Field note {i + j}: the harbour crane operator {i + j} logged container "
                                     f"moves {((i + j) * 37) % 1000} before storm number {i + j}."}) for j in range(n)]
        (root / f"part{f:04d}.jsonl").write_text("\n".join(lines) + "\n")
        i, f = i + n, f + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--shard-docs", type=int, default=37, help="llm_shard_docs (documents per T2P shard)")
    ap.add_argument("--personas-per-shard", type=int, default=23)
    ap.add_argument("--max-new-per-hop", type=int, default=300)
    ap.add_argument("--parallelism", type=int, default=None, help="llm_shard_parallelism (default: the flow's)")
    ap.add_argument("--relations", default="read,write,like,dislike", help="Text-to-Persona relations (comma-separated)")
    ap.add_argument("--hops", type=int, default=1)
    ap.add_argument("--rows-per-bucket", type=int, default=None,
                    help="the crawl's dedup bucket (default: a third of --docs); fix it to see memory against --docs")
    ap.add_argument("--stage-memory", action="store_true", help="print RSS and peak RSS after each stage")
    args = ap.parse_args()
    if args.stage_memory:
        print_stage_memory()

    from personahub.flows.build_hub import BuildHubParams, build_hub
    from personahub.flows.dedup_stages import EmbeddingParams
    from personahub.flows.persona_graph import GraphParams
    from personahub.tasks.core.settings import load_settings

    concurrency = load_settings().llm_max_concurrency
    work = Path(tempfile.mkdtemp(prefix="saturation-"))
    server = StandInServer(args.slots, args.latency, str(work / "requests.log"))
    base_url = server.start()
    write_corpus(work / "corpus", args.docs)

    relations = args.relations.split(",")
    n_raw = len(relations) * args.docs
    raw = asyncio.run(raw_load(base_url, n_raw, concurrency))
    params = BuildHubParams(
        corpus=[str(work / "corpus")], store=str(work / "store"), llm_base_url=base_url, llm_model="stand-in",
        llm_shard_docs=args.shard_docs, rows_per_bucket=args.rows_per_bucket or max(1, args.docs // 3),
        **({"llm_shard_parallelism": args.parallelism} if args.parallelism else {}),
        relations=relations, graph=GraphParams(hops=args.hops, k=3, max_new_per_hop=args.max_new_per_hop, personas_per_shard=args.personas_per_shard),
        embedding=EmbeddingParams(enabled=False))
    written = count_cache_writes()
    start = time.monotonic()
    summary = build_hub(params)
    wall = time.monotonic() - start
    time.sleep(2)  # let Prefect's temporary server flush its events before the process ends
    stages = {s["stage"]: s for s in summary["stages"]}
    capacity = args.slots / args.latency
    print(f"stand-in server: {args.slots} slots x {args.latency * 1000:.0f} ms = {capacity:.0f} requests/s capacity; "
          f"client concurrency {concurrency}")
    print(f"raw asyncio load generator: {n_raw} requests, {raw:.1f} requests/s")
    for kind, stage in (("t2p", "text_to_persona"), ("p2p", "persona_to_persona_h1")):
        if stage not in stages:
            continue
        n, rate = server.rate(kind)
        print(f"{stage}: {stages[stage]['shards']} shards, {n} requests, {rate:.1f} requests/s = "
              f"{100 * rate / raw:.1f}% of the raw generator")
    calls = sum(1 for line in open(server.log_path) if line.split()[:1] in (["t2p"], ["p2p"]))
    objects = [p for p in (work / "store" / "cache").rglob("*") if p.is_file()]
    print(f"response cache: {len(objects)} objects in the store for {calls} calls = "
          f"{1000 * len(objects) / max(calls, 1):.1f} objects per 1,000 calls "
          f"(llm_cache_flush_every {load_settings().llm_cache_flush_every})")
    print(f"response cache: {written[0]} objects written (segments and merges, one PUT each) for {calls} calls = "
          f"{1000 * written[0] / max(calls, 1):.1f} PUTs per 1,000 calls")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"build wall time {wall:.1f} s, {summary['personas']} personas, peak RSS of the flow's process {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
