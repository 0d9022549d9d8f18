"""The embedded embedding model: fp32 vs bf16 autocast, in process and through the server.

Part 1 (in process, tasks/serving/embedding_server.EmbeddingModel, the server's own code path): model load
time, then sentences/s for fp32 and bf16 (torch.autocast("cpu", dtype=torch.bfloat16)) on ~2,000
real personas (shared/data/personahub: personas_1000.json plus the "input persona" of
tool_first2500.jsonl), alternating the precisions `--rounds` times so a busy neighbour on the
machine hits both; the agreement of the two: 1 - cos of each sentence's two vectors, and the
largest change of any pairwise cosine, and whether the pairs at >= 0.9 are the same.

Part 2 (--http): the same sentences through EmbeddedEmbeddingServer and LLMGateway.embed_many
(batches of 256, concurrency 2, no cache): start-up time, sentences/s end to end, server RSS.

    .venv/bin/python bench/embeddings.py [--data ../shared/data] [--threads 2] [--rounds 2] [--http]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def personas(data: Path, n: int) -> list[str]:
    folder = data / "personahub"
    texts = list(json.loads((folder / "personas_1000.json").read_text(encoding="utf-8")))
    with open(folder / "tool_first2500.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if len(texts) >= n:
                break
            texts.append(json.loads(line)["input persona"])
    return texts[:n]


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def in_process(texts: list[str], threads: int, rounds: int, batch: int) -> None:
    from personahub.tasks.serving.embedding_server import EmbeddingModel, model_path

    started = time.perf_counter()
    model = EmbeddingModel(model_path(), threads, "fp32")
    print(f"model load (import torch + sentence-transformers, load, warm-up): {time.perf_counter() - started:.2f}s")
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            model.precision = precision
            started = time.perf_counter()
            vectors[precision] = np.concatenate([model.encode(chunk)[0] for chunk in chunks])
            speeds[precision].append(len(texts) / (time.perf_counter() - started))
    for precision, values in speeds.items():
        print(f"{precision}: {' '.join(f'{v:.0f}' for v in values)} sentences/s (requests of {batch})")
    a, b = vectors["fp32"], vectors["bf16"]
    print(f"max 1 - cos(fp32, bf16) of one sentence: {float((1 - np.sum(a * b, axis=1)).max()):.2e}")
    diff = np.abs(a @ a.T - b @ b.T)
    print(f"pairwise cosines, |fp32 - bf16|: max {float(diff.max()):.2e}, mean {float(diff.mean()):.2e}")
    upper = np.triu_indices(len(texts), 1)
    same = np.array_equal((a @ a.T)[upper] >= 0.9, (b @ b.T)[upper] >= 0.9)
    print(f"pairs >= 0.9: fp32 {int(((a @ a.T)[upper] >= 0.9).sum())}, bf16 {int(((b @ b.T)[upper] >= 0.9).sum())}, "
          f"same pairs: {same}")


def over_http(texts: list[str], threads: int) -> None:
    from personahub.tasks.serving.embedding_server import EmbeddedEmbeddingServer
    from personahub.tasks.llm.gateway import LLMGateway
    from personahub.tasks.core.settings import Settings

    with EmbeddedEmbeddingServer(Settings(), threads=threads, log=lambda _: None) as server:
        print(f"server start-up (spawn to /health): {server.startup_s:.2f}s; "
              f"RSS after start: {rss_mib(server.process.pid)[0]:.0f} MiB")
        gateway = LLMGateway(base_url=server.base_url, model=None, store=None, max_concurrency=2)
        started = time.perf_counter()
        result = gateway.embed_many(texts, model=server.model, batch_size=256)
        seconds = time.perf_counter() - started
        rss, peak = rss_mib(server.process.pid)
        print(f"gateway -> server: {len(texts) / seconds:.0f} sentences/s ({result.usage.calls} requests, "
              f"{result.usage.prompt_tokens} tokens); server RSS {rss:.0f} MiB, peak {peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PERSONAHUB_SHARED_DATA", "../shared/data")))
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="texts per encode call (one request's worth)")
    parser.add_argument("--http", action="store_true", help="also time the server through the gateway")
    args = parser.parse_args()
    texts = personas(args.data, args.n)
    print(f"{len(texts)} personas, {np.mean([len(t) for t in texts]):.0f} characters on average, "
          f"{args.threads} threads, {os.cpu_count()} cores")
    in_process(texts, args.threads, args.rounds, args.batch)
    if args.http:
        over_http(texts, args.threads)


if __name__ == "__main__":
    main()
