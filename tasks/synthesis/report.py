"""The quality ledger of a synthesis run (report.json beside its dataset, a Prefect markdown
artifact, `personahub report RUN`).

Everything in it is counted from the run's checkpoints, not estimated:
* validity per use case and mode: answers asked for, valid (parsed, schema and checks), the
  quarantine reasons;
* every stage's in / kept / filtered / quarantined, and whether they reconcile;
* math: the distribution of solver agreement (k of n) over every solved problem, kept or not;
* tools: how many implementations parsed, defined the function, imported; missing dependencies;
* judge: the distribution of mean scores;
* decontamination: the references, items checked, contaminated, flagged;
* spread of the dataset: distinct word 1- and 2-grams over all of it (distinct-n).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from personahub.tasks.core.checkpoint import Manifest
from personahub.tasks.core.report import report_path
from personahub.tasks.core.store import Store
from personahub.tasks.synthesis import diversity
from personahub.tasks.synthesis.stage import UNVERIFIED

KIND = "synthesis"
_WORD = re.compile(r"\w+")
# Implementation reasons by how far the code got: each later check needs the earlier ones passed.
_NOT_PARSED = {"llm_error", "no_code", "syntax_error"}
_NO_FUNCTION = {"missing_function", "argument_mismatch"}


def _column(store: Store, manifest: Manifest, kinds: tuple[str, ...], column: str) -> list[Any]:
    values: list[Any] = []
    for kind in kinds:
        for path in manifest.files(kind):
            values.extend(store.read_parquet(path, columns=[column]).column(column).to_pylist())
    return values


def distinct_ngrams(texts: list[str], n: int) -> float | None:
    """Distinct-n: unique word n-grams over all n-grams of the texts (1.0: no n-gram repeats)."""
    total, unique = 0, set()
    for text in texts:
        words = _WORD.findall(text.lower())
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return round(len(unique) / total, 4) if total else None


def _stage(report_stages: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((s for s in report_stages if s["stage"] == name), None)


def build_report(store: Store, summary: Mapping[str, Any], manifests: Mapping[str, Manifest]) -> dict[str, Any]:
    """The run's report from its flow summary and the manifests of its item stages."""
    stages = list(summary["stages"])
    case = summary["use_case"]
    generated = _stage(stages, f"synthesize_{case}")
    params = summary["params"]
    c = generated["counts"]
    report: dict[str, Any] = {
        "kind": KIND, "run_id": summary["run_id"], "use_case": case, "mode": summary["mode"], "model": summary["model"],
        "source": summary["source"], "templates": [summary["template"]], "dataset_files": summary["dataset_files"],
        "dataset_path": summary["dataset_path"],
        "counts": {"personas": summary["personas"], "generated": summary["generated"],
                   "quarantined": summary["quarantined"], "items": summary["items"]},
        "validity": {"use_case": case, "mode": summary["mode"], "asked": c["rows_in"], "valid": c["rows_out"],
                     "rate": round(c["rows_out"] / c["rows_in"], 4) if c["rows_in"] else None,
                     "quarantine_reasons": generated["reasons"]},
        "stages": [{"stage": s["stage"], "counts": s["counts"], "reasons": s["reasons"],
                    "reconciles": s["counts"]["rows_in"] == s["counts"]["rows_out"] + s["counts"]["filtered"]
                    + s["counts"]["quarantined"], "llm": {k: s["usage"].get(k, 0) for k in
                                                          ("calls", "cache_hits", "total_tokens")}} for s in stages],
        "llm_this_run": summary["llm_this_run"],
        "cost_usd_this_run": summary.get("cost_usd"),
        "elapsed_s": summary.get("elapsed_s"),
        "filters": {},
    }
    halves = [name for name in manifests if name.startswith("conversation_")]
    if halves:
        report["conversations"] = {"turns": params["turns"], "assistant_model": params["assistant_model"] or summary["model"],
                                   "started": manifests[halves[0]].totals.rows_in,
                                   "completed": manifests[halves[-1]].totals.rows_out}
        report["templates"].append("conversation (assistant, user)")
    if "solve_math" in manifests:
        m = manifests["solve_math"]
        report["filters"]["min_agreement"] = params["min_agreement"]
        solvers = [f"{s['kind']}#{s['seed']}" for s in params["solvers"]]
        pairs = Counter(zip(_column(store, m, ("data", UNVERIFIED), "agreement"),
                            _column(store, m, ("data", UNVERIFIED), "solvers")))
        report["math"] = {"solvers": solvers, "min_agreement": params["min_agreement"],
                          "verified": m.rows("data"), "unverified": m.rows(UNVERIFIED),
                          "agreement": {f"{k} of {n}": pairs[(k, n)] for k, n in sorted(pairs, reverse=True)}}
        report["templates"].append("math_solution (" + ", ".join(sorted({s["kind"] for s in params["solvers"]})) + ")")
    if "implement_tools" in manifests:
        s = _stage(stages, "implement_tools")
        asked = s["counts"]["rows_in"]
        reasons = s["reasons"]
        not_parsed = sum(n for r, n in reasons.items() if r in _NOT_PARSED)
        no_function = sum(n for r, n in reasons.items() if r in _NO_FUNCTION)
        missing = Counter(name for checks in _column(store, manifests["implement_tools"], (UNVERIFIED,), "checks")
                          for name in json.loads(checks)["missing"])
        imported = s["counts"]["rows_out"]
        report["tools"] = {"asked": asked, "parsed": asked - not_parsed, "defines_function": asked - not_parsed - no_function,
                           "imports": imported, "import_rate": round(imported / asked, 4) if asked else None,
                           "missing_dependencies": dict(missing.most_common()), "reasons": reasons}
    if "judge" in manifests:
        scores = _column(store, manifests["judge"], ("data", UNVERIFIED), "judge_score")
        report["filters"]["min_judge_score"] = params["min_judge_score"]
        report["judge"] = {"judged": len(scores), "kept": manifests["judge"].rows("data"),
                           "mean": round(sum(scores) / len(scores), 3) if scores else None,
                           "scores": {f"{b:.1f}": n for b, n in sorted(Counter(round(x * 2) / 2 for x in scores).items())}}
    if "decontaminate" in manifests:
        d = params["decontamination"]
        s = _stage(stages, "decontaminate")
        report["filters"]["decontamination"] = f"{d['n']}-grams, max overlap {d['max_overlap']}, drop {d['drop']}"
        report["decontamination"] = {"references": d["references"], "n": d["n"], "max_overlap": d["max_overlap"],
                                     "checked": s["counts"]["rows_in"], "contaminated": s["counts"]["filtered"],
                                     "flagged_kept": _flagged(manifests["decontaminate"])}
    spread_cosine = None
    if "diversity" in manifests:
        m = manifests["diversity"]
        shard = m.only_shard()
        rows = diversity.pair_rows(store, m.files())
        d = params["diversity"]
        spread_cosine = shard.extra.get("dataset_mean_cosine")
        report["diversity"] = {
            "pool": shard.extra.get("pool"), "from_hub_index": shard.extra.get("from_hub_index"),
            "tolerance": d["tolerance"], "pairs_drawn": shard.extra.get("pairs_drawn"),
            "pairs_without_output": shard.extra.get("pairs_without_output"), "decoding": "greedy (temperature 0)",
            "targets": diversity.summarise(rows, d["targets"]),
            "pairs": [{k: r[k] for k in ("target", "persona_a", "persona_b", "persona_similarity", "output_similarity")}
                      for r in rows],
            "plot": plot_path(summary["run_id"]),
        }
    texts = [t or "" for path in summary["dataset_files"] for t in store.read_parquet(path, columns=["text"]).column("text").to_pylist()]
    report["spread"] = {"items": len(texts), "distinct_1": distinct_ngrams(texts, 1), "distinct_2": distinct_ngrams(texts, 2),
                        "mean_pairwise_cosine": spread_cosine}
    return report


