"""A second, differently shaped synthetic set: long chit-chat between two friends, questions about
either of them in the third person ("When did Nora go to the pottery workshop?").

It mirrors the shape of public multi-session conversation benchmarks (two people, ~20-30 sessions of
~20 turns, events dated relative to their session, facts about both speakers and about people they
know), and shares no template with :mod:`amber.bench.synth` (a customer talking to support in the
first person). Recall is tuned on neither alone: a change is kept only if it helps on both.

* ``single-hop``: one stated fact (an instrument, a job, a pet's name);
* ``temporal``: an event told as "yesterday", "last weekend", "two weeks ago"; the answer is a date;
* ``multi-hop``: two turns from different sessions are both needed (a relative named in one, what
  they did in another; or a plan and its outcome);
* ``knowledge-update``: where someone lives or works changes; ``stale`` lists the old statements;
* ``open-domain``: the question asks for an inference ("Would Nora enjoy a steakhouse?") whose
  evidence shares few words with it.

The other speaker and the people they mention do similar things (the friend also took a class, a
cousin also moved), so the name in the question matters.

    python -m amber.bench.chitchat --out chat.json --conversations 6 --sessions 24 --turns 22
"""

from __future__ import annotations

import argparse
import random
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from .synth import write_dataset

__all__ = ["generate", "generate_conversation", "main", "CATEGORIES"]

CATEGORIES = ("single-hop", "temporal", "multi-hop", "knowledge-update", "open-domain")

_NAMES = ["Nora", "Felix", "Ines", "Marcus", "Leila", "Tobias", "Ruth", "Idris", "Maya", "Jonah",
          "Anya", "Colm", "Zara", "Emil", "Wren", "Theo", "Sana", "Otto"]
_KIN = ["sister", "brother", "cousin", "aunt", "uncle", "best friend", "roommate", "grandmother"]
_KIN_NAMES = ["Lena", "Rosa", "Dev", "Kit", "Bram", "Joy", "Hugo", "Mina", "Paz", "Ola", "Sid", "Tess"]
_CITIES = ["Lisbon", "Denver", "Galway", "Porto", "Utrecht", "Tampere", "Boise", "Adelaide", "Quebec", "Ghent"]
_EMPLOYERS = ["a bakery", "the city library", "a design studio", "a vet clinic", "a bike shop",
              "a children's hospital", "a coffee roastery", "a radio station"]
_INSTRUMENTS = ["violin", "cello", "ukulele", "drums", "piano", "saxophone"]
_CAREERS = ["social worker", "physiotherapist", "landscape architect", "primary teacher", "midwife",
            "sound engineer"]
_PETS = [("puppy", "dog"), ("kitten", "cat"), ("rabbit", "rabbit"), ("tortoise", "tortoise")]
_PET_NAMES = ["Pepper", "Olive", "Mochi", "Bramble", "Ziggy", "Nutmeg", "Pixel", "Clover"]
_EVENTS = [  # (what I did, noun phrase for the question)
    ("went to a pottery workshop", "go to the pottery workshop"),
    ("ran my first half marathon", "run the half marathon"),
    ("volunteered at the animal shelter", "volunteer at the animal shelter"),
    ("saw a jazz concert in the park", "see the jazz concert"),
    ("joined a climbing gym", "join the climbing gym"),
    ("gave a talk at the library", "give the talk at the library"),
    ("went camping by the lake", "go camping by the lake"),
    ("started a watercolour class", "start the watercolour class"),
    ("visited my grandparents' village", "visit the grandparents' village"),
    ("had a job interview at the museum", "have the job interview at the museum"),
]
_WHEN = [(1, "yesterday"), (2, "the day before yesterday"), (7, "last week"), (14, "two weeks ago"),
         (3, "last weekend")]
