"""A deterministic generator of synthetic multi-session conversations in the conversation-eval
format (``amber bench recall`` reads it; the format is described in ``docs/benchmarks.md``).

Each conversation is one customer of an insurer/bank talking to a support agent over many sessions.
Between routine small talk about payments, documents and policies, the customer states facts that
questions asked after the last session need:

* ``single-hop``: one fact, the question shares its key words;
* ``paraphrase``: one fact, the question words it differently (lexical search alone struggles);
* ``knowledge-update``: a value (address, phone, adjuster, debit account) changes over sessions;
  ``stale`` lists the superseded statements and ``evidence`` is the current one;
* ``temporal``: an event dated relative to its session ("yesterday", "last Friday");
  the answer is an absolute date computed from the session's ``started_at``;
* ``multi-hop``: two facts from different sessions must both be recalled;
* ``distractor``: the same kind of fact is also stated about someone else, or a near-miss
  number (C-48213 vs C-48218) appears; only the customer's own statement is evidence.

Distractor statements about relatives and neighbours (about one per session) and small talk (40% of
the unplanted exchanges) fill every conversation; the default length (24 sessions x 26 turns) is that
of real long-running conversations, so top-10 covers under 2% of a history.

Generation is seeded and per-conversation: conversation ``i`` depends only on ``(seed, i)`` and the
size parameters, so a larger set starts with the same conversations as a smaller one.

    python -m amber.bench.synth --out set.json --conversations 50 --sessions 24 --turns 26
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

__all__ = ["generate", "generate_conversation", "dumps", "random_statement", "sample_questions", "main", "CATEGORIES"]

CATEGORIES = ("single-hop", "paraphrase", "knowledge-update", "temporal", "multi-hop", "distractor")

_FIRST = [
    "Maria", "James", "Aisha", "Tomasz", "Chloe", "Daniel", "Priya", "Oliver", "Fatima", "Lucas",
    "Hannah", "Mateo", "Sofia", "Kwame", "Elena", "Noah", "Ingrid", "Ravi", "Grace", "Yusuf",
]
_LAST = [
    "Keller", "Okafor", "Novak", "Brennan", "Haddad", "Lindqvist", "Moreau", "Tanaka", "Silva",
    "Fischer", "Osei", "Kowalski", "Duarte", "Nakamura", "Walsh", "Petrov", "Rahman", "Costa",
]
_RELATIVES = ["sister", "brother", "mother", "father", "cousin", "neighbour", "colleague", "aunt"]
_STREETS = [
    "Oak Street", "Harbour Road", "Birch Lane", "Mill Close", "Station Road", "Elm Avenue",
    "Kingsway", "Cedar Court", "Park Terrace", "Willow Drive", "Quarry Lane", "Chapel Street",
]
_CITIES = ["Leeds", "Bristol", "Glasgow", "Cardiff", "York", "Norwich", "Exeter", "Derby", "Bath", "Hull"]
_ADJUSTERS = [
    "Dana Whitfield", "Marcus Lee", "Helen Park", "Samuel Ortiz", "Nadia Rossi", "Victor Chen",
    "Laura Becker", "Ibrahim Sall", "Megan Doyle", "Pavel Horak",
]
_CARS = ["Subaru Outback", "Toyota Corolla", "Honda Civic", "Skoda Octavia", "Ford Focus", "Kia Niro",
         "Volvo XC40", "Mazda CX-5"]
_PETS = [("beagle", "Biscuit"), ("labrador", "Juno"), ("tabby cat", "Pickle"), ("spaniel", "Rufus"),
         ("parrot", "Kiwi"), ("greyhound", "Comet")]
_JOBS = [("nurse", "St Mary's hospital"), ("electrician", "a building firm"), ("teacher", "Hillside primary"),
         ("pharmacist", "the high-street chemist"), ("accountant", "a logistics company"),
         ("paramedic", "the ambulance service")]
_UNIS = ["Edinburgh", "Manchester", "Durham", "Sheffield", "Nottingham", "Aberdeen"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_INCIDENTS = [
    ("a burst pipe flooded the kitchen", "burst pipe", "the kitchen flood"),
    ("hail dented the roof of my car", "hail damage", "the storm damage to my vehicle"),
    ("my bike was stolen from the shed", "stolen bike", "the theft from my outbuilding"),
    ("a tree fell on the garage", "fallen tree", "the garage accident"),
    ("someone broke my front window", "broken window", "the vandalism at my house"),
    ("my phone was cracked on holiday", "cracked phone", "the device breakage abroad"),
]

# Routine exchanges that carry no fact but share the domain's vocabulary (claims, policies,
# payments, addresses), so retrieval has to tell statements of facts from chatter about them.
_FILLER_USER = [
    "Can you check whether my last payment went through?",
    "I just wanted to ask about the status of my claim.",
    "Is there a form I need to fill in for the policy renewal?",
    "Could you resend the documents? I can't find the email.",
    "What does my policy cover if I travel abroad?",
    "How long does it usually take for a claim to be reviewed?",
    "I got a letter about my account but I didn't understand it.",
    "Can I change the date my premium is collected?",
    "Do you need a copy of my ID again?",
    "Is the branch on the high street still open on Saturdays?",
    "I'd like to know if there's a fee for paying by card.",
    "My online banking login keeps timing out.",
    "Thanks for sorting that out last time.",
    "Can you tell me what the excess is on my home cover?",
    "Is it possible to add my partner as a named driver?",
    "I'm thinking about increasing the contents cover.",
    "Why did my monthly payment go up this year?",
    "Could someone call me back about the paperwork?",
    "The app shows a pending transaction I don't recognise.",
    "Do you have an update on the repair estimate?",
    "What's the best way to upload photos of the damage?",
    "I need a statement for my mortgage application.",
    "Has the assessor's report arrived yet?",
    "Can you confirm you received my signed form?",
    # Chatter about the very attributes the questions ask for, without stating a value: a realistic
    # near-miss for both lexical and dense retrieval.
    "Do you still have the right address for me on file?",
    "Is the phone number on my account correct?",
    "Which adjuster should I speak to about the claim?",
    "Can you check which account the direct debit comes from?",
    "I might need to update my contact details soon.",
    "Is my claim number on the letter you sent?",
    "Does my car insurance policy cover a courtesy car?",
    "Who is my emergency contact on the account at the moment?",
    "When did I last report an incident to you?",
    "Remind me what excess applies to my home insurance?",
]
_FILLER_ASSISTANT = [
    "I can see the payment was received and applied to your account.",
    "Your request is with the team; reviews normally take five to ten working days.",
    "I've resent the documents to the contact details we hold for you.",
    "The renewal form is in the app under Documents; it only takes a few minutes.",
    "Your cover includes emergency medical costs abroad up to the policy limit.",
    "I've added a note to your file so the next advisor has the context.",
    "There's no fee for card payments on this product.",
    "I've logged the issue with our digital team; clearing the app cache often helps.",
    "You're welcome. Is there anything else I can help with today?",
    "The excess is shown on page two of your schedule.",
    "Adding a named driver can change the premium; I can get you a quote.",
    "I'll ask a colleague to call you back within two working days.",
    "That transaction is a pre-authorisation and should drop off in a few days.",
    "The assessor's report hasn't arrived yet; I'll chase it for you.",
    "Photos can be uploaded in the claim section of the app.",
    "I've requested the statement; it will arrive by post within a week.",
    "I can confirm we received the signed form, thank you.",
    "Premiums are reviewed each year based on claims in your area and inflation.",
]
# Openers and closers vary the routine turns, so the haystack is not a few lines repeated verbatim
# (real support logs repeat themselves, but rarely word for word hundreds of times).
_OPENERS = ["", "", "", "Hi again. ", "Morning! ", "Sorry to bother you, ", "Quick one: ", "Hello, ",
            "One more thing. ", "Hi, it's me again. "]
_CLOSERS = ["", "", "", " Thanks.", " Cheers.", " Thank you!", " No rush.", " Appreciate it."]

# Small talk: real dialogues are mostly this, and it shares no vocabulary with the questions, so it
# dilutes what top-k can cover on long histories without being a trap for lexical search.
_CHAT = [
    ("The weather has been awful this week, it hasn't stopped raining.",
     "Sorry to hear that. Hopefully it clears up for the weekend."),
    ("We finally had a quiet weekend at home for once.", "That sounds lovely, everyone needs one of those."),
    ("The kids are off school this week so it's chaos here.", "I can imagine! Good luck with the week."),
    ("I've just got back from a long walk by the river.", "That sounds nice. It's a good day for it."),
    ("Sorry if I sound tired, I was up late watching the football.", "No problem at all. Did your team win?"),
    ("We're trying a new recipe tonight, some kind of curry.", "Enjoy it! Home cooking is the best."),
    ("My garden is finally looking good after all that work.", "That must be satisfying after the effort."),
    ("I'm on my lunch break so I might have to go suddenly.", "Understood, we can pick this up any time."),
    ("It's been a long week at work, I'm looking forward to Friday.", "Nearly there! Any plans for the weekend?"),
    ("We went to the cinema last night, the film was a bit long.", "Ha, they often are these days."),
    ("The traffic this morning was terrible.", "Sounds stressful. At least you're home now."),
    ("I've started running again, trying to get fit.", "Good for you, that's a great habit."),
    ("Happy new month! Time flies.", "It really does. Happy new month to you too."),
    ("My neighbour's dog kept me awake half the night.", "That's frustrating. I hope you get some rest tonight."),
    ("I'm finally getting around to sorting the loft.", "A big job! You'll be glad when it's done."),
    ("We had friends round for dinner on Saturday.", "How lovely. Did you cook?"),
    ("I'm so glad it's getting lighter in the evenings.", "Me too, it makes a big difference."),
    ("Sorry for the delay, I had to pick my son up from football.", "No worries, take your time."),
]

_ACKS = [
    "Thanks, I've noted that on your file.",
    "Got it, I've updated our records.",
    "Thank you, that's recorded.",
    "Understood, I've added that to your account notes.",
    "Noted, thanks for letting me know.",
]


@dataclass
class _Exchange:
    """One planted user/assistant pair; ``fact_role`` says which side states the fact."""

    user: str
    assistant: str
    fact_role: str = "user"
    turn_id: str | None = None  # filled in once placed


@dataclass
class _Plan:
    sessions: list[list[_Exchange]]
    questions: list[tuple[dict[str, Any], list[_Exchange], list[_Exchange]]] = field(default_factory=list)

    def put(self, session: int, ex: _Exchange) -> _Exchange:
        self.sessions[session].append(ex)
        return ex

    def ask(self, qid: str, question: str, answer: str, category: str,
            evidence: list[_Exchange], stale: Sequence[_Exchange] = ()) -> None:
        self.questions.append(({"id": qid, "question": question, "answer": answer, "category": category},
                               evidence, list(stale)))


def _filler(rng: random.Random) -> str:
    opener, body, closer = rng.choice(_OPENERS), rng.choice(_FILLER_USER), rng.choice(_CLOSERS)
    if opener.endswith(", "):
        body = body[0].lower() + body[1:] if not body.startswith("I ") and not body.startswith("I'") else body
    return opener + body + closer


def _ack(rng: random.Random) -> str:
    return rng.choice(_ACKS)


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def _near_miss(rng: random.Random, number: str) -> str:
    """The same identifier with its last digit changed: a classic near-miss distractor."""
    last = number[-1]
    other = rng.choice([d for d in "0123456789" if d != last])
    return number[:-1] + other


def _phone(rng: random.Random) -> str:
    return f"07700 {rng.randint(100, 999)} {rng.randint(100, 999)}"


def _address(rng: random.Random) -> str:
    return f"{rng.randint(2, 98)} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}"


def _date_text(d: datetime) -> str:
    return f"{d.day} {d.strftime('%B')} {d.year}"


def _other_person(rng: random.Random, exclude: str) -> tuple[str, str]:
    rel = rng.choice(_RELATIVES)
    name = rng.choice([n for n in _FIRST if n != exclude])
    return rel, name


def _plan_single_hop(rng: random.Random, plan: _Plan, n_sessions: int, first: str, idx: int) -> None:
    kind = idx % 4
    s = rng.randrange(n_sessions)
    if kind == 0:
        num = f"P-{_digits(rng, 6)}"
        car = rng.choice(_CARS)
        ex = plan.put(s, _Exchange(f"My car insurance policy number is {num}, it covers the {car}.", _ack(rng)))
        plan.ask(f"single-{idx}", "What is my car insurance policy number?", num, "single-hop", [ex])
    elif kind == 1:
        acct = _digits(rng, 4)
        bank = rng.choice(["Northway Bank", "Harbour Savings", "Crestline Bank", "Union Mutual"])
        ex = plan.put(s, _Exchange(f"My savings account is with {bank}, the one ending in {acct}.", _ack(rng)))
        plan.ask(f"single-{idx}", "Which bank holds my savings account?", bank, "single-hop", [ex])
    elif kind == 2:
        email = f"{first.lower()}.{rng.choice(_LAST).lower()}{rng.randint(1, 99)}@example.org"
        ex = plan.put(s, _Exchange(f"My email address for statements is {email}.", _ack(rng)))
        plan.ask(f"single-{idx}", "What email address do I use for statements?", email, "single-hop", [ex])
    else:
        amount = rng.choice([250, 500, 750, 1000])
        ex = plan.put(s, _Exchange(f"I chose an excess of {amount} pounds on my home insurance.", _ack(rng)))
        plan.ask(f"single-{idx}", "What excess did I choose on my home insurance?", f"{amount} pounds",
                 "single-hop", [ex])


def _plan_paraphrase(rng: random.Random, plan: _Plan, n_sessions: int, first: str, idx: int) -> None:
    kind = idx % 6
    s = rng.randrange(n_sessions)
    if kind == 0:
        pet, name = rng.choice(_PETS)
        ex = plan.put(s, _Exchange(f"We adopted a {pet} called {name} last spring, she's a handful.", _ack(rng)))
        plan.ask(f"para-{idx}", "What's the name of our animal?", name, "paraphrase", [ex])
    elif kind == 1:
        job, where = rng.choice(_JOBS)
        ex = plan.put(s, _Exchange(f"I work shifts as a {job} at {where}, so mornings are hard for me.", _ack(rng)))
        plan.ask(f"para-{idx}", "What is my occupation?", job, "paraphrase", [ex])
    elif kind == 2:
        channel = rng.choice(["text message", "email", "a letter by post"])
        ex = plan.put(s, _Exchange(f"Please only reach me by {channel}; I never answer calls from unknown numbers.",
                                   _ack(rng)))
        plan.ask(f"para-{idx}", "How do I prefer to be contacted?", channel, "paraphrase", [ex])
    elif kind == 3:
        car = rng.choice(_CARS)
        ex = plan.put(s, _Exchange(f"I drive a {rng.randint(2012, 2023)} {car} to work every day.", _ack(rng)))
        plan.ask(f"para-{idx}", "Which vehicle do I own?", car, "paraphrase", [ex])
    elif kind == 4:
        drug = rng.choice(["penicillin", "ibuprofen", "codeine", "latex"])
        ex = plan.put(s, _Exchange(f"For the travel cover form: I'm allergic to {drug}.", _ack(rng)))
        plan.ask(f"para-{idx}", "Do I have any medical sensitivities you should know about?", drug,
                 "paraphrase", [ex])
    else:
        uni = rng.choice(_UNIS)
        child, pronoun = rng.choice([("daughter", "her"), ("son", "his")])
        ex = plan.put(s, _Exchange(f"My {child} just started {pronoun} first year at university in {uni}.",
                                   _ack(rng)))
        plan.ask(f"para-{idx}", "Where is my kid studying?", uni, "paraphrase", [ex])


def _plan_update(rng: random.Random, plan: _Plan, n_sessions: int, first: str, idx: int) -> None:
    kind = idx % 4
    versions = min(rng.choice([2, 3]), n_sessions)
    sessions = sorted(rng.sample(range(n_sessions), versions))
    exs: list[_Exchange] = []
    values: list[str] = []
    for i, s in enumerate(sessions):
        if kind == 0:
            v = _address(rng)
            while v in values:
                v = _address(rng)
            text = (f"My address is {v}." if i == 0 else
                    f"We've moved house, so my address is now {v}.")
            ex = _Exchange(text, _ack(rng))
        elif kind == 1:
            v = _phone(rng)
            while v in values:
                v = _phone(rng)
            text = (f"My phone number is {v}." if i == 0 else f"I got a new phone; my number is now {v}.")
            ex = _Exchange(text, _ack(rng))
        elif kind == 2:
            v = rng.choice([a for a in _ADJUSTERS if a not in values])
            ex = _Exchange("Who is handling my claim at the moment?" if i == 0 else
                           "Has anyone new been assigned to my claim?",
                           f"Your claim adjuster is {v}." if i == 0 else
                           f"Your claim has been reassigned; your adjuster is now {v}.", fact_role="assistant")
        else:
            v = _digits(rng, 4)
            while v in values:
                v = _digits(rng, 4)
            text = (f"Please take the direct debit from my current account ending {v}." if i == 0 else
                    f"Switch the direct debit to my other account, the one ending {v}.")
            ex = _Exchange(text, _ack(rng))
        values.append(v)
        exs.append(plan.put(s, ex))
    question = {
        0: "What is my current home address?",
        1: "What phone number should you use to reach me now?",
        2: "Who is the adjuster on my claim now?",
        3: "Which account does my direct debit come from now?",
    }[kind]
    plan.ask(f"update-{idx}", question, values[-1], "knowledge-update", [exs[-1]], stale=exs[:-1])


def _plan_temporal(rng: random.Random, plan: _Plan, n_sessions: int, first: str, idx: int,
                   starts: list[datetime]) -> None:
    s = rng.randrange(n_sessions)
    start = starts[s]
    incident, short, _ = _INCIDENTS[idx % len(_INCIDENTS)]
    back = rng.choice([0, 1, 2, 7, -1])  # -1: "last <weekday>", 2-6 days back
    if back == -1:
        back = rng.randint(2, 6)
        phrase = f"last {_WEEKDAYS[(start - timedelta(days=back)).weekday()]}"
    else:
        phrase = {0: "this morning", 1: "yesterday", 2: "two days ago", 7: "a week ago today"}[back]
    when = start - timedelta(days=back)
    ex = plan.put(s, _Exchange(f"I need to report that {incident} {phrase}.", _ack(rng)))
    plan.ask(f"temporal-{idx}", f"When did the {short} happen?", _date_text(when), "temporal", [ex])


def _plan_multi_hop(rng: random.Random, plan: _Plan, n_sessions: int, first: str, idx: int) -> None:
    if n_sessions < 2:
        return
    a, b = sorted(rng.sample(range(n_sessions), 2))
    kind = idx % 3
    if kind == 0:
        rel, name = _other_person(rng, first)
        phone = _phone(rng)
        ex1 = plan.put(a, _Exchange(f"Put my {rel} {name} down as my emergency contact.", _ack(rng)))
        ex2 = plan.put(b, _Exchange(f"By the way, {name} has a new mobile: {phone}.", _ack(rng)))
        plan.ask(f"multi-{idx}", "What is the phone number of my emergency contact?", phone, "multi-hop", [ex1, ex2])
    elif kind == 1:
        child = rng.choice([n for n in _FIRST if n != first])
        uni = rng.choice(_UNIS)
        amount = rng.choice([150, 200, 300, 400])
        ex1 = plan.put(a, _Exchange(f"I'd like to set up a standing order of {amount} pounds a month to {child}.",
                                    _ack(rng)))
        ex2 = plan.put(b, _Exchange(f"{child} is studying engineering in {uni} now, it's going well.", _ack(rng)))
        plan.ask(f"multi-{idx}", "In which city does the person receiving my standing order study?", uni,
                 "multi-hop", [ex1, ex2])
    else:
        num = f"HP-{_digits(rng, 5)}"
        incident, short, _ = rng.choice(_INCIDENTS)
        ex1 = plan.put(a, _Exchange(f"Our home insurance policy is {num}.", _ack(rng)))
        ex2 = plan.put(b, _Exchange(f"I want to claim on the home insurance because {incident}.", _ack(rng)))
        plan.ask(f"multi-{idx}", f"Under which policy number should the {short} claim be filed?", num,
                 "multi-hop", [ex1, ex2])


def _plan_distractor(rng: random.Random, plan: _Plan, n_sessions: int, first: str, idx: int) -> None:
    kind = idx % 3
    s_own, s_other = rng.randrange(n_sessions), rng.randrange(n_sessions)
    if kind == 0:
        num = f"C-{_digits(rng, 5)}"
        other = _near_miss(rng, num)
        incident, short, _ = rng.choice(_INCIDENTS)
        ex = plan.put(s_own, _Exchange(f"My claim number is {num}, for when {incident}.", _ack(rng)))
        rel, name = _other_person(rng, first)
        plan.put(s_other, _Exchange(f"My {rel} {name} had the same thing happen; {name}'s claim is {other}.",
                                    _ack(rng)))
        plan.ask(f"distract-{idx}", f"What is my claim number for the {short}?", num, "distractor", [ex])
    elif kind == 1:
        mine, theirs = _address(rng), _address(rng)
        rel, name = _other_person(rng, first)
        ex = plan.put(s_own, _Exchange(f"The insured property is my holiday flat at {mine}.", _ack(rng)))
        plan.put(s_other, _Exchange(f"My {rel} {name} wants a quote too; {name}'s flat is at {theirs}.", _ack(rng)))
        plan.ask(f"distract-{idx}", "What is the address of my insured holiday flat?", mine, "distractor", [ex])
    else:
        mine = f"{_digits(rng, 2)}-{_digits(rng, 2)}-{_digits(rng, 2)}"
        theirs = _near_miss(rng, mine)
        rel, name = _other_person(rng, first)
        ex = plan.put(s_own, _Exchange(f"My sort code is {mine}.", _ack(rng)))
        plan.put(s_other, _Exchange(f"I'm paying my {rel} {name} back; {name}'s sort code is {theirs}.", _ack(rng)))
        plan.ask(f"distract-{idx}", "What is my sort code?", mine, "distractor", [ex])


def _background_distractors(rng: random.Random, plan: _Plan, n_sessions: int, first: str, count: int) -> None:
    """Facts about other people (phones, addresses, policies, jobs, pets...) that are never evidence:
    real customers mention their family's details all the time."""
    for _ in range(count):
        rel, name = _other_person(rng, first)
        s = rng.randrange(n_sessions)
        pet, pet_name = rng.choice(_PETS)
        job, where = rng.choice(_JOBS)
        text = rng.choice([
            f"My {rel} {name}'s phone number is {_phone(rng)}, in case you need it for the form.",
            f"My {rel} {name} lives at {_address(rng)}.",
            f"My {rel} {name} is with another insurer, policy P-{_digits(rng, 6)}.",
            f"My {rel} {name} just switched to a {rng.choice(_CARS)}.",
            f"My {rel} {name} works as a {job} at {where}.",
            f"My {rel} {name} has a {pet} called {pet_name}.",
            f"My {rel} {name}'s claim number is C-{_digits(rng, 5)}, she asked me to mention it.",
            f"My {rel} {name} banks with {rng.choice(['Northway Bank', 'Harbour Savings', 'Crestline Bank'])}.",
            f"My {rel} {name} uses {name.lower()}.{rng.choice(_LAST).lower()}@example.net for everything.",
        ])
        plan.put(s, _Exchange(text, _ack(rng)))


