"""Fact extraction by rules: no model, no network, microseconds per message.

It finds what support conversations hinge on: identifiers (claim, policy, order, account numbers...),
e-mail addresses, phone numbers, dated events, "my X is Y", stated preferences ("I prefer ..."),
standing requests ("please always ...") and what worked last time. Rules read user turns; an agent's
turns contribute identifiers only (e.g. "your claim number is C-7788"). When the assistant-role
author is a person's name (two people chatting, one of them stored with role "assistant"), that
person's own statements are learned as theirs, under attributes of their own ("melanie:home_location",
"Melanie lives in Denver."), so their move never supersedes the user's address.

Whose fact it is matters as much as the value: in "my colleague Aisha's policy is P-369308" the
policy is Aisha's, so it is learned as ``colleague_aisha:policy_number`` ("The user's colleague
Aisha's policy number is P-369308."), never as the user's own policy number (which it would
otherwise silently supersede). Questions ("is my phone number still 0770...?") state nothing and
yield no statement facts; a value a question offers for confirmation ("can you confirm your policy
number is P-99999?") or as one of alternatives ("P-12345 or P-54321?") is never learned, and neither is a
denied one: "my policy number is not P-11111, it is P-22222" teaches P-22222 only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from ..records import Message, is_person_name
from .extract import Candidate, slug

__all__ = ["RuleExtractor"]

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec"
_MONTH_WORD = rf"(?:{_MONTHS})[a-z]*\.?"

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# A denial right after a copula: "is not", "isn't", "is no longer".
_NOT = r"n['’]t\b|\s*\bnot\b|\s*\bno\s+longer\b"
_IDENT_VALUE = r"[A-Za-z0-9][A-Za-z0-9\-/]{2,40}"
_IDENT = re.compile(
    r"\b(claim|policy|order|account|ticket|case|invoice|reference|booking|membership|member|customer|contract"
    r"|tracking|confirmation|loan|card|iban|vin)\s*(?:number|no\.?|num|#|id|ref)?\s*(?:is|was|:|=|#)?"
    rf"(?P<denied>{_NOT})?\s*(?:now\s+|still\s+)?(?:,?\s*(?:the\s+one\s+)?ending(?:\s+in)?\s+)?"
    rf"(?P<value>{_IDENT_VALUE})",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w\-/])(\+?\d[\d ()\-.]{5,}\d)(?![\w\-/])")
_DATE = re.compile(
    rf"\b(\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_WORD}(?:,?\s+\d{{4}})?"
    rf"|{_MONTH_WORD}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?)\b",
    re.IGNORECASE,
)
# A person's name, capitalised whatever the flags around it: "Marcus Lee", not "Marcus Lee from today".
_NAME_VALUE = r"((?-i:[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+){0,2}))"
# A support agent telling the user their own details: "your adjuster is now Laura Becker".
_YOUR_X_IS_Y = re.compile(
    r"\byour\s+(?:[a-z][\w'-]*\s+){0,2}?(adjuster|advisor|adviser|case handler|handler|agent|engineer|contact"
    rf"|representative|manager)\s+(?:is|will be)(?:{_NOT})?\s+(?:now\s+)?{_NAME_VALUE}",
    re.IGNORECASE,
)
_MY_X_IS_Y = re.compile(
    r"\bmy\s+((?:[a-z][\w'-]*\s+){0,3}?[a-z][\w'-]*)\s+(?:is|are|was|'s|has changed to|changed to|has moved to)"
    rf"({_NOT})?\s+(?:now\s+|actually\s+|still\s+)?(.+?)\s*(?:[.!?;](?:\s|$)|[;!?]|,\s*(?:and|but|so|because)\b"
    r"|\s+(?:and|but)\s+(?=(?:my|I|I'm|please)\b)|$)",
    re.IGNORECASE,
)
_I_VERB = [
    (re.compile(r"\b(?:I|we)(?:'ve| have)?\s+(?:(?:just|finally|now|all)\s+)?(?:[\w ,]{0,30}?\s+and\s+)?"
                r"(?:live|moved|relocated)\s+(?:in|to)\s+(.+?)\s*(?:[.!?;,]|$)",
                re.IGNORECASE), "home_location", "The user lives in {}."),
    (re.compile(r"\bI(?:'m| am)?\s+(?:now\s+)?(?:work|working|start|started|starting)\s+(?:at|for)\s+(.+?)"
                r"\s*(?:[.!?;,]|\s+(?:on|from|next|this|these)\b|$)", re.IGNORECASE),
     "employer", "The user works at {}."),
    (re.compile(r"\b(?i:call me|I go by)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)?)"),
     "preferred_name", "The user wants to be called {}."),
]
_PREFER = re.compile(
    r"\bI(?:'d| would)?\s+(?:really\s+|much\s+|still\s+|now\s+)?(?:prefer|rather)\s+(.+?)\s*(?:[.!?;]|$)",
    re.IGNORECASE,
)
_LIKE_BETTER = re.compile(r"\bI\s+like\s+(.+?)\s+(?:better|more|best)\b", re.IGNORECASE)
_STANDING = re.compile(
    r"(?:^|\bplease\s+|\bmake sure (?:to|you)\s+)(always|never|don't ever|do not ever)\s+(.+?)\s*(?:[.!?;]|$)",
    re.IGNORECASE,
)
_WORKED = [
    re.compile(r"\bwhat (?:worked|helped|fixed it|did the trick)(?: last time| before)? was\s+(.+?)\s*(?:[.!?;]|$)",
               re.IGNORECASE),
    re.compile(r"\b(?:last time|previously|before),?\s+(.+?)\s+(?:worked|fixed it|fixed the problem|solved it"
               r"|solved the problem|did the trick|helped)\b", re.IGNORECASE),
    re.compile(r"^(?:(?:yes|yeah|ok|okay|so|well|i think|actually),?\s+)*(.+?)\s+(?:worked|fixed it|fixed the problem"
               r"|solved it|solved the problem|did the trick)(?:\s+last time|\s+before)?\b", re.IGNORECASE),
]

_CHANNELS = re.compile(r"\b(e-?mail|phone|call|calls|text|sms|letter|post|mail|whatsapp|chat|video)\b", re.IGNORECASE)
_LANGUAGES = re.compile(r"\b(english|german|french|spanish|italian|dutch|portuguese|polish|turkish|arabic|chinese"
                        r"|japanese)\b", re.IGNORECASE)
_TIMES = re.compile(r"\b(morning|mornings|afternoon|afternoons|evening|evenings|weekend|weekends|weekday|weekdays)\b",
                    re.IGNORECASE)
_PRONOUN_SUBJECT = re.compile(r"^(?:it|that|this|nothing|what)\b", re.IGNORECASE)

_RELATION = (r"(?:sister|brother|mother|mum|mom|father|dad|cousin|neighbour|neighbor|colleague|co-worker|aunt|uncle"
             r"|friend|partner|wife|husband|son|daughter|boss|grandmother|grandfather|grandma|grandpa|niece|nephew"
             r"|flatmate|roommate|landlord|landlady|manager|fianc[eé]e?|boyfriend|girlfriend|kid|child)")
# Someone other than the user: "my (older) sister (Aisha)", "Aisha's", or a name as a subject.
_OTHER = re.compile(
    rf"\b(?i:my|our)\s+(?:(?i:older|younger|little|big|best|late|ex-?|step-?)\s*)?(?i:({_RELATION}))\b"
    rf"(?:\s+([A-Z][a-z][\w-]*))?"
    r"|\b([A-Z][a-z]{1,})['’]s\b"
    r"|(?:^|[,;:]\s*|\b(?:and|but|so)\s+)([A-Z][a-z]{1,})\s+(?:has|had|is|was|uses|lives|works|banks|got|just|now)\b"
)
# The user taking the sentence back: "..., and my own number is ...", "I ..."
_SELF = re.compile(r"\b(?i:my|I|I'm|I've|me)\b(?!\s+(?:(?i:older|younger|little|big|best|late)\s+)?(?i:" + _RELATION + r"))")
_NOT_NAMES = frozenset("""i it this that there what who when where which how my our your his her their the a an
please thanks thank yes no so but and also then today yesterday monday tuesday wednesday thursday friday
saturday sunday january february march april may june july august september october november december""".split())


_POSSESSIVE = re.compile(r"\b(my|our|your)\b", re.IGNORECASE)


def _person(speaker: str | None) -> str | None:
    """``speaker`` if it is a person's name ("Nora", "Mateo Brennan"), else None ("support", "user_proxy"):
    what an agent says about itself ("I'd rather not guess") is never learned as somebody's fact."""
    return speaker.strip() if speaker and is_person_name(speaker) else None


