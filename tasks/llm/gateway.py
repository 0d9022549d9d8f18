"""The one gateway every LLM call in personahub goes through.

It owns, in one place, what each stage would otherwise get subtly wrong:

* bounded concurrency: one limit per endpoint that every gateway and thread of the process shares
  (tasks/llm/concurrency.py),
* retries with jittered exponential backoff on 429 (honouring Retry-After), 5xx, timeouts and
  connection resets; every other error is final and reported in the result, never raised,
* a circuit breaker (tasks/llm/endpoint_breaker.py): an endpoint that refuses connections, the key or
  the model, or fails `max_consecutive_failures` calls in a row, raises EndpointDown at once,
* a content-addressed response cache under the store (tasks/llm/cache.py: model + messages +
  params + template version + schema → raw response), so a rerun never pays for the same call twice;
  a batch (`chat_many`, `embed_many`: one shard) is looked up before its calls, and its answers are
  written as segments of many answers, not one object per call,
* token accounting (`Usage`) so each stage can report what it spent,
* JSON-schema structured output where the endpoint supports it, lenient JSON parsing otherwise,
* embeddings (`embed_many`): batched /v1/embeddings requests under the same concurrency, retries,
  cache (one entry per batch, vectors as base64 float32) and accounting, L2-normalised here.

Secrets (tasks/llm/secrets.py): the API key never goes into logs, cache files or error strings;
errors carry only the HTTP status and the endpoint (base URL without credentials or query). What goes
in and comes out (ChatRequest, ChatResult, Usage, ...) is in tasks/llm/requests.py.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import openai
from openai import AsyncOpenAI
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from personahub.tasks.core.http import endpoint_label, retry_after_s
from personahub.tasks.llm.cache import (
    CACHE_FORMAT, EMBEDDING_CACHE_FORMAT, FLUSH_EVERY, FLUSH_SECONDS, ResponseCache, cache_key, embedding_cache_key,
)
from personahub.tasks.llm.budget import RunBudget, budget_for
from personahub.tasks.llm.meter import InvocationMeter, meter_for
from personahub.tasks.llm.concurrency import limit_for
from personahub.tasks.llm.endpoint_breaker import CircuitBreaker, EndpointDown, fatal_reason
from personahub.tasks.llm.json_parsing import parse_json_lenient
from personahub.tasks.llm.requests import ChatRequest, ChatResult, EmbeddingResult, LLMError, Usage
from personahub.tasks.llm.secrets import PLACEHOLDER_API_KEY, scrub
from personahub.tasks.core import progress
from personahub.tasks.core.store import Store

log = logging.getLogger(__name__)

# A server may ask for a long pause; honour it, but never sleep for more than this per retry.
MAX_RETRY_AFTER_S = 120.0

# Keyword arguments chat.completions.create() accepts; any other param goes in the request body as is
# (llama-server's top_k, min_p, repeat_penalty, ...).
_SDK_PARAMS = frozenset(
    {
        "temperature", "max_tokens", "max_completion_tokens", "top_p", "seed", "stop", "n",
        "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "user",
    }
)


def _pack_vectors(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


def _unpack_vectors(data: str, count: int, dim: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(data), dtype="<f4")
    if raw.size != count * dim:
        raise ValueError(f"{raw.size} floats where {count} x {dim} were expected")
    return raw.reshape(count, dim).astype(np.float32)


def _embedding_vector(value: Any) -> np.ndarray:
    """One response item's vector: base64 little-endian float32 (what we ask for) or a float list
    (what servers that ignore encoding_format send)."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32).reshape(-1)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (no NaN)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


class _BadEmbeddingResponse(ValueError):
    """The endpoint answered 200 with something that is not one vector per input."""


