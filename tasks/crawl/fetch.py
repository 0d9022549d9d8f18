"""Fetch a list of http(s) URLs politely and turn each into a Record.

Politeness, per host (the host is `host:port`, so two ports of one machine are two hosts):

* robots.txt is fetched once per host (scheme, host, port) with the same client and obeyed for our
  user agent (Google's conventions: 2xx → parsed; 4xx → allow all; 429/5xx after retries →
  everything on the host is skipped "robots"; unreachable → every URL of the host is quarantined
  "fetch_failed"; more than 5 redirects → allow all; only the first 500 KiB are parsed). A
  Crawl-delay for our agent (decimals accepted) replaces `per_host_delay_s` when larger; one beyond
  `max_crawl_delay_s` skips the host rather than tie up a worker for minutes per page.
* Request *starts* to one host are at least the host's delay apart — robots.txt, retries and
  redirect hops included — and a host has at most one request in flight: `max_concurrency` hosts
  are fetched in parallel, each by one worker thread that drains that host's queue in input order.
* Timeouts: `timeout_s = (connect, read)`, read being the longest silence between bytes, plus a
  wall-clock bound on a whole body (`max_fetch_s`) against slow-drip servers.
* Bodies are streamed and reading stops past `max_bytes` (decoded size, so a gzip bomb stops
  too); a Content-Length over the cap is refused before the body is read. Only HTML and plain-text
  bodies are downloaded: any other Content-Type is skipped from its headers.
* Retries (tenacity): connection errors, timeouts, 408, 429, 500, 502, 503 and 504 are retried
  `retries` times with full-jitter exponential backoff, or after exactly Retry-After (seconds or an
  HTTP date) when the server sends one; a Retry-After beyond `max_retry_after_s` ends the retries
  at once (waiting less than asked would be impolite). Other 4xx are never retried.
* Redirects are followed by hand (at most `max_redirects` hops), each hop rate-limited and checked
  against its own host's robots.txt. Cookies are never stored or sent; URLs carrying credentials
  (`user:pass@`) are refused; nothing from the headers is logged.

Order and memory: records come back in input order. Up to `max_pending` URLs are in flight or
done-and-waiting (a reorder window), so memory is bounded by `max_pending` extracted texts plus
`max_concurrency` bodies of at most `max_bytes`; a host that is slow to answer holds the window, so
lists interleaved across hosts crawl fastest.

Reason codes (Record.error → quarantined; Record.skip → filtered and counted):
  error "invalid_url: …"     not an absolute http(s) URL, whitespace in it, credentials in it,
                              or a redirect to such a URL
  error "http_error: <status>[ …]"  a non-2xx final answer (after retries for 408/429/5xx)
  error "fetch_failed: …"    connection failure, "timeout (…)", too many redirects, robots.txt
                              unreachable, undecodable transfer encoding
  error "over_cap: …"        body (or declared Content-Length) larger than `max_bytes`
  error "undecodable: …"     a text/plain body that does not decode (html.decode_bytes, as for HTML)
  error from extract_html    "undecodable", "empty_after_extraction", "extraction_failed" for HTML
  skip  "robots: …"          disallowed by robots.txt, robots.txt unavailable (5xx), crawl-delay
                              over the cap
  skip  "non_html: <type>"   a Content-Type other than HTML or plain text ("unknown" when missing
                              and the body does not look like HTML)
  skip  "duplicate_url"      the same URL (fragment aside) earlier in the list; fetched once
"""

from __future__ import annotations

import http.cookiejar
import logging
import math
import threading
import time
import urllib.robotparser
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

import fsspec
import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from personahub.tasks.core.http import parse_retry_after, redact_url
from personahub.tasks.crawl.html import UndecodableError, decode_bytes, extract_html
from personahub.tasks.crawl.records import ReaderOptions, Record