def _nearest_possessive(sentence: str, at: int) -> str | None:
    """The last "my"/"our"/"your" before offset ``at`` (lower case), or None."""
    found = _POSSESSIVE.findall(sentence[:at])
    return found[-1].lower() if found else None


@dataclass(frozen=True)
class _Subject:
    """Whose facts a turn states. ``prefix`` keeps each person's attributes apart, so another
    speaker's move never supersedes the user's address; ``name`` replaces "The user" in fact texts;
    ``speaker`` is who said it (appended as "(said by ...)" to texts that do not start with it)."""

    prefix: str = ""
    name: str | None = None
    speaker: str | None = None


_USER = _Subject()

# Where a stated value ends and a side remark begins: "P-123456, it covers the Subaru", "..., not 4 Oak St".
_CLAUSE_TAIL = re.compile(r",\s*(?=(?:it|for|in case|which|who|so|as|since|if|though|when|that|she|he|they|not)\b)",
                          re.IGNORECASE)

# -- questions and denials ---------------------------------------------------------------------------
# A question states nothing about the value it asks about. That value is one offered for confirmation
# ("can you confirm your policy number is P-99999?", "is my policy number P-12345?", "C-7788, right?")
# or as an alternative ("P-12345 or P-54321?"). A value the asker mentions as context ("what's the
# status of my claim C-7788?") is still learned when it is the asker's own: whoever asks about their own
# claim has that claim, and users name their identifiers this way all the time. Someone asking about
# another's value (the agent about the user's, "do you mean order 55124?") is asking, never telling.
_CONFIRM_REQUEST = re.compile(
    r"(?:^|\b(?:please|kindly)\s+|\b(?:can|could|would|will)\s+you\s+(?:please\s+|just\s+)?)(?:confirm|verify)\b",
    re.IGNORECASE,
)
# Where the asking starts when a statement comes first: "Your claim number is C-7788, is there anything else?",
# "Your order 55123 arrives Monday, OK?" (asking whether that suits, not whether the number is right)
_ASKING_CLAUSE = re.compile(
    r"(?:[,;:]|\s[-–—]+)\s*(?=(?:is|are|was|were|do|does|did|can|could|would|will|shall|should|may|what|when"
    r"|where|which|who|why|how|anything|any|ok|okay|alright)\b)",
    re.IGNORECASE,
)
# A tag that turns the whole sentence into a request to confirm it: "..., is that right?", "..., right?"
_TAG = re.compile(
    r"[,;:]?\s*(?:(?:is|was|are)n['’]t\s+(?:it|that|this)"
    r"|(?:is|was)\s+(?:it|that|this)(?:\s+(?:right|correct))?|right|correct|yes|yeah|no)\s*\?\s*$",
    re.IGNORECASE,
)
# The value is what is asked about: the complement of a copula ("... is P-99999?", "... ending in 4021?"),
_LINKED = re.compile(r"(?:\b(?:is|was|are|were)\s|['’]s\s|[:=]|\bending(?:\s+in)?\s)\s*"
                     r"(?:(?:still|now|actually|really)\s+)?$", re.IGNORECASE)
