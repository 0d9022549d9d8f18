"""The ledger of a hub build (report.json in its run folder, the flow's markdown artifact,
`personahub report RUN`): per stage what came in, what was kept, filtered and quarantined and why,
whether the counts reconcile, the LLM calls, cache hits and tokens; the dedup ratios; the filters
in force; what the run paid (tokens, cost) and how long the invocation that finished it took.

Counts come from the stages' manifests (every invocation's shards), so a resumed run reports the
whole build; "this run" is what the finishing invocation paid for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from personahub.tasks.core.report import report_path
from personahub.tasks.core.store import Store
from personahub.tasks.llm.budget import run_cost

KIND = "build"
# The stages that remove duplicates, with what they compare.
DEDUP_STAGES = {"crawl_dedup": "documents, exact text", "minhash": "personas, MinHash Jaccard",
                "embedding_dedup": "personas, embedding cosine"}


def _reconciles(counts: Mapping[str, int]) -> bool:
    return counts["rows_in"] == counts["rows_out"] + counts["filtered"] + counts["quarantined"]


def build_report(summary: Mapping[str, Any], filters: Mapping[str, Mapping[str, Any]], elapsed_s: float,
                 prices: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The report of a finished build from its flow summary; `filters`: each filtering step's
    options (personas, minhash, embedding), `prices` the settings' price table."""
    stages = list(summary["stages"])
    usage_keys = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "total_tokens")
    dedup = []  # a list, in pipeline order (JSON objects are written with sorted keys)
    for s in stages:
        if s["stage"] in DEDUP_STAGES:
            c = s["counts"]
            removed = c["rows_in"] - c["rows_out"]
            dedup.append({"stage": s["stage"], "compares": DEDUP_STAGES[s["stage"]], "in": c["rows_in"], "kept": c["rows_out"],
                          "removed": removed, "removed_ratio": round(removed / c["rows_in"], 4) if c["rows_in"] else None})
    llm_total = {k: sum(int(s["usage"].get(k, 0)) for s in stages) for k in usage_keys}
    return {
        "kind": KIND, "run_id": summary["run_id"], "hub": summary["hub"], "version": summary["version"],
        "hub_path": summary["hub_path"], "personas": summary["personas"], "model": summary["model"],
        "stages": [{"stage": s["stage"], "shards": s["shards"], "shards_run": s["shards_run"], "counts": s["counts"],
                    "reasons": s["reasons"], "reconciles": _reconciles(s["counts"]),
                    "llm": {k: int(s["usage"].get(k, 0)) for k in usage_keys}} for s in stages],
        "dedup": dedup,
        "filters": {name: dict(options) for name, options in filters.items()},
        "llm_this_run": summary["llm_this_run"],
        "llm_all_runs": llm_total,
        "reused": summary["reused"],
        "cost_usd_this_run": summary.get("cost_usd"),
        "cost_usd_all_runs": run_cost(prices, summary["model"], llm_total),
        "elapsed_s": round(elapsed_s, 1),
    }


def write_report(store: Store, report: Mapping[str, Any]) -> None:
    store.write_json(report_path(report["run_id"]), dict(report))


def markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown (the Prefect artifact and `personahub report`)."""
    lines = [
        f"# Hub `{report['hub']}` {report['version']}: {report['personas']} personas",
        f"Run `{report['run_id']}`, model `{report['model']}`, hub at `{report['hub_path']}`.",
        "",
        "| stage | shards (run now) | in | kept | filtered | quarantined | reasons | reconciles | LLM calls | cache hits | tokens |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for s in report["stages"]:
        k, u = s["counts"], s["llm"]
        reasons = ", ".join(f"{r} {n}" for r, n in s["reasons"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['shards']} ({s['shards_run']}) | {k['rows_in']} | {k['rows_out']} | {k['filtered']} | "
                     f"{k['quarantined']} | {reasons} | {'yes' if s['reconciles'] else 'NO'} | {u['calls']} | "
                     f"{u['cache_hits']} | {u['total_tokens']} |")
    if report["dedup"]:
        lines += ["", "**Dedup**: " + "; ".join(
            f"{d['stage']} ({d['compares']}): {d['removed']} of {d['in']} removed"
            + (f" ({d['removed_ratio']:.1%})" if d["removed_ratio"] is not None else "")
            for d in report["dedup"])]
    lines += ["", "**Filters**: " + "; ".join(
        f"{name} " + ", ".join(f"{k}={v}" for k, v in options.items() if v not in (None, []))
        for name, options in report["filters"].items())]
    now, total, reused = report["llm_this_run"], report["llm_all_runs"], report["reused"]
    lines += ["", f"- **LLM this run**: {now['calls']} new calls, {now['cache_hits']} cache hits, "
              f"{now['prompt_tokens']} prompt + {now['completion_tokens']} completion tokens"
              + (f", ${report['cost_usd_this_run']:.4f}" if report["cost_usd_this_run"] is not None else "")
              + f"; reused {reused['shards_reused']} of {reused['shards']} shards.",
              f"- **LLM paid for by this build's shards** (whichever invocation made them): {total['calls']} calls, {total['total_tokens']} tokens"
              + (f", ${report['cost_usd_all_runs']:.4f}" if report["cost_usd_all_runs"] is not None else "") + ".",
              f"- **Time**: {report['elapsed_s']:.0f} s (the invocation that finished the run)."]
    return "\n".join(lines)