_DIETS = [("I've been vegetarian for years now, I just don't miss meat at all.",
           "Would {p} enjoy a dinner at a steakhouse?", "probably not; vegetarian"),
          ("I get really seasick, even a ferry ride makes me ill.",
           "Would {p} like a week-long sailing trip?", "probably not; gets seasick"),
          ("Honestly crowds stress me out, I'd much rather stay in with a book.",
           "Would {p} enjoy a big music festival?", "probably not; dislikes crowds"),
          ("I'm allergic to cats, my eyes swell up within minutes.",
           "Could {p} happily stay a week at a house with three cats?", "no; allergic to cats")]

_CHAT = [
    ("Hey! How have you been?", "Pretty good, busy week though. You?"),
    ("It's been so hot lately, I can barely sleep.", "Same here, I've had the fan on all night."),
    ("I finally finished that series everyone was talking about.", "Ooh, no spoilers! I'm halfway through."),
    ("Work has been a lot this month.", "Hang in there, you've got this."),
    ("I made pancakes this morning, felt like a treat.", "Yum, that sounds perfect."),
    ("Do you have any plans for the holidays?", "Not yet, maybe just relax at home."),
    ("I'm trying to drink more water, it's harder than it sounds.", "Ha, I know the feeling."),
    ("That's so great to hear!", "Thanks, it means a lot."),
    ("I love that for you.", "Aw, thank you!"),
    ("What have you been reading lately?", "A mystery novel, it's pretty gripping."),
    ("I'm so tired today, I didn't sleep well.", "Oh no, hope you can nap later."),
    ("The sunset yesterday was unreal.", "I saw it too! The whole sky was pink."),
    ("I've been thinking about redecorating my room.", "Fun! Any colours in mind?"),
    ("I tried that new cafe on the corner.", "Was it any good?"),
    ("It was nice, the cake was amazing.", "I'll have to check it out."),
    ("How's your family doing?", "Everyone's well, thanks for asking."),
    ("Sorry I've been quiet, it's been hectic.", "No worries at all, I get it."),
    ("I've been listening to a lot of old music lately.", "Nostalgia hits hard sometimes."),
    ("Anyway, what's new with you?", "Not much, same old routine."),
    ("That sounds really fun.", "It was! You should come next time."),
    ("I'm proud of you, seriously.", "Thank you, that means so much."),
    ("Talk soon?", "Definitely, take care!"),
]


def _date(d: datetime) -> str:
    return f"{d.day} {d.strftime('%B')} {d.year}"


class _Planner:
    def __init__(self, rng: random.Random, n_sessions: int, starts: list[datetime], a: str, b: str) -> None:
        self.rng, self.n, self.starts, self.people = rng, n_sessions, starts, (a, b)
        self.slots: list[list[tuple[int, str, str | None]]] = [[] for _ in range(n_sessions)]
        self.questions: list[tuple[dict[str, Any], list[list[Any]], list[list[Any]]]] = []

    def say(self, session: int, who: int, text: str, reply: str | None = None) -> list[Any]:
        """Plant ``text`` by speaker ``who`` (0 or 1) in ``session``; the other one may reply."""
        ref: list[Any] = [None]  # filled with the turn id once placed
        self.slots[session].append((who, text, reply, ref))  # type: ignore[arg-type]
        return ref

    def ask(self, qid: str, question: str, answer: str, category: str, evidence: list[list[Any]],
            stale: Sequence[list[Any]] = ()) -> None:
        self.questions.append(({"id": qid, "question": question, "answer": answer, "category": category},
                               evidence, list(stale)))


