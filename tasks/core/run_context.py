"""What a task needs to find its run: small, picklable, and free of secrets.

Tasks receive a RunContext instead of live objects so that the same task runs in a thread here or in
a Dask worker elsewhere; each process opens its own Store from it. API keys never travel in it: a
worker reads them from its own environment through Settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from personahub.tasks.core.checkpoint import StageCheckpoint
from personahub.tasks.core.store import Store


@lru_cache(maxsize=8)
def _open_store(url: str, s3_endpoint_url: str | None) -> Store:
    return Store(url, s3_endpoint_url=s3_endpoint_url)


@dataclass(frozen=True)
class RunContext:
    store_url: str
    s3_endpoint_url: str | None
    run_id: str

    @property
    def store(self) -> Store:
        return _open_store(self.store_url, self.s3_endpoint_url)

    def checkpoint(self, stage: str, params: Mapping[str, Any]) -> StageCheckpoint:
        return StageCheckpoint(self.store, self.run_id, stage, params)