log = logging.getLogger(__name__)

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain", "text/markdown"})
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ROBOTS_MAX_BYTES = 512_000  # Google parses the first 500 KiB of a robots.txt
ROBOTS_MAX_REDIRECTS = 5
MAX_URL_CHARS = 8192
ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1"


@dataclass(frozen=True)
class FetchOptions:
    user_agent: str = "personahub/0.1 (+https://github.com/personahub)"
    timeout_s: tuple[float, float] | float = (10.0, 30.0)  # (connect, read); read = longest silence
    max_fetch_s: float = 120.0  # wall-clock bound on one response body (slow-drip servers)
    max_bytes: int = 5_000_000  # body size cap: reading stops past it → error "over_cap"
    per_host_delay_s: float = 1.0  # minimum interval between request starts to one host:port
    max_concurrency: int = 8  # hosts fetched in parallel (one request in flight per host)
    max_pending: int = 256  # reorder window: URLs in flight or fetched but not yet yielded
    retries: int = 3  # extra attempts on connection errors, timeouts, 408/429/5xx
    backoff_s: float = 1.0  # full-jitter exponential backoff: uniform(0, min(max, backoff·2^n))
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 60.0  # a longer Retry-After ends the retries instead of waiting
    max_crawl_delay_s: float = 60.0  # a longer robots.txt Crawl-delay skips the host ("robots")
    max_redirects: int = 5
    respect_robots: bool = True


def fetch_urls(urls: Iterable[str], options: FetchOptions = FetchOptions(), *, source: str) -> Iterator[Record]:
    """One Record per URL, in input order (`record` = the URL's index in `urls`).

    Never raises for a bad URL or a bad answer: those come back as Records with `error` or `skip`.
    Closing the generator early stops the workers (in-flight requests end within their timeouts).
    """
    return _fetch_items(enumerate(urls), options, source)


