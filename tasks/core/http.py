"""HTTP details that the crawler's fetcher and the LLM gateway both need, written once.

* Retry-After: the pause a server asks for (retry-after-ms, delta-seconds or an HTTP date).
* Redaction: a URL as a record keeps it, and an endpoint as an error names it, without credentials.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The pause response headers ask for: retry-after-ms (OpenAI's) first, then Retry-After."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def redact_url(url: str) -> str:
    """The URL as a record keeps it: its user:password@ part replaced by "***@", the rest as is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def endpoint_label(url: str) -> str:
    """An endpoint as errors and logs name it: scheme://host[:port]/path, no credentials, no query
    (a query may carry a key)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    except ValueError:
        return "<endpoint>"
