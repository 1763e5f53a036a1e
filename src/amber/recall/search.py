"""Hybrid recall: lexical and vector search over a user's turns and facts, fused and re-ranked.

No model is called on the read path except the embedder for the query's own vector. Steps:

1. the lexical query keeps the question's content words and identifiers only: stop words ("what",
   "is", "my") would otherwise match most turns weakly and push strong vector-only hits out;
2. candidates from the store's primitives (``search_text``, ``search_vectors``), always scoped by
   tenant and user -- and checked again here, so a backend bug cannot leak another user's memory; a
   lexical candidate matching nothing but the name of a speaker the query names is left to the vector
   path (``name_only_lexical``);
3. fusion: weighted reciprocal-rank fusion (default; rank-based, so it needs no calibration between
   a backend's BM25 and cosine scores, and a hit found by one path keeps the score of its rank
   there) or min-max score fusion (``fusion="score"``);
4. re-ranking: a time expression in the query ("last week", "in May") demotes hits outside its
   interval; a query naming some of the speakers among the candidates ("When did Caroline go to the
   support group?") demotes the other speakers' turns (and facts naming one of them); a turn that
   only asks ("Who is my emergency contact at the moment? Thanks.") is demoted below statements:
   it shares the most words with a later question on its subject and states nothing; turns whose
   facts were superseded are demoted and marked (``paths["superseded"]``); recency only breaks
   near-ties (a newer statement above an older, equally similar one);
5. one slot per piece of information: turns with the same text collapse into the best-ranked one,
   and a fact and the turns it was learned from share one slot (a fact hit covers its sources);
6. follow-ups (``echo``): turns by the best hit's speaker that repeat one of its distinctive words
   ("I'm nervous, I signed up for the marathon" -> "Remember the thing I was nervous about? It
   went well!") rank just below it: candidates first; when the best hit looks ahead ("next
   month", "signed up") and too few were found, one lexical lookup among that speaker's later turns;
7. bridging (multi-hop): names and identifiers in the best hits that the query does not mention are
   looked up once more lexically ("my emergency contact is my sister Aisha" -> "Aisha's new mobile
   is ..."); the best find of a name or identifier named by a hit that shares the query's words
   ranks right below that hit, other finds lower;
8. optionally, neighbouring turns of each turn hit as context (``neighbours=n``).

Scores are in [0, 1], higher is better; ties keep a stable order (by id).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Collection, Literal, Sequence

from ..errors import InvalidInput
from ..keys import SessionKey, validate_part
from ..records import Hit, is_person_name, utcnow
from ..store.base import Store, validate_limit
from .timeexpr import TimeRange, parse_time_range

__all__ = ["Recall", "MODES", "KINDS", "lexical_query", "STOP_WORDS"]

log = logging.getLogger("amber.recall")

MODES = frozenset({"lexical", "vector"})
KINDS = frozenset({"message", "fact"})
Fusion = Literal["rrf", "score"]

# English function words and question scaffolding. Content words, names, numbers and identifiers
# are what lexical search is good at; these only add weak matches with almost every turn.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being
below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
during each few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here
here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its
itself just let's me more most mustn't my myself no nor not now of off on once only or other ought our
ours ourselves out over own same shan't she she'd she'll she's should shouldn't so some such than that
that's the their theirs them themselves then there there's these they they'd they'll they're they've
this those through to too under until up very was wasn't we we'd we'll we're we've were weren't what
what's when when's where where's which while who who's whom why why's will with won't would wouldn't
you you'd you'll you're you've your yours yourself yourselves also any anything did does tell remind
please may might shall must s t d ll re ve m o y ok okay yes yeah hi hello hey thanks thank
""".split())

_TOKEN = re.compile(r"\w+(?:['’]\w+)?", re.UNICODE)
_IDENTIFIER = re.compile(r"\b[A-Za-z]{0,4}[-/]?\d[\w\-/]*\b")
# A bridge term: a capitalised word inside a sentence (a name), or an identifier with digits.
_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]{2,}\b")