def _plan(p: _Planner, who: int, idx: int) -> None:
    rng, name = p.rng, p.people[who]
    kind = idx % 10
    s = rng.randrange(p.n)
    if kind == 0:
        inst = rng.choice(_INSTRUMENTS)
        ev = p.say(s, who, f"Guess what, I've started taking {inst} lessons on Thursday evenings!",
                   "No way, that's amazing! How's it going?")
        p.say(rng.randrange(p.n), 1 - who, f"My {rng.choice(_KIN)} plays the {rng.choice(_INSTRUMENTS)} in a band.")
        p.ask(f"{who}-inst-{idx}", f"What instrument is {name} learning?", inst, "single-hop", [ev])
    elif kind == 1:
        pet, species = rng.choice(_PETS)
        pname = rng.choice(_PET_NAMES)
        ev = p.say(s, who, f"We brought home a little {pet} this week and named it {pname}.",
                   "Oh my gosh, send pictures!")
        p.ask(f"{who}-pet-{idx}", f"What is the name of {name}'s {species}?", pname, "single-hop", [ev])
    elif kind == 2:
        career = rng.choice(_CAREERS)
        ev = p.say(s, who, f"I've been thinking a lot and I want to retrain as a {career}.",
                   "That would suit you so well.")
        p.ask(f"{who}-career-{idx}", f"What career does {name} want to switch to?", career, "single-hop", [ev])
    elif kind in (3, 4):
        what, phrase = _EVENTS[(idx + who * 3) % len(_EVENTS)]
        back, when = rng.choice(_WHEN)
        ev = p.say(s, who, f"I {what} {when}, it was such a good experience.", "That sounds wonderful!")
        # the friend did something similar at another time: the name in the question matters
        p.say(rng.randrange(p.n), 1 - who, f"I {rng.choice(_EVENTS)[0]} a while ago, I loved it.")
        p.ask(f"{who}-when-{idx}", f"When did {name} {phrase}?", _date(p.starts[s] - timedelta(days=back)),
              "temporal", [ev])
    elif kind == 5:
        kin, kname = rng.choice(_KIN), rng.choice(_KIN_NAMES)
        city = rng.choice(_CITIES)
        a, b = sorted(rng.sample(range(p.n), 2))
        ev1 = p.say(a, who, f"My {kin} {kname} is coming to stay with me for a few days.", "Oh nice, have fun!")
        ev2 = p.say(b, who, f"{kname} just got a place in {city}, I'm going to miss having them close.",
                    "Aw, but that's exciting for them.")
        p.ask(f"{who}-kin-{idx}", f"Where did {name}'s {kin} move to?", city, "multi-hop", [ev1, ev2])
    elif kind == 6:
        what, phrase = _EVENTS[(idx + 5 + who) % len(_EVENTS)]
        a, b = sorted(rng.sample(range(p.n), 2))
        ev1 = p.say(a, who, f"I'm a bit nervous, I signed up to {phrase} next month.",
                    "You'll be great, don't worry!")
        outcome = rng.choice(["it went really well", "it was harder than I expected", "I loved every minute"])
        ev2 = p.say(b, who, f"Remember the thing I was nervous about? Well, {outcome}!", "I knew it!")
        p.ask(f"{who}-plan-{idx}", f"How did it go when {name} tried to {phrase}?", outcome, "multi-hop",
              [ev1, ev2])
    elif kind == 7:
        cities = rng.sample(_CITIES, 2 if p.n < 6 else rng.choice([2, 3]))
        sessions = sorted(rng.sample(range(p.n), len(cities)))
        evs = []
        for i, (c, si) in enumerate(zip(cities, sessions)):
            text = (f"I live in {c} now, it's a really friendly place." if i == 0 else
                    f"Big news, we packed everything up and moved to {c}!")
            evs.append(p.say(si, who, text, "That's a big step!"))
        p.say(rng.randrange(p.n), 1 - who, f"My {rng.choice(_KIN)} moved to {rng.choice(_CITIES)} last year.")
        p.ask(f"{who}-city-{idx}", f"Which city does {name} live in now?", cities[-1], "knowledge-update",
              [evs[-1]], evs[:-1])
    elif kind == 8:
        jobs = rng.sample(_EMPLOYERS, 2)
        a, b = sorted(rng.sample(range(p.n), 2))
        ev1 = p.say(a, who, f"I'm working at {jobs[0]} these days, the people are lovely.", "Sounds like a good fit.")
        ev2 = p.say(b, who, f"I handed in my notice! I start at {jobs[1]} on Monday.", "Congratulations!!")
        p.ask(f"{who}-work-{idx}", f"Where does {name} work now?", jobs[1], "knowledge-update", [ev2], [ev1])
    else:
        text, question, answer = _DIETS[(idx + who) % len(_DIETS)]
        ev = p.say(s, who, text, "Good to know, I'll remember that.")
        p.ask(f"{who}-open-{idx}", question.format(p=name), answer, "open-domain", [ev])


