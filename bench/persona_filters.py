"""How fast the persona quality filters run: check_persona over Persona Hub's 1,000 real personas.

    .venv/bin/python bench/persona_filters.py [--repeat 20]

Reads ../shared/data/personahub/personas_1000.json (PERSONAHUB_SHARED_DATA overrides the data
folder). The language model loads before the timing; every persona is checked `repeat` times.
The figure goes in BENCHMARKS.md (it was a timed test before; speed targets live here).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

from personahub.tasks.personas.filters import check_persona

DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    personas = json.loads((DATA / "personahub" / "personas_1000.json").read_text())
    check_persona("A recipe for sourdough bread with a long cold proof")  # loads the language model
    start = time.perf_counter()
    for _ in range(args.repeat):
        reasons = Counter(check_persona(p) for p in personas)
    seconds = time.perf_counter() - start
    checks = args.repeat * len(personas)
    print(f"{checks} checks in {seconds:.2f} s: {checks / seconds:,.0f} personas/s on one thread")
    print(f"kept {reasons[None]} of {len(personas)}; rejected: {dict((k, v) for k, v in reasons.items() if k)}")


if __name__ == "__main__":
    main()