def read_url_list(path: str, options: ReaderOptions, *, fetch_options: FetchOptions | None = None) -> Iterator[Record]:
    """Reader for `.urls` / `.urls.txt` files: one URL a line; blank lines and `#` lines ignored.

    `record` is the URL's 0-based line number in the file; `source` the list file. The list is read
    lazily, so a long list is never held whole. The size cap is the smaller of the fetch default and
    the reader's `max_record_bytes`.
    """
    if fetch_options is None:
        fetch_options = FetchOptions(max_bytes=min(FetchOptions.max_bytes, options.max_record_bytes))

    def lines() -> Iterator[tuple[int, str]]:
        with fsspec.open(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
            for number, line in enumerate(fh):
                url = line.strip()
                if url and not url.startswith("#"):
                    yield number, url

    return _fetch_items(lines(), fetch_options, path)


# --------------------------------------------------------------------------------------------------
# Helpers


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _timeouts(options: FetchOptions) -> httpx.Timeout:
    if isinstance(options.timeout_s, (int, float)):
        connect = read = float(options.timeout_s)
    else:
        connect, read = options.timeout_s
    return httpx.Timeout(read, connect=connect, pool=connect)


def check_url(url: str) -> tuple[httpx.URL | None, str | None]:
    """(parsed URL without fragment, None) or (None, "invalid_url: …")."""
    if len(url) > MAX_URL_CHARS:
        return None, f"invalid_url: longer than {MAX_URL_CHARS} characters"
    if any(ch.isspace() for ch in url):
        return None, "invalid_url: whitespace in URL"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        return None, f"invalid_url: {str(exc)[:120]}"
    if parsed.scheme not in ("http", "https"):
        return None, f"invalid_url: scheme {parsed.scheme or '(none)'!r} is not http(s)"
    if not parsed.host:
        return None, "invalid_url: no host"
    if parsed.userinfo:
        return None, "invalid_url: credentials in URL"
    return parsed.copy_with(fragment=None), None


def _host_key(url: httpx.URL) -> tuple[str, int]:
    """The rate-limit key: host and port (the scheme's default port when none is given)."""
    return url.host, url.port or (443 if url.scheme == "https" else 80)


def parse_crawl_delay(lines: Sequence[str], user_agent: str) -> float | None:
    """Crawl-delay for `user_agent` (decimals accepted, unlike urllib.robotparser).

    Groups are matched like urllib.robotparser: the first group naming an agent contained in our
    product token ("personahub"), else the first "*" group; a matched group without Crawl-delay
    has none.
    """
    token = user_agent.split("/")[0].strip().lower()
    groups: list[tuple[list[str], list[float]]] = []
    agents: list[str] = []
    delays: list[float] = []
    in_rules = False
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if in_rules:
                agents, delays, in_rules = [], [], False
            if not agents:
                groups.append((agents, delays))
            agents.append(value.lower())
        elif key in ("allow", "disallow", "crawl-delay", "request-rate") and agents:
            in_rules = True
            if key == "crawl-delay":
                try:
                    delay = float(value)
                except ValueError:
                    continue
                if math.isfinite(delay) and delay >= 0 and not delays:
                    delays.append(delay)
    for group_agents, group_delays in groups:
        if any(agent != "*" and agent in token for agent in group_agents):
            return group_delays[0] if group_delays else None
    for group_agents, group_delays in groups:
        if "*" in group_agents:
            return group_delays[0] if group_delays else None
    return None


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that never keeps a cookie, so none is ever sent back."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


class _RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


class _OverCap(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class _Stopped(Exception):
    pass


@dataclass
class _Response:
    url: httpx.URL
    status: int
    content_type: str  # media type, lower case, no parameters; "" when missing
    charset: str | None
    location: str | None  # set for a redirect
    body: bytes | None  # None when not downloaded (non-2xx, redirect, unwanted type)
    fetched_at: str


@dataclass
class _Robots:
    parser: urllib.robotparser.RobotFileParser | None = None  # None: everything allowed
    skip: str | None = None  # every URL of the host is skipped with this
    error: str | None = None  # ... or quarantined with this


class _HostLimiter:
    """Request starts to one host at least `delay` apart, whichever threads make them.

    A start is committed under the lock at the moment it is allowed (never as a reservation made
    before a sleep), so a thread waking up late can never shorten the gap to the next request.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._last = -math.inf
        self._next = 0.0

    def try_start(self) -> float:
        """0.0 when a request may start now (and it is counted as started), else seconds to wait."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                return self._next - now
            self._last = now
            self._next = now + self.delay
            return 0.0

    def set_delay(self, delay: float) -> None:
        with self._lock:
            self.delay = delay
            self._next = max(self._next, self._last + delay)


class _Item(NamedTuple):
    pos: int
    record: int
    url: str  # as given (redacted when it carried credentials)
    parsed: httpx.URL


# --------------------------------------------------------------------------------------------------
# The fetcher: one httpx client, per-host limiters and robots policies, shared by the workers.


class _Fetcher:
    def __init__(self, options: FetchOptions, source: str, stop: threading.Event) -> None:
        self.options = options
        self.source = source
        self.stop = stop
        self.client = httpx.Client(
            headers={"User-Agent": options.user_agent, "Accept": ACCEPT},
            timeout=_timeouts(options),
            follow_redirects=False,  # by hand: each hop is rate-limited and checked against robots.txt
            cookies=_NoCookies(),
            limits=httpx.Limits(
                max_connections=2 * max(1, options.max_concurrency),
                max_keepalive_connections=max(1, options.max_concurrency),
            ),
        )
        self._lock = threading.Lock()
        self._limiters: dict[tuple[str, int], _HostLimiter] = {}
        self._robots: dict[tuple[str, str, int], _Robots] = {}
        self._robots_locks: dict[tuple[str, str, int], threading.Lock] = {}

    def close(self) -> None:
        self.client.close()

    # -- waiting ----------------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.stop.wait(seconds):
            raise _Stopped()
        if self.stop.is_set():
            raise _Stopped()

    def _limiter(self, url: httpx.URL) -> _HostLimiter:
        key = _host_key(url)
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = _HostLimiter(self.options.per_host_delay_s)
            return limiter

    def _wait_turn(self, url: httpx.URL) -> None:
        limiter = self._limiter(url)
        while (wait := limiter.try_start()) > 0:
            self._sleep(wait)
        self._sleep(0)  # raises when stopping

    # -- one GET, with retries --------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, _RetryableStatus):
            return exc.retry_after is None or exc.retry_after <= self.options.max_retry_after_s
        return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)

    def _backoff(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
            return exc.retry_after
        return wait_random_exponential(multiplier=self.options.backoff_s, max=self.options.backoff_max_s)(state)

    def get(self, url: httpx.URL, *, robots: bool = False) -> _Response:
        """GET without following redirects; raises _RetryableStatus, _OverCap, _BodyTooSlow or
        httpx.RequestError once the retries are spent."""
        retrying = Retrying(
            stop=stop_after_attempt(max(0, self.options.retries) + 1),
            wait=self._backoff,
            retry=retry_if_exception(self._retryable),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(self._attempt, url, robots)

    def _attempt(self, url: httpx.URL, robots: bool) -> _Response:
        self._wait_turn(url)
        log.debug("GET %s", url)
        deadline = time.monotonic() + self.options.max_fetch_s
        with self.client.stream("GET", url) as resp:
            fetched_at = _now_iso()
            status = resp.status_code
            if status in RETRY_STATUSES:
                raise _RetryableStatus(status, parse_retry_after(resp.headers.get("retry-after")))
            content_type = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            charset = resp.charset_encoding
            location = resp.headers.get("location") if resp.is_redirect else None
            body = None
            if location is None and 200 <= status < 300:
                if robots:
                    body = self._read(resp, ROBOTS_MAX_BYTES, deadline, truncate=True)
                elif not content_type or content_type in HTML_TYPES or content_type in TEXT_TYPES:
                    body = self._read(resp, self.options.max_bytes, deadline, truncate=False)
            return _Response(resp.url, status, content_type, charset, location, body, fetched_at)

    def _read(self, resp: httpx.Response, cap: int, deadline: float, *, truncate: bool) -> bytes:
        declared = resp.headers.get("content-length", "")
        if not truncate and declared.isdigit() and int(declared) > cap:
            raise _OverCap(f"Content-Length {declared} larger than {cap} bytes")
        buf = bytearray()
        for chunk in resp.iter_bytes():
            buf += chunk
            if len(buf) > cap:
                if truncate:
                    return bytes(buf[:cap])
                raise _OverCap(f"body larger than {cap} bytes")
            if time.monotonic() > deadline:
                raise _BodyTooSlow(f"body took longer than {self.options.max_fetch_s:g} s")
            if self.stop.is_set():
                raise _Stopped()
        return bytes(buf)

    # -- robots.txt -------------------------------------------------------------------------------

    def robots_for(self, url: httpx.URL) -> _Robots:
        key = (url.scheme, *_host_key(url))
        with self._lock:
            lock = self._robots_locks.setdefault(key, threading.Lock())
        with lock:
            policy = self._robots.get(key)
            if policy is None:
                policy = self._robots[key] = self._load_robots(url)
            return policy

    def _load_robots(self, url: httpx.URL) -> _Robots:
        current = url.copy_with(path="/robots.txt", query=None, fragment=None)
        for _hop in range(ROBOTS_MAX_REDIRECTS + 1):
            try:
                resp = self.get(current, robots=True)
            except _RetryableStatus as exc:
                return _Robots(skip=f"robots: robots.txt unavailable (HTTP {exc.status}), host treated as disallowed")
            except (httpx.RequestError, _BodyTooSlow) as exc:
                return _Robots(error=f"fetch_failed: robots.txt unreachable: {_describe(exc)}")
            if resp.location is None:
                break
            nxt, _problem = _join(current, resp.location)
            if nxt is None:
                return _Robots()  # a redirect out of http(s): no robots.txt, like a 404
            current = nxt
        else:
            return _Robots()  # too many redirects: Google treats it as a 404
        if 500 <= resp.status < 600:
            return _Robots(skip=f"robots: robots.txt unavailable (HTTP {resp.status}), host treated as disallowed")
        if not 200 <= resp.status < 300 or not resp.body:
            return _Robots()  # 4xx (and anything else without rules): allow all
        lines = resp.body.decode("utf-8", errors="replace").splitlines()
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(lines)
        delay = parse_crawl_delay(lines, self.options.user_agent)
        if delay is not None and delay > self.options.max_crawl_delay_s:
            return _Robots(skip=f"robots: crawl-delay {delay:g}s over the {self.options.max_crawl_delay_s:g}s cap")
        if delay is not None and delay > self.options.per_host_delay_s:
            self._limiter(url).set_delay(delay)
        return _Robots(parser=parser)

    # -- one URL → one Record ---------------------------------------------------------------------

    def record(self, item: _Item) -> Record:
        try:
            return self._record(item)
        except _Stopped:
            raise
        except Exception as exc:  # a bug must neither lose the record nor hang the crawl
            log.exception("fetching %s failed unexpectedly", item.url)
            return Record(self.source, item.record, None, url=item.url, error=f"fetch_failed: internal error: {_describe(exc)}")

    def _record(self, item: _Item) -> Record:
        def failed(error: str | None = None, skip: str | None = None, url: str = item.url) -> Record:
            return Record(self.source, item.record, None, url=url, error=error, skip=skip)

        current = item.parsed
        for _hop in range(self.options.max_redirects + 1):
            if self.options.respect_robots:
                policy = self.robots_for(current)
                if policy.error or policy.skip:
                    return failed(policy.error, policy.skip, str(current))
                if policy.parser is not None and not policy.parser.can_fetch(self.options.user_agent, str(current)):
                    return failed(skip="robots: disallowed by robots.txt", url=str(current))
            try:
                resp = self.get(current)
            except _RetryableStatus as exc:
                detail = ""
                if exc.retry_after is not None and exc.retry_after > self.options.max_retry_after_s:
                    detail = f" (Retry-After {exc.retry_after:g}s over the {self.options.max_retry_after_s:g}s cap)"
                return failed(f"http_error: {exc.status}{detail}", url=str(current))
            except _OverCap as exc:
                return failed(f"over_cap: {exc}", url=str(current))
            except (httpx.RequestError, _BodyTooSlow) as exc:
                return failed(f"fetch_failed: {_describe(exc)}", url=str(current))
            if resp.location is None:
                return self._to_record(item, resp)
            nxt, problem = _join(current, resp.location)
            if nxt is None:
                return failed(f"invalid_url: redirect to {problem}", url=str(current))
            current = nxt
        return failed(f"fetch_failed: more than {self.options.max_redirects} redirects", url=str(current))

    def _to_record(self, item: _Item, resp: _Response) -> Record:
        url = str(resp.url)
        metadata: dict[str, Any] = {"http_status": resp.status, "content_type": resp.content_type or None}
        if url != str(item.parsed):
            metadata["requested_url"] = item.url
        base = {"source": self.source, "record": item.record, "url": url, "fetched_at": resp.fetched_at}
        if not 200 <= resp.status < 300:
            return Record(text=None, error=f"http_error: {resp.status}", metadata=metadata, **base)
        content_type = resp.content_type
        if not content_type and resp.body is not None and _looks_like_html(resp.body):
            content_type = "text/html"
        if content_type in HTML_TYPES and resp.body is not None:
            extracted = extract_html(resp.body, url=url, declared_encoding=resp.charset)
            metadata["encoding"] = extracted.encoding
            if extracted.error:
                return Record(text=None, error=extracted.error, metadata=metadata, **base)
            return Record(text=extracted.text or "", title=extracted.title, metadata=metadata, **base)
        if content_type in TEXT_TYPES and resp.body is not None:
            try:
                text, metadata["encoding"] = decode_bytes(resp.body, resp.charset)
            except UndecodableError as exc:
                return Record(text=None, error=f"undecodable: {exc}", metadata=metadata, **base)
            return Record(text=text, metadata=metadata, **base)
        return Record(text=None, skip=f"non_html: {resp.content_type or 'unknown'}", metadata=metadata, **base)


def _join(base: httpx.URL, location: str) -> tuple[httpx.URL | None, str]:
    try:
        target = base.join(location.strip())
    except (httpx.InvalidURL, ValueError) as exc:
        return None, f"an unparsable URL ({str(exc)[:80]})"
    nxt, problem = check_url(str(target))
    if nxt is None:
        return None, f"{redact_url(str(target))[:200]} ({problem.removeprefix('invalid_url: ') if problem else ''})"
    return nxt, ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, _BodyTooSlow):
        return f"timeout ({exc})"
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message[:160]}" if message else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# The driver: admit URLs into a reorder window, one worker per busy host, yield in input order.


def _fetch_items(items: Iterable[tuple[int, str]], options: FetchOptions, source: str) -> Iterator[Record]:
    stop = threading.Event()
    fetcher = _Fetcher(options, source, stop)
    cond = threading.Condition()
    results: dict[int, Record] = {}  # position in the input → finished record
    queues: dict[tuple[str, int], deque[_Item]] = {}  # host → its admitted, not yet started items
    failures: list[BaseException] = []
    seen: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=max(1, options.max_concurrency), thread_name_prefix="personahub-fetch")

    def drain(key: tuple[str, int]) -> None:
        while True:
            with cond:
                queue = queues.get(key)
                if not queue or stop.is_set():
                    queues.pop(key, None)  # a later URL of this host starts a new drain
                    return
                item = queue.popleft()
            try:
                record = fetcher.record(item)
            except _Stopped:
                return
            with cond:
                results[item.pos] = record
                cond.notify_all()

    def on_done(future: Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            with cond:
                failures.append(future.exception())  # type: ignore[arg-type]
                cond.notify_all()

    def admit(pos: int, record_no: int, raw: str) -> None:
        parsed, problem = check_url(raw)
        shown = redact_url(raw)
        immediate: Record | None = None
        if parsed is None:
            immediate = Record(source, record_no, None, url=shown, error=problem)
        elif str(parsed) in seen:
            immediate = Record(source, record_no, None, url=shown, skip="duplicate_url")
        with cond:
            if immediate is not None:
                results[pos] = immediate
                cond.notify_all()
                return
            assert parsed is not None
            seen.add(str(parsed))
            key = _host_key(parsed)
            queue = queues.get(key)
            if queue is None:  # no worker drains this host now: start one
                queue = queues[key] = deque()
                pool.submit(drain, key).add_done_callback(on_done)
            queue.append(_Item(pos, record_no, shown, parsed))

    window = max(1, options.max_pending)
    source_iter = iter(items)
    admitted = yielded = 0
    exhausted = False
    try:
        while True:
            while not exhausted and admitted - yielded < window:
                try:
                    record_no, raw = next(source_iter)
                except StopIteration:
                    exhausted = True
                    break
                admit(admitted, record_no, raw)
                admitted += 1
            if exhausted and yielded == admitted:
                return
            with cond:
                while yielded not in results and not failures:
                    cond.wait(timeout=1.0)
                if failures:
                    raise RuntimeError("a fetch worker failed") from failures[0]
                record = results.pop(yielded)
            yielded += 1
            yield record
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        fetcher.close()
