"""Keeping API keys out of logs, results, cache entries and exceptions.

The key itself lives only in the gateway (name-mangled, out of repr) and the SDK client's header;
every text that may leave the gateway goes through `scrub` first.
"""

from __future__ import annotations

import re

# Local servers (llama-server, vLLM without --api-key) ignore the key but the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"

_SECRET_PATTERNS = (
    re.compile(r"(?i)bearer\s+\S+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"),  # OpenAI-style keys, also partly masked ones
)


def scrub(text: str, api_key: str | None = None) -> str:
    """`text` with the key (when a real one) and anything key-like replaced by ***."""
    if api_key and api_key != PLACEHOLDER_API_KEY:
        text = text.replace(api_key, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return text
