"""Persona quality filters: each filter's reason code, their order, the options, and precision on
Persona Hub's 1,000 real personas (must pass) against a junk set of what small models write."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from personahub.tasks.personas.filters import (
    REASONS,
    SKIPPABLE,
    PersonaFilterOptions,
    check_persona,
    filter_personas,
)

SHARED_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_PERSONAS = SHARED_DATA / "personahub" / "personas_1000.json"

GOOD = [
    # METHOD.md's and the examples
    "A pediatric nurse who gives injections to children and keeps them calm.",
    "A machine-learning researcher focused on neural network architectures and attention mechanisms",
    "A mobile gaming enthusiast who follows MOBA patch notes",
    "a retired schoolteacher who volunteers at the local food bank",
    # shapes the English heuristics must not reject
    "A sports car enthusiast saving up for a track day",
    "Parents of toddlers looking for screen-free activities",
    "The owner of a small bakery in Lyon",
    "A Premier League fan who travels to away games",
    "An amateur astronomer with a backyard telescope",
    "A hospital administrator worried about staffing shortages",
    "A beekeeper selling honey at the farmers' market",
    "A pharmaceutical company seeking faster clinical trial recruitment",
    "I am a retired hurling player from Ireland who coaches under-12s.",
    "As a film studies student specializing in cinematography",
    "Obsessed with prehistoric life and evolutionary biology.",
    "Maria Lopez, Software Engineer",
    "A New York Times Reader",
    "A Critic Who Can't Stand Hero Worshiping Attitude",
    "an Ethiopian Orthodox Tewahedo Priest",
    "An AI language model who recently became sentient",
    # phrases that are boilerplate or refusals only in another shape
    "A student who wants to read more books",
    "An early riser who runs at 5:30 am before work",
    "A user who likes to share on social media",
    "A sure-footed mountain guide who leads treks in Nepal",
    "No-nonsense factory manager focused on safety",
    "A nurse who cannot stand bureaucracy",
    "A survivor of 9/11 who speaks at schools",
    # other languages: no English role word needed
    "Un profesor de matemáticas que enseña a los niños",
    "Eine Ärztin, die Kinder impft und beruhigt",
    "番茄炒蛋中式餐饮店的厨师长",  # 13 characters, 26 columns
    "小学の先生で、子どもたちに科学を教えている人",
]

# (text, the filter that must reject it). The examples from SmolLM2-135M come first.
JUNK = [
    ("A 64 GB reporting replica of a 16-core machine running nightly analytics", "not_a_person"),
    ("The North Carolina Department of Natural Resources ... is addressing an outbreak of wildfire", "placeholder"),
    ("The North Carolina Department of Natural Resources is addressing an outbreak of wildfire", "not_a_person"),
    ("Awesome! It's great to have your perspective!", "refusal"),
    ("Anonymous User (3rd-day-freshman) at 10:29 AM on Friday", "boilerplate"),
    ("Jungle Camp Gold 2020-2021-11-05", "name_only"),
    ("A simple, simple person", "generic"),
    ("A1kg Electric Drum Roaster After Six Months in a Micro-Roastery", "title"),
    ("This article discusses the benefits of cold-brew coffee for small cafés.", "summary"),
    ("I'm sorry, but I can't determine a persona from this text.", "refusal"),
    ("As an AI language model, I cannot infer who would read this.", "refusal"),
    ("John Smith", "too_short"),
    ("Dr. Elizabeth Anne Montgomery", "name_only"),
    ("Sure, here is a persona: a nurse who works night shifts", "refusal"),
    ("Here is a persona for the text you provided.", "refusal"),
    ("I cannot help with that request, it may be inappropriate.", "refusal"),
    ("Unfortunately, the text does not mention any specific person.", "refusal"),
    ("There is no persona that can be inferred from this document.", "refusal"),
    ("Not applicable to this text.", "refusal"),
    ("The text does not provide enough information to identify a reader.", "refusal"),
    ("Certainly! A persona who would like this text is a gardener.", "refusal"),
    ("I hope this helps! Let me know if you need another persona.", "refusal"),
    ("Thank you for sharing this interesting article with me today.", "refusal"),
    ("Based on the text, the reader is probably a student of history.", "refusal"),
    ("user123 commented: great post, thanks for sharing!", "refusal"),
    ("The text discusses the history of the Roman Empire and its fall.", "summary"),
    ("In this article, we explore five ways to save money on groceries.", "summary"),
    ("The main idea of the passage is that exercise improves sleep.", "summary"),
    ("An overview of Kubernetes networking and service meshes", "summary"),
    ("A summary of the latest developments in quantum computing research", "summary"),
    ("A blog post about parenting tips for new mothers", "summary"),
    ("Click here to subscribe to our weekly newsletter and save 10%", "boilerplate"),
    ("All rights reserved. Copyright 2021 Example Media Group Inc.", "boilerplate"),
    ("We use cookies to improve your experience on our website.", "boilerplate"),
    ("Visit https://example.com/shop for the latest deals on shoes", "boilerplate"),
    ("Contact us at support@example.com for more information today", "boilerplate"),
    ("Posted by admin on March 3rd, 2019 in Uncategorized", "boilerplate"),
    ("2021-03-04 10:22:13 UTC — server restarted after maintenance", "boilerplate"),
    ("Page not found. The page you requested could not be found.", "boilerplate"),
    ("Python 3.11.4 (main, Jun 7 2023, 12:45:01) [GCC 11.3.0] on linux", "boilerplate"),
    ("Tags: gardening, tomatoes, organic, summer", "boilerplate"),
    ("Share this: Facebook Twitter LinkedIn Email", "boilerplate"),
    ("A recipe for sourdough bread with a long cold proof", "not_a_person"),
    ("The quick brown fox jumps over the lazy dog near the river", "not_a_person"),
    ("A new study on the effects of caffeine on memory in mice", "not_a_person"),
    ("The company announced record profits in the third quarter of 2023", "not_a_person"),
    ("Machine learning is a field of artificial intelligence that uses data", "not_a_person"),
    ("The weather today will be sunny with a high of 25 degrees", "not_a_person"),
    ("A beautiful sunset over the mountains with orange and pink clouds", "not_a_person"),
    ("A 3-bedroom house with a large garden and a two-car garage", "not_a_person"),
    ("A smartphone with a 6.1-inch display and 128 GB of storage", "not_a_person"),
    ("Apple's new iPhone features a titanium frame and USB-C port", "not_a_person"),
    ("The results of the survey were published in the journal Nature.", "not_a_person"),
    ("A list of the best restaurants in Paris for families", "not_a_person"),
    ("A guide to the best beaches for surfers in Portugal", "not_a_person"),
    ("A video game that lets players build their own cities", "not_a_person"),
    ("A beginner's guide to Python programming and data science", "not_a_person"),
    ("The patient's medical records and treatment history", "not_a_person"),
    ("A summer camp for kids in the Rocky Mountains", "not_a_person"),
    ("The Best Ten Hiking Trails in Northern California This Summer", "title"),
    ("How To Bake The Perfect Chocolate Chip Cookie At Home", "title"),
    ("Elon Musk Tesla SpaceX Twitter", "title"),
    ("A {persona} who is likely to read this text", "placeholder"),
    ("A ... who ... who is likely to read this text", "placeholder"),
    ("A [occupation] who reads about gardening", "placeholder"),
    ("A curious and friendly young man", "generic"),
    ("A person who is likely to read this text", "generic"),
    ("The reader of this article.", "generic"),
    ("Someone who would like this text.", "generic"),
    ("A typical reader of the given passage", "generic"),
    ("N/A", "too_short"),
    ("A nurse", "too_short"),
    ("A pediatric nurse", "too_short"),  # 17 characters, 3 words
]
# What slips through: the English heuristics leave text that is not English alone, and lid.176 calls
# this English (score 0.13), so even languages=("en",) keeps it.
KNOWN_MISSES = ["Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do"]


@pytest.mark.parametrize("text", GOOD)
def test_good_personas_pass(text: str) -> None:
    assert check_persona(text) is None


@pytest.mark.parametrize("text, reason", JUNK)
def test_junk_is_rejected_with_its_reason(text: str, reason: str) -> None:
    assert check_persona(text) == reason


def test_junk_set_size_and_coverage() -> None:
    assert len(JUNK) >= 40
    assert {reason for _, reason in JUNK} >= set(REASONS) - {"copies_example", "echoes_text", "language", "too_long"}


def test_known_misses_documented() -> None:
    for text in KNOWN_MISSES:
        assert check_persona(text) is None
        assert check_persona(text, options=PersonaFilterOptions(languages=("en",))) is None


# --- order, lengths, examples, echoes ------------------------------------------------------------
def test_reasons_come_in_a_fixed_order() -> None:
    assert REASONS[:4] == ("too_short", "too_long", "placeholder", "copies_example")
    assert REASONS[-1] == "language"
    # Several filters match: the first in REASONS wins.
    assert check_persona("Sure, here is a persona: A ... who ... reads") == "placeholder"
    assert check_persona("Sure! Visit https://example.com for the article") == "refusal"
    assert check_persona("This article discusses cookies. We use cookies on this site.") == "summary"


def test_lengths_in_columns_and_words() -> None:
    assert check_persona("A" + "b" * 18) == "too_short"  # 19 columns
    assert check_persona("A " + "very " * 120) == "too_long"  # 602 columns
    assert check_persona("  \"A retired schoolteacher\"  ") == "too_short"  # 3 words, quotes stripped
    opts = PersonaFilterOptions(min_chars=10, max_chars=40, min_words=2)
    assert check_persona("A retired schoolteacher", options=opts) is None
    assert check_persona("A retired schoolteacher who volunteers at the food bank", options=opts) == "too_long"
    assert check_persona("厨师长热爱烹饪") == "too_short"  # 7 characters: 14 columns


def test_copies_example_ignores_case_space_and_final_stop() -> None:
    examples = frozenset({"a marine biologist who studies coral reefs."})
    assert check_persona("A Marine  biologist who studies coral reefs", examples=examples) == "copies_example"
    assert check_persona("A marine biologist who studies kelp forests", examples=examples) is None


def test_echoes_text() -> None:
    long = "A marine biologist who has spent twenty years studying the coral reefs of the Pacific Ocean."
    assert check_persona(long, source_text=f"Intro.\n{long.upper()}\nMore.") == "echoes_text"
    assert check_persona(long, source_text="An unrelated text about bread.") is None
    # Mostly the text's opening, reworded at the edges.
    opening = "Tom Baker, a fisherman from Maine, has spent forty years hauling lobster traps off the rocky coast."
    persona = "A fisherman from Maine who has spent forty years hauling lobster traps off the rocky coast"
    assert check_persona(persona, source_text=opening + " " + "Filler text. " * 100) == "echoes_text"
    assert check_persona(persona, source_text="Filler text. " * 100 + opening) is None  # not the opening
    # A short persona that occurs in the text is fine: texts name their readers.
    short = "A marine biologist who studies coral reefs"
    assert check_persona(short, source_text=f"{short} is here.") is None


def test_language_filter() -> None:
    en = PersonaFilterOptions(languages=("en",))
    assert check_persona(GOOD[0], options=en) is None
    assert check_persona("a die-hard fan of Brad Pitt", options=en) is None  # lid.176 says Frisian (0.92)
    assert check_persona("Un profesor de matemáticas que enseña a los niños", options=en) == "language"
    assert check_persona("击剑爱好者，热衷追踪运动员生涯和比赛成绩", options=PersonaFilterOptions(languages=("zh",))) is None
    assert check_persona("击剑爱好者，热衷追踪运动员生涯和比赛成绩", options=en) == "language"


# --- options ---------------------------------------------------------------------------------------
def test_options_validate_and_round_trip() -> None:
    with pytest.raises(ValueError, match="min_chars"):
        PersonaFilterOptions(min_chars=50, max_chars=10)
    with pytest.raises(ValueError, match="skip"):
        PersonaFilterOptions(skip=("too_short",))
    with pytest.raises(ValueError, match="skip"):
        PersonaFilterOptions(skip=("nonsense",))
    opts = PersonaFilterOptions.from_dict({"languages": ["en", "de"], "skip": ["title"], "min_words": 3})
    assert opts.languages == ("en", "de") and opts.skip == ("title",)
    assert PersonaFilterOptions.from_dict(json.loads(json.dumps(opts.as_dict()))) == opts
    assert PersonaFilterOptions.from_dict(None) == PersonaFilterOptions()
    assert PersonaFilterOptions().languages == ()  # every language by default, as Persona Hub
    assert SKIPPABLE == frozenset(REASONS) - {"too_short", "too_long"}


@pytest.mark.parametrize("text, reason", [(t, r) for t, r in JUNK if r in SKIPPABLE - {"language"}])
def test_each_filter_can_be_skipped(text: str, reason: str) -> None:
    after = check_persona(text, options=PersonaFilterOptions(skip=(reason,)))
    assert after != reason
    if after is not None:  # a later filter may still catch it
        assert REASONS.index(after) > REASONS.index(reason)


def test_filter_personas_counts() -> None:
    texts = GOOD + [t for t, _ in JUNK]
    kept, rejected, counts = filter_personas(texts)
    assert kept == GOOD
    assert [r for _, r in rejected] == [r for _, r in JUNK]
    assert counts == Counter(r for _, r in JUNK)
    assert sum(counts.values()) + len(kept) == len(texts)


# --- Persona Hub's real personas -----------------------------------------------------------------------
@pytest.mark.skipif(not REAL_PERSONAS.is_file(), reason=f"{REAL_PERSONAS} not present")
def test_real_persona_hub_personas_pass() -> None:
    real = json.loads(REAL_PERSONAS.read_text(encoding="utf-8"))
    assert len(real) == 1000
    kept, rejected, counts = filter_personas(real)
    assert len(kept) / len(real) >= 0.98, f"rejected {len(rejected)}: {rejected[:20]}"
    assert rejected == []  # measured: all 1,000 pass with the defaults

    # Keeping English only removes the 10 Chinese/Spanish/Italian/Portuguese personas and one English
    # one that lid.176 cannot place ("a young St. Louis Browns fan").
    kept_en, rejected_en, counts_en = filter_personas(real, options=PersonaFilterOptions(languages=("en",)))
    assert set(counts_en) == {"language"}
    assert len(rejected_en) <= 12
    assert sum(t.isascii() for t, _ in rejected_en) <= 2
