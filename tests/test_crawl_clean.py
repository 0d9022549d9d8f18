"""Per-document clean-up: normalisation, Gutenberg and boilerplate stripping, language id, filters."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from personahub.tasks.core.langid import LANGID_PREFIX_CHARS, detect_language
from personahub.tasks.crawl.clean import (
    CleanOptions,
    Cleaned,
    clean_document,
    normalise_text,
    strip_boilerplate_lines,
    strip_gutenberg,
)

SHARED_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GUTENBERG = SHARED_DATA / "webtext" / "text" / "gutenberg"
BOOKS = sorted(GUTENBERG.glob("*.txt")) if GUTENBERG.is_dir() else []
DEMO = Path(__file__).resolve().parents[1] / "corpus" / "demo"

# Two or three ordinary sentences per language the crawl is expected to meet.
SAMPLES = {
    "en": "The town council met on Tuesday evening to discuss the new cycle lanes. Most residents who spoke "
    "were in favour, although shop owners worried about deliveries and parking during the works.",
    "de": "Der Gemeinderat traf sich am Dienstagabend, um über die neuen Radwege zu sprechen. Die meisten "
    "Anwohner waren dafür, obwohl sich die Ladenbesitzer Sorgen um Lieferungen und Parkplätze machten.",
    "fr": "Le conseil municipal s'est réuni mardi soir pour discuter des nouvelles pistes cyclables. La plupart "
    "des habitants étaient favorables, même si les commerçants s'inquiétaient des livraisons.",
    "es": "El ayuntamiento se reunió el martes por la noche para hablar de los nuevos carriles bici. La mayoría "
    "de los vecinos estaba a favor, aunque los comerciantes temían por las entregas y el aparcamiento.",
    "ja": "町議会は火曜日の夜に新しい自転車レーンについて話し合いました。発言した住民の多くは賛成でしたが、"
    "商店主たちは工事中の配達や駐車について心配していました。",
}


# --- normalise_text (its behaviour is what doc_id is hashed from: it must not drift) ---------------


def test_normalise_text_nfc_newlines_trailing_space_and_strip() -> None:
    assert normalise_text("  Cafe\u0301  \r\nline two\t \rline three\n\n") == "Café\nline two\nline three"
    assert normalise_text("keep  inner   spaces\n\n\nand blank lines") == "keep  inner   spaces\n\n\nand blank lines"


# --- strip_gutenberg ---------------------------------------------------------------------------------

LICENCE_PHRASES = [
    "START OF THE PROJECT GUTENBERG",
    "END OF THE PROJECT GUTENBERG",
    "This ebook is for the use of anyone anywhere",
    "Project Gutenberg License",
    "PROJECT GUTENBERG LICENSE",
    "Literary Archive Foundation",
    "www.gutenberg.org",
]


@pytest.mark.skipif(not BOOKS, reason=f"Gutenberg books not found under {GUTENBERG}")
@pytest.mark.parametrize("book", BOOKS, ids=[b.stem for b in BOOKS])
def test_strip_gutenberg_on_real_books(book: Path) -> None:
    text = normalise_text(book.read_text(encoding="utf-8"))
    body = strip_gutenberg(text)
    for phrase in LICENCE_PHRASES:
        assert phrase.lower() not in body.lower(), phrase
    assert len(body) > 0.8 * len(text)
    assert body == body.strip()
    # The body is the book: its first and last lines are in the original, inside the markers.
    start = text.index("*** START OF THE PROJECT GUTENBERG")
    end = text.index("*** END OF THE PROJECT GUTENBERG")
    assert start < text.index(body[:200]) and text.index(body[-200:]) < end


@pytest.mark.skipif(not BOOKS, reason=f"Gutenberg books not found under {GUTENBERG}")
def test_strip_gutenberg_keeps_the_story() -> None:
    body = strip_gutenberg(normalise_text((GUTENBERG / "alice_in_wonderland.txt").read_text(encoding="utf-8")))
    assert "Alice was beginning to get very tired of sitting by her sister" in body
    assert body.endswith("THE END")


BODY = "CHAPTER I\n\nIt was a dark and stormy night; the rain fell in torrents.\n\nTHE END"


def test_strip_gutenberg_2000s_variant() -> None:
    text = (
        "The Project Gutenberg EBook of Foo, by Bar\n\nThis eBook is for the use of anyone anywhere at no cost.\n\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK FOO ***\n\n\n\n" + BODY + "\n\n\n\n"
        "End of the Project Gutenberg EBook of Foo, by Bar\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK FOO ***\n\n***** This file should be named 123.txt *****\n"
        "Updated editions will replace the previous one.\n"
    )
    assert strip_gutenberg(text) == BODY


def test_strip_gutenberg_1990s_small_print_variant() -> None:
    text = (
        "**The Project Gutenberg Etext of Foo**\n\n**START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START**\n"
        "Why is this \"Small Print!\" statement here? You know: lawyers.\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n" + BODY + "\n\n"
        "End of Project Gutenberg's Foo, by Bar\n"
    )
    assert strip_gutenberg(text) == BODY


def test_strip_gutenberg_start_marker_title_wrapped_over_two_lines() -> None:
    text = (
        "Header text of Project Gutenberg\n"
        "***START OF THE PROJECT GUTENBERG EBOOK THE ADVENTURES OF A VERY LONG\nTITLE INDEED***\n\n" + BODY + "\n\n"
        "End of this Project Gutenberg Etext of a very long title\n"
    )
    assert strip_gutenberg(text) == BODY


def test_strip_gutenberg_unchanged_without_markers() -> None:
    for text in [
        BODY,
        "Project Gutenberg has digitised over 70,000 books.\nIt was started by Michael Hart in 1971.",
        "She said: the end of the Project Gutenberg licence is near.\n*** START OF nothing ***",
    ]:
        assert strip_gutenberg(text) is text


# --- strip_boilerplate_lines ----------------------------------------------------------------------

BOILERPLATE = [
    "Skip to content",
    "Skip to main content",
    "Accept cookies",
    "Accept all cookies",
    "Reject all",
    "This website uses cookies to ensure you get the best experience.",
    "We use cookies to improve our service for you. You can find more information in our data protection declaration.",
    "Share on Facebook",
    "Share this article",
    "Tweet",
    "Follow us on Instagram",
    "All rights reserved",
    "© 2020 Postmedia Network Inc. All rights reserved.",
    "Luxurious Magazine © 2011-2019. All Rights Reserved.",
    "© 2019 www.example.de | Example GbR",
    "Subscribe to our newsletter",
    "Sign up for our newsletter and never miss a story!",
    "Read more »",
    "Continue reading →",
    "Back to top",
    "Log in",
    "Advertisement",
    "Privacy policy",
    "Your email address will not be published. Required fields are marked *",
    "Leave a Reply",
    "Home » Tech » Meta Outage Hits Facebook, Instagram and Messenger Worldwide",
    "Zum Inhalt springen",
    "Alle Rechte vorbehalten.",
    "Deine E-Mail-Adresse wird nicht veröffentlicht. Erforderliche Felder sind mit * markiert.",
    "Startseite » Beauty » Beauty-Tipps, die jede Braut kennen sollte",
    "Newsletter abonnieren",
    "Weiterlesen",
    "Tous droits réservés",
    "Lire la suite",
    "Accueil > Actualités > Décisions",
    "Todos los derechos reservados.",
    "Leer más",
    "  • Share on Twitter",
]

CONTENT = [
    "We accept cookies as payment at the school bake sale, within reason.",
    "We use cookies as the base for this cheesecake.",
    "Please share your thoughts with the group before Friday.",
    "Read more about the history of the abbey in chapter three.",
    "Home/work balance matters more than ever.",
    "Home is where the heart is.",
    "The museum reserves all rights to photographs taken inside.",
    "All rights reserved, the contract said, but the author had never seen it. She read it twice and then "
    "called her lawyer, who explained that the clause had been standard in the industry for decades and "
    "that nobody had ever challenged it in court; she decided she would be the first to try.",
    "Copyright law differs between countries.",
    "Subscribe and you will get the newsletter every Monday morning, with recipes from our readers.",
    "Advertisement revenue fell by 12% in 2019.",
    "Log in to the server with ssh and run the migration script.",
    "She skipped to the end of the book.",
    "Weiterlesen lohnt sich: im zweiten Teil wird es spannend.",
]


@pytest.mark.parametrize("line", BOILERPLATE)
def test_boilerplate_lines_are_removed(line: str) -> None:
    text = f"First paragraph of the article.\n{line}\nSecond paragraph of the article."
    assert strip_boilerplate_lines(text) == "First paragraph of the article.\nSecond paragraph of the article."


@pytest.mark.parametrize("line", CONTENT)
def test_real_content_is_kept(line: str) -> None:
    text = f"First paragraph.\n{line}\nSecond paragraph."
    assert strip_boilerplate_lines(text) is text


def test_boilerplate_inside_a_sentence_or_long_line_is_kept() -> None:
    long_line = "Accept cookies " + "and more words " * 20
    for text in ["Click here to accept cookies from strangers.", long_line.strip()]:
        assert strip_boilerplate_lines(text) == text


def test_boilerplate_removal_keeps_paragraph_breaks_single() -> None:
    text = "Skip to content\n\nTitle\n\nPara one.\n\nShare on Facebook\n\nPara two.\nTweet\nPara three.\n\nBack to top"
    assert strip_boilerplate_lines(text) == "Title\n\nPara one.\n\nPara two.\nPara three."
    # consecutive boilerplate lines between paragraphs leave one blank line
    text = "Para one.\n\nShare\nTweet\n\nSubscribe to our newsletter\n\nPara two."
    assert strip_boilerplate_lines(text) == "Para one.\n\nPara two."


@pytest.mark.skipif(not BOOKS, reason=f"Gutenberg books not found under {GUTENBERG}")
def test_boilerplate_removal_leaves_books_alone() -> None:
    # 15 books, ~190,000 lines of prose, verse and tables of contents: short lines of every kind.
    removed = []
    for book in BOOKS:
        lines = normalise_text(book.read_text(encoding="utf-8")).split("\n")
        kept = set(strip_boilerplate_lines("\n".join(lines)).split("\n"))
        removed += [line for line in lines if line and line not in kept]
    assert removed == ["                        [_All rights reserved._]"]  # Dracula's title page


def test_only_boilerplate_becomes_empty() -> None:
    assert strip_boilerplate_lines("Skip to content\nAccept cookies\n© 2024 Example Ltd") == ""


# --- detect_language ------------------------------------------------------------------------------


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_detect_language_per_supported_language(language: str) -> None:
    code, score = detect_language(SAMPLES[language])
    assert code == language
    assert 0.5 < score <= 1.0


def test_detect_language_undetermined_for_too_little_text() -> None:
    for text in ["", "   ", "Hi", "12 345 678 / 90 %", "--- *** ---"]:
        assert detect_language(text) == ("und", 0.0)


def test_detect_language_reads_only_a_prefix() -> None:
    german = (SAMPLES["de"] + " ") * (LANGID_PREFIX_CHARS // len(SAMPLES["de"]) + 1)
    assert detect_language(german + SAMPLES["en"] * 50)[0] == "de"


def test_detect_language_capitals_and_newlines() -> None:
    assert detect_language(SAMPLES["en"].upper())[0] == "en"
    assert detect_language(SAMPLES["fr"].replace(" ", "\n"))[0] == "fr"


def test_detect_language_is_deterministic() -> None:
    for text in SAMPLES.values():
        assert detect_language(text) == detect_language(text)


# --- CleanOptions and clean_document --------------------------------------------------------------


def test_clean_options_defaults_and_validation() -> None:
    options = CleanOptions()
    assert (options.min_chars, options.max_chars, options.languages) == (50, 5_000_000, ())
    assert options.strip_gutenberg and options.strip_boilerplate
    assert CleanOptions(languages=["EN", " de"]).languages == ("en", "de")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.min_chars = 1  # type: ignore[misc]
    for bad in [dict(min_chars=-1), dict(max_chars=0), dict(min_chars=10, max_chars=5)]:
        with pytest.raises(ValueError):
            CleanOptions(**bad)  # type: ignore[arg-type]


def test_clean_document_keeps_and_records_language() -> None:
    cleaned = clean_document("  " + SAMPLES["de"] + "  \r\n", CleanOptions())
    assert cleaned == Cleaned(text=SAMPLES["de"], language="de", language_score=cleaned.language_score)
    assert cleaned.kept and 0.5 < cleaned.language_score <= 1.0


def test_clean_document_filters_empty_and_too_short() -> None:
    assert clean_document(" \n\t ", CleanOptions()).filtered == "empty"
    assert clean_document("Skip to content\nAccept cookies", CleanOptions()).filtered == "empty"
    short = clean_document("Too short to be a document.", CleanOptions())
    assert (short.filtered, short.language, short.language_score) == ("too_short", "und", 0.0)
    assert clean_document("Too short to be a document.", CleanOptions(min_chars=10)).kept


def test_clean_document_language_filter() -> None:
    options = CleanOptions(languages=("en", "fr"))
    assert clean_document(SAMPLES["en"], options).kept
    assert clean_document(SAMPLES["fr"], options).kept
    dropped = clean_document(SAMPLES["de"], options)
    assert dropped.filtered == "language: de" and dropped.language == "de"
    assert clean_document(SAMPLES["ja"], CleanOptions(languages=("ja",))).kept
    numbers = "2019: 12,345 | 2020: 23,456 | 2021: 34,567 | 2022: 45,678 | 2023: 56,789"
    assert clean_document(numbers, CleanOptions()).language == "und"
    assert clean_document(numbers, options).filtered == "language: und"


def test_clean_document_over_cap_is_quarantined_before_stripping() -> None:
    text = "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n" + SAMPLES["en"] + "\n*** END OF THE PROJECT GUTENBERG"
    options = CleanOptions(max_chars=len(SAMPLES["en"]) + 10)
    cleaned = clean_document(text, options)
    # The stripped body would fit, but the cap applies to the normalised input, before any work.
    assert cleaned.quarantined == f"over_cap: {len(text)} chars"
    assert cleaned.filtered is None and not cleaned.kept
    assert clean_document(text, CleanOptions()).text == SAMPLES["en"]


def test_clean_document_strip_switches() -> None:
    text = f"Skip to content\n{SAMPLES['en']}\nShare on Facebook"
    assert clean_document(text, CleanOptions()).text == SAMPLES["en"]
    assert clean_document(text, CleanOptions(strip_boilerplate=False)).text == text
    gutenberg = f"*** START OF THE PROJECT GUTENBERG EBOOK X ***\n{SAMPLES['en']}\n*** END OF THE PROJECT GUTENBERG X"
    assert clean_document(gutenberg, CleanOptions(strip_gutenberg=False)).text == gutenberg


def test_clean_document_is_deterministic() -> None:
    docs = [*SAMPLES.values(), f"Skip to content\n{SAMPLES['de']}\nAlle Rechte vorbehalten."]
    first = [clean_document(d, CleanOptions()) for d in docs]
    assert first == [clean_document(d, CleanOptions()) for d in docs]


def test_demo_corpus_is_kept_whole_with_defaults() -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted(DEMO.glob("*")) if p.suffix in (".md", ".txt")]
    for path in DEMO.glob("*.jsonl"):
        texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(texts) >= 30
    for text in texts:
        cleaned = clean_document(text, CleanOptions())
        assert cleaned.kept and cleaned.language == "en"
        assert cleaned.text == normalise_text(text)  # nothing in these documents is boilerplate
