"""The build-hub flow end to end on the fake OpenAI-compatible server: counts, provenance, resume."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fake_openai import FakeReply, default_responder
from personahub.flows.build_hub import BuildHubParams, build_hub
from personahub.flows.persona_graph import GraphParams

ONE_HOP0 = {"relations": ["read"], "graph": GraphParams(hops=0)}  # Text-to-Persona only, one call a document
from personahub.tasks.core.store import Store

REPO = Path(__file__).resolve().parents[1]


def write_corpus(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(
            f"Field notes {i}: the harbour crane operator logged {i * 7} container moves before the storm "
            f"and the night shift supervisor asked for spare hydraulic seals number {i}."
        )
    return root


def doc_marker(body: dict) -> str | None:
    """Which test document a request is about ("Field notes N")."""
    text = body["messages"][-1]["content"]
    start = text.find("Field notes ")
    return text[start : text.find(":", start)] if start >= 0 else None


def test_build_counts_provenance_and_rerun_costs_nothing(server, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 6)
    params = BuildHubParams(corpus=[str(corpus)], store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url, rows_per_bucket=2,
                            **ONE_HOP0)

    summary = build_hub(params)

    assert server.calls == 6
    assert summary["version"] == "v0001" and summary["personas"] == 6
    for stage in summary["stages"]:
        c = stage["counts"]
        assert c["rows_in"] == c["rows_out"] + c["filtered"] + c["quarantined"], stage
    assert [s["stage"] for s in summary["stages"]] == [
        "crawl", "crawl_dedup", "text_to_persona", "minhash_sketch", "minhash_pairs", "minhash_select", "minhash",
        "embed", "embedding_select", "embedding_dedup"]
    assert summary["stages"][0]["shards"] < 6, "small files share a crawl shard"
    assert summary["stages"][2]["shards"] >= 2, "documents are spread over several LLM shards"
    embed_calls = next(s for s in summary["stages"] if s["stage"] == "embed")["usage"]["calls"]
    assert embed_calls >= 1, "embeddings go through the gateway and are counted"
    assert summary["llm_this_run"]["calls"] == 6 + embed_calls and summary["llm_this_run"]["completion_tokens"] > 0
    t2p_usage = summary["stages"][2]["usage"]  # token accounting per stage
    embed_tokens = next(s for s in summary["stages"] if s["stage"] == "embed")["usage"]["prompt_tokens"]
    assert t2p_usage["calls"] == 6 and t2p_usage["prompt_tokens"] + embed_tokens == summary["llm_this_run"]["prompt_tokens"]
    assert summary["stages"][0]["usage"] == {}, "crawl calls no LLM"

    store = Store(str(tmp_path / "store"))
    manifest = store.read_json("hubs/default/v0001/manifest.json")
    rows = [r for part in manifest["parts"] for r in store.read_parquet(part["file"]).to_pylist()]
    assert len(rows) == 6
    for row in rows:
        assert row["doc_id"] and row["source"].endswith(".txt") and row["relation"] == "read"
        assert row["model"] == "fake-model" and row["template"].startswith("text_to_persona@")
        assert json.loads(row["params"])["max_tokens"] > 0
    assert store.read_json("hubs/default/latest.json")["version"] == "v0001"

    again = build_hub(params)
    assert server.calls == 6, "a rerun must not call the LLM again"
    assert again["llm_this_run"]["calls"] == 0
    assert all(s["skipped"] for s in again["stages"])
    assert again["stages"][2]["usage"] == t2p_usage, "a skipped stage still reports what it cost"
    assert again["version"] == "v0001", "a finished run is not published twice"


def test_bad_responses_are_quarantined_and_duplicates_recorded(server, tmp_path):
    same = json.dumps({"persona": "A harbour logistics planner who schedules crane shifts around storms."})

    def responder(body: dict):
        marker = doc_marker(body)
        if marker == "Field notes 0":
            return "I cannot help with that."
        if marker == "Field notes 1":
            return json.dumps({"name": "Bob"})
        if marker == "Field notes 2":
            return FakeReply.error(400, "context length exceeded")
        return same  # documents 3..5 all give the same persona

    server.reset(responder)
    corpus = write_corpus(tmp_path / "corpus", 6)
    store_dir = tmp_path / "store"
    summary = build_hub(BuildHubParams(corpus=[str(corpus)], store=str(store_dir), llm_base_url=server.base_url, embedding_base_url=server.base_url, **ONE_HOP0))

    t2p = summary["stages"][2]
    assert t2p["counts"] == {"rows_in": 6, "rows_out": 3, "filtered": 0, "quarantined": 3}
    assert t2p["reasons"] == {"llm_error": 1, "missing_persona": 1, "unparseable": 1}
    dedup = next(s for s in summary["stages"] if s["stage"] == "minhash")
    assert dedup["counts"] == {"rows_in": 3, "rows_out": 1, "filtered": 2, "quarantined": 0}
    assert summary["personas"] == 1

    store = Store(str(store_dir))
    run = f"runs/{summary['run_id']}"
    quarantine = [r for f in store.list(f"{run}/text_to_persona/quarantine") for r in store.read_parquet(f).to_pylist()]
    assert sorted(r["reason"].split(":")[0] for r in quarantine) == ["llm_error", "missing_persona", "unparseable"]
    assert any("I cannot help" in (r["response"] or "") for r in quarantine)
    removed = [r for f in store.list(f"{run}/minhash_select/removed") for r in store.read_parquet(f).to_pylist()]
    assert len(removed) == 2 and len({r["duplicate_of"] for r in removed}) == 1
    assert {r["similarity"] for r in removed} == {1.0}


def test_cli_against_fake_server_and_s3(server, s3_server, tmp_path, monkeypatch):
    """`personahub build --llm-base-url … --store s3://…` (the issue's configured path)."""
    from conftest import S3_BUCKET
    from personahub.cli import app

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    corpus = write_corpus(tmp_path / "corpus", 4)
    store_url = f"s3://{S3_BUCKET}/cli-{os.getpid()}-{time.monotonic_ns()}"
    args = ["build", str(corpus), "--llm-base-url", server.base_url, "--embedding-base-url", server.base_url, "--store", store_url, "--rows-per-bucket", "2", "--relation", "read", "--hops", "0"]

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 personas" in result.output and store_url in result.output
    paid = int(re.search(r"LLM calls this run: (\d+) new", result.output).group(1))
    assert paid >= 5, "4 Text-to-Persona calls and the embedding calls"

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "0 new" in again.output and "Nothing was paid for" in again.output
    assert server.calls == 4

    shown = CliRunner().invoke(app, ["hub", "show", "--store", store_url, "-n", "2"])
    assert shown.exit_code == 0 and "4 personas" in shown.output
    assert Store(store_url, s3_endpoint_url=s3_server).exists("hubs/default/v0001/manifest.json")


def cached_chat_keys(store_dir: Path) -> set[str]:
    """The chat answers in a store's LLM cache, read from its Parquet segments as they stand (a
    segment being merged away mid-read is skipped: its entries are in the merged one)."""
    keys: set[str] = set()
    for path in store_dir.glob("cache/llm/**/*.parquet"):
        try:
            table = pq.read_table(path, columns=["key", "kind"])
        except (OSError, ValueError):
            continue
        keys.update(k for k, kind in zip(table["key"].to_pylist(), table["kind"].to_pylist()) if kind == "chat")
    return keys


@pytest.mark.slow
def test_killed_build_resumes_without_redoing_finished_shards(server, tmp_path):
    """SIGKILL the CLI mid-way through Text-to-Persona; the rerun keeps every finished shard and
    asks again for no answer the killed run received: only the calls never answered are made."""
    gate = threading.Event()  # once set, requests are held (asked, never answered before the kill)
    answered: list[str] = []
    held: list[str] = []
    lock = threading.Lock()

    def ident(body: dict) -> str:
        return json.dumps(body["messages"], sort_keys=True)

    def gated(body: dict):
        reply = default_responder(body)
        with lock:
            if gate.is_set():
                held.append(ident(body))
                reply.delay = 20.0
            else:
                answered.append(ident(body))
                reply.delay = 0.4
        return reply

    server.reset(gated)
    corpus = write_corpus(tmp_path / "corpus", 12)
    store_dir = tmp_path / "store"
    cmd = [sys.executable, "-m", "personahub.cli", "build", str(corpus), "--store", str(store_dir),
           "--llm-base-url", server.base_url, "--embedding-base-url", server.base_url, "--rows-per-bucket", "2", "--relation", "read", "--hops", "0"]
    # A segment per answer: every answer received before the kill is in the store (the loss bound
    # of larger segments is tested in tests/test_llm_cache.py).
    env = {**os.environ, "PERSONAHUB_LLM_MAX_CONCURRENCY": "2", "PERSONAHUB_LLM_CACHE_FLUSH_EVERY": "1"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done_dir = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(store_dir.glob("runs/*/text_to_persona/_done/*.json"))
        if found:
            done_dir = found[0].parent
            break
        assert proc.poll() is None, "the build ended before it could be killed"
        time.sleep(0.05)
    assert done_dir is not None, "no Text-to-Persona shard finished in time"
    gate.set()
    # Kill once a request is held and every answer sent before the gate is in the cache: what the
    # rerun may not ask again is then exactly `answered`.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            n_answered, n_held = len(answered), len(held)
        if n_held and server.in_flight == n_held and len(cached_chat_keys(store_dir)) >= n_answered:
            break
        assert proc.poll() is None, "the build ended before it could be killed"
        time.sleep(0.05)
    else:
        raise AssertionError("no request was held, or answers were not cached, in time")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with lock:
        answered_before, held_before = list(answered), list(held)
    assert len(cached_chat_keys(store_dir)) == len(answered_before) == len(set(answered_before))

    before = {p.name: p.read_text() for p in done_dir.glob("*.json")}
    assert len(before) > 0, "the kill must land mid-stage"
    assert not (done_dir.parent / "manifest.json").exists()
    calls_before = server.calls
    gate.clear()

    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "12 personas" in finished.stdout

    after = {p.name: p.read_text() for p in done_dir.glob("*.json")}
    manifest = json.loads((done_dir.parent / "manifest.json").read_text())
    assert len(after) == len(manifest["shards"]) > len(before)
    for name, text in before.items():
        assert after[name] == text, f"finished shard {name} was redone"
    asked_again = [ident(body) for body in server.requests[calls_before:]]
    assert not set(asked_again) & set(answered_before), "an answer received before the kill was paid for again"
    assert sorted(asked_again) == sorted(set(asked_again)), "the rerun asked one thing twice"
    assert len(asked_again) == 12 - len(answered_before), "every document not answered is asked once"
    assert set(held_before) <= set(asked_again), "the calls cut off by the kill are made again"

    # The resumed hub is the hub an uninterrupted build makes (the killed run's lock was taken over).
    clean_dir = tmp_path / "clean-store"
    uninterrupted = subprocess.run([*cmd[:cmd.index("--store") + 1], str(clean_dir), *cmd[cmd.index("--store") + 2:]],
                                   env=env, capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stdout + uninterrupted.stderr

    def hub_rows(root: Path) -> list[tuple]:
        store = Store(str(root))
        manifest = store.read_json("hubs/default/v0001/manifest.json")
        return sorted((r["persona_id"], r["persona"], r["doc_id"]) for p in manifest["parts"]
                      for r in store.read_parquet(p["file"]).to_pylist())

    assert hub_rows(store_dir) == hub_rows(clean_dir) and len(hub_rows(store_dir)) == 12


@pytest.mark.slow
def test_same_flow_against_a_prefect_server(server, tmp_path):
    """With PREFECT_API_URL pointing at a server (here a temporary one), nothing changes but where
    the runs are recorded: the flow run and its summary artifact are on that server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    corpus = write_corpus(tmp_path / "corpus", 3)
    with prefect_test_harness(server_startup_timeout=120):
        assert PREFECT_API_URL.value(), "the harness runs a real API server"
        state = build_hub(BuildHubParams(corpus=[str(corpus)], store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url,
                                         **ONE_HOP0),
                          return_state=True)
        assert state.is_completed()
        assert state.result()["personas"] == 3

        async def recorded():
            async with get_client() as client:
                run = await client.read_flow_run(state.state_details.flow_run_id)
                artifacts = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["build-hub-summary"])))
                return run, artifacts

        from prefect.utilities.asyncutils import run_coro_as_sync

        run, artifacts = run_coro_as_sync(recorded())
    assert run.state.is_completed() and run.parameters["params"]["llm_base_url"] == server.base_url
    assert any("3 personas" in (a.data or "") for a in artifacts)


def test_an_edited_prompt_reruns_exactly_the_stage_that_uses_it(server, tmp_path, monkeypatch):
    """Persona-to-Persona's template edited (in a prompts folder of the user's): a rerun of the same
    build makes new calls for that stage only; Text-to-Persona's cached answers all stand."""
    corpus = write_corpus(tmp_path / "corpus", 4)
    params = BuildHubParams(corpus=[str(corpus)], store=str(tmp_path / "store"), llm_base_url=server.base_url,
                            embedding_base_url=server.base_url, relations=["read"],
                            graph=GraphParams(hops=1, k=2, max_new_per_hop=3))
    first = build_hub(params)
    by_stage = {s["stage"]: s for s in first["stages"]}
    assert by_stage["persona_to_persona_h1"]["counts"]["rows_in"] > 0

    shipped = REPO / "prompts" / "persona_to_persona" / "few-shot.yaml"
    mine = tmp_path / "my-prompts" / "persona_to_persona"
    mine.mkdir(parents=True)
    text = shipped.read_text()
    assert "You describe people and the people around them." in text
    (mine / "few-shot.yaml").write_text(text.replace("You describe people and the people around them.",
                                                     "You describe people and everyone around them."))
    monkeypatch.setenv("PERSONAHUB_PROMPTS_DIR", str(tmp_path / "my-prompts"))
    server.requests.clear()
    before = server.calls

    again = build_hub(params)
    stages = {s["stage"]: s for s in again["stages"]}
    assert again["run_id"] == first["run_id"]
    assert stages["text_to_persona"]["skipped"] and stages["p2p_frontier_h1"]["skipped"]
    assert not stages["persona_to_persona_h1"]["skipped"]
    frontier = by_stage["p2p_frontier_h1"]["counts"]["rows_out"]
    assert 0 < frontier == server.calls - before == len(server.requests), "one new call per expanded persona"
    assert all("everyone around them" in r["messages"][0]["content"] for r in server.requests)
    assert again["version"] == "v0002", "new personas: a new version"


def test_a_build_dry_run_counts_the_calls_a_build_then_makes(server, tmp_path):
    """--dry-run crawls and makes no LLM call; its Text-to-Persona figures are what the next build
    sends (counted at the server), the hops are bounds until their parents are checkpointed, and
    after a build plus two new documents only those documents' requests are new."""
    from personahub.cli import app

    corpus = write_corpus(tmp_path / "corpus", 6)
    store = str(tmp_path / "store")
    args = ["build", str(corpus), "--llm-base-url", server.base_url, "--embedding-base-url", server.base_url,
            "--store", store, "--rows-per-bucket", "2", "--relation", "read", "--relation", "like",
            "--hops", "2", "--k", "3", "--max-new-per-hop", "4"]
    params = BuildHubParams(corpus=[str(corpus)], store=store, llm_base_url=server.base_url,
                            embedding_base_url=server.base_url, rows_per_bucket=2, relations=["read", "like"],
                            graph=GraphParams(hops=2, k=3, max_new_per_hop=4))

    shown = CliRunner().invoke(app, [*args, "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert server.calls == 0 and "no LLM call made" in shown.output
    assert re.search(r"text_to_persona\s+12\s+0\s", shown.output), shown.output  # 6 documents x 2 relations
    dry = build_hub(params.model_copy(update={"dry_run": True}))
    assert server.calls == 0 and dry["documents"] == 6
    t2p, hop1, hop2 = dry["estimates"]
    assert (t2p["stage"], t2p["calls"], t2p["cached"], t2p["exact"]) == ("text_to_persona", 12, 0, True)
    assert t2p["completion_tokens_max"] == 12 * 128  # prompts/text_to_persona/few-shot.yaml's max_tokens
    # nothing checkpointed yet: each hop expands at most max_new_per_hop personas, one call each
    assert [(e["calls"], e["exact"], e["prompt_tokens"]) for e in (hop1, hop2)] == [(4, False, None), (4, False, None)]
    assert dry["total"]["calls_at_most"] == 20 and dry["total"]["exact"] is False

    def t2p_requests() -> list[dict]:
        return [b for b in server.requests if doc_marker(b)]

    built = build_hub(params)
    sent = t2p_requests()
    assert len(sent) == t2p["calls"]
    assert sum(len(m["content"]) for b in sent for m in b["messages"]) // 4 == t2p["prompt_tokens"]
    p2p_sent = server.calls - len(sent)
    assert 0 < p2p_sent <= hop1["calls"] + hop2["calls"]
    assert built["personas"] > 0

    done = build_hub(params.model_copy(update={"dry_run": True}))
    assert [(e["calls"], e["exact"]) for e in done["estimates"]] == [(0, True)] * 3, "every stage checkpointed"

    (corpus / "doc90.txt").write_text("Field notes 90: the lighthouse keeper counted the gulls and repainted the lamp room.")
    (corpus / "doc91.txt").write_text("Field notes 91: the ferry mechanic rebuilt a diesel injector before the morning crossing.")
    calls_before = server.calls
    grown = build_hub(params.model_copy(update={"dry_run": True}))
    assert server.calls == calls_before and grown["documents"] == 8
    t2p = grown["estimates"][0]
    assert (t2p["calls"], t2p["cached"], t2p["exact"]) == (4, 12, True), "the 6 old documents' answers are cached"
    server.requests.clear()
    build_hub(params)
    assert len(t2p_requests()) == 4 and {doc_marker(b) for b in t2p_requests()} == {"Field notes 90", "Field notes 91"}


def test_a_build_report_counts_dedup_tokens_and_cost(server, tmp_path, monkeypatch):
    """report.json and `personahub report RUN`: the duplicates the corpus was made with, the tokens the
    server reported, their cost by the price table; a rerun pays nothing and the totals stand."""
    from personahub.cli import app

    monkeypatch.setenv("PERSONAHUB_LLM_PRICES", json.dumps({"fake-model": {"prompt": 1.0, "completion": 2.0}}))
    same = json.dumps({"persona": "A harbour logistics planner who schedules crane shifts around storms."})

    def responder(body: dict):
        marker = doc_marker(body)
        if marker in ("Field notes 0", "Field notes 1"):  # two personas of their own, three alike
            reply = default_responder(body)
            return FakeReply(content=reply.content, prompt_tokens=100, completion_tokens=10)
        return FakeReply(content=same, prompt_tokens=100, completion_tokens=10)

    server.reset(responder)
    corpus = write_corpus(tmp_path / "corpus", 5)
    (corpus / "copy.txt").write_text((corpus / "doc00.txt").read_text())  # an exact duplicate document
    store = str(tmp_path / "store")
    params = BuildHubParams(corpus=[str(corpus)], store=store, llm_base_url=server.base_url,
                            embedding_base_url=server.base_url, **ONE_HOP0)
    summary = build_hub(params)
    assert server.calls == 5 and summary["personas"] == 3

    report = Store(store).read_json(f"runs/{summary['run_id']}/report.json")
    assert report["kind"] == "build" and report["version"] == "v0001" and report["personas"] == 3
    crawl, minhash, embedding = report["dedup"]
    assert crawl == {"stage": "crawl_dedup", "compares": "documents, exact text", "in": 6, "kept": 5, "removed": 1,
                     "removed_ratio": round(1 / 6, 4)}
    assert (minhash["stage"], minhash["in"], minhash["removed"], embedding["stage"]) == ("minhash", 5, 2, "embedding_dedup")
    assert all(s["reconciles"] for s in report["stages"])
    # The fake counts an embedding's tokens as its words. The dimension probe (one embedding, cached
    # once per model) is made before the embed stage and is not in its ledger.
    embed_tokens = sum(len(text.split()) for body in server.embedding_requests for text in body["input"]
                       if text != "dimension probe")
    prompt, completion = 5 * 100 + embed_tokens, 5 * 10
    assert (report["llm_this_run"]["prompt_tokens"], report["llm_this_run"]["completion_tokens"]) == (prompt, completion)
    assert report["cost_usd_this_run"] == report["cost_usd_all_runs"] == round((prompt * 1.0 + completion * 2.0) / 1e6, 6)
    assert report["filters"]["minhash"]["threshold"] == 0.9 and report["elapsed_s"] > 0

    build_hub(params)  # finished: every stage skipped, nothing paid, the totals unchanged
    again = Store(store).read_json(f"runs/{summary['run_id']}/report.json")
    assert again["llm_this_run"]["calls"] == 0 and again["cost_usd_this_run"] == 0
    assert again["llm_all_runs"] == report["llm_all_runs"] and again["cost_usd_all_runs"] == report["cost_usd_all_runs"]

    shown = CliRunner().invoke(app, ["report", summary["run_id"], "--store", store])
    assert shown.exit_code == 0, shown.output
    assert "crawl_dedup (documents, exact text): 1 of 6 removed (16.7%)" in shown.output
    assert "minhash (personas, MinHash Jaccard): 2 of 5 removed (40.0%)" in shown.output
    assert "| text_to_persona | 1 (0) | 5 | 5 | 0 | 0 | - | yes | 5 | 0 |" in shown.output
    refused = CliRunner().invoke(app, ["export", summary["run_id"], "--store", store, "--format", "jsonl"])
    assert refused.exit_code != 0 and "is a build run" in refused.output