def _retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait, from the failed response's headers."""
    return retry_after_s(getattr(getattr(exc, "response", None), "headers", None))


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, TimeoutError)):
        return True
    if isinstance(exc, openai.RateLimitError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    return False


_backoff = wait_random_exponential(multiplier=0.5, max=30)


def _wait(state: RetryCallState) -> float:
    """Jittered exponential backoff, but never less than what Retry-After asks for."""
    delay = _backoff(state)
    if state.outcome is not None and state.outcome.failed:
        asked = _retry_after_s(state.outcome.exception())
        if asked is not None:
            delay = max(delay, min(asked, MAX_RETRY_AFTER_S))
    return delay


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        return json.dumps(body, default=str)[:500]
    if isinstance(body, str) and body:
        return body[:500]
    try:
        return exc.response.text[:500] or exc.message
    except Exception:  # noqa: BLE001 - the body may be unreadable; the status still says enough
        return exc.message


def _is_schema_rejection(exc: BaseException) -> bool:
    """A 400/422 about response_format, the schema or the grammar made from it: the endpoint does
    not do (this) JSON-schema output. Falling back is safe: the prompt asks for JSON anyway."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in (400, 422):
        return False
    text = _status_message(exc).lower()
    return any(word in text for word in ("response_format", "response format", "json_schema", "schema", "grammar"))


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first exception of a (nested) exception group: the one a TaskGroup's caller should see."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


Purpose = Literal["chat", "embeddings"]


def _settings_options(settings: Any, embeddings: bool) -> dict[str, Any]:
    """The gateway options both constructors take from Settings: the key for the endpoint's
    purpose, timeouts, retries, the breaker and the cache's flush rule."""
    return {
        "api_key": settings.resolved_embedding_api_key() if embeddings else settings.resolved_api_key(),
        "timeout_s": settings.llm_timeout_s,
        "max_retries": settings.llm_max_retries,
        "structured_output": settings.llm_structured_output,
        "max_consecutive_failures": settings.llm_max_consecutive_failures,
        "cache_flush_every": settings.llm_cache_flush_every,
        "cache_flush_seconds": settings.llm_cache_flush_seconds,
    }


def _purpose(value: Any) -> Purpose:
    if value not in ("chat", "embeddings"):
        raise ValueError(f"purpose must be 'chat' or 'embeddings', not {value!r}")
    return value


# --- the gateway --------------------------------------------------------------------------------


@dataclass
class _LoopState:
    """What must belong to one event loop: the HTTP client's connections and the model lock.
    (It must not refer to its loop: it is the value of a weak mapping keyed by that loop.)"""

    client: AsyncOpenAI
    closer: Any  # the _close_with_loop generator that closes `client` when the loop shuts down
    model_lock: asyncio.Lock
    # Requests being answered now, by cache key: an identical request waits for that answer
    # instead of paying for it a second time in the same batch.
    inflight: dict[str, asyncio.Future] = field(default_factory=dict)


async def _close_with_loop(client: AsyncOpenAI):
    """Closes `client` when its event loop shuts down: asyncio.run() finalises the async generators
    still open (shutdown_asyncgens) before it closes the loop, which runs this `finally` there.
    Without it each asyncio.run would leave its keep-alive sockets open."""
    try:
        yield
    finally:
        await client.close()


class LLMGateway:
    """Chat completions against one OpenAI-compatible endpoint, with caching, retries and accounting.

    Safe to use from several `asyncio.run` calls, in turn or in threads at once (Prefect tasks do
    both): the HTTP client is per event loop; `max_concurrency` bounds the requests in flight to
    this endpoint across every gateway and thread of the process (tasks/llm/concurrency.py), so
    shards in flight share one bound; the usage counters are shared and locked."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None,
        store: Store | None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        structured_output: bool = True,
        cache_prefix: str = "cache/llm",
        max_consecutive_failures: int = 10,
        cache_flush_every: int = FLUSH_EVERY,
        cache_flush_seconds: float = FLUSH_SECONDS,
        meter: InvocationMeter | None = None,
        budget: RunBudget | None = None,
    ):
        if not base_url:
            raise ValueError("LLMGateway needs a base_url (…/v1)")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.endpoint = endpoint_label(self.base_url)
        self.model = model or None
        self.store = store
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.structured_output = bool(structured_output)
        self.cache = ResponseCache(store, cache_prefix, scrub=self._scrub, flush_every=cache_flush_every,
                                   flush_seconds=cache_flush_seconds)
        self.usage = Usage()
        self.breaker = CircuitBreaker(self.endpoint, max_consecutive_failures)
        self.meter = meter  # the invocation's counts over every process (tasks/llm/meter.py)
        self.budget = budget  # the invocation's token / cost limit, checked on the meter (tasks/llm/budget.py)
        self.limit = limit_for(self.base_url, self.max_concurrency)
        # Kept private and out of repr(); only the SDK client sees it (as the Authorization header).
        self.__api_key = api_key or PLACEHOLDER_API_KEY
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self._states_lock = threading.Lock()
        self._usage_lock = threading.Lock()
        self._resolved_model: str | None = self.model
        # Set when the endpoint rejects response_format json_schema; later requests skip it.
        self._schema_unsupported = False

    @classmethod
    def from_settings(
        cls, settings: Any, store: Store | None, base_url: str | None = None, *, purpose: Purpose = "chat"
    ) -> "LLMGateway":
        """A gateway configured from Settings; `base_url` (an embedded server's) overrides the
        configured one. purpose="embeddings" takes the embedding_* endpoint, key, model and
        concurrency instead of the llm_* ones (timeouts and retries are shared)."""
        embeddings = _purpose(purpose) == "embeddings"
        url = base_url or (settings.embedding_base_url if embeddings else settings.llm_base_url)
        if not url:
            name = "embedding_base_url" if embeddings else "llm_base_url"
            raise ValueError(f"no {purpose} endpoint: set {name} or start the embedded server and pass its base_url")
        return cls(
            base_url=url,
            model=settings.embedding_model if embeddings else settings.llm_model,
            store=store,
            max_concurrency=settings.embedding_max_concurrency if embeddings else settings.llm_max_concurrency,
            **_settings_options(settings, embeddings),
        )

    @classmethod
    def for_worker(cls, llm: Mapping[str, Any], store: Store | None) -> "LLMGateway":
        """A gateway inside a task, from what the flow passed (base_url, model, concurrency and,
        for embeddings, purpose="embeddings") and this worker's own settings: the API key comes
        from the worker's environment, never from task parameters, so it is in no Prefect run
        record. An embeddings gateway takes embedding_api_key (which falls back to the LLM key)."""
        from personahub.tasks.core.settings import load_settings

        settings = load_settings()
        embeddings = _purpose(llm.get("purpose", "chat")) == "embeddings"
        meter = meter_for(llm.get("spend"), store)
        return cls(
            base_url=llm["base_url"],
            model=llm["model"],
            store=store,
            max_concurrency=llm["concurrency"],
            meter=meter,
            budget=budget_for(llm.get("spend"), meter),
            **_settings_options(settings, embeddings),
        )

    def __repr__(self) -> str:
        return f"LLMGateway(endpoint={self.endpoint!r}, model={self.model!r}, store={self.store!r})"

    # --- per-loop state -------------------------------------------------------------------------
    async def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._states_lock:
            state = self._states.get(loop)
            if state is not None:
                return state
            # A client's connections belong to the loop that opened them. Entries of closed loops
            # are dropped here (their open sockets would otherwise keep the loop, and so the
            # entry, alive).
            for old in [old for old in self._states.keys() if old.is_closed()]:
                del self._states[old]
            client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.__api_key,
                timeout=self.timeout_s,
                max_retries=0,  # we own retries (tenacity below), so they are counted and jittered
            )
            closer = _close_with_loop(client)
            state = _LoopState(client, closer, asyncio.Lock())
            self._states[loop] = state
        await closer.__anext__()  # registers it with the loop's async-generator finaliser
        return state

    def _count(self, _also: Usage | None = None, **deltas: int) -> None:
        """Add to the gateway's usage and, when given, to one call's own (`_also`)."""
        with self._usage_lock:
            for target in (self.usage, _also) if _also is not None else (self.usage,):
                for name, delta in deltas.items():
                    setattr(target, name, getattr(target, name) + delta)
        progress.count_llm(calls=deltas.get("calls", 0), cache_hits=deltas.get("cache_hits", 0),
                           tokens=deltas.get("prompt_tokens", 0) + deltas.get("completion_tokens", 0))
        if self.meter is not None:
            self.meter.add(**deltas)

    async def aclose(self) -> None:
        """Close this loop's HTTP client (clients of other, finished loops are simply dropped)."""
        with self._states_lock:
            state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.closer.aclose()  # runs its finally: closes the client
        if self.meter is not None:
            await asyncio.to_thread(self.meter.publish)  # the final counts, for the budget and the CLI

    async def __aenter__(self) -> "LLMGateway":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    # --- helpers --------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """Remove anything key-like from text that may reach a log, a result or an exception."""
        return scrub(text, self.__api_key)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, openai.APIStatusError):
            message = f"HTTP {exc.status_code} from {self.endpoint}: {_status_message(exc)}"
        elif isinstance(exc, (openai.APITimeoutError, TimeoutError)):
            message = f"timeout after {self.timeout_s:g}s from {self.endpoint}"
        elif isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            message = f"connection error to {self.endpoint}: {type(cause).__name__}: {cause}"
        else:
            message = f"{type(exc).__name__} calling {self.endpoint}: {exc}"
        return self._scrub(message)[:1000]

    def _retrying(self, usage: Usage | None = None) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            self._count(usage, retries=1)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, openai.RateLimitError):
                self.limit.congested()  # fewer requests in flight until the 429s stop
            log.warning(
                "LLM call failed (%s); retry %d/%d in %.1fs",
                self._describe(exc) if exc else "?",
                state.attempt_number,
                self.max_retries,
                state.next_action.sleep if state.next_action else 0.0,
            )

        def retryable(exc: BaseException) -> bool:
            return _is_retryable(exc) and fatal_reason(exc) is None and self.breaker.tripped is None

        return AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=_wait,
            stop=stop_after_attempt(self.max_retries + 1),
            before_sleep=before_sleep,
            reraise=True,
        )

    # --- public API -----------------------------------------------------------------------------
    async def model_name(self) -> str:
        """The configured model, else the endpoint's first model (asked once)."""
        if self._resolved_model:
            return self._resolved_model
        state = await self._loop_state()
        async with state.model_lock:
            if self._resolved_model:
                return self._resolved_model
            try:
                async for attempt in self._retrying():
                    with attempt:
                        self.breaker.check()
                        page = await state.client.models.list()
            except EndpointDown:
                raise
            except Exception as exc:  # noqa: BLE001 - without a model name no call can be made
                description = self._describe(exc)
                self.breaker.failed(exc, description)  # raises for a dead endpoint
                raise EndpointDown(f"could not list the models of {self.endpoint}: {description}") from None
            ids = [m.id for m in page.data if getattr(m, "id", None)]
            if not ids:
                raise LLMError(f"{self.endpoint} lists no models; set llm_model")
            self._resolved_model = ids[0]
            return self._resolved_model

    async def chat(self, req: ChatRequest) -> ChatResult:
        """One chat completion: `chat_many` of one request."""
        return (await self.chat_many([req]))[0]

    async def chat_many(self, reqs: Sequence[ChatRequest]) -> list[ChatResult]:
        """Results in the order of `reqs`: from the cache when an exact call was answered before,
        else from the endpoint, at most max_concurrency in flight. An API failure is a result
        carrying `error`; only a dead endpoint raises (EndpointDown, from the circuit breaker),
        cancelling the calls still waiting. The batch's keys are looked up in the cache once,
        before any call, and its answers are written (as segments) before it returns or raises."""
        if not reqs:
            return []
        state = await self._loop_state()
        try:
            model = await self.model_name()
        except LLMError as exc:
            self._count(failures=len(reqs))
            return [ChatResult("", None, None, None, str(exc), self.model or "", None, 0, 0, False) for _ in reqs]
        keys = [cache_key(model, req) for req in reqs]
        await self.cache.prefetch(keys)
        try:
            async with asyncio.TaskGroup() as group:
                calls = [group.create_task(self._chat_one(state, model, key, req)) for key, req in zip(keys, reqs)]
        except BaseExceptionGroup as failed:
            raise _first_leaf(failed) from None
        finally:
            await self.cache.flush()
            self.cache.release(keys)
        return [call.result() for call in calls]

    async def _chat_one(self, state: _LoopState, model: str, key: str, req: ChatRequest) -> ChatResult:
        entry = await self.cache.read(key)
        if entry is not None:
            self._count(cache_hits=1)
            return self._result(req, key, model, entry, cached=True)

        pending = state.inflight.get(key)
        if pending is not None:
            try:
                shared: ChatResult = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                # The request we waited for was cancelled: make the call ourselves below.
            else:
                self._count(cache_hits=1, failures=int(shared.error is not None))
                return replace(shared, data=copy.deepcopy(shared.data), cached=shared.error is None)

        future: asyncio.Future = asyncio.get_running_loop().create_future()
        state.inflight[key] = future
        try:
            result = await self._call(state, model, key, req)
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(result)
            return result
        finally:
            if state.inflight.get(key) is future:
                del state.inflight[key]

    async def _call(self, state: _LoopState, model: str, key: str, req: ChatRequest) -> ChatResult:
        """Ask the endpoint (bounded by the endpoint's shared limit, with retries) and cache the raw answer."""
        async with self.limit:
            self.breaker.check()
            if self.budget is not None:
                self.budget.check()  # raises BudgetExhausted, which stops the run like EndpointDown
            self._count(calls=1)
            try:
                completion = await self._complete(state.client, model, req)
            except (asyncio.CancelledError, EndpointDown):
                raise
            except Exception as exc:  # noqa: BLE001 - one failing request must not sink a batch
                self._count(failures=1)
                error = self._describe(exc)
                self.breaker.failed(exc, error)  # raises EndpointDown when the endpoint is dead
                log.warning("LLM call for %s failed: %s", req.template, error)
                return ChatResult(key, None, None, None, error, model, None, 0, 0, False)
        self.breaker.succeeded()
        self.limit.succeeded()

        choice = completion.choices[0] if completion.choices else None
        text = choice.message.content if choice is not None and choice.message is not None else None
        usage = completion.usage
        entry = {
            "format": CACHE_FORMAT,
            "model": model,
            "template": req.template,
            "text": text,
            "finish_reason": choice.finish_reason if choice is not None else None,
            "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._count(prompt_tokens=entry["prompt_tokens"], completion_tokens=entry["completion_tokens"])
        if text is None:
            self._count(failures=1)
            return ChatResult(
                key, None, None, None, f"empty completion from {self.endpoint}", model,
                entry["finish_reason"], entry["prompt_tokens"], entry["completion_tokens"], False,
            )
        # Raw text is cached even when it does not parse: the call was paid for, and parsing is
        # redone on every read, so a better parser needs no new calls.
        await self.cache.write(key, entry)
        return self._result(req, key, model, entry, cached=False)

    # --- embeddings -----------------------------------------------------------------------------
    def embed_many(self, texts: Sequence[str], *, model: str, batch_size: int = 256) -> EmbeddingResult:
        """`aembed_many` for synchronous callers (Prefect task bodies, flows). Runs on a fresh event
        loop: here when this thread has none, else in a helper thread, so it works from anywhere."""
        coro = self.aembed_many(texts, model=model, batch_size=batch_size)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed") as pool:
            return pool.submit(asyncio.run, coro).result()

    async def aembed_many(self, texts: Sequence[str], *, model: str, batch_size: int = 256) -> EmbeddingResult:
        """Embed `texts` in batches of `batch_size` per /v1/embeddings request, at most
        max_concurrency in flight, each batch retried like a chat call and cached on its own (a
        rerun with the same texts and batch size makes no call). Vectors come back L2-normalised,
        in input order. A batch that still fails after retries raises LLMError, once every other
        batch has finished (their answers are cached, so a retry pays only for the failed ones)."""
        if isinstance(texts, str):
            raise TypeError("embed_many takes a sequence of texts, not one str")
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("embed_many takes str texts only")
        if not model:
            raise ValueError("embed_many needs a model name (it is part of every cache key)")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        usage = Usage()
        if not texts:
            return EmbeddingResult(np.zeros((0, 0), np.float32), model, usage)

        state = await self._loop_state()
        batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        keys = [embedding_cache_key(model, batch) for batch in batches]
        first: dict[str, int] = {}  # identical batches in one call are asked once
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        self._count(usage, cache_hits=len(keys) - len(first))
        await self.cache.prefetch(first)
        try:
            answers = await asyncio.gather(
                *(self._embed_batch(state, model, key, batches[i], usage) for key, i in first.items()),
                return_exceptions=True,
            )
        finally:
            await self.cache.flush()
            self.cache.release(first)
        by_key: dict[str, np.ndarray] = {}
        errors: list[str] = []
        for key, answer in zip(first, answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception) or isinstance(answer, EndpointDown):
                    raise answer  # cancellation, KeyboardInterrupt, a dead endpoint: not one batch's failure
                errors.append(str(answer))
            else:
                by_key[key] = answer
        if errors:
            raise LLMError(self._scrub(
                f"{len(errors)} of {len(first)} embedding requests to {self.endpoint} failed; first: {errors[0]}"
            )[:1500])
        dims = {by_key[key].shape[1] for key in first}
        if len(dims) != 1:
            raise LLMError(f"{self.endpoint} returned vectors of different sizes {sorted(dims)} for {model!r}")
        return EmbeddingResult(l2_normalise(np.concatenate([by_key[key] for key in keys])), model, usage)

    async def _embed_batch(self, state: _LoopState, model: str, key: str, batch: list[str], usage: Usage) -> np.ndarray:
        """One batch's raw vectors (count x dim float32): from the cache, else the endpoint.
        Raises LLMError (secret-free) when the endpoint fails after retries."""
        entry = await self.cache.read(key, kind="embeddings")
        if entry is not None and entry["count"] == len(batch):
            try:
                vectors = _unpack_vectors(entry["vectors"], entry["count"], entry["dim"])
            except ValueError as exc:
                log.warning("ignoring corrupt embedding cache entry %s: %s", key, exc)
            else:
                self._count(usage, cache_hits=1)
                return vectors

        async with self.limit:
            self.breaker.check()
            self._count(usage, calls=1)
            try:
                response = await self._embed_with_retries(state.client, model, batch, usage)
                vectors = self._response_vectors(response, len(batch))
            except (asyncio.CancelledError, EndpointDown):
                raise
            except Exception as exc:  # noqa: BLE001 - reported (scrubbed) with the other batches' failures
                self._count(usage, failures=1)
                error = str(exc) if isinstance(exc, _BadEmbeddingResponse) else self._describe(exc)
                self.breaker.failed(exc, error)  # raises EndpointDown when the endpoint is dead
                log.warning("embedding call (%d texts) failed: %s", len(batch), error)
                raise LLMError(error) from None
        self.breaker.succeeded()

        prompt_tokens = int(getattr(getattr(response, "usage", None), "prompt_tokens", 0) or 0)
        self._count(usage, prompt_tokens=prompt_tokens)
        await self.cache.write(key, {
            "format": EMBEDDING_CACHE_FORMAT,
            "kind": "embeddings",
            "model": model,
            "count": int(vectors.shape[0]),
            "dim": int(vectors.shape[1]),
            "dtype": "<f4",
            "vectors": _pack_vectors(vectors),  # raw, as received: normalised on every read
            "prompt_tokens": prompt_tokens,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        return vectors

    async def _embed_with_retries(self, client: AsyncOpenAI, model: str, batch: list[str], usage: Usage) -> Any:
        async for attempt in self._retrying(usage):
            with attempt:
                self.breaker.check()  # another call may have found the endpoint dead while we waited
                async with asyncio.timeout(2 * self.timeout_s + 5):
                    # base64 float32: a quarter of the JSON of float lists, and exact.
                    return await client.embeddings.create(model=model, input=batch, encoding_format="base64")
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def _response_vectors(self, response: Any, count: int) -> np.ndarray:
        """The response's vectors in input order (by `index`), checked: one per input, one size."""
        data = list(getattr(response, "data", None) or [])
        if len(data) != count:
            raise _BadEmbeddingResponse(f"{self.endpoint} returned {len(data)} embeddings for {count} inputs")
        if all(isinstance(getattr(item, "index", None), int) for item in data):
            data.sort(key=lambda item: item.index)
        try:
            rows = [_embedding_vector(item.embedding) for item in data]
        except (TypeError, ValueError) as exc:
            raise _BadEmbeddingResponse(f"unreadable embedding from {self.endpoint}: {exc}") from None
        dims = {row.size for row in rows}
        if len(dims) != 1 or 0 in dims:
            raise _BadEmbeddingResponse(f"{self.endpoint} returned embeddings of sizes {sorted(dims)} in one batch")
        return np.stack(rows)

    # --- internals ------------------------------------------------------------------------------
    async def _complete(self, client: AsyncOpenAI, model: str, req: ChatRequest) -> Any:
        kwargs: dict[str, Any] = {}
        extra_body: dict[str, Any] = {}
        for name, value in req.params.items():
            (kwargs if name in _SDK_PARAMS else extra_body)[name] = value
        if extra_body:
            kwargs["extra_body"] = extra_body
        use_schema = req.json_schema is not None and self.structured_output and not self._schema_unsupported
        if use_schema:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": req.schema_name, "schema": dict(req.json_schema), "strict": False},
            }
        messages = req.message_dicts()
        try:
            return await self._create_with_retries(client, model, messages, kwargs)
        except openai.APIStatusError as exc:
            if not (use_schema and _is_schema_rejection(exc)):
                raise
            # The caller's prompt already asks for JSON, so the lenient parser can take over.
            self._schema_unsupported = True
            log.info("%s does not support json_schema output; parsing JSON from text instead", self.endpoint)
            kwargs.pop("response_format", None)
            return await self._create_with_retries(client, model, messages, kwargs)

    async def _create_with_retries(self, client: AsyncOpenAI, model: str, messages: list, kwargs: dict) -> Any:
        async for attempt in self._retrying():
            with attempt:
                self.breaker.check()  # another call may have found the endpoint dead while we waited
                # The SDK's timeout bounds each connect/read; this bounds the whole attempt, so a
                # server trickling bytes cannot hold a slot forever.
                async with asyncio.timeout(2 * self.timeout_s + 5):
                    return await client.chat.completions.create(model=model, messages=messages, **kwargs)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def _result(self, req: ChatRequest, key: str, model: str, entry: Mapping[str, Any], *, cached: bool) -> ChatResult:
        text = entry["text"]
        data = parse_error = None
        if req.json_schema is not None:
            try:
                data = parse_json_lenient(text)
            except ValueError as exc:
                parse_error = str(exc)
        return ChatResult(
            key=key,
            text=text,
            data=data,
            parse_error=parse_error,
            error=None,
            model=model,
            finish_reason=entry.get("finish_reason"),
            prompt_tokens=int(entry.get("prompt_tokens") or 0),
            completion_tokens=int(entry.get("completion_tokens") or 0),
            cached=cached,
        )
