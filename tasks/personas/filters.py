"""Quality filters on persona descriptions (METHOD.md "Building the hub", step 4).

check_persona(text) returns None for a usable persona, or the code of the first filter that rejects
it. Every persona the project makes (Text-to-Persona, Persona-to-Persona) goes through it, and the
stages count the codes, so a run's artifact says how many personas each filter removed.

The filters, in the order they run (cheapest first; REASONS lists the codes):

  too_short      fewer than min_chars columns or min_words words (a CJK character is 2 columns
                 and half a word: "番茄炒蛋中式餐饮店的厨师长" is a persona)
  too_long       more than max_chars columns
  placeholder    the prompt's shape or variables copied: "...", "…", "{persona}", "[name]", "<role>"
  copies_example one of the prompt's demonstration personas, copied
  refusal        a refusal or assistant chatter: "I'm sorry", "I cannot help", "As an AI",
                 "Sure, here is", "Here is a persona", "Awesome! ...", "The text does not mention"
  echoes_text    the source text copied: a long persona (echo_min_chars) found verbatim in it, or
                 one whose word trigrams mostly (echo_overlap) come from the text's opening
  name_only      a bare proper name: 1-4 capitalised words, none a role ("Dr. Elena Marquez")
  title          a headline in Title Case, 5+ words, no "who" ("A1kg Electric Drum Roaster After
                 Six Months in a Micro-Roastery")
  summary        a summary of the text: "This article discusses", "The text describes", "In this
                 post", "A summary of"
  boilerplate    page furniture: URLs, e-mail addresses, "click here", "all rights reserved",
                 cookie notices, timestamps and dates, mostly digits
  not_a_person   (English) no person in the head noun phrase and no "who" clause: "A 64 GB
                 reporting replica of a 16-core machine", "The North Carolina Department of ..."
  generic        (English) a bare "person"/"man"/"someone" with adjectives only: "A simple, simple
                 person"
  language       options.languages is set and fastText's lid.176 says another language (or none)

not_a_person and generic use an English lexicon (person and role nouns, the agent suffixes -er, -or,
-ist, -ian, -eer, -ee, -man, plus a stop list of things that end that way: computer, sensor, list);
before they reject a text they confirm with language identification that it is English, so Spanish,
Chinese or Italian personas are never removed for missing English role words. The other filters are
language-independent or match English phrases that do not occur in other languages.

Cost: 0.1-0.25 ms a persona, 4,000-9,000 a second on one core of a busy 2-core machine (regexes
compiled once; language identification only for the rare would-be not_a_person/generic rejections,
and once a persona when options.languages is set).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

REASONS: tuple[str, ...] = (
    "too_short",
    "too_long",
    "placeholder",
    "copies_example",
    "refusal",
    "echoes_text",
    "name_only",
    "title",
    "summary",
    "boilerplate",
    "not_a_person",
    "generic",
    "language",
)
# Filters that can be switched off (the length bounds are always on: set them instead).
SKIPPABLE = frozenset(REASONS) - {"too_short", "too_long"}


@dataclass(frozen=True)
class PersonaFilterOptions:
    """What check_persona accepts. Record as_dict() with the stage's parameters.

    min_chars 20 / max_chars 600 (columns: a CJK character counts 2): Persona Hub's shortest real
    personas are 13 Chinese characters (26 columns) and "movie buff who ..." sizes; its longest of
    1,000 is 344 characters. min_words 4: "A pediatric nurse" says too little. languages: ISO 639-1
    codes to keep; empty (the default) keeps every language, as Persona Hub does (it holds Chinese,
    Spanish, Italian, Portuguese personas); with a list, text with no detectable language ("und")
    is dropped too. echo_*: see echoes_text. skip: filter codes to switch off (from SKIPPABLE).
    """

    min_chars: int = 20
    max_chars: int = 600
    min_words: int = 4
    languages: tuple[str, ...] = ()
    echo_min_chars: int = 80
    echo_min_words: int = 8
    echo_overlap: float = 0.7
    echo_opening_chars: int = 500
    skip: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.max_chars < 1 or self.min_chars > self.max_chars:
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        if self.min_words < 0:
            raise ValueError(f"min_words must be >= 0, got {self.min_words}")
        if not 0.0 < self.echo_overlap <= 1.0:
            raise ValueError(f"echo_overlap must be in (0, 1], got {self.echo_overlap}")
        unknown = set(self.skip) - SKIPPABLE
        if unknown:
            raise ValueError(f"skip: unknown or required filters {sorted(unknown)}; skippable: {sorted(SKIPPABLE)}")
        # Lists from JSON/YAML parameters become tuples, so the options stay hashable and comparable.
        object.__setattr__(self, "languages", tuple(self.languages))
        object.__setattr__(self, "skip", tuple(self.skip))

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> "PersonaFilterOptions":
        return cls(**(params or {}))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["languages"] = list(self.languages)
        out["skip"] = list(self.skip)
        return out


DEFAULT_OPTIONS = PersonaFilterOptions()


def normalise_persona(text: str) -> str:
    """Collapsed whitespace, no wrapping quotes: the form persona_id is hashed from."""
    text = re.sub(r"\s+", " ", text).strip().strip("\"'“”").strip()
    return text


# --- length ------------------------------------------------------------------------------------
# Scripts written without spaces between words: a character is about half a word.
_NO_SPACE_SCRIPT = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]"
)


def _columns(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _words(text: str) -> int:
    tokens = text.split()
    if text.isascii():
        return len(tokens)
    total = 0
    for token in tokens:
        dense = len(_NO_SPACE_SCRIPT.findall(token))
        total += max(1, dense // 2) if dense else 1
    return total


# --- placeholders --------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(
    r"\.\.\.|…|\{[A-Za-z_]*\}|<[a-z_]+>|\[(?:insert|name|your|persona|occupation|role|job|profession|age|"
    r"location|city|country|company|topic|field|x)\b[^\]]*\]",
    re.IGNORECASE,
)

# --- refusals and assistant chatter (English) ---------------------------------------------------
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry\b|i apologi[sz]e|apologies\b|unfortunately\b"
    r"|(?:sure|certainly|of course|absolutely|okay|ok|great|awesome|excellent|thanks|thank you|hello|hi|hey"
    r"|yes|no problem|good question|great question|wow|nice|alright|understood|got it)\s*[!,.:]"
    r"|(?:sure|certainly|of course)\s+(?:here|thing|let|this|i)\b"
    r"|here(?:'s| is| are)\b|below is\b|the following (?:is|are)\b"
    r"|(?:no|none|n/?a|unknown|not applicable|not specified|not available|nothing)\s*(?:[.!:,]|$)"
    r"|not applicable\b|none of\b|no one\b|nobody\b"
    r"|it (?:is|'s) (?:unclear|not clear|difficult|hard|impossible|not possible)\b"
    r"|(?:based on|according to|from) the (?:given |provided |above )?"
    r"(?:text|passage|article|document|excerpt|information)\b"
    r")"
    r"|\bas an? (?:ai|artificial intelligence|language model|large language model|llm|ai assistant|chatbot"
    r"|virtual assistant)\b"
    r"|\bi(?: am|'m) (?:an? )?(?:ai (?:language model|assistant|model|chatbot)|(?:large )?language model"
    r"|virtual assistant|helpful assistant|chatbot)\b"
    r"|\bi (?:cannot|can't|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to|do not|don't)"
    r" (?:help|assist|provide|create|generate|comply|fulfil|fulfill|produce|write|answer|determine|identify|infer"
    r"|tell|say|make|complete|give|offer|do that|engage|support|describe|guess|know|have (?:enough|access|any))\b"
    r"|\b(?:the|this) (?:text|passage|article|document|excerpt|input) (?:does not|doesn't|did not|didn't)"
    r" (?:mention|provide|specify|contain|say|give|include|describe)\b"
    r"|\bthere (?:is|are) no (?:persona|information|mention|details|clear|specific|indication)\b"
    r"|\bnot enough (?:information|context|details)\b|\b(?:cannot|can't|impossible to) (?:be )?determined?\b"
    r"|\bi hope this helps\b|\blet me know if\b|\bfeel free to\b|\bi'?d be (?:happy|glad) to\b|\b(?:happy|glad) to help\b"
    r"|\bthanks? (?:you )?for (?:sharing|asking|your)\b|\b(?:it's|it is) (?:great|nice|good) to (?:have|hear|see)\b"
    r"|\bas requested\b",
    re.IGNORECASE,
)

# --- summaries of the text (English) ------------------------------------------------------------
_DOC_NOUN = (
    r"(?:text|article|passage|document|post|blog post|blog|page|web ?page|piece|essay|story|paper|report|excerpt"
    r"|snippet|content|study|review|book|chapter|section|video|podcast|guide|tutorial|code|script|e-?mail|letter"
    r"|message|thread|discussion|conversation|news|speech|poem|recipe|website|site|source|material|writing|entry"
    r"|abstract|paragraph|summary|transcript|announcement|press release|forum)"
)
_SUMMARY_VERB = (
    r"(?:discusses|describes|explains|provides|presents|talks|covers|focuses|highlights|outlines|examines|explores"
    r"|details|introduces|offers|shows|argues|reports|contains|mentions|gives|reviews|analy[sz]es|summari[sz]es"
    r"|tells|deals|concerns|refers|lists|includes|features|emphasi[sz]es|suggests|addresses|delves|compares|walks"
    r"|aims|looks|discussed|described|shares|recounts|reflects|criticizes|criticises|praises)"
)
_SUMMARY = re.compile(
    rf"^(?:(?:this|the|that|the given|the provided|the above) {_DOC_NOUN} (?:{_SUMMARY_VERB}|is about|is (?:a|an|the)\b"
    r"|was\b|are\b|seems|appears|is written|was written|is intended|is aimed|is targeted|would)"
    rf"|(?:the|this) (?:author|writer|speaker|narrator)s? {_SUMMARY_VERB}\b"
    rf"|in (?:this|the) {_DOC_NOUN}\b"
    r"|(?:the )?(?:main|key|central|primary) (?:idea|topic|point|theme|message|subject|focus)s? (?:of|is|are)\b"
    r"|(?:summary|tl;? ?dr|overview|in summary|to summari[sz]e|in short|in conclusion)\b"
    rf"|(?:it|this) (?:is|was) (?:a|an) {_DOC_NOUN}\b"
    r"|(?:a|an|the) (?:summary|overview|synopsis|description|analysis|explanation|introduction|recap) (?:of|about)\b"
    rf"|(?:a|an) {_DOC_NOUN} (?:about|on|discussing|describing|explaining|that (?:discusses|describes|explains))\b)",
    re.IGNORECASE,
)

# --- boilerplate --------------------------------------------------------------------------------
# Page furniture in the shapes it takes on a page, not the words alone: "a student who wants to read
# more books" and "an early riser who runs at 5:30 am" are personas.
_WEEKDAY_OR_MONTH = r"(?:mon|tue|wed|thu|fri|sat|sun|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_BOILERPLATE = re.compile(
    r"https?://|\bwww\.[a-z0-9]|\b[\w.+-]+@[\w-]+\.[a-z]{2,}\b"
    r"|\bclick here\b|^read more\b|\bread more\s*(?:[»›>→]|$)|\bsubscribe (?:now|today|to our|for free|here)\b"
    r"|\bsign up (?:now|today|for (?:our|free)|here)\b|\bfollow us (?:on|for)\b|\badd to (?:cart|basket)\b"
    r"|\b(?:buy|shop|order) now\s*(?:[!»›>→]|$)|\bskip to (?:main )?content\b|\bback to top\b"
    rf"|^(?:posted|published|written|updated) (?:on|by)\b|\b(?:posted|published) on (?:\d|{_WEEKDAY_OR_MONTH}\b)"
    r"|\blast (?:updated|modified)\b|\ball rights reserved\b|©|\bcopyright\s+(?:\(c\)\s*)?\d{4}"
    r"|\b(?:we|this (?:site|website)) uses? cookies\b|\b(?:accept|allow) (?:all )?cookies\b"
    r"|\bcookie (?:policy|settings|preferences|consent|banner|notice)\b"
    r"|\b(?:read|see|view|our) (?:privacy policy|terms of (?:use|service))\b"
    r"|\bby (?:using|continuing to use) this (?:site|website)\b"
    r"|\benable javascript\b|\bjavascript (?:is )?(?:disabled|required)\b"
    r"|\bpage not found\b|\b404 (?:error|not found|page)\b|\berror 404\b"
    r"|^(?:title|subject|re|fwd|tags?|categor(?:y|ies)|keywords|filed under|related(?: posts)?|share this)\s*:"
    r"|^share (?:this|on)\b|\bshare (?:this|on) (?:facebook|twitter|linkedin|pinterest|whatsapp|reddit|email)\b"
    r"|\b(?:log|sign) in to (?:comment|reply|continue|view|post)\b|\b\d+ (?:comments|replies)\s*$"
    r"|\b\d{1,2}:\d{2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.)?\s*(?:on\s+)?"
    rf"(?:{_WEEKDAY_OR_MONTH}\b|utc\b|gmt\b|[ecmp][sd]t\b)"
    r"|\b\d{1,2}:\d{2}:\d{2}\b|\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b\d{1,2}\.\d{1,2}\.\d{4}\b",
    re.IGNORECASE,
)
_DIGIT = re.compile(r"\d")

# --- names and titles ---------------------------------------------------------------------------
_NAME_PARTICLES = frozenset(
    "de da di del della der den van von la le du dos das bin ibn al el y of the and st st.".split()
)
_TITLE_FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with and or but nor as vs vs. via into over per de la le".split()
)
_HONORIFIC = re.compile(r"^(?:dr|mr|mrs|ms|mx|prof|sir|dame|rev|fr|sr|jr|st)\.?$", re.IGNORECASE)

# --- English lexicon of persons -----------------------------------------------------------------
# Nouns that name a person or a group of people without an agent suffix (or with one the suffix rule
# leaves out: -ant, -ent, -ess, -ic). Plurals are handled by _is_person_word.
_PERSON_WORDS = frozenset(
    """
    person people persons folk folks human humans individual someone somebody anyone anybody everyone everybody
    man men woman women guy gal girl boy lady ladies gentleman gentlemen child children kid kids baby infant toddler
    teen teenager adolescent youth adult elder senior junior minor
    mom mum mother dad father parent grandparent grandma grandpa granny grandmother grandfather son daughter wife
    husband spouse partner sibling sister brother aunt uncle cousin nephew niece twin fiance fiancee widow widower
    bride groom family couple household friend neighbour neighbor roommate classmate colleague coworker peer
    introvert extrovert ambivert star superstar celebrity sensation icon legend idol prodigy personality figure
    playwright
    fan buff geek nerd junkie addict aficionado connoisseur devotee afficionado otaku cosplayer foodie hipster
    expert pro professional specialist guru maven whiz veteran newbie novice rookie amateur enthusiast hobbyist
    student pupil graduate undergraduate postgraduate alumnus alumna alumni scholar academic fellow intern trainee
    apprentice candidate applicant participant contestant entrant finalist
    nurse midwife doula surgeon physician doctor medic paramedic dentist vet clinician pharmacist therapist
    psychiatrist psychologist patient caregiver carer chef cook baker butcher barista bartender waiter waitress
    host hostess maid butler nanny babysitter housekeeper janitor custodian concierge
    clerk staff staffer employee employer boss chief ceo cto cfo coo cio founder cofounder entrepreneur owner
    executive exec president vice-president chairman chairwoman chairperson chair director manager supervisor
    foreman lead head administrator admin official officer diplomat ambassador envoy delegate representative
    politician senator congressman congresswoman legislator mayor governor minister secretary councillor councilor
    judge lawyer attorney barrister solicitor paralegal notary advocate activist campaigner lobbyist volunteer
    citizen resident native local immigrant emigrant migrant expat expatriate refugee nomad tourist traveler
    traveller backpacker pilgrim commuter passenger pedestrian driver pilot captain sailor crew astronaut
    soldier marine sergeant lieutenant colonel general admiral commander private corporal major cadet recruit
    cop police policeman policewoman detective sheriff ranger guard firefighter lifeguard agent spy
    tenant landlord landlady homeowner homemaker housewife househusband retiree pensioner survivor victim
    athlete player sportsman sportswoman coach trainer referee umpire jockey
    artist artisan craftsman craftswoman musician singer dancer actor actress model comedian magician poet novelist
    author writer journalist reporter editor blogger vlogger youtuber influencer streamer podcaster critic reviewer
    photographer filmmaker director producer designer architect engineer developer programmer coder hacker
    analyst scientist researcher economist historian philosopher theologian linguist translator interpreter
    teacher educator tutor lecturer professor instructor principal dean librarian archivist curator collector
    mathematician statistician physicist chemist biologist ecologist geologist astronomer
    farmer rancher gardener fisherman fisher hunter mechanic technician electrician plumber carpenter welder
    tailor seamstress jeweler jeweller barber hairdresser stylist beautician cosmetologist
    merchant vendor dealer trader broker banker investor accountant auditor actuary consultant contractor
    freelancer assistant attendant servant customer client consumer user subscriber buyer shopper reader viewer
    listener audience follower supporter opponent critic skeptic sceptic believer atheist agnostic
    christian muslim jew buddhist hindu sikh catholic protestant mormon pagan monk nun priest pastor rabbi imam
    cleric bishop pope missionary deacon vicar chaplain shaman
    king queen prince princess duke duchess knight noble peasant slave heir heiress
    member leader team group crowd community club society committee board panel jury staff squad band choir
    orchestra troupe tribe clan gang generation millennial boomer zoomer
    superintendent recipient respondent correspondent dependent proponent incumbent president regent resident
    informant occupant claimant defendant plaintiff descendant inhabitant protestant militant tyrant savant
    confidant dissident graduand sergeant lieutenant peasant merchant servant migrant immigrant emigrant tenant
    accountant consultant assistant attendant applicant participant contestant entrant student parent client
    patient agent adherent devotee advocate delegate graduate associate affiliate
    mechanic medic cleric critic skeptic sceptic academic fanatic diabetic cynic romantic eccentric mystic
    """.split()
)
# Words that end like an agent noun but are things, or comparatives and particles.
_NOT_PERSON = frozenset(
    """
    computer server paper water number center centre letter order cluster container printer controller compiler
    browser router filter folder layer parameter chapter quarter corner border matter power tower flower river summer
    winter weather powder leather butter answer other another together never ever however whether after under over
    rather further either neither finger shoulder poster banner sticker trailer thriller blockbuster bestseller
    register disaster character cancer fever liver cover silver copper timer buffer header footer marker pointer
    adapter charger transformer encoder decoder tokenizer optimizer scheduler container trigger scanner
    sensor processor factor sector vector error color colour floor door mirror tractor reactor indicator generator
    calculator elevator refrigerator simulator accelerator behavior behaviour humor humour honor honour labor labour
    favor favour flavor flavour minor manor meteor corridor terror horror razor harbor harbour vapor vapour tremor
    rumor rumour armor armour decor interior exterior monitor motor anchor mentor emperor
    list mist wrist twist playlist checklist wishlist exist assist resist insist persist consist fist gist heist
    median meridian bayesian gaussian hessian jacobian laplacian euclidean boolean
    coffee tree fee degree knee bee free three guarantee jamboree toffee referee
    german roman norman talisman ottoman doberman superman caiman
    older younger newer better bigger larger smaller higher lower greater faster slower longer shorter earlier later
    latter inner outer upper super proper sheer clever bitter tender sober eager former
    twitter facebook youtube tiktok instagram reddit
    offer gender cooler heater boiler fryer mixer blender toaster roaster grinder dryer washer cutter
    burger dinner supper lager beer cider
    """.split()
) - _PERSON_WORDS
_PERSON_SUFFIXES = (
    "er", "or", "ist", "ian", "eer", "ee", "man", "men", "woman", "women", "person", "people", "phile", "wright"
)
_GENERIC_WORDS = frozenset(
    """person persons people man men woman women individual individuals someone somebody anyone anybody everyone
    human humans guy guys folks user users girl boy lady gentleman soul""".split()
)

# Who the persona is to the text, and nothing else: "who would read this text", "of this article".
_META = re.compile(
    r"\s*,?\s*(?:\b(?:who|that)\b[^.;]*?|\bof)\s+(?:this|the|that|these|given|above|provided)\s+(?:given |provided |above )?"
    r"(?:text|article|passage|post|document|piece|content|story|blog|page|essay|excerpt|texts|articles|posts)\b[\s.!]*$"
)
_AUDIENCE_WORDS = frozenset(
    """reader readers writer writers author authors audience viewer viewers listener listeners fan fans user users
    consumer consumers follower followers subscriber subscribers""".split()
)
_VAGUE_WITH_META = _GENERIC_WORDS | _AUDIENCE_WORDS
_TOKEN = re.compile(r"[a-z]+(?:['’][a-z]+)?|\d[\w.,]*|[;:()!?\"]")
# A "who" clause is about a person; these adjectives take a person as their subject.
_PERSON_CLAUSE = re.compile(
    r"\bwho(?:m|se|'s|’s)?\b|\b(?:interested|fascinated|obsessed|passionate|curious|enthusiastic|keen|fond|nostalgic"
    r"|skeptical|sceptical|knowledgeable|devoted|proud|worried|concerned|excited|eager)"
    r" (?:in|about|by|with|on|of|for|to)\b",
    re.IGNORECASE,
)
# A persona in the first person ("I am a ...", "We are ...") describes its speaker: a person.
_FIRST_PERSON = re.compile(r"^(?:i am|i'm|i’m|we are|we're|we’re|my persona is)\b")
# Openers before the head noun phrase.
_OPENER = re.compile(
    r"^(?:(?:as|this persona is)\s+|(?:one|some|many|most|all|each|any|both|two|three"
    r"|several|few|a few|a couple|a pair|a team|a group) of (?:the |these |those |my |our )?)",
)
# Organisations count as a group of people when a clause says what they do or seek: "A pharmaceutical
# company seeking ...", "An architectural firm known for ..." (Persona Hub has such personas), not in
# a statement: "The company announced record profits", "The Department of Natural Resources is ...".
_ORG_WORDS = frozenset(
    """organization organisation company firm agency startup nonprofit charity foundation institution institute
    association union party corporation business enterprise brand studio label school university college
    hospital clinic department ministry government council bureau office ngo cooperative collective lab
    laboratory network publication newspaper magazine outlet retailer chain""".split()
)
_ORG_CLAUSE = frozenset(
    """known based that which dedicated focused founded run owned located committed devoted specialized
    specialised tasked responsible interested""".split()
)
# The head noun phrase ends at a preposition, a relative word, a common verb or punctuation.
_BOUNDARY = frozenset(
    """of in at for from by with without on about to into onto through over under across near since during like as
    than because while where when which that whose whom
    is are was were be been being has have had will would can could should may might must do does did
    ; : ( ) ! ? \"""".split()
)
_HEAD_MAX_TOKENS = 10

_TRIGRAM_WORD = re.compile(r"\w+")


def _is_person_word(word: str) -> bool:
    word = word.replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    if word in _PERSON_WORDS:
        return True
    if word in _NOT_PERSON:
        return False
    candidates = [word]
    if len(word) > 3 and word.endswith("s"):
        if word.endswith("ies"):
            candidates.append(word[:-3] + "y")
        if word.endswith("es"):
            candidates.append(word[:-2])
        candidates.append(word[:-1])
    for cand in candidates:
        if cand in _PERSON_WORDS:
            return True
        if cand in _NOT_PERSON or len(cand) < 5:
            continue
        if cand.endswith(_PERSON_SUFFIXES) and not cand.endswith(("ness", "ment", "ship", "ism")):
            return True
    return False


# Words that mark a short text as English (not also common words of another Latin-script language).
_ENGLISH_MARKERS = frozenset(
    """the of and who whose with for from their his her is are was were about this that which at by to has have
    its they them into than""".split()
)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\uac00-\ud7af\u1100-\u11ff]")
_ASCII_WORD = re.compile(r"[a-z]+")


def _language(text: str) -> str:
    """fastText's language (tasks/core/langid.detect_language), corrected for its two confusions on
    persona-sized text, measured on Persona Hub's 1,000 personas: English naming a fan or a team is
    taken for Frisian ("fan" is Frisian for "of"; 12 of 978 English personas), and Chinese with no
    common function characters for Hungarian. ASCII text with two English function words ("a"/"an"
    counts when it leads: "a die-hard fan of Brad Pitt") is English; Han text without kana or
    hangul is Chinese."""
    code = _detect_language(text)[0]
    if code == "en" or code == "zh":
        return code
    if text.isascii():
        words = _ASCII_WORD.findall(text.lower())
        markers = {w for w in words if w in _ENGLISH_MARKERS}
        if words and words[0] in ("a", "an"):
            markers.add("a")
        return "en" if len(markers) >= 2 else code
    letters = sum(ch.isalpha() for ch in text)
    if letters and len(_HAN.findall(text)) >= 0.5 * letters and not _KANA_HANGUL.search(text):
        return "zh"
    return code


def _is_english(text: str) -> bool:
    """Whether the English-only filters may reject text: its letters are mostly ASCII and it is
    English (_language)."""
    letters = [ch for ch in text[:300] if ch.isalpha()]
    if not letters or sum(ch.isascii() for ch in letters) < 0.9 * len(letters):
        return False
    return _language(text) == "en"


def _detect_language(text: str) -> tuple[str, float]:
    from personahub.tasks.core.langid import detect_language  # fastText, loaded on first use

    return detect_language(text)


def _name_or_title(text: str) -> str | None:
    """'name_only' for a bare proper name, 'title' for a Title Case headline, else None."""
    tokens = text.rstrip(" .!?,;:").split()
    words = [t for t in tokens if any(ch.isalpha() for ch in t)]
    cased = [w for w in words if w.lstrip("\"'(“‘").lower() not in _NAME_PARTICLES]
    if not cased:
        return None
    first_upper = [w.lstrip("\"'(“‘")[:1].isupper() or _HONORIFIC.match(w) is not None for w in cased]
    if len(tokens) <= 4:
        if all(first_upper) and not any(
            _is_person_word(t) for w in words for t in re.findall(r"[a-z]+", w.lower())
        ):
            return "name_only"
        return None
    content = [w for w in words if w.lower() not in _TITLE_FUNCTION_WORDS]
    if len(content) < 4 or text.isupper():
        return None
    upper = sum(w[:1].isupper() or w[:1].isdigit() for w in content)
    # "an Ethiopian Orthodox Tewahedo Priest" and "A Critic Who Can't Stand ..." are personas.
    if upper == len(content) and text[:1].isupper() and not _PERSON_CLAUSE.search(text):
        if not _is_person_word(re.sub(r"[^a-z'’]", "", content[-1].lower())):
            return "title"
    return None


def _echoes(text_low: str, source_text: str, options: PersonaFilterOptions) -> bool:
    """The persona (lower-cased) copies source_text: verbatim when it is at least echo_min_chars
    long (shorter ones may well occur in a text that names its readers), or, from echo_min_words
    words, with echo_overlap of its word trigrams in the text's first echo_opening_chars."""
    source = normalise_persona(source_text).lower()
    if len(text_low) >= options.echo_min_chars and text_low in source:
        return True
    words = _TRIGRAM_WORD.findall(text_low)
    if len(words) < options.echo_min_words:
        return False
    opening = _TRIGRAM_WORD.findall(source[: options.echo_opening_chars])
    seen = {tuple(opening[i : i + 3]) for i in range(len(opening) - 2)}
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return sum(g in seen for g in grams) >= options.echo_overlap * len(grams)