def generate_conversation(seed: int, index: int, *, sessions: int = 24, turns: int = 22,
                          facts_per_person: int = 10) -> dict[str, Any]:
    """One conversation; depends only on its arguments."""
    if sessions < 2 or turns < 2:
        raise ValueError("need at least 2 sessions of at least 2 turns")
    rng = random.Random(f"amber-chitchat:{seed}:{index}")
    a, b = rng.sample(_NAMES, 2)
    t = datetime(2023, 3, 1, tzinfo=timezone.utc) + timedelta(days=rng.randrange(90))
    starts = []
    for _ in range(sessions):
        t = t.replace(hour=rng.randint(9, 21), minute=rng.choice([0, 10, 25, 40, 55]))
        starts.append(t)
        t += timedelta(days=rng.randint(3, 16))
    p = _Planner(rng, sessions, starts, a, b)
    for i in range(facts_per_person):
        for who in (0, 1):
            _plan(p, who, index + i)
    out_sessions = []
    for s in range(sessions):
        planted = p.slots[s]
        rng.shuffle(planted)
        turn_list: list[dict[str, str]] = []
        n_filler = max(0, turns - sum(1 + (r is not None) for _, _, r, _ in planted))
        items: list[Any] = [("plant", x) for x in planted] + [("chat", None)] * (n_filler // 2)
        rng.shuffle(items)
        speaker = rng.randrange(2)  # who opens the session

        def add(who: int, text: str) -> str:
            tid = f"D{s + 1}:{len(turn_list) + 1}"
            turn_list.append({"id": tid, "speaker": p.people[who], "role": "user" if who == 0 else "assistant",
                              "text": text})
            return tid

        for tag, item in items:
            if tag == "chat":
                first, second = rng.choice(_CHAT)
                add(speaker, first)
                add(1 - speaker, second)
                speaker = rng.randrange(2)
            else:
                who, text, reply, ref = item
                ref[0] = add(who, text)
                if reply is not None:
                    add(1 - who, reply)
        out_sessions.append({"id": f"S{s + 1}", "started_at": starts[s].strftime("%Y-%m-%dT%H:%M:%SZ"),
                             "turns": turn_list})
    questions, seen = [], set()
    for q, evidence, stale in p.questions:
        qid, n = q["id"], 2
        while qid in seen:
            qid, n = f"{q['id']}-{n}", n + 1
        seen.add(qid)
        item = dict(q, id=qid, evidence=[e[0] for e in evidence])
        if stale:
            item["stale"] = [e[0] for e in stale]
        questions.append(item)
    return {"id": f"chat-{index + 1}", "user": f"pair-{index + 1}", "sessions": out_sessions,
            "questions": questions}


def generate(*, conversations: int = 6, sessions: int = 24, turns: int = 22, seed: int = 11,
             facts_per_person: int = 10, name: str | None = None) -> dict[str, Any]:
    if conversations < 1:
        raise ValueError("need at least one conversation")
    return {
        "name": name or f"amber-chitchat-s{seed}-c{conversations}x{sessions}x{turns}",
        "generator": {"module": "amber.bench.chitchat", "seed": seed, "conversations": conversations,
                      "sessions": sessions, "turns": turns, "facts_per_person": facts_per_person},
        "conversations": [generate_conversation(seed, i, sessions=sessions, turns=turns,
                                                facts_per_person=facts_per_person)
                          for i in range(conversations)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amber.bench.chitchat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output JSON file ('-' for stdout)")
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--turns", type=int, default=22, help="turns per session (approximate)")
    parser.add_argument("--facts-per-person", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    data = generate(conversations=args.conversations, sessions=args.sessions, turns=args.turns, seed=args.seed,
                    facts_per_person=args.facts_per_person, name=args.name)
    write_dataset(data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
