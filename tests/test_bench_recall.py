"""The recall benchmark: the scorer on hand-made cases, and end-to-end runs of the harness and of the
command on real stores (the in-memory reference and a SQLite file). The vector path uses the
model-free hashing embedder (deterministic, no download)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from amber.bench.recall import (
    ScoredHit,
    aggregate,
    parse_ks,
    parse_modes,
    percentile,
    run_recall_bench,
    score_question,
)
from amber.errors import InvalidInput
from amber.store import open_store


def H(*turns: str, tokens: int = 10, superseded: bool = False) -> ScoredHit:
    return ScoredHit(frozenset(turns), tokens, superseded)


# -- the scorer ------------------------------------------------------------------------------------


def test_scorer_says_one_when_every_evidence_turn_is_in_the_top_k():
    hits = [H("D1:1"), H("D2:4"), H("D3:2")]
    s = score_question(hits, ["D2:4", "D3:2"], [], 3)
    assert s == {"recall_all": 1.0, "recall_any": 1.0, "context_tokens": 30.0, "update_order": None}


def test_scorer_says_zero_when_no_evidence_turn_is_in_the_top_k():
    hits = [H("D1:1"), H("D1:2"), H("D2:4")]
    s = score_question(hits, ["D2:4"], [], 2)  # D2:4 is third: outside k=2
    assert s["recall_all"] == 0.0 and s["recall_any"] == 0.0
    assert s["context_tokens"] == 20.0
    assert score_question([], ["D1:1"], [], 10)["recall_any"] == 0.0


def test_scorer_any_without_all():
    s = score_question([H("D1:1"), H("D9:9")], ["D1:1", "D2:2"], [], 10)
    assert (s["recall_all"], s["recall_any"]) == (0.0, 1.0)


def test_a_fact_hit_counts_for_every_turn_it_was_learned_from():
    fact = H("D1:3", "D4:1")  # one fact learned from two turns
    assert score_question([fact], ["D1:3", "D4:1"], [], 1)["recall_all"] == 1.0


@pytest.mark.parametrize(
    "hits, expected",
    [
        ([H("D3:1"), H("D1:1")], 1.0),  # current above stale
        ([H("D1:1"), H("D3:1")], 0.0),  # stale above current
        ([H("D1:1", superseded=True), H("D3:1")], 1.0),  # stale above, but marked superseded
        ([H("D1:1"), H("D2:2")], 0.0),  # current missing
        ([H("D9:9"), H("D3:1")], 1.0),  # current present, stale absent
        ([H("D1:1", "D3:1")], 0.0),  # one hit covering both: current is not ABOVE the stale one
    ],
)
def test_update_order(hits, expected):
    s = score_question(hits, ["D3:1"], ["D1:1"], 10)
    assert s["update_order"] == expected


def test_update_order_respects_k():
    hits = [H("D9:9"), H("D3:1"), H("D1:1")]
    assert score_question(hits, ["D3:1"], ["D1:1"], 1)["update_order"] == 0.0
    assert score_question(hits, ["D3:1"], ["D1:1"], 2)["update_order"] == 1.0


def test_aggregate_means_per_category_and_skips_absent_update_order():
    rows = [
        {"category": "a", "scores": {1: score_question([H("x")], ["x"], [], 1)}},
        {"category": "a", "scores": {1: score_question([H("y")], ["x"], [], 1)}},
        {"category": "b", "scores": {1: score_question([H("n")], ["n"], ["o"], 1)}},
    ]
    agg = aggregate(rows, [1])
    assert agg["overall"]["recall_all@1"] == pytest.approx(2 / 3, abs=1e-4)
    assert agg["overall"]["update_order@1"] == 1.0  # only the question with stale counts
    assert agg["by_category"]["a"]["recall_all@1"] == 0.5
    assert agg["by_category"]["a"]["update_order@1"] is None
    assert agg["by_category"]["b"]["questions"] == 1


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([], 50) is None


def test_bad_modes_and_ks_are_clear_errors():
    with pytest.raises(InvalidInput, match="unknown retrieval mode"):
        parse_modes("lexical,telepathy")
    with pytest.raises(InvalidInput, match="positive integers"):
        parse_ks("0,5")
    assert parse_modes("hybrid+facts, lexical") == ("hybrid+facts", "lexical")
    assert parse_ks("10,1,5,5") == (1, 5, 10)


# -- the harness end to end -------------------------------------------------------------------------

TINY = {
    "name": "tiny",
    "conversations": [
        {
            "id": "c1",
            "user": "u1",
            "sessions": [
                {"id": "S1", "started_at": "2024-01-02T10:00:00Z", "turns": [
                    {"id": "D1:1", "speaker": "Ann", "role": "user", "text": "My address is 12 Oak Street, Leeds."},
                    {"id": "D1:2", "speaker": "Bot", "role": "assistant", "text": "Thanks, noted."},
                    {"id": "D1:3", "speaker": "Ann", "role": "user", "text": "The weather is lovely today."},
                ]},
                {"id": "S2", "started_at": "2024-02-02T10:00:00Z", "turns": [
                    {"id": "D2:1", "speaker": "Ann", "role": "user",
                     "text": "We moved, my address is now 9 Harbour Road, Bristol."},
                    {"id": "D2:2", "speaker": "Bot", "role": "assistant", "text": "Updated."},
                    {"id": "D2:3", "speaker": "Ann", "role": "user", "text": "Our zebra Stripes loves carrots."},
                ]},
            ],
            "questions": [
                {"id": "q-hit", "question": "zebra Stripes carrots", "answer": "-", "evidence": ["D2:3"],
                 "category": "single-hop"},
                {"id": "q-miss", "question": "quantum chromodynamics", "answer": "-", "evidence": ["D1:3"],
                 "category": "unanswerable"},
                {"id": "q-upd", "question": "Harbour Road Bristol address", "answer": "-", "evidence": ["D2:1"],
                 "stale": ["D1:1"], "category": "knowledge-update"},
            ],
        },
        {
            # A second user who also says "zebra": a question may only be answered from its own conversation.
            "id": "c2",
            "user": "u1",
            "sessions": [{"id": "S1", "started_at": "2024-01-05T09:00:00", "turns": [
                {"id": "D1:1", "speaker": "Bo", "role": "user", "text": "zebra Stripes carrots zebra Stripes"},
                {"id": "D1:2", "speaker": "Bot", "role": "assistant", "text": "Nice."},
            ]}],
            "questions": [],
        },
    ],
}


async def test_harness_scores_a_known_case_on_the_memory_store():
    from amber.embed import HashingEmbedder

    async with await open_store("memory://") as store:
        doc = await run_recall_bench(TINY, store, embedder=HashingEmbedder(64), modes=["lexical", "hybrid"],
                                     ks=[1, 3])
    lex = doc["modes"]["lexical"]
    assert lex["by_category"]["single-hop"]["recall_all@1"] == 1.0
    assert lex["by_category"]["unanswerable"]["recall_all@3"] == 0.0
    assert lex["by_category"]["unanswerable"]["recall_any@3"] == 0.0
    assert lex["by_category"]["knowledge-update"]["update_order@3"] == 1.0
    assert lex["overall"]["questions"] == 3
    assert lex["latency_ms"]["n"] == 3 and lex["latency_ms"]["p50"] is not None
    assert doc["turns"] == 8 and doc["ingest"]["turns"] == 8
    assert doc["learning"]["turns"] == 8  # every appended turn went through the learning queue
    learning = doc["learning"]
    assert learning["embedder_alone"]["texts"] == 8 and learning["embedder_alone_after"]["texts"] == 8
    # Learning's time splits into the embedder's calls and Amber's own share; the model's rate is
    # the mean of its runs before and after learning.
    assert 0 <= learning["in_embedder_s"] <= learning["seconds"]
    split = learning["in_embedder_s"] + learning["outside_embedder_s"]
    assert split == pytest.approx(learning["seconds"], abs=2e-3)
    rate = (learning["embedder_alone"]["texts_per_s"] + learning["embedder_alone_after"]["texts_per_s"]) / 2
    assert learning["slowdown_vs_embedder"] == pytest.approx(rate / learning["turns_per_s"], rel=0.01)
    # The replay is the model doing learning's own calls again: every text learning embedded.
    same = learning["embedder_same_calls"]
    assert same["texts"] == learning["texts_embedded"] and same["calls"] >= 1
    assert same["seconds"] > 0 and learning["slowdown_vs_same_calls"] > 0
    assert learning["slowdown_vs_same_calls"] == pytest.approx(learning["seconds"] / same["seconds"], rel=0.01)
    assert doc["store"] == "memory://"
    assert "hybrid" in doc["modes"]


async def test_without_an_embedder_vector_modes_are_skipped_not_faked():
    async with await open_store("memory://") as store:
        doc = await run_recall_bench(TINY, store, embedder=None, modes=["lexical", "vector"], ks=[1])
    assert set(doc["modes"]) == {"lexical"}
    assert doc["skipped_modes"] == {"vector": "no embedder"}
    assert doc["embedder"] == "none"


async def test_cleanup_deletes_the_benchmark_users_and_nothing_else(tmp_path):
    from amber import NewMessage, SessionKey

    async with await open_store(f"sqlite:///{tmp_path / 'b.db'}") as store:
        mine = SessionKey("bystander", "u1", "t1")
        await store.append_one(mine, NewMessage("user", "zebra Stripes carrots"))
        doc = await run_recall_bench(TINY, store, modes=["lexical"], ks=[1], cleanup=True)
        assert await store.list_users(doc["tenant"]) == []
        assert [m.content for m in await store.read_window(mine)] == ["zebra Stripes carrots"]


async def test_invalid_dataset_is_rejected_before_anything_is_written():
    bad = json.loads(json.dumps(TINY))
    bad["conversations"][0]["questions"][0]["evidence"] = ["D7:7"]
    async with await open_store("memory://") as store:
        with pytest.raises(InvalidInput, match="does not exist"):
            await run_recall_bench(bad, store, modes=["lexical"], tenant="t-bad")
        assert await store.list_users("t-bad") == []


# -- the command ------------------------------------------------------------------------------------


def _dataset_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def test_command_prints_one_json_object_on_its_last_line(tmp_path):
    from amber.cli.bench_recall import recall

    result = CliRunner().invoke(recall, [str(_dataset_file(tmp_path)), "--store", f"sqlite:///{tmp_path / 'r.db'}",
                                         "--embedder", "hash", "--k", "1,3"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output.strip().splitlines()[-1])
    assert set(doc["modes"]) == {"dense", "lexical", "vector", "hybrid", "hybrid+facts"}
    assert doc["modes"]["lexical"]["by_category"]["single-hop"]["recall_all@1"] == 1.0
    assert doc["store"].startswith("sqlite:")
    assert doc["embedder"].startswith("hash")
    # The yardstick is plain dense retrieval over raw turns, computed by the benchmark itself.
    assert "hybrid+facts/dense recall_all@3" in doc["comparison"]
    assert doc["modes"]["dense"]["by_category"]["single-hop"]["questions"] == 1


def test_command_reports_bad_input_cleanly(tmp_path):
    from amber.cli.bench_recall import recall

    path = tmp_path / "bad.json"
    path.write_text("{not json")
    result = CliRunner().invoke(recall, [str(path), "--store", "memory://", "--embedder", "none"])
    assert result.exit_code == 2
    assert "not valid JSON" in result.output


def test_amber_bench_recall_runs_as_a_module_with_the_memory_backend(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "amber.bench.recall", str(_dataset_file(tmp_path)), "--store", "memory://",
         "--embedder", "none", "--modes", "lexical,lexical+facts", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # --quiet: only the JSON line
    doc = json.loads(lines[-1])
    assert doc["benchmark"] == "recall" and set(doc["modes"]) == {"lexical", "lexical+facts"}


def test_amber_bench_recall_is_attached_to_the_cli(tmp_path):
    from amber.cli import main

    result = CliRunner().invoke(main, ["bench", "recall", str(_dataset_file(tmp_path)), "--store", "memory://",
                                       "--embedder", "hash:32", "--modes", "hybrid+facts", "--k", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output.strip().splitlines()[-1])
    assert doc["modes"]["hybrid+facts"]["overall"]["questions"] == 3
