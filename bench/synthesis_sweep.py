"""Every use case in every prompt mode on the embedded default, the way a user runs them.

    .venv/bin/python bench/synthesis_sweep.py [--n 20] [--personas FILE] [--store DIR] [--only math:zero-shot ...]

For each use case x mode: `personahub synthesize --n N` on the real Persona Hub sample (math
decontaminated against GSM8K and MATH-500), then `personahub report --json`, `personahub export
--format jsonl` and `--format hf`. It checks that each run wrote report.json, the diversity PNG and
both exports, and prints one markdown row per run (valid of asked, items kept, quarantine and
held-back reasons, LLM calls, seconds) for BENCHMARKS.md. Results also go to <store>/sweep.json.
Runs are resumable: a rerun of the sweep reuses every finished run (0 new LLM calls).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PERSONAHUB_SHARED_DATA", ROOT.parent / "shared" / "data"))
USE_CASES = ("math", "logic", "instructions", "knowledge", "npc", "tools")
MODES = ("zero-shot", "few-shot", "persona-enhanced")
# The game world is the user's input (nothing in personahub hard-codes one); this is the sweep's.
WORLD = (
    "Veyra, an archipelago of floating islands linked by sky-ferries. Guilds of wind-mages, "
    "merchants and cartographers compete for trade routes while storms and sky-pirates threaten them."
)


def personahub(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "personahub"), *args], capture_output=True, text=True, env=env
    )


def held_back(report: dict) -> dict[str, int]:
    """Filter reasons of the stages after synthesis (unverified math, tools with missing packages ...)."""
    reasons: dict[str, int] = {}
    for stage in report.get("stages", []):
        if stage["stage"] in ("persona_input", "select_personas", "diversity") or stage["stage"].startswith("synthesize_"):
            continue  # sampling, persona pairs, and the synthesis stage's own rejects (validity's quarantine reasons)
        for reason, count in stage["reasons"].items():
            reasons[f"{stage['stage']}:{reason}"] = reasons.get(f"{stage['stage']}:{reason}", 0) + count
    return reasons


def sweep_one(use_case: str, mode: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    run_id = f"sweep-{use_case}-{mode}-n{args.n}"
    command = ["synthesize", "--use-case", use_case, "--mode", mode, "--n", str(args.n),
               "--personas", args.personas, "--store", args.store, "--run-id", run_id, "--show", "0"]
    if use_case == "npc":
        command += ["--var", f"world={WORLD}"]
    if use_case == "math":
        for reference in ("math/gsm8k_test.jsonl#question", "math/MATH500_test_prm800k_split.jsonl#problem"):
            command += ["--reference", str(SHARED / reference)]
    start = time.monotonic()
    done = personahub(*command, env=env)
    seconds = time.monotonic() - start
    row: dict = {"use_case": use_case, "mode": mode, "run_id": run_id, "exit": done.returncode,
                 "seconds": round(seconds, 1)}
    if done.returncode != 0:
        row["error"] = (done.stderr or done.stdout)[-2000:]
        return row
    report = json.loads(personahub("report", run_id, "--store", args.store, "--json", env=env).stdout)
    exports = Path(args.store) / "exports"
    jsonl = personahub("export", run_id, "--format", "jsonl", "--store", args.store,
                       "--out", str(exports / f"{run_id}.jsonl"), env=env)
    hf = personahub("export", run_id, "--format", "hf", "--store", args.store,
                    "--out", str(exports / run_id), env=env)
    run_dir = Path(args.store) / "runs" / run_id
    validity = report["validity"]
    row.update(
        asked=validity["asked"], valid=validity["valid"], items=report["counts"]["items"],
        quarantined=validity.get("quarantine_reasons", {}), held_back=held_back(report),
        calls=report["llm_this_run"]["calls"], cache_hits=report["llm_this_run"]["cache_hits"],
        report_json=(run_dir / "report.json").is_file(), png=(run_dir / "diversity.png").is_file(),
        export_jsonl=jsonl.returncode == 0 and (exports / f"{run_id}.jsonl").is_file(),
        export_hf=hf.returncode == 0 and (exports / run_id / "README.md").is_file(),
        diversity=[(t["target"], t["pairs"], t.get("output_similarity")) for t in report["diversity"]["targets"]]
        if report.get("diversity") else None,
    )
    if use_case == "math":
        row["agreement"] = report["math"]["agreement"]
    if use_case == "tools":
        row["tools"] = report.get("tools")
    return row


def markdown(row: dict) -> str:
    if row["exit"] != 0:
        return f"| {row['use_case']} | {row['mode']} | failed (exit {row['exit']}) | | | | {row['seconds']:.0f} |"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(row["quarantined"].items())) or "-"
    held = ", ".join(f"{k} {v}" for k, v in sorted(row["held_back"].items())) or "-"
    wrote = "/".join(name for name in ("report_json", "png", "export_jsonl", "export_hf") if row[name])
    return (f"| {row['use_case']} | {row['mode']} | {row['valid']}/{row['asked']} | {row['items']} | {reasons} "
            f"| {held} | {row['calls']} | {row['seconds']:.0f} | {wrote} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--personas", default=str(SHARED / "personahub" / "personas_1000.json"))
    parser.add_argument("--store", default=str(ROOT / "personahub-data" / "sweep"))
    parser.add_argument("--only", nargs="*", help="use_case:mode pairs (default: all 18)")
    args = parser.parse_args()
    env = dict(os.environ, DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING")
    pairs = [tuple(p.split(":")) for p in args.only] if args.only else [(u, m) for u in USE_CASES for m in MODES]
    results_path = Path(args.store) / "sweep.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    print("| use case | mode | valid | kept | quarantined | held back | calls | s | wrote |")
    print("|---|---|---|---|---|---|---|---|---|")
    for use_case, mode in pairs:
        row = sweep_one(use_case, mode, args, env)
        results[f"{use_case}:{mode}"] = row
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
        print(markdown(row), flush=True)
        if row["exit"] != 0:
            print(row["error"], file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
