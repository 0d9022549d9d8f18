"""Text clean-up applied to every reader's output before a document is kept.

clean_document runs, in order: normalise_text; the size cap (quarantine before any heavy work);
Project Gutenberg header/licence stripping; short boilerplate-line removal; the empty / too-short
filters; language identification on a prefix; the language filter. Every step is linear in the
text or bounded by a prefix, and makes a few copies of it at most; the figures (about 0.25 ms and
20 MB/s a core on real text) are in BENCHMARKS.md ("Language identification"), from bench/langid.py.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from personahub.tasks.core.langid import UNDETERMINED, detect_language



def normalise_text(text: str) -> str:
    """NFC, unified newlines, no trailing whitespace, no byte-order marks or soft hyphens (invisible,
    but they would make the same text hash to another doc_id): the form doc_id is hashed from."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\ufeff", "").replace("\u00ad", "")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


# --- Project Gutenberg -------------------------------------------------------------------------

# Header end: the "*** START OF THE/THIS PROJECT GUTENBERG EBOOK <title> ***" line (its title may
# wrap onto a second line), or, in texts of the 1990s, the "*END*THE SMALL PRINT!..." line.
_PG_START = re.compile(
    r"^\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG\b"
    r"(?:[^\n]*\*{3}[ \t]*$|[^\n]*\n[^\n]{0,100}\*{3}[ \t]*$|[^\n]*$)"
    r"|^\*END\*?[ \t]*THE SMALL PRINT\b[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
# Footer start, whichever comes first: "*** END OF THE/THIS PROJECT GUTENBERG EBOOK ...",
# "End of the Project Gutenberg EBook of ...", "End of Project Gutenberg's ...", "End of this
# Project Gutenberg Etext ...". Only at the start of a line, so prose that mentions them stays.
_PG_END = re.compile(
    r"^(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG\b|End of (?:the |this )?Project Gutenberg\b)",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg text, without its header and licence; else text unchanged."""
    # Two substring scans (C speed) spare every other document the regular expressions.
    if "Gutenberg" not in text and "GUTENBERG" not in text:
        return text
    start = _PG_START.search(text)
    body_from = start.end() if start else 0
    end = _PG_END.search(text, body_from)
    if start is None and end is None:
        return text
    return text[body_from : end.start() if end else len(text)].strip()


# --- boilerplate lines -------------------------------------------------------------------------

# Only whole lines of at most this many characters can be boilerplate: real paragraphs are longer,
# and a phrase inside a sentence is never touched.
BOILERPLATE_MAX_LINE = 200

# Each entry must match the whole (stripped) line, case-insensitively, apart from a leading bullet
# and trailing punctuation/arrows. Kept to phrases that are navigation, consent, sharing,
# subscription, comment-form or copyright furniture in English, German, French and Spanish.
_BOILERPLATE_PHRASES = [
    # skip links
    r"(?:skip|jump|go) to (?:the )?(?:main )?(?:content|navigation|menu|search|footer)",
    r"(?:direkt )?zum (?:haupt)?inhalt(?: springen)?|aller au contenu(?: principal)?|ir al contenido(?: principal)?",
    # cookie consent
    r"(?:accept|allow|reject|decline|refuse)(?: all)? cookies|(?:accept|allow|reject) all",
    r"this (?:web)?site uses cookies\b[^\n]{0,160}",
    # "We use cookies" only with a web word after it: a baking blog's line stays.
    r"we use cookies\b(?=[^\n]{0,160}(?:experience|brows|website|our site|service|analy|personali|privacy|consent"
    r"|traffic|advertis))[^\n]{0,160}",
    r"by (?:continuing|using) (?:to (?:use|browse) )?(?:this|our) (?:web)?site\b[^\n]{0,160}",
    r"(?:cookie|privacy) (?:settings|preferences|policy|notice)|manage cookies",
    r"(?:alle )?cookies akzeptieren|alle akzeptieren|(?:accepter|refuser) (?:les |tous les )?cookies|tout accepter"
    r"|aceptar (?:todas )?(?:las )?cookies|aceptar todo",
    r"(?:diese (?:web)?seite|wir) (?:verwendet|verwenden|nutzt|nutzen) cookies\b[^\n]{0,160}",
    # sharing and following
    r"share(?: this)?(?: article| post| page| story)?(?: on| via)?(?: facebook| twitter| x| linkedin| whatsapp"
    r"| pinterest| reddit| e-?mail)?",
    r"tweet(?: this)?|pin it|print(?: this (?:article|page))?|e-?mail(?: this (?:article|page))?",
    r"(?:follow|like|find) us(?: on (?:facebook|twitter|x|instagram|linkedin|youtube|pinterest|tiktok))?",
    r"(?:auf (?:facebook|twitter|x|linkedin|whatsapp|pinterest) )?teilen|drucken|(?:partager|imprimer)"
    r"(?: sur (?:facebook|twitter|x|linkedin|whatsapp|pinterest))?|compartir(?: en (?:facebook|twitter|x|whatsapp))?",
    # copyright lines that start with the sign or the word and a year ("© 2019 Example GmbH")
    r"(?:©|\(c\)|copyright(?: ©| \(c\))?) ?(?:\d{4}(?:[-–]\d{2,4})?)\b[^\n]{0,100}",
    # newsletters
    r"(?:subscribe|sign up)(?: now)? (?:to|for) (?:our|the) (?:free )?newsletters?\b[^\n]{0,80}",
    r"newsletter(?: abonnieren| anmelden)|(?:abonnez-vous|inscrivez-vous) à (?:notre|la) newsletter[^\n]{0,80}"
    r"|suscr[ií]bete a (?:nuestro|nuestra|el|la) (?:newsletter|bolet[ií]n)[^\n]{0,80}",
    # "more" links, back-to-top, accounts
    r"(?:read|view|see) more|continue reading|weiterlesen|mehr lesen|lire la suite|leer m[aá]s",
    r"back to top|(?:zurück )?nach oben|retour en haut(?: de (?:la )?page)?|volver arriba",
    r"log ?in|log ?out|sign ?in|sign ?out|sign ?up|register|anmelden|abmelden|registrieren|einloggen"
    r"|connexion|se connecter|s'inscrire|iniciar sesi[oó]n|registrarse",
    # ads, legal links
    r"advertisement|anzeige|werbung|publicité|publicidad|sponsored",
    r"terms (?:of (?:use|service)|and conditions)|impressum|datenschutz(?:erklärung)?|mentions légales|aviso legal",
    # comment forms
    r"leave a (?:reply|comment)|your email address will not be published\.[^\n]{0,80}"
    r"|required fields are marked ?\*?",
    r"deine e-mail-adresse wird nicht veröffentlicht\.[^\n]{0,80}|erforderliche felder sind (?:mit \* )?markiert ?\*?",
    # breadcrumbs: "Home » Tech » ...", "Startseite > Beauty > ..."
    r"(?:home|startseite|accueil|inicio)(?: ?[»›>|]| /) [^\n]{0,160}",
]
_BULLET = r"[-–•·|»›>*]"
# Matched against "\n" + text: the leading newline is a literal prefix, so the regex engine jumps
# from line to line, and the look-ahead turns blank lines and lines that start with a digit or a
# quote away before the phrases are tried (together 3x faster than a ^-anchored pattern).
_BOILERPLATE_LINE = re.compile(
    r"\n[ \t]*(?=[^\W\d_]|[©(]|" + _BULLET + r")(?:" + _BULLET + r"[ \t]*)?(?:"
    + "|".join(_BOILERPLATE_PHRASES)
    + r")[ \t.!:…»›→>|*]*(?=\n|\Z)",
    re.IGNORECASE,
)
# "All rights reserved" may stand anywhere in a short line ("Example Ltd © 2011-2019. All Rights
# Reserved."). A pattern that looks for it inside every line is slow, so it only runs on the rare
# documents that contain one of these spellings (substring tests run at C speed).
_RIGHTS_SPELLINGS = (
    "ights reserved", "ights Reserved", "IGHTS RESERVED", "echte vorbehalten", "echte Vorbehalten",
    "ECHTE VORBEHALTEN", "roits réservés", "roits Réservés", "ROITS RÉSERVÉS", "erechos reservados",
    "erechos Reservados", "ERECHOS RESERVADOS",
)  # fmt: skip
_RIGHTS_LINE = re.compile(
    r"\n[^\n]{0,120}(?:all rights reserved|alle rechte vorbehalten|tous droits réservés"
    r"|todos los derechos reservados)[^\n]{0,80}(?=\n|\Z)",
    re.IGNORECASE,
)


def _remove_lines(probe: str, pattern: re.Pattern[str]) -> str:
    r"""probe without the lines pattern matches (each match is "\n" + the line).

    Where a removed line stood between two blank lines, one of them goes too, so a removal never
    leaves a wider gap than the text had.
    """
    parts: list[str] = []
    pos = 0
    blank_before = False  # the line before the current removal is blank
    for m in pattern.finditer(probe):
        start, end = m.span()
        if start < pos or end - start - 1 > BOILERPLATE_MAX_LINE:
            continue
        kept = probe[pos:start]
        parts.append(kept)
        if kept:
            blank_before = kept.endswith("\n")
        pos = end
        if blank_before and probe.startswith("\n\n", pos):
            pos += 1
    if not parts:
        return probe
    parts.append(probe[pos:])
    return "".join(parts)


def strip_boilerplate_lines(text: str) -> str:
    """text without short lines that are page furniture (cookie banners, share buttons, ...).

    Conservative by construction: a line goes only if the whole of it is one of the phrases above
    (or a short line with "all rights reserved") and it is at most BOILERPLATE_MAX_LINE characters
    long. Returned stripped; text without such lines comes back unchanged.
    """
    probe = "\n" + text
    stripped = _remove_lines(probe, _BOILERPLATE_LINE)
    if any(spelling in stripped for spelling in _RIGHTS_SPELLINGS):
        stripped = _remove_lines(stripped, _RIGHTS_LINE)
    if stripped is probe:
        return text
    return stripped.strip()




# --- the whole clean-up --------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanOptions:
    """What clean_document keeps. The defaults suit web pages and short documents.

    min_chars 50: the demo corpus's documents (80-220 words) and short posts stay; what is shorter
    after clean-up is a title, a menu or an error page. max_chars 5,000,000: whole novels fit (Moby
    Dick is 1.24 M characters; Text-to-Persona reads a budgeted prefix anyway); runaway dumps are
    quarantined, before any further work, for a person to look at. languages: ISO 639-1 codes to
    keep; empty keeps every language (it is still recorded); with a list, "und" text is dropped.
    """

    min_chars: int = 50
    max_chars: int = 5_000_000
    languages: tuple[str, ...] = ()
    strip_gutenberg: bool = True
    strip_boilerplate: bool = True

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.max_chars < 1 or self.min_chars > self.max_chars:
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        # Accept any iterable of codes (a list from YAML) and compare case-insensitively.
        object.__setattr__(self, "languages", tuple(code.strip().lower() for code in self.languages))


@dataclass(frozen=True)
class Cleaned:
    """clean_document's answer: the cleaned text and, when it is not kept, why.

    filtered: "empty", "too_short" or "language: xx" (the document is dropped, counted by code).
    quarantined: "over_cap: N chars" (kept aside for a person to look at).
    language/language_score: "und"/0.0 when identification did not run (filtered earlier).
    """

    text: str
    language: str = UNDETERMINED
    language_score: float = 0.0
    filtered: str | None = None
    quarantined: str | None = None

    @property
    def kept(self) -> bool:
        return self.filtered is None and self.quarantined is None


def clean_document(text: str, options: CleanOptions) -> Cleaned:
    """Normalise, strip and filter one document (see the module docstring for the order)."""
    text = normalise_text(text)
    if len(text) > options.max_chars:
        return Cleaned(text=text, quarantined=f"over_cap: {len(text)} chars")
    if options.strip_gutenberg:
        text = strip_gutenberg(text)
    if options.strip_boilerplate:
        text = strip_boilerplate_lines(text)
    if not text:
        return Cleaned(text=text, filtered="empty")
    if len(text) < options.min_chars:
        return Cleaned(text=text, filtered="too_short")
    language, score = detect_language(text)
    if options.languages and language not in options.languages:
        return Cleaned(text=text, language=language, language_score=score, filtered=f"language: {language}")
    return Cleaned(text=text, language=language, language_score=score)
