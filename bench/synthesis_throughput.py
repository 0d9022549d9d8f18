"""Does synthesis keep an LLM endpoint busy, and how fast is the sandbox?

    .venv/bin/python bench/synthesis_throughput.py [--personas 2000] [--slots 4] [--latency 0.1] [--sandbox-runs 200]

1. The synthesize flow (instructions, zero-shot: one request per persona, diversity off) against
   bench/llm_saturation.py's stand-in server (its own process, `slots` x `latency` capacity, answers
   following the request's JSON schema), next to the raw asyncio generator at the same concurrency.
   The flow's rate is the server's: requests answered per second between the flow's first and last
   request, from the server's log.
2. The sandbox (tasks/synthesis/sandbox.py): programs run per second, one at a time and from two
   threads, for a program-of-thought sized program (sympy not imported) and an empty one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_saturation import StandInServer, raw_load  # noqa: E402  (also sets the Prefect test environment)

PROGRAM = "from fractions import Fraction\nimport math\nx = Fraction(3, 4) * 12 + math.comb(6, 2)\nprint(x)\n"


def server_rate(log_path: str, since: float) -> tuple[int, float]:
    times = sorted(float(t) for k, t in (line.split() for line in open(log_path)) if float(t) >= since)
    return len(times), ((len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0)


def sandbox_rate(code: str, runs: int, threads: int) -> tuple[float, int]:
    from personahub.tasks.synthesis.sandbox import run_python

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: run_python(code), range(runs)))
    return runs / (time.monotonic() - start), sum(r.ok for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--personas", type=int, default=2000)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--shard-rows", type=int, default=250)
    ap.add_argument("--sandbox-runs", type=int, default=200)
    args = ap.parse_args()

    from personahub.flows.synthesize import SynthesizeParams, synthesize
    from personahub.tasks.core.settings import load_settings
    from personahub.tasks.synthesis.personas import PersonaSelection
    from personahub.tasks.synthesis.sandbox import _namespace_command

    concurrency = load_settings().llm_max_concurrency
    work = Path(tempfile.mkdtemp(prefix="synthesis-bench-"))
    server = StandInServer(args.slots, args.latency, str(work / "requests.log"))
    base_url = server.start()
    personas = work / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": f"A harbour crane operator number {i} who logs container moves "
                                                       f"before storm {i}."}) + "\n" for i in range(args.personas)))
    raw = asyncio.run(raw_load(base_url, args.personas, concurrency))
    start = time.time()
    summary = synthesize(SynthesizeParams(
        use_case="instructions", mode="zero-shot", personas=[str(personas)], selection=PersonaSelection(n=args.personas),
        store=str(work / "store"), llm_base_url=base_url, llm_model="stand-in", shard_rows=args.shard_rows,
        diversity={"enabled": False}))
    wall = time.time() - start
    n, rate = server_rate(server.log_path, start)
    capacity = args.slots / args.latency
    print(f"stand-in server: {args.slots} slots x {args.latency * 1000:.0f} ms = {capacity:.0f} requests/s capacity; "
          f"client concurrency {concurrency}")
    print(f"raw asyncio load generator: {args.personas} requests, {raw:.1f} requests/s")
    print(f"synthesize (instructions, zero-shot): {summary['items']} items, {n} requests, {rate:.1f} requests/s = "
          f"{100 * rate / raw:.1f}% of the raw generator; flow wall time {wall:.1f} s")

    isolation = "namespace (unshare -rn)" if _namespace_command() else "socket guard only"
    for name, code in (("program-of-thought sized program", PROGRAM), ("empty program", "pass\n")):
        for threads in (1, 2):
            per_s, ok = sandbox_rate(code, args.sandbox_runs, threads)
            print(f"sandbox, {name}, {threads} thread(s), {isolation}: {args.sandbox_runs} runs, {ok} ok, {per_s:.1f} runs/s")


if __name__ == "__main__":
    main()
