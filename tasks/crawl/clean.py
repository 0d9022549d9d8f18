"""Text clean-up applied to every reader's output before a document is kept."""

from __future__ import annotations

import unicodedata


def normalise_text(text: str) -> str:
    """NFC, unified newlines, no trailing whitespace: the form doc_id is hashed from."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()
