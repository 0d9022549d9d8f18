"""A fake OpenAI-compatible server for tests: real HTTP on 127.0.0.1, a free port, no model.

    with FakeOpenAIServer() as server:
        gateway = LLMGateway(base_url=server.base_url, model=None, store=store)
        ...
        assert server.calls == 3

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/embeddings.

By default every chat request is answered with a JSON object built deterministically from a hash of
the request's messages: {"persona": "A 34-year-old marine biologist from ... who ..."}; when the
request carries a response_format json_schema, the object follows that schema's properties instead
(strings get persona-like sentences, arrays get three of them). Tests change behaviour with
`responder` (called with the request body, returns a FakeReply or a plain string) or queue one-off
replies with `enqueue(...)`, consumed first, in order.

Embeddings are a hashed bag of words and word pairs (`fake_embedding`, 384-d by default like
all-MiniLM-L6-v2, unit length): identical texts give identical vectors, texts sharing words are
close. Failures and odd answers are scripted the same way as for chat, on their own queue:
`enqueue_embeddings(FakeReply.error(429, retry_after=0), ...)` or `embedding_responder` (a
FakeReply whose `vectors` is set answers with those vectors as they are, e.g. unnormalised ones);
`embedding_encoding="float"` plays a server that ignores the request's encoding_format.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

FAKE_MODEL = "fake-model"


@dataclass
class FakeReply:
    """One answer: content (200), or an HTTP error with a message and headers; after `delay` s."""

    content: str | None = None
    status: int = 200
    message: str | None = None  # error message for status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int | None = None  # None = count words
    completion_tokens: int | None = None
    vectors: list[list[float]] | None = None  # embeddings only: answer these instead of fake_embedding's

    @classmethod
    def text(cls, content: str, **kw: Any) -> "FakeReply":
        return cls(content=content, **kw)

    @classmethod
    def error(cls, status: int, message: str = "error", *, retry_after: float | None = None, **kw: Any) -> "FakeReply":
        headers = dict(kw.pop("headers", {}) or {})
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return cls(status=status, message=message, headers=headers, **kw)


Responder = Callable[[dict], Union[FakeReply, str, None]]
EmbeddingResponder = Callable[[dict], Union[FakeReply, None]]  # None = the default vectors

# --- deterministic personas ---------------------------------------------------------------------

_ROLES = [
    "marine biologist", "primary school teacher", "retired railway engineer", "pediatric nurse",
    "freelance translator", "organic farmer", "municipal urban planner", "jazz bassist",
    "emergency room physician", "high-school chemistry teacher", "software security auditor",
    "small-town librarian", "wildlife photographer", "labour union organiser", "pastry chef",
    "structural engineer", "court interpreter", "hospice chaplain", "beekeeper", "data journalist",
    "museum conservator", "long-haul truck driver", "climate policy analyst", "sign language tutor",
]
_PLACES = [
    "coastal Portugal", "rural Iowa", "Nairobi", "a suburb of Osaka", "northern Scotland",
    "Buenos Aires", "the Canadian prairies", "Kraków", "a fishing village in Norway", "Chennai",
    "Marseille", "the Australian outback", "Seoul", "Vermont", "Lagos", "Tbilisi", "Quito",
    "Reykjavík", "Montreal", "a mountain town in Colorado",
]
_ACTIVITIES = [
    "spends weekends restoring old sailboats", "keeps a detailed journal of local bird migrations",
    "volunteers at a community legal clinic", "writes open-source tools for accessibility",
    "teaches evening classes to adult learners", "collects oral histories from elderly neighbours",
    "maps abandoned industrial sites", "coaches a youth football team", "brews experimental cider",
    "tracks regional housing prices in spreadsheets", "reviews obscure science-fiction novels",
    "builds furniture from reclaimed wood", "organises neighbourhood repair cafés",
    "studies medieval manuscripts as a hobby", "grows heirloom tomatoes on a rooftop",
    "runs ultramarathons through desert trails",
]
_CARES = [
    "cares deeply about evidence-based public health", "worries about the cost of childcare",
    "wants clear explanations of new regulations", "distrusts marketing jargon",
    "values practical, step-by-step guidance", "follows debates on data privacy closely",
    "is passionate about preserving minority languages", "looks for ways to cut energy bills",
    "enjoys rigorous statistical arguments", "advocates for safer cycling infrastructure",
    "is curious about the history of everyday objects", "mentors first-generation students",
]


def _digest(*parts: Any) -> bytes:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()


def persona_sentence(seed: bytes) -> str:
    """A 16+ word third-person persona, chosen by the bytes of `seed` (deterministic)."""
    age = 22 + seed[0] % 50
    return (
        f"A {age}-year-old {_ROLES[seed[1] % len(_ROLES)]} from {_PLACES[seed[2] % len(_PLACES)]} who "
        f"{_ACTIVITIES[seed[3] % len(_ACTIVITIES)]} and {_CARES[seed[4] % len(_CARES)]}."
    )


def _fill_schema(schema: Any, seed: bytes, name: str = "persona", depth: int = 0) -> Any:
    """A value matching the (simple) JSON schema, deterministic from seed."""
    if not isinstance(schema, dict) or depth > 6:
        return persona_sentence(seed)
    if "enum" in schema and schema["enum"]:
        return schema["enum"][seed[5] % len(schema["enum"])]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        if not props:
            return {"persona": persona_sentence(seed)}
        return {key: _fill_schema(sub, _digest(seed.hex(), key), key, depth + 1) for key, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 3) or 0), 1)
        count = min(count, int(schema.get("maxItems", count) or count))
        return [_fill_schema(schema.get("items"), _digest(seed.hex(), name, i), name, depth + 1) for i in range(count)]
    if kind == "integer":
        low, high = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return low + seed[6] % max(high - low + 1, 1)
    if kind == "number":
        return round(float(schema.get("minimum", 0)) + seed[6] / 255, 3)
    if kind == "boolean":
        return bool(seed[7] % 2)
    return persona_sentence(seed)


def default_responder(body: dict) -> FakeReply:
    """{"persona": "..."} (or an object following the request's json_schema), from a prompt hash."""
    seed = _digest(body.get("messages"), body.get("seed"), body.get("temperature"))
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema") if response_format.get("type") == "json_schema" else None
    value = _fill_schema(schema, seed) if schema else {"persona": persona_sentence(seed)}
    return FakeReply(content=json.dumps(value))


# --- embeddings ---------------------------------------------------------------------------------


FAKE_EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's, so the fake and the embedded model agree on shapes


def fake_embedding(text: str, dim: int = FAKE_EMBEDDING_DIM) -> list[float]:
    """A unit vector from hashed words and word pairs: identical texts give identical vectors and
    texts sharing words are close, which is what near-duplicate tests need."""
    words = re.findall(r"\w+", text.lower())
    features = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    vec = [0.0] * dim
    for feat in features or ["<empty>"]:
        h = hashlib.blake2b(feat.encode(), digest_size=8).digest()
        vec[int.from_bytes(h[:4], "little") % dim] += 1.0 if h[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _words(text: str) -> int:
    return len(text.split())


# --- the server ---------------------------------------------------------------------------------


class FakeOpenAIServer:
    """The fake endpoint on a background uvicorn thread. Use as a context manager (or start/stop)."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        supports_json_schema: bool = True,
        embedding_dim: int = FAKE_EMBEDDING_DIM,
        models: tuple[str, ...] = (FAKE_MODEL,),
        api_key: str | None = None,  # when set, requests without "Bearer <api_key>" get 401
    ):
        self.responder: Responder = responder or default_responder
        self.supports_json_schema = supports_json_schema
        self.embedding_dim = self._default_embedding_dim = embedding_dim
        self.models = models
        self.api_key = api_key
        self.requests: list[dict] = []  # chat request bodies, in arrival order
        self.embedding_requests: list[dict] = []
        self.calls = 0  # chat requests received (errors included)
        self.embedding_calls = 0  # embedding requests received (errors included)
        self.embedding_responder: EmbeddingResponder | None = None
        self.embedding_encoding: str | None = None  # "float": ignore the request's encoding_format
        self.in_flight = 0  # requests being answered, chat and embeddings together
        self.max_in_flight = 0
        self._queue: deque[FakeReply | str] = deque()
        self._embedding_queue: deque[FakeReply] = deque()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 10.0) -> "FakeOpenAIServer":
        # Bind first, so the port is known before uvicorn runs and nothing else can take it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), log_level="warning", lifespan="off", access_log=False,
            timeout_graceful_shutdown=1, timeout_keep_alive=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="fake-openai")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # --- scripting ------------------------------------------------------------------------------
    def reset(self, responder: Responder | None = None, *, supports_json_schema: bool = True, api_key: str | None = None) -> "FakeOpenAIServer":
        """Forget requests and queued replies and restore the defaults, so one server (a slow thing
        to stop: ~0.2 s) can serve many tests. First waits (up to 5 s) for requests still being
        answered, e.g. delayed ones a client gave up on, so they do not count in the next test."""
        deadline = time.monotonic() + 5.0
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self.responder = responder or default_responder
            self.supports_json_schema = supports_json_schema
            self.api_key = api_key
            self.requests.clear()
            self.embedding_requests.clear()
            self.calls = 0
            self.embedding_calls = 0
            self.embedding_responder = None
            self.embedding_encoding = None
            self.embedding_dim = self._default_embedding_dim
            self.max_in_flight = self.in_flight
            self._queue.clear()
            self._embedding_queue.clear()
        return self

    def enqueue(self, *replies: FakeReply | str) -> None:
        """Replies for the next chat requests, in order, before the responder is asked again."""
        with self._lock:
            self._queue.extend(replies)

    def enqueue_embeddings(self, *replies: FakeReply) -> None:
        """Replies for the next embedding requests, in order (errors, delays, custom vectors)."""
        with self._lock:
            self._embedding_queue.extend(replies)

    def _next_embedding_reply(self, body: dict) -> FakeReply:
        with self._lock:
            queued = self._embedding_queue.popleft() if self._embedding_queue else None
        if queued is not None:
            return queued
        reply = self.embedding_responder(body) if self.embedding_responder is not None else None
        return reply if reply is not None else FakeReply()

    def _next_reply(self, body: dict) -> FakeReply:
        with self._lock:
            queued = self._queue.popleft() if self._queue else None
        reply = queued if queued is not None else self.responder(body)
        if reply is None:
            reply = default_responder(body)
        if isinstance(reply, str):
            reply = FakeReply(content=reply)
        return reply

    # --- app ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _counted(self, counter: str, log: list[dict], body: dict) -> Iterator[None]:
        """Count and record one request, and track how many are being answered at once."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
            log.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def _unauthorised(self, request: Request) -> JSONResponse | None:
        if self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return _error(401, "Incorrect API key provided", "invalid_api_key")

    def _app(self) -> Starlette:
        async def models(request: Request) -> JSONResponse:
            denied = self._unauthorised(request)
            if denied:
                return denied
            return JSONResponse(
                {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]}
            )

        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            with self._counted("calls", self.requests, body):
                denied = self._unauthorised(request)
                if denied:
                    return denied
                response_format = body.get("response_format") or {}
                if not self.supports_json_schema and response_format.get("type") == "json_schema":
                    return _error(400, "response_format json_schema not supported")
                reply = self._next_reply(body)
                failed = await _delay_or_error(reply)
                if failed:
                    return failed
                content = reply.content or ""
                prompt_tokens = reply.prompt_tokens
                if prompt_tokens is None:
                    prompt_tokens = sum(_words(str(m.get("content", ""))) for m in body.get("messages", []))
                completion_tokens = reply.completion_tokens if reply.completion_tokens is not None else _words(content)
                return JSONResponse(
                    {
                        "id": f"chatcmpl-{self.calls}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model") or FAKE_MODEL,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": reply.finish_reason,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                        },
                    },
                    headers=reply.headers,
                )

        async def embeddings(request: Request) -> JSONResponse:
            body = await request.json()
            with self._counted("embedding_calls", self.embedding_requests, body):
                denied = self._unauthorised(request)
                if denied:
                    return denied
                inputs = body.get("input")
                texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
                if not texts or not all(isinstance(t, str) for t in texts):
                    return _error(400, "input must be a string or a list of strings")
                reply = self._next_embedding_reply(body)
                failed = await _delay_or_error(reply)
                if failed:
                    return failed
                dim = int(body.get("dimensions") or self.embedding_dim)
                vectors = reply.vectors if reply.vectors is not None else [fake_embedding(t, dim) for t in texts]
                encoding = self.embedding_encoding or body.get("encoding_format") or "float"
                data = []
                for i, vec in enumerate(vectors):
                    if encoding == "base64":  # what the openai SDK asks for by default
                        value: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
                    else:
                        value = list(vec)
                    data.append({"object": "embedding", "index": i, "embedding": value})
                tokens = reply.prompt_tokens if reply.prompt_tokens is not None else sum(_words(t) for t in texts)
                return JSONResponse(
                    {
                        "object": "list",
                        "data": data,
                        "model": body.get("model") or FAKE_MODEL,
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    },
                    headers=reply.headers,
                )

        return Starlette(
            routes=[
                Route("/v1/models", models, methods=["GET"]),
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/embeddings", embeddings, methods=["POST"]),
            ]
        )


async def _delay_or_error(reply: FakeReply) -> JSONResponse | None:
    """Wait the reply's delay; the error response if the reply is an error."""
    if reply.delay:
        await asyncio.sleep(reply.delay)
    if reply.status >= 400:
        return _error(reply.status, reply.message or "error", headers=reply.headers)
    return None


def _error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status, headers=headers
    )