# ... the noun right after a question-opening copula or "confirm" ("is my policy number P-12345?"; not
# "is there an update on my claim C-7788?"), when nothing but the question's end follows the value,
_ASKING_HEAD = re.compile(
    r"(?:^|[,;:]\s*)(?:(?:so|and|but|ok|okay|sorry|just|then|also|hi|hello)\W+)*(?:is|was|are|were)(?:n['’]t)?\s+"
    r"|\b(?:confirm|verify|double-check|mean)\s+(?:that\s+)?",
    re.IGNORECASE,
)
_HEAD_GAP = re.compile(
    r"(?:(?!(?:of|on|for|about|with|to|in|from|at|by|regarding|under|there|here)\b)[\w'’-]+\s+){0,5}", re.IGNORECASE)
_ASKED_END = re.compile(r"\s*(?:(?:still|then|now|too|again|any\s?more|right|correct|please|by any chance)\b\s*)*"
                        r"(?:[,;?.!]|\bor\b|$)", re.IGNORECASE)
# ... or one of alternatives ("P-12345 or P-54321?").
_OR_AFTER = re.compile(r"\s*,?\s*(?:or|nor)\b", re.IGNORECASE)
_OR_BEFORE = re.compile(r"\b(?:or|either)\s+(?:[\w'’-]+\s+){0,3}$", re.IGNORECASE)
_CLAUSE_STOP = re.compile(r"[,;:]|\s[-–—]+")

