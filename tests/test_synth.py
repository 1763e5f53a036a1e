"""The synthetic dataset generator: deterministic, valid against the eval format, and its planted
facts say what the questions claim they say."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta

import pytest

from amber.bench import synth
from amber.bench.recall import _parse_time, validate_dataset
from amber.errors import InvalidInput


def _turns(conv):
    out = {}
    for s in conv["sessions"]:
        for i, t in enumerate(s["turns"]):
            out[t["id"]] = (s, i, t)
    return out


def test_same_seed_same_dataset_and_other_seed_differs():
    a = synth.generate(conversations=3, sessions=4, turns=10, seed=11)
    b = synth.generate(conversations=3, sessions=4, turns=10, seed=11)
    c = synth.generate(conversations=3, sessions=4, turns=10, seed=12)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["conversations"] != c["conversations"]


def test_a_larger_set_starts_with_the_smaller_one():
    small = synth.generate(conversations=2, sessions=4, turns=10, seed=3)
    large = synth.generate(conversations=4, sessions=4, turns=10, seed=3)
    assert large["conversations"][:2] == small["conversations"]


def test_generated_set_is_valid_and_covers_every_category():
    data = synth.generate(conversations=4, sessions=6, turns=12, seed=5)
    validate_dataset(data)
    categories = {q["category"] for c in data["conversations"] for q in c["questions"]}
    assert categories == set(synth.CATEGORIES)
    users = [c["user"] for c in data["conversations"]]
    assert len(set(users)) == len(users)


def test_ids_unique_evidence_exists_and_stale_is_earlier():
    """Checked here directly, not only through validate_dataset (which is itself under test)."""
    data = synth.generate(conversations=3, sessions=8, turns=16, seed=9)
    n_stale = 0
    for conv in data["conversations"]:
        ids = [t["id"] for s in conv["sessions"] for t in s["turns"]]
        assert len(ids) == len(set(ids))
        position = {tid: i for i, tid in enumerate(ids)}
        qids = [q["id"] for q in conv["questions"]]
        assert len(qids) == len(set(qids))
        for q in conv["questions"]:
            assert q["evidence"] and all(e in position for e in q["evidence"])
            for s in q.get("stale", []):
                n_stale += 1
                assert position[s] < position[q["evidence"][-1]]
                assert s not in q["evidence"]
        starts = [_parse_time(s["started_at"], "") for s in conv["sessions"]]
        assert starts == sorted(starts)
    assert n_stale > 0


def test_planted_facts_match_their_answers():
    data = synth.generate(conversations=4, sessions=6, turns=12, seed=1)
    for conv in data["conversations"]:
        turns = _turns(conv)
        for q in conv["questions"]:
            texts = [turns[e][2]["text"] for e in q["evidence"]]
            if q["category"] in ("single-hop", "distractor", "knowledge-update", "multi-hop"):
                assert any(q["answer"] in t for t in texts), q
            if q["category"] == "knowledge-update":
                assert q["answer"] in texts[-1]
                for s in q["stale"]:
                    assert q["answer"] not in turns[s][2]["text"]
            if q["category"] == "multi-hop":
                sessions = {turns[e][0]["id"] for e in q["evidence"]}
                assert len(q["evidence"]) == 2 and len(sessions) == 2
            if q["category"] == "paraphrase":
                # The question shares no content word with its evidence: lexical search alone struggles.
                words = lambda s: {w for w in re.findall(r"[a-z]+", s.lower()) if len(w) > 3}  # noqa: E731
                assert not words(q["question"]) & words(texts[0]) - {"what", "which", "have", "know"}, q


def test_temporal_answers_are_relative_to_the_session_start():
    offsets = {"this morning": 0, "yesterday": 1, "two days ago": 2, "a week ago today": 7}
    data = synth.generate(conversations=6, sessions=5, turns=10, seed=2)
    checked = 0
    for conv in data["conversations"]:
        turns = _turns(conv)
        for q in conv["questions"]:
            if q["category"] != "temporal":
                continue
            session, _, turn = turns[q["evidence"][0]]
            start = _parse_time(session["started_at"], "")
            answer = datetime.strptime(q["answer"], "%d %B %Y").date()
            phrase = next((p for p in offsets if turn["text"].rstrip(".").endswith(p)), None)
            if phrase is not None:
                assert answer == (start - timedelta(days=offsets[phrase])).date()
            else:
                weekday = turn["text"].rstrip(".").split()[-1]
                assert answer.strftime("%A") == weekday
                assert 2 <= (start.date() - answer).days <= 6
            checked += 1
    assert checked >= 6


def test_scales_to_tens_of_thousands_of_turns():
    data = synth.generate(conversations=10, sessions=25, turns=40, seed=4)
    n = sum(len(s["turns"]) for c in data["conversations"] for s in c["sessions"])
    assert n >= 10 * 25 * 40
    validate_dataset(data)


def test_command_writes_a_valid_file(tmp_path, capsys):
    out = tmp_path / "set.json"
    assert synth.main(["--out", str(out), "--conversations", "2", "--sessions", "3", "--turns", "8"]) == 0
    data = json.loads(out.read_text())
    validate_dataset(data)
    assert len(data["conversations"]) == 2
    assert "wrote 2 conversations" in capsys.readouterr().err


def test_committed_dataset_is_valid_and_reproducible():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "synth-small.json"
    data = json.loads(path.read_text())
    validate_dataset(data)
    params = data["generator"]
    again = synth.generate(
        conversations=params["conversations"], sessions=params["sessions"], turns=params["turns"],
        seed=params["seed"], questions_per_category=params["questions_per_category"],
    )
    assert again["conversations"] == data["conversations"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["conversations"][0]["sessions"][0]["turns"].append(
            dict(d["conversations"][0]["sessions"][0]["turns"][0])), "duplicate turn id"),
        (lambda d: d["conversations"][0]["questions"][0].__setitem__("evidence", ["nope"]), "does not exist"),
        (lambda d: d["conversations"][0]["questions"][0].__setitem__("evidence", []), "non-empty list"),
        (lambda d: d["conversations"][0]["sessions"][0].__setitem__("started_at", "yesterday"), "ISO 8601"),
        (lambda d: d["conversations"][0]["sessions"][0]["turns"][0].__setitem__("role", "bot"), "role"),
        (lambda d: d.__setitem__("conversations", {}), "'conversations' list"),
    ],
)
def test_validator_rejects_malformed_datasets(mutate, message):
    data = copy.deepcopy(synth.generate(conversations=1, sessions=2, turns=6, seed=1))
    mutate(data)
    with pytest.raises(InvalidInput, match=message):
        validate_dataset(data)


def test_validator_rejects_stale_that_is_not_earlier():
    data = synth.generate(conversations=1, sessions=4, turns=8, seed=1)
    q = next(q for q in data["conversations"][0]["questions"] if q.get("stale"))
    q["stale"], q["evidence"] = [q["evidence"][-1]], [q["stale"][0]]
    with pytest.raises(InvalidInput, match="not earlier"):
        validate_dataset(data)


def test_default_sets_are_long_with_small_talk_and_other_peoples_details():
    conv = synth.generate_conversation(7, 0)
    turns = [t for s in conv["sessions"] for t in s["turns"]]
    assert len(conv["sessions"]) >= 20 and len(turns) >= 500
    texts = [t["text"] for t in turns]
    assert sum(1 for t in texts if t in {a for a, _ in synth._CHAT} | {b for _, b in synth._CHAT}) > len(turns) // 5
    assert sum(1 for t in texts if re.match(r"My (sister|brother|mother|father|cousin|neighbour|colleague|aunt) ", t)) \
        >= len(conv["sessions"])


def test_chitchat_set_is_valid_reproducible_and_asks_about_either_speaker():
    from pathlib import Path

    from amber.bench import chitchat

    small = chitchat.generate(conversations=2, sessions=6, turns=12, seed=5)
    validate_dataset(small)
    assert small == chitchat.generate(conversations=2, sessions=6, turns=12, seed=5)
    assert chitchat.generate(conversations=3, sessions=6, turns=12, seed=5)["conversations"][:2] == small["conversations"]
    conv = small["conversations"][0]
    speakers = {t["speaker"] for s in conv["sessions"] for t in s["turns"]}
    assert len(speakers) == 2
    asked = {name for q in conv["questions"] for name in speakers if name in q["question"]}
    assert asked == speakers  # third-person questions about both people
    assert {q["category"] for q in conv["questions"]} == set(chitchat.CATEGORIES)
    by_id = _turns(conv)
    for q in conv["questions"]:  # the evidence is said by the person the question names
        for tid in q["evidence"]:
            assert by_id[tid][2]["speaker"] in q["question"]
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "chitchat.json"
    data = json.loads(path.read_text())
    validate_dataset(data)
    params = data["generator"]
    again = chitchat.generate(conversations=params["conversations"], sessions=params["sessions"],
                              turns=params["turns"], seed=params["seed"],
                              facts_per_person=params["facts_per_person"])
    assert again["conversations"] == data["conversations"]