def _flagged(manifest: Manifest) -> int:
    return sum(int(shard.extra.get("flagged", 0)) for shard in manifest.shards)


def plot_path(run_id: str) -> str:
    return f"runs/{run_id}/diversity.png"


def write_report(store: Store, run_id: str, report: dict[str, Any], diversity_manifest: Manifest | None = None) -> None:
    """report.json, and the diversity plot beside it when the run measured diversity."""
    if diversity_manifest is not None:
        rows = diversity.pair_rows(store, diversity_manifest.files())
        store.write_bytes(plot_path(run_id), diversity.plot(
            rows, f"{report['use_case']} ({report['mode']}), {len(rows)} persona pairs, greedy decoding"))
    store.write_json(report_path(run_id), report)


def markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown (the Prefect artifact and `personahub report`)."""
    c, v = report["counts"], report["validity"]
    rate = f"{v['rate']:.0%}" if v["rate"] is not None else "n/a"
    lines = [
        f"# Synthesis `{report['run_id']}`: {c['items']} {report['use_case']} items ({report['mode']})",
        f"From {c['personas']} personas of `{report['source']}`, model `{report['model']}`; dataset at "
        f"`{report['dataset_path']}`.",
        "",
        f"**Validity**: {v['valid']} of {v['asked']} answers valid ({rate}); quarantined by reason: "
        + (", ".join(f"{r} {n}" for r, n in v["quarantine_reasons"].items()) or "none"),
        "",
        "| stage | in | kept | filtered | quarantined | reasons | reconciles | LLM calls | cache hits |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for s in report["stages"]:
        k = s["counts"]
        reasons = ", ".join(f"{r} {n}" for r, n in s["reasons"].items()) or "-"
        lines.append(f"| {s['stage']} | {k['rows_in']} | {k['rows_out']} | {k['filtered']} | {k['quarantined']} | "
                     f"{reasons} | {'yes' if s['reconciles'] else 'NO'} | {s['llm']['calls']} | {s['llm']['cache_hits']} |")
    if "conversations" in report:
        c2 = report["conversations"]
        lines += ["", f"**Conversations** ({c2['turns']} user turns, assistant `{c2['assistant_model']}`): "
                  f"{c2['completed']} of {c2['started']} completed"]
    if "math" in report:
        m = report["math"]
        lines += ["", f"**Math solutions** ({', '.join(m['solvers'])}; keep at {m['min_agreement']} agreeing): "
                  f"{m['verified']} verified, {m['unverified']} not; agreement: "
                  + (", ".join(f"{k}: {n}" for k, n in m["agreement"].items()) or "none")]
    if "tools" in report:
        t = report["tools"]
        lines += ["", f"**Tool implementations**: of {t['asked']}, {t['parsed']} parsed, {t['defines_function']} "
                  f"define the function with its arguments, {t['imports']} import in the sandbox; missing "
                  "dependencies: " + (", ".join(f"{d} {n}" for d, n in t["missing_dependencies"].items()) or "none")]
    if "judge" in report:
        j = report["judge"]
        lines += ["", f"**Judge**: {j['judged']} graded, mean {j['mean']}, {j['kept']} kept; scores: "
                  + (", ".join(f"{s}: {n}" for s, n in j["scores"].items()) or "none")]
    if "decontamination" in report:
        d = report["decontamination"]
        lines += ["", f"**Decontamination** ({d['n']}-grams against {', '.join(d['references'])}): {d['checked']} "
                  f"checked, {d['contaminated']} contaminated and dropped, {d['flagged_kept']} flagged and kept"]
    if "diversity" in report:
        d = report["diversity"]
        per = "; ".join(f"~{t['target']}: {t['pairs']} pairs, outputs {t['output_similarity']}" for t in d["targets"])
        lines += ["", f"**Diversity** (Figure 10; {d['pool']} personas, {d['decoding']}): persona-pair similarity "
                  f"→ output-pair similarity: {per}. Plot: `{d['plot']}`"]
    s = report["spread"]
    lines += ["", f"**Spread**: {s['items']} items, distinct-1 {s['distinct_1']}, distinct-2 {s['distinct_2']}, "
              f"mean pairwise cosine {s['mean_pairwise_cosine']}"]
    u = report["llm_this_run"]
    cost, elapsed = report.get("cost_usd_this_run"), report.get("elapsed_s")
    lines += ["", f"LLM this run: {u['calls']} new calls, {u['cache_hits']} cache hits, {u['total_tokens']} tokens"
              + (f", ${cost:.4f}" if cost is not None else "") + "."
              + (f" Time: {elapsed:.0f} s (the invocation that finished the run)." if elapsed is not None else "")]
    return "\n".join(lines)