# A denied value is not learned ("is not P-11111", "isn't", "no longer", "I never use my landline 0113...",
# "don't email jo@old.com"; not "I haven't received order 55123": the order is still theirs) ...
_NEGATED = re.compile(
    r"(?:\bnot|n['’]t|\bnever|\bno\s+longer)(?:\s+(?:use|using|used|email|e-mail|call|text|ring|contact|at|on))?"
    r"(?:\s+(?:my|the|that|this|our)(?:\s+[\w-]+){0,2}?)?\s*$", re.IGNORECASE)
# ... and the correction that follows it is: "not X, it is Y", "not X but Y", "isn't X, it's Y".
_CORRECTION = re.compile(
    r"\s*(?:[,;]|\s[-–—]+)?\s*\b(?:but\s+(?:(?:it|that)(?:['’]s|\s+is|\s+was)\s+)?"
    r"|(?:it|that)(?:['’]s|\s+is|\s+was)\s+)(?:now\s+|actually\s+|really\s+)?",
    re.IGNORECASE,
)
# A denial inside a stated preference: what is wanted comes before it ("email, not phone calls").
_DENIAL = re.compile(r"\b(?:not|never|no)\b|n['’]t\b", re.IGNORECASE)


def _asking(sentence: str) -> tuple[int, int] | None:
    """The part of a sentence that asks (offsets), or None for a statement. A tag ("..., right?") asks
    about the whole sentence; a question after a statement only about what follows the statement; a
    request to confirm about its own clause ("Please verify my identity, my policy number is ..." states)."""
    if sentence.rstrip(" \"')”’").endswith("?"):
        if _TAG.search(sentence):
            return 0, len(sentence)
        starts = [m.end() for m in _ASKING_CLAUSE.finditer(sentence)]
        return (starts[-1] if starts else 0), len(sentence)
    m = _CONFIRM_REQUEST.search(sentence)
    if m is None:
        return None
    stop = _CLAUSE_STOP.search(sentence, m.end())
    return m.start(), stop.start() if stop else len(sentence)


def _offered(sentence: str, start: int, end: int) -> bool:
    """Whether a question offers the value at ``sentence[start:end]`` for confirmation or as an
    alternative (so states nothing about it), rather than mentioning it as context."""
    before, after = sentence[:start], sentence[end:]
    if _TAG.search(sentence) or _LINKED.search(before) or _OR_AFTER.match(after) or _OR_BEFORE.search(before):
        return True
    if not _ASKED_END.match(after):
        return False
    return any(_HEAD_GAP.fullmatch(before[h.end():]) for h in _ASKING_HEAD.finditer(before))


def _negated(sentence: str, start: int) -> bool:
    """Whether the value at offset ``start`` is denied ("is not P-11111", "I no longer use ...")."""
    return bool(_NEGATED.search(sentence[:start]))


def _stated(sentence: str, start: int, end: int, *, own: bool) -> bool:
    """Whether ``sentence`` states the value at ``sentence[start:end]``: it is not denied, and not asked
    about. In a question only the asker's own value mentioned as context counts (see ``_offered``)."""
    if _negated(sentence, start):
        return False
    asking = _asking(sentence)
    if asking is None or not asking[0] <= start < asking[1]:
        return True
    return own and not _offered(sentence, start, end)


def _correction(sentence: str, end: int, value: re.Pattern[str]) -> tuple[int, int] | None:
    """Where the value that corrects a denied one ending at ``end`` is (group 1 of ``value``):
    "not P-11111, it is P-22222" -> P-22222."""
    m = _CORRECTION.match(sentence, end)
    fix = value.match(sentence, m.end()) if m else None
    return fix.span(1) if fix else None