def _boilerplate(text: str) -> bool:
    if _BOILERPLATE.search(text):
        return True
    visible = len(text) - text.count(" ")
    return visible > 0 and len(_DIGIT.findall(text)) > 0.3 * visible


def _not_a_person(text: str, low: str) -> str | None:
    """'not_a_person' or 'generic' for English text that names no person, else None."""
    if _FIRST_PERSON.match(low):
        return None
    # "... who is likely to read this text" says nothing about the person: judge what is left.
    core = _META.sub("", low, count=1)
    if _PERSON_CLAUSE.search(core):
        return None
    rest = _TOKEN.findall(_OPENER.sub("", core, count=1))
    head: list[str] = []
    for tok in rest:
        if tok in _BOUNDARY and head:
            break
        head.append(tok)
        if len(head) >= _HEAD_MAX_TOKENS:
            break
    # A possessive modifies the head, it is not the head: "A beginner's guide to Python".
    persons = [t for t in head if not t.endswith(("'s", "’s")) and _is_person_word(t)]
    if not persons:
        for i, tok in enumerate(head):
            if (tok in _ORG_WORDS or tok[:-1] in _ORG_WORDS) and i + 1 < len(rest):
                after = rest[i + 1]
                if after in _ORG_CLAUSE or (after.endswith("ing") and len(after) > 4):
                    return None
        return "not_a_person" if _is_english(text) else None
    # A bare generic noun with adjectives only: "A simple, simple person", "A person who is likely
    # to read this text", "The reader of this article".
    vague = _VAGUE_WITH_META if core != low else _GENERIC_WORDS
    if (
        len(rest) == len(head)
        and len(head) <= 6
        and all(p in vague or p.rstrip("s") in vague for p in persons)
        and _is_english(text)
    ):
        return "generic"
    return None


