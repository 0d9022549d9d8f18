"""HTML → main text, and byte → str decoding for legacy encodings.

`extract_html` turns one HTML document (bytes, as found in a file or a WARC response) into its main
text with trafilatura, chosen over resiliparse by `bench/extractors.py` (BENCHMARKS.md, "HTML
extraction"): on the 110 real pages of webtext/html/trafilatura_cache it keeps 94 % of the
main-text snippets and leaks 10 % of the boilerplate ones (navigation, cookie banners, teasers),
against 90 % / 28 % for resiliparse's `main_content` mode. Resiliparse is 12-18x faster (≈ 700 vs
≈ 40-65 pages/s on one core), but boilerplate left in a document becomes made-up personas and LLM
tokens downstream, which cost far more than the extraction.

Decoding (`decode_bytes`), the same for HTML and plain text, in this order:

1. a byte-order mark;
2. UTF-8 (a text in a legacy encoding is practically never valid UTF-8 once it has non-ASCII bytes,
   while pages *declaring* ISO-8859-1 but sent as UTF-8 are common), also with a few stray bytes
   (≤ 0.1 %, replaced by U+FFFD) when valid multi-byte characters outnumber them 4 to 1;
3. the declared charset: HTTP / WARC `Content-Type` first, then `<meta charset>` / `http-equiv` in
   the first 4 KiB, with WHATWG's label mapping (ISO-8859-1 → windows-1252, Shift_JIS → cp932, GB2312
   → GB18030 …); a declared charset is used when it decodes with at most 0.1 % replacement characters;
4. detection with charset-normalizer on a 64 KiB sample, preferring windows-1252 on ties, and when
   detection has no language evidence while the non-ASCII bytes stand alone as Latin accents do
   (short Latin-1 texts otherwise come back as Big5);
5. otherwise "undecodable". NUL bytes (without a UTF-16/32 BOM) or > 10 % control characters after
   decoding mean binary content, also "undecodable".
"""

from __future__ import annotations

import codecs
import html as _html_entities  # the standard library module (this file is personahub.tasks.crawl.html)
import logging
import re
import threading
from dataclasses import dataclass

import charset_normalizer

SNIFF_BYTES = 4096  # where a <meta charset> must appear (the HTML spec says 1024; pages are sloppier)
DETECT_BYTES = 65536  # sample given to charset-normalizer
MAX_REPLACEMENT_RATIO = 0.001  # a declared charset producing more U+FFFD than this is not trusted

# trafilatura shares one lxml parser and lxml.html shares compiled XPaths between threads; concurrent
# extract() calls crash the process now and then (SIGSEGV inside lxml's text_content: our CI run on
# 2026-11-21, adbar/trafilatura#840 and #925, still open with lxml 6.1). One extraction at a time per
# process: threads only gained 10 % on 2 cores (67 vs 60 pages/s, the GIL holds most of the
# work); parallel extraction comes from processes (Dask workers).
_EXTRACT_LOCK = threading.Lock()

# WHATWG Encoding Standard label → Python codec, for the labels where Python's own lookup differs
# from what browsers do (browsers decode "ISO-8859-1" as windows-1252, "Shift_JIS" as cp932, …).
_WHATWG = {
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "latin-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "windows-874": "cp874",
    "shift_jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "cp932": "cp932",
    "csshiftjis": "cp932",
    "x-euc-jp": "euc_jp",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "euc_kr": "cp949",
    "x-mac-roman": "mac-roman",
    "iso-8859-8-i": "iso8859-8",
    "unicode-1-1-utf-8": "utf-8",
    "utf-16": "utf-8",  # a <meta> or header saying UTF-16 on a byte stream without BOM means UTF-8
    "utf-16-le": "utf-8",
    "utf-16-be": "utf-8",
    "x-user-defined": None,
}

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_HIGH_RUNS = re.compile(rb"[\x80-\xff]+")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts the same way
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class UndecodableError(ValueError):
    """Bytes that are binary or in no encoding we can determine."""


@dataclass(frozen=True)
class HtmlText:
    text: str | None  # main text; None with error
    title: str | None
    encoding: str  # the Python codec used ("" when decoding failed)
    error: str | None = None  # "<code>: <detail>": undecodable, empty_after_extraction, extraction_failed