_IDENT_TOKEN = re.compile(rf"(?:(?:the\s+one\s+)?ending(?:\s+in)?\s+)?({_IDENT_VALUE})", re.IGNORECASE)
_NAME = re.compile(_NAME_VALUE)


def _owner(sentence: str, at: int) -> tuple[str, str] | None:
    """(attribute prefix, how the fact text names them) if the value at offset ``at`` of ``sentence``
    belongs to someone other than the speaker; None if it is the speaker's. A relation is named as
    the user's ("the user's sister Aisha"), a bare name as itself ("Aisha")."""
    best = None
    for m in _OTHER.finditer(sentence[:at]):
        relation, rel_name, possessive, subject = m.group(1), m.group(2), m.group(3), m.group(4)
        name = rel_name or possessive or subject
        if name and name.lower() in _NOT_NAMES:
            name = None
        if relation or name:
            best = (m.end(), relation.lower() if relation else None, name)
    if best is None:
        return None
    end, relation, name = best
    if _SELF.search(sentence[end:at]):
        return None  # "my sister lives nearby, and my number is ...": back to the user
    who = " ".join(p for p in (relation, name) if p)
    label = f"the user's {who}" if relation else name
    return slug(who, words=3), label or "someone else"


_TRAILING_TIME = re.compile(
    r"\s+(?:last|this|next)\s+(?:week|month|year|time)$|\s+(?:recently|yesterday|today|now|though|too|as well)$"
    r"|\s+in\s+(?:19|20)\d{2}$",  # "in 2023", not "ending in 4021"
    re.IGNORECASE,
)


def _clean(value: str, limit: int = 120) -> str:
    value = value.strip().strip("\"'`“”‘’").rstrip(".,;:!?-/ ").strip()
    value = _TRAILING_TIME.sub("", value).strip()
    return value[:limit]


def _has_digit(value: str) -> bool:
    return any(ch.isdigit() for ch in value)


def _fits(attribute: str, value: str) -> bool:
    """Whether ``value`` has the shape the contact ``attribute`` holds (other attributes: any value)."""
    if attribute == "email":
        return _EMAIL.search(value) is not None
    if attribute == "phone":
        return 7 <= _digits(value) <= 15
    return True


def _digits(value: str) -> int:
    return sum(ch.isdigit() for ch in value)


def _preference_attribute(what: str) -> str:
    """The slot a preference fills. Only what is wanted picks a slot: "email, not phone calls" is a
    channel preference for e-mail; "not get phone calls" fills no channel slot (it would supersede one)."""
    wanted = _DENIAL.split(what, 1)[0]
    if _CHANNELS.search(wanted):
        return "preference:contact_channel"
    if _LANGUAGES.search(wanted):
        return "preference:language"
    if _TIMES.search(wanted):
        return "preference:contact_time"
    return "preference:" + slug(what, words=3)