def check_persona(
    text: str,
    *,
    source_text: str | None = None,
    examples: frozenset[str] = frozenset(),
    options: PersonaFilterOptions = DEFAULT_OPTIONS,
) -> str | None:
    """None when text is a usable persona, else the code of the first filter that rejects it (the
    order of REASONS). text is normalised first (whitespace, wrapping quotes); source_text, when
    given, is the document the persona came from; examples are the prompt's demonstration personas,
    normalised and lower-cased (text_to_persona.example_personas)."""
    text = normalise_persona(text)
    skip = options.skip
    columns = _columns(text)
    if columns < options.min_chars or _words(text) < options.min_words:
        return "too_short"
    if columns > options.max_chars:
        return "too_long"
    if "placeholder" not in skip and _PLACEHOLDER.search(text):
        return "placeholder"
    low = text.lower()
    if "copies_example" not in skip and examples:
        key = low.rstrip(" .!")
        if low in examples or any(key == e.rstrip(" .!") for e in examples):
            return "copies_example"
    if "refusal" not in skip and _REFUSAL.search(text):
        return "refusal"
    if "echoes_text" not in skip and source_text and _echoes(low, source_text, options):
        return "echoes_text"
    shape = _name_or_title(text)
    if shape is not None and shape not in skip:
        return shape
    if "summary" not in skip and _SUMMARY.search(text):
        return "summary"
    if "boilerplate" not in skip and _boilerplate(text):
        return "boilerplate"
    if "not_a_person" not in skip or "generic" not in skip:
        verdict = _not_a_person(text, low)
        if verdict is not None and verdict not in skip:
            return verdict
    if options.languages and "language" not in skip:
        if _language(text) not in options.languages:
            return "language"
    return None


def filter_personas(
    texts: Iterable[str],
    *,
    examples: frozenset[str] = frozenset(),
    options: PersonaFilterOptions = DEFAULT_OPTIONS,
) -> tuple[list[str], list[tuple[str, str]], Counter[str]]:
    """(kept, [(text, reason)], counts per reason) for texts without a source document."""
    kept: list[str] = []
    rejected: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    for text in texts:
        reason = check_persona(text, examples=examples, options=options)
        if reason is None:
            kept.append(text)
        else:
            rejected.append((text, reason))
            counts[reason] += 1
    return kept, rejected, counts