def _variants(word: str) -> list[str]:
    """The word and its commonest inflections ("live" -> "lives", "moved" -> "move"): SQLite's FTS5
    tokenizer does not stem, and a question rarely uses the tense or number of the statement."""
    if len(word) < 4 or not word.isalpha():
        return [word]
    out = [word]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            return out + [stem, stem + "e", stem + "s", stem + "es"]
    if word.endswith("ies"):
        out.append(word[:-3] + "y")
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        out.append(word[:-1])
    else:
        out.append(word + "s")
    return out


def lexical_query(query: str, *, inflections: bool = False) -> str:
    """The words of ``query`` lexical search should use: no stop words, no single letters unless
    part of an identifier; numbers and identifiers kept. Empty if nothing is left.
    ``inflections``: add each word's common inflected forms (see :func:`_variants`)."""
    words: list[str] = []
    for token in _TOKEN.findall(query):
        word = token.lower().replace("’", "'")
        if word in STOP_WORDS or word.split("'")[0] in STOP_WORDS:
            continue
        if len(word) == 1 and not word.isdigit():
            continue
        if word.endswith("'s"):  # "Nora's" -> "nora": the possessive is not part of the name
            word = word[:-2]
        words.extend(_variants(word) if inflections else [word])
    return " ".join(dict.fromkeys(words))


