"""personahub as a service, the way a user runs it: a Prefect server (its own process, on PostgreSQL
from Debian's package where it is installed, on SQLite otherwise), the
deployments registered with `personahub deploy`, the nightly schedule's runs, an on-demand
synthesis triggered through the REST API with parameters, run by `personahub worker`, its results
read from S3 (moto). docker-compose.yml's topology, with processes instead of containers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from conftest import S3_BUCKET
from personahub.tasks.core.store import Store
from test_synthesis import responder_for, write_personas

pytestmark = pytest.mark.slow
PERSONAHUB = str(Path(sys.executable).with_name("personahub"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, deadline_s: float = 300.0, every: float = 1.0):
    """Poll `check` until it returns something truthy; the deadline only catches a hung service."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every)


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="module")
def prefect_database() -> Iterator[str | None]:
    """A PostgreSQL cluster of its own (initdb, pg_ctl) for the Prefect server, as docker-compose.yml
    runs it; None (the server's SQLite) where PostgreSQL is not installed. Yields the database URL."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        yield None
        return
    # initdb refuses to run as root: as root, the cluster belongs to Debian's postgres user, in a
    # directory that user can reach (pytest's tmp dirs are private to root).
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="personahub-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    data = root / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "120",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True, timeout=180)
    try:
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def postgres_count(url: str, sql: str, *args: object) -> int:
    """One count straight from the server's database (asyncpg), not through Prefect's API."""
    import asyncio

    import asyncpg

    async def query() -> int:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(query())


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, prefect_database) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free port with its own PREFECT_HOME (on PostgreSQL where it is
    installed); yields the clients' environment."""
    home = tmp_path_factory.mktemp("prefect-server") / "home"
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    if prefect_database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_database
    log = open(home.parent / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        assert proc.poll() is None, f"prefect server exited: {(home.parent / 'server.log').read_text()[-2000:]}"
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, "the Prefect server to answer", 180)
        yield {**{k: v for k, v in os.environ.items() if k != "PREFECT_HOME"}, "PREFECT_API_URL": api,
               "PREFECT_HOME": str(home.parent / "client-home"), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def start_worker(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, object]:
    """`personahub worker` in a session of its own, so stopping it stops its flow-run processes too."""
    log = open(log_path, "w")
    return subprocess.Popen([PERSONAHUB, "worker", "--pool", "personahub"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True), log


def stop_worker(worker: subprocess.Popen, log) -> None:
    """SIGTERM, then SIGKILL if a loaded machine keeps it waiting: a worker left behind would take
    the next test's runs."""
    import signal

    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            break
        try:
            worker.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    log.close()


def post(env: dict[str, str], path: str, body: dict) -> httpx.Response:
    response = httpx.post(env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response


def test_deploy_schedule_trigger_and_a_worker_run_from_s3(prefect_server, prefect_database, server, s3_server,
                                                          tmp_path: Path) -> None:
    env = prefect_server
    deployed = subprocess.run([PERSONAHUB, "deploy", "--timezone", "Europe/Berlin"], env=env, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    ids = {line.split(":")[0]: line.split()[1] for line in deployed.stdout.splitlines() if line.split(":")[0] in
           ("nightly-refresh", "build-hub", "synthesize")}
    assert set(ids) == {"nightly-refresh", "build-hub", "synthesize"}

    nightly = httpx.get(f"{env['PREFECT_API_URL']}/deployments/{ids['nightly-refresh']}", timeout=30).json()
    assert nightly["global_concurrency_limit"]["limit"] == 1 and nightly["work_pool_name"] == "personahub"
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    scheduled = wait_for(lambda: post(env, "/flow_runs/filter", {
        "deployments": {"id": {"any_": [ids["nightly-refresh"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }).json(), "the scheduler to create the nightly runs", 120)
    for run in scheduled:  # each at 02:00 Berlin time, whatever the UTC offset of its date
        start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00")).astimezone(ZoneInfo("Europe/Berlin"))
        assert (start.hour, start.minute) == (2, 0), run["expected_start_time"]
    if prefect_database:  # the runs are rows of the PostgreSQL database, not of a SQLite file
        assert postgres_count(prefect_database, "SELECT count(*) FROM flow_run WHERE deployment_id = $1",
                              uuid.UUID(ids["nightly-refresh"])) >= len(scheduled)

    form = httpx.get(f"{env['PREFECT_API_URL']}/deployments/{ids['synthesize']}", timeout=30).json()["parameter_openapi_schema"]
    fields = form["definitions"]["SynthesizeParams"]["properties"]
    assert "description" in fields["use_case"] and fields["mode"]["default"] == "few-shot"

    # An on-demand synthesis with parameters, as the UI's form or a script would send them.
    personas = write_personas(tmp_path / "personas.parquet", 5)
    server.responder = responder_for("instructions", set())
    store_url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    params = {"use_case": "instructions", "mode": "zero-shot", "personas": [str(personas)], "store": store_url,
              "llm_base_url": server.base_url, "diversity": {"enabled": False}, "selection": {"n": 5}}
    run = post(env, f"/deployments/{ids['synthesize']}/create_flow_run", {"parameters": {"params": params}}).json()

    worker_env = {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "PERSONAHUB_S3_ENDPOINT_URL": s3_server}
    worker, log = start_worker(worker_env, tmp_path / "worker.log")
    try:
        def finished():
            state = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run['id']}", timeout=30).json()["state"]
            return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        state = wait_for(finished, "the worker to run the synthesis", 600, every=2)
    finally:
        stop_worker(worker, log)
    assert state["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    assert server.calls == 5

    store = Store(store_url, s3_endpoint_url=s3_server)
    runs = store.subdirs("runs")
    assert len(runs) == 1 and runs[0].startswith("syn-instructions-")
    report = store.read_json(f"runs/{runs[0]}/report.json")
    assert report["validity"]["asked"] == 5 and report["validity"]["valid"] == 5
    rows = [r for f in report["dataset_files"] for r in store.read_parquet(f).to_pylist()]
    assert len(rows) == 5 and all(json.loads(r["output"])["prompt"] == r["text"] for r in rows)


def test_a_build_on_a_dask_cluster_equals_a_local_build(prefect_server, server, tmp_path: Path, monkeypatch) -> None:
    """The same flow with its shard tasks on a LocalCluster of 2 worker processes (prefect-dask),
    recorded on the Prefect server, publishes the hub a threads-only run publishes."""
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from personahub.flows.build_hub import BuildHubParams, build_hub
    from personahub.flows.stage_runner import task_runner
    from test_build_hub import ONE_HOP0, write_corpus

    corpus = write_corpus(tmp_path / "corpus", 8)
    common = dict(corpus=[str(corpus)], llm_base_url=server.base_url, embedding_base_url=server.base_url,
                  rows_per_bucket=2, llm_shard_docs=2, crawl_shard_bytes=300, **ONE_HOP0)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server["PREFECT_API_URL"])  # the workers' processes inherit it
    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        local = build_hub(BuildHubParams(**common, store=str(tmp_path / "local")))
        with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
            on_dask = build_hub.with_options(task_runner=task_runner(cluster.scheduler_address))
            distributed = on_dask(BuildHubParams(**common, store=str(tmp_path / "dask")))
            workers = list(cluster.workers)
    assert len(workers) == 2
    assert local["personas"] == distributed["personas"] == 8
    assert [s["counts"] for s in local["stages"]] == [s["counts"] for s in distributed["stages"]]
    assert max(s["shards"] for s in distributed["stages"]) > 1, "several shards, spread over the workers"

    def hub_rows(root: Path) -> list[tuple]:
        store = Store(str(root))
        manifest = store.read_json("hubs/default/v0001/manifest.json")
        return sorted((r["persona_id"], r["persona"], r["doc_id"], r["hop"]) for p in manifest["parts"]
                      for r in store.read_parquet(p["file"]).to_pylist())

    assert hub_rows(tmp_path / "local") == hub_rows(tmp_path / "dask")

    # The workers published their calls to the invocation's meter (what budgets and the CLI's
    # progress read): every Text-to-Persona call of the Dask run, one per document.
    dask_store = Store(str(tmp_path / "dask"))
    meter = f"runs/{distributed['run_id']}/meter"
    invocations = dask_store.subdirs(meter)
    assert len(invocations) == 1
    published = [dask_store.read_json(f) for f in dask_store.list(f"{meter}/{invocations[0]}")]
    assert sum(p["calls"] for p in published) == 8 and sum(p["cache_hits"] for p in published) == 0


def test_a_failed_deployment_run_retried_with_prefect_resumes(prefect_server, server, tmp_path: Path) -> None:
    """A synthesis stopped by its budget (FAILED), then `prefect flow-run retry` (the UI's Retry):
    the retry reuses the finished shards and cached answers and ends with every item, each call
    paid once."""
    import re

    env = prefect_server
    deployed = subprocess.run([PERSONAHUB, "deploy"], env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    deployment = next(line.split()[1] for line in deployed.stdout.splitlines() if line.startswith("synthesize:"))
    personas = write_personas(tmp_path / "personas.parquet", 12)

    def respond(body: dict):
        from fake_openai import FakeReply
        from test_synthesis import GOOD

        return FakeReply(content=json.dumps(GOOD["instructions"]), prompt_tokens=60, completion_tokens=40)

    server.responder = respond
    store = tmp_path / "store"
    # 100 tokens a call: the first invocation stops after 7 or 8 calls, the retry's 650 cover the rest.
    params = {"use_case": "instructions", "mode": "zero-shot", "personas": [str(personas)], "store": str(store),
              "llm_base_url": server.base_url, "diversity": {"enabled": False}, "selection": {"n": 12},
              "shard_rows": 2, "llm_shard_parallelism": 1, "budget_tokens": 650}
    run = post(env, f"/deployments/{deployment}/create_flow_run", {"parameters": {"params": params}}).json()

    def state_of(run_id: str) -> dict:
        return httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=30).json()["state"]

    worker, log = start_worker(env, tmp_path / "worker.log")
    try:
        first = wait_for(lambda: (s := state_of(run["id"]))["type"] in ("COMPLETED", "FAILED", "CRASHED") and s,
                         "the budget-stopped run", 600, every=2)
        assert first["type"] == "FAILED", first
        stopped_at = server.calls
        assert 7 <= stopped_at < 12
        retried = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "retry", run["id"]], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert retried.returncode == 0, retried.stdout + retried.stderr

        def finished():
            s = state_of(run["id"])
            return s if s["type"] in ("COMPLETED", "FAILED", "CRASHED") and s["id"] != first["id"] else None

        second = wait_for(finished, "the retried run", 600, every=2)
    finally:
        stop_worker(worker, log)
    assert second["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    assert server.calls == 12, "each call paid once across the failed run and its retry"
    report = Store(str(store)).read_json(f"runs/{Store(str(store)).subdirs('runs')[0]}/report.json")
    assert report["validity"]["valid"] == 12 and report["counts"]["items"] == 12
    assert re.fullmatch(r"syn-instructions-\w+", Store(str(store)).subdirs("runs")[0])