def random_statement(rng: random.Random) -> str:
    """One memory-like text (a stated fact or routine chatter) for bulk-loading scale runs."""
    first = rng.choice(_FIRST)
    rel, name = _other_person(rng, first)
    return rng.choice([
        lambda: f"My address is {_address(rng)}.",
        lambda: f"My phone number is {_phone(rng)}.",
        lambda: f"My claim number is C-{_digits(rng, 5)}, for when {rng.choice(_INCIDENTS)[0]}.",
        lambda: f"My car insurance policy number is P-{_digits(rng, 6)}, it covers the {rng.choice(_CARS)}.",
        lambda: f"Your claim adjuster is {rng.choice(_ADJUSTERS)}.",
        lambda: f"My {rel} {name} lives at {_address(rng)}.",
        lambda: f"I work shifts as a {rng.choice(_JOBS)[0]}, so mornings are hard for me.",
        lambda: f"Please take the direct debit from my current account ending {_digits(rng, 4)}.",
        lambda: rng.choice(_FILLER_USER),
        lambda: rng.choice(_FILLER_ASSISTANT),
    ])()


def sample_questions() -> list[str]:
    """Question wordings the generator uses (for latency runs that need realistic queries)."""
    return [
        "What is my car insurance policy number?", "Which bank holds my savings account?",
        "What's the name of our animal?", "What is my occupation?", "How do I prefer to be contacted?",
        "What is my current home address?", "What phone number should you use to reach me now?",
        "Who is the adjuster on my claim now?", "When did the burst pipe happen?",
        "What is the phone number of my emergency contact?", "What is my claim number for the stolen bike?",
        "What is my sort code?", "Which vehicle do I own?", "Where is my kid studying?",
    ]