def _bridge_terms(text: str, query_words: set[str], speakers: Collection[str] = ()) -> list[str]:
    """Names and identifiers in ``text`` that a second hop could look up: not in the query, and not
    the name of one of the conversation's speakers ("said by Nora" links Nora to everything)."""
    terms = [m.group(0) for m in _NAME.finditer(text)]
    terms += [m.group(0) for m in _IDENTIFIER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    out = []
    for t in terms:
        low = t.lower()
        if (low in STOP_WORDS or low in query_words or low in speakers
                or any(w in query_words for w in re.findall(r"\w+", low))):
            continue
        out.append(t)
    return out


def _strong_link(term: str) -> bool:
    """A name, or an identifier with letters and digits ("C-7788"): what names one thing. A bare
    number ("07700", a phone prefix) links many."""
    return any(c.isalpha() for c in term)


def _content_terms(text: str, query_words: set[str]) -> list[str]:
    """The words of ``text`` a follow-up would repeat: lower-case content words of 4+ letters the
    query lacks (names are the bridge's terms)."""
    lower = " ".join(t for t in _TOKEN.findall(text) if not t[:1].isupper())
    return [w for w in lexical_query(lower).split() if len(w) >= 4 and w.isalpha() and w not in query_words]


# A turn about something still to happen, whose outcome a later turn may report.
_LOOKS_AHEAD = re.compile(
    r"\b(?:next (?:week|weekend|month|year|time)|tomorrow|soon|upcoming|going to|signed up|booked|"
    r"planning|plan to|about to|can't wait)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


def _only_asks(text: str) -> bool:
    """Whether a turn only asks ("Who is my emergency contact at the moment? Thanks."): it has a
    question, and every sentence that is not one is a short courtesy of at most three words. A
    question states nothing, yet shares the most words with a later question on the same subject."""
    asks = False
    for sentence in _SENTENCE.findall(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        if sentence.endswith("?"):
            asks = True
        elif len(_TOKEN.findall(sentence)) > 3:
            return False
    return asks


def _norm_text(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


class Recall:
    """Search a user's memory. ``embedder``: the same embedder the learner used (vectors are looked
    up by its ``name``); without one, recall is lexical only.

    Tuning knobs (defaults measured on two differently shaped synthetic sets, see docs/memory.md):
    ``fusion`` ("rrf" or "score"), ``rrf_k``, ``weights`` per mode, ``fact_boost``,
    ``recency_weight`` and ``recency_half_life_days`` (a tie-breaker: keep it small),
    ``time_penalty`` (for hits outside a time expression's interval), ``speaker_penalty`` (for turns
    by a speaker the query does not name when it names another; 1.0 turns it off), ``superseded_penalty``,
    ``pool`` (candidates per mode), ``dedup`` (one slot per text, and per fact with its sources),
    ``bridge`` (how many of the best hits seed the multi-hop lookup; 0 turns it off), ``echo`` (how
    many follow-ups of the best hit, same speaker and one of its distinctive words, rank just below
    it; 0 turns it off), ``question_penalty`` (for turns that only ask; 1.0 turns it off),
    ``name_only_lexical`` (a lexical hit whose only match is a named speaker's
    name is dropped from the lexical list; False keeps it).
    """

    def __init__(
        self,
        store: Store,
        *,
        embedder: Any | None = None,
        fusion: Fusion = "rrf",
        rrf_k: int = 20,
        weights: dict[str, float] | None = None,
        fact_boost: float = 1.0,
        recency_weight: float = 0.02,
        recency_half_life_days: float = 30.0,
        time_penalty: float = 0.6,
        speaker_penalty: float = 0.7,
        superseded_penalty: float = 0.6,
        pool: int = 50,
        dedup: bool = True,
        bridge: int = 3,
        bridge_weight: float = 0.5,
        echo: int = 2,
        question_penalty: float = 0.8,
        inflections: bool = False,
        name_only_lexical: bool = True,
    ) -> None:
        if fusion not in ("rrf", "score"):
            raise InvalidInput(f"fusion must be 'rrf' or 'score', got {fusion!r}")
        for name, value in (("speaker_penalty", speaker_penalty), ("question_penalty", question_penalty)):
            if not 0.0 <= value <= 1.0:
                raise InvalidInput(f"{name} must be in [0, 1], got {value!r}")
        self.store = store
        self.embedder = embedder
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.weights = {"lexical": 1.0, "vector": 1.0, **(weights or {})}
        self.fact_boost = fact_boost
        self.recency_weight = recency_weight
        self.recency_half_life_days = recency_half_life_days
        self.time_penalty = time_penalty
        self.speaker_penalty = speaker_penalty
        self.superseded_penalty = superseded_penalty
        self.pool = pool
        self.dedup = dedup
        self.bridge = bridge
        self.bridge_weight = bridge_weight
        self.echo = echo
        self.question_penalty = question_penalty
        self.inflections = inflections
        self.name_only_lexical = name_only_lexical

    async def search(
        self,
        tenant: str,
        user: str,
        query: str,
        *,
        limit: int = 10,
        modes: Sequence[str] = ("lexical", "vector"),
        kinds: Sequence[str] = ("message", "fact"),
        now: datetime | None = None,
        neighbours: int = 0,
        exclude_ids: Sequence[str] = (),
        exclude_texts: Collection[str] = (),
    ) -> list[Hit]:
        """The best ``limit`` hits for ``query`` in the memory of ``user`` in ``tenant``.

        ``now`` anchors recency and relative time expressions (default: the current time).
        ``neighbours``: add up to n turns before and after each turn hit (marked
        ``paths["neighbour"]``), placed right after it. ``exclude_ids``: ids to leave out (e.g. the
        turns already in the model's context); ``exclude_texts``: turns with exactly this text are
        left out (what an adapter uses when it knows the context's texts but not their ids).
        """
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        validate_limit(neighbours, "neighbours", allow_none=False)
        if not isinstance(query, str):
            raise InvalidInput(f"query must be a string, got {type(query).__name__}")
        bad_modes = set(modes) - MODES
        bad_kinds = set(kinds) - KINDS
        if bad_modes or bad_kinds or not modes or not kinds:
            raise InvalidInput(f"modes must be a non-empty subset of {sorted(MODES)} and kinds of {sorted(KINDS)}")
        if not query.strip() or limit == 0:
            return []
        now = now or utcnow()
        pool = max(self.pool, limit * 3)
        kinds = tuple(k for k in ("message", "fact") if k in kinds)
        skip = set(exclude_ids)
        skip_texts = set(exclude_texts)

        def keep(hits: list[Hit]) -> list[Hit]:
            # Defence in depth: the store scopes by tenant and user; never trust that alone.
            return [h for h in hits if h.tenant == tenant and h.user == user and h.id not in skip
                    and not (h.kind == "message" and h.text in skip_texts)]

        words = lexical_query(query, inflections=self.inflections)
        lists = await self._candidates(tenant, user, query, words, modes, kinds, pool, keep)
        if self.name_only_lexical and lists.get("lexical"):
            lists["lexical"] = _without_name_only(query, words, lists)
        fused = self._fuse(lists)
        window = parse_time_range(query, now)
        named: set[str] = set()
        unnamed: set[str] = set()
        if self.speaker_penalty != 1.0:
            named, unnamed = _speakers(query, [h for h, _, _ in fused.values()])
        ranked = await self._rerank(tenant, user, fused, now, window, limit, named, unnamed)
        if self.dedup:
            ranked = _one_slot_each(ranked)
        if self.echo and ranked:
            ranked = await self._echo(tenant, user, ranked, set(words.split()), limit, keep,
                                      lookup="lexical" in modes)
        if self.bridge and "lexical" in modes and ranked:
            ranked = await self._bridge(tenant, user, ranked, set(words.split()), kinds, limit, keep)
        top = ranked[:limit]
        if neighbours and top:
            top = await self._with_neighbours(tenant, user, top, neighbours, skip)
        return top

    async def _candidates(self, tenant: str, user: str, query: str, words: str, modes: Sequence[str],
                          kinds: Sequence[str], pool: int, keep: Any) -> dict[str, list[Hit]]:
        """Each mode's candidate list. While the query is being embedded (in a thread), the store
        loads the user's vector index and then runs the lexical search, one after the other: on two
        cores neither costs wall time, and the embedding keeps a core to itself (interleaved over
        distinct users at 1M memories: the same p50 as side by side, p95 a few ms lower on SQLite).
        The vector search follows the embedding. Lists keep the order lexical, vector."""

        async def vector_hits() -> list[Hit] | None:
            assert self.embedder is not None
            try:
                vector = (await self.embedder.embed([query]))[0]
            except Exception as exc:  # recall degrades to lexical rather than failing the agent's turn
                log.warning("query embedding failed, recalling lexically: %s", exc)
                return None
            return keep(await self.store.search_vectors(
                tenant, user, self.embedder.name, vector, limit=pool, kinds=kinds))

        want_lexical = "lexical" in modes and bool(words)
        want_vector = "vector" in modes and self.embedder is not None
        prepare = self._prepare_vectors(tenant, user) if want_vector else None
        lexical: asyncio.Task[list[Hit]] | None = None
        if want_lexical and want_vector:
            async def lexical_after_prepare() -> list[Hit]:
                if prepare is not None:
                    await asyncio.wait([prepare])  # its outcome is handled below; never cancel it from here
                return await self.store.search_text(tenant, user, words, limit=pool, kinds=kinds)

            lexical = asyncio.ensure_future(lexical_after_prepare())
        lists: dict[str, list[Hit]] = {}
        try:
            vector = await vector_hits() if want_vector else None
            if lexical is not None:
                lists["lexical"] = keep(await lexical)
            elif want_lexical:
                lists["lexical"] = keep(await self.store.search_text(tenant, user, words, limit=pool, kinds=kinds))
        except BaseException:
            if lexical is not None and not lexical.done():
                lexical.cancel()
                await asyncio.gather(lexical, return_exceptions=True)  # never leave it unawaited
            raise
        finally:
            if prepare is not None:  # usually done by now (the search waits for it); never left unawaited
                for outcome in await asyncio.gather(prepare, return_exceptions=True):
                    if isinstance(outcome, Exception):
                        log.debug("preparing the vector index failed (the search read it itself): %s", outcome)
        if vector is not None:
            lists["vector"] = vector
        return lists

    def _prepare_vectors(self, tenant: str, user: str) -> asyncio.Future[None] | None:
        """Start loading the user's in-process vector index while the query is embedded, on a store
        (or the store below cache/encryption/redaction layers) that keeps one (SQLite's
        ``prepare_vectors``): a user's first search then does not load it after the embedding."""
        layer: Any = self.store
        while layer is not None and not hasattr(layer, "prepare_vectors"):
            layer = getattr(layer, "inner", None)
        if layer is None or self.embedder is None:
            return None
        return asyncio.ensure_future(layer.prepare_vectors(tenant, user, self.embedder.name))

    # -- fusion ----------------------------------------------------------------------------------
    def _fuse(self, lists: dict[str, list[Hit]]) -> dict[tuple[str, str], tuple[Hit, float, dict[str, float]]]:
        fused: dict[tuple[str, str], tuple[Hit, float, dict[str, float]]] = {}
        active = [m for m, hits in lists.items() if hits]
        total_w = sum(self.weights.get(m, 1.0) for m in active) or 1.0
        for mode in active:
            hits = lists[mode]
            w = self.weights.get(mode, 1.0)
            if self.fusion == "rrf":
                contribs = [w * (self.rrf_k + 1) / (self.rrf_k + rank + 1) for rank in range(len(hits))]
            else:
                hi = max(h.score for h in hits)
                lo = min(h.score for h in hits)
                span = hi - lo
                contribs = [w * ((h.score - lo) / span if span > 1e-12 else 1.0) for h in hits]
            for hit, c in zip(hits, contribs):
                key = (hit.kind, hit.id)
                base, score, paths = fused.get(key, (hit, 0.0, {}))
                paths = {**paths, mode: hit.score}
                fused[key] = (base, score + c / total_w, paths)
        return fused

    # -- re-ranking ------------------------------------------------------------------------------
    async def _rerank(
        self,
        tenant: str,
        user: str,
        fused: dict[tuple[str, str], tuple[Hit, float, dict[str, float]]],
        now: datetime,
        window: TimeRange | None,
        limit: int,
        named: set[str],
        unnamed: set[str],
    ) -> list[Hit]:
        window = _anchor(window, [self._when(h) for h, _, _ in fused.values()])
        scored: list[tuple[Hit, float, dict[str, float]]] = []
        for hit, score, paths in fused.values():
            paths = dict(paths)
            at = self._when(hit)
            speaker = None
            if unnamed and hit.kind == "message" and hit.author:
                speaker = hit.author.strip().casefold()
            elif unnamed and hit.kind == "fact":  # "Melanie lives in Denver.", "... (said by Nora)."
                speaker = _named_in(hit.text, named | unnamed)
            if speaker:
                if speaker in named:
                    paths["speaker"] = 1.0
                elif speaker in unnamed:
                    score *= self.speaker_penalty
            if hit.kind == "fact":
                score *= self.fact_boost
            elif self.question_penalty != 1.0 and _only_asks(hit.text):
                score *= self.question_penalty
            if self.recency_weight:
                age_days = max(0.0, (now - at).total_seconds() / 86400.0)
                decay = math.pow(0.5, age_days / self.recency_half_life_days) if self.recency_half_life_days else 0.0
                score *= (1.0 - self.recency_weight) + self.recency_weight * decay
            if window is not None:
                if window.contains(at):
                    paths["time"] = 1.0
                else:
                    score *= self.time_penalty
            scored.append((hit, score, paths))
        # Only the leading candidates can reach the answer: look up fact histories for those alone.
        scored.sort(key=lambda t: -t[1])
        head = scored[: 2 * limit + 10]
        stale = await self._stale_sources(tenant, user, [h for h, _, _ in head if h.kind == "fact"])
        if stale:
            scored = [
                (hit, score * self.superseded_penalty, {**paths, "superseded": 1.0})
                if hit.kind == "message" and hit.id in stale else (hit, score, paths)
                for hit, score, paths in scored
            ]
        # A fact ranks at least as high as the turns it was learned from: it is the distilled form.
        by_message = {h.id: s for h, s, _ in scored if h.kind == "message"}
        lifted = []
        for hit, score, paths in scored:
            if hit.kind == "fact":
                best_source = max((by_message.get(m, 0.0) for m in hit.source_message_ids), default=0.0)
                if best_source >= score:
                    score = best_source * 1.0001
            lifted.append((hit, score, paths))
        top = max((s for _, s, _ in lifted), default=1.0)
        scale = 1.0 / top if top > 1.0 else 1.0
        out = [
            replace(hit, score=max(0.0, min(1.0, s * scale)), paths={**paths, "fused": max(0.0, min(1.0, s * scale))})
            for hit, s, paths in lifted
        ]
        out.sort(key=lambda h: (-h.score, 0 if h.kind == "fact" else 1, h.id))
        return out

    @staticmethod
    def _when(hit: Hit) -> datetime:
        return hit.valid_from if hit.kind == "fact" and hit.valid_from else hit.created_at

    async def _stale_sources(self, tenant: str, user: str, fact_hits: Sequence[Hit]) -> set[str]:
        """Ids of turns whose facts were superseded by a newer value (and back no current fact)."""
        if not fact_hits:
            return set()
        return await self.store.superseded_sources(tenant, user, [h.id for h in fact_hits])

    async def _echo(self, tenant: str, user: str, ranked: list[Hit], query_words: set[str], limit: int,
                    keep: Any, *, lookup: bool) -> list[Hit]:
        """Follow-ups of the best hit: a turn by the same speaker that repeats one of its distinctive
        words ("I'm a bit nervous, I signed up for the half marathon" -> "Remember the thing I was
        nervous about? It went really well!") often continues it while sharing nothing with the
        question. Up to ``echo`` of them rank just below it, where a bridge find would
        (``paths["echo"]``): first among the candidates already found; if fewer are, one lexical
        lookup of those words (``lookup``) finds the speaker's LATER turns repeating them, when the
        best hit looks ahead ("next month", "signed up", "going to"): a plan is followed by its
        outcome, after it; without that cue a lookup of its everyday words mostly finds noise."""
        top = ranked[0]
        if top.kind != "message" or not top.author:
            return ranked
        lift = top.score * self.bridge_weight
        if len(ranked) >= limit and ranked[limit - 1].score > lift:
            return ranked  # whatever is placed at the lift would land below the limit
        terms = set(_content_terms(top.text, query_words))
        if not terms:
            return ranked
        author = top.author.strip().casefold()

        def follows_up(h: Hit) -> bool:
            return (h.kind == "message" and (h.author or "").strip().casefold() == author
                    and not terms.isdisjoint(w.lower() for w in re.findall(r"\w+", h.text)))

        echoes = [h for h in ranked[1:] if h.score < lift and follows_up(h)][: self.echo]
        cues = {w.lower() for m in _LOOKS_AHEAD.finditer(top.text) for w in re.findall(r"\w+", m.group(0))}
        lookup_terms = terms - cues  # "next month" says when, not what: the outcome need not repeat it
        if lookup and len(echoes) < self.echo and cues and lookup_terms:
            present = {h.id for h in ranked} | set().union(*(h.source_message_ids for h in ranked))
            texts = {_norm_text(h.text) for h in ranked}
            found = keep(await self.store.search_text(tenant, user, " ".join(sorted(lookup_terms)),
                                                      limit=max(10, limit), kinds=("message",)))
            for h in found:
                if len(echoes) == self.echo:
                    break
                if (h.id not in present and h.created_at > top.created_at and follows_up(h)
                        and _norm_text(h.text) not in texts):
                    echoes.append(h)
                    texts.add(_norm_text(h.text))
        if not echoes:
            return ranked
        # Just below the lift, in their own order, so a tie never reorders them by id.
        moved = {h.id: replace(h, score=lift * (1.0 - 1e-6 * (i + 1)),
                               paths={**h.paths, "echo": 1.0, "fused": lift * (1.0 - 1e-6 * (i + 1))})
                 for i, h in enumerate(echoes)}
        out = [moved.pop(h.id, h) if h.kind == "message" else h for h in ranked] + list(moved.values())
        out.sort(key=lambda h: (-h.score, 0 if h.kind == "fact" else 1, h.id))
        return out

    async def _bridge(self, tenant: str, user: str, ranked: list[Hit], query_words: set[str],
                      kinds: Sequence[str], limit: int, keep: Any) -> list[Hit]:
        """Multi-hop: one more lexical lookup for names and identifiers the best hits mention and the
        query does not ("my emergency contact is my sister Aisha" -> "Aisha's new mobile is ...").
        Where the hit that names the term shares words with the query (it is about the question,
        not only alike in shape), the best find that states something ranks just below that hit:
        the second hop is worth as much as the first, and a score cut (the seed's times
        ``bridge_weight``) would leave it below the limit wherever the leading hits score close
        together. Other finds rank at that cut, in the lookup's order."""
        speakers = {w.casefold() for h in ranked if h.kind == "message" and h.author
                    for w in re.findall(r"\w+", h.author)}
        seeds: dict[str, Hit] = {}
        for hit in ranked[: self.bridge]:
            for term in _bridge_terms(hit.text, query_words, speakers):
                seeds.setdefault(term.lower(), hit)
        if not seeds:
            return ranked
        # Without a seed that earns the slot below it, finds rank at the cut, below every hit scoring
        # more: when the limit-th hit already does, nothing found could enter the answer.
        if not any(_strong_link(t) and "lexical" in h.paths for t, h in seeds.items()) and (
                len(ranked) >= limit and ranked[limit - 1].score > max(
                    hit.score * self.bridge_weight for hit in seeds.values())):
            return ranked
        found = keep(await self.store.search_text(tenant, user, " ".join(seeds), limit=max(5, limit),
                                                  kinds=kinds))
        present = {(h.kind, h.id): h for h in ranked[:limit]}
        covered = {m for h in ranked[:limit] for m in (h.source_message_ids or (h.id,))} | {
            h.id for h in ranked[:limit]}
        texts = {_norm_text(h.text) for h in ranked[:limit]}
        extra: list[Hit] = []
        lifted: dict[tuple[str, str], Hit] = {}
        answered: set[str] = set()  # seed terms whose first find is placed
        order = sorted(seeds, key=lambda t: not _strong_link(t))  # a find counts for its strongest link
        for h in found:
            if (h.kind, h.id) not in present and (h.id in covered or _norm_text(h.text) in texts):
                continue
            low = h.text.lower()
            words = {w.lower() for w in re.findall(r"\w+", h.text)}
            term = next((t for t in order if t in words or t in low), None)
            if term is None:
                continue
            seed = seeds[term]
            if h.id == seed.id and h.kind == seed.kind:
                continue  # the hit that named the term
            if (term not in answered and _strong_link(term) and "lexical" in seed.paths
                    and not (h.kind == "message" and _only_asks(h.text))):
                answered.add(term)
                score = seed.score * (1.0 - 1e-4)
            else:
                score = seed.score * self.bridge_weight * (1.0 - 1e-6 * len(extra))  # keep the lookup's order
            if (h.kind, h.id) in present:
                # Already in the answer, but maybe low enough for the finds placed above it to push it
                # out: it ranks at least where a find of the same seed would.
                old = present[(h.kind, h.id)]
                if score > old.score:
                    lifted[(h.kind, h.id)] = replace(old, score=score,
                                                     paths={**old.paths, "bridge": h.score, "fused": score})
                continue
            extra.append(replace(h, score=score, paths={"bridge": h.score, "fused": score}))
            texts.add(_norm_text(h.text))
            covered.update(h.source_message_ids or (h.id,))
        if not extra and not lifted:
            return ranked
        placed = {(e.kind, e.id) for e in extra}
        rest = [lifted.get((h.kind, h.id), h) for h in ranked if (h.kind, h.id) not in placed]
        merged = rest + extra
        merged.sort(key=lambda h: (-h.score, 0 if h.kind == "fact" else 1, h.id))
        return merged

    async def _with_neighbours(
        self, tenant: str, user: str, hits: list[Hit], n: int, skip: set[str]
    ) -> list[Hit]:
        seen = {(h.kind, h.id) for h in hits}
        out: list[Hit] = []
        for hit in hits:
            out.append(hit)
            if hit.kind != "message" or hit.seq is None or hit.thread is None:
                continue
            key = SessionKey(tenant, user, hit.thread)
            around = await self.store.read_since(key, max(0, hit.seq - 1 - n), limit=2 * n + 1)
            for m in around:
                if m.seq == hit.seq or ("message", m.id) in seen or m.id in skip:
                    continue
                seen.add(("message", m.id))
                score = hit.score * 0.5
                out.append(Hit("message", m.id, score, m.content, tenant, user, hit.thread, m.seq, m.created_at,
                               (m.id,), None, None, {"neighbour": 1.0, "fused": score}, m.role, m.author))
        return out


def _speakers(query: str, hits: Sequence[Hit]) -> tuple[set[str], set[str]]:
    """The speakers (casefolded authors of message hits, person names only) ``query`` names and those
    it does not; both empty unless it names some but not all. A speaker is named by the whole name or,
    for a name of several words, its first ("Mateo" for "Mateo Brennan"), as a whole word in any case;
    "Nora's" names Nora."""
    authors = {a for h in hits if h.kind == "message" and h.author and is_person_name(a := h.author.strip())}
    if len(authors) < 2:
        return set(), set()
    named: set[str] = set()
    for author in authors:
        forms = {author, author.split(" ")[0]}
        if any(re.search(rf"(?<!\w){re.escape(form)}(?!\w)", query, re.IGNORECASE) for form in forms):
            named.add(author.casefold())
    everyone = {a.casefold() for a in authors}
    if not named or named == everyone:
        return set(), set()
    return named, everyone - named


def _named_in(text: str, speakers: set[str]) -> str | None:
    """The one speaker (casefolded) a fact's ``text`` names, by whole name or first name: whose fact it
    is ("Melanie lives in Denver.", "The user lives in Lisbon (said by Nora)."); None for none or several."""
    found = {sp for sp in speakers
             if any(re.search(rf"(?<!\w){re.escape(form)}(?!\w)", text, re.IGNORECASE)
                    for form in {sp, sp.split(" ")[0]})}
    return found.pop() if len(found) == 1 else None


@lru_cache(maxsize=8192)
def _forms(word: str) -> frozenset[str]:
    return frozenset(_variants(word))


def _without_name_only(query: str, words: str, lists: dict[str, list[Hit]]) -> list[Hit]:
    """The lexical candidates, less those whose only match with the query is the name of a speaker
    it names. In a two-person chat every question names someone ("What instrument is Marcus
    learning?"), and every fact about Marcus and every turn greeting him contains "Marcus": short
    ones get BM25's length bonus and would crowd the top of the lexical list whatever they say. They
    stay candidates by their vector similarity. Unchanged unless the query names some of the
    speakers but not all (as for the speaker prior, see :func:`_speakers`), or when it has no other
    content word (then the name is all lexical search has to go on)."""
    named, _ = _speakers(query, [h for mode_hits in lists.values() for h in mode_hits])
    name_words = {w for speaker in named for w in re.findall(r"\w+", speaker)}
    rest = [w for w in words.split() if w not in name_words]
    if not name_words or not rest:
        return lists["lexical"]
    wanted = {v for w in rest for v in _forms(w)}
    initials = {w[:1] for w in wanted}  # every inflection of a word starts with its first letter

    def evidence(hit: Hit) -> bool:
        # Inflections both ways: "live" in the query, "lives" in the fact (FTS5 does not stem).
        for token in _TOKEN.findall(hit.text.lower()):
            word = token.replace("’", "'").removesuffix("'s")
            if word in wanted or (word[:1] in initials and not wanted.isdisjoint(_forms(word))):
                return True
        return False

    return [h for h in lists["lexical"] if evidence(h)]


def _one_slot_each(ranked: list[Hit]) -> list[Hit]:
    """Drop what a better-ranked hit already says: a turn repeating another turn's text, a turn a
    better fact was learned from, and a fact whose sources all rank above it."""
    out: list[Hit] = []
    texts: set[str] = set()
    covered: set[str] = set()
    for hit in ranked:
        if hit.kind == "message":
            norm = _norm_text(hit.text)
            if hit.id in covered or (norm and norm in texts):
                continue
            texts.add(norm)
            covered.add(hit.id)
        else:
            sources = set(hit.source_message_ids)
            if sources and sources <= covered:
                continue
            covered |= sources
        out.append(hit)
    return out


def _anchor(window: TimeRange | None, times: Sequence[datetime]) -> TimeRange | None:
    """Keep a time expression only if some candidate falls in it. "In May" without a year means the
    latest May that holds memories (up to ten years back); an expression nothing matches is ignored
    rather than allowed to push every candidate down."""
    if window is None or not times:
        return None
    for shift in range(0, 11 if window.year_implied else 1):
        candidate = window.shifted_years(-shift) if shift else window
        if any(candidate.contains(t) for t in times):
            return candidate
    return None