class RuleExtractor:
    """Regular-expression fact extraction. Deterministic and model-free."""

    name = "rules"

    def __init__(self, *, identifier_roles: Sequence[str] = ("user", "assistant")) -> None:
        self.identifier_roles = frozenset(identifier_roles)

    async def extract(self, message: Message, context: Sequence[Message] = ()) -> list[Candidate]:
        return self.extract_text(message.content, role=message.role, at=message.created_at, speaker=message.author)

    def extract_text(self, text: str, *, role: str = "user", at: datetime | None = None,
                     speaker: str | None = None) -> list[Candidate]:
        """Candidates from one turn. ``speaker``: the author's name.

        A user turn states the user's facts; when its author is a person's name the fact says who
        said it ("... (said by Nora)"), so a question naming them finds it. An assistant turn gives
        what it tells the user (identifiers, "your adjuster is ..."). When the assistant's author is
        a person's name (the other human of a two-person chat, not an agent called "support"), its
        own statements are learned too, as that speaker's: "I moved to Denver" by Melanie is
        ``melanie:home_location`` ("Melanie lives in Denver."), and supersedes only Melanie's city."""
        if role not in ("user", "assistant") or not text.strip():
            return []
        out: list[Candidate] = []
        seen: set[tuple[str, str]] = set()
        person = _person(speaker)
        # The subject of the turn's first-person statements: the user, or the other person speaking.
        me = _Subject(speaker=person) if role == "user" else _USER
        other = _Subject(slug(person, words=3) + ":", person, person) if role != "user" and person else None
        subject = me if other is None else other

        def add(attribute: str, value: str, fact_text: str, kind: str, confidence: float,
                who: _Subject = _USER, **meta: str) -> None:
            value = _clean(value)
            if not value:
                return
            attribute = who.prefix + attribute
            key = (attribute, value.casefold())
            if key in seen:
                return
            seen.add(key)
            body = fact_text.format(value)
            if who.name and body.startswith("The user"):
                body = who.name + body[len("The user"):]
            if who.speaker and not body.startswith(who.speaker):
                said = f" (said by {who.speaker})"
                body = body[:-1] + said + "." if body.endswith(".") else body + said
            out.append(Candidate(attribute, value, body, kind, confidence, dict(meta)))

        def add_value(attribute: str, value: str, what: str, kind: str, confidence: float,
                      sentence: str, at: int, who: _Subject) -> None:
            """An identifier/contact value, attributed to whoever the sentence says it belongs to."""
            owner = _owner(sentence, at)
            if owner is None:
                add(attribute, value, f"The user's {what} is {{}}.", kind, confidence, who)
            else:
                prefix, label = owner
                if not label.startswith("the user's"):  # a name ("Aisha's"): the same person whoever speaks
                    who = _Subject(speaker=who.speaker)
                add(f"{prefix}:{attribute}", value, f"{label[0].upper()}{label[1:]}'s {what} is {{}}.", kind,
                    confidence * 0.9, who, about=label)

        def whose(sentence: str, at: int) -> _Subject:
            """A contact detail in the speaker's turn: theirs, unless the other person speaks of "your ..."."""
            if other is not None and _nearest_possessive(sentence, at) == "your":
                return _USER
            return subject

        sentences = [x.strip() for x in _SENTENCE.split(text) if x.strip()]
        for sentence in sentences:
            identifier_spans: list[tuple[int, int]] = []
            if role in self.identifier_roles:
                for m in _IDENT.finditer(sentence):
                    start, end = m.span("value")
                    if not _has_digit(m.group("value")) or len(m.group("value").rstrip("-/.")) < 3:
                        continue
                    identifier_spans.append((start, end))
                    if m.group("denied") or _negated(sentence, start):  # "is not P-11111, it is P-22222"
                        fix = _correction(sentence, end, _IDENT_TOKEN)  # the correction, if any
                        if fix is None or not _has_digit(sentence[fix[0]:fix[1]]):
                            continue
                        start, end = fix
                        identifier_spans.append(fix)
                    value = sentence[start:end].rstrip("-/.")
                    noun = m.group(1).lower()
                    mine = other is not None and _nearest_possessive(sentence, m.start()) in ("my", "our")
                    if not _stated(sentence, start, end, own=role == "user" or mine):
                        continue
                    if role == "user":
                        add_value(f"{noun}_number", value, f"{noun} number", "identifier", 0.9, sentence, m.start(),
                                  me)
                    elif mine:
                        add_value(f"{noun}_number", value, f"{noun} number", "identifier", 0.9, sentence, m.start(),
                                  other)
                    else:  # what an agent tells the user: "your claim number is C-7788"
                        add(f"{noun}_number", value, f"The user's {noun} number is {{}}.", "identifier", 0.9)
            if role != "user" and other is None:
                continue
            for m in _EMAIL.finditer(sentence):
                who = whose(sentence, m.start())
                if _stated(sentence, m.start(), m.end(), own=who is subject):
                    add_value("email", m.group(0), "e-mail address", "contact", 0.9, sentence, m.start(), who)
            date_spans = [m.span() for m in _DATE.finditer(sentence)]
            for m in _PHONE.finditer(sentence):
                start, end = m.span(1)
                if any(s <= start < e or s < end <= e for s, e in identifier_spans + date_spans):
                    continue
                value = m.group(1).strip()
                if not 7 <= _digits(value) <= 15 or re.fullmatch(r"\d{4}", value):
                    continue
                who = whose(sentence, start)
                if _stated(sentence, start, end, own=who is subject):
                    add_value("phone", value, "phone number", "contact", 0.85, sentence, start, who)
        if role != "user":
            for sentence in sentences:
                for m in _YOUR_X_IS_Y.finditer(sentence):
                    start, end = m.span(2)
                    if _negated(sentence, start):  # "isn't Marcus Lee, it's Laura Becker": the correction, if any
                        fix = _correction(sentence, end, _NAME)
                        if fix is None:
                            continue
                        start, end = fix
                    if not _stated(sentence, start, end, own=False):
                        continue  # the agent asking the user ("can you confirm your adjuster is ...?")
                    what = m.group(1).lower()
                    add(slug(what, words=3), sentence[start:end], f"The user's {what} is {{}}.", "statement", 0.8)
            if other is None:
                return out

        values = [c.value for c in out]
        for sentence in sentences:
            asking = _asking(sentence)
            if asking is not None:  # a question states nothing ("is my address still 4 Oak Street?"), but
                # a statement before it does ("I moved to York, can you update my address?")
                sentence = (sentence[:asking[0]] + " " + sentence[asking[1]:]).strip(" ,;:-–—")
                if not sentence:
                    continue
            for m in _MY_X_IS_Y.finditer(sentence):
                what = re.sub(r"^(?:new|current|old|updated)\s+", "", m.group(1).strip(), flags=re.IGNORECASE)
                attribute = slug(what, words=4)
                if what.lower() in ("e-mail", "email", "email address", "e-mail address"):
                    attribute = "email"
                elif what.lower() in ("phone", "phone number", "mobile", "mobile number", "cell", "number"):
                    attribute = "phone"
                value = m.group(3)
                if m.group(2):  # "is not 4 Oak Street, it is 5 Elm Road": only the correction is stated
                    fix = _CORRECTION.search(value)
                    if fix is None:
                        continue
                    value = value[fix.end():]
                value = _CLAUSE_TAIL.split(value, 1)[0]
                if any(v.casefold() in value.casefold() for v in values):
                    continue  # the identifier or contact rule already has it, exactly
                if not _fits(attribute, value):
                    # "my phone was cracked on holiday": about the thing, not a contact detail; its own
                    # attribute, so it never supersedes the phone number.
                    attribute = f"about_{attribute}"
                if re.match(rf"(?i:{_RELATION})\b", what):
                    # "my sister Aisha's phone is ...", "my colleague is Aisha": about them, said as such
                    add(attribute, value, f"The user's {what} is {{}}.", "statement", 0.8, subject)
                    continue
                add(attribute, value, f"The user's {what.lower()} is {{}}.", "statement", 0.85, subject)
            for pattern, attribute, template in _I_VERB:
                for m in pattern.finditer(sentence):
                    if not _negated(sentence, m.start()):  # not "please don't call me Rob"
                        add(attribute, m.group(1), template, "statement", 0.8, subject)
            for m in _PREFER.finditer(sentence):
                what = m.group(1)
                add(_preference_attribute(what), what, "The user prefers {}.", "preference", 0.8, subject)
            for m in _LIKE_BETTER.finditer(sentence):
                what = m.group(1)
                add(_preference_attribute(what), what, "The user prefers {}.", "preference", 0.7, subject)
            for m in _STANDING.finditer(sentence):
                verb, action = m.group(1).lower(), _clean(m.group(2))
                if action:
                    add("request:" + slug(f"{verb} {action}", words=6), f"{verb} {action}",
                        "The user asked to {}.", "preference", 0.8, subject)
            for pattern in _WORKED:
                m = pattern.search(sentence)
                if m is None:
                    continue
                what = _clean(m.group(1))
                if not what or _PRONOUN_SUBJECT.match(what) or len(what.split()) > 14:
                    continue
                if _NEGATED.search(what) or re.match(r"(?i:not)\b", what):
                    break  # "restarting the router never worked": no resolution
                add("resolution:" + slug(what, words=5), what, "What worked before: {}.", "resolution", 0.75, subject)
                break
            dates = _DATE.findall(sentence)
            if dates and len(sentence) <= 400:
                add("event:" + slug(sentence, words=8), sentence, "The user said: {}", "event", 0.7, subject,
                    date=dates[0])
        return out
