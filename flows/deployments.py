"""Register deployments/prefect.yaml on a Prefect server: the process work pool, then each deployment.

The YAML is the one description of the deployments (Prefect's own `prefect deploy --all
--prefect-file deployments/prefect.yaml` reads the same file); `personahub deploy` applies it
through Prefect's Python API with a user's overrides (schedule, timezone, default parameters),
so a fresh install needs no repository checkout. Entrypoints are module paths: a worker runs the
installed package, no code is pulled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

POOL_TYPE = "process"


@dataclass
class DeploymentSpec:
    """One entry of prefect.yaml's `deployments`."""

    name: str
    entrypoint: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    work_pool: str = "personahub"
    work_queue: str = "default"

    @classmethod
    def from_yaml(cls, entry: dict[str, Any]) -> "DeploymentSpec":
        pool = entry.get("work_pool") or {}
        return cls(name=entry["name"], entrypoint=entry["entrypoint"], description=entry.get("description") or "",
                   tags=list(entry.get("tags") or []), schedules=list(entry.get("schedules") or []),
                   concurrency_limit=entry.get("concurrency_limit"), parameters=dict(entry.get("parameters") or {}),
                   work_pool=pool.get("name", "personahub"), work_queue=pool.get("work_queue_name", "default"))


def shipped_file() -> Path:
    return Path(str(resources.files("personahub.deployments").joinpath("prefect.yaml")))


def load_specs(path: str | Path | None = None) -> list[DeploymentSpec]:
    with open(path or shipped_file(), encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    return [DeploymentSpec.from_yaml(entry) for entry in document.get("deployments") or []]


def with_overrides(specs: list[DeploymentSpec], *, pool: str | None = None, cron: str | None = None,
                   timezone: str | None = None, params: dict[str, Any] | None = None) -> list[DeploymentSpec]:
    """The specs with a user's work pool, nightly schedule (cron, timezone: the scheduled deployments')
    and default flow parameters (fields of each flow's model, e.g. store or corpus; a field a flow's
    model lacks is left out for that flow)."""
    from personahub.flows.build_hub import BuildHubParams
    from personahub.flows.nightly_refresh import RefreshParams
    from personahub.flows.synthesize import SynthesizeParams

    models = {"nightly-refresh": RefreshParams, "build-hub": BuildHubParams, "synthesize": SynthesizeParams}
    out = []
    for spec in specs:
        schedules = [{**s, **({"cron": cron} if cron else {}), **({"timezone": timezone} if timezone else {})}
                     for s in spec.schedules]
        fields = models[spec.name].model_fields if spec.name in models else {}
        extra = {k: v for k, v in (params or {}).items() if k in fields}
        parameters = {**spec.parameters}
        if extra:
            parameters["params"] = {**parameters.get("params", {}), **extra}
        out.append(DeploymentSpec(**{**spec.__dict__, "schedules": schedules, "parameters": parameters,
                                     "work_pool": pool or spec.work_pool}))
    return out


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool unless it exists; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def ensure() -> bool:
        async with get_client() as client:
            try:
                await client.read_work_pool(name)
                return False
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE))
                return True

    return run_coro_as_sync(ensure())


def apply(specs: list[DeploymentSpec]) -> dict[str, str]:
    """Create or update every deployment on the server PREFECT_API_URL names; name → deployment id."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    ids = {}
    for pool in sorted({s.work_pool for s in specs}):
        ensure_work_pool(pool)
    for spec in specs:
        flow = load_flow_from_entrypoint(spec.entrypoint)
        deployment = flow.to_deployment(
            name=spec.name, description=spec.description, tags=spec.tags, parameters=spec.parameters,
            schedules=[Cron(s["cron"], timezone=s.get("timezone")) for s in spec.schedules],
            concurrency_limit=spec.concurrency_limit, work_queue_name=spec.work_queue,
            entrypoint_type=EntrypointType.MODULE_PATH)
        ids[spec.name] = str(deployment.apply(work_pool_name=spec.work_pool))
    return ids