def normalise_encoding(label: str | None) -> str | None:
    """The Python codec for a charset label (HTTP, <meta>, detector), WHATWG-mapped; None if unknown."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in _WHATWG:
        return _WHATWG[label]
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return _WHATWG.get(name, name)


def charset_from_content_type(content_type: str | None) -> str | None:
    """The charset parameter of a Content-Type header value, if any."""
    if not content_type:
        return None
    match = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type, re.IGNORECASE)
    return match.group(1) if match else None


def meta_charset(raw: bytes) -> str | None:
    """The charset declared by <meta charset> or <meta http-equiv content="...; charset=..."> near the top."""
    match = _META_CHARSET.search(raw[:SNIFF_BYTES])
    return match.group(1).decode("ascii", "replace") if match else None


def _looks_binary(text: str) -> bool:
    sample = text[:8192]
    if not sample:
        return False
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\f\v\x1b")
    return controls > len(sample) * 0.10


def _decode_checked(raw: bytes, codec: str) -> str | None:
    """raw decoded with codec, tolerating a few bad bytes; None if the codec clearly does not fit."""
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        pass
    except LookupError:
        return None
    text = raw.decode(codec, errors="replace")
    if text.count("\ufffd") > max(2, len(text) * MAX_REPLACEMENT_RATIO):
        return None
    return text


def _latin_like(sample: bytes) -> bool:
    """Non-ASCII bytes mostly alone (Latin accents), not in runs (CJK multi-byte characters)."""
    runs = _HIGH_RUNS.findall(sample)
    return bool(runs) and sum(map(len, runs)) <= 1.5 * len(runs)


def _detect(raw: bytes) -> str | None:
    """Best codec guess from charset-normalizer on a sample cut at a line end (never mid-character)."""
    sample = raw[:DETECT_BYTES]
    if len(raw) > DETECT_BYTES:
        cut = sample.rfind(b"\n")
        if cut > DETECT_BYTES // 2:
            sample = sample[: cut + 1]
    results = charset_normalizer.from_bytes(sample)
    best = results.best()
    if best is None:
        return None
    tied = [r for r in results if r.chaos <= best.chaos + 0.01 and r.coherence >= best.coherence - 0.01]
    if any("cp1252" in r.could_be_from_charset for r in tied):
        return "cp1252"
    if best.coherence == 0.0 and _latin_like(sample) and _decode_checked(raw, "cp1252") is not None:
        return "cp1252"  # no language evidence and isolated high bytes: Latin text, not a CJK guess
    return normalise_encoding(best.encoding) or best.encoding


def _mostly_utf8(raw: bytes) -> str | None:
    """UTF-8 with a few stray bytes (a pasted legacy character, a cut sequence) decoded with U+FFFD."""
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad > max(2, len(text) * MAX_REPLACEMENT_RATIO):
        return None
    good = len(text) - len(text.encode("ascii", "ignore")) - bad  # non-ASCII characters that decoded
    return text if good >= 4 * bad else None


def decode_bytes(raw: bytes, *declared: str | None) -> tuple[str, str]:
    """(text, codec) for raw bytes, trying the declared charsets in order; raises UndecodableError."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec), codec
            except UnicodeDecodeError:
                break
    if b"\x00" in raw[:8192] and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UndecodableError("binary content (NUL bytes)")
    try:
        text, codec = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, codec = _mostly_utf8(raw), "utf-8"
        for label in declared if text is None else ():
            codec = normalise_encoding(label)
            if codec is not None and (text := _decode_checked(raw, codec)) is not None:
                break
        if text is None:
            codec = _detect(raw)
            text = _decode_checked(raw, codec) if codec else None
        if text is None or codec is None:
            raise UndecodableError("no encoding fits (not UTF-8, declared charset failed, detection found none)")
    if _looks_binary(text):
        raise UndecodableError("binary content (control characters)")
    return text, codec


def html_title(html: str) -> str | None:
    match = _TITLE.search(html, 0, 200_000)
    if not match:
        return None
    title = " ".join(_html_entities.unescape(match.group(1)).split())
    return title or None


def main_text(html: str, url: str | None = None) -> str | None:
    """Main text of decoded HTML with trafilatura (boilerplate, navigation and comments removed)."""
    import trafilatura

    # trafilatura logs an ERROR or WARNING per page it finds nothing in; the Record carries that
    # reason already, so those lines would only flood the flow's log.
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    with _EXTRACT_LOCK:
        return trafilatura.extract(
            html,
            url=url,
            output_format="txt",
            include_comments=False,
            include_tables=True,
            include_images=False,
            include_links=False,
            deduplicate=False,
            with_metadata=False,
        )


def extract_html(raw: bytes, *, url: str | None = None, declared_encoding: str | None = None) -> HtmlText:
    """Decode an HTML document and extract its main text; never raises for bad content."""
    meta = meta_charset(raw)
    try:
        html, codec = decode_bytes(raw, declared_encoding, meta)
    except UndecodableError as exc:
        return HtmlText(None, None, "", error=f"undecodable: {exc}")
    title = html_title(html)
    try:
        text = main_text(html, url)
    except Exception as exc:  # noqa: BLE001 - an extractor bug on one page must not stop the crawl
        return HtmlText(None, title, codec, error=f"extraction_failed: {exc.__class__.__name__}: {str(exc)[:120]}")
    if not text or not text.strip():
        return HtmlText(None, title, codec, error="empty_after_extraction: no main text found")
    return HtmlText(text, title, codec)
