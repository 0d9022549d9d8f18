"""Polite URL fetching against local HTTP servers only (127.0.0.x, started here; never the internet).

Hosts are separate loopback addresses (127.0.0.1, .2, …) where they can be bound, else separate
ports of 127.0.0.1: the rate-limit key is host:port, so either is "another host" to the fetcher.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from personahub.tasks.crawl import fetch
from personahub.tasks.crawl.fetch import (
    FetchOptions,
    check_url,
    fetch_urls,
    parse_crawl_delay,
    parse_retry_after,
    read_url_list,
)
from personahub.tasks.crawl.readers import ReaderOptions, Record

PARAGRAPH = (
    "The lighthouse keeper rose before dawn every day to polish the great lens, log the weather and "
    "watch the fishing boats leave the harbour. She had kept the light for thirty years and knew "
    "every rock of the coast by name."
)


def html_page(title: str, body: str = PARAGRAPH) -> str:
    paragraphs = "".join(f"<p>{body} ({i})</p>" for i in range(3))
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
        f"<nav><a href='/'>Home</a></nav><article><h1>{title}</h1>{paragraphs}</article></body></html>"
    )


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
BIG_TOTAL = 50_000_000  # what /big would send if the client never stopped reading
OPTIONS = FetchOptions(
    timeout_s=(0.5, 0.5),
    max_fetch_s=0.6,
    max_bytes=64_000,
    per_host_delay_s=0.2,
    max_concurrency=8,
    retries=2,
    backoff_s=0.05,
    backoff_max_s=0.1,
    max_retry_after_s=2.0,
)


# --------------------------------------------------------------------------------------------------
# A tiny HTTP server: routes are functions (handler, hit number) → None; every request is logged.


class Server:
    def __init__(self, host: str, routes: dict[str, Callable[[BaseHTTPRequestHandler, int], None]]) -> None:
        self.routes = routes
        self.log: list[tuple[float, str, dict[str, str]]] = []  # (monotonic start, path, headers)
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with server.lock:
                    hits = sum(1 for _, path, _ in server.log if path == self.path)
                    server.log.append((time.monotonic(), self.path, dict(self.headers)))
                route = server.routes.get(self.path.split("?", 1)[0])
                try:
                    if route is None:
                        send(self, 404, b"not found", "text/plain")
                    else:
                        route(self, hits)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def starts(self) -> list[float]:
        with self.lock:
            return sorted(t for t, _, _ in self.log)

    def paths(self) -> list[str]:
        with self.lock:
            return [p for _, p, _ in self.log]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes = b"", ctype: str | None = None, **headers: str) -> None:
    h.send_response(status)
    if ctype:
        h.send_header("Content-Type", ctype)
    for name, value in headers.items():
        h.send_header(name.replace("_", "-"), value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def html(status: int = 200, title: str = "Page", **headers: str) -> Callable[[BaseHTTPRequestHandler, int], None]:
    return lambda h, _n: send(h, status, html_page(title).encode(), "text/html; charset=utf-8", **headers)


def robots(text: str) -> Callable[[BaseHTTPRequestHandler, int], None]:
    return lambda h, _n: send(h, 200, text.encode(), "text/plain")


def loopback_host(i: int) -> str:
    """127.0.0.<i> when it can be bound (Linux), else 127.0.0.1 (a new port is then the new host)."""
    try:
        with socket.socket() as s:
            s.bind((f"127.0.0.{i}", 0))
        return f"127.0.0.{i}"
    except OSError:
        return "127.0.0.1"


def closed_port_url(path: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# --------------------------------------------------------------------------------------------------
# Routes


def flaky(h: BaseHTTPRequestHandler, n: int) -> None:  # 503, 503, then 200
    if n < 2:
        send(h, 503, b"busy", "text/plain")
    else:
        send(h, 200, html_page("Flaky").encode(), "text/html")


def busy(h: BaseHTTPRequestHandler, n: int) -> None:  # 429 with Retry-After: 1, then 200
    if n == 0:
        send(h, 429, b"slow down", "text/plain", Retry_After="1")
    else:
        send(h, 200, html_page("Busy").encode(), "text/html")


def make_big(server_ref: list[Server]) -> Callable[[BaseHTTPRequestHandler, int], None]:
    def big(h: BaseHTTPRequestHandler, _n: int) -> None:  # no Content-Length: the body ends at close
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.end_headers()
        chunk = b"<p>" + b"x" * 65_000 + b"</p>\n"
        sent = 0
        try:
            while sent < BIG_TOTAL:
                h.wfile.write(chunk)
                sent += len(chunk)
        finally:
            server_ref[0].sent["/big"] = sent

    return big


def declared_big(h: BaseHTTPRequestHandler, _n: int) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.send_header("Content-Length", "10000000")
    h.end_headers()
    h.wfile.write(b"<html>" + b"y" * 1000)


def slow(h: BaseHTTPRequestHandler, _n: int) -> None:  # headers later than the read timeout
    time.sleep(1.2)
    send(h, 200, html_page("Slow").encode(), "text/html")


def drip(h: BaseHTTPRequestHandler, _n: int) -> None:  # a byte every 0.1 s: each read is in time
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.end_headers()
    for _ in range(30):
        h.wfile.write(b"z")
        h.wfile.flush()
        time.sleep(0.1)


CP1252_BODY = (
    "<html><head><title>Café “Crème”</title></head><body><article>"
    + "".join(f"<p>À la café, naïve façade — “quoted” words cost 5 € ({i}). {PARAGRAPH}</p>" for i in range(3))
    + "</article></body></html>"
).encode("cp1252")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            mp.delenv(name, raising=False)  # the loopback servers must be reached directly
        big_ref: list[Server] = []
        made = {
            "a": Server(
                loopback_host(1),
                {
                    "/robots.txt": robots("User-agent: *\nDisallow: /private\nCrawl-delay: 0.1\n"),
                    "/page.html": html(title="Page One", Set_Cookie="session=secret; Path=/"),
                    "/cp1252.html": lambda h, _n: send(h, 200, CP1252_BODY, "text/html; charset=windows-1252"),
                    "/redirect": lambda h, _n: send(h, 302, b"", Location="/page2.html"),
                    "/page2.html": html(title="Page Two"),
                    "/private/secret.html": html(title="Secret"),
                    "/image.png": lambda h, _n: send(h, 200, PNG, "image/png"),
                    "/notes.txt": lambda h, _n: send(h, 200, "Plain notes — ünïcode.\n".encode(), "text/plain; charset=utf-8"),
                    "/later.html": html(title="Later"),
                },
            ),
            # Our agent may fetch everything but only every 0.3 s; other agents nothing.
            "b": Server(
                loopback_host(2),
                {
                    "/robots.txt": robots("User-agent: personahub\nAllow: /\nCrawl-delay: 0.3\n\nUser-agent: *\nDisallow: /\n"),
                    **{f"/b{i}.html": html(title=f"B{i}") for i in range(1, 4)},
                },
            ),
            # No robots.txt (404): everything allowed. The retry and error cases.
            "e": Server(
                loopback_host(3),
                {
                    "/flaky": flaky,
                    "/busy": busy,
                    "/busy-long": lambda h, _n: send(h, 429, b"", "text/plain", Retry_After="120"),
                    "/missing": lambda h, _n: send(h, 404, b"nope", "text/plain"),
                    "/gone": lambda h, _n: send(h, 410, b"gone", "text/plain"),
                    "/big": make_big(big_ref),
                    "/declared-big": declared_big,
                },
            ),
            "f": Server(loopback_host(4), {"/slow": slow, "/drip": drip}),
            # robots.txt answers 503: the host counts as disallowed.
            "d": Server(
                loopback_host(5),
                {"/robots.txt": lambda h, _n: send(h, 503, b"", "text/plain"), "/d.html": html(title="D")},
            ),
        }
        # Redirects: a loop, one to another host (rate-limited and robots-checked there), one out of http(s).
        b_url = made["b"].url("/b1.html?via=g")
        made["g"] = Server(
            loopback_host(6),
            {
                "/loop": lambda h, _n: send(h, 302, b"", Location="/loop"),
                "/to-b": lambda h, _n: send(h, 301, b"", Location=b_url),
                "/to-ftp": lambda h, _n: send(h, 302, b"", Location="ftp://files.example/x"),
            },
        )
        big_ref.append(made["e"])
        try:
            yield made
        finally:
            for server in made.values():
                server.close()


@pytest.fixture(scope="module")
def crawl(servers: dict[str, Server]) -> dict[str, Any]:
    a, b, e, f, d = (servers[k] for k in "abefd")
    urls = [
        a.url("/page.html"),  # 0
        b.url("/b1.html"),  # 1
        a.url("/cp1252.html"),  # 2
        e.url("/flaky"),  # 3
        a.url("/redirect"),  # 4
        b.url("/b2.html"),  # 5
        a.url("/private/secret.html"),  # 6
        a.url("/image.png"),  # 7
        e.url("/busy"),  # 8
        f.url("/slow"),  # 9
        e.url("/missing"),  # 10
        a.url("/notes.txt"),  # 11
        e.url("/big"),  # 12
        d.url("/d.html"),  # 13
        closed_port_url("/c.html"),  # 14
        "ftp://example.org/file",  # 15
        "not a url",  # 16
        a.url("/page.html#again"),  # 17: a duplicate
        "http://user:secret@127.0.0.1:9/x",  # 18
        b.url("/b3.html"),  # 19
        e.url("/declared-big"),  # 20
        e.url("/busy-long"),  # 21
        f.url("/drip"),  # 22
        e.url("/gone"),  # 23
        a.url("/later.html"),  # 24
        servers["g"].url("/to-b"),  # 25
        servers["g"].url("/loop"),  # 26
        servers["g"].url("/to-ftp"),  # 27
    ]
    sends: list[tuple[str, float]] = []  # (host:port, when the fetcher let the request go)
    original_wait_turn = fetch._Fetcher._wait_turn

    def wait_turn(self: Any, url: Any) -> None:
        original_wait_turn(self, url)
        sends.append((f"{url.host}:{url.port}", time.monotonic()))

    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch._Fetcher, "_wait_turn", wait_turn)
        records = list(fetch_urls(urls, OPTIONS, source="test-list"))
    elapsed = time.monotonic() - started
    time.sleep(0.3)  # let /big's handler notice the closed connection
    logs = {name: list(server.log) for name, server in servers.items()}
    hosts = {name: server.base.removeprefix("http://") for name, server in servers.items()}
    sent_at = {name: [t for h, t in sends if h == host] for name, host in hosts.items()}
    return {"urls": urls, "records": records, "elapsed": elapsed, "logs": logs, "sent": dict(e.sent), "sent_at": sent_at}


def by_index(crawl: dict[str, Any]) -> dict[int, Record]:
    return {r.record: r for r in crawl["records"]}


def paths(crawl: dict[str, Any], host: str) -> list[str]:
    return [p for _, p, _ in crawl["logs"][host]]


# --------------------------------------------------------------------------------------------------
# The crawl over all hosts


def test_every_url_has_one_record_in_input_order(crawl: dict[str, Any]) -> None:
    records = crawl["records"]
    assert [r.record for r in records] == list(range(len(crawl["urls"])))
    assert all(r.source == "test-list" for r in records)


def test_html_pages_become_text_with_title_and_provenance(crawl: dict[str, Any], servers: dict[str, Server]) -> None:
    rec = by_index(crawl)[0]
    assert rec.error is None and rec.skip is None
    assert rec.title == "Page One"
    assert "lighthouse keeper" in rec.text
    assert "Home" not in rec.text  # navigation is boilerplate
    assert rec.url == servers["a"].url("/page.html")
    assert rec.metadata["http_status"] == 200 and rec.metadata["content_type"] == "text/html"
    assert datetime.fromisoformat(rec.fetched_at).tzinfo is not None


def test_declared_windows_1252_is_decoded(crawl: dict[str, Any]) -> None:
    rec = by_index(crawl)[2]
    assert rec.error is None, rec.error
    assert rec.title == "Café “Crème”"
    assert "naïve façade — “quoted” words cost 5 €" in rec.text
    assert rec.metadata["encoding"] == "cp1252"


def test_redirect_gives_the_final_url(crawl: dict[str, Any], servers: dict[str, Server]) -> None:
    rec = by_index(crawl)[4]
    assert rec.error is None and rec.title == "Page Two"
    assert rec.url == servers["a"].url("/page2.html")
    assert rec.metadata["requested_url"] == servers["a"].url("/redirect")


def test_redirects_across_hosts_loops_and_schemes(crawl: dict[str, Any], servers: dict[str, Server]) -> None:
    records = by_index(crawl)
    assert records[25].error is None and records[25].title == "B1"
    assert records[25].url == servers["b"].url("/b1.html?via=g")
    assert records[26].error == "fetch_failed: more than 5 redirects"
    assert paths(crawl, "g").count("/loop") == 6
    assert records[27].error.startswith("invalid_url: redirect to ftp://files.example/x")
    assert "/b1.html?via=g" in paths(crawl, "b")  # the hop went to b through b's own rate limit


def test_robots_txt_is_fetched_once_and_obeyed(crawl: dict[str, Any]) -> None:
    records = by_index(crawl)
    assert records[6].skip == "robots: disallowed by robots.txt"
    a_paths = paths(crawl, "a")
    assert a_paths.count("/robots.txt") == 1 and a_paths[0] == "/robots.txt"
    assert not any(p.startswith("/private") for p in a_paths)
    assert paths(crawl, "b").count("/robots.txt") == 1
    assert all(records[i].error is None and records[i].title == f"B{n}" for i, n in ((1, 1), (5, 2), (19, 3)))
    # robots.txt 404 → everything allowed; 503 (after retries) → the host is skipped, its pages never asked for.
    assert paths(crawl, "e")[0] == "/robots.txt" and records[3].error is None
    assert records[13].skip.startswith("robots: robots.txt unavailable (HTTP 503)")
    assert paths(crawl, "d") == ["/robots.txt"] * 3


def test_non_html_is_skipped_and_plain_text_kept(crawl: dict[str, Any]) -> None:
    records = by_index(crawl)
    assert records[7].skip == "non_html: image/png" and records[7].text is None
    assert records[11].text == "Plain notes — ünïcode.\n" and records[11].error is None


def test_retries_on_503_and_429_with_retry_after(crawl: dict[str, Any]) -> None:
    records = by_index(crawl)
    assert records[3].error is None and records[3].title == "Flaky"
    assert paths(crawl, "e").count("/flaky") == 3
    assert records[8].error is None and records[8].title == "Busy"
    busy_starts = [t for t, p, _ in crawl["logs"]["e"] if p == "/busy"]
    assert len(busy_starts) == 2 and busy_starts[1] - busy_starts[0] >= 0.95  # Retry-After: 1 honoured
    # A Retry-After beyond the cap is not waited for: one request, then the error.
    assert records[21].error == "http_error: 429 (Retry-After 120s over the 2s cap)"
    assert paths(crawl, "e").count("/busy-long") == 1


def test_client_errors_are_not_retried(crawl: dict[str, Any]) -> None:
    records = by_index(crawl)
    assert records[10].error == "http_error: 404" and records[10].metadata["http_status"] == 404
    assert records[23].error == "http_error: 410"
    assert paths(crawl, "e").count("/missing") == 1 and paths(crawl, "e").count("/gone") == 1


def test_size_cap_stops_reading(crawl: dict[str, Any]) -> None:
    records = by_index(crawl)
    assert records[12].error == "over_cap: body larger than 64000 bytes"
    # The server got a broken pipe long before the 50 MB it meant to send (socket buffers aside).
    assert crawl["sent"].get("/big", BIG_TOTAL) < BIG_TOTAL // 5
    assert records[20].error == "over_cap: Content-Length 10000000 larger than 64000 bytes"


def test_timeouts(crawl: dict[str, Any]) -> None:
    records = by_index(crawl)
    assert records[9].error == "fetch_failed: timeout (ReadTimeout)"
    assert paths(crawl, "f").count("/slow") == 3  # retried: 1 + retries
    assert records[22].error == "fetch_failed: timeout (body took longer than 0.6 s)"


def test_connection_failures_and_invalid_urls(crawl: dict[str, Any]) -> None:
    records = by_index(crawl)
    assert records[14].error.startswith("fetch_failed: robots.txt unreachable: ConnectError")
    assert records[15].error == "invalid_url: scheme 'ftp' is not http(s)"
    assert records[16].error == "invalid_url: whitespace in URL"
    assert records[17].skip == "duplicate_url"
    assert records[18].error == "invalid_url: credentials in URL"
    assert "secret" not in records[18].url


def test_cookies_are_never_sent_back(crawl: dict[str, Any]) -> None:
    headers = [h for _, _, h in crawl["logs"]["a"]]
    assert len(headers) > 3
    assert not any("Cookie" in h or "cookie" in h for h in headers)
    assert all(h["User-Agent"] == OPTIONS.user_agent for h in headers)


def test_per_host_delay_and_crawl_delay_are_respected(crawl: dict[str, Any]) -> None:
    """Client side, request starts are the delay apart (10 ms for the measuring hook); the server sees them through the
    kernel and a thread start, so its gaps get 50 ms of slack for a loaded machine."""
    for host, delay in {"a": 0.2, "b": 0.3, "e": 0.2, "f": 0.2, "d": 0.2, "g": 0.2}.items():
        for starts, slack in ((crawl["sent_at"][host], 0.01), (sorted(t for t, _, _ in crawl["logs"][host]), 0.05)):
            gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
            assert gaps and min(gaps) >= delay - slack, (host, gaps)
    assert len(crawl["sent_at"]["a"]) == len(crawl["logs"]["a"])  # every request went through the limiter


def test_hosts_are_fetched_in_parallel(crawl: dict[str, Any]) -> None:
    spans = {h: (min(t for t, _, _ in log), max(t for t, _, _ in log)) for h, log in crawl["logs"].items() if log}
    a, b, e = spans["a"], spans["b"], spans["e"]
    assert b[0] < a[1] and a[0] < b[1] and e[0] < a[1]  # the hosts' busy periods overlap
    requests = sum(len(log) for log in crawl["logs"].values())
    assert crawl["elapsed"] < requests * OPTIONS.per_host_delay_s * 0.6  # far below one-host-at-a-time


# --------------------------------------------------------------------------------------------------
# The reader, the window and early close


def test_read_url_list_uses_line_numbers(tmp_path: Path, servers: dict[str, Server]) -> None:
    a = servers["a"]
    path = tmp_path / "seeds.urls"
    path.write_text(f"# seed list\n\n{a.url('/page2.html')}\n   \n{a.url('/notes.txt')}\n# done\nmailto:x@y\n")
    options = FetchOptions(timeout_s=1.0, per_host_delay_s=0.05, retries=0, max_pending=1)
    records = list(read_url_list(str(path), ReaderOptions(), fetch_options=options))
    assert [(r.record, r.source) for r in records] == [(2, str(path)), (4, str(path)), (6, str(path))]
    assert records[0].title == "Page Two" and records[1].text.startswith("Plain notes")
    assert records[2].error.startswith("invalid_url")


def test_read_url_list_default_options_take_the_readers_cap() -> None:
    seen: dict[str, Any] = {}

    def fake(items: Any, options: FetchOptions, source: str) -> Iterator[Record]:
        seen["options"] = options
        return iter(())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "_fetch_items", fake)
        list(read_url_list("memory://x.urls", ReaderOptions(max_record_bytes=1000)))
    assert seen["options"].max_bytes == 1000 and seen["options"].per_host_delay_s == 1.0


def test_closing_early_stops_the_workers(servers: dict[str, Server]) -> None:
    b = servers["b"]
    before = len(b.paths())
    urls = [b.url(f"/b{i}.html") for i in range(1, 4)] + [b.url(f"/b{i}.html?again") for i in range(1, 4)]
    gen = fetch_urls(urls, OPTIONS, source="s")
    first = next(gen)
    started = time.monotonic()
    gen.close()
    # What shows the workers stopped is the count below; the time bound only catches a hang (the
    # five remaining URLs alone wait 1 s of per-host delay).
    assert time.monotonic() - started < 30
    assert first.record == 0 and first.title == "B1"
    assert len(b.paths()) - before <= 3  # robots.txt, b1 and at most the next one


# --------------------------------------------------------------------------------------------------
# Helpers


def test_check_url() -> None:
    assert check_url("https://Example.ORG/a?b=1#frag")[0] is not None
    assert str(check_url("https://Example.ORG/a?b=1#frag")[0]) == "https://example.org/a?b=1"
    assert check_url("http://")[1] == "invalid_url: no host"
    assert check_url("/relative/path")[1].startswith("invalid_url: scheme")
    assert check_url("javascript:alert(1)")[1].startswith("invalid_url: scheme 'javascript'")


def test_parse_crawl_delay() -> None:
    agent = OPTIONS.user_agent
    assert parse_crawl_delay(["User-agent: *", "Crawl-delay: 2.5"], agent) == 2.5
    both = ["User-agent: other", "User-agent: PersonaHub", "Disallow:", "Crawl-delay: 4", "", "User-agent: *", "Crawl-delay: 1"]
    assert parse_crawl_delay(both, agent) == 4.0
    assert parse_crawl_delay(["User-agent: personahub", "Disallow: /x", "User-agent: *", "Crawl-delay: 9"], agent) is None
    assert parse_crawl_delay(["User-agent: *", "Crawl-delay: soon  # comment"], agent) is None
    assert parse_crawl_delay([], agent) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    future = parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30)))
    assert future is not None and 25 <= future <= 31