def generate_conversation(
    seed: int, index: int, *, sessions: int = 24, turns: int = 26, questions_per_category: int = 2,
    chat_share: float = 0.4,
) -> dict[str, Any]:
    """One conversation in the eval format; depends only on its arguments. ``chat_share``: the share
    of unplanted exchanges that are small talk rather than routine support chatter."""
    if sessions < 1 or turns < 2:
        raise ValueError("need at least 1 session of at least 2 turns")
    rng = random.Random(f"amber-synth:{seed}:{index}")
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    speaker = f"{first} {last}"
    start = datetime(2023, 1, 2, tzinfo=timezone.utc) + timedelta(days=rng.randrange(60))
    starts: list[datetime] = []
    t = start
    for _ in range(sessions):
        t = t.replace(hour=rng.randint(8, 18), minute=rng.choice([0, 5, 15, 20, 30, 40, 45, 50]))
        starts.append(t)
        t = t + timedelta(days=rng.randint(2, 12))

    plan = _Plan([[] for _ in range(sessions)])
    planners: list[Callable[[int], None]] = [
        lambda i: _plan_single_hop(rng, plan, sessions, first, i),
        lambda i: _plan_paraphrase(rng, plan, sessions, first, i),
        lambda i: _plan_update(rng, plan, sessions, first, i),
        lambda i: _plan_temporal(rng, plan, sessions, first, i, starts),
        lambda i: _plan_multi_hop(rng, plan, sessions, first, i),
        lambda i: _plan_distractor(rng, plan, sessions, first, i),
    ]
    for q in range(questions_per_category):
        for planner in planners:
            planner(index + q)  # offset by conversation so kinds rotate across conversations
    _background_distractors(rng, plan, sessions, first, max(2, sessions))

    out_sessions = []
    for s in range(sessions):
        planted = plan.sessions[s]
        rng.shuffle(planted)
        n_pairs = max(turns // 2, len(planted))
        slots = sorted(rng.sample(range(n_pairs), len(planted)))
        by_slot = dict(zip(slots, planted))
        turn_list: list[dict[str, str]] = []
        for pair in range(n_pairs):
            ex = by_slot.get(pair)
            if ex is not None:
                user_text, asst_text = ex.user, ex.assistant
            elif rng.random() < chat_share:
                user_text, asst_text = rng.choice(_CHAT)
            else:
                user_text, asst_text = _filler(rng), rng.choice(_FILLER_ASSISTANT)
            uid, aid = f"D{s + 1}:{len(turn_list) + 1}", f"D{s + 1}:{len(turn_list) + 2}"
            turn_list.append({"id": uid, "speaker": speaker, "role": "user", "text": user_text})
            turn_list.append({"id": aid, "speaker": "Support", "role": "assistant", "text": asst_text})
            if ex is not None:
                ex.turn_id = uid if ex.fact_role == "user" else aid
        out_sessions.append({
            "id": f"S{s + 1}",
            "started_at": starts[s].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "turns": turn_list,
        })

    questions = []
    seen: set[str] = set()
    for q, evidence, stale in plan.questions:
        qid = q["id"]
        n = 2
        while qid in seen:  # two planners of the same kind can draw the same index
            qid, n = f"{q['id']}-{n}", n + 1
        seen.add(qid)
        item = dict(q, id=qid, evidence=[e.turn_id for e in evidence])
        if stale:
            item["stale"] = [e.turn_id for e in stale]
        questions.append(item)
    return {
        "id": f"conv-{index + 1}",
        "user": f"customer-{index + 1}",
        "sessions": out_sessions,
        "questions": questions,
    }


def generate(
    *, conversations: int = 5, sessions: int = 24, turns: int = 26, seed: int = 7,
    questions_per_category: int = 2, name: str | None = None,
) -> dict[str, Any]:
    """A whole dataset: ``conversations`` x ``sessions`` x ~``turns`` turns (planted facts may add a few)."""
    if conversations < 1:
        raise ValueError("need at least one conversation")
    return {
        "name": name or f"amber-synth-s{seed}-c{conversations}x{sessions}x{turns}",
        "generator": {"module": "amber.bench.synth", "seed": seed, "conversations": conversations,
                      "sessions": sessions, "turns": turns, "questions_per_category": questions_per_category},
        "conversations": [
            generate_conversation(seed, i, sessions=sessions, turns=turns,
                                  questions_per_category=questions_per_category)
            for i in range(conversations)
        ],
    }


def dumps(data: dict[str, Any]) -> str:
    """The dataset as JSON with one turn or question per line: compact enough to commit, readable
    in a diff."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    head = {k: v for k, v in data.items() if k != "conversations"}
    lines = ["{" + one(head)[1:-1] + ',"conversations":[']
    for ci, conv in enumerate(data["conversations"]):
        chead = {k: v for k, v in conv.items() if k not in ("sessions", "questions")}
        lines.append("{" + one(chead)[1:-1] + ',"sessions":[')
        for si, session in enumerate(conv["sessions"]):
            shead = {k: v for k, v in session.items() if k != "turns"}
            lines.append("{" + one(shead)[1:-1] + ',"turns":[')
            lines.extend(one(t) + ("," if ti < len(session["turns"]) - 1 else "")
                         for ti, t in enumerate(session["turns"]))
            lines.append("]}" + ("," if si < len(conv["sessions"]) - 1 else ""))
        lines.append('],"questions":[')
        qs = conv.get("questions", [])
        lines.extend(one(q) + ("," if qi < len(qs) - 1 else "") for qi, q in enumerate(qs))
        lines.append("]}" + ("," if ci < len(data["conversations"]) - 1 else ""))
    lines.append("]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amber.bench.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output JSON file ('-' for stdout)")
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=24, help="sessions per conversation")
    parser.add_argument("--turns", type=int, default=26, help="turns per session (approximate, even)")
    parser.add_argument("--questions-per-category", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    data = generate(conversations=args.conversations, sessions=args.sessions, turns=args.turns, seed=args.seed,
                    questions_per_category=args.questions_per_category, name=args.name)
    write_dataset(data, args.out)
    return 0


def write_dataset(data: dict, out: str) -> None:
    """Write a dataset as JSON to ``out`` ('-' for stdout) and say its size on stderr."""
    text = dumps(data)
    if out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    n_turns = sum(len(s["turns"]) for c in data["conversations"] for s in c["sessions"])
    n_q = sum(len(c["questions"]) for c in data["conversations"])
    print(f"wrote {len(data['conversations'])} conversations, {n_turns} turns, {n_q} questions", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
